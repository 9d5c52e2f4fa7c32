"""Fixtures for gateway tests: fresh databases on SQLite and PostgreSQL, and real gateways on loopback ports.

Every test that touches the store runs twice, ``[sqlite]`` and ``[postgres]``: a test is run on
both as soon as it uses :func:`databases` (directly, or through ``start_gateway``, ``start_humans``,
``live``, ``token_live`` or a file's own gateway fixture), whose ``new()`` returns the URL of a
fresh, migrated database -- a copy of a migrated SQLite file, or a copy of the worker's migrated
PostgreSQL template (``pg_template`` in ``tests/conftest.py``; copies are emptied after each test and
handed out again, see ``tests/databases.py``). Tests reopen a gateway's database through
``live.db_url`` (a second gateway, ``Store(url)``, ``smithers ... --db url``). A module-scoped
fixture that needs databases asks for ``db_kind`` (it is parametrised per module, as in
``test_fuzz.py``).

``start_gateway(db=None, **options)`` serves the example workflows of :mod:`tests.gateway.workflows`;
``start_humans(db=None, **options)`` the human-in-the-loop set (heartbeat 1 s, so the cron scheduler
and the wait sweeper poll every second). Both return a :class:`~tests.gateway.support.Live` handle
on a new database (or on ``db``); every server is closed at the end of the test.

What runs on SQLite only, marked ``@pytest.mark.sqlite_only(reason=...)`` (module or test), to keep
``.ci/run`` (two cores) well under 15 minutes: the tests whose answers never depend on what the
store does, so that a second run would cost CI time and test nothing new --

* the wire: WebSocket handshake, framing and connection limits (``test_ws_frames.py``, most of
  ``test_ws_handshake.py`` and ``test_ws_limits.py``), HTTP routes, headers and framing
  (``test_http_routes.py``, slow headers and pipelining in ``test_abuse_http.py``), connection
  limits in ``test_abuse_ws.py``, and the envelope, body and frame fuzzing of ``test_fuzz.py``;
* bounds on what the transports buffer for a client that stops reading (``test_memory_bounds.py``,
  the devtools stream's 1,000-event cut-off);
* serving UI files (``test_ui_mounts.py``).

A test that launches runs, reads or writes rows, or checks the store is unchanged runs on both.
``test_protocol.py`` and ``test_scopes.py`` start no gateway and open no database at all; the
option and registration checks of ``test_runs_rpc.py`` build a gateway on a SQLite file they never use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smithers.gateway.server import Gateway
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import TOKEN_AUTH, Live
from tests.gateway.workflows import WORKFLOWS, build_humans

DB_KINDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): run this gateway test on SQLite only (the reason is required)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a database (``db_kind``) on each kind of database."""
    if "db_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("sqlite_only")
    if marker is not None and not (marker.kwargs.get("reason") or marker.args):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only needs a reason")
    kinds = ["sqlite"] if marker is not None else list(DB_KINDS)
    # module scope: a file's module-scoped gateways (test_fuzz.py) are built once per kind
    metafunc.parametrize("db_kind", kinds, scope="module")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite file; each SQLite database starts from a copy (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    Store(str(path)).close()
    return path


def open_databases(
    request: pytest.FixtureRequest, kind: str, directory: Path, migrated_db: Path
) -> Iterator[Databases]:
    """A :class:`Databases` for a fixture (of any scope); closed when the fixture ends."""
    template = str(request.getfixturevalue("pg_template")) if kind == "postgres" else None
    made = Databases(kind, directory, migrated_db, template)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def databases(request: pytest.FixtureRequest, db_kind: str, tmp_path: Path, migrated_db: Path) -> Iterator[Databases]:
    """Fresh databases for the test, of the kind it is parametrised with (see the module docstring)."""
    yield from open_databases(request, db_kind, tmp_path, migrated_db)


@pytest.fixture
def start_gateway(databases: Databases) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db: str | None = None, **options: Any) -> Live:
        gateway = Gateway.for_workflows(WORKFLOWS, db=db or databases.new("gateway"), **options)
        live = Live(gateway)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def live(start_gateway: Callable[..., Live]) -> Live:
    """An open gateway (no auth) with the example workflows."""
    return start_gateway()


@pytest.fixture
def token_live(start_gateway: Callable[..., Live]) -> Live:
    """A token-mode gateway (see :data:`TOKEN_AUTH`)."""
    return start_gateway(auth=TOKEN_AUTH)


@pytest.fixture
def start_humans(databases: Databases) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db: str | None = None, **options: Any) -> Live:
        live = Live(build_humans(db or databases.new("humans"), **options))
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
