"""Continue waiting runs whose decision or signal was recorded outside this gateway.

``smithers approve`` / ``deny`` / ``signal`` (or another process) write to the same database; the
run then waits for someone to resume it. Every poll, a waiting run of a registered workflow whose
event log shows a decision or a signal after it last suspended is resumed here, so an operator's
CLI decision continues the run without a second command.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from smithers.engine import events as ev
from smithers.engine.states import WAITING_APPROVAL, WAITING_EVENT
from smithers.gateway import runs

if TYPE_CHECKING:
    from smithers.gateway.server import Gateway

log = logging.getLogger(__name__)

WAKING_EVENTS: Final = (ev.APPROVAL_GRANTED, ev.APPROVAL_DENIED, ev.SIGNAL_RECEIVED)


def runs_to_wake(gateway: Gateway) -> list[tuple[str, str]]:
    """(run id, workflow key) of waiting runs with a decision or signal newer than their suspension."""
    found = []
    with gateway.store.read() as tx:
        for row in tx.list_runs_by_status([WAITING_APPROVAL, WAITING_EVENT]):
            run_id, key = row["run_id"], runs.stored_workflow_key(row)
            if key not in gateway.workflows or run_id in gateway.active:
                continue
            suspended = tx.last_seq_of_type(run_id, ev.RUN_STATUS_CHANGED)
            if any(tx.last_seq_of_type(run_id, kind) > suspended for kind in WAKING_EVENTS):
                found.append((run_id, key))
    return found


def has_timed_wait(tx: Any, run_id: str) -> bool:
    """Whether a waiting-event node of the run waits with a timeout (it must be woken to time out)."""
    for node in tx.list_nodes(run_id):
        if node["state"] != WAITING_EVENT:
            continue
        for attempt in tx.list_attempts(run_id, node["node_id"], node["iteration"]):
            meta = json.loads(attempt["meta_json"] or "{}")
            if (meta.get("waitForEvent") or {}).get("timeoutMs") is not None:
                return True
    return False


def runs_to_wake_on_start(gateway: Gateway) -> list[str]:
    """After a restart: runs decided or signalled while down, and waits with a timeout to re-arm."""
    ids = [run_id for run_id, _ in runs_to_wake(gateway)]
    with gateway.store.read() as tx:
        for row in tx.list_runs_by_status([WAITING_EVENT]):
            run_id = row["run_id"]
            if run_id not in ids and runs.stored_workflow_key(row) in gateway.workflows and has_timed_wait(tx, run_id):
                ids.append(run_id)
    return ids


class WaitSweeper:
    """Polls for waiting runs to continue (same interval as the cron scheduler)."""

    def __init__(self, gateway: Gateway, interval_s: float):
        self.gateway = gateway
        self.interval_s = interval_s
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
        for run_id, _key in runs_to_wake(self.gateway):
            if await self.gateway.resume_if_needed(run_id, None):
                resumed += 1
        return resumed

    async def _loop(self) -> None:
        try:
            for run_id in runs_to_wake_on_start(self.gateway):
                await self.gateway.resume_if_needed(run_id, None)
        except Exception:
            log.exception("resuming waiting runs after start failed")
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("resuming waiting runs failed")
