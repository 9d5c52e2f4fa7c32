"""Continue waiting runs whose decision or signal was recorded outside this gateway, and watch
the timers of runs other processes suspended.

``smithers approve`` / ``deny`` / ``signal`` (or another process) write to the same database; the
run then waits for someone to resume it. Every poll, a waiting run of a registered workflow whose
event log shows a decision or a signal after it last suspended is resumed here, so an operator's
CLI decision continues the run without a second command.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from smithers.engine import events as ev
from smithers.engine.pending import pending_waits, timer_due_ms
from smithers.engine.states import WAITING_APPROVAL, WAITING_EVENT, WAITING_TIMER
from smithers.gateway.context import GatewayContext
from smithers.gateway.protocol import poll_interval_ms
from smithers.gateway.shapes import stored_workflow_key
from smithers.store.rows import now_ms

log = logging.getLogger(__name__)

WAKING_EVENTS: Final = (ev.APPROVAL_GRANTED, ev.APPROVAL_DENIED, ev.SIGNAL_RECEIVED)


def runs_to_wake(ctx: GatewayContext) -> list[str]:
    """Waiting runs of registered workflows with a decision or signal newer than their suspension."""
    found = []
    with ctx.store.read() as tx:
        for row in tx.list_runs_in([WAITING_APPROVAL, WAITING_EVENT], oldest_first=True):
            run_id = row["run_id"]
            if stored_workflow_key(row) not in ctx.workflows or ctx.is_executing(run_id):
                continue
            suspended = tx.last_seq_of_type(run_id, ev.RUN_STATUS_CHANGED)
            if any(tx.last_seq_of_type(run_id, kind) > suspended for kind in WAKING_EVENTS):
                found.append(run_id)
    return found


def timers_to_watch(ctx: GatewayContext) -> list[tuple[str, int | None]]:
    """Runs of registered workflows waiting for a timer that no wake of this gateway covers (another
    process suspended them, and may be gone), with when they are due (None: unknown, resume to see).
    Every gateway sets its own wake; the claim at the due time lets one of them go on."""
    found = []
    with ctx.store.read() as tx:
        for row in tx.list_runs_in([WAITING_TIMER], oldest_first=True):
            run_id = row["run_id"]
            if stored_workflow_key(row) in ctx.workflows and not ctx.is_executing(run_id) and not ctx.has_wake(run_id):
                found.append((run_id, timer_due_ms(tx, run_id)))
    return found


def runs_to_wake_on_start(ctx: GatewayContext) -> list[str]:
    """After a restart: runs decided or signalled while down, and waits with a timeout to re-arm."""
    ids = runs_to_wake(ctx)
    with ctx.store.read() as tx:
        for row in tx.list_runs_in([WAITING_EVENT], oldest_first=True):
            run_id = row["run_id"]
            if run_id in ids or stored_workflow_key(row) not in ctx.workflows:
                continue
            if any(wait.timeout_ms is not None for wait in pending_waits(tx, run_id)):
                ids.append(run_id)
    return ids


class WaitSweeper:
    """Polls for waiting runs to continue (same interval as the cron scheduler)."""

    def __init__(self, ctx: GatewayContext):
        self.ctx = ctx
        self.interval_s = poll_interval_ms(ctx.options.heartbeat_ms) / 1000
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="smithers-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self) -> int:
        """Resume every run that should continue; returns how many were resumed."""
        resumed = 0
        for run_id in runs_to_wake(self.ctx):
            if await self.ctx.resume_if_needed(run_id, None):
                resumed += 1
        for run_id, due in timers_to_watch(self.ctx):
            if due is None or due <= now_ms():
                resumed += int(await self.ctx.resume_if_needed(run_id, None))
            else:
                self.ctx.wake_at(run_id, due)
        return resumed

    async def _loop(self) -> None:
        try:
            for run_id in runs_to_wake_on_start(self.ctx):
                await self.ctx.resume_if_needed(run_id, None)
        except Exception:
            log.exception("resuming waiting runs after start failed")
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("resuming waiting runs failed")
