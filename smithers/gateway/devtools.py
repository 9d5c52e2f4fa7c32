"""DevTools, node output, node diff, rewind and fork RPCs (docs/protocol.md#devtools,
docs/protocol.md#rewind).

These methods answer with the contract's ``PascalCase`` codes (``InvalidRunId``, ``RunNotFound``,
…), returned with the request id, as the reference does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from typing import Any, Final

from smithers.engine import devtools
from smithers.engine.history import read_frames
from smithers.engine.node_diff import diff_failure, node_diff
from smithers.engine.node_output import node_output
from smithers.engine.runstate import compute_run_state
from smithers.engine.timetravel import MAX_FRAME_NO, RUN_ID_PATTERN, caller_name, fork_run
from smithers.errors import (
    FrameOutOfRange,
    GatewayError,
    InvalidFrameNo,
    InvalidIteration,
    InvalidNodeId,
    InvalidRunId,
    RunNotFound,
    SmithersError,
    Unauthorized,
)
from smithers.gateway.dispatch import Call, Handler
from smithers.gateway.shapes import caller_auth
from smithers.store.rows import loads

NODE_ID_PATTERN: Final = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
ASCII_DIGITS: Final = re.compile(r"[0-9]+")
RUN_ID_MESSAGE: Final = "runId must match /^[a-z0-9_-]{1,64}$/."
PAUSE_TIMEOUT_S: Final = 10.0
ADMIN_ROLE: Final = "admin"


def refused(exc: SmithersError) -> GatewayError:
    """An engine refusal answered with the request id: its code and message, no details."""
    return GatewayError(exc.code, exc.message)


def valid_run_id(call: Call, value: Any) -> str:
    """The shared DevTools checks of ``runId``: present, well-formed, followed by this connection."""
    if not isinstance(value, str) or not value:
        raise GatewayError(InvalidRunId, "runId is required")
    if not RUN_ID_PATTERN.fullmatch(value):
        raise GatewayError(InvalidRunId, RUN_ID_MESSAGE)
    return value


def require_subscription(call: Call, run_id: str) -> None:
    if call.connection is not None and not call.connection.follows(run_id):
        raise GatewayError(Unauthorized, "Connection is not subscribed to this runId.")


def require_run(call: Call, run_id: str) -> str:
    key = call.ctx.resolve_run(run_id)
    if key is None:
        raise GatewayError(RunNotFound, f"Run not found: {run_id}")
    return key


def _integer(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return None
    number = int(value)
    return number if low <= number <= high else None


# -- getDevToolsSnapshot --------------------------------------------------------------------------
def get_devtools_snapshot(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = valid_run_id(call, params.get("runId"))
    wanted: int | None = None
    if "frameNo" in params:
        wanted = _integer(params["frameNo"], 0, MAX_FRAME_NO)
        if wanted is None:
            raise GatewayError(FrameOutOfRange, "frameNo must be an integer between 0 and 2147483647.")
    require_subscription(call, run_id)
    require_run(call, run_id)
    return snapshot_at(call, run_id, wanted)


def snapshot_at(call: Call, run_id: str, wanted: int | None) -> dict[str, Any]:
    """The DevTools snapshot of frame ``wanted`` (the latest when None), with ``runState``."""
    with call.ctx.store.read() as tx:
        row = tx.get_run(run_id)
        if row is None:
            raise GatewayError(RunNotFound, f"Run not found: {run_id}")
        run_state = None
        with contextlib.suppress(Exception):  # omitted when it cannot be computed
            run_state = compute_run_state(tx, row)
        latest = tx.last_frame_no(run_id)
        if latest == 0:
            if wanted:
                raise GatewayError(FrameOutOfRange, f"frameNo must be 0 for runs with no frames (got {wanted}).")
            return devtools.empty_snapshot(run_id, run_state)
        target = latest if wanted is None else wanted
        if target > latest:
            raise GatewayError(FrameOutOfRange, f"frameNo must be between 0 and {latest}.")
        rows = read_frames(tx, run_id, target, target)
    if not rows:
        raise GatewayError(FrameOutOfRange, f"Frame {target} is not available for run {run_id}.")
    started = time.perf_counter()
    snap = devtools.snapshot(run_id, target, loads(rows[0]["xml_json"]), run_state)
    call.ctx.metrics.devtools_snapshot_ms.observe((time.perf_counter() - started) * 1000)
    return snap


# -- node output and node diff --------------------------------------------------------------------
def _node_id(value: Any) -> str:
    if not isinstance(value, str) or not NODE_ID_PATTERN.fullmatch(value):
        raise GatewayError(InvalidNodeId, "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/.")
    return value


def get_node_output(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """The node's output row, or why it has none; its latest iteration when none is given
    (docs/protocol.md#departures-from-0180)."""
    started = time.perf_counter()
    metrics = call.ctx.metrics
    try:
        run_id = params.get("runId")
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            raise GatewayError(InvalidRunId, RUN_ID_MESSAGE)
        node_id = _node_id(params.get("nodeId"))
        iteration = _output_iteration(params.get("iteration"))
        key = require_run(call, run_id)
        reg = call.ctx.workflows.get(key)
        try:
            answer = node_output(call.ctx.store, reg.workflow if reg else None, run_id, node_id, iteration)
        except SmithersError as exc:
            if isinstance(exc, GatewayError):
                raise
            raise refused(exc) from exc
    except GatewayError:
        metrics.node_output_requests.labels("error").inc()
        raise
    metrics.node_output_requests.labels(answer["status"]).inc()
    if answer["row"] is not None:
        metrics.node_output_bytes.observe(len(json.dumps(answer["row"], separators=(",", ":")).encode()))
    metrics.node_output_ms.observe((time.perf_counter() - started) * 1000)
    return answer


def _output_iteration(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and ASCII_DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    number = _integer(value, 0, MAX_FRAME_NO)
    if number is None:
        raise GatewayError(InvalidIteration, "iteration must be a non-negative 32-bit integer.")
    return number


async def get_node_diff(call: Call, params: dict[str, Any]) -> Any:
    """What the node's latest attempt changed in its working directory; every failure is an answer."""
    metrics = call.ctx.metrics
    started = time.perf_counter()
    run_id = params.get("runId")
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise GatewayError(InvalidRunId, RUN_ID_MESSAGE)
    node_id = _node_id(params.get("nodeId"))
    iteration = _integer(params.get("iteration"), 0, MAX_FRAME_NO)
    if iteration is None:
        raise GatewayError(InvalidIteration, "iteration must be an i32 non-negative integer.")
    if call.ctx.resolve_run(run_id) is None:
        raise GatewayError(RunNotFound, f"Run not found: {run_id}")
    try:
        bundle, size, cached = await asyncio.to_thread(node_diff, call.ctx.store, run_id, node_id, iteration)
    except Exception as exc:
        metrics.node_diff_requests.labels("error").inc()
        raise refused(diff_failure(exc)) from exc
    metrics.node_diff_cache.labels("hit" if cached else "miss").inc()
    if not cached:
        with call.ctx.store.read() as tx:
            metrics.node_diff_cache_rows.set(tx.count_node_diffs())
    metrics.node_diff_requests.labels("ok").inc()
    metrics.node_diff_bytes.observe(size)
    metrics.node_diff_ms.observe((time.perf_counter() - started) * 1000)
    return bundle


# -- rewind ---------------------------------------------------------------------------------------
async def jump_to_frame(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``jumpToFrame``/``devtools.jumpToFrame``/``rewindRun``: the gateway's checks, then the rewind."""
    ctx = call.ctx
    run_id, frame_no = params.get("runId"), params.get("frameNo")
    if not isinstance(run_id, str) or not run_id:
        raise GatewayError(InvalidRunId, "runId is required")
    if isinstance(frame_no, bool) or not isinstance(frame_no, int | float):
        raise GatewayError(InvalidFrameNo, "frameNo is required")
    if isinstance(frame_no, float) and frame_no.is_integer():
        frame_no = int(frame_no)
    row = ctx.store.get_run(run_id) if ctx.resolve_run(run_id) is not None else None
    if row is None:
        raise GatewayError(RunNotFound, f"Run not found: {run_id}")
    principal = call.principal
    caller = caller_name(principal.user_id)
    owner = ((loads(row["config_json"]) or {}).get("auth") or {}).get("triggeredBy")
    is_admin = isinstance(principal.role, str) and principal.role.lower() == ADMIN_ROLE
    is_owner = isinstance(owner, str) and owner != "" and owner == principal.user_id
    if not (is_admin or is_owner):
        ctx.rewinder.audit_refusal(run_id, frame_no, caller)
        ctx.metrics.rewinds.labels("failed").inc()
        raise GatewayError(Unauthorized, "Only the run owner or an admin may rewind this run.")
    confirm = params.get("confirm") if isinstance(params.get("confirm"), bool) else None
    auth = caller_auth(principal)

    async def pause(target: str) -> bool:
        if not ctx.pause_run(target):
            return True
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while ctx.is_executing(target):
            if time.monotonic() > deadline:
                ctx.unpause_run(target)
                return False
            await asyncio.sleep(0.02)
        return True

    async def resume(target: str) -> None:
        await ctx.resume_if_needed(target, auth, call.connection)

    try:
        result = await ctx.rewinder.jump(run_id, frame_no, confirm, caller, pause=pause, resume=resume)
    except SmithersError as exc:
        ctx.metrics.rewinds.labels(_rewind_outcome(exc.code)).inc()
        raise refused(exc) from exc
    except Exception:
        ctx.metrics.rewinds.labels("failed").inc()
        raise
    ctx.metrics.rewinds.labels("success").inc()
    ctx.metrics.rewind_ms.observe(result.duration_ms)
    ctx.metrics.rewind_frames_deleted.observe(result.deleted_frames)
    ctx.metrics.rewind_sandboxes_reverted.observe(result.reverted_sandboxes)
    ctx.devtools.rebaseline(run_id)
    return result.to_wire()


def _rewind_outcome(code: str) -> str:
    return {"Busy": "busy", "RateLimited": "rate_limited"}.get(code, "partial" if code == "RewindFailed" else "failed")


# -- fork -----------------------------------------------------------------------------------------
async def fork(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``runs.fork``: a new run from another's frame (ours; docs/protocol.md#runsfork)."""
    ctx = call.ctx
    run_id = params.get("runId")
    if not isinstance(run_id, str) or not run_id:
        raise GatewayError(InvalidRunId, "runId is required")
    frame_no = _integer(params.get("frameNo"), 1, MAX_FRAME_NO)
    if frame_no is None:
        raise GatewayError(InvalidFrameNo, "frameNo must be an integer between 1 and 2147483647.")
    key = require_run(call, run_id)
    new_run_id = params.get("newRunId")
    if new_run_id is not None and (not isinstance(new_run_id, str) or not RUN_ID_PATTERN.fullmatch(new_run_id)):
        raise GatewayError(InvalidRunId, "newRunId must match /^[a-z0-9_-]{1,64}$/.")
    label = params.get("label") if isinstance(params.get("label"), str) else None
    auth = caller_auth(call.principal)
    try:
        record = fork_run(
            ctx.store, run_id, frame_no, new_run_id=new_run_id or str(uuid.uuid4()), auth=auth, label=label
        )
    except SmithersError as exc:
        raise refused(exc) from exc
    await ctx.resume_if_needed(record["runId"], auth, call.connection)
    return {**record, "workflow": key}


HANDLERS: Final[dict[str, Handler]] = {
    "getDevToolsSnapshot": get_devtools_snapshot,
    "getNodeOutput": get_node_output,
    "devtools.getNodeOutput": get_node_output,
    "getNodeDiff": get_node_diff,
    "devtools.getNodeDiff": get_node_diff,
    "jumpToFrame": jump_to_frame,
    "devtools.jumpToFrame": jump_to_frame,
    "rewindRun": jump_to_frame,
    "runs.fork": fork,
}
