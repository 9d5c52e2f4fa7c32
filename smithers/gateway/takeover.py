"""Taking over the runs of a gateway that died (docs/protocol.md#several-gateways-on-one-database).

Every second each gateway looks for ``running`` runs whose owner has not renewed its lease for two
heartbeat intervals and, when that owner is gone (its process is dead on this host, or it has been
silent past the lease), resumes them: the claim is a compare-and-swap, so one gateway wins and the
others step aside. A run a dead gateway left waiting for a timer is found by the wait sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from smithers.engine.ownership import HEARTBEAT_INTERVAL_MS, owner_gone
from smithers.engine.states import RUNNING
from smithers.gateway.context import GatewayContext
from smithers.store.rows import now_ms

log = logging.getLogger(__name__)

TAKEOVER_POLL_MS = HEARTBEAT_INTERVAL_MS
SILENT_AFTER_MS = 2 * HEARTBEAT_INTERVAL_MS
"""A live owner renews its lease every second and at every step: one silent for two intervals is
worth a closer look (``owner_gone``)."""


class Takeover:
    """The loop that takes over runs whose owner is gone."""

    def __init__(self, ctx: GatewayContext):
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="smithers-takeover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self) -> list[str]:
        """Resume every running run of a registered workflow whose owner is gone; their ids."""
        now = now_ms()
        with self.ctx.store.read() as tx:
            silent = tx.list_silent_runs(RUNNING, now - SILENT_AFTER_MS)
        taken = []
        for row in silent:
            run_id = row["run_id"]
            if self.ctx.is_executing(run_id) or not owner_gone(row["runtime_owner_id"], row["heartbeat_at_ms"], now):
                continue
            if await self.ctx.resume_if_needed(run_id, None):
                log.info("took over run %s (owner %s gone)", run_id, row["runtime_owner_id"])
                taken.append(run_id)
        return taken

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TAKEOVER_POLL_MS / 1000)
            try:
                await self.sweep()
            except Exception:
                log.exception("taking over runs of gone owners failed")
