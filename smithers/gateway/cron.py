"""Cron (protocol §16): registered schedules, the scheduler loop and the cron RPCs.

A fire is claimed with a compare-and-swap on ``next_run_at_ms`` before its run starts, so two
scheduler passes (or two gateways on one database) never start the same fire twice; and the next
fire is computed from *now*, so a gateway that was down across several due times fires once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

from smithers.engine.crons import next_fire_ms, validate_pattern
from smithers.engine.runner import auth_context
from smithers.errors import SmithersError
from smithers.gateway.dispatch import Call, engine_error
from smithers.gateway.errors import INVALID_REQUEST, NOT_FOUND, GatewayError
from smithers.gateway.protocol import as_boolean, as_object, as_string, validate_run_input
from smithers.gateway.runs import caller_auth
from smithers.store.rows import now_ms, to_wire

if TYPE_CHECKING:
    from smithers.gateway.dispatch import Handler
    from smithers.gateway.server import Gateway

log = logging.getLogger(__name__)

PATH_PREFIX: Final = "gateway:"
CRON_TRIGGERED: Final = "cron.triggered"
CRON_TRIGGERED_BY: Final = "cron:gateway"
RETRY_AFTER_ERROR_MS: Final = 60_000


def cron_id_for(key: str) -> str:
    return PATH_PREFIX + key


def workflow_of(row: dict[str, Any]) -> str | None:
    path = str(row.get("workflow_path") or "")
    return path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else None


def cron_row(row: dict[str, Any], fallback_key: str | None = None) -> dict[str, Any]:
    """A cron row on the wire (§18.5) plus ``workflow``."""
    return {**to_wire(row), "workflow": workflow_of(row) or fallback_key}


def register_schedules(gateway: Gateway) -> None:
    """Upsert the ``gateway:<key>`` row of every workflow registered with a schedule (§16.1)."""
    now = now_ms()
    with gateway.store.write() as tx:
        for key, reg in gateway.workflows.items():
            if reg.schedule is None:
                continue
            pattern = validate_pattern(reg.schedule)
            existing = tx.get_cron(cron_id_for(key))
            following = next_fire_ms(pattern, now)
            if existing is not None and existing["pattern"] == pattern and existing["next_run_at_ms"] is not None:
                # Same schedule as before a restart: keep its due time, so a fire missed while the
                # gateway was down happens once now (the reference recomputes it and drops the fire).
                following = min(following, existing["next_run_at_ms"])
            tx.upsert_cron(cron_id_for(key), pattern, cron_id_for(key), True, following)


def poll_interval_s(heartbeat_ms: int) -> float:
    return max(1000, min(heartbeat_ms, 15000)) / 1000


class CronScheduler:
    """Fires due crons of registered workflows every poll interval."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="smithers-cron")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        interval = poll_interval_s(self.gateway.options.heartbeat_ms)
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("cron scheduler pass failed")
            await asyncio.sleep(interval)

    def tick(self, now: int | None = None) -> list[str]:
        """One pass: start a run for each due cron; returns the started run ids."""
        now = now_ms() if now is None else now
        gw = self.gateway
        with gw.store.read() as tx:
            crons = tx.list_crons(enabled_only=True)
        started = []
        for row in crons:
            key = workflow_of(row)
            if key is None or key not in gw.workflows:
                continue
            due = row["next_run_at_ms"]
            if due is not None and due > now:
                continue
            started_id = self._fire(row, key, now)
            if started_id is not None:
                started.append(started_id)
        return started

    def _fire(self, row: dict[str, Any], key: str, now: int) -> str | None:
        gw = self.gateway
        cron_id = row["cron_id"]
        try:
            following = next_fire_ms(row["pattern"], now)
        except SmithersError as exc:
            self._record_error(cron_id, row["next_run_at_ms"], now, exc.message)
            return None
        with gw.store.write() as tx:
            if not tx.claim_cron_fire(cron_id, row["next_run_at_ms"], now, following):
                return None  # another pass (or gateway) took this fire
            tx.set_cron_error(cron_id, None)
        try:
            auth = auth_context(CRON_TRIGGERED_BY, ["*"], "system")
            run_id = gw.start_run(key, {}, auth=auth)["runId"]
        except Exception as exc:
            log.warning("cron %s could not start %s: %s", cron_id, key, exc)
            self._record_error(cron_id, following, now, str(exc))
            return None
        gw.metrics.cron_triggers.labels("schedule").inc()
        gw.broadcast(CRON_TRIGGERED, {"cronId": cron_id, "workflow": key, "runId": run_id})
        return str(run_id)

    def _record_error(self, cron_id: str, next_run: int | None, now: int, message: str) -> None:
        with self.gateway.store.write() as tx:
            tx.update_cron_fields(
                cron_id, last_run_at_ms=now, next_run_at_ms=next_run or now + RETRY_AFTER_ERROR_MS, error_json=message
            )


# -- RPCs (§16.3) ----------------------------------------------------------------------------------
async def list_crons(call: Call, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``cron.list``/``cronList``: every cron; only ``filter.workflow`` filters (a top-level one is ignored)."""
    wanted = as_string((as_object(params.get("filter")) or {}).get("workflow"))
    with call.gateway.store.read() as tx:
        rows = [cron_row(r) for r in tx.list_crons()]
    rows.sort(key=lambda r: r["createdAtMs"] or 0)
    return [r for r in rows if wanted is None or r["workflow"] == wanted]


async def add_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``cron.add``/``cronCreate``; an invalid pattern is 400 INVALID_INPUT naming it (ours, §23 D2)."""
    gw = call.gateway
    key, pattern = as_string(params.get("workflow")), as_string(params.get("pattern"))
    if not key or not pattern:
        raise GatewayError(INVALID_REQUEST, "workflow and pattern are required")
    if key not in gw.workflows:
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    try:
        pattern = validate_pattern(pattern)
    except SmithersError as exc:
        raise engine_error(exc) from exc
    cron_id = as_string(params.get("cronId")) or str(uuid.uuid4())
    enabled = as_boolean(params.get("enabled"))
    enabled = True if enabled is None else enabled
    now = now_ms()
    following = next_fire_ms(pattern, now)
    with gw.store.write() as tx:
        tx.upsert_cron(cron_id, pattern, cron_id_for(key), enabled, following)
    return {
        "cronId": cron_id,
        "pattern": pattern,
        "workflowPath": cron_id_for(key),
        "enabled": enabled,
        "createdAtMs": now,
        "lastRunAtMs": None,
        "nextRunAtMs": following,
        "errorJson": None,
        "workflow": key,
    }


async def remove_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    cron_id = as_string(params.get("cronId"))
    if not cron_id:
        raise GatewayError(INVALID_REQUEST, "cronId is required")
    with call.gateway.store.write() as tx:
        removed = tx.delete_cron(cron_id)
    if not removed:
        raise GatewayError(NOT_FOUND, f"Cron not found: {cron_id}")
    return {"cronId": cron_id, "removed": True}


async def trigger_cron(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """``cron.trigger``/``cronRun``: start the cron's (or ``workflow``'s) workflow now, as the caller."""
    gw = call.gateway
    cron_id = as_string(params.get("cronId"))
    row = None
    if cron_id:
        with gw.store.read() as tx:
            row = tx.get_cron(cron_id)
    key = (workflow_of(row) if row is not None else None) or as_string(params.get("workflow"))
    if not key:
        raise GatewayError(INVALID_REQUEST, "cronId or workflow is required")
    if row is not None:
        now = now_ms()
        with gw.store.write() as tx:
            tx.update_cron_fields(
                row["cron_id"], last_run_at_ms=now, next_run_at_ms=next_fire_ms(row["pattern"], now), error_json=None
            )
    run_input = validate_run_input(params.get("input") if params.get("input") is not None else {})
    if key not in gw.workflows:
        raise RuntimeError(f"Unknown workflow: {key}")  # SERVER_ERROR, as the reference
    gw.metrics.cron_triggers.labels("manual").inc()
    return gw.start_run(key, run_input, auth=caller_auth(call), subscribe=call.connection)


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
