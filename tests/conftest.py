"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _admin_url() -> str:
    """The PostgreSQL URL from $SMITHERS_TEST_PG_URL, or from scripts/ensure-postgres.sh."""
    url = os.environ.get("SMITHERS_TEST_PG_URL")
    if not url:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-postgres.sh")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL is not available for the tests: {proc.stderr.strip()}")
        url = proc.stdout.strip().splitlines()[-1]
        os.environ["SMITHERS_TEST_PG_URL"] = url
    return url


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def pg_template(worker_id: str) -> Iterator[str]:
    """A migrated template database for this test worker (named after its process, so two test
    runs on one server never share one); per-test databases are copies of it."""
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
    import psycopg

    template = request.getfixturevalue("pg_template")
    admin = _libpq(_admin_url())
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'smithers.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[object]:
    from smithers.store.store import Store

    s = Store(db_url)
    yield s
    s.close()
