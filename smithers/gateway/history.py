"""History RPCs: runs.diff, frames.list/get, attempts.list/get (docs/protocol.md#methods)."""

from __future__ import annotations

from typing import Any, Final

from smithers.engine.history import diff_snapshots, latest_snapshot, read_frames
from smithers.errors import INVALID_INPUT, INVALID_REQUEST, NOT_FOUND, GatewayError
from smithers.gateway.dispatch import Call, Handler, escaping
from smithers.gateway.protocol import MAX_SAFE_INTEGER, as_number, as_string, optional_positive_int, positive_int
from smithers.store.rows import to_wire

DEFAULT_FRAME_LIMIT: Final = 50
DEFAULT_EVENT_LIMIT: Final = 100
MAX_EVENT_LIMIT: Final = 1000
FRAME_ENCODINGS: Final = frozenset({"full", "delta", "keyframe"})


def _frame_wire(row: dict[str, Any]) -> dict[str, Any]:
    out = to_wire(row)
    if out.get("encoding") not in FRAME_ENCODINGS:
        out["encoding"] = "full"
    return out


def _run_id(call: Call, params: dict[str, Any]) -> str:
    run_id = as_string(params.get("runId"))
    if not run_id:
        raise GatewayError(INVALID_REQUEST, "runId is required")
    if call.ctx.resolve_run(run_id) is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    return run_id


def _frame_no(value: Any, field: str) -> int | None:
    """A frame number: a non-negative integer. Frame 0 is addressable (docs/protocol.md#departures-from-0180)."""
    if value is None:
        return None
    if value == 0 and not isinstance(value, bool):
        return 0
    return positive_int(value, field)


def list_frames(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Frames after ``afterFrameNo``, newest first, at most ``limit``, each with its full ``xmlJson``."""
    run_id = _run_id(call, params)
    with escaping():
        limit = optional_positive_int(params.get("limit"), "limit") or DEFAULT_FRAME_LIMIT
        after = _frame_no(params.get("afterFrameNo"), "afterFrameNo")
    with call.ctx.store.read() as tx:
        last = tx.last_frame_no(run_id)
        lo = max((after + 1) if after is not None else 0, last - limit + 1)
        rows = read_frames(tx, run_id, lo, last)
    return [_frame_wire(r) for r in reversed(rows)][:limit]


def get_frame(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """One frame (the latest without ``frameNo``); every stored frame is reachable, frame 0 included."""
    run_id = _run_id(call, params)
    with escaping():
        wanted = _frame_no(params.get("frameNo"), "frameNo")
    with call.ctx.store.read() as tx:
        frame_no = tx.last_frame_no(run_id) if wanted is None else wanted
        rows = read_frames(tx, run_id, frame_no, frame_no)
    if not rows:
        raise GatewayError(NOT_FOUND, "Frame not found")
    return _frame_wire(rows[0])


def list_attempts(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    run_id = _run_id(call, params)
    node_id = as_string(params.get("nodeId"))
    with call.ctx.store.read() as tx:
        if node_id:
            number = as_number(params.get("iteration"))
            rows = tx.list_attempts(run_id, node_id, int(number) if number is not None else 0)
            rows.sort(key=lambda r: -r["attempt"])
        else:
            rows = tx.list_attempts(run_id)
    return [to_wire(r) for r in rows]


def get_attempt(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id, node_id = as_string(params.get("runId")), as_string(params.get("nodeId"))
    iteration, attempt = as_number(params.get("iteration")), as_number(params.get("attempt"))
    if not run_id or not node_id or iteration is None or attempt is None:
        raise GatewayError(INVALID_REQUEST, "runId, nodeId, iteration, and attempt are required")
    if call.ctx.resolve_run(run_id) is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    with call.ctx.store.read() as tx:
        rows = [r for r in tx.list_attempts(run_id, node_id, int(iteration)) if r["attempt"] == int(attempt)]
    if not rows:
        raise GatewayError(NOT_FOUND, "Attempt not found")
    return to_wire(rows[0])


def list_events(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``events.list`` (ours): the run's stored engine events, a page at a time
    (docs/protocol.md#eventslist)."""
    run_id = _run_id(call, params)
    with escaping():
        limit = optional_positive_int(params.get("limit"), "limit") or DEFAULT_EVENT_LIMIT
    after, before = _seq(params.get("afterSeq"), "afterSeq"), _seq(params.get("beforeSeq"), "beforeSeq")
    if after is not None and before is not None:
        raise GatewayError(INVALID_INPUT, "Pass afterSeq or beforeSeq, not both.")
    limit = min(limit, MAX_EVENT_LIMIT)
    with call.ctx.store.read() as tx:
        last = tx.last_event_seq(run_id)
        if after is not None:
            events = tx.list_events(run_id, after, limit)
        else:
            events = tx.list_events_before(run_id, last + 1 if before is None else before, limit)
    return {
        "runId": run_id,
        "events": [{"seq": e.seq, "type": e.type, "timestampMs": e.timestamp_ms, "payload": e.payload} for e in events],
        "lastSeq": last,
    }


def _seq(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_SAFE_INTEGER:
        raise GatewayError(INVALID_INPUT, f"{field} must be an integer of at least -1.")
    return value


def diff_runs(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    left, right = as_string(params.get("leftRunId")), as_string(params.get("rightRunId"))
    if not left or not right:
        raise GatewayError(INVALID_REQUEST, "leftRunId and rightRunId are required")
    ctx = call.ctx
    if ctx.resolve_run(left) is None or ctx.resolve_run(right) is None:
        raise GatewayError(NOT_FOUND, "Both runs must exist")
    with ctx.store.read() as tx:
        a, b = latest_snapshot(tx, left), latest_snapshot(tx, right)
    if a is None or b is None:
        raise GatewayError(NOT_FOUND, "Snapshots not found for both runs")
    return diff_snapshots(a, b)


HANDLERS: Final[dict[str, Handler]] = {
    "runs.diff": diff_runs,
    "frames.list": list_frames,
    "frames.get": get_frame,
    "attempts.list": list_attempts,
    "attempts.get": get_attempt,
    "events.list": list_events,
}
