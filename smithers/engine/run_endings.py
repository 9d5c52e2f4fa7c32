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
    ABORTED,
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RUN_CANCELLED_REASON,
    RUN_FAILED_REASON,
    RUNNING,
    SKIPPED,
    TERMINAL_RUN_STATUSES,
    UNMOUNTED,
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
            self._snapshot(tx, now)  # the settled state, before the event that says the run settled
            if event:
                tx.emit(self.run_id, event, extra or {})

    def _finish_run(self) -> RunResult:
        self._skip_unmounted()
        self._settle(FINISHED, ev.RUN_FINISHED)
        return self._result(FINISHED)

    def _skip_unmounted(self) -> None:
        """Pending rows of nodes the finished tree no longer mounts (the side a Branch did not take
        after all) become ``skipped``: a finished run has nothing pending."""
        mounted = self.graph.by_key if self.graph is not None else {}
        stale = [key for key, state in self.states.items() if state == PENDING and key not in mounted]
        if not stale:
            return
        now = now_ms()
        with self.store.write() as tx:
            for key in stale:
                node_id, _, iteration = key.rpartition("::")
                self.states[key] = SKIPPED
                tx.update_node(self.run_id, node_id, int(iteration), state=SKIPPED, updated_at_ms=now)
                tx.emit(
                    self.run_id, ev.NODE_SKIPPED, {"nodeId": node_id, "iteration": int(iteration), "reason": UNMOUNTED}
                )

    async def _abort_in_flight(self, reason: str) -> None:
        """Stop everything of the ending run: attempts in flight are aborted (``reason:"aborted"``),
        timers, waits and approvals are cancelled with the run's ``reason`` (docs/engine.md#cancellation).
        """
        tasks = list(self.in_flight.items())
        for _, task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait([t for _, t in tasks], timeout=CANCEL_SETTLE_S)
        now = now_ms()
        with self.store.write() as tx:
            self.fence(tx)
            for key, _ in tasks:
                d = self.in_flight_desc.pop(key)
                runtime = self.in_flight_runtime.pop(key, None)
                attempt = self.last_attempt[key]
                agent_columns = self.agent_columns(runtime) if runtime is not None else {}
                tx.update_attempt(
                    self.run_id, d.node_id, d.iteration, attempt, state=CANCELLED, finished_at_ms=now, **agent_columns
                )
                self.set_state(tx, d, CANCELLED, ev.NODE_CANCELLED, attempt=attempt, reason=ABORTED)
            self.waits.cancel_waiting(tx, reason)
        self.in_flight.clear()

    async def _fail_run(self, error: SmithersError) -> RunResult:
        await self._abort_in_flight(RUN_FAILED_REASON)
        self._settle(FAILED, ev.RUN_FAILED, error, {"error": error.to_dict()})
        return self._result(FAILED, error)

    async def _cancel_run(self) -> RunResult:
        await self._abort_in_flight(RUN_CANCELLED_REASON)
        self._settle(CANCELLED, ev.RUN_CANCELLED)
        return self._result(CANCELLED)

    async def _pause_run(self) -> RunResult:
        """Stop executing without ending the run: attempts in flight are stopped and left
        ``in-progress`` (the next resume records them interrupted and runs them again), ownership is
        given up, the status stays ``running`` and no event is written (docs/engine.md#time-travel)."""
        tasks = list(self.in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_SETTLE_S)
        for runtime in self.in_flight_runtime.values():
            if runtime.agent is not None:
                runtime.agent.sink.flush()  # the stream of an attempt the next resume records interrupted
        self.in_flight.clear()
        self.in_flight_desc.clear()
        self.in_flight_runtime.clear()
        with self.store.write() as tx:
            won = tx.claim_run(
                self.run_id, {"runtime_owner_id": self.owner_id}, runtime_owner_id=None, heartbeat_at_ms=None
            )
        if not won:
            self.lost_ownership = True
        return self._result(RUNNING)

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
