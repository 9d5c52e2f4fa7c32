"""Suspension points of a run: approvals, waits for events, and timers (docs/engine.md#approvals-waits-and-timers).

They hold no in-memory promises: each is only database rows (an approval row, a signal row, an
attempt whose meta holds the timer or wait), re-checked on every pass of the run loop, so a run
resumed after a restart sees exactly what a live one would.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from smithers.engine import events as ev
from smithers.engine.context import StoredOutput
from smithers.engine.dsl import Approval, Task, Timer, WaitForEvent
from smithers.engine.states import (
    APPROVAL_APPROVED,
    APPROVAL_DENIED,
    APPROVAL_REQUESTED,
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    SKIPPED,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_NODE_STATES,
    WAITING_TIMER,
)
from smithers.errors import APPROVAL_DENIED as APPROVAL_DENIED_CODE
from smithers.errors import TASK_TIMEOUT, SmithersError
from smithers.store.rows import dumps, iso_ms, now_ms

if TYPE_CHECKING:
    from smithers.engine.extract import Descriptor, Graph
    from smithers.engine.scheduler import Schedule
    from smithers.store.store import Store, Tx

WAIT_KIND = "wait-for-event"
TIMEOUT_NOTE = "approval timed out"
TIMEOUT_DECIDER = "smithers:timeout"
TIMER_KIND = "timer"


def timer_event(node_id: str, iteration: int) -> dict[str, Any]:
    """The payload of ``TimerCancelled`` (the timer's id is its node's id)."""
    return {"nodeId": node_id, "iteration": iteration, "timerId": node_id}


def approval_request(d: Descriptor) -> dict[str, Any]:
    """The ``request_json`` of an approval (docs/engine.md#approvals-waits-and-timers), plus our ``onDeny``."""
    node = d.node
    if isinstance(node, Approval):
        mode = "decision" if node.mode == "approve" else node.mode
        return {
            "mode": mode,
            "waitAsync": False,
            "title": d.label,
            "summary": node.summary,
            "options": list(node.options),
            "allowedScopes": list(node.allowed_scopes),
            "allowedUsers": list(node.allowed_users),
            "autoApprove": None,
            "onDeny": node.on_deny,
            "metadata": node.metadata,
        }
    return {
        "mode": "gate",
        "waitAsync": False,
        "title": d.label,
        "summary": None,
        "options": [],
        "allowedScopes": [],
        "allowedUsers": [],
        "autoApprove": None,
        "onDeny": "skip" if d.continue_on_fail else "fail",
        "metadata": None,
    }


class RunAccess(Protocol):
    """What the wait handler uses of the run loop that owns it."""

    run_id: str
    store: Store
    frame_no: int
    states: dict[str, str]
    waiting: set[str]
    last_attempt: dict[str, int]
    outputs: dict[tuple[str, int], StoredOutput]
    graph: Graph | None

    def set_state(self, tx: Tx, d: Descriptor, state: str, event: str | None = None, **payload: Any) -> None: ...

    def open_attempt(
        self, tx: Tx, d: Descriptor, state: str, meta: dict[str, Any], now: int | None = None, **values: Any
    ) -> int: ...


class WaitHandler:
    """Starts and resolves the approval, wait-for-event and timer leaves of one run."""

    def __init__(self, loop: RunAccess):
        self.loop = loop
        self.consumed_signals: set[int] = set()
        self.timer_fires_at: dict[str, int] = {}
        self.wait_meta: dict[str, dict[str, Any]] = {}
        self.approval_deadlines: dict[str, int] = {}
        self._approval_graph: Graph | None = None
        self._approval_keys: list[str] = []
        self._started_after: dict[str, int] = {}
        """Per node key, the frame its current attempt started after (kept in every meta rewrite)."""

    def load_attempt(self, attempt: dict[str, Any]) -> None:
        meta = json.loads(attempt["meta_json"]) if attempt["meta_json"] else {}
        key = f"{attempt['node_id']}::{attempt['iteration']}"
        if isinstance(meta.get("frameNo"), int):
            self._started_after[key] = meta["frameNo"]
        if meta.get("kind") == TIMER_KIND:
            self.timer_fires_at[key] = int(meta["timer"]["firesAtMs"])
        elif meta.get("kind") == WAIT_KIND:
            wait = meta["waitForEvent"]
            self.wait_meta[key] = wait
            if wait.get("resolvedSignalSeq") is not None:
                self.consumed_signals.add(int(wait["resolvedSignalSeq"]))

    # ---- start -----------------------------------------------------------------------------
    def start(self, d: Descriptor) -> bool | None:
        """Start a suspending leaf. True: the tree changed; False: it now waits; None: run it as a task."""
        if d.needs_approval:
            return self._start_approval(d)
        if d.kind == "wait":
            return self._start_wait(d)
        if d.kind == "timer":
            return self._start_timer(d)
        return None

    def _start_approval(self, d: Descriptor) -> bool | None:
        run_id = self.loop.run_id
        with self.loop.store.write() as tx:
            row = tx.get_approval(run_id, d.node_id, d.iteration)
            if row is None:
                tx.insert_approval(
                    run_id=run_id,
                    node_id=d.node_id,
                    iteration=d.iteration,
                    status=APPROVAL_REQUESTED,
                    requested_at_ms=now_ms(),
                    request_json=dumps(approval_request(d)),
                    auto_approved=0,
                )
                tx.emit(run_id, ev.APPROVAL_REQUESTED, {"nodeId": d.node_id, "iteration": d.iteration})
                self.loop.set_state(tx, d, WAITING_APPROVAL, ev.NODE_WAITING_APPROVAL)
                self._approval_deadline(d, now_ms())
                return False
            if row["status"] == APPROVAL_REQUESTED:
                if self.loop.states.get(d.key) != WAITING_APPROVAL:
                    self.loop.set_state(tx, d, WAITING_APPROVAL, ev.NODE_WAITING_APPROVAL)
                return False
            if row["status"] == APPROVAL_APPROVED and isinstance(d.node, Task):
                return None  # an approved gate: execute the task itself
            self._apply_decision(tx, d, row)
            return True

    def _apply_decision(self, tx: Tx, d: Descriptor, row: dict[str, Any]) -> None:
        """Turn a decided approval into the node's outcome (docs/engine.md#approvals-waits-and-timers)."""
        approved = row["status"] == APPROVAL_APPROVED
        node = d.node
        if approved:
            if isinstance(node, Task):
                self.loop.set_state(tx, d, PENDING)
                return
            self._write_decision(tx, d, row, approved=True)
            return
        policy = node.on_deny if isinstance(node, Approval) else ("skip" if d.continue_on_fail else "fail")
        if policy == "fail":
            timed_out = row["decided_by"] == TIMEOUT_DECIDER
            error = SmithersError(
                f"approval {d.node_id} "
                + ("timed out" if timed_out else "was denied")
                + (f": {row['note']}" if row["note"] and not timed_out else ""),
                code=TASK_TIMEOUT if timed_out else APPROVAL_DENIED_CODE,
                details={"nodeId": d.node_id, "note": row["note"]},
            )
            self._record_failure(tx, d, error)
        elif policy == "skip" and not isinstance(node, Approval):
            self.loop.set_state(tx, d, SKIPPED, ev.NODE_SKIPPED)  # a gate has no decision to record
        else:  # "continue", and "skip" (the node reads skipped, its decision is still readable)
            self._write_decision(tx, d, row, approved=False, state=SKIPPED if policy == "skip" else FINISHED)

    def _write_decision(
        self, tx: Tx, d: Descriptor, row: dict[str, Any], approved: bool, state: str = FINISHED
    ) -> None:
        decision = json.loads(row["decision_json"]) if row["decision_json"] else None
        payload: dict[str, Any] = {
            "approved": approved,
            "note": row["note"],
            "decidedBy": row["decided_by"],
            "decidedAt": None if row["decided_at_ms"] is None else iso_ms(row["decided_at_ms"]),
        }
        if isinstance(decision, dict):
            payload.update({k: v for k, v in decision.items() if k in ("selected", "ranked", "notes", "value")})
        self._finish_with_output(tx, d, payload, state=state)

    def _close_attempt(
        self, tx: Tx, d: Descriptor, state: str, meta: dict[str, Any] | None = None, error: SmithersError | None = None
    ) -> int:
        """End the node's current attempt in ``state`` (approvals, which have none, get one)."""
        now = now_ms()
        values: dict[str, Any] = {"finished_at_ms": now}
        if error is not None:
            values["error_json"] = dumps(error.to_dict())
        attempt = self.loop.last_attempt.get(d.key, 0)
        if attempt == 0:  # an approval's one step: it starts and ends as its decision is applied
            attempt = self.loop.open_attempt(tx, d, state, meta or {"kind": "approval"}, now, **values)
            tx.emit(
                self.loop.run_id, ev.NODE_STARTED, {"nodeId": d.node_id, "iteration": d.iteration, "attempt": attempt}
            )
            return attempt
        if meta is not None:
            values["meta_json"] = self._meta_json(d.key, meta)
        tx.update_attempt(self.loop.run_id, d.node_id, d.iteration, attempt, state=state, **values)
        return attempt

    def _finish_with_output(
        self, tx: Tx, d: Descriptor, payload: Any, meta: dict[str, Any] | None = None, state: str = FINISHED
    ) -> None:
        attempt = self._close_attempt(tx, d, FINISHED, meta)
        if payload is not None or d.kind == "wait":
            tx.upsert_output(self.loop.run_id, d.node_id, d.iteration, d.output_table, payload)
            self.loop.outputs[(d.node_id, d.iteration)] = StoredOutput(d.node_id, d.iteration, d.output_table, payload)
        if state == SKIPPED:
            self.loop.set_state(tx, d, SKIPPED, ev.NODE_SKIPPED, attempt=attempt)
        else:
            self.loop.set_state(tx, d, FINISHED, ev.NODE_FINISHED, attempt=attempt)

    def _record_failure(self, tx: Tx, d: Descriptor, error: SmithersError, meta: dict[str, Any] | None = None) -> None:
        attempt = self._close_attempt(tx, d, FAILED, meta, error)
        self.loop.set_state(tx, d, FAILED, ev.NODE_FAILED, attempt=attempt, error=error.to_dict())

    def _start_wait(self, d: Descriptor) -> bool:
        node = d.node
        assert isinstance(node, WaitForEvent)
        now = now_ms()
        with self.loop.store.write() as tx:
            wait = {
                "signalName": node.event,
                "correlationId": node.correlation_id,
                "onTimeout": node.on_timeout,
                "timeoutMs": node.timeout_ms,
                "waitAsync": False,
                "startedAtMs": now,
                "openedAfterSignalSeq": tx.last_signal_seq(self.loop.run_id),
            }
            self.wait_meta[d.key] = wait
            attempt = self.loop.open_attempt(tx, d, WAITING_EVENT, {"kind": WAIT_KIND, "waitForEvent": wait}, now)
            self._started_after[d.key] = self.loop.frame_no
            self.loop.set_state(tx, d, WAITING_EVENT, ev.NODE_WAITING_EVENT, attempt=attempt)
            return self._resolve_wait(tx, d, now)

    def _start_timer(self, d: Descriptor) -> bool:
        node = d.node
        assert isinstance(node, Timer)
        now = now_ms()
        fires_at = now + node.duration_ms if node.duration_ms is not None else int(node.until_ms or now)
        timer = {
            "timerId": d.node_id,
            "timerType": "duration" if node.duration_ms is not None else "absolute",
            "duration": node.duration_ms,
            "until": node.until_ms,
            "createdAtMs": now,
            "firesAtMs": fires_at,
            "firedAtMs": None,
        }
        self.timer_fires_at[d.key] = fires_at
        with self.loop.store.write() as tx:
            self.loop.open_attempt(tx, d, WAITING_TIMER, {"kind": TIMER_KIND, "timer": timer}, now)
            self._started_after[d.key] = self.loop.frame_no
            tx.emit(
                self.loop.run_id,
                ev.TIMER_CREATED,
                {
                    "nodeId": d.node_id,
                    "iteration": d.iteration,
                    "timerId": d.node_id,
                    "firesAtMs": fires_at,
                    "timerType": timer["timerType"],
                },
            )
            if fires_at <= now:
                self._fire_timer(tx, d, now)
                return True
            self.loop.set_state(tx, d, WAITING_TIMER, ev.NODE_WAITING_TIMER, firesAtMs=fires_at)
            return False

    # ---- resolve ---------------------------------------------------------------------------
    def resolve(self, graph: Graph) -> bool:
        """Check every suspended leaf for its decision, signal or due time. True if any changed."""
        states = self.loop.states
        keys = set(self.loop.waiting) | self.denied_candidates(graph)
        candidates = [graph.by_key[k] for k in keys if k in graph.by_key]
        candidates.sort(key=lambda d: d.ordinal)
        if not candidates:
            return False
        changed = False
        now = now_ms()
        with self.loop.store.write() as tx:
            for d in candidates:
                state = states[d.key]
                if d.needs_approval:
                    row = tx.get_approval(self.loop.run_id, d.node_id, d.iteration)
                    if row is None:
                        continue
                    if row["status"] == APPROVAL_REQUESTED:
                        deadline = self._approval_deadline(d, row["requested_at_ms"])
                        if deadline is None or deadline > now:
                            continue
                        row = self._time_out_approval(tx, d, now)
                    if state == FAILED and (
                        row["status"] != APPROVAL_DENIED
                        or tx.get_output(self.loop.run_id, d.node_id, d.iteration) is not None
                    ):
                        continue
                    if state == FAILED and self._failure_recorded(tx, d):
                        continue
                    self._apply_decision(tx, d, row)
                    changed = True
                elif state == WAITING_EVENT:
                    changed = self._resolve_wait(tx, d, now) or changed
                elif state == WAITING_TIMER and self.timer_fires_at.get(d.key, now + 1) <= now:
                    self._fire_timer(tx, d, now)
                    changed = True
        return changed

    def _approval_deadline(self, d: Descriptor, requested_at_ms: int | None) -> int | None:
        """When an ``Approval(timeout_ms=...)`` times out (remembered so the run wakes up for it)."""
        node = d.node
        if not isinstance(node, Approval) or not node.timeout_ms or requested_at_ms is None:
            return None
        deadline = int(requested_at_ms) + int(node.timeout_ms)
        self.approval_deadlines[d.key] = deadline
        return deadline

    def _time_out_approval(self, tx: Tx, d: Descriptor, now: int) -> dict[str, Any]:
        """An approval nobody decided in time counts as denied (docs/engine.md#departures-from-the-engine-model)."""
        run_id = self.loop.run_id
        tx.update_approval(
            run_id,
            d.node_id,
            d.iteration,
            status=APPROVAL_DENIED,
            decided_at_ms=now,
            note=TIMEOUT_NOTE,
            decided_by=TIMEOUT_DECIDER,
        )
        tx.emit(
            run_id,
            ev.APPROVAL_DENIED,
            {"nodeId": d.node_id, "iteration": d.iteration, "note": TIMEOUT_NOTE, "decidedBy": TIMEOUT_DECIDER},
        )
        self.approval_deadlines.pop(d.key, None)
        row = tx.get_approval(run_id, d.node_id, d.iteration)
        assert row is not None
        return row

    def denied_candidates(self, graph: Graph) -> set[str]:
        """Approval leaves marked failed by a denial whose outcome is not applied yet."""
        states = self.loop.states
        return {k for k in self.approval_keys(graph) if states.get(k) == FAILED}

    def approval_keys(self, graph: Graph) -> list[str]:
        if graph is not self._approval_graph:
            self._approval_graph = graph
            self._approval_keys = [d.key for d in graph.descriptors if d.needs_approval]
        return self._approval_keys

    def _failure_recorded(self, tx: Tx, d: Descriptor) -> bool:
        return any(a["state"] == FAILED for a in tx.list_attempts(self.loop.run_id, d.node_id, d.iteration))

    def _resolve_wait(self, tx: Tx, d: Descriptor, now: int) -> bool:
        node = d.node
        assert isinstance(node, WaitForEvent)
        wait = self.wait_meta.get(d.key)
        if wait is None:
            return False
        while True:
            signal = tx.find_signal(self.loop.run_id, node.event, node.correlation_id, self._unusable(wait))
            if signal is None:
                break
            payload = json.loads(signal["payload_json"])
            if node.output is not None:
                try:
                    payload = node.output.model_validate(payload).model_dump(mode="json")
                except ValidationError as exc:
                    # A bad message from outside must not kill the run: this wait passes the signal
                    # by and keeps waiting (docs/engine.md#approvals-waits-and-timers).
                    wait = self._reject_signal(tx, d, wait, signal, node.output.__name__, exc)
                    continue
            self.consumed_signals.add(int(signal["seq"]))
            wait = {**wait, "resolvedSignalSeq": signal["seq"], "receivedAtMs": signal["received_at_ms"]}
            self.wait_meta[d.key] = wait
            self._finish_with_output(tx, d, payload, {"kind": WAIT_KIND, "waitForEvent": wait})
            return True
        timeout = wait.get("timeoutMs")
        if timeout is not None and now - int(wait["startedAtMs"]) >= int(timeout):
            wait = {**wait, "timedOutAtMs": now}
            if node.on_timeout == "skip":
                self._close_attempt(tx, d, SKIPPED, {"kind": WAIT_KIND, "waitForEvent": wait})
                self.loop.set_state(tx, d, SKIPPED, ev.NODE_SKIPPED)
            elif node.on_timeout == "continue":
                self._finish_with_output(tx, d, None, {"kind": WAIT_KIND, "waitForEvent": wait})
            else:
                error = SmithersError(f"wait for {node.event!r} timed out after {timeout} ms", code=TASK_TIMEOUT)
                self._record_failure(tx, d, error, {"kind": WAIT_KIND, "waitForEvent": wait})
            return True
        return False

    def _unusable(self, wait: dict[str, Any]) -> set[int]:
        """Signals this wait may not take: those it refused, and those received before it opened that
        another wait consumed. A signal received while waits are open resolves every one of them
        (docs/engine.md#approvals-waits-and-timers); one that came before is for the first wait only.
        """
        rejected = set(wait.get("rejectedSignalSeqs") or ())
        if "openedAfterSignalSeq" not in wait:  # opened by an older version: every signal is consumed once
            return self.consumed_signals | rejected
        opened_after = wait["openedAfterSignalSeq"]
        if opened_after is None:
            return rejected
        return {seq for seq in self.consumed_signals if seq <= opened_after} | rejected

    def _meta_json(self, key: str, meta: dict[str, Any]) -> str:
        """``meta`` for the node's current attempt, still naming the frame the attempt started after."""
        started = self._started_after.get(key)
        return dumps(meta if started is None else {**meta, "frameNo": started})

    def _reject_signal(
        self, tx: Tx, d: Descriptor, wait: dict[str, Any], signal: dict[str, Any], model: str, exc: ValidationError
    ) -> dict[str, Any]:
        """Record that this wait refused a signal whose payload its output model rejects."""
        seq = int(signal["seq"])
        wait = {**wait, "rejectedSignalSeqs": [*(wait.get("rejectedSignalSeqs") or ()), seq]}
        self.wait_meta[d.key] = wait
        attempt = self.loop.last_attempt.get(d.key, 0)
        meta = self._meta_json(d.key, {"kind": WAIT_KIND, "waitForEvent": wait})
        tx.update_attempt(self.loop.run_id, d.node_id, d.iteration, attempt, meta_json=meta)
        tx.emit(
            self.loop.run_id,
            ev.SIGNAL_REJECTED,
            {
                "nodeId": d.node_id,
                "iteration": d.iteration,
                "seq": seq,
                "signalName": signal["signal_name"],
                "error": f"payload does not match {model}: {exc.errors()[0].get('msg', 'invalid')}",
            },
        )
        return wait

    def _fire_timer(self, tx: Tx, d: Descriptor, now: int) -> None:
        fires_at = self.timer_fires_at[d.key]
        attempt = self.loop.last_attempt.get(d.key, 1)
        tx.update_attempt(self.loop.run_id, d.node_id, d.iteration, attempt, state=FINISHED, finished_at_ms=now)
        tx.emit(
            self.loop.run_id,
            ev.TIMER_FIRED,
            {
                "nodeId": d.node_id,
                "iteration": d.iteration,
                "timerId": d.node_id,
                "firesAtMs": fires_at,
                "firedAtMs": now,
                "delayMs": now - fires_at,
            },
        )
        self.loop.set_state(tx, d, FINISHED, ev.NODE_FINISHED, attempt=attempt)

    def cancel_waiting(self, tx: Tx, reason: str, keys: list[str] | None = None) -> None:
        """Cancel suspended nodes (all of them, or ``keys``): the run is ending, or its tree no longer
        mounts them. Timers emit ``TimerCancelled`` first (docs/engine.md#cancellation)."""
        loop = self.loop
        graph = loop.graph
        by_key = graph.by_key if graph is not None else {}
        chosen = [k for k in (loop.waiting if keys is None else keys) if loop.states.get(k) in WAITING_NODE_STATES]
        chosen.sort(key=lambda k: (by_key[k].ordinal if k in by_key else len(by_key), k))
        now = now_ms()
        for key in chosen:
            state = loop.states[key]
            node_id, _, number = key.rpartition("::")
            iteration = int(number)
            attempt = loop.last_attempt.get(key, 0)
            payload: dict[str, Any] = {"nodeId": node_id, "iteration": iteration}
            if attempt:  # approvals have no attempt while they wait
                tx.update_attempt(loop.run_id, node_id, iteration, attempt, state=CANCELLED, finished_at_ms=now)
                payload["attempt"] = attempt
            if state == WAITING_TIMER:
                tx.emit(loop.run_id, ev.TIMER_CANCELLED, timer_event(node_id, iteration))
            loop.states[key] = CANCELLED
            loop.waiting.discard(key)
            tx.update_node(loop.run_id, node_id, iteration, state=CANCELLED, updated_at_ms=now)
            tx.emit(loop.run_id, ev.NODE_CANCELLED, {**payload, "reason": reason})

    def next_wake_ms(self, graph: Graph, sched: Schedule) -> int | None:
        """When something suspended becomes due on its own: a timer, a wait timeout, a retry backoff."""
        times: list[int] = []
        for key in self.loop.waiting:
            state = self.loop.states.get(key)
            if state == WAITING_TIMER and key in self.timer_fires_at:
                times.append(self.timer_fires_at[key])
            elif state == WAITING_APPROVAL and key in self.approval_deadlines:
                times.append(self.approval_deadlines[key])
            elif state == WAITING_EVENT:
                wait = self.wait_meta.get(key) or {}
                if wait.get("timeoutMs") is not None:
                    times.append(int(wait["startedAtMs"]) + int(wait["timeoutMs"]))
        if sched.backoff_until_ms is not None:
            times.append(sched.backoff_until_ms)
        return min(times) if times else None
