"""Run RPCs: health, listing, launch, resume, get, cancel, rerun, hijack (docs/protocol.md#methods)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from smithers.engine.control import cancel_run as engine_cancel_run
from smithers.engine.states import ACTIVE_RUN_STATUSES, CANCELLED, TERMINAL_RUN_STATUSES
from smithers.errors import (
    CONFLICT,
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    RUN_NOT_ACTIVE,
    GatewayError,
    InvalidRunId,
    RunNotFound,
    SmithersError,
)
from smithers.gateway.dispatch import Call, Handler, escaping, returning
from smithers.gateway.protocol import (
    as_boolean,
    as_object,
    as_string,
    read_alias,
    read_limit,
    validate_run_input,
)
from smithers.gateway.shapes import (
    RunPage,
    caller_auth,
    health_payload,
    list_run_rows,
    run_record,
)

MAX_RUN_ID_LENGTH: Final = 256
STATUS_ALREADY_TERMINAL: Final = "already_terminal"
STATUS_RESUME_REQUESTED: Final = "resume_requested"


def run_id_param(params: Mapping[str, Any], code: str = INVALID_REQUEST) -> str:
    """The required ``runId`` param (``code`` names the refusal when it is missing)."""
    run_id = read_alias(params, "runId", as_string)
    if not run_id:
        raise GatewayError(code, "runId is required")
    return run_id


def require_run(call: Call, run_id: str, code: str = NOT_FOUND) -> str:
    """The workflow key of a known run, or a refusal ``code`` ``Run not found: <id>``."""
    key = call.ctx.resolve_run(run_id)
    if key is None:
        raise GatewayError(code, f"Run not found: {run_id}")
    return key


def health(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return health_payload(call.ctx, route=False)


def list_runs(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``runs.list``: 0.18.0's ``limit``/``status``, and ours for paging through many runs:
    ``workflow``, ``search`` (part of the run id), ``after`` (the last row of the previous page)
    and ``withRunState`` (docs/protocol.md#runslist--listruns)."""
    with escaping():
        limit = read_limit(params)
    status = read_alias(params, "status", as_string, "filter")
    page = RunPage(
        workflow=read_alias(params, "workflow", as_string, "filter"),
        search=read_alias(params, "search", as_string, "filter") or None,
        after=_page_after(params.get("after")),
        with_run_state=read_alias(params, "withRunState", as_boolean, "filter") is True,
    )
    return list_run_rows(call.ctx.store, limit, status, page)


def _page_after(value: Any) -> tuple[int, str] | None:
    if value is None:
        return None
    after = as_object(value)
    created, run_id = (after.get("createdAtMs"), after.get("runId")) if after is not None else (None, None)
    if isinstance(created, bool) or not isinstance(created, int) or not isinstance(run_id, str):
        raise GatewayError(INVALID_INPUT, "after must be an object {createdAtMs: integer, runId: string}.")
    return created, run_id


def list_workflows(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    has_ui = read_alias(params, "hasUi", as_boolean, "filter")
    workflows = call.ctx.workflows
    out = []
    # localeCompare cannot be reproduced without ICU: case-insensitive first, lower case first on ties.
    for key in sorted(workflows, key=lambda k: (k.casefold(), k.swapcase())):
        reg = workflows[key]
        summary: dict[str, Any] = {"key": key}
        if reg.workflow.readable_name:
            summary["readableName"] = reg.workflow.readable_name
        if reg.workflow.description:
            summary["description"] = reg.workflow.description
        summary["hasUi"] = reg.ui_path is not None
        summary["uiPath"] = reg.ui_path
        if has_ui is None or summary["hasUi"] == has_ui:
            out.append(summary)
    return out


async def launch(call: Call, key: str | None, raw_input: Any, run_id: str | None) -> dict[str, Any]:
    """``runs.create`` after its params are read; also the body of ``runs.rerun``."""
    ctx = call.ctx
    if not key:
        raise GatewayError(INVALID_REQUEST, "workflow is required")
    reg = ctx.workflows.get(key)
    if reg is None:
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    run_input = validate_run_input(raw_input)
    # The engine cannot store an empty id or one over 256 characters: "" means "not given".
    if run_id is not None and len(run_id) > MAX_RUN_ID_LENGTH:
        raise GatewayError(INVALID_INPUT, f"runId exceeds the maximum length of {MAX_RUN_ID_LENGTH} characters.")
    run_id = run_id or str(uuid.uuid4())
    if ctx.resolve_run(run_id) is not None:
        row = ctx.store.get_run(run_id)
        if row is None or row["status"] in ACTIVE_RUN_STATUSES:
            raise GatewayError(CONFLICT, f"Run {run_id} is already active")
        raise GatewayError(INVALID_REQUEST, f"Run already exists: {run_id}")
    with returning():  # checked now rather than failing the run later, so the caller hears about it
        run_input = reg.workflow.validate_input(run_input)
    return await ctx.start_run(
        key, run_input, auth=caller_auth(call.principal), run_id=run_id, subscriber=call.connection
    )


async def launch_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    workflow = read_alias(params, "workflow", as_string)
    run_id = read_alias(params, "runId", as_string, "options")
    return await launch(call, workflow, params.get("input"), run_id)


async def resume_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = run_id_param(params)
    require_run(call, run_id)
    row = call.ctx.store.get_run(run_id)
    # "continued" is terminal too: a continued run cannot resume.
    if row is not None and row["status"] in TERMINAL_RUN_STATUSES:
        return {"runId": run_id, "status": STATUS_ALREADY_TERMINAL}
    await call.ctx.resume_if_needed(run_id, caller_auth(call.principal), call.connection)
    return {"runId": run_id, "status": STATUS_RESUME_REQUESTED}


def get_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = run_id_param(params)
    record = run_record(call.ctx, run_id)
    if record is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    return record


def cancel_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """A run executing here is aborted; a waiting run, or one executing in another process, is
    cancelled through the store (docs/protocol.md#runscancel--cancelrun, P64)."""
    run_id = run_id_param(params)
    if call.ctx.abort_run(run_id):
        return {"runId": run_id, "status": "cancelling"}
    row = call.ctx.store.get_run(run_id)
    if row is None or row["status"] not in ACTIVE_RUN_STATUSES:
        raise GatewayError(RUN_NOT_ACTIVE, "Run is not currently active")
    try:
        outcome = engine_cancel_run(call.ctx.store, run_id)
    except SmithersError as exc:  # it ended meanwhile
        raise GatewayError(RUN_NOT_ACTIVE, "Run is not currently active") from exc
    # a run cancelled here and now announces it from its RunCancelled event (run.completed)
    return {"runId": run_id, "status": "cancelling" if outcome["status"] != CANCELLED else CANCELLED}


async def rerun(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = run_id_param(params)
    key = require_run(call, run_id)
    with call.ctx.store.read() as tx:
        text = tx.get_input_json(run_id)
    try:
        original = json.loads(text) if text is not None else {}
    except ValueError:
        original = {}
    return await launch(call, key, as_object(original) or {}, read_alias(params, "newRunId", as_string))


def hijack_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = run_id_param(params, InvalidRunId)
    require_run(call, run_id, RunNotFound)
    # A placeholder in 0.18.0: nothing is stored and nothing changes.
    return {"runId": run_id, "status": "hijack-ready", "sessionId": str(uuid.uuid4())}


HANDLERS: Final[dict[str, Handler]] = {
    "health": health,
    "runs.list": list_runs,
    "listRuns": list_runs,
    "workflows.list": list_workflows,
    "listWorkflows": list_workflows,
    "runs.create": launch_run,
    "launchRun": launch_run,
    "resumeRun": resume_run,
    "runs.get": get_run,
    "getRun": get_run,
    "runs.cancel": cancel_run,
    "cancelRun": cancel_run,
    "runs.rerun": rerun,
    "hijackRun": hijack_run,
}
