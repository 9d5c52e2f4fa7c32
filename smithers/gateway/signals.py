"""Signal RPCs: deliver an external event to a run and resume it (docs/protocol.md#methods)."""

from __future__ import annotations

from typing import Any, Final

from smithers.engine import control
from smithers.engine.signal_check import check_signal
from smithers.errors import INVALID_REQUEST, NOT_FOUND, GatewayError
from smithers.gateway.dispatch import Call, Handler, returning
from smithers.gateway.protocol import as_string, read_alias
from smithers.gateway.shapes import caller_auth

SIGNAL_SENT: Final = "sent"


async def submit_signal(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``signals.send``/``submitSignal``: ``signalName`` or ``correlationKey``, ``data`` or ``payload``.

    ``correlationKey`` (the stable form) is the name fallback and the correlation fallback; a wait
    with no correlation id still accepts the signal (docs/protocol.md#departures-from-0180), so a
    plain ``WaitForEvent`` resumes. A signal for a run that is not waiting yet is stored and
    consumed when its wait starts.
    """
    ctx = call.ctx
    run_id = read_alias(params, "runId", as_string)
    key = as_string(params.get("correlationKey"))
    name = as_string(params.get("signalName")) or key
    if not run_id or not name:
        raise GatewayError(INVALID_REQUEST, "runId and signalName are required")
    workflow_key = ctx.resolve_run(run_id)
    if workflow_key is None:
        raise GatewayError(NOT_FOUND, f"Run not found: {run_id}")
    correlation = as_string(params.get("correlationId")) or key
    data = params.get("data")
    if data is None:
        data = params.get("payload")
    if data is None:
        data = {}
    registration = ctx.workflows.get(workflow_key)
    if registration is not None:
        # A payload the waiting node's model refuses is refused here; the run keeps waiting
        # (docs/protocol.md#departures-from-0180).
        with returning():
            check_signal(ctx.store, registration.workflow, run_id, name, correlation, data)
    # A blank name escapes as INVALID_INPUT from the engine (400 / id "invalid"), as the reference does.
    record = control.signal_run(
        ctx.store, run_id, name, data, correlation_id=correlation, received_by=call.principal.user_id
    )
    ctx.metrics.signals.labels(SIGNAL_SENT).inc()
    await ctx.resume_if_needed(run_id, caller_auth(call.principal), call.connection)
    return record


HANDLERS: Final[dict[str, Handler]] = {"signals.send": submit_signal, "submitSignal": submit_signal}
