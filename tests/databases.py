"""The test run's PostgreSQL server, and fresh databases copied from a migrated template.

``tests/conftest.py`` builds one migrated template database per test worker (``pg_template``);
:func:`create_pg_database` copies it (``CREATE DATABASE ... TEMPLATE``, much faster than migrating)
and :func:`drop_pg_database` drops a copy again, whoever still holds a connection to it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pg_url() -> str:
    """The PostgreSQL URL from $SMITHERS_TEST_PG_URL, or from scripts/ensure-postgres.sh."""
    url = os.environ.get("SMITHERS_TEST_PG_URL")
    if not url:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-postgres.sh")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL is not available for the tests: {proc.stderr.strip()}")
        url = proc.stdout.strip().splitlines()[-1]
        os.environ["SMITHERS_TEST_PG_URL"] = url
    return url


def libpq(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as psycopg (libpq) takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


_spares: dict[str, list[str]] = {}
"""Databases copied from each template and emptied again after use (see :func:`recycle_pg_database`)."""


def create_pg_database(template: str) -> str:
    """A new database copied from the database ``template`` (or such a copy emptied since); its URL."""
    import psycopg

    spares = _spares.get(template)
    if spares:
        return spares.pop()
    admin = libpq(pg_url())
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return f"{admin.rsplit('/', 1)[0]}/{name}"


def drop_pg_database(url: str) -> None:
    """Drop the database at ``url`` (made by :func:`create_pg_database`), closing its connections.

    ``WITH (FORCE)`` may not end an autovacuum worker busy in the database (it belongs to no role
    we are a member of); such a worker is done within moments, so the drop is tried again.
    """
    import psycopg

    name = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 30
    with psycopg.connect(libpq(pg_url()), autocommit=True) as conn:
        while True:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def recycle_pg_database(url: str, template: str) -> None:
    """Empty the database at ``url`` (a copy of ``template``) for :func:`create_pg_database` to hand
    out again, as new: every row deleted, every sequence restarted. That takes milliseconds; copying
    the template takes a tenth of a second or more (the system catalogs are copied too), which the
    hundreds of gateway tests on PostgreSQL would pay each. Connections left to it (by a gateway a
    failed test did not stop) are ended first, as ``DROP DATABASE ... WITH (FORCE)`` would; a
    database that cannot be emptied is dropped.
    """
    import psycopg

    try:
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("SET lock_timeout = '5s'")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = current_user"
            )
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            ).fetchall()
            sequences = conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall()
            with conn.transaction():  # DELETE, not TRUNCATE: no new files, ten times faster on small tables
                for (table,) in tables:
                    conn.execute(f'DELETE FROM "{table}"')
                for (sequence,) in sequences:
                    conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
    except psycopg.Error:
        drop_pg_database(url)
        return
    _spares.setdefault(template, []).append(url)


def drop_spare_pg_databases(template: str) -> None:
    """Drop the emptied copies of ``template`` (at the end of the test run)."""
    for url in _spares.pop(template, []):
        drop_pg_database(url)


class Databases:
    """Fresh, migrated databases of one kind (``sqlite`` or ``postgres``), removed by :meth:`close`."""

    def __init__(self, kind: str, directory: Path, sqlite_template: Path, pg_template: str | None):
        self.kind = kind
        self._directory = directory
        self._sqlite_template = sqlite_template
        self._pg_template = pg_template
        self._made: list[str] = []

    def new(self, name: str = "gateway") -> str:
        """The URL of a new, empty, migrated database (``name`` names a SQLite file)."""
        if self.kind == "sqlite":
            path = self._directory / f"{name}-{len(self._made)}.db"
            path.write_bytes(self._sqlite_template.read_bytes())
            url = f"sqlite:///{path}"
        else:
            assert self._pg_template is not None
            url = create_pg_database(self._pg_template)
        self._made.append(url)
        return url

    def close(self) -> None:
        if self.kind == "postgres":
            assert self._pg_template is not None
            for url in self._made:
                recycle_pg_database(url, self._pg_template)
        self._made.clear()
