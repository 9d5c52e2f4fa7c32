"""Acting on stored runs from outside their loop: approve, deny, signal, cancel.

See docs/engine.md#acting-on-runs-from-outside.

These record decisions and requests in the database only. Whoever resumes the run (the gateway,
``smithers resume``, the CLI's ``--resume``) makes it continue from them.
"""

from __future__ import annotations

import json
from typing import Any

from smithers.engine import events as ev
from smithers.engine.ownership import owner_gone
from smithers.engine.states import (
    ABORTED,
    ACTIVE_RUN_STATUS_LIST,
    ACTIVE_RUN_STATUSES,
    APPROVAL_APPROVED,
    APPROVAL_DENIED,
    APPROVAL_REQUESTED,
    CANCELLED,
    FAILED,
    IN_PROGRESS,
    PENDING,
    RUN_CANCELLED_REASON,
    RUNNING,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_TIMER,
)
from smithers.engine.waits import timer_event
from smithers.errors import (
    AMBIGUOUS_APPROVAL,
    INVALID_INPUT,
    NO_PENDING_APPROVALS,
    AlreadyDecided,
    InvalidInputError,
    RunNotActiveError,
    RunNotFoundError,
    SmithersError,
)
from smithers.store.rows import dumps, now_ms
from smithers.store.store import Row, Store, Tx


def _require_run(tx: Tx, run_id: str) -> Row:
    row = tx.get_run(run_id)
    if row is None:
        raise RunNotFoundError.of(run_id)
    return row


def pending_approval_node(store: Store, run_id: str, node_id: str | None) -> tuple[str, int]:
    """The (node id, iteration) to decide: the given node, or the only pending approval of the run."""
    with store.read() as tx:
        run = _require_run(tx, run_id)
        if run["status"] not in ACTIVE_RUN_STATUSES:
            raise RunNotActiveError(f"run {run_id} is {run['status']}; it waits for no approval")
        pending = tx.list_pending_approvals(ACTIVE_RUN_STATUS_LIST, WAITING_APPROVAL, run_id)
    if node_id is not None:
        for row in pending:
            if row["node_id"] == node_id:
                return node_id, int(row["iteration"])
        raise SmithersError(f"node {node_id} of run {run_id} is not waiting for approval", code=INVALID_INPUT)
    if not pending:
        raise SmithersError(f"run {run_id} has no pending approvals", code=NO_PENDING_APPROVALS)
    if len(pending) > 1:
        names = ", ".join(r["node_id"] for r in pending)
        raise SmithersError(
            f"run {run_id} has several pending approvals ({names}); pass --node", code=AMBIGUOUS_APPROVAL
        )
    return pending[0]["node_id"], int(pending[0]["iteration"])


def _decide(
    store: Store,
    run_id: str,
    node_id: str,
    iteration: int,
    approved: bool,
    note: str | None,
    decided_by: str | None,
    decision: Any,
) -> dict[str, Any]:
    now = now_ms()
    with store.write() as tx:
        run = _require_run(tx, run_id)
        if run["status"] not in ACTIVE_RUN_STATUSES:
            raise RunNotActiveError(f"run {run_id} is {run['status']}; it waits for no approval")
        node = tx.get_node(run_id, node_id, iteration)
        approval = tx.get_approval(run_id, node_id, iteration)
        if node is None or node["state"] != WAITING_APPROVAL or approval is None:
            raise SmithersError(
                f"Node {node_id} is not waiting for approval",
                code=INVALID_INPUT,
                details={"runId": run_id, "nodeId": node_id, "iteration": iteration},
            )
        if approval["status"] != APPROVAL_REQUESTED:
            raise SmithersError(f"approval {node_id} was already decided", code=AlreadyDecided)
        request = json.loads(approval["request_json"] or "{}")
        tx.update_approval(
            run_id,
            node_id,
            iteration,
            status=APPROVAL_APPROVED if approved else APPROVAL_DENIED,
            decided_at_ms=now,
            note=note,
            decided_by=decided_by,
            decision_json=dumps(decision) if decision is not None else approval["decision_json"],
        )
        fails = not approved and request.get("onDeny") == "fail"
        tx.update_node(run_id, node_id, iteration, state=FAILED if fails else PENDING, updated_at_ms=now)
        run = _require_run(tx, run_id)
        if run["status"] in (WAITING_APPROVAL, WAITING_EVENT):
            # With no other approval pending the run reads waiting-event until resumed
            others = [
                r
                for r in tx.list_pending_approvals(ACTIVE_RUN_STATUS_LIST, WAITING_APPROVAL, run_id)
                if r["node_id"] != node_id
            ]
            tx.update_run(run_id, status=WAITING_APPROVAL if others else WAITING_EVENT)
        kind = ev.APPROVAL_GRANTED if approved else ev.APPROVAL_DENIED
        tx.emit(run_id, kind, {"nodeId": node_id, "iteration": iteration, "note": note, "decidedBy": decided_by})
    return {"runId": run_id, "nodeId": node_id, "iteration": iteration, "approved": approved}


def approve_node(
    store: Store,
    run_id: str,
    node_id: str,
    iteration: int = 0,
    note: str | None = None,
    decided_by: str | None = None,
    decision: Any = None,
) -> dict[str, Any]:
    """Record an approval; the node runs (or records its decision) when the run resumes."""
    return _decide(store, run_id, node_id, iteration, True, note, decided_by, decision)


def deny_node(
    store: Store,
    run_id: str,
    node_id: str,
    iteration: int = 0,
    note: str | None = None,
    decided_by: str | None = None,
    decision: Any = None,
) -> dict[str, Any]:
    """Record a denial; the node's ``on_deny`` policy applies when the run resumes."""
    return _decide(store, run_id, node_id, iteration, False, note, decided_by, decision)


def signal_run(
    store: Store,
    run_id: str,
    signal_name: str,
    payload: Any = None,
    *,
    correlation_id: str | None = None,
    received_by: str | None = None,
) -> dict[str, Any]:
    """Store a signal for a run. A wait for it (now or later) consumes it when the run next passes."""
    name = (signal_name or "").strip() if isinstance(signal_name, str) else ""
    if not name:
        raise InvalidInputError("Signal name must be a non-empty string.")
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("signal payload must be JSON-serialisable") from exc
    corr = correlation_id.strip() if isinstance(correlation_id, str) and correlation_id.strip() else None
    now = now_ms()
    with store.write() as tx:
        _require_run(tx, run_id)
        seq = tx.insert_signal(run_id, name, corr, payload, now, received_by)
        tx.emit(run_id, ev.SIGNAL_RECEIVED, {"signalName": name, "correlationId": corr, "seq": seq})
    return {"runId": run_id, "seq": seq, "signalName": name, "correlationId": corr, "receivedAtMs": now}


def cancel_run(store: Store, run_id: str) -> dict[str, Any]:
    """Cancel a run: request it from a live owner, or cancel it directly when nobody executes it.

    Returns ``{runId, status}`` where status is ``cancelling`` (a live owner will stop it within
    250 ms) or ``cancelled``.
    """
    now = now_ms()
    with store.write() as tx:
        run = _require_run(tx, run_id)
        if run["status"] not in ACTIVE_RUN_STATUSES:
            raise RunNotActiveError(f"run {run_id} is {run['status']}, not active")
        tx.update_run(run_id, cancel_requested_at_ms=now)
        live = run["status"] == RUNNING and not owner_gone(run["runtime_owner_id"], run["heartbeat_at_ms"], now)
        if live:
            return {"runId": run_id, "status": "cancelling"}
        _cancel_nodes(tx, run_id, now)
        tx.update_run(
            run_id,
            status=CANCELLED,
            finished_at_ms=now,
            runtime_owner_id=None,
            heartbeat_at_ms=None,
            cancel_requested_at_ms=None,
        )
        tx.emit(run_id, ev.RUN_CANCELLED)
    return {"runId": run_id, "status": "cancelled"}


def _cancel_nodes(tx: Tx, run_id: str, now: int) -> None:
    """What a run nobody executes leaves open, cancelled as its owner would (docs/engine.md#cancellation):
    attempts cut short by a crash are aborted; timers (``TimerCancelled`` first), waits and approvals
    are cancelled with the run.
    """
    for node in tx.list_nodes(run_id):
        state = node["state"]
        if state not in (IN_PROGRESS, WAITING_TIMER, WAITING_EVENT, WAITING_APPROVAL):
            continue
        node_id, iteration, attempt = node["node_id"], node["iteration"], node["last_attempt"]
        payload: dict[str, Any] = {"nodeId": node_id, "iteration": iteration}
        if attempt and state != WAITING_APPROVAL:
            tx.update_attempt(run_id, node_id, iteration, attempt, state=CANCELLED, finished_at_ms=now)
            payload["attempt"] = attempt
        if state == WAITING_TIMER:
            tx.emit(run_id, ev.TIMER_CANCELLED, timer_event(node_id, iteration))
        payload["reason"] = ABORTED if state == IN_PROGRESS else RUN_CANCELLED_REASON
        tx.update_node(run_id, node_id, iteration, state=CANCELLED, updated_at_ms=now)
        tx.emit(run_id, ev.NODE_CANCELLED, payload)
