"""RunStateView computed over a real store (docs/protocol.md#data-shapes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smithers.engine.runstate import compute_run_state
from smithers.store.rows import iso_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import waiting_node

NOW = 1_800_000_000_000


@pytest.fixture
def store(databases: Databases) -> Any:
    s = Store(databases.new("state"))
    yield s
    s.close()


def add_run(store: Store, status: str, **values: Any) -> dict[str, Any]:
    row = {
        "run_id": "r",
        "workflow_name": "w",
        "status": status,
        "created_at_ms": NOW - 100_000,
        **values,
    }
    with store.write() as tx:
        tx.insert_run(**row)
        stored = tx.get_run("r")
    assert stored is not None
    return stored


def add_node(store: Store, node_id: str, state: str, meta: Any = None, updated: int = NOW) -> None:
    with store.write() as tx:
        tx.insert_nodes(
            [
                {
                    "run_id": "r",
                    "node_id": node_id,
                    "iteration": 0,
                    "state": state,
                    "last_attempt": 1,
                    "updated_at_ms": updated,
                    "output_table": "out",
                    "label": None,
                }
            ]
        )
        tx.insert_attempt(
            run_id="r",
            node_id=node_id,
            iteration=0,
            attempt=1,
            state=state,
            started_at_ms=NOW,
            cached=0,
            meta_json=None if meta is None else json.dumps(meta),
        )


def view(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    with store.read() as tx:
        return compute_run_state(tx, row, now_ms=NOW)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("finished", "succeeded"),
        ("continued", "succeeded"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("odd", "unknown"),
    ],
)
def test_terminal_and_unknown_states(store: Store, status: str, state: str) -> None:
    assert view(store, add_run(store, status)) == {"runId": "r", "state": state, "computedAt": iso_ms(NOW)}


def test_running_fresh_stale_orphaned_unknown(store: Store) -> None:
    fresh = add_run(store, "running", started_at_ms=NOW - 60_000, heartbeat_at_ms=NOW - 1_000, runtime_owner_id="o")
    assert view(store, fresh)["state"] == "running"
    stale = {**fresh, "heartbeat_at_ms": NOW - 31_000, "started_at_ms": NOW - 40_000}
    assert view(store, stale) == {
        "runId": "r",
        "state": "stale",
        "unhealthy": {"kind": "engine-heartbeat-stale", "lastHeartbeatAt": iso_ms(NOW - 31_000)},
        "computedAt": iso_ms(NOW),
    }
    assert view(store, {**stale, "runtime_owner_id": None})["state"] == "orphaned"
    assert view(store, {**stale, "heartbeat_at_ms": None, "started_at_ms": None})["state"] == "unknown"
    assert view(store, {**stale, "heartbeat_at_ms": None, "started_at_ms": NOW - 30_000})["state"] == "running"


def test_waiting_approval_blocked_by_earliest_request(store: Store) -> None:
    row = add_run(store, "waiting-approval")
    with store.write() as tx:
        for node, at in (("b", NOW - 10), ("a", NOW - 500), ("c", None)):
            tx.insert_approval(
                run_id="r", node_id=node, iteration=0, status="requested", requested_at_ms=at, auto_approved=0
            )
            tx.insert_nodes([waiting_node("r", node)])
    assert view(store, row)["blocked"] == {"kind": "approval", "nodeId": "a", "requestedAt": iso_ms(NOW - 500)}


def test_waiting_approval_without_requests(store: Store) -> None:
    assert "blocked" not in view(store, add_run(store, "waiting-approval"))


def test_waiting_timer_blocked_by_earliest_timer(store: Store) -> None:
    row = add_run(store, "waiting-timer")
    add_node(store, "late", "waiting-timer", {"kind": "timer", "timer": {"firesAtMs": NOW + 9_000}})
    add_node(store, "soon", "waiting-timer", {"kind": "timer", "timer": {"firesAtMs": NOW + 1_000}})
    add_node(store, "odd", "waiting-timer", {"kind": "timer", "timer": {"firesAtMs": "x"}})
    assert view(store, row)["blocked"] == {"kind": "timer", "nodeId": "soon", "wakeAt": iso_ms(NOW + 1_000)}


@pytest.mark.parametrize(
    ("meta", "key"),
    [
        ({"event": {"correlationKey": "ck", "eventName": "e"}}, "ck"),
        ({"correlationKey": "top"}, "top"),
        ({"event": {"eventName": "e"}}, "e"),
        ({"kind": "wait-for-event", "waitForEvent": {"signalName": "go", "correlationId": "c1"}}, "c1"),
        ({"kind": "wait-for-event", "waitForEvent": {"signalName": "go", "correlationId": None}}, "go"),
        (None, ""),
    ],
)
def test_waiting_event_correlation_key(store: Store, meta: Any, key: str) -> None:
    row = add_run(store, "waiting-event")
    add_node(store, "w", "waiting-event", meta)
    assert view(store, row)["blocked"] == {"kind": "event", "nodeId": "w", "correlationKey": key}


def test_iso_format() -> None:
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(1_767_225_600_123) == "2026-01-01T00:00:00.123Z"
