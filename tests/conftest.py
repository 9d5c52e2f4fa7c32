"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import create_pg_database, drop_spare_pg_databases, recycle_pg_database
from tests.databases import libpq as _libpq
from tests.databases import pg_url as _admin_url

__all__ = ["_admin_url", "_libpq"]  # tests/store/test_migrations.py reads them from this module


@pytest.fixture(scope="session")
def pg_template(worker_id: str) -> Iterator[str]:
    """A migrated template database for this test worker (named after its process, so two test
    runs on one server never share one); per-test databases are copies of it, emptied after each
    test for the next one (tests/databases.py)."""
    import psycopg

    from smithers.store.store import Store

    admin = _libpq(_admin_url())
    name = f"smithers_tpl_{worker_id}_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    Store(f"{base}/{name}").close()
    yield name
    try:  # best effort: a test may still hold a connection another role opened
        drop_spare_pg_databases(name)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (migrated) database URL: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'smithers.db'}"
        return
    template = request.getfixturevalue("pg_template")
    url = create_pg_database(template)
    try:
        yield url
    finally:
        recycle_pg_database(url, template)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'smithers.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[object]:
    from smithers.store.store import Store

    s = Store(db_url)
    yield s
    s.close()
