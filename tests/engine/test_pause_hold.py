"""A rewind's hold on a run (docs/engine.md#time-travel): while a rewind in any process holds a run,
nobody resumes it; a hold left by a process that died stops holding once it is stale.

Through the Python API (``smithers.run``), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from smithers import Approval, Sequence, SmithersError, Store, Task, approve_node, run, workflow
from smithers.engine.ownership import HOLD_STALE_MS
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
