"""A rewind's hold on a run (docs/engine.md#time-travel): while a rewind in any process holds a run,
nobody resumes it; a hold left by a process that died stops holding once it is stale.

Through the Python API (``smithers.run``), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import BaseModel

from smithers import Approval, Sequence, SmithersError, Store, Task, approve_node, run, workflow
from smithers.engine.ownership import HOLD_STALE_MS
from smithers.engine.timetravel import JumpResult, Rewinder
from smithers.store.rows import now_ms


class Count(BaseModel):
    n: int


@workflow("held")
def held(ctx: object) -> object:
    return Sequence(Approval("gate"), Task("after", output=Count, value=Count(n=1)))


def _hold(db_url: str, run_id: str, at_ms: int | None) -> None:
    store = Store(db_url)
    try:
        with store.write() as tx:
            tx.update_run(run_id, pause_requested_at_ms=at_ms)
    finally:
        store.close()


def test_a_held_run_is_not_resumed_until_the_hold_goes(db_url: str) -> None:
    first = run(held, db=db_url, run_id="held-1")
    assert first.status == "waiting-approval"
    store = Store(db_url)
    try:
        approve_node(store, "held-1", "gate", note="yes")
    finally:
        store.close()

    _hold(db_url, "held-1", now_ms())
    with pytest.raises(SmithersError) as refused:
        run(held, db=db_url, run_id="held-1", resume=True)
    assert refused.value.code == "RUN_OWNER_ALIVE" and "held by a rewind" in refused.value.message

    _hold(db_url, "held-1", None)
    assert run(held, db=db_url, run_id="held-1", resume=True).status == "finished"


def test_a_stale_hold_does_not_hold(db_url: str) -> None:
    assert run(held, db=db_url, run_id="held-2").status == "waiting-approval"
    store = Store(db_url)
    try:
        approve_node(store, "held-2", "gate")
    finally:
        store.close()
    _hold(db_url, "held-2", now_ms() - HOLD_STALE_MS - 1)  # its rewind's process is long gone
    # the run is not paused by it either: it goes to the end, and the stale hold is cleared
    assert run(held, db=db_url, run_id="held-2", resume=True).status == "finished"
    store = Store(db_url)
    try:
        row = store.get_run("held-2")
    finally:
        store.close()
    assert row is not None and row["pause_requested_at_ms"] is None


@workflow("steps")
def steps(ctx: object) -> object:
    return Sequence(*[Task(f"s{i}", output=Count, value=Count(n=i)) for i in range(6)])


def test_of_rewinds_started_at_once_in_several_processes_one_rewinds(db_url: str) -> None:
    """The hold is taken in one conditional update, and the run read again under it: of four
    rewinds to one frame racing from four connections, exactly one rewinds; the others are refused
    ``Busy`` or find the run there already."""
    assert run(steps, db=db_url, run_id="race-1").status == "finished"
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def rewind(index: int) -> None:
        store = Store(db_url)
        try:
            rewinder = Rewinder(store)
            barrier.wait()
            outcomes.append(asyncio.run(rewinder.jump("race-1", 2, True, f"racer-{index}")))
        except SmithersError as exc:
            outcomes.append(exc.code)
        finally:
            store.close()

    racers = [threading.Thread(target=rewind, args=(i,)) for i in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    rewound = [o for o in outcomes if isinstance(o, JumpResult) and o.deleted_frames > 0]
    assert len(outcomes) == 4 and len(rewound) == 1, outcomes
    assert all(o == "Busy" or (isinstance(o, JumpResult) and o.new_frame_no == 2) for o in outcomes), outcomes
    store = Store(db_url)
    try:
        with store.read() as tx:
            jumps = tx.list_events_of_types("race-1", ["TimeTravelJumped"])
            row = tx.get_run("race-1")
    finally:
        store.close()
    assert len(jumps) == 1 and jumps[0].payload["toFrameNo"] == 2
    assert row is not None and row["pause_requested_at_ms"] is None  # the hold is gone with its rewind
