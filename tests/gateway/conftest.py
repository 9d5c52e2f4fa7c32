"""Fixtures for gateway tests: a migrated SQLite template, and real gateways on loopback ports.

``start_gateway(**options)`` serves the example workflows of :mod:`tests.gateway.workflows`;
``start_humans(**options)`` the human-in-the-loop set (heartbeat 1 s, so the cron scheduler and
the wait sweeper poll every second). Both return a :class:`~tests.gateway.support.Live` handle;
every server is closed at the end of the test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smithers.gateway.server import Gateway
from smithers.store.store import Store
from tests.gateway.support import TOKEN_AUTH, Live
from tests.gateway.workflows import WORKFLOWS, build_humans


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite file; each gateway starts from a copy (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    Store(str(path)).close()
    return path


@pytest.fixture
def start_gateway(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db_path: Path | None = None, **options: Any) -> Live:
        if db_path is None:
            db_path = tmp_path / f"gateway-{len(started)}.db"
            shutil.copyfile(migrated_db, db_path)
        gateway = Gateway.for_workflows(WORKFLOWS, db=str(db_path), **options)
        live = Live(gateway, db_path)
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
def start_humans(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db_path: Path | None = None, **options: Any) -> Live:
        if db_path is None:
            db_path = tmp_path / f"humans-{len(started)}.db"
            shutil.copyfile(migrated_db, db_path)
        live = Live(build_humans(db_path, **options), db_path)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
