"""Cron RPCs: list, add, remove and trigger schedules (docs/protocol.md#cron)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Final

from smithers.engine.crons import next_fire_ms, validate_pattern, validate_timezone
from smithers.errors import INVALID_REQUEST, NOT_FOUND, GatewayError
from smithers.gateway.dispatch import Call, Handler, returning
from smithers.gateway.protocol import as_boolean, as_object, as_string, validate_run_input
from smithers.gateway.shapes import caller_auth
from smithers.store.rows import now_ms, to_wire

PATH_PREFIX: Final = "gateway:"
TRIGGER_MANUAL: Final = "manual"


def cron_id_for(key: str) -> str:
    """The cron id and workflow path of a workflow's registered schedule: ``gateway:<key>``."""
    return PATH_PREFIX + key


FIRE_RUN_PREFIX: Final = "cron-"


def fire_run_id(cron_id: str, fired_at_ms: int) -> str:
    """The run id of a cron's fire: derived from the schedule and the fire's ``last_run_at_ms``, so
    the fire starts one run whichever gateway starts it, and a fire whose gateway died between
    claiming it and starting its run can be started by another (docs/protocol.md#cron)."""
    digest = hashlib.sha256(f"{cron_id}\n{fired_at_ms}".encode()).hexdigest()[:24]
    return FIRE_RUN_PREFIX + digest


def workflow_of(row: dict[str, Any]) -> str | None:
    path = str(row.get("workflow_path") or "")
    return path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else None


def cron_row(row: dict[str, Any]) -> dict[str, Any]:
    """A cron row on the wire plus ``workflow``."""
    return {**to_wire(row), "workflow": workflow_of(row)}


def list_crons(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``cron.list``/``cronList``: every cron; only ``filter.workflow`` filters (a top-level one is ignored)."""
    wanted = as_string((as_object(params.get("filter")) or {}).get("workflow"))
    with call.ctx.store.read() as tx:
        rows = [cron_row(r) for r in tx.list_crons()]
    rows.sort(key=lambda r: r["createdAtMs"] or 0)
    return [r for r in rows if wanted is None or r["workflow"] == wanted]


def add_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``cron.add``/``cronCreate``; an invalid pattern or time zone is 400 ``INVALID_INPUT`` naming it."""
    ctx = call.ctx
    key, pattern = as_string(params.get("workflow")), as_string(params.get("pattern"))
    if not key or not pattern:
        raise GatewayError(INVALID_REQUEST, "workflow and pattern are required")
    if key not in ctx.workflows:
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    with returning():
        pattern = validate_pattern(pattern)
        timezone = validate_timezone(params.get("timezone"))
    cron_id = as_string(params.get("cronId")) or str(uuid.uuid4())
    enabled = as_boolean(params.get("enabled"))
    enabled = True if enabled is None else enabled
    now = now_ms()
    following = next_fire_ms(pattern, now, timezone)
    with ctx.store.write() as tx:
        tx.upsert_cron(cron_id, pattern, cron_id_for(key), enabled, following, timezone)
    ctx.schedules_changed()
    return {
        "cronId": cron_id,
        "pattern": pattern,
        "workflowPath": cron_id_for(key),
        "enabled": enabled,
        "createdAtMs": now,
        "lastRunAtMs": None,
        "nextRunAtMs": following,
        "errorJson": None,
        "timezone": timezone,
        "workflow": key,
    }


def remove_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    cron_id = as_string(params.get("cronId"))
    if not cron_id:
        raise GatewayError(INVALID_REQUEST, "cronId is required")
    with call.ctx.store.write() as tx:
        removed = tx.delete_cron(cron_id)
    if not removed:
        raise GatewayError(NOT_FOUND, f"Cron not found: {cron_id}")
    call.ctx.schedules_changed()
    return {"cronId": cron_id, "removed": True}


async def trigger_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``cron.trigger``/``cronRun``: start the cron's (or ``workflow``'s) workflow now, as the caller."""
    ctx = call.ctx
    cron_id = as_string(params.get("cronId"))
    row = None
    if cron_id:
        with ctx.store.read() as tx:
            row = tx.get_cron(cron_id)
    key = (workflow_of(row) if row is not None else None) or as_string(params.get("workflow"))
    if not key:
        raise GatewayError(INVALID_REQUEST, "cronId or workflow is required")
    run_input = validate_run_input(params.get("input") if params.get("input") is not None else {})
    if key not in ctx.workflows:
        # The reference answers SERVER_ERROR; an unknown workflow is the caller's mistake, as for launchRun.
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    with returning():  # checked against the workflow's input model, as launchRun does
        run_input = ctx.workflows[key].workflow.validate_input(run_input)
    started_at = now_ms()
    run_id = fire_run_id(row["cron_id"], started_at) if row is not None else None
    started = await ctx.start_run(
        key, run_input, auth=caller_auth(call.principal), run_id=run_id, subscriber=call.connection
    )
    ctx.metrics.cron_triggers.labels(TRIGGER_MANUAL).inc()
    if row is not None:  # only a trigger that started a run counts as the schedule's last run
        following = next_fire_ms(row["pattern"], started_at, row["timezone"])
        with ctx.store.write() as tx:
            tx.update_cron_fields(row["cron_id"], last_run_at_ms=started_at, next_run_at_ms=following, error_json=None)
    return started


HANDLERS: Final[dict[str, Handler]] = {
    "cron.list": list_crons,
    "cronList": list_crons,
    "cron.add": add_cron,
    "cronCreate": add_cron,
    "cron.remove": remove_cron,
    "cronDelete": remove_cron,
    "cron.trigger": trigger_cron,
    "cronRun": trigger_cron,
}
