"""State of one run while it executes, and the helpers every part of the run loop uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from smithers.engine import events as ev
from smithers.engine import frames
from smithers.engine.agent_run import RunAgents
from smithers.engine.attempt import TaskRuntime
from smithers.engine.context import Ctx, ReadLog, StoredOutput
from smithers.engine.extract import Descriptor, Graph, LoopInfo, extract
from smithers.engine.ownership import new_owner_id
from smithers.engine.states import (
    WAITING_NODE_STATES,
)
from smithers.engine.vcs import Vcs
from smithers.engine.waits import WaitHandler
from smithers.engine.workflow import Workflow
from smithers.errors import RUN_RESUME_CLAIM_FAILED, RunOwnershipError
from smithers.store.rows import dumps, iso_ms, now_ms
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
    unchanged: bool = False
    """A resume found the run already ended and wrote nothing (ask for a retry to run it again)."""


def auth_context(
    triggered_by: str, scopes: list[str] | None = None, role: str = "operator", token_id: str | None = None
) -> dict[str, Any]:
    """A RunAuthContext (docs/protocol.md#auth-context), recorded on the run and visible as ``ctx.auth``."""
    return {
        "triggeredBy": triggered_by,
        "scopes": list(scopes or []),
        "role": role,
        "tokenId": token_id,
        "createdAt": iso_ms(now_ms()),
    }


class RunCore:
    """What one execution of a run knows: node states, outputs, loops, attempts, frames.

    Split by concern over :class:`~smithers.engine.run_start.RunStart` (create and resume),
    :class:`~smithers.engine.run_frames.RunFrames` (render and record frames),
    :class:`~smithers.engine.run_endings.RunEndings` (finish, fail, cancel, suspend) and the
    loop itself, :class:`~smithers.engine.runner.RunLoop`.
    """

    def __init__(
        self, store: Store, workflow: Workflow, run_id: str, *, max_concurrency: int, cancel: asyncio.Event | None
    ):
        self.store = store
        self.workflow = workflow
        self.run_id = run_id
        self.max_concurrency = max(1, max_concurrency)
        self.owner_id = new_owner_id()
        self.cancel_event = cancel or asyncio.Event()
        self.pause_event = asyncio.Event()
        """Set to stop executing without ending the run (docs/engine.md#time-travel)."""
        self.hold_seen: int | None = None
        """The stored pause request this run has already paused for."""
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
        self.disabled_agents: set[str] = set()
        """Agents the auth circuit breaker took out of this run (docs/engine.md#agent-tasks)."""
        self.agents = RunAgents()
        self.in_flight: dict[str, asyncio.Task[Any]] = {}
        self.in_flight_desc: dict[str, Descriptor] = {}
        self.in_flight_runtime: dict[str, TaskRuntime] = {}
        self.vcs: Vcs | None = None
        """The run's working directory under version control (docs/engine.md#working-directory-snapshots)."""
        self.lingering: dict[str, Future[Any]] = {}
        """Sync bodies of ended attempts still running, by node key: each holds its node and a slot."""
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
        self.claimed = True
        """False when a resume found the run ended and took nothing over."""
        self._first_decision: tuple[str, Any] | None = None
        self._first_render: tuple[Graph, ReadLog] | None = None
        self.task_index_json = "[]"
        self.waits = WaitHandler(self)
        self._wake = asyncio.Event()

    def _ctx(
        self,
        attempt: int = 0,
        last_heartbeat: Any = None,
        reads: ReadLog | None = None,
        node: Descriptor | None = None,
    ) -> Ctx:
        """The ``ctx`` of a render (``node`` None) or of one node's attempt (docs/engine.md#ctx)."""
        loops = self.graph.loops if self.graph is not None else {}
        iterations = {ralph_id: it for ralph_id, (it, _) in self.loop_state.items()}
        for info in loops.values():  # logical ids name the loops of the current scope
            iterations[info.logical_id] = iterations.get(info.ralph_id, info.iteration)
        return Ctx(
            input=self.input,
            run_id=self.run_id,
            iteration=node.iteration if node is not None else self._render_iteration(loops),
            iterations=iterations,
            auth=self.auth,
            outputs_by_key=self.outputs,
            loop_of=self.graph.loop_of if self.graph is not None else {},
            attempt=attempt,
            last_heartbeat=last_heartbeat,
            reads=reads,
        )

    def _render_iteration(self, loops: dict[str, LoopInfo]) -> int:
        """``ctx.iteration`` of a render (docs/engine.md#ctx): the loop that is running, and if it has
        loops nested in it, the one of those that is running, and so on down; once every loop is done,
        the last one's final iteration (so ids built from it stay the same after the loop ends)."""
        if not loops:  # the first render of a resumed run: the stored loops, in no nesting order
            running = [it for it, done in self.loop_state.values() if not done]
            return running[0] if running else 0

        def done(info: LoopInfo) -> bool:
            return self.loop_state.get(info.ralph_id, (info.iteration, info.until))[1] or info.until

        chosen: LoopInfo | None = None
        for info in loops.values():  # document order: a loop comes before the loops nested in it
            if info.parent == (chosen.ralph_id if chosen else None) and not done(info):
                chosen = info
        if chosen is None:
            chosen = list(loops.values())[-1]
        return self.loop_state.get(chosen.ralph_id, (chosen.iteration, False))[0]

    def _render_graph(self, reads: ReadLog) -> Graph:
        """Render and extract the tree of the current state."""
        if self.graph is None and self.loop_state:
            # Resumed inside a loop: a first pass learns which nodes belong to which loop, so reads
            # of loop nodes default to their loop's iteration in the render that counts.
            self.graph = extract(self.workflow.render(self._ctx()), self.workflow.key, self.loop_state)
        return extract(self.workflow.render(self._ctx(reads=reads)), self.workflow.key, self.loop_state)

    def linger(self, key: str, runtime: TaskRuntime) -> None:
        """Keep the node (and a concurrency slot) held while a sync body of an ended attempt still runs."""
        body = runtime.body
        if body is None or body.done():
            return
        self.lingering[key] = body
        loop = asyncio.get_running_loop()

        def returned(_body: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the run's loop is gone (the call returned): nobody to wake
                loop.call_soon_threadsafe(self._wake.set)

        body.add_done_callback(returned)
        log.warning(
            "run %s: the sync body of %s attempt %d outlived its attempt; the node waits for it to return",
            self.run_id,
            key,
            runtime.attempt,
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

    def fence(self, tx: Tx) -> None:
        """Check this process still holds the run's lease, once per transaction that writes to the
        run (the fencing token is the owner id a claim writes): a process that was paused past its
        lease and taken over stops here instead of writing over the new owner's steps."""
        if self.run_id in tx.fenced or self._create_row is not None:  # (a new run is written in this step)
            return
        tx.fence_run(self.run_id, self.owner_id, now_ms(), self._lost_lease)
        tx.fenced.add(self.run_id)

    def _lost_lease(self) -> RunOwnershipError:
        self.lost_ownership = True
        return RunOwnershipError(f"run {self.run_id} was taken over by another process", code=RUN_RESUME_CLAIM_FAILED)

    def agent_columns(self, runtime: TaskRuntime) -> dict[str, Any]:
        """An ended agent attempt's answer and what its meta adds (``response_text``, ``meta_json``)."""
        state = runtime.agent
        if state is None:
            return {}
        state.sink.flush()  # the rest of its stream, before the event that ends the attempt
        return {"response_text": state.response_text, "meta_json": dumps({**runtime.meta, **state.meta()})}

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
            # the frame the attempt started after: a rewind to frame N drops attempts of frame N on
            # (docs/engine.md#frames-snapshots-and-history)
            meta_json=dumps({**meta, "frameNo": self.frame_no}),
            **values,
        )
        return attempt

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
        content_hash = frames.sha256_hex(frames.canonical(body))
        tx.upsert_snapshot(
            run_id=self.run_id,
            frame_no=self.frame_no,
            nodes_json=dumps(nodes),
            outputs_json=dumps(outputs),
            ralph_json=dumps(ralph),
            input_json=dumps(self.input),
            workflow_hash=None,
            content_hash=content_hash,
            created_at_ms=now,
        )
        tx.emit(self.run_id, ev.SNAPSHOT_CAPTURED, {"frameNo": self.frame_no, "contentHash": content_hash})
