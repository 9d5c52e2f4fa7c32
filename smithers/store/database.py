"""Opening a database by path or URL: engine setup, dialect differences, and migrations.

SQLite (the default) runs in WAL mode with ``synchronous=NORMAL`` and a 30 s busy timeout; every
write transaction starts with ``BEGIN IMMEDIATE`` so two writers queue instead of failing with
"database is locked" half-way through. PostgreSQL (psycopg 3) uses the same tables and statements;
the only differences live in the two small dialect classes below.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from smithers.errors import DatabaseError

DEFAULT_DB = "smithers.db"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def resolve_url(db: str | None) -> str:
    """Turn ``--db``/``SMITHERS_DB`` (a path or URL) into a SQLAlchemy URL."""
    value = db or os.environ.get("SMITHERS_DB") or DEFAULT_DB
    if "://" not in value:
        return "sqlite:///" + str(Path(value).expanduser().resolve())
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    return value


class Dialect:
    """What differs between databases: engine creation and the upsert construct."""

    name = "generic"
    insert: Any = None

    def create_engine(self, url: str) -> Engine:
        return create_engine(url)


class SqliteDialect(Dialect):
    name = "sqlite"
    insert = staticmethod(sqlite_insert)

    def create_engine(self, url: str) -> Engine:
        path = make_url(url).database
        if path and path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise DatabaseError(f"cannot open database {path}: directory {parent} does not exist")
            if not os.access(parent, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
                raise DatabaseError(f"cannot open database {path}: not writable")
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA wal_autocheckpoint=10000")  # fewer, larger checkpoints: fewer fsyncs per commit
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine


class PostgresDialect(Dialect):
    name = "postgresql"
    insert = staticmethod(pg_insert)

    def create_engine(self, url: str) -> Engine:
        size = pool_limit()
        return create_engine(
            url,
            pool_size=min(POOL_KEPT, size),
            max_overflow=max(0, size - POOL_KEPT),
            pool_timeout=30,
            connect_args={"application_name": APPLICATION_NAME},
        )


POOL_ENV = "SMITHERS_PG_POOL"
DEFAULT_POOL = 10
POOL_KEPT = 5
APPLICATION_NAME = "smithers"
"""How the connections of a smithers process show in ``pg_stat_activity``."""


def pool_limit() -> int:
    """Connections one process opens to PostgreSQL at most: ``$SMITHERS_PG_POOL``, else 10 (each
    thread that uses the database holds one: the event loop's and a few workers'). A gateway adds
    one for ``LISTEN``. N gateways restarting together stay under ``max_connections`` when
    N × (this + 1) does (docs/protocol.md#several-gateways-on-one-database)."""
    raw = os.environ.get(POOL_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_POOL
    except ValueError:
        return DEFAULT_POOL
    return value if value > 0 else DEFAULT_POOL


def dialect_for(url: str) -> Dialect:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return SqliteDialect()
    if backend == "postgresql":
        return PostgresDialect()
    raise DatabaseError(f"unsupported database URL: {url}")


HEAD_REVISION = "0008"
"""The newest migration in ``migrations/versions`` (a test keeps the two equal). Opening a database
that is already at this revision runs one query and never imports Alembic."""


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this package, read from the migration scripts."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision (None for an empty database)."""
    with engine.connect() as conn:
        try:
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            return None
    return None if value is None else str(value)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (forward-only, one transaction per migration)."""
    from alembic import command

    if current_revision(engine) == HEAD_REVISION:
        return
    url = engine.url
    if url.get_backend_name() == "postgresql":
        # Two processes opening a fresh database at once: let one migrate, the other wait.
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727272)"))
            try:
                command.upgrade(_alembic_config(conn), "head")
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(727272)"))
                conn.commit()
        return
    # Two processes opening a fresh file at once: an exclusive lock file lets one migrate at a time.
    path = url.database
    lock_path = f"{path}.migrate-lock" if path and path != ":memory:" else None
    with _file_lock(lock_path):
        if current_revision(engine) == HEAD_REVISION:
            return
        migrate_engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
        try:
            with migrate_engine.connect() as conn:
                command.upgrade(_alembic_config(conn), "head")
                conn.commit()
        finally:
            migrate_engine.dispose()


@contextmanager
def _file_lock(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
