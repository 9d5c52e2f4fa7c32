"""The cron scheduler: registered schedules and firing due crons (docs/protocol.md#cron).

A fire is claimed with a compare-and-swap on ``next_run_at_ms`` before its run starts, so two
scheduler passes (or two gateways on one database) never start the same fire twice; and the next
fire is computed from *now*, so a gateway that was down across several due times fires once. The
fire's run id is derived from the schedule and the claim's time (:func:`fire_run_id`): a gateway
that dies between claiming a fire and starting its run leaves it to the others, whose passes start
a claimed fire that has no run after :data:`REPAIR_AFTER_MS` (the id makes a second start fail):
each due time fires exactly once.
The scheduler sleeps until the next due time (at most one poll interval, so schedules added by
another process are seen), which lets a ``* * * * * *`` schedule fire every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from smithers.engine import events as ev
from smithers.engine.crons import next_fire_ms, validate_pattern, validate_timezone
from smithers.engine.runner import auth_context
from smithers.errors import SmithersError
from smithers.gateway.context import GatewayContext
from smithers.gateway.cron import FIRE_RUN_PREFIX, cron_id_for, fire_run_id, workflow_of
from smithers.gateway.protocol import poll_interval_ms
from smithers.gateway.shapes import stored_workflow_key
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import loads, now_ms

log = logging.getLogger(__name__)

CRON_TRIGGERED: Final = "cron.triggered"
CRON_TRIGGERED_BY: Final = "cron:gateway"
CRON_ID_KEY: Final = "gatewayCronId"
"""The key of a fire's run's ``config_json`` that names its schedule."""
TRIGGER_SCHEDULED: Final = "scheduled"
RETRY_AFTER_ERROR_MS: Final = 60_000
REPAIR_AFTER_MS: Final = 10_000
"""A claimed fire without its run this long after the claim is started by whoever sees it."""
REPAIR_WITHIN_MS: Final = 600_000
"""Claimed fires older than this are not looked at again."""
MIN_SLEEP_S: Final = 0.01


def register_schedules(ctx: GatewayContext) -> None:
    """Upsert the ``gateway:<key>`` row of every workflow registered with a schedule.

    An invalid pattern or time zone raises, so the gateway does not start with a schedule that
    would never fire.
    """
    now = now_ms()
    with ctx.store.write() as tx:
        for key, reg in ctx.workflows.items():
            if reg.schedule is None:
                continue
            pattern = validate_pattern(reg.schedule)
            timezone = validate_timezone(reg.timezone)
            existing = tx.get_cron(cron_id_for(key))
            following = next_fire_ms(pattern, now, timezone)
            if (
                existing is not None
                and (existing["pattern"], existing["timezone"]) == (pattern, timezone)
                and existing["next_run_at_ms"] is not None
            ):
                # Same schedule as before a restart: keep its due time, so a fire missed while the
                # gateway was down happens once now (the reference recomputes it and drops the fire).
                following = min(following, existing["next_run_at_ms"])
            tx.upsert_cron(cron_id_for(key), pattern, cron_id_for(key), True, following, timezone)


class CronScheduler:
    """Fires due crons of registered workflows."""

    def __init__(self, ctx: GatewayContext):
        self.ctx = ctx
        self.poll_s = poll_interval_ms(ctx.options.heartbeat_ms) / 1000
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def wake(self) -> None:
        """Schedules changed here: look at them now rather than at the next poll."""
        self._changed.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="smithers-cron")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            next_due: int | None = None
            try:
                _, next_due = await self.tick()
            except Exception:
                log.exception("cron scheduler pass failed")
            sleep = self.poll_s
            if next_due is not None:
                sleep = min(sleep, max(MIN_SLEEP_S, (next_due - now_ms()) / 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), sleep)
            self._changed.clear()

    def on_remote_event(self, event: StoredEvent) -> None:
        """Another process started a run: when it is a fire of a schedule, this gateway's clients
        hear ``cron.triggered`` too, so every gateway's clients hear each fire once whichever
        gateway fired it (docs/protocol.md#several-gateways-on-one-database)."""
        if event.type != ev.RUN_STARTED or event.payload.get("resumed") or not event.run_id.startswith(FIRE_RUN_PREFIX):
            return
        row = self.ctx.store.get_run(event.run_id)
        if row is None:
            return
        cron_id = (loads(row["config_json"]) or {}).get(CRON_ID_KEY)
        if isinstance(cron_id, str):
            self._announce(cron_id, stored_workflow_key(row), event.run_id)

    def _announce(self, cron_id: str, key: str | None, run_id: str) -> None:
        self.ctx.broadcast(CRON_TRIGGERED, {"cronId": cron_id, "workflow": key, "runId": run_id})

    async def tick(self, now: int | None = None) -> tuple[list[str], int | None]:
        """One pass: start a run for each due cron; returns the started run ids and the next due time."""
        now = now_ms() if now is None else now
        with self.ctx.store.read() as tx:
            crons = tx.list_crons(enabled_only=True)
        started = []
        next_due: int | None = None
        for row in crons:
            key = workflow_of(row)
            if key is None or key not in self.ctx.workflows:
                continue
            repaired = await self._repair(row, key, now)
            if repaired is not None:
                started.append(repaired)
            due = row["next_run_at_ms"]
            if due is not None and due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            run_id, following = await self._fire(row, key, now)
            if run_id is not None:
                started.append(run_id)
            if following is not None:
                next_due = following if next_due is None else min(next_due, following)
        return started, next_due

    async def _repair(self, row: dict[str, Any], key: str, now: int) -> str | None:
        """Start the run of a fire claimed a while ago whose gateway never started it."""
        fired = row["last_run_at_ms"]
        if fired is None or row["error_json"] or not now - REPAIR_WITHIN_MS < fired < now - REPAIR_AFTER_MS:
            return None
        run_id = fire_run_id(row["cron_id"], fired)
        if self.ctx.store.get_run(run_id) is not None:
            return None
        log.warning("cron %s: the fire of %d has no run; starting it", row["cron_id"], fired)
        return await self._start(row["cron_id"], key, run_id, row["next_run_at_ms"], now)

    async def _fire(self, row: dict[str, Any], key: str, now: int) -> tuple[str | None, int | None]:
        ctx = self.ctx
        cron_id = row["cron_id"]
        try:
            following = next_fire_ms(row["pattern"], now, row["timezone"])
        except SmithersError as exc:
            self._record_error(cron_id, row["next_run_at_ms"], now, exc.message)
            return None, None
        with ctx.store.write() as tx:
            if not tx.claim_cron_fire(cron_id, row["next_run_at_ms"], now, following):
                return None, None  # another pass (or gateway) took this fire
            tx.set_cron_error(cron_id, None)
        return await self._start(cron_id, key, fire_run_id(cron_id, now), following, now), following

    async def _start(self, cron_id: str, key: str, run_id: str, following: int | None, now: int) -> str | None:
        """Start a claimed fire's run (None when it could not start, or another gateway started it)."""
        ctx = self.ctx
        try:
            auth = auth_context(CRON_TRIGGERED_BY, ["*"], "system")
            await ctx.start_run(key, {}, auth=auth, run_id=run_id, config={CRON_ID_KEY: cron_id})
        except Exception as exc:
            if ctx.store.get_run(run_id) is not None:
                return None  # another gateway started this fire first (the id refused a second start)
            log.warning("cron %s could not start %s: %s", cron_id, key, exc)
            self._record_error(cron_id, following, now, exc.message if isinstance(exc, SmithersError) else str(exc))
            return None
        ctx.metrics.cron_triggers.labels(TRIGGER_SCHEDULED).inc()
        self._announce(cron_id, key, run_id)
        return run_id

    def _record_error(self, cron_id: str, next_run: int | None, now: int, message: str) -> None:
        with self.ctx.store.write() as tx:
            tx.update_cron_fields(
                cron_id, last_run_at_ms=now, next_run_at_ms=next_run or now + RETRY_AFTER_ERROR_MS, error_json=message
            )
