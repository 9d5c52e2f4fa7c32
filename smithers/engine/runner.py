"""The run loop: render → extract → record a frame → schedule → execute → persist → re-render.

One :class:`RunLoop` owns one run while it executes. It keeps the node states in memory and
writes every change through to the store in small transactions, so a crash at any point leaves
the database consistent: finished nodes keep their outputs and never run again, and attempts that
were in flight are cancelled and retried on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smithers.engine import events as ev
from smithers.engine import frames
from smithers.engine.attempt import TaskRuntime, backoff_ms, is_retryable, run_attempt
from smithers.engine.context import Ctx, ReadLog, StoredOutput
from smithers.engine.dsl import Task
from smithers.engine.extract import Descriptor, Graph, extract
from smithers.engine.ownership import CANCEL_POLL_MS, HEARTBEAT_INTERVAL_MS, new_owner_id, owner_gone
from smithers.engine.scheduler import Schedule, schedule
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    PENDING,
    RUNNING,
    SKIPPED,
    TERMINAL_RUN_STATUSES,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_NODE_STATES,
    WAITING_TIMER,
)
from smithers.engine.waits import WaitHandler
from smithers.engine.workflow import Workflow
from smithers.errors import (
    RALPH_MAX_REACHED,
    RUN_ALREADY_EXISTS,
    RUN_NOT_RESUMABLE,
    RUN_OWNER_ALIVE,
    RUN_RESUME_CLAIM_FAILED,
    TASK_HEARTBEAT_TIMEOUT,
    InvalidInputError,
    RunCancelled,
    RunNotFoundError,
    RunOwnershipError,
    SmithersError,
    error_from_exception,
)
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import dumps, loads, now_ms
from smithers.store.store import Store, Tx

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 4
CANCEL_SETTLE_S = 5.0
MAX_INPUT_BYTES = 1_048_576


@dataclass
class RunResult:
    """How a call to run or resume ended."""

    run_id: str
    status: str
    output: Any = None
    """Output of the last node (in document order) that has one."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Latest output of every node, by node id."""
    error: dict[str, Any] | None = None
    wake_at_ms: int | None = None
    """When a suspended run next has something to do on its own (a timer or a wait timeout)."""


def auth_context(
    triggered_by: str, scopes: list[str] | None = None, role: str = "operator", token_id: str | None = None
) -> dict[str, Any]:
    """A RunAuthContext (gateway spec §10.2), recorded on the run and visible as ``ctx.auth``."""
    return {
        "triggeredBy": triggered_by,
        "scopes": list(scopes or []),
        "role": role,
        "tokenId": token_id,
        "createdAt": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


class RunLoop:
    """Executes one run from start or resume until it finishes, fails, is cancelled or waits."""

    def __init__(
        self, store: Store, workflow: Workflow, run_id: str, *, max_concurrency: int, cancel: asyncio.Event | None
    ):
        self.store = store
        self.workflow = workflow
        self.run_id = run_id
        self.max_concurrency = max(1, max_concurrency)
        self.owner_id = new_owner_id()
        self.cancel_event = cancel or asyncio.Event()
        self.lost_ownership = False
        self.input: dict[str, Any] = {}
        self.auth: dict[str, Any] | None = None
        self.states: dict[str, str] = {}
        self.outputs: dict[tuple[str, int], StoredOutput] = {}
        self.loop_state: dict[str, tuple[int, bool]] = {}
        self.last_attempt: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.retry_ready_at: dict[str, int] = {}
        self.last_heartbeat_data: dict[str, Any] = {}
        self.in_flight: dict[str, asyncio.Task[Any]] = {}
        self.in_flight_desc: dict[str, Descriptor] = {}
        self.frame_no = 0
        self.prev_doc: Any = None
        self.prev_hash: str | None = None
        self.prev_text = ""
        self.graph: Graph | None = None
        self.render_reads = ReadLog()
        self.waiting: set[str] = set()
        self._memo_graph: Graph | None = None
        self._memo: dict[int, int] = {}
        self.needs_render = True
        self.mounted_json = "[]"
        self._stored_mounted_json: str | None = None
        self._create_row: dict[str, Any] | None = None
        self._first_render: tuple[Graph, ReadLog] | None = None
        self.task_index_json = "[]"
        self.waits = WaitHandler(self)
        self._wake = asyncio.Event()

    # ---- start / resume --------------------------------------------------------------------
    def create(self, input: dict[str, Any], auth: dict[str, Any] | None, config: dict[str, Any]) -> None:
        """Check input and the first render; the rows are written with the first step (``_write_create``)."""
        if len(dumps(input).encode()) > MAX_INPUT_BYTES:
            raise InvalidInputError(f"workflow input is larger than {MAX_INPUT_BYTES} bytes")
        self.input, self.auth = input, auth
        try:  # a tree that cannot even render its first frame is refused before any row is written
            reads = ReadLog()
            self._first_render = (extract(self.workflow.render(self._ctx(reads=reads)), self.workflow.key, {}), reads)
        except SmithersError:
            raise
        except Exception as exc:
            raise SmithersError(f"render failed: {type(exc).__name__}: {exc}", code="RENDER_FAILED") from exc
        now = now_ms()
        cfg = {"maxConcurrency": self.max_concurrency, "workflowKey": self.workflow.key, **config}
        if auth is not None:
            cfg["auth"] = auth
        self._create_row = {
            "run_id": self.run_id,
            "workflow_name": self.workflow.key,
            "workflow_path": self.workflow.path,
            "workflow_hash": self.workflow.source_hash(),
            "status": RUNNING,
            "created_at_ms": now,
            "started_at_ms": now,
            "heartbeat_at_ms": now,
            "runtime_owner_id": self.owner_id,
            "config_json": dumps(cfg),
        }

    def _write_create(self, tx: Tx) -> None:
        """The run row, its input and RunStarted: committed with the first step, in one transaction."""
        row, self._create_row = self._create_row, None
        assert row is not None
        if tx.get_run(self.run_id) is not None:
            raise SmithersError(
                f"run {self.run_id} already exists", code=RUN_ALREADY_EXISTS, details={"runId": self.run_id}
            )
        tx.insert_run(**row)
        tx.insert_input(self.run_id, self.input)
        tx.emit(self.run_id, ev.RUN_STARTED)

    def claim(self, force: bool, auth: dict[str, Any] | None, config: dict[str, Any]) -> None:
        """Take a stored run over for resuming (compare-and-swap on its owner and heartbeat)."""
        now = now_ms()
        with self.store.write() as tx:
            row = tx.get_run(self.run_id)
            if row is None:
                raise RunNotFoundError(self.run_id)
            status = row["status"]
            if status == "continued":
                raise SmithersError(
                    f"run {self.run_id} was continued as a new run and cannot resume", code=RUN_NOT_RESUMABLE
                )
            owner, beat = row["runtime_owner_id"], row["heartbeat_at_ms"]
            if status == RUNNING and owner and not force and not owner_gone(owner, beat, now):
                raise RunOwnershipError(
                    f"run {self.run_id} is still owned by {owner} (last heartbeat {now - (beat or now)} ms ago); "
                    "use --force to take it over",
                    code=RUN_OWNER_ALIVE,
                    details={"owner": owner},
                )
            cfg = {**(loads(row["config_json"]) or {}), **config, "maxConcurrency": self.max_concurrency}
            if auth is not None:
                cfg["auth"] = auth
            won = tx.claim_run(
                self.run_id,
                {"status": status, "runtime_owner_id": owner, "heartbeat_at_ms": beat},
                status=RUNNING,
                runtime_owner_id=self.owner_id,
                heartbeat_at_ms=now,
                finished_at_ms=None,
                cancel_requested_at_ms=None,
                error_json=None,
                config_json=dumps(cfg),
                started_at_ms=row["started_at_ms"] or now,
            )
            if not won:
                raise self._claimed_by_other(tx)
            aborted = dumps(
                SmithersError("attempt interrupted; the run was resumed", code="ATTEMPT_ABANDONED").to_dict()
            )
            for stale in tx.cancel_in_progress_attempts(self.run_id, aborted, now):
                tx.emit(
                    self.run_id,
                    ev.NODE_CANCELLED,
                    {
                        "nodeId": stale["node_id"],
                        "iteration": stale["iteration"],
                        "attempt": stale["attempt"],
                        "reason": "aborted",
                    },
                )
            for node in tx.list_nodes(self.run_id):
                if node["state"] in (FAILED, CANCELLED):  # resuming retries what failed or was cancelled
                    tx.update_node(self.run_id, node["node_id"], node["iteration"], state=PENDING, updated_at_ms=now)
                    tx.emit(self.run_id, ev.NODE_PENDING, {"nodeId": node["node_id"], "iteration": node["iteration"]})
            tx.emit(self.run_id, ev.RUN_STARTED, {"resumed": True})
            self.input = json.loads(tx.get_input_json(self.run_id) or "{}")
            self.auth = cfg.get("auth")
            self._load(tx, resumed_failed=status == FAILED)

    def _claimed_by_other(self, tx: Tx) -> RunOwnershipError:
        """The error for a lost claim race, naming the process that won it."""
        winner = (tx.get_run(self.run_id) or {}).get("runtime_owner_id") or "another process"
        return RunOwnershipError(
            f"run {self.run_id} was just claimed by {winner}", code=RUN_RESUME_CLAIM_FAILED, details={"owner": winner}
        )

    def _load(self, tx: Tx, resumed_failed: bool) -> None:
        for node in tx.list_nodes(self.run_id):
            key = f"{node['node_id']}::{node['iteration']}"
            self.states[key] = node["state"]
            if node["state"] in WAITING_NODE_STATES:
                self.waiting.add(key)
            self.last_attempt[key] = node["last_attempt"] or 0
        for out in tx.list_outputs(self.run_id):
            self.outputs[(out["node_id"], out["iteration"])] = StoredOutput(
                out["node_id"], out["iteration"], out["output_table"], json.loads(out["payload_json"])
            )
        for loop in tx.list_ralph(self.run_id):
            self.loop_state[loop["ralph_id"]] = (loop["iteration"], bool(loop["done"]))
        for attempt in tx.list_attempts(self.run_id):
            key = f"{attempt['node_id']}::{attempt['iteration']}"
            if attempt["state"] == FAILED and not resumed_failed:
                self.failures[key] = self.failures.get(key, 0) + 1
            if attempt["heartbeat_data_json"] is not None:
                self.last_heartbeat_data[key] = json.loads(attempt["heartbeat_data_json"])
            self.waits.load_attempt(attempt)
        self.frame_no = tx.last_frame_no(self.run_id)
        if self.frame_no:
            start = tx.last_keyframe_no(self.run_id, self.frame_no) or 1
            docs = frames.expand(tx.list_frame_rows(self.run_id, since=start))
            self.prev_doc = docs[-1] if docs else None
            self.prev_text = frames.canonical(self.prev_doc) if docs else ""
            self.prev_hash = frames.sha256_hex(frames.canonical(self.prev_doc)) if docs else None

    # ---- main loop -------------------------------------------------------------------------
    async def execute(self) -> RunResult:
        watchdog = asyncio.create_task(self._watch_owner())
        try:
            return await self._loop()
        except RunCancelled:
            return self._result(CANCELLED)
        finally:
            watchdog.cancel()
            for task in self.in_flight.values():
                task.cancel()

    async def _loop(self) -> RunResult:
        while True:
            with self.store.write():  # everything between two awaits commits as one transaction
                decision = self._step()
            kind, value = decision
            if kind == "wait":
                await self._await_progress(value)
            elif kind == "sleep":
                await self._sleep_until(value)
            elif kind == "fail":
                return await self._fail_run(value)
            elif kind == "cancel":
                return await self._cancel_run()
            else:
                return value  # type: ignore[no-any-return]

    def _step(self) -> tuple[str, Any]:
        """Advance the run as far as it goes without waiting; say what to wait for (or how it ended)."""
        if self._create_row is not None:
            with self.store.write() as tx:
                self._write_create(tx)
        self._collect_completions()
        if self.lost_ownership:
            raise RunOwnershipError(
                f"run {self.run_id} was taken over by another process", code=RUN_RESUME_CLAIM_FAILED
            )
        if self.cancel_event.is_set():
            return ("cancel", None)
        while True:
            graph = self.graph
            if graph is None or self.needs_render:
                try:
                    graph = self._render()
                except SmithersError as exc:
                    return ("fail", exc)
                except Exception as exc:
                    return ("fail", SmithersError(f"render failed: {type(exc).__name__}: {exc}", code="RENDER_FAILED"))
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
            if self.in_flight:
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
                    code="DEPENDENCY_NOT_MOUNTED",
                ),
            )

    def _ctx(self, attempt: int = 0, last_heartbeat: Any = None, reads: ReadLog | None = None) -> Ctx:
        active = [it for it, done in self.loop_state.values() if not done]
        return Ctx(
            input=self.input,
            run_id=self.run_id,
            iteration=active[0] if active else 0,
            iterations={k: v[0] for k, v in self.loop_state.items()},
            auth=self.auth,
            outputs_by_key=self.outputs,
            loop_node_ids=self.graph.loop_node_ids if self.graph else frozenset(),
            attempt=attempt,
            last_heartbeat=last_heartbeat,
            reads=reads,
        )

    def _render(self) -> Graph:
        if self._first_render is not None:  # the check in create() already rendered the first frame
            (graph, reads), self._first_render = self._first_render, None
        else:
            reads = ReadLog()
            graph = extract(self.workflow.render(self._ctx(reads=reads)), self.workflow.key, self.loop_state)
        self.graph, self.render_reads, self.needs_render = graph, reads, False
        if self.in_flight:
            self._cancel_unmounted(graph)
        doc = graph.xml
        text = frames.canonical(doc)
        self.frame_no += 1
        encoded = frames.encode(self.frame_no, doc, text, self.prev_doc, self.prev_hash)
        self.mounted_json = dumps([d.key for d in graph.descriptors])
        self.task_index_json = dumps(
            [{"nodeId": d.node_id, "ordinal": d.ordinal, "iteration": d.iteration} for d in graph.descriptors]
        )
        now = now_ms()
        with self.store.write() as tx:
            self._insert_frame(tx, encoded, now)
            for ralph_id, info in graph.loops.items():
                if ralph_id not in self.loop_state:
                    self.loop_state[ralph_id] = (info.iteration, info.until)
                    tx.upsert_ralph(self.run_id, ralph_id, info.iteration, info.until)
                elif info.until and not self.loop_state[ralph_id][1]:
                    self.loop_state[ralph_id] = (info.iteration, True)
                    tx.upsert_ralph(self.run_id, ralph_id, info.iteration, True)
            self._seed_nodes(tx, graph.descriptors, now)
        self.prev_doc, self.prev_text, self.prev_hash = doc, text, encoded.xml_hash
        return graph

    def _insert_frame(self, tx: Tx, encoded: frames.EncodedFrame, now: int) -> None:
        # The mounted-task lists are O(tree) text: store them on keyframes and when they change;
        # NULL on a delta frame means "the same as the previous frame".
        fresh = encoded.encoding != frames.DELTA or self.mounted_json != self._stored_mounted_json
        self._stored_mounted_json = self.mounted_json
        tx.insert_frame(
            run_id=self.run_id,
            frame_no=self.frame_no,
            created_at_ms=now,
            xml_json=encoded.xml_json,
            xml_hash=encoded.xml_hash,
            encoding=encoded.encoding,
            mounted_task_ids_json=self.mounted_json if fresh else None,
            task_index_json=self.task_index_json if fresh else None,
            note="python-engine",
        )
        tx.emit(self.run_id, ev.FRAME_COMMITTED, {"frameNo": self.frame_no, "xmlHash": encoded.xml_hash})
        if encoded.encoding == frames.KEYFRAME:
            self._snapshot(tx, now)

    def _unchanged_frame(self, tx: Tx) -> None:
        """Record a frame for a state change that cannot alter the tree (the render read nothing it changed).

        The tree is a pure function of what the render read; when none of that changed, rendering
        again would give the same document, so the frame is stored as an empty delta (or a
        keyframe every 50 frames) without calling the render function.
        """
        self.frame_no += 1
        assert self.prev_hash is not None
        self._insert_frame(tx, frames.encode_unchanged(self.frame_no, self.prev_text, self.prev_hash), now_ms())

    def _snapshot(self, tx: Tx, now: int) -> None:
        """Full durable state at this frame (taken at keyframes and when the run settles)."""
        known = self.graph.by_key if self.graph is not None else {}
        nodes = []
        for key, state in sorted(self.states.items()):
            node_id, _, iteration = key.rpartition("::")
            d = known.get(key)
            nodes.append(
                {
                    "nodeId": node_id,
                    "iteration": int(iteration),
                    "state": state,
                    "lastAttempt": self.last_attempt.get(key) or None,
                    "outputTable": d.output_table if d else None,
                    "label": d.label if d else None,
                }
            )
        outputs: dict[str, list[Any]] = {}
        for out in self.outputs.values():
            outputs.setdefault(out.table, []).append(
                {
                    "nodeId": out.node_id,
                    "iteration": out.iteration,
                    **(out.payload if isinstance(out.payload, dict) else {"value": out.payload}),
                }
            )
        ralph = [{"ralphId": k, "iteration": v[0], "done": v[1]} for k, v in sorted(self.loop_state.items())]
        body = {"nodes": nodes, "outputs": outputs, "ralph": ralph, "input": self.input}
        tx.upsert_snapshot(
            run_id=self.run_id,
            frame_no=self.frame_no,
            nodes_json=dumps(nodes),
            outputs_json=dumps(outputs),
            ralph_json=dumps(ralph),
            input_json=dumps(self.input),
            workflow_hash=None,
            content_hash=frames.sha256_hex(frames.canonical(body)),
            created_at_ms=now,
        )
        tx.emit(self.run_id, ev.SNAPSHOT_CAPTURED, {"frameNo": self.frame_no})

    def _seed_nodes(self, tx: Tx, descriptors: list[Descriptor], now: int) -> None:
        rows = []
        for d in descriptors:
            if d.key in self.states:
                continue
            state = SKIPPED if d.skip_if else PENDING
            self.states[d.key] = state
            rows.append(
                {
                    "run_id": self.run_id,
                    "node_id": d.node_id,
                    "iteration": d.iteration,
                    "state": state,
                    "last_attempt": None,
                    "updated_at_ms": now,
                    "output_table": d.output_table,
                    "label": d.label,
                }
            )
        tx.insert_nodes(rows)
        for row in rows:
            kind = ev.NODE_SKIPPED if row["state"] == SKIPPED else ev.NODE_PENDING
            tx.emit(self.run_id, kind, {"nodeId": row["node_id"], "iteration": row["iteration"]})

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
            self.in_flight.keys(),
        )

    def set_state(self, tx: Tx, d: Descriptor, state: str, event: str | None = None, **payload: Any) -> None:
        """Record a node's new state (and optionally an event about it) in ``tx``."""
        self.states[d.key] = state
        if state in WAITING_NODE_STATES:
            self.waiting.add(d.key)
        else:
            self.waiting.discard(d.key)
        tx.update_node(
            self.run_id,
            d.node_id,
            d.iteration,
            state=state,
            updated_at_ms=now_ms(),
            last_attempt=self.last_attempt.get(d.key) or None,
        )
        if event:
            tx.emit(self.run_id, event, {"nodeId": d.node_id, "iteration": d.iteration, **payload})

    def open_attempt(
        self, tx: Tx, d: Descriptor, state: str, meta: dict[str, Any], now: int | None = None, **values: Any
    ) -> int:
        """Insert the node's next attempt row (numbered from 1) and return its number."""
        attempt = self.last_attempt.get(d.key, 0) + 1
        self.last_attempt[d.key] = attempt
        tx.insert_attempt(
            run_id=self.run_id,
            node_id=d.node_id,
            iteration=d.iteration,
            attempt=attempt,
            state=state,
            started_at_ms=now_ms() if now is None else now,
            cached=0,
            meta_json=dumps(meta),
            **values,
        )
        return attempt

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
        meta = {
            "kind": d.node.kind,
            "label": d.label,
            "outputTable": d.output_table,
            "retries": d.retries,
            "timeoutMs": d.timeout_ms,
            "lastHeartbeat": self.last_heartbeat_data.get(d.key),
        }
        with self.store.write() as tx:
            attempt = self.open_attempt(tx, d, IN_PROGRESS, meta)
            self.set_state(tx, d, IN_PROGRESS, ev.NODE_STARTED, attempt=attempt)
        runtime = TaskRuntime(d.node_id, d.iteration, attempt, self._heartbeat_callback(d, attempt))
        ctx = self._ctx(attempt, self.last_heartbeat_data.get(d.key))
        task = asyncio.create_task(run_attempt(d.node, ctx, runtime), name=f"smithers:{d.key}")
        task.add_done_callback(lambda _t: self._wake.set())
        self.in_flight[d.key] = task
        self.in_flight_desc[d.key] = d
        return False

    async def _await_progress(self, wake_at_ms: int | None) -> None:
        """Wait until a task finishes, the run is cancelled, or ``wake_at_ms`` (a timer) is reached."""
        if any(t.done() for t in self.in_flight.values()):
            return
        self._wake.clear()
        timeout = None if wake_at_ms is None else max(0.0, (wake_at_ms - now_ms()) / 1000)
        cancel_wait = asyncio.create_task(self.cancel_event.wait())
        wake_wait = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait([cancel_wait, wake_wait], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel_wait.cancel()
            wake_wait.cancel()

    def _collect_completions(self) -> None:
        for key in [k for k, t in self.in_flight.items() if t.done()]:
            task = self.in_flight.pop(key)
            self._complete(self.in_flight_desc.pop(key), task)

    def _cancel_unmounted(self, graph: Graph) -> None:
        """A re-render that no longer mounts an in-flight task cancels it (engine spec §1.3)."""
        for key in [k for k in self.in_flight if k not in graph.by_key]:
            self.in_flight.pop(key).cancel()
            d = self.in_flight_desc.pop(key)
            attempt = self.last_attempt[key]
            with self.store.write() as tx:
                tx.update_attempt(
                    self.run_id, d.node_id, d.iteration, attempt, state=CANCELLED, finished_at_ms=now_ms()
                )
                self.set_state(tx, d, CANCELLED, ev.NODE_CANCELLED, attempt=attempt, reason="unmounted")

    def _complete(self, d: Descriptor, task: asyncio.Task[Any]) -> None:
        attempt = self.last_attempt[d.key]
        now = now_ms()
        exc = task.exception() if not task.cancelled() else RunCancelled()
        with self.store.write() as tx:
            if exc is None:
                payload = task.result()
                tx.upsert_output(self.run_id, d.node_id, d.iteration, d.output_table, payload)
                tx.update_attempt(self.run_id, d.node_id, d.iteration, attempt, state=FINISHED, finished_at_ms=now)
                self.outputs[(d.node_id, d.iteration)] = StoredOutput(d.node_id, d.iteration, d.output_table, payload)
                self.set_state(tx, d, FINISHED, ev.NODE_FINISHED, attempt=attempt)
                if self.render_reads.depends_on(d.node_id, d.output_table):
                    self.needs_render = True
                else:
                    self._unchanged_frame(tx)
                return
            if isinstance(exc, RunCancelled | asyncio.CancelledError):
                tx.update_attempt(self.run_id, d.node_id, d.iteration, attempt, state=CANCELLED, finished_at_ms=now)
                self.set_state(tx, d, CANCELLED, ev.NODE_CANCELLED, attempt=attempt, reason="aborted")
                return
            error = error_from_exception(exc)
            if error.code == TASK_HEARTBEAT_TIMEOUT:
                tx.emit(
                    self.run_id,
                    ev.TASK_HEARTBEAT_TIMEOUT,
                    {"nodeId": d.node_id, "iteration": d.iteration, "attempt": attempt, **(error.details or {})},
                )
            retryable = is_retryable(error)
            tx.update_attempt(
                self.run_id,
                d.node_id,
                d.iteration,
                attempt,
                state=FAILED,
                finished_at_ms=now,
                error_json=dumps(error.to_dict()),
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
                return SmithersError(f"node {d.node_id} failed: {err.message}", code=err.code, details=details)
        return SmithersError(f"node {d.node_id} failed", code="TASK_FAILED", details={"nodeId": d.node_id})

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

    async def _sleep_until(self, when_ms: int) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.cancel_event.wait(), timeout=max(0.0, (when_ms - now_ms()) / 1000))


def is_terminal_status(status: str) -> bool:
    return status in TERMINAL_RUN_STATUSES


async def run_async(
    workflow: Workflow,
    input: Any = None,
    *,
    store: Store,
    run_id: str | None = None,
    resume: bool = False,
    force: bool = False,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    auth: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
    on_event: Callable[[StoredEvent], None] | None = None,
) -> RunResult:
    """Start (or with ``resume=True`` continue) a run and execute it until it settles or waits."""
    import uuid

    if run_id is None:
        if resume:
            raise InvalidInputError("resume needs a run id")
        run_id = str(uuid.uuid4())
    if len(run_id) > 256 or not run_id:
        raise InvalidInputError("run id must be 1 to 256 characters")
    loop = RunLoop(store, workflow, run_id, max_concurrency=max_concurrency, cancel=cancel)
    unsubscribe = None
    if on_event is not None:
        callback = on_event

        def forward(event: StoredEvent) -> None:
            if event.run_id == run_id:
                callback(event)

        unsubscribe = store.bus.subscribe(forward)
    try:
        if resume:
            loop.claim(force, auth, config or {})
        else:
            loop.create(workflow.validate_input(input), auth, config or {})
        return await loop.execute()
    finally:
        if unsubscribe is not None:
            unsubscribe()
