"""The shapes the gateway sends, each built in one place: run rows and records, pending approval
entries, the hello payload, health, and ``run.completed`` (docs/protocol.md#data-shapes).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from smithers.engine.runner import auth_context
from smithers.engine.runstate import compute_run_state
from smithers.engine.states import ACTIVE_RUN_STATUS_LIST, FAILED, WAITING_APPROVAL, statuses_matching
from smithers.engine.usage import token_summary
from smithers.errors import SmithersError, format_stack
from smithers.gateway.auth import Principal
from smithers.gateway.context import GatewayContext
from smithers.gateway.jsvalues import encode_json
from smithers.store.rows import to_wire
from smithers.store.store import Row, Store

SNAPSHOT_RUN_LIMIT: Final = 1_000
APPROVAL_MODES: Final = frozenset({"select", "rank", "decision"})
RUN_COMPLETED: Final = "run.completed"


def _config(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        value = orjson.loads(row.get("config_json") or "{}")
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


def run_row(row: Row) -> dict[str, Any]:
    """A run as ``runs.list`` and the hello snapshot show it: the wire row plus ``workflowKey``."""
    return {**to_wire(row), "workflowKey": stored_workflow_key(row)}


@dataclass(frozen=True)
class RunPage:
    """What narrows ``runs.list`` beyond 0.18.0's status (docs/protocol.md#runslist--listruns)."""

    workflow: str | None = None
    search: str | None = None
    after: tuple[int, str] | None = None
    with_run_state: bool = False


def list_run_rows(store: Store, limit: int, status: str | None, page: RunPage | None = None) -> list[dict[str, Any]]:
    """Newest runs first (``status="running"`` includes ``continued`` ones)."""
    page = page or RunPage()
    statuses = statuses_matching(status) if status else []
    with store.read() as tx:
        if page == RunPage():
            rows = tx.list_runs_in(statuses, limit) if status else tx.list_runs(limit)
        else:
            rows = tx.list_runs_page(
                limit, statuses=statuses, workflow=page.workflow, run_id_part=page.search, after=page.after
            )
        out = [run_row(row) for row in rows]
        if page.with_run_state:
            for record, row in zip(out, rows, strict=True):
                with contextlib.suppress(Exception):  # omitted when it cannot be computed
                    record["runState"] = compute_run_state(tx, row)
    return out


def run_record(ctx: GatewayContext, run_id: str) -> dict[str, Any] | None:
    """The ``getRun`` object: run row + ``workflowKey`` + ``summary`` + ``runState``."""
    with ctx.store.read() as tx:
        row = tx.get_run(run_id)
        if row is None:
            return None
        record = {**to_wire(row), "workflowKey": ctx.executing_key(run_id) or stored_workflow_key(row)}
        record["summary"] = tx.count_nodes_by_state(run_id)
        with contextlib.suppress(Exception):  # omitted when it cannot be computed
            record["runState"] = compute_run_state(tx, row)
        usage = token_summary(tx.list_usage_meta(run_id), row["config_json"])
    if usage is not None:  # agent tasks' tokens (docs/protocol.md#departures-from-0180, P66)
        record["tokenUsage"] = usage
    return record


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _approval_entry(row: Row, request: Mapping[str, Any], label: str | None, key: str) -> dict[str, Any]:
    options = []
    for option in request.get("options") or []:
        if isinstance(option, dict) and all(isinstance(option.get(k), str) and option[k] for k in ("key", "label")):
            entry = {"key": option["key"], "label": option["label"]}
            if isinstance(option.get("summary"), str):
                entry["summary"] = option["summary"]
            options.append(entry)
    title = request.get("title")
    if not isinstance(title, str):
        title = label or row["node_id"]
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
        "allowedScopes": _strings(request.get("allowedScopes")),
        "allowedUsers": _strings(request.get("allowedUsers")),
        "autoApprove": auto if isinstance(auto, dict) else None,
    }


def approval_request(row: Row) -> dict[str, Any]:
    """The stored request of an approval row (``{}`` when missing or unreadable)."""
    try:
        request = json.loads(row["request_json"] or "{}")
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


def pending_approvals(store: Store) -> list[dict[str, Any]]:
    """Every pending approval as an entry of ``approvals.list``, oldest request first."""
    out = []
    with store.read() as tx:
        keys: dict[str, str] = {}
        for row in tx.list_pending_approvals(ACTIVE_RUN_STATUS_LIST, WAITING_APPROVAL):
            run_id = row["run_id"]
            if run_id not in keys:
                run = tx.get_run(run_id)
                keys[run_id] = stored_workflow_key(run) if run is not None else ""
            node = tx.get_node(run_id, row["node_id"], row["iteration"])
            label = node["label"] if node is not None else None
            out.append(_approval_entry(row, approval_request(row), label, keys[run_id]))
    out.sort(key=lambda e: e["requestedAtMs"] or 0)
    return out


def active_run_rows(store: Store) -> list[dict[str, Any]]:
    """The hello snapshot's runs: the 1 000 newest running or waiting runs.

    The reference takes the active runs among the 1 000 newest of any status; reading by status
    instead keeps the cost of a connect flat however many finished runs the database holds.
    """
    with store.read() as tx:
        rows = tx.list_runs_in(ACTIVE_RUN_STATUS_LIST, SNAPSHOT_RUN_LIMIT)
    return [run_row(row) for row in rows]


def caller_auth(principal: Principal) -> dict[str, Any]:
    """The auth context recorded on runs an RPC caller starts or resumes."""
    p = principal
    return auth_context(p.user_id or "gateway", list(p.scopes), p.role or "operator", p.token_id)


def hello_payload(ctx: GatewayContext, principal: Principal, session_token: str) -> dict[str, Any]:
    """The payload of a successful ``connect``."""
    return {
        "protocol": ctx.options.protocol,
        "features": list(ctx.options.features),
        "policy": {"heartbeatMs": ctx.options.heartbeat_ms},
        "auth": {
            "sessionToken": session_token,
            "role": principal.role,
            "scopes": list(principal.scopes),
            "userId": principal.user_id,
            "tokenId": principal.token_id,
        },
        "snapshot": {
            "runs": active_run_rows(ctx.store),
            "approvals": pending_approvals(ctx.store),
            "stateVersion": ctx.state_version,
        },
    }


def bounded_hello(payload: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The hello payload, cut to ``max_bytes`` of JSON when its snapshot is too large.

    The newest runs and the newest pending approvals are kept (taken in turn while they fit), each
    list keeps its usual order, and ``snapshot.truncated`` is ``true``; clients page the rest with
    ``runs.list`` and ``approvals.list`` (docs/protocol.md#handshake).
    """
    if _json_bytes(payload) <= max_bytes:
        return payload
    snapshot = payload["snapshot"]
    runs: list[dict[str, Any]] = snapshot["runs"]  # newest first
    approvals: list[dict[str, Any]] = snapshot["approvals"]  # oldest first
    bare = {**payload, "snapshot": {**snapshot, "runs": [], "approvals": [], "truncated": True}}
    budget = max_bytes - _json_bytes(bare)
    kept_runs: list[dict[str, Any]] = []
    kept_approvals: list[dict[str, Any]] = []
    candidates = [iter(runs), reversed(approvals)]
    targets = [kept_runs, kept_approvals]
    while candidates and budget > 0:
        for index in range(len(candidates) - 1, -1, -1):
            item = next(candidates[index], None)
            size = _json_bytes(item) + 1 if item is not None else 0
            if item is None or size > budget:
                del candidates[index], targets[index]
                continue
            targets[index].append(item)
            budget -= size
    kept_approvals.reverse()
    return {**payload, "snapshot": {**snapshot, "runs": kept_runs, "approvals": kept_approvals, "truncated": True}}


def _json_bytes(value: Any) -> int:
    return len(encode_json(value).encode("utf-8"))


def health_payload(ctx: GatewayContext, *, route: bool) -> dict[str, Any]:
    """``GET /health`` (``route=True``) or the ``health`` method."""
    options = ctx.options
    if route:
        return {
            "ok": True,
            "protocol": options.protocol,
            "features": list(options.features),
            "stateVersion": ctx.state_version,
        }
    return {
        "protocol": options.protocol,
        "features": list(options.features),
        "stateVersion": ctx.state_version,
        "uptimeMs": ctx.uptime_ms(),
    }


def trigger_source(triggered_by: str) -> str:
    """The ``source`` label of a trigger."""
    if triggered_by.startswith("cron:"):
        return "cron"
    if triggered_by.startswith("webhook:"):
        return "webhook"
    return "gateway" if triggered_by == "gateway" else "user"


def serialize_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` of a ``run.completed`` for an execution that raised, with its stack."""
    if isinstance(exc, SmithersError):
        return exc.to_dict() if exc.stack is not None else {**exc.to_dict(), "stack": format_stack(exc)}
    return {"name": type(exc).__name__, "message": str(exc), "stack": format_stack(exc)}


def run_completed(run_id: str, status: str, error: Any = None) -> dict[str, Any]:
    """The ``run.completed`` payload: ``{runId, status, error?}`` (error only on failure)."""
    payload: dict[str, Any] = {"runId": run_id, "status": status}
    if status == FAILED:
        payload["error"] = error
    return payload
