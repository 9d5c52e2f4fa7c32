"""Run RPCs (protocol §7.2-§7.9, §7.13): health, listing, launch, resume, get, cancel, rerun, hijack.

Also the run shapes other handlers reuse: the run record of ``getRun`` (§7.7) and the pending
approval entries of §13.1 (the hello snapshot lists them).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from smithers.engine.runner import auth_context
from smithers.engine.runstate import compute_run_state
from smithers.engine.states import ACTIVE_RUN_STATUSES, CONTINUED, RUNNING, TERMINAL_RUN_STATUSES
from smithers.errors import InvalidInputError, SmithersError
from smithers.gateway.auth import Principal
from smithers.gateway.dispatch import Call, escaping
from smithers.gateway.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    RUN_NOT_ACTIVE,
    GatewayError,
    InvalidRunId,
    RunNotFound,
)
from smithers.gateway.protocol import (
    as_boolean,
    as_object,
    as_string,
    read_alias,
    read_limit,
    validate_run_input,
)
from smithers.store.rows import to_wire
from smithers.store.store import Row

if TYPE_CHECKING:
    from smithers.gateway.dispatch import Handler
    from smithers.gateway.server import Gateway

SNAPSHOT_RUN_LIMIT: Final = 1_000
MAX_RUN_ID_LENGTH: Final = 256
STATUS_ALREADY_TERMINAL: Final = "already_terminal"
STATUS_RESUME_REQUESTED: Final = "resume_requested"
APPROVAL_MODES: Final = frozenset({"select", "rank", "decision"})


# -- shapes ------------------------------------------------------------------------------------
def _config(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(row.get("config_json") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stored_workflow_key(row: Mapping[str, Any]) -> str:
    """The key a stored run belongs to: ``gatewayWorkflowKey``, else the engine's ``workflowKey``."""
    cfg = _config(row)
    for key in ("gatewayWorkflowKey", "workflowKey"):
        if isinstance(cfg.get(key), str):
            return str(cfg[key])
    return str(row["workflow_name"])


def list_run_rows(gateway: Gateway, limit: int, status: str | None) -> list[dict[str, Any]]:
    """Newest runs first, each a wire run row plus ``workflowKey`` (§7.3)."""
    with gateway.store.read() as tx:
        if status:
            # Filtering with Tx.list_runs(limit, status) fails in the store at the moment (an
            # expanding bind parameter left unset), so the status filter is applied here.
            wanted = [RUNNING, CONTINUED] if status == RUNNING else [status]
            rows = sorted(tx.list_runs_by_status(wanted), key=lambda r: (-r["created_at_ms"], r["run_id"]))[:limit]
        else:
            rows = tx.list_runs(limit, None)
    return [{**to_wire(row), "workflowKey": stored_workflow_key(row)} for row in rows]


def run_record(gateway: Gateway, run_id: str) -> dict[str, Any] | None:
    """The ``getRun`` object: run row + ``workflowKey`` + ``summary`` + ``runState`` (§7.7)."""
    with gateway.store.read() as tx:
        row = tx.get_run(run_id)
        if row is None:
            return None
        record = {**to_wire(row), "workflowKey": gateway.registry.get(run_id) or stored_workflow_key(row)}
        record["summary"] = tx.count_nodes_by_state(run_id)
        with contextlib.suppress(Exception):  # omitted when it cannot be computed (§7.7)
            record["runState"] = compute_run_state(tx, row)
    return record


def _approval_entry(row: Row, request: Mapping[str, Any], node: Row | None, key: str) -> dict[str, Any]:
    def strings(value: Any) -> list[str]:
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    options = []
    for option in request.get("options") or []:
        if isinstance(option, dict) and all(isinstance(option.get(k), str) and option[k] for k in ("key", "label")):
            entry = {"key": option["key"], "label": option["label"]}
            if isinstance(option.get("summary"), str):
                entry["summary"] = option["summary"]
            options.append(entry)
    title = request.get("title")
    if not isinstance(title, str):
        title = (node or {}).get("label") or row["node_id"]
    mode = request.get("mode")
    auto = request.get("autoApprove")
    return {
        "runId": row["run_id"],
        "workflowKey": key,
        "nodeId": row["node_id"],
        "iteration": row["iteration"] or 0,
        "requestTitle": title,
        "requestSummary": request.get("summary") if isinstance(request.get("summary"), str) else None,
        "requestedAtMs": row["requested_at_ms"],
        "approvalMode": mode if mode in APPROVAL_MODES else "gate",
        "options": options,
        "allowedScopes": strings(request.get("allowedScopes")),
        "allowedUsers": strings(request.get("allowedUsers")),
        "autoApprove": auto if isinstance(auto, dict) else None,
    }


def pending_approvals(gateway: Gateway) -> list[dict[str, Any]]:
    """Every pending approval as a §13.1 entry, oldest request first."""
    out = []
    with gateway.store.read() as tx:
        keys: dict[str, str] = {}
        for row in tx.list_pending_approvals():
            run_id = row["run_id"]
            if run_id not in keys:
                run = tx.get_run(run_id)
                keys[run_id] = stored_workflow_key(run) if run is not None else ""
            try:
                request = json.loads(row["request_json"] or "{}")
            except ValueError:
                request = {}
            node = tx.get_node(run_id, row["node_id"], row["iteration"])
            out.append(_approval_entry(row, request if isinstance(request, dict) else {}, node, keys[run_id]))
    out.sort(key=lambda e: e["requestedAtMs"] or 0)
    return out


def active_run_rows(gateway: Gateway) -> list[dict[str, Any]]:
    """The hello snapshot's runs: the 1 000 newest running or waiting runs (§2.4).

    The reference takes the active runs among the 1 000 newest of any status; reading by status
    instead keeps the cost of a connect flat however many finished runs the database holds.
    """
    with gateway.store.read() as tx:
        rows = tx.list_runs_by_status(sorted(ACTIVE_RUN_STATUSES))
    rows.sort(key=lambda r: (-r["created_at_ms"], r["run_id"]))
    return [{**to_wire(row), "workflowKey": stored_workflow_key(row)} for row in rows[:SNAPSHOT_RUN_LIMIT]]


def caller_auth(call: Call) -> dict[str, Any]:
    """The RunAuthContext of an RPC caller (§10.2)."""
    p = call.principal
    return auth_context(p.user_id or "gateway", list(p.scopes), p.role or "operator", p.token_id)


def _run_id_param(params: Mapping[str, Any], code: str = INVALID_REQUEST) -> str:
    run_id = read_alias(params, "runId", as_string)
    if not run_id:
        raise GatewayError(code, "runId is required")
    return run_id


def hello_payload(gateway: Gateway, principal: Principal, session_token: str) -> dict[str, Any]:
    """The payload of a successful ``connect`` (§2.4)."""
    return {
        "protocol": gateway.options.protocol,
        "features": list(gateway.options.features),
        "policy": {"heartbeatMs": gateway.options.heartbeat_ms},
        "auth": {
            "sessionToken": session_token,
            "role": principal.role,
            "scopes": list(principal.scopes),
            "userId": principal.user_id,
            "tokenId": principal.token_id,
        },
        "snapshot": {
            "runs": active_run_rows(gateway),
            "approvals": gateway.pending_approvals(),
            "stateVersion": gateway.broadcaster.state_version,
        },
    }


def trigger_source(triggered_by: str) -> str:
    """The ``source`` label of a trigger (§10.2)."""
    if triggered_by.startswith("cron:"):
        return "cron"
    if triggered_by.startswith("webhook:"):
        return "webhook"
    return "gateway" if triggered_by == "gateway" else "user"


def serialize_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` of a run.completed for an execution that raised (no stack on the wire)."""
    if isinstance(exc, SmithersError):
        return exc.to_dict()
    return {"name": type(exc).__name__, "message": str(exc)}


# -- handlers ----------------------------------------------------------------------------------
async def health(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    gw = call.gateway
    return {
        "protocol": gw.options.protocol,
        "features": list(gw.options.features),
        "stateVersion": gw.broadcaster.state_version,
        "uptimeMs": gw.uptime_ms(),
    }


async def list_runs(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    with escaping():
        limit = read_limit(params)
    status = read_alias(params, "status", as_string, "filter")
    return list_run_rows(call.gateway, limit, status)


async def list_workflows(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    has_ui = read_alias(params, "hasUi", as_boolean, "filter")
    out = []
    # localeCompare cannot be reproduced without ICU: case-insensitive first, lower case first on ties.
    for key in sorted(call.gateway.workflows, key=lambda k: (k.casefold(), k.swapcase())):
        reg = call.gateway.workflows[key]
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


def launch(call: Call, key: str | None, raw_input: Any, run_id: str | None) -> dict[str, Any]:
    """``runs.create`` after its params are read; also the body of ``runs.rerun``."""
    gw = call.gateway
    if not key:
        raise GatewayError(INVALID_REQUEST, "workflow is required")
    reg = gw.workflows.get(key)
    if reg is None:
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    run_input = validate_run_input(raw_input)
    # The engine cannot store an empty id or one over 256 characters: "" means "not given".
    if run_id is not None and len(run_id) > MAX_RUN_ID_LENGTH:
        raise GatewayError(INVALID_INPUT, f"runId exceeds the maximum length of {MAX_RUN_ID_LENGTH} characters.")
    run_id = run_id or str(uuid.uuid4())
    if gw.resolve_run(run_id) is not None:
        raise GatewayError(INVALID_REQUEST, f"Run already exists: {run_id}")
    try:  # checked now rather than failing the run later, so the caller hears about it
        run_input = reg.workflow.validate_input(run_input)
    except InvalidInputError as exc:
        raise GatewayError(INVALID_INPUT, exc.message) from exc
    gw.start_run(key, run_input, auth=caller_auth(call), run_id=run_id, subscribe=call.connection)
    return {"runId": run_id, "workflow": key}


async def launch_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    workflow = read_alias(params, "workflow", as_string)
    run_id = read_alias(params, "runId", as_string, "options")
    return launch(call, workflow, params.get("input"), run_id)


async def resume_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id_param(params)
    gw = call.gateway
    if gw.resolve_run(run_id) is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    row = gw.store.get_run(run_id)
    # "continued" is terminal too: a continued run cannot resume.
    if row is not None and row["status"] in TERMINAL_RUN_STATUSES:
        return {"runId": run_id, "status": STATUS_ALREADY_TERMINAL}
    subscribe = call.connection  # only a WebSocket caller has one (§2.7)
    await gw.resume_if_needed(run_id, caller_auth(call), subscribe)
    return {"runId": run_id, "status": STATUS_RESUME_REQUESTED}


async def get_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id_param(params)
    record = run_record(call.gateway, run_id) if call.gateway.resolve_run(run_id) is not None else None
    if record is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    return record


async def cancel_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id_param(params)
    if not call.gateway.abort_run(run_id):
        raise GatewayError(RUN_NOT_ACTIVE, "Run is not currently active")
    return {"runId": run_id, "status": "cancelling"}


async def rerun(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id_param(params)
    gw = call.gateway
    key = gw.resolve_run(run_id)
    if key is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    with gw.store.read() as tx:
        text = tx.get_input_json(run_id)
    try:
        original = json.loads(text) if text is not None else {}
    except ValueError:
        original = {}
    return launch(call, key, as_object(original) or {}, read_alias(params, "newRunId", as_string))


async def hijack_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run_id = _run_id_param(params, InvalidRunId)
    if call.gateway.resolve_run(run_id) is None:
        raise GatewayError(RunNotFound, f"Run not found: {run_id}")
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
