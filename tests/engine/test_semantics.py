"""Engine semantics through the Python API, on SQLite and PostgreSQL (docs/engine.md): cancels that
stick, every open waiter woken, timed-out sync bodies holding their node, loop ``ctx``, and the
details of the event log."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

import smithers
from smithers import (
    Approval,
    Branch,
    Loop,
    Parallel,
    RetryPolicy,
    Sequence,
    Task,
    Timer,
    WaitForEvent,
    heartbeat,
    workflow,
)
from smithers.engine import events as ev
from smithers.errors import AttemptStopped
from smithers.store.store import Store
from tests.waiting import wait_for


class Paid(BaseModel):
    amount: int


def events_of(store: Store, run_id: str) -> list[Any]:
    with store.read() as tx:
        return tx.list_events(run_id, limit=None)


def types_of(store: Store, run_id: str) -> list[str]:
    return [e.type for e in events_of(store, run_id)]


def node_states(store: Store, run_id: str) -> dict[str, str]:
    with store.read() as tx:
        return {f"{n['node_id']}::{n['iteration']}": n["state"] for n in tx.list_nodes(run_id)}


class Bodies:
    """Sync task bodies that record how many run at once, and whether they were told to stop."""

    def __init__(self, seconds: float, beat: bool = False):
        self.seconds = seconds
        self.beat = beat
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.started = 0
        self.returned = 0
        self.stopped = 0

    def __call__(self, ctx: Any) -> dict[str, Any]:
        with self.lock:
            self.now += 1
            self.started += 1
            self.peak = max(self.peak, self.now)
        try:
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:
                if self.beat:
                    heartbeat({"at": time.monotonic()})
                time.sleep(0.02)
        except AttemptStopped:
            with self.lock:
                self.stopped += 1
            raise
        finally:
            with self.lock:
                self.now -= 1
                self.returned += 1
        return {"ok": True}


# ---- 1. cancels stick --------------------------------------------------------------------------


def test_a_cancel_from_elsewhere_ends_a_run_sleeping_on_a_timer(store: Store) -> None:
    """``smithers.run`` sleeping on a timer notices a cancel made elsewhere and returns it at once."""
    charged: list[int] = []

    @workflow("nap")
    def nap(ctx: Any) -> Any:
        return Sequence(Timer("nap", duration_ms=30_000), Task("charge", run=lambda: charged.append(1) or 1))

    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(r=smithers.run(nap, {}, db=store, run_id="nap")))
    runner.start()
    wait_for(lambda: (store.get_run("nap") or {}).get("status") == "waiting-timer", "the run to sleep")
    assert smithers.cancel_run(store, "nap") == {"runId": "nap", "status": "cancelled"}
    runner.join(timeout=10)
    assert not runner.is_alive(), "the sleeping run did not notice the cancel"
    assert result["r"].status == "cancelled" and charged == []
    types = types_of(store, "nap")
    assert types[-3:] == [ev.TIMER_CANCELLED, ev.NODE_CANCELLED, ev.RUN_CANCELLED]
    assert node_states(store, "nap") == {"nap::0": "cancelled", "charge::0": "pending"}


def test_cancelling_a_running_run_aborts_attempts_and_cancels_its_waits(store: Store) -> None:
    """The owner's cancel: attempts in flight end ``aborted``; a timer (``TimerCancelled`` first), a
    wait and an approval open beside them are cancelled with the run; no approval stays pending."""

    @workflow("busy")
    def busy(ctx: Any) -> Any:
        return Parallel(
            Task("work", run=lambda: asyncio.sleep(30)),
            Timer("later", duration_ms=60_000),
            WaitForEvent("hear", event="go"),
            Approval("ask", title="Go?"),
        )

    async def main() -> Any:
        cancel = asyncio.Event()
        task = asyncio.create_task(smithers.run_async(busy, {}, db=store, run_id="busy", cancel=cancel))
        await asyncio.sleep(0.5)
        cancel.set()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()).status == "cancelled"
    reasons = {
        e.payload["nodeId"]: e.payload["reason"] for e in events_of(store, "busy") if e.type == ev.NODE_CANCELLED
    }
    assert reasons == {"work": "aborted", "later": "run-cancelled", "hear": "run-cancelled", "ask": "run-cancelled"}
    assert set(node_states(store, "busy").values()) == {"cancelled"}
    types = types_of(store, "busy")
    assert types.index(ev.TIMER_CANCELLED) < types.index(ev.RUN_CANCELLED) and types[-1] == ev.RUN_CANCELLED
    with store.read() as tx:
        active = ("running", "waiting-approval", "waiting-event", "waiting-timer")
        assert tx.list_pending_approvals(active, "waiting-approval") == []


def test_an_in_process_cancel_while_sleeping_on_a_timer_cancels_the_timer(store: Store) -> None:
    @workflow("nap2")
    def nap2(ctx: Any) -> Any:
        return Sequence(Timer("nap", duration_ms=30_000), Task("after", value=1))

    async def main() -> Any:
        cancel = asyncio.Event()
        task = asyncio.create_task(smithers.run_async(nap2, {}, db=store, run_id="nap2", cancel=cancel))
        while (store.get_run("nap2") or {}).get("status") != "waiting-timer":
            await asyncio.sleep(0.02)
        cancel.set()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()).status == "cancelled"
    assert node_states(store, "nap2") == {"nap::0": "cancelled", "after::0": "pending"}
    types = types_of(store, "nap2")
    assert types.index(ev.TIMER_CANCELLED) < types.index(ev.RUN_CANCELLED) == len(types) - 1
    with store.read() as tx:
        [attempt] = tx.list_attempts("nap2", "nap", 0)
    assert attempt["state"] == "cancelled"


def test_waits_the_tree_stops_mounting_are_cancelled(store: Store) -> None:
    """A wait and an approval mounted beside a task, dropped by the render once the task says so:
    they are cancelled (``unmounted``), the run finishes, and the approval is no longer pending."""

    async def decide(ctx: Any) -> dict[str, bool]:
        await asyncio.sleep(0.3)
        return {"drop": True}

    @workflow("drops")
    def drops(ctx: Any) -> Any:
        dropped = bool((ctx.output_maybe("decide") or {}).get("drop"))
        return Parallel(
            Task("decide", run=decide),
            Branch(not dropped, then=Parallel(WaitForEvent("hear", event="go"), Approval("ask", title="Go?"))),
        )

    result = smithers.run(drops, {}, db=store, run_id="drops")
    assert result.status == "finished"
    assert node_states(store, "drops") == {"decide::0": "finished", "hear::0": "cancelled", "ask::0": "cancelled"}
    reasons = [e.payload["reason"] for e in events_of(store, "drops") if e.type == ev.NODE_CANCELLED]
    assert reasons == ["unmounted", "unmounted"]
    with store.read() as tx:
        assert tx.list_pending_approvals(("finished",), "waiting-approval") == []


# ---- 2. one signal, every open wait -------------------------------------------------------------


def test_one_signal_resolves_every_wait_open_when_it_arrives(store: Store) -> None:
    @workflow("two")
    def two(ctx: Any) -> Any:
        return Sequence(
            Parallel(WaitForEvent("w1", event="go", output=Paid), WaitForEvent("w2", event="go", output=Paid)),
            Task("sum", run=lambda c: c.output(Paid, "w1").amount + c.output(Paid, "w2").amount),
        )

    first = smithers.run(two, {}, db=store, run_id="two")
    assert first.status == "waiting-event"
    smithers.signal_run(store, "two", "go", {"amount": 5})
    done = smithers.run(two, None, db=store, run_id="two", resume=True)
    assert done.status == "finished" and done.output == 10


def test_a_signal_sent_before_the_waits_opened_goes_to_the_first_only(store: Store) -> None:
    @workflow("early")
    def early(ctx: Any) -> Any:
        return Sequence(
            WaitForEvent("gate", event="start"),
            Parallel(WaitForEvent("w1", event="go"), WaitForEvent("w2", event="go")),
        )

    assert smithers.run(early, {}, db=store, run_id="early").status == "waiting-event"
    smithers.signal_run(store, "early", "go", {"n": 1})  # before w1 and w2 exist
    smithers.signal_run(store, "early", "start", {})
    assert smithers.run(early, None, db=store, run_id="early", resume=True).status == "waiting-event"
    assert node_states(store, "early") == {"gate::0": "finished", "w1::0": "finished", "w2::0": "waiting-event"}
    smithers.signal_run(store, "early", "go", {"n": 2})
    result = smithers.run(early, None, db=store, run_id="early", resume=True)
    assert result.status == "finished" and result.outputs["w1"] == {"n": 1} and result.outputs["w2"] == {"n": 2}


# ---- 3. sync bodies that outlive their attempt ----------------------------------------------------


def test_a_timed_out_sync_body_holds_its_node_until_it_returns(store: Store) -> None:
    """``timeout_ms=200`` on a body that sleeps 1 s, two retries: each attempt is recorded timed out
    at 0.2 s, but the next one starts only once the body has returned; never two at once."""
    bodies = Bodies(seconds=1.0)

    @workflow("stubborn")
    def stubborn(ctx: Any) -> Any:
        return Task("t", run=bodies, timeout_ms=200, retries=2, retry_policy=RetryPolicy(initial_delay_ms=0))

    result = smithers.run(stubborn, {}, db=store, run_id="stubborn")
    assert result.status == "failed" and result.error is not None and result.error["code"] == "TASK_TIMEOUT"
    assert "still running" in result.error["message"]
    assert bodies.started == 3 and bodies.peak == 1
    with store.read() as tx:
        attempts = tx.list_attempts("stubborn", "t", 0)
    assert [a["state"] for a in attempts] == ["failed", "failed", "failed"]
    for earlier, later in itertools.pairwise(attempts):
        assert later["started_at_ms"] - earlier["started_at_ms"] >= 900  # the body's 1 s, not the 0.2 s timeout


def test_sync_bodies_that_outlive_their_attempt_count_against_the_cap(store: Store) -> None:
    bodies = Bodies(seconds=0.6)

    @workflow("capped")
    def capped(ctx: Any) -> Any:
        return Parallel(*[Task(f"t{i}", run=bodies, timeout_ms=100, retries=1) for i in range(4)])

    result = smithers.run(capped, {}, db=store, run_id="capped", max_concurrency=2)
    assert result.status == "failed"
    assert bodies.peak <= 2


def test_a_sync_body_that_heartbeats_stops_when_its_run_is_cancelled(store: Store) -> None:
    """Python cannot stop a thread; ``heartbeat()`` raises ``AttemptStopped`` in a body whose attempt
    has ended, so a body that beats stops at its next beat."""
    bodies = Bodies(seconds=30, beat=True)

    @workflow("beating")
    def beating(ctx: Any) -> Any:
        return Task("t", run=bodies)

    async def main() -> Any:
        cancel = asyncio.Event()
        task = asyncio.create_task(smithers.run_async(beating, {}, db=store, run_id="beating", cancel=cancel))
        await asyncio.sleep(0.5)
        cancel.set()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()).status == "cancelled"
    wait_for(lambda: bodies.returned == 1, "the body to stop", timeout=5)
    assert bodies.stopped == 1


def test_a_body_raising_cancelled_error_fails_instead_of_restarting_forever(store: Store) -> None:
    calls: list[int] = []

    async def leaks(ctx: Any) -> Any:
        calls.append(1)
        raise asyncio.CancelledError

    @workflow("leaky")
    def leaky(ctx: Any) -> Any:
        return Task("t", run=leaks, retries=1, retry_policy=RetryPolicy(initial_delay_ms=0))

    result = smithers.run(leaky, {}, db=store, run_id="leaky")
    assert result.status == "failed" and result.error is not None and result.error["code"] == "TASK_FAILED"
    assert len(calls) == 2


# ---- 5. loop ctx ---------------------------------------------------------------------------------


def test_a_task_in_nested_loops_sees_its_own_loop_iteration(store: Store) -> None:
    seen: list[tuple[int, int, int]] = []

    def record(ctx: Any) -> int:
        seen.append((ctx.iteration, ctx.iterations["outer"], ctx.iterations["inner"]))
        return ctx.iteration

    @workflow("nested")
    def nested(ctx: Any) -> Any:
        return Loop(
            "outer",
            Sequence(Task("a", value=1), Loop("inner", Task("b", run=record), max_iterations=3)),
            max_iterations=2,
        )

    assert smithers.run(nested, {}, db=store, run_id="nested").status == "finished"
    assert seen == [(0, 0, 0), (1, 0, 1), (2, 0, 2), (0, 1, 0), (1, 1, 1), (2, 1, 2)]


def test_ids_made_from_the_iteration_stay_the_same_after_the_loop_ends(store: Store) -> None:
    @workflow("steps")
    def steps(ctx: Any) -> Any:
        return Sequence(
            Loop("L", Task(f"step-{ctx.iteration}", value=ctx.iteration), max_iterations=3), Task("end", value=0)
        )

    result = smithers.run(steps, {}, db=store, run_id="steps")
    assert result.status == "finished"
    assert node_states(store, "steps") == {
        "step-0::0": "finished",
        "step-1::1": "finished",
        "step-2::2": "finished",
        "end::0": "finished",
    }
    assert ev.NODE_SKIPPED not in types_of(store, "steps")


def test_sibling_loops_each_see_their_own_iteration_while_they_run(store: Store) -> None:
    @workflow("siblings")
    def siblings(ctx: Any) -> Any:
        return Sequence(
            Loop("L1", Task(f"a-{ctx.iteration}", value=1), max_iterations=3),
            Loop("L2", Task(f"b-{ctx.iteration}", value=2), max_iterations=2),
        )

    assert smithers.run(siblings, {}, db=store, run_id="siblings").status == "finished"
    finished = sorted(k for k, v in node_states(store, "siblings").items() if v == "finished")
    assert finished == ["a-0::0", "a-1::1", "a-2::2", "b-0::0", "b-1::1"]
    # (once L1 is done, a render's ctx.iteration is L2's: ids of L1 made from it would change;
    # with several loops, ctx.iterations["L1"] names the loop; docs/engine.md#ctx)


def test_a_sync_body_returning_after_the_call_returned_is_quiet(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    bodies = Bodies(seconds=0.5)

    @workflow("late")
    def late(ctx: Any) -> Any:
        return Task("t", run=bodies, timeout_ms=100)

    result = smithers.run(late, {}, db=store, run_id="late")
    assert result.status == "failed" and result.error is not None
    assert result.error["details"]["bodyStillRunning"] is True
    wait_for(lambda: bodies.returned == 1, "the body to return", timeout=5)
    time.sleep(0.1)
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


# ---- 6. event details ----------------------------------------------------------------------------


def test_the_settled_snapshot_comes_before_the_last_event_and_names_its_hash(store: Store) -> None:
    @workflow("one")
    def one(ctx: Any) -> Any:
        return Task("t", value=1)

    smithers.run(one, {}, db=store, run_id="one")
    events = events_of(store, "one")
    assert [e.type for e in events][-2:] == [ev.SNAPSHOT_CAPTURED, ev.RUN_FINISHED]
    captured = events[-2].payload
    with store.read() as tx:
        [snapshot] = [s for s in tx.select_snapshots("one") if s["frame_no"] == captured["frameNo"]]
    assert captured["contentHash"] == snapshot["content_hash"] and len(captured["contentHash"]) == 64


def test_a_retry_goes_back_to_pending(store: Store) -> None:
    attempts: list[int] = []

    def flaky(ctx: Any) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise RuntimeError("once")
        return 1

    @workflow("retry")
    def retry(ctx: Any) -> Any:
        return Task("t", run=flaky, retries=1, retry_policy=RetryPolicy(initial_delay_ms=0))

    smithers.run(retry, {}, db=store, run_id="retry")
    node_events = [e.type for e in events_of(store, "retry") if e.payload.get("nodeId") == "t"]
    assert node_events == [
        ev.NODE_PENDING,
        ev.NODE_STARTED,
        ev.NODE_FAILED,
        ev.NODE_RETRYING,
        ev.NODE_PENDING,
        ev.NODE_STARTED,
        ev.NODE_FINISHED,
    ]


def test_an_approval_decision_starts_the_node_before_it_ends(store: Store) -> None:
    @workflow("ask")
    def ask(ctx: Any) -> Any:
        return Sequence(Approval("ok", title="Go?"), Task("after", value=1))

    smithers.run(ask, {}, db=store, run_id="ask")
    smithers.approve_node(store, "ask", "ok", decided_by="ada")
    smithers.run(ask, None, db=store, run_id="ask", resume=True)
    ok = [(e.type, e.payload.get("attempt")) for e in events_of(store, "ask") if e.payload.get("nodeId") == "ok"]
    assert ok[-2:] == [(ev.NODE_STARTED, 1), (ev.NODE_FINISHED, 1)]


def test_the_side_a_branch_left_is_not_left_pending(store: Store) -> None:
    @workflow("fork")
    def fork(ctx: Any) -> Any:
        flag = ctx.output_maybe("flag")
        return Sequence(
            Task("flag", value={"go": True}),
            Branch(bool(flag and flag["go"]), then=Task("yes", value=1), otherwise=Task("no", value=0)),
        )

    result = smithers.run(fork, {}, db=store, run_id="fork")
    assert result.status == "finished"
    states = node_states(store, "fork")
    assert states["yes::0"] == "finished" and states["no::0"] == "skipped"
    assert "pending" not in states.values()


# ---- 7. documented choices ------------------------------------------------------------------------


def test_a_wait_that_times_out_with_continue_reads_as_no_output(store: Store) -> None:
    @workflow("patient")
    def patient(ctx: Any) -> Any:
        return Sequence(
            WaitForEvent("pay", event="paid", output=Paid, timeout_ms=50, on_timeout="continue"),
            Task("after", run=lambda c: {"paid": c.output_maybe(Paid, "pay")}),
        )

    first = smithers.run(patient, {}, db=store, run_id="patient")
    time.sleep(0.1)
    result = (
        first if first.status == "finished" else smithers.run(patient, None, db=store, run_id="patient", resume=True)
    )
    assert result.status == "finished" and result.outputs["after"] == {"paid": None}


def test_a_denial_under_skip_leaves_the_decision_readable(store: Store) -> None:
    @workflow("skipper")
    def skipper(ctx: Any) -> Any:
        return Sequence(
            Approval("ok", title="Go?", on_deny="skip"),
            Task("after", run=lambda c: {"approved": c.output("ok")["approved"]}),
        )

    smithers.run(skipper, {}, db=store, run_id="skipper")
    smithers.deny_node(store, "skipper", "ok", note="no")
    result = smithers.run(skipper, None, db=store, run_id="skipper", resume=True)
    assert result.status == "finished" and result.outputs["after"] == {"approved": False}
    assert node_states(store, "skipper")["ok::0"] == "skipped"


def test_resuming_a_suspended_run_does_not_rerun_a_failure_it_went_on_from(store: Store) -> None:
    calls: list[int] = []

    def fails(ctx: Any) -> Any:
        calls.append(1)
        raise RuntimeError("optional step failed")

    @workflow("optional")
    def optional(ctx: Any) -> Any:
        return Sequence(Task("try", run=fails, continue_on_fail=True), Approval("ok", title="Go?"))

    assert smithers.run(optional, {}, db=store, run_id="optional").status == "waiting-approval"
    smithers.approve_node(store, "optional", "ok")
    assert smithers.run(optional, None, db=store, run_id="optional", resume=True).status == "finished"
    assert calls == [1]
