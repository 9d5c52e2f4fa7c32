"""The run loop: render → extract → record a frame → schedule → execute → persist → re-render.

One :class:`RunLoop` owns one run while it executes. It keeps the node states in memory and
writes every change through to the store in small transactions, so a crash at any point leaves
the database consistent: finished nodes keep their outputs and never run again, and attempts that
were in flight are cancelled and retried on resume.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from smithers.engine import events as ev
from smithers.engine.agent import AgentAttempt, agent_heartbeat_ms, agent_id, choose_agent
from smithers.engine.agent_run import RESUMED_PREFACE
from smithers.engine.agent_stream import AttemptStream
from smithers.engine.attempt import TaskRuntime, backoff_ms, is_retryable, run_attempt
from smithers.engine.context import StoredOutput
from smithers.engine.dsl import Task
from smithers.engine.extract import Descriptor, Graph
from smithers.engine.ownership import CANCEL_POLL_MS, HEARTBEAT_INTERVAL_MS, held_by_rewind
from smithers.engine.run_core import DEFAULT_MAX_CONCURRENCY, RunResult, auth_context
from smithers.engine.run_endings import RunEndings
from smithers.engine.run_frames import RunFrames
from smithers.engine.run_start import RunStart
from smithers.engine.scheduler import Schedule, schedule
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    PENDING,
    SKIPPED,
)
from smithers.engine.workflow import Workflow
from smithers.errors import (
    AGENT_AUTH_FAILED,
    DEPENDENCY_NOT_MOUNTED,
    RALPH_MAX_REACHED,
    RENDER_FAILED,
    RUN_RESUME_CLAIM_FAILED,
    TASK_FAILED,
    TASK_HEARTBEAT_TIMEOUT,
    AgentAuthError,
    InvalidInputError,
    RunCancelled,
    RunOwnershipError,
    SmithersError,
    error_from_exception,
)
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import dumps, loads, now_ms
from smithers.store.store import Store, Tx

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "RunLoop",
    "RunResult",
    "auth_context",
    "commit_new_runs",
    "prepare_run",
    "run_async",
    "view_stored",
]

log = logging.getLogger(__name__)


class RunLoop(RunStart, RunFrames, RunEndings):
    """Executes one run from start or resume until it finishes, fails, is cancelled or waits."""

    # ---- main loop -------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        watchdog = asyncio.create_task(self._watch_owner())
        try:
            return await self._loop(self._first_decision)
        except RunCancelled:
            return self._result(CANCELLED)
        finally:
            watchdog.cancel()
            for task in self.in_flight.values():
                task.cancel()

    def first_step(self, tx: Tx) -> None:
        """Take the run's first step inside the caller's transaction (see :func:`commit_new_runs`)."""
        del tx  # the step joins the caller's open transaction
        self._first_decision = self._step()

    def abandon_first_step(self) -> None:
        """The first step's transaction did not commit: cancel what it started (nothing has run yet)."""
        self._first_decision = None
        for task in self.in_flight.values():
            task.cancel()
        self.in_flight.clear()
        self.in_flight_desc.clear()

    async def _loop(self, decision: tuple[str, Any] | None = None) -> RunResult:
        while True:
            if decision is None:
                # Everything between two awaits commits as one transaction, pipelined on PostgreSQL
                # (docs/engine.md#durability-and-ownership); a new run's first one is not: its row
                # carries the caller's id and input, whose refusal must be raised where it is written.
                with self.store.write(pipelined=self._create_row is None) as tx:
                    self.fence(tx)
                    decision = self._step()
            kind, value = decision
            decision = None
            if kind == "wait":
                await self._await_progress(value)
            elif kind == "sleep":
                await self._sleep_until(value)
            elif kind == "fail":
                return await self._fail_run(value)
            elif kind == "cancel":
                return await self._cancel_run()
            elif kind == "pause":
                return await self._pause_run()
            else:
                return value  # type: ignore[no-any-return]

    def _step(self) -> tuple[str, Any]:
        """Advance the run as far as it goes without waiting; say what to wait for (or how it ended)."""
        if self._create_row is not None:
            with self.store.write() as tx:
                self.write_new_run(tx)
        if self.lost_ownership:  # before completions: a run taken over (or cancelled) is not written to
            raise RunOwnershipError(
                f"run {self.run_id} was taken over by another process", code=RUN_RESUME_CLAIM_FAILED
            )
        self._collect_completions()
        if self.cancel_event.is_set():
            return ("cancel", None)
        if self.pause_event.is_set():
            return ("pause", None)
        while True:
            graph = self.graph
            if graph is None or self.needs_render:
                try:
                    graph = self._render()
                except SmithersError as exc:
                    return ("fail", exc)
                except Exception as exc:
                    return ("fail", SmithersError(f"render failed: {type(exc).__name__}: {exc}", code=RENDER_FAILED))
            changed = self.waits.resolve(graph)
            sched = self._schedule(graph)
            if sched.skip_in_done_loops:
                self._mark_skipped(sched.skip_in_done_loops)
                changed = True
            elif sched.failed is not None:
                return ("fail", self._node_error(sched.failed))
            for d in sched.runnable:
                changed = self._start(d) or changed
            if changed:
                self.needs_render = True
                continue
            if sched.runnable and not self.in_flight:
                continue  # what started now waits: schedule again to see it
            if self.in_flight or self.lingering:
                return ("wait", self.waits.next_wake_ms(graph, sched))
            if sched.backoff_until_ms is not None:
                return ("sleep", sched.backoff_until_ms)
            if sched.loops_to_advance and not sched.waiting:
                failure = self._advance_loop(graph, sched.loops_to_advance[0])
                if failure is not None:
                    return ("fail", failure)
                self.needs_render = True
                continue
            if sched.waiting:
                return ("done", self._suspend(graph, sched))
            if sched.finished:
                return ("done", self._finish_run())
            blocked = ", ".join(d.node_id for d in sched.blocked) or "unknown nodes"
            return (
                "fail",
                SmithersError(
                    f"no progress possible: {blocked} depend on nodes that are not mounted",
                    code=DEPENDENCY_NOT_MOUNTED,
                ),
            )

    def _schedule(self, graph: Graph) -> Schedule:
        if graph is not self._memo_graph:
            self._memo_graph, self._memo = graph, {}
        return schedule(
            graph.plan,
            graph.by_key,
            self.states,
            graph.loops,
            now_ms(),
            self.retry_ready_at,
            self.max_concurrency,
            self._memo,
            self.in_flight.keys() | self.lingering.keys() if self.lingering else self.in_flight.keys(),
        )

    def _mark_skipped(self, descriptors: list[Descriptor]) -> None:
        with self.store.write() as tx:
            for d in descriptors:
                self.set_state(tx, d, SKIPPED, ev.NODE_SKIPPED)

    # ---- starting and finishing tasks ----------------------------------------------------------
    def _start(self, d: Descriptor) -> bool:
        """Start a runnable leaf. Returns True when the tree changed without anything in flight."""
        if d.skip_if:
            with self.store.write() as tx:
                self.set_state(tx, d, SKIPPED, ev.NODE_SKIPPED)
            return True
        if d.kind != "task" or d.needs_approval:
            handled = self.waits.start(d)
            if handled is not None:
                return handled
        assert isinstance(d.node, Task)
        meta: dict[str, Any] = {
            "kind": d.node.kind,
            "label": d.label,
            "outputTable": d.output_table,
            "retries": d.retries,
            "timeoutMs": d.timeout_ms,
            "lastHeartbeat": self.last_heartbeat_data.get(d.key),
        }
        agent = None
        if d.node.agent is not None:
            agent = choose_agent(d.node.agents, self.last_attempt.get(d.key, 0) + 1, self.disabled_agents)
            meta["agentId"] = agent_id(agent) if agent is not None else None
            meta["heartbeatTimeoutMs"] = d.node.heartbeat_timeout_ms or agent_heartbeat_ms()
        with self.store.write() as tx:
            attempt = self.open_attempt(tx, d, IN_PROGRESS, meta)
            self.set_state(tx, d, IN_PROGRESS, ev.NODE_STARTED, attempt=attempt)
        runtime = TaskRuntime(d.node_id, d.iteration, attempt, self._heartbeat_callback(d, attempt), vcs=self.vcs)
        runtime.meta = {**meta, "frameNo": self.frame_no}
        if d.node.agent is not None:
            runtime.agent = self._agent_attempt(d, attempt, agent, runtime)
        ctx = self._ctx(attempt, self.last_heartbeat_data.get(d.key), node=d)
        task = asyncio.create_task(run_attempt(d.node, ctx, runtime), name=f"smithers:{d.key}")
        task.add_done_callback(lambda _t: self._wake.set())
        self.in_flight[d.key] = task
        self.in_flight_desc[d.key] = d
        self.in_flight_runtime[d.key] = runtime
        return False

    def _agent_attempt(self, d: Descriptor, attempt: int, agent: Any, runtime: TaskRuntime) -> AgentAttempt:
        """The state of an agent attempt: its agent (None when the auth breaker left none), its
        stream, the run's budget and tools default, and what to tell the agent first: the session
        an interrupted attempt left, or the tools earlier attempts already ran."""
        sink = AttemptStream(self.store, self.run_id, d.node_id, d.iteration, attempt, fence=self.fence)
        cwd = self.workflow.workdir or os.getcwd()
        agents = self.agents
        state = AgentAttempt(agent=agent, sink=sink, cwd=cwd, budget=agents.budget, tools_default=agents.tools_default)
        sink.meta_source = lambda: {**runtime.meta, **state.meta()}
        if agent is not None and attempt > 1:
            state.session_id = agents.session_for(d.key, agent)
            if state.session_id is not None:
                state.preface = RESUMED_PREFACE
            else:
                with self.store.read() as tx:
                    state.preface = agents.replay_warning(tx, self.run_id, d.node_id, d.iteration, agent)
        if agent is None:
            names = ", ".join(agent_id(a) for a in d.node.agents)  # type: ignore[attr-defined]
            state.unavailable = AgentAuthError(
                f"no agent of task {d.node_id!r} is left: {names} failed authentication earlier in this run",
                details={"disabledAgents": sorted(self.disabled_agents)},
            )
        return state

    async def _await_progress(self, wake_at_ms: int | None) -> None:
        """Wait until a task finishes, the run is cancelled, or ``wake_at_ms`` (a timer) is reached."""
        if any(t.done() for t in self.in_flight.values()) or any(b.done() for b in self.lingering.values()):
            return
        self._wake.clear()
        timeout = None if wake_at_ms is None else max(0.0, (wake_at_ms - now_ms()) / 1000)
        cancel_wait = asyncio.create_task(self.cancel_event.wait())
        pause_wait = asyncio.create_task(self.pause_event.wait())
        wake_wait = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                [cancel_wait, pause_wait, wake_wait], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancel_wait.cancel()
            pause_wait.cancel()
            wake_wait.cancel()

    def _collect_completions(self) -> None:
        for key in [k for k, b in self.lingering.items() if b.done()]:
            del self.lingering[key]  # its result belongs to an attempt that has ended: discarded
        for key in [k for k, t in self.in_flight.items() if t.done()]:
            task = self.in_flight.pop(key)
            runtime = self.in_flight_runtime.pop(key)
            self._complete(self.in_flight_desc.pop(key), task, runtime)
            self.linger(key, runtime)

    def _complete(self, d: Descriptor, task: asyncio.Task[Any], runtime: TaskRuntime) -> None:
        attempt = self.last_attempt[d.key]
        now = now_ms()
        # Only _abort_in_flight cancels attempts (and records them itself): a body that raised a
        # cancellation of its own failed, so it is retried per policy rather than restarted forever.
        exc: BaseException | None = (
            SmithersError("the task body raised CancelledError", code=TASK_FAILED)
            if task.cancelled()
            else task.exception()
        )
        with self.store.write() as tx:
            pointer = (
                {}
                if runtime.pointer is None or self.vcs is None
                else {"jj_pointer": runtime.pointer, "jj_cwd": self.vcs.root}
            )
            agent_columns = self.agent_columns(runtime)
            if exc is None:
                payload = task.result()
                tx.upsert_output(self.run_id, d.node_id, d.iteration, d.output_table, payload)
                tx.update_attempt(
                    self.run_id,
                    d.node_id,
                    d.iteration,
                    attempt,
                    state=FINISHED,
                    finished_at_ms=now,
                    **pointer,
                    **agent_columns,
                )
                self.outputs[(d.node_id, d.iteration)] = StoredOutput(d.node_id, d.iteration, d.output_table, payload)
                self.set_state(tx, d, FINISHED, ev.NODE_FINISHED, attempt=attempt)
                if self.render_reads.depends_on(d.node_id, d.output_table):
                    self.needs_render = True
                else:
                    self._unchanged_frame(tx)
                return
            error = error_from_exception(exc)
            if runtime.body_running():  # say so where the operator looks: the attempt's error
                error.details = {**(error.details or {}), "bodyStillRunning": True}
            if error.code == TASK_HEARTBEAT_TIMEOUT:
                tx.emit(
                    self.run_id,
                    ev.TASK_HEARTBEAT_TIMEOUT,
                    {"nodeId": d.node_id, "iteration": d.iteration, "attempt": attempt, **(error.details or {})},
                )
            retryable = is_retryable(error, d.node.kind) if isinstance(d.node, Task) else is_retryable(error)
            if runtime.agent is not None:
                if runtime.agent.unavailable is not None:
                    retryable = False  # no agent is left to try
                elif error.code == AGENT_AUTH_FAILED and runtime.agent.agent_id is not None:
                    failed_agent = runtime.agent.agent_id
                    self.disabled_agents.add(failed_agent)  # the auth circuit breaker
                    log.warning("run %s: agent %s disabled (authentication failed)", self.run_id, failed_agent)
                if not retryable:
                    agent_columns["meta_json"] = dumps({**loads(agent_columns["meta_json"]), "failureRetryable": False})
            tx.update_attempt(
                self.run_id,
                d.node_id,
                d.iteration,
                attempt,
                state=FAILED,
                finished_at_ms=now,
                error_json=dumps(error.to_dict()),
                **pointer,
                **agent_columns,
            )
            failures = self.failures.get(d.key, 0) + 1
            self.failures[d.key] = failures
            if retryable and failures <= d.retries:
                self.retry_ready_at[d.key] = now + backoff_ms(d.retry_policy, failures)
                tx.emit(
                    self.run_id,
                    ev.NODE_FAILED,
                    {"nodeId": d.node_id, "iteration": d.iteration, "attempt": attempt, "error": error.to_dict()},
                )
                self.set_state(tx, d, PENDING, ev.NODE_RETRYING, attempt=attempt + 1)
                tx.emit(self.run_id, ev.NODE_PENDING, {"nodeId": d.node_id, "iteration": d.iteration})
            else:
                self.set_state(tx, d, FAILED, ev.NODE_FAILED, attempt=attempt, error=error.to_dict())

    def _heartbeat_callback(self, d: Descriptor, attempt: int) -> Callable[[Any, int], None]:
        loop = asyncio.get_running_loop()
        state = {"last": 0}

        def write(data: Any, size: int) -> None:
            now = now_ms()
            interval = now - state["last"] if state["last"] else None
            if state["last"] and interval is not None and interval < 500:
                return
            state["last"] = now
            self.last_heartbeat_data[d.key] = data
            with self.store.write() as tx:
                tx.update_attempt(
                    self.run_id,
                    d.node_id,
                    d.iteration,
                    attempt,
                    heartbeat_at_ms=now,
                    heartbeat_data_json=None if data is None else dumps(data),
                )
                tx.emit(
                    self.run_id,
                    ev.TASK_HEARTBEAT,
                    {
                        "nodeId": d.node_id,
                        "iteration": d.iteration,
                        "attempt": attempt,
                        "hasData": data is not None,
                        "dataSizeBytes": size,
                        "intervalMs": interval,
                    },
                )

        def on_heartbeat(data: Any, size: int) -> None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                write(data, size)
            else:
                loop.call_soon_threadsafe(write, data, size)

        return on_heartbeat

    def _node_error(self, d: Descriptor) -> SmithersError:
        with self.store.read() as tx:
            rows = tx.list_attempts(self.run_id, d.node_id, d.iteration)
        for row in reversed(rows):
            if row["error_json"]:
                err = SmithersError.from_dict(json.loads(row["error_json"]))
                details = {**(err.details or {}), "nodeId": d.node_id, "iteration": d.iteration}
                failure = SmithersError(f"node {d.node_id} failed: {err.message}", code=err.code, details=details)
                failure.stack = err.stack
                return failure
        return SmithersError(f"node {d.node_id} failed", code=TASK_FAILED, details={"nodeId": d.node_id})

    # ---- loops -----------------------------------------------------------------------------
    def _advance_loop(self, graph: Graph, ralph_id: str) -> SmithersError | None:
        info = graph.loops[ralph_id]
        nxt = info.iteration + 1
        if nxt >= info.max_iterations:
            if info.on_max_reached == "fail":
                return SmithersError(
                    f"loop {ralph_id} reached max_iterations={info.max_iterations}",
                    code=RALPH_MAX_REACHED,
                    details={"loopId": ralph_id},
                )
            self.loop_state[ralph_id] = (info.iteration, True)
            with self.store.write() as tx:
                tx.upsert_ralph(self.run_id, ralph_id, info.iteration, True)
            return None
        self.loop_state[ralph_id] = (nxt, False)
        with self.store.write() as tx:
            tx.upsert_ralph(self.run_id, ralph_id, nxt, False)
        return None

    # ---- ownership, heartbeat and durable cancel requests ---------------------------------------
    async def _watch_owner(self) -> None:
        """Heartbeat every second while we own the run; notice durable cancel requests within 250 ms."""
        last_beat = now_ms()
        while True:
            await asyncio.sleep(CANCEL_POLL_MS / 1000)
            now = now_ms()
            try:
                if now - last_beat >= HEARTBEAT_INTERVAL_MS:
                    last_beat = now
                    with self.store.write() as tx:
                        owned = tx.claim_run(self.run_id, {"runtime_owner_id": self.owner_id}, heartbeat_at_ms=now)
                    if not owned:
                        self.lost_ownership = True
                        self.cancel_event.set()
                        return
                with self.store.read() as tx:
                    row = tx.get_run(self.run_id)
            except Exception:
                log.exception("heartbeat of run %s failed", self.run_id)
                continue
            if row is not None and row["cancel_requested_at_ms"] is not None:
                self.cancel_event.set()
                self._wake.set()
                return
            hold = row["pause_requested_at_ms"] if row is not None else None
            if hold is not None and hold != self.hold_seen and held_by_rewind(hold, now):
                self.hold_seen = hold  # acted on once: a pause withdrawn here is not taken up again
                self.request_pause()

    def poke(self) -> None:
        """Take a step now: a decision or a signal for one of its waits was stored elsewhere."""
        self._wake.set()

    def request_pause(self) -> None:
        """Stop executing at the next step and leave the run resumable (see ``_pause_run``)."""
        self.pause_event.set()
        self._wake.set()

    async def _sleep_until(self, when_ms: int) -> None:
        waits = [asyncio.create_task(self.cancel_event.wait()), asyncio.create_task(self.pause_event.wait())]
        try:
            await asyncio.wait(
                waits, timeout=max(0.0, (when_ms - now_ms()) / 1000), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()


def view_stored(store: Store, workflow: Workflow, run_id: str) -> tuple[RunLoop, Graph]:
    """A stored run's state and its tree as it would render now (read only: renders are pure)."""
    loop = RunLoop(store, workflow, run_id, max_concurrency=1, cancel=None)
    with store.read() as tx:
        loop.input = loads(tx.get_input_json(run_id)) or {}
        row = tx.get_run(run_id)
        loop.auth = (loads(row["config_json"]) or {}).get("auth") if row is not None else None
        loop.load_state(tx)
    return loop, loop.render_view()


def prepare_run(
    workflow: Workflow,
    input: Any = None,
    *,
    store: Store,
    run_id: str | None = None,
    resume: bool = False,
    force: bool = False,
    retry: bool = False,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    auth: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
) -> RunLoop:
    """A run ready to :meth:`~RunLoop.execute`: a new one checked (input, first render) or a stored one claimed.

    A new run's rows are not written yet: :func:`commit_new_runs` writes them (several runs in one
    transaction), or the first step of ``execute`` does. A resume that finds the run ended claims
    nothing (``loop.claimed`` is False; see :meth:`RunLoop.stored_result`).
    """
    import uuid

    if run_id is None:
        if resume:
            raise InvalidInputError("resume needs a run id")
        run_id = str(uuid.uuid4())
    if len(run_id) > 256 or not run_id:
        raise InvalidInputError("run id must be 1 to 256 characters")
    loop = RunLoop(store, workflow, run_id, max_concurrency=max_concurrency, cancel=cancel)
    if resume:
        loop.claimed = loop.claim(force, auth, config or {}, retry)
    else:
        loop.create(workflow.validate_input(input), auth, config or {})
    return loop


def commit_new_runs(store: Store, loops: Sequence[RunLoop]) -> list[SmithersError | None]:
    """Write the rows of new runs (each with its input and ``RunStarted``) and take their first steps,
    all in one transaction: one commit stores the runs and starts them.

    Each run goes in under a savepoint, so one refused run (its id taken, a value the database
    cannot store) is rolled back alone. Returns, per run, None when it is committed or the error that
    refused it; a failure that is not one run's fault (the database is gone) is raised. Tasks a first
    step started wait for :meth:`RunLoop.execute`; those of a run that is not committed are cancelled
    before they ever run.
    """
    errors: list[SmithersError | None] = [None] * len(loops)
    try:
        with store.write() as tx:
            for index, loop in enumerate(loops):
                try:
                    with tx.savepoint():
                        loop.write_new_run(tx)
                        loop.first_step(tx)
                except SmithersError as exc:
                    loop.abandon_first_step()
                    errors[index] = exc
    except BaseException:
        for loop in loops:
            loop.abandon_first_step()
        raise
    return errors


async def run_async(
    workflow: Workflow,
    input: Any = None,
    *,
    store: Store,
    run_id: str | None = None,
    resume: bool = False,
    force: bool = False,
    retry: bool = False,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    auth: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
    on_event: Callable[[StoredEvent], None] | None = None,
) -> RunResult:
    """Start (or with ``resume=True`` continue) a run and execute it until it settles or waits."""
    loop = prepare_run(
        workflow,
        input,
        store=store,
        run_id=run_id,
        resume=resume,
        force=force,
        retry=retry,
        max_concurrency=max_concurrency,
        auth=auth,
        config=config,
        cancel=cancel,
    )
    if not loop.claimed:
        return loop.stored_result()
    unsubscribe = None
    if on_event is not None:
        callback = on_event
        watched = loop.run_id

        def forward(event: StoredEvent) -> None:
            if event.run_id == watched:
                callback(event)

        unsubscribe = store.bus.subscribe(forward)
    try:
        return await loop.execute()
    finally:
        if unsubscribe is not None:
            unsubscribe()
