"""The run-state view (docs/protocol.md#data-shapes): what is this run doing right now?

Computed from the run row and a few store lookups; it never probes processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from smithers.engine.states import (
    ACTIVE_RUN_STATUS_LIST,
    CANCELLED,
    CONTINUED,
    FAILED,
    FINISHED,
    RUNNING,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_TIMER,
)
from smithers.store.rows import iso_ms
from smithers.store.rows import now_ms as clock_ms
from smithers.store.store import Tx

STALE_THRESHOLD_MS: Final = 30_000

STATE_SUCCEEDED: Final = "succeeded"
STATE_FAILED: Final = "failed"
STATE_CANCELLED: Final = "cancelled"
STATE_RUNNING: Final = "running"
STATE_STALE: Final = "stale"
STATE_ORPHANED: Final = "orphaned"
STATE_UNKNOWN: Final = "unknown"

_TERMINAL: Final[Mapping[str, str]] = {
    FINISHED: STATE_SUCCEEDED,
    CONTINUED: STATE_SUCCEEDED,
    FAILED: STATE_FAILED,
    CANCELLED: STATE_CANCELLED,
}


def _meta(attempt: Mapping[str, Any] | None) -> dict[str, Any]:
    if attempt is None or not attempt.get("meta_json"):
        return {}
    try:
        value = json.loads(attempt["meta_json"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _latest_attempt(tx: Tx, run_id: str, node_id: str, iteration: int) -> Mapping[str, Any] | None:
    attempts = tx.list_attempts(run_id, node_id, iteration)
    return max(attempts, key=lambda a: a["attempt"]) if attempts else None


def _dig(meta: Mapping[str, Any], *path: str) -> Any:
    value: Any = meta
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _approval_block(tx: Tx, run_id: str) -> dict[str, Any] | None:
    pending = [
        row
        for row in tx.list_pending_approvals(ACTIVE_RUN_STATUS_LIST, WAITING_APPROVAL, run_id)
        if row["requested_at_ms"] is not None
    ]
    if not pending:
        return None
    first = min(pending, key=lambda row: row["requested_at_ms"])
    return {"kind": "approval", "nodeId": first["node_id"], "requestedAt": iso_ms(first["requested_at_ms"])}


def _timer_block(tx: Tx, run_id: str) -> dict[str, Any] | None:
    best: tuple[float, str] | None = None
    for node in tx.list_nodes(run_id):
        if node["state"] != WAITING_TIMER:
            continue
        fires = _dig(_meta(_latest_attempt(tx, run_id, node["node_id"], node["iteration"])), "timer", "firesAtMs")
        if isinstance(fires, int | float) and not isinstance(fires, bool) and (best is None or fires < best[0]):
            best = (fires, node["node_id"])
    return None if best is None else {"kind": "timer", "nodeId": best[1], "wakeAt": iso_ms(best[0])}


def _event_block(tx: Tx, run_id: str) -> dict[str, Any] | None:
    for node in tx.list_nodes(run_id):
        if node["state"] != WAITING_EVENT:
            continue
        meta = _meta(_latest_attempt(tx, run_id, node["node_id"], node["iteration"]))
        # The JavaScript engine's keys first, then ours (waitForEvent.correlationId / signalName).
        candidates = (
            _dig(meta, "event", "correlationKey"),
            meta.get("correlationKey"),
            _dig(meta, "waitForEvent", "correlationId"),
            _dig(meta, "event", "eventName"),
            _dig(meta, "waitForEvent", "signalName"),
        )
        key = next((c for c in candidates if isinstance(c, str)), "")
        return {"kind": "event", "nodeId": node["node_id"], "correlationKey": key}
    return None


def compute_run_state(
    tx: Tx, row: Mapping[str, Any], now_ms: int | None = None, stale_threshold_ms: int = STALE_THRESHOLD_MS
) -> dict[str, Any]:
    """The RunStateView of a stored run row (snake_case columns, as the store returns them)."""
    now = clock_ms() if now_ms is None else now_ms
    run_id = row["run_id"]
    status = row["status"]
    view: dict[str, Any] = {"runId": run_id, "state": _TERMINAL.get(status, STATE_UNKNOWN)}
    blocked: dict[str, Any] | None = None
    if status == WAITING_APPROVAL:
        view["state"], blocked = WAITING_APPROVAL, _approval_block(tx, run_id)
    elif status == WAITING_TIMER:
        view["state"], blocked = WAITING_TIMER, _timer_block(tx, run_id)
    elif status == WAITING_EVENT:
        view["state"], blocked = WAITING_EVENT, _event_block(tx, run_id)
    elif status == RUNNING:
        alive = [v for v in (row.get("heartbeat_at_ms"), row.get("started_at_ms")) if v is not None]
        if alive and now - max(alive) <= stale_threshold_ms:
            view["state"] = STATE_RUNNING
        elif alive:
            view["state"] = STATE_STALE if row.get("runtime_owner_id") else STATE_ORPHANED
            view["unhealthy"] = {"kind": "engine-heartbeat-stale", "lastHeartbeatAt": iso_ms(max(alive))}
    if blocked is not None:
        view["blocked"] = blocked
    view["computedAt"] = iso_ms(now)
    return view
