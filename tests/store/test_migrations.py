"""Schema migrations: from an empty database to head, re-opening, concurrent openers, bad paths, URLs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool

from smithers.store.database import (
    MIGRATIONS_DIR,
    DatabaseError,
    current_revision,
    head_revision,
    migrate,
    resolve_url,
)
from smithers.store.schema import metadata
from smithers.store.store import Store

ROOT = Path(__file__).resolve().parents[2]


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url(request: pytest.FixtureRequest) -> str:
    """The admin (libpq) URL of the test PostgreSQL server, from tests/conftest.py's helpers."""
    for plugin in request.config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) == str(ROOT / "tests" / "conftest.py"):
            url: str = plugin._libpq(plugin._admin_url())
            return url
    raise AssertionError("tests/conftest.py is not loaded")


@pytest.fixture
def pg_empty_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database with no tables at all (not migrated)."""
    import psycopg

    admin = pg_admin_url
    name = f"mig_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield "postgresql+psycopg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to a database with no tables at all (not migrated), on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


def _table_names(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_differences(engine: Engine) -> list[str]:
    """Every way the live schema differs from ``smithers.store.schema.metadata``."""
    insp = inspect(engine)
    dialect = engine.dialect
    problems: list[str] = []
    live_tables = set(insp.get_table_names())
    for name, table in metadata.tables.items():
        if name not in live_tables:
            problems.append(f"missing table {name}")
            continue
        live = {c["name"]: c for c in insp.get_columns(name)}
        if set(live) != set(table.columns.keys()):
            problems.append(f"{name}: columns {sorted(live)} != {sorted(table.columns.keys())}")
        for col in table.columns:
            got = live.get(col.name)
            if got is None:
                continue
            live_type = got["type"].compile(dialect=dialect)
            want_type = col.type.compile(dialect=dialect)
            if live_type != want_type:
                problems.append(f"{name}.{col.name}: type {live_type} != {want_type}")
            if bool(got["nullable"]) != bool(col.nullable):
                problems.append(f"{name}.{col.name}: nullable {got['nullable']} != {col.nullable}")
        pk = insp.get_pk_constraint(name)["constrained_columns"]
        if pk != [c.name for c in table.primary_key.columns]:
            problems.append(f"{name}: primary key {pk} != {[c.name for c in table.primary_key.columns]}")
        live_indexes = {
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in insp.get_indexes(name)
            if not i.get("duplicates_constraint")
        }
        want_indexes = {(i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes}
        if live_indexes != want_indexes:
            problems.append(f"{name}: indexes {sorted(live_indexes)} != {sorted(want_indexes)}")
        live_unique = {tuple(u["column_names"]) for u in insp.get_unique_constraints(name)}
        want_unique = {(c.name,) for c in table.columns if c.unique}
        if live_unique != want_unique:
            problems.append(f"{name}: unique {sorted(live_unique)} != {sorted(want_unique)}")
    extra = live_tables - set(metadata.tables) - {"alembic_version"}
    if extra:
        problems.append(f"unexpected tables {sorted(extra)}")
    return problems


def _revisions_base_to_head() -> list[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg)
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


_OPENER = """
import json, sys, time
sys.path.insert(0, {root!r})
from smithers.store.store import Store
start = {start!r}
while time.time() < start:
    time.sleep(0.001)
try:
    Store({url!r}).close()
    print(json.dumps({{"ok": True}}))
except Exception as exc:
    print(json.dumps({{"ok": False, "error": type(exc).__name__ + ": " + str(exc)}}))
"""


def _open_concurrently(url: str, processes: int) -> list[dict[str, Any]]:
    """Open ``url`` from several fresh interpreters released at the same instant."""
    start = time.time() + 3.0  # after every interpreter has imported smithers
    code = _OPENER.format(root=str(ROOT), start=start, url=url)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# ---- from an empty database -------------------------------------------------------------------


def test_migration_chain_is_linear_with_one_head() -> None:
    revisions = _revisions_base_to_head()
    assert revisions[-1] == head_revision()
    assert revisions[0] == "0001"
    assert len(set(revisions)) == len(revisions)


def test_migrating_an_empty_database_reaches_head_with_the_declared_schema(empty_url: str) -> None:
    assert _table_names(empty_url) == set()
    store = Store(empty_url)
    try:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
        assert _schema_differences(store.engine) == []
        assert _table_names(empty_url) == set(metadata.tables) | {"alembic_version"}
    finally:
        store.close()


def test_every_revision_step_applies_from_empty(empty_url: str) -> None:
    engine = create_engine(empty_url, poolclass=NullPool)
    try:
        for revision in _revisions_base_to_head():
            with engine.connect() as conn:
                cfg = Config()
                cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            assert current_revision(engine) == revision
        migrate(engine)  # already at head: nothing to do
        assert current_revision(engine) == head_revision()
        assert _schema_differences(engine) == []
    finally:
        engine.dispose()


def test_migrate_on_a_bare_engine_reaches_head(empty_url: str) -> None:
    engine = create_engine(empty_url, poolclass=NullPool)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        assert current_revision(engine) == head_revision()
        assert _schema_differences(engine) == []
    finally:
        engine.dispose()


def test_migrate_schema_false_leaves_the_database_empty(empty_url: str) -> None:
    Store(empty_url, migrate_schema=False).close()
    assert _table_names(empty_url) == set()


# ---- re-opening -------------------------------------------------------------------------------


def test_reopening_a_migrated_database_is_a_read_only_no_op(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db_url).close()  # first open migrates (db_url may already be migrated)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def no_upgrade(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("alembic upgrade ran on an up-to-date database")

    import alembic.command

    monkeypatch.setattr(alembic.command, "upgrade", no_upgrade)
    event.listen(Engine, "before_cursor_execute", record)
    try:
        for _ in range(3):
            store = Store(db_url)
            assert current_revision(store.engine) == head_revision()
            store.close()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert statements, "the revision check ran no statement at all"
    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "PRAGMA", "SHOW"))]
    assert writes == []


def test_reopening_keeps_existing_rows(db_url: str) -> None:
    store = Store(db_url)
    with store.write() as tx:
        tx.insert_run(run_id="r1", workflow_name="wf", status="running", created_at_ms=1)
    store.close()
    store = Store(db_url)
    try:
        with store.read() as tx:
            row = tx.get_run("r1")
        assert row is not None
        assert (row["workflow_name"], row["status"], row["created_at_ms"]) == ("wf", "running", 1)
    finally:
        store.close()


# ---- concurrent openers -----------------------------------------------------------------------


def test_two_processes_opening_a_fresh_database_both_succeed(empty_url: str, tmp_path: Path) -> None:
    rounds = 3 if empty_url.startswith("sqlite") else 1
    urls = [empty_url] + [f"sqlite:///{tmp_path / f'race{i}.db'}" for i in range(1, rounds)]
    for url in urls:
        results = _open_concurrently(url, 4)
        assert results == [{"ok": True}] * 4, url
        engine = create_engine(url, poolclass=NullPool)
        try:
            assert current_revision(engine) == head_revision()
            assert _schema_differences(engine) == []
        finally:
            engine.dispose()


# ---- bad SQLite paths -------------------------------------------------------------------------


def test_missing_directory_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    target = missing / "smithers.db"
    for spec in (str(target), f"sqlite:///{target}"):
        with pytest.raises(DatabaseError) as info:
            Store(spec)
        assert info.value.code == "DB_ERROR"
        assert str(target) in info.value.message
        assert str(missing) in info.value.message
        assert "does not exist" in info.value.message
    assert list(tmp_path.iterdir()) == []


def _open_as_unprivileged(path: Path) -> dict[str, Any]:
    """Open ``path`` in a forked child; as root, the child drops to ``nobody`` so permission bits apply."""
    Store(f"sqlite:///{path.parent.parent / 'warm.db'}").close()  # import everything before forking
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        result: dict[str, Any]
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                Store(str(path)).close()
                result = {"raised": None}
            except DatabaseError as exc:
                result = {"raised": type(exc).__name__, "code": exc.code, "message": exc.message}
            except BaseException as exc:
                result = {"raised": type(exc).__name__, "message": str(exc)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    out: dict[str, Any] = json.loads(b"".join(chunks))
    return out


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A temp directory every user can reach (pytest's tmp_path is private to its owner)."""
    base = Path(tempfile.mkdtemp(prefix="smithers-mig-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for p in base.rglob("*"):
            p.chmod(0o700)
        shutil.rmtree(base)


def test_unwritable_directory_is_a_clear_error_and_creates_nothing(world_dir: Path) -> None:
    locked = world_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    target = locked / "smithers.db"
    result = _open_as_unprivileged(target)
    assert result["raised"] == "DatabaseError"
    assert result["code"] == "DB_ERROR"
    assert str(target) in result["message"]
    assert "not writable" in result["message"]
    assert list(locked.iterdir()) == []


def test_unwritable_database_file_is_a_clear_error_and_is_left_alone(world_dir: Path) -> None:
    shared = world_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / "smithers.db"
    target.write_bytes(b"")
    target.chmod(0o444)
    result = _open_as_unprivileged(target)
    assert result["raised"] == "DatabaseError"
    assert str(target) in result["message"]
    assert "not writable" in result["message"]
    assert sorted(p.name for p in shared.iterdir()) == ["smithers.db"]
    assert target.read_bytes() == b""


# ---- resolve_url ------------------------------------------------------------------------------


def test_plain_relative_path_becomes_an_absolute_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url("runs.db") == f"sqlite:///{tmp_path.resolve()}/runs.db"
    assert resolve_url("sub/dir/runs.db") == f"sqlite:///{tmp_path.resolve()}/sub/dir/runs.db"
    assert resolve_url("./x/../runs.db") == f"sqlite:///{tmp_path.resolve()}/runs.db"


def test_plain_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_url("/var/lib/smithers/runs.db") == "sqlite:////var/lib/smithers/runs.db"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_url("~/runs.db") == f"sqlite:///{tmp_path.resolve()}/runs.db"


def test_default_is_smithers_db_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMITHERS_DB", raising=False)
    assert resolve_url(None) == f"sqlite:///{tmp_path.resolve()}/smithers.db"
    assert resolve_url("") == f"sqlite:///{tmp_path.resolve()}/smithers.db"


def test_smithers_db_environment_variable_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMITHERS_DB", "postgres://u:p@db.example:5433/runs")
    assert resolve_url(None) == "postgresql+psycopg://u:p@db.example:5433/runs"
    assert resolve_url("/tmp/explicit.db") == "sqlite:////tmp/explicit.db"
    monkeypatch.setenv("SMITHERS_DB", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://u:p@host:5432/db", "postgresql+psycopg://u:p@host:5432/db"),
        ("postgres://u:p@host/db", "postgresql+psycopg://u:p@host/db"),
        ("postgres://host/db?sslmode=require", "postgresql+psycopg://host/db?sslmode=require"),
        ("postgresql+psycopg://u@host/db", "postgresql+psycopg://u@host/db"),
    ],
)
def test_urls_are_mapped_to_sqlalchemy_urls(given: str, expected: str) -> None:
    assert resolve_url(given) == expected


def test_plain_path_opens_a_sqlite_store(tmp_path: Path) -> None:
    target = tmp_path / "plain.db"
    store = Store(str(target))
    try:
        assert store.dialect.name == "sqlite"
        assert store.url == f"sqlite:///{target.resolve()}"
        assert current_revision(store.engine) == head_revision()
    finally:
        store.close()
    assert target.is_file()


def test_postgres_scheme_opens_a_postgres_store(pg_empty_url: str) -> None:
    plain = "postgres://" + pg_empty_url.split("://", 1)[1]
    store = Store(plain)
    try:
        assert store.is_postgres is True
        assert store.url == pg_empty_url
        assert current_revision(store.engine) == head_revision()
    finally:
        store.close()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    from smithers.store.database import HEAD_REVISION, head_revision

    assert head_revision() == HEAD_REVISION


def test_upgrading_from_the_previous_revision_keeps_rows(empty_url: str) -> None:
    engine = create_engine(empty_url, poolclass=NullPool)
    revisions = _revisions_base_to_head()
    try:
        with engine.connect() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revisions[-2])
            conn.execute(
                text(
                    "INSERT INTO _smithers_approvals (run_id, node_id, iteration, status, auto_approved) "
                    "VALUES ('r', 'n', 0, 'requested', 0)"
                )
            )
            conn.commit()
        migrate(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT status FROM _smithers_approvals")).scalars().all() == ["requested"]
        assert _schema_differences(engine) == []
    finally:
        engine.dispose()
