"""How a run ends or pauses: finished, failed, cancelled, or suspended on an approval, event or timer."""

from __future__ import annotations

import asyncio
from typing import Any

from smithers.engine import events as ev
from smithers.engine.context import StoredOutput
from smithers.engine.extract import Graph
from smithers.engine.run_core import CANCEL_SETTLE_S, RunCore, RunResult
from smithers.engine.scheduler import Schedule
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    TERMINAL_RUN_STATUSES,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_TIMER,
)
from smithers.errors import (
    RUN_RESUME_CLAIM_FAILED,
    RunOwnershipError,
    SmithersError,
)
from smithers.store.rows import dumps, now_ms


class RunEndings(RunCore):
    """How a run ends or pauses: finished, failed, cancelled, or suspended on an approval, event or timer."""

    # ---- endings ---------------------------------------------------------------------------
    def _settle(
        self, status: str, event: str | None, error: SmithersError | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        now = now_ms()
        terminal = status in TERMINAL_RUN_STATUSES
        with self.store.write() as tx:
            won = tx.claim_run(
                self.run_id,
                {"runtime_owner_id": self.owner_id},
                status=status,
                runtime_owner_id=None,
                heartbeat_at_ms=None,
                finished_at_ms=now if terminal else None,
                error_json=dumps(error.to_dict()) if error else None,
                cancel_requested_at_ms=None,
            )
            if not won:
                self.lost_ownership = True
                raise RunOwnershipError(
                    f"run {self.run_id} was taken over by another process", code=RUN_RESUME_CLAIM_FAILED
                )
            if event:
                tx.emit(self.run_id, event, extra or {})
            self._snapshot(tx, now)

    def _finish_run(self) -> RunResult:
        self._settle(FINISHED, ev.RUN_FINISHED)
        return self._result(FINISHED)

    async def _abort_in_flight(self, reason: str) -> None:
        tasks = list(self.in_flight.items())
        for _, task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait([t for _, t in tasks], timeout=CANCEL_SETTLE_S)
        now = now_ms()
        with self.store.write() as tx:
            for key, _ in tasks:
                d = self.in_flight_desc.pop(key)
                attempt = self.last_attempt[key]
                tx.update_attempt(self.run_id, d.node_id, d.iteration, attempt, state=CANCELLED, finished_at_ms=now)
                self.set_state(tx, d, CANCELLED, ev.NODE_CANCELLED, attempt=attempt, reason=reason)
            self.waits.cancel_timers(tx, reason)
        self.in_flight.clear()

    async def _fail_run(self, error: SmithersError) -> RunResult:
        await self._abort_in_flight("run-failed")
        self._settle(FAILED, ev.RUN_FAILED, error, {"error": error.to_dict()})
        return self._result(FAILED, error)

    async def _cancel_run(self) -> RunResult:
        await self._abort_in_flight("run-cancelled")
        self._settle(CANCELLED, ev.RUN_CANCELLED)
        return self._result(CANCELLED)

    def _suspend(self, graph: Graph, sched: Schedule) -> RunResult:
        order = {WAITING_APPROVAL: 0, WAITING_EVENT: 1, WAITING_TIMER: 2}
        first = min(sched.waiting, key=lambda d: (order.get(self.states[d.key], 3), d.ordinal))
        status = self.states[first.key]
        self._settle(status, ev.RUN_STATUS_CHANGED, extra={"status": status})
        return self._result(status, wake_at_ms=self.waits.next_wake_ms(graph, sched))

    def _result(self, status: str, error: SmithersError | None = None, wake_at_ms: int | None = None) -> RunResult:
        latest: dict[str, StoredOutput] = {}
        for out in self.outputs.values():
            if out.node_id not in latest or out.iteration > latest[out.node_id].iteration:
                latest[out.node_id] = out
        final = None
        if self.graph is not None:
            for d in self.graph.descriptors:
                if d.node_id in latest:
                    final = latest[d.node_id].payload
        return RunResult(
            self.run_id,
            status,
            output=final,
            outputs={k: v.payload for k, v in latest.items()},
            error=error.to_dict() if error else None,
            wake_at_ms=wake_at_ms,
        )
