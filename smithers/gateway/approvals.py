"""Approval RPCs: listing pending approvals and deciding them (docs/protocol.md#methods)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from smithers.engine import control
from smithers.engine.states import APPROVAL_REQUESTED
from smithers.errors import (
    FORBIDDEN,
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    RUN_NOT_ACTIVE,
    RUN_NOT_FOUND,
    AlreadyDecided,
    GatewayError,
    SmithersError,
)
from smithers.gateway.dispatch import Call, Handler, escaping
from smithers.gateway.protocol import as_number, as_object, as_string, optional_positive_int, read_alias
from smithers.gateway.scopes import has_scope, required_scope_for_method
from smithers.gateway.shapes import approval_request, caller_auth, pending_approvals


def list_approvals(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``approvals.list``/``listApprovals``: filters ``runId``, ``workflow``, ``limit`` (top level or ``filter``)."""
    run_id = read_alias(params, "runId", as_string, "filter")
    workflow = read_alias(params, "workflow", as_string, "filter")
    nested = as_object(params.get("filter")) or {}
    with escaping():
        limit = optional_positive_int(
            params["limit"] if params.get("limit") is not None else nested.get("limit"), "limit"
        )
    entries = [
        e
        for e in pending_approvals(call.ctx.store)
        if (run_id is None or e["runId"] == run_id) and (workflow is None or e["workflowKey"] == workflow)
    ]
    return entries[:limit] if limit is not None else entries


def _read_decision(params: Mapping[str, Any]) -> tuple[bool | None, Any, str | None, bool]:
    """(approved, decision value, note, value given) from the legacy or the stable parameter shape."""
    decision = params.get("decision")
    approved = params.get("approved")
    if not isinstance(approved, bool) and isinstance(decision, dict) and isinstance(decision.get("approved"), bool):
        approved = decision["approved"]
    note = params.get("note")
    if not isinstance(note, str) and isinstance(decision, dict) and isinstance(decision.get("note"), str):
        note = decision["note"]
    if isinstance(decision, dict) and "value" in decision:
        value, given = decision["value"], True
    else:
        value, given = decision, "decision" in params and decision is not None
    return (approved if isinstance(approved, bool) else None), value, (note if isinstance(note, str) else None), given


def _check_allowed(call: Call, request: Mapping[str, Any]) -> None:
    users = [u for u in request.get("allowedUsers") or [] if isinstance(u, str)]
    if users and (call.principal.user_id is None or call.principal.user_id not in users):
        raise GatewayError(FORBIDDEN, "User is not allowed to decide this approval")
    scopes = [s for s in request.get("allowedScopes") or [] if isinstance(s, str)]
    granted = call.principal.scopes
    if scopes and not any(has_scope(granted, required_scope_for_method(s), s) for s in scopes):
        raise GatewayError(FORBIDDEN, "Connection is missing required approval scope")


def _validate_value(mode: Any, value: Any, options: Any) -> None:
    keys = {o["key"] for o in options or [] if isinstance(o, dict) and isinstance(o.get("key"), str)}
    if mode == "select":
        selected = value.get("selected") if isinstance(value, dict) else None
        if not isinstance(selected, str) or not selected:
            raise GatewayError(INVALID_REQUEST, "select approvals require decision.selected")
        if keys and selected not in keys:
            raise GatewayError(INVALID_REQUEST, f"Unknown selection: {selected}")
    elif mode == "rank":
        ranked = value.get("ranked") if isinstance(value, dict) else None
        if not isinstance(ranked, list) or not ranked or not all(isinstance(r, str) for r in ranked):
            raise GatewayError(INVALID_REQUEST, "rank approvals require decision.ranked")
        if keys and any(r not in keys for r in ranked):
            raise GatewayError(INVALID_REQUEST, "rank approval included unknown options")


async def submit_approval(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``approvals.decide``/``submitApproval``, then resume the run."""
    ctx = call.ctx
    run_id = read_alias(params, "runId", as_string)
    node_id = read_alias(params, "nodeId", as_string)
    iteration_value = as_number(params.get("iteration"))
    iteration = int(iteration_value) if iteration_value is not None else 0
    approved, value, note, value_given = _read_decision(params)
    if not run_id or not node_id or approved is None:
        raise GatewayError(INVALID_REQUEST, "runId, nodeId, and approved are required")
    if ctx.resolve_run(run_id) is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    with ctx.store.read() as tx:
        row = tx.get_approval(run_id, node_id, iteration)
    if row is not None and row["status"] != APPROVAL_REQUESTED:
        raise GatewayError(
            AlreadyDecided,
            f"Approval for {node_id} has already been decided",
            {"runId": run_id, "nodeId": node_id, "iteration": iteration, "status": row["status"]},
        )
    request = approval_request(row) if row is not None else {}
    _check_allowed(call, request)
    if approved:
        _validate_value(request.get("mode"), value, request.get("options"))
    decide = control.approve_node if approved else control.deny_node
    decided_by = call.principal.user_id
    try:
        decide(
            ctx.store,
            run_id,
            node_id,
            iteration,
            note=note,
            decided_by=decided_by,
            decision=value if value_given else None,
        )
    except SmithersError as exc:
        if exc.code == AlreadyDecided:  # another caller decided it between the check and the write
            raise GatewayError(AlreadyDecided, f"Approval for {node_id} has already been decided", exc.details) from exc
        if exc.code not in (INVALID_INPUT, RUN_NOT_FOUND, RUN_NOT_ACTIVE):
            raise
        # The node is not waiting for a decision. The reference answers SERVER_ERROR with the
        # engine's message; there is simply no pending approval to decide (404).
        raise GatewayError(NOT_FOUND, exc.message, exc.details) from exc
    ctx.metrics.approval_decisions.labels("approved" if approved else "denied").inc()
    # ``approval.decided`` goes out from the decision's engine event, to the clients of every
    # gateway (docs/protocol.md#departures-from-0180), whether or not the run executes anywhere.
    await ctx.resume_if_needed(run_id, caller_auth(call.principal), call.connection)
    return {"runId": run_id, "nodeId": node_id, "iteration": iteration, "approved": approved}


HANDLERS: Final[dict[str, Handler]] = {
    "approvals.list": list_approvals,
    "listApprovals": list_approvals,
    "approvals.decide": submit_approval,
    "submitApproval": submit_approval,
}
