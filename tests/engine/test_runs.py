"""Runs end to end through the Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
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
    workflow,
)
from smithers.engine import events as ev
from smithers.engine import frames
from smithers.store.store import Store
from tests.waiting import ConcurrencyProbe


class Num(BaseModel):
    n: int


def events_of(store: Store, run_id: str) -> list[Any]:
    with store.read() as tx:
        return tx.list_events(run_id)


def types_of(store: Store, run_id: str) -> list[str]:
    return [e.type for e in events_of(store, run_id)]


def node_states(store: Store, run_id: str) -> dict[str, str]:
    with store.read() as tx:
        return {f"{n['node_id']}::{n['iteration']}": n["state"] for n in tx.list_nodes(run_id)}


def test_sequence_passes_outputs_and_persists_everything(store: Store) -> None:
    @workflow("seq")
    def seq(ctx):
        return Sequence(
            Task("a", output=Num, run=lambda ctx: Num(n=ctx.input["start"])),
            Task("b", output=Num, run=lambda ctx: {"n": ctx.output(Num, "a").n + 1}),
            Task("c", output=Num, run=lambda ctx: Num(n=ctx.output("b")["n"] * 10)),
        )

    result = smithers.run(seq, {"start": 4}, db=store)
    assert result.status == "finished"
    assert result.output == {"n": 50}
    assert result.outputs == {"a": {"n": 4}, "b": {"n": 5}, "c": {"n": 50}}
    assert node_states(store, result.run_id) == {"a::0": "finished", "b::0": "finished", "c::0": "finished"}
    types = types_of(store, result.run_id)
    assert types[0] == ev.RUN_STARTED and types[-2:] == [ev.SNAPSHOT_CAPTURED, ev.RUN_FINISHED]
    started = [e.payload["nodeId"] for e in events_of(store, result.run_id) if e.type == ev.NODE_STARTED]
    assert started == ["a", "b", "c"]
    seqs = [e.seq for e in events_of(store, result.run_id)]
    assert seqs == list(range(len(seqs)))
    run = store.get_run(result.run_id)
    assert run is not None and run["status"] == "finished" and run["runtime_owner_id"] is None
    assert run["finished_at_ms"] is not None


def test_async_and_sync_compute_and_static_values(store: Store) -> None:
    async def slow(ctx):
        await asyncio.sleep(0.01)
        return {"n": 2}

    @workflow("modes")
    def modes(ctx):
        return Sequence(
            Task("static", value={"n": 1}),
            Task("async", output=Num, run=slow),
            Task("noarg", output=Num, run=lambda: Num(n=3)),
        )

    result = smithers.run(modes, {}, db=store)
    assert result.outputs == {"static": {"n": 1}, "async": {"n": 2}, "noarg": {"n": 3}}


def test_parallel_respects_max_concurrency(store: Store) -> None:
    work = ConcurrencyProbe(result={"n": 1})

    @workflow("par")
    def par(ctx):
        return Sequence(
            Parallel(*[Task(f"p{i}", run=work) for i in range(6)], max_concurrency=2),
            Task("sum", output=Num, run=lambda ctx: Num(n=sum(ctx.output(f"p{i}")["n"] for i in range(6)))),
        )

    result = smithers.run(par, {}, db=store)
    assert result.status == "finished" and result.output == {"n": 6}
    assert work.peak == 2


def test_global_max_concurrency_caps_parallel(store: Store) -> None:
    work = ConcurrencyProbe()

    @workflow("cap")
    def cap(ctx):
        return Parallel(*[Task(f"p{i}", run=work) for i in range(8)])

    assert smithers.run(cap, {}, db=store, max_concurrency=3).status == "finished"
    assert work.peak == 3


def test_loop_runs_until_condition_with_iterations(store: Store) -> None:
    @workflow("loop")
    def loop(ctx):
        latest = ctx.latest(Num, "inc")
        return Sequence(
            Loop(
                "l",
                Task("inc", output=Num, run=lambda ctx: Num(n=(ctx.latest(Num, "inc") or Num(n=0)).n + 1)),
                until=latest is not None and latest.n >= 3,
                max_iterations=10,
            ),
            Task("after", output=Num, run=lambda ctx: Num(n=ctx.iteration_count(Num, "inc"))),
        )

    result = smithers.run(loop, {}, db=store)
    assert result.status == "finished"
    assert result.outputs["after"] == {"n": 3}
    states = node_states(store, result.run_id)
    assert {k for k in states if k.startswith("inc::")} == {"inc::0", "inc::1", "inc::2"}


def test_loop_max_iterations_fail_and_return_last(store: Store) -> None:
    def build(policy: str) -> Any:
        @workflow(f"loop-{policy}")
        def wf(ctx):
            return Loop("l", Task("t", value=1), until=False, max_iterations=2, on_max_reached=policy)

        return wf

    assert smithers.run(build("return-last"), {}, db=store).status == "finished"
    failed = smithers.run(build("fail"), {}, db=store)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["code"] == "RALPH_MAX_REACHED"


def test_branch_mounts_only_the_chosen_child(store: Store) -> None:
    @workflow("branch")
    def branch(ctx):
        return Branch(ctx.input["go"], then=Task("yes", value=1), otherwise=Task("no", value=0))

    result = smithers.run(branch, {"go": False}, db=store)
    assert set(node_states(store, result.run_id)) == {"no::0"}


def test_retry_with_backoff_then_success(store: Store) -> None:
    calls: list[float] = []

    def flaky(ctx):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("try again")
        return {"n": len(calls)}

    @workflow("retry")
    def retry(ctx):
        return Task("f", run=flaky, retries=3, retry_policy=RetryPolicy(initial_delay_ms=40))

    result = smithers.run(retry, {}, db=store)
    assert result.status == "finished" and result.output == {"n": 3}
    assert calls[1] - calls[0] >= 0.035 and calls[2] - calls[1] >= 0.075  # 40 ms, then 80 ms
    types = types_of(store, result.run_id)
    assert types.count(ev.NODE_FAILED) == 2 and types.count(ev.NODE_RETRYING) == 2
    with store.read() as tx:
        attempts = tx.list_attempts(result.run_id, "f")
    assert [a["state"] for a in attempts] == ["failed", "failed", "finished"]
    assert json.loads(attempts[0]["error_json"])["message"] == "try again"


def test_retries_exhausted_fail_the_run_with_the_error(store: Store) -> None:
    @workflow("boom")
    def boom(ctx):
        return Sequence(
            Task("x", run=lambda: 1 / 0, retries=1, retry_policy=RetryPolicy(initial_delay_ms=0)),
            Task("never", value=1),
        )

    result = smithers.run(boom, {}, db=store)
    assert result.status == "failed" and result.error is not None
    assert "division by zero" in result.error["message"]
    assert node_states(store, result.run_id)["never::0"] == "pending"
    assert types_of(store, result.run_id)[-1] == ev.RUN_FAILED


def test_invalid_output_is_a_failed_attempt_not_retried(store: Store) -> None:
    @workflow("badout")
    def badout(ctx):
        return Task("t", output=Num, run=lambda: {"n": "not a number"}, retries=5)

    result = smithers.run(badout, {}, db=store)
    assert result.status == "failed" and result.error is not None and result.error["code"] == "INVALID_OUTPUT"
    with store.read() as tx:
        assert len(tx.list_attempts(result.run_id, "t")) == 1
        assert tx.list_outputs(result.run_id) == []


def test_timeout_fails_the_attempt(store: Store) -> None:
    @workflow("slow")
    def slow(ctx):
        return Task("t", run=lambda: time.sleep(0.3) or 1, timeout_ms=50)

    result = smithers.run(slow, {}, db=store)
    assert result.status == "failed" and result.error is not None and result.error["code"] == "TASK_TIMEOUT"


def test_continue_on_fail_lets_the_run_finish(store: Store) -> None:
    @workflow("cof")
    def cof(ctx):
        return Sequence(Task("bad", run=lambda: 1 / 0, continue_on_fail=True), Task("good", value=2))

    result = smithers.run(cof, {}, db=store)
    assert result.status == "finished" and node_states(store, result.run_id)["bad::0"] == "failed"


def test_skip_if_marks_the_task_skipped(store: Store) -> None:
    @workflow("skip")
    def skip(ctx):
        return Sequence(Task("a", value=1, skip_if=True), Task("b", value=2))

    result = smithers.run(skip, {}, db=store)
    assert node_states(store, result.run_id) == {"a::0": "skipped", "b::0": "finished"}


def test_depends_on_orders_parallel_children(store: Store) -> None:
    order: list[str] = []

    async def rec(name: str) -> Any:
        async def run(ctx):
            order.append(name)
            return name

        return run

    @workflow("deps")
    def deps(ctx):
        async def first(ctx):
            await asyncio.sleep(0.02)
            order.append("first")
            return 1

        return Parallel(
            Task("second", run=lambda: order.append("second") or 2, depends_on=["first"]), Task("first", run=first)
        )

    assert smithers.run(deps, {}, db=store).status == "finished"
    assert order == ["first", "second"]


@pytest.mark.parametrize(
    "on_deny, status, state, output",
    [
        ("fail", "failed", "failed", None),
        ("continue", "finished", "finished", False),
        ("skip", "finished", "skipped", False),
        (None, "finished", "finished", False),
    ],
)
def test_approval_denial_policies(
    store: Store, on_deny: str | None, status: str, state: str, output: bool | None
) -> None:
    @workflow("deny")
    def deny(ctx):
        return Sequence(Approval("gate", title="Go?", on_deny=on_deny), Task("after", value=1))

    first = smithers.run(deny, {}, db=store)
    assert first.status == "waiting-approval"
    assert [t for t in types_of(store, first.run_id) if t != ev.SNAPSHOT_CAPTURED][-3:] == [
        ev.APPROVAL_REQUESTED,
        ev.NODE_WAITING_APPROVAL,
        ev.RUN_STATUS_CHANGED,
    ]
    smithers.deny_node(store, first.run_id, "gate", note="no", decided_by="alice")
    second = smithers.run(deny, None, db=store, run_id=first.run_id, resume=True)
    assert second.status == status
    assert node_states(store, first.run_id)["gate::0"] == state
    if output is not None:
        assert second.outputs["gate"]["approved"] is output and second.outputs["gate"]["decidedBy"] == "alice"
    else:
        assert "gate" not in second.outputs


def test_approval_granted_records_decision_and_continues(store: Store) -> None:
    @workflow("appr")
    def appr(ctx):
        return Sequence(Approval("gate", title="Go?"), Task("after", value=1))

    first = smithers.run(appr, {}, db=store)
    with store.read() as tx:
        pending = tx.list_pending_approvals(("waiting-approval",), "waiting-approval", first.run_id)
    assert [p["node_id"] for p in pending] == ["gate"]
    assert json.loads(pending[0]["request_json"])["title"] == "Go?"
    smithers.approve_node(store, first.run_id, "gate", note="ship it", decided_by="bob")
    with pytest.raises(smithers.SmithersError):  # a second decision is refused
        smithers.approve_node(store, first.run_id, "gate")
    second = smithers.run(appr, None, db=store, run_id=first.run_id, resume=True)
    assert second.status == "finished"
    assert second.outputs["gate"]["approved"] is True and second.outputs["gate"]["note"] == "ship it"
    assert ev.APPROVAL_GRANTED in types_of(store, first.run_id)


def test_needs_approval_gates_a_task(store: Store) -> None:
    ran: list[int] = []

    @workflow("gate")
    def gate(ctx):
        return Task("risky", run=lambda: ran.append(1) or 1, needs_approval=True)

    first = smithers.run(gate, {}, db=store)
    assert first.status == "waiting-approval" and ran == []
    smithers.approve_node(store, first.run_id, "risky")
    assert smithers.run(gate, None, db=store, run_id=first.run_id, resume=True).status == "finished"
    assert ran == [1]


def test_wait_for_event_resumes_with_the_signal_payload(store: Store) -> None:
    @workflow("wait")
    def wait(ctx):
        return Sequence(
            WaitForEvent("w", event="go", output=Num),
            Task("after", output=Num, run=lambda ctx: Num(n=ctx.output(Num, "w").n * 2)),
        )

    first = smithers.run(wait, {}, db=store)
    assert first.status == "waiting-event"
    smithers.signal_run(store, first.run_id, "other", {"n": 1})
    assert smithers.run(wait, None, db=store, run_id=first.run_id, resume=True).status == "waiting-event"
    smithers.signal_run(store, first.run_id, "go", {"n": 21}, correlation_id="anything")
    second = smithers.run(wait, None, db=store, run_id=first.run_id, resume=True)
    assert second.status == "finished" and second.output == {"n": 42}


def test_signal_sent_before_the_wait_is_consumed_when_it_starts(store: Store) -> None:
    @workflow("early")
    def early(ctx):
        return Sequence(Approval("first", title="first"), WaitForEvent("w", event="go"))

    run = smithers.run(early, {}, db=store)
    smithers.signal_run(store, run.run_id, "go", {"early": True})
    smithers.approve_node(store, run.run_id, "first")
    result = smithers.run(early, None, db=store, run_id=run.run_id, resume=True)
    assert result.status == "finished" and result.outputs["w"] == {"early": True}


def test_correlated_wait_needs_the_same_correlation(store: Store) -> None:
    @workflow("corr")
    def corr(ctx):
        return WaitForEvent("w", event="go", correlation_id="order-1")

    run = smithers.run(corr, {}, db=store)
    smithers.signal_run(store, run.run_id, "go", 1, correlation_id="order-2")
    assert smithers.run(corr, None, db=store, run_id=run.run_id, resume=True).status == "waiting-event"
    smithers.signal_run(store, run.run_id, "go", 2, correlation_id="order-1")
    assert smithers.run(corr, None, db=store, run_id=run.run_id, resume=True).output == 2


def test_wait_timeout_policies(store: Store) -> None:
    @workflow("wt")
    def wt(ctx):
        return Sequence(WaitForEvent("w", event="never", timeout_ms=50, on_timeout="skip"), Task("t", value=1))

    first = smithers.run(wt, {}, db=store)
    assert first.status == "waiting-event" and first.wake_at_ms is not None
    time.sleep(0.08)
    second = smithers.run(wt, None, db=store, run_id=first.run_id, resume=True)
    assert second.status == "finished" and node_states(store, first.run_id)["w::0"] == "skipped"


def test_timer_suspends_durably_and_fires(store: Store) -> None:
    @workflow("timer")
    def timer(ctx):
        return Sequence(Timer("nap", duration_ms=150), Task("after", value=1))

    first = smithers.run(timer, {}, db=store, wait_timers=False)
    assert first.status == "waiting-timer" and first.wake_at_ms is not None
    run = store.get_run(first.run_id)
    assert run is not None and run["runtime_owner_id"] is None
    second = smithers.run(timer, None, db=store, run_id=first.run_id, resume=True)  # waits for it in-process
    assert second.status == "finished"
    types = types_of(store, first.run_id)
    assert ev.TIMER_CREATED in types and ev.TIMER_FIRED in types


def test_cancel_stops_a_running_run(store: Store) -> None:
    @workflow("long")
    def long(ctx):
        return Sequence(Task("sleep", run=lambda: asyncio.sleep(5)), Task("never", value=1))

    async def main() -> Any:
        cancel = asyncio.Event()
        task = asyncio.create_task(smithers.run_async(long, {}, db=store, cancel=cancel, run_id="c1"))
        await asyncio.sleep(0.2)
        cancel.set()
        return await asyncio.wait_for(task, 3)

    result = asyncio.run(main())
    assert result.status == "cancelled"
    assert node_states(store, "c1") == {"sleep::0": "cancelled", "never::0": "pending"}
    assert types_of(store, "c1")[-1] == ev.RUN_CANCELLED


def test_durable_cancel_request_reaches_the_owner(store: Store) -> None:
    @workflow("long2")
    def long2(ctx):
        return Task("sleep", run=lambda: asyncio.sleep(5))

    async def main() -> Any:
        task = asyncio.create_task(smithers.run_async(long2, {}, db=store, run_id="c2"))
        await asyncio.sleep(0.3)
        assert smithers.cancel_run(store, "c2")["status"] == "cancelling"
        return await asyncio.wait_for(task, 3)

    assert asyncio.run(main()).status == "cancelled"


def test_bad_input_and_bad_trees_write_no_run(store: Store) -> None:
    class In(BaseModel):
        name: str

    @workflow("typed", input=In)
    def typed(ctx):
        return Task("t", value=1)

    @workflow("dup")
    def dup(ctx):
        return Sequence(Task("same", value=1), Task("same", value=2))

    with pytest.raises(smithers.SmithersError) as bad_input:
        smithers.run(typed, {"name": 3}, db=store)
    assert bad_input.value.code == "INVALID_INPUT"
    with pytest.raises(smithers.SmithersError) as dup_err:
        smithers.run(dup, {}, db=store)
    assert dup_err.value.code == "DUPLICATE_ID"
    with store.read() as tx:
        assert tx.list_runs() == []


def test_duplicate_run_id_is_refused(store: Store) -> None:
    @workflow("once")
    def once(ctx):
        return Task("t", value=1)

    smithers.run(once, {}, db=store, run_id="same")
    with pytest.raises(smithers.SmithersError) as err:
        smithers.run(once, {}, db=store, run_id="same")
    assert err.value.code == "RUN_ALREADY_EXISTS"


def test_events_reach_subscribers_in_order_and_can_be_read_after_a_seq(store: Store) -> None:
    seen: list[int] = []

    @workflow("ev")
    def evwf(ctx):
        return Sequence(*[Task(f"t{i}", value=i) for i in range(5)])

    result = smithers.run(evwf, {}, db=store, on_event=lambda e: seen.append(e.seq))
    assert seen == sorted(seen) and seen == list(range(len(seen)))
    with store.read() as tx:
        tail = tx.list_events(result.run_id, after_seq=seen[4])
    assert [e.seq for e in tail] == seen[5:]


def test_frames_are_keyframes_plus_deltas_and_rebuild_exactly(store: Store) -> None:
    @workflow("frames")
    def fwf(ctx):
        done = ctx.output_maybe("t0")
        return Sequence(*[Task(f"t{i}", value=i) for i in range(60)], Branch(done is not None, then=Task("x", value=0)))

    result = smithers.run(fwf, {}, db=store)
    with store.read() as tx:
        rows = tx.list_frame_rows(result.run_id)
    assert rows[0]["frame_no"] == 1 and rows[0]["encoding"] == "keyframe"
    assert any(r["encoding"] == "delta" for r in rows)
    assert all(r["encoding"] == "keyframe" for r in rows if r["frame_no"] % 50 == 0)
    docs = frames.expand(rows)
    for row, doc in zip(rows, docs, strict=True):
        assert frames.sha256_hex(frames.canonical(doc)) == row["xml_hash"]
    assert json.dumps(docs[-1]).count('"smithers:task"') == 61


def test_heartbeats_checkpoint_and_the_watchdog_aborts_silent_attempts(store: Store) -> None:
    seen: list[Any] = []

    async def beats(ctx):
        seen.append(ctx.last_heartbeat)
        if ctx.attempt == 1:
            smithers.heartbeat({"done": 3})
            await asyncio.sleep(1.0)  # then goes silent: the watchdog aborts it
        return {"resumed_from": ctx.last_heartbeat}

    @workflow("hb")
    def hb(ctx):
        return Task(
            "work", run=beats, heartbeat_timeout_ms=300, retries=1, retry_policy=RetryPolicy(initial_delay_ms=0)
        )

    result = smithers.run(hb, {}, db=store)
    assert result.status == "finished"
    assert result.output == {"resumed_from": {"done": 3}}
    assert seen == [None, {"done": 3}]
    types = types_of(store, result.run_id)
    assert ev.TASK_HEARTBEAT in types and ev.TASK_HEARTBEAT_TIMEOUT in types
    with store.read() as tx:
        first = tx.list_attempts(result.run_id, "work")[0]
    assert json.loads(first["heartbeat_data_json"]) == {"done": 3}
    assert json.loads(first["error_json"])["code"] == "TASK_HEARTBEAT_TIMEOUT"


@pytest.mark.parametrize("on_deny, status, code", [("fail", "failed", "TASK_TIMEOUT"), ("continue", "finished", None)])
def test_an_approval_nobody_decides_in_time_counts_as_denied(
    store: Store, on_deny: str, status: str, code: str | None
) -> None:
    @workflow("late")
    def late(ctx):
        return Sequence(Approval("gate", title="Quick?", timeout_ms=150, on_deny=on_deny), Task("after", value=1))

    first = smithers.run(late, {}, db=store)
    assert first.status == "waiting-approval" and first.wake_at_ms is not None
    time.sleep(max(0.0, (first.wake_at_ms - time.time() * 1000) / 1000) + 0.02)
    second = smithers.run(late, None, db=store, run_id=first.run_id, resume=True)
    assert second.status == status
    with store.read() as tx:
        row = tx.get_approval(first.run_id, "gate", 0)
    assert row is not None and row["status"] == "denied" and row["note"] == "approval timed out"
    assert row["decided_by"] == "smithers:timeout"
    if code is None:
        assert second.outputs["gate"]["approved"] is False
    else:
        assert second.error is not None and second.error["code"] == code
    assert ev.APPROVAL_DENIED in types_of(store, first.run_id)


def test_a_task_raising_any_smithers_error_fails_the_run_cleanly(store: Store) -> None:
    """Every error class survives being stored on an attempt and read back (it once crashed the loop)."""
    from smithers.errors import RunNotFoundError

    @workflow("lookup")
    def lookup(ctx):
        return Sequence(
            Task("find", run=lambda: (_ for _ in ()).throw(RunNotFoundError.of("other"))), Task("n", value=1)
        )

    result = smithers.run(lookup, {}, db=store)
    assert result.status == "failed" and result.error is not None
    assert result.error["code"] == "RUN_NOT_FOUND" and "Run not found: other" in result.error["message"]
    row = store.get_run(result.run_id)
    assert row is not None and row["status"] == "failed"
    assert json.loads(row["error_json"])["code"] == "RUN_NOT_FOUND"


def test_a_failed_run_keeps_the_stack_of_the_exception(store: Store) -> None:
    def explode() -> None:
        raise ValueError("bad value")

    @workflow("stacky")
    def stacky(ctx):
        return Task("x", run=explode)

    result = smithers.run(stacky, {}, db=store)
    assert result.status == "failed" and result.error is not None
    assert "ValueError: bad value" in result.error["stack"] and "in explode" in result.error["stack"]
    stored = json.loads(store.get_run(result.run_id)["error_json"])
    assert stored["stack"] == result.error["stack"]
