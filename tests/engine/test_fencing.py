"""A process paused past its lease (SIGSTOP, as a long GC or a frozen VM would) is taken over by
another, and when it wakes it writes nothing more: every step checks the lease it holds
(docs/engine.md#durability-and-ownership). Through the ``smithers`` CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

from smithers.engine.ownership import OWNER_STALE_MS
from smithers.store.store import Store
from tests.cli.support import CliOn
from tests.waiting import wait_for

FLOW = textwrap.dedent(
    """
    import time
    from pathlib import Path
    from smithers import Sequence, Task, workflow

    MARKS = Path(__file__).parent / "marks.txt"

    def slow(ctx):
        with MARKS.open("a") as f:
            f.write(f"start {ctx.attempt}\\n")
        time.sleep(2)
        with MARKS.open("a") as f:
            f.write(f"end {ctx.attempt}\\n")
        return {"attempt": ctx.attempt}

    @workflow("fenced")
    def fenced(ctx):
        return Sequence(Task("slow", run=slow), Task("after", run=lambda c: {"done": True}))
    """
)


def test_a_paused_owner_taken_over_writes_nothing_when_it_wakes(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    marks = tmp_path / "marks.txt"
    cli = CliOn(tmp_path, db_url)
    old = cli.start("run", "flow.py:fenced", "--run-id", "fenced-1")
    store = Store(db_url)
    try:
        wait_for(lambda: marks.exists() and "start 1" in marks.read_text(), "the first attempt to start", timeout=30)
        old.send_signal(signal.SIGSTOP)
        time.sleep(OWNER_STALE_MS / 1000 + 1.5)  # its lease runs out

        resumed = cli("resume", "fenced-1")  # takes the run over (no --force: the owner is silent)
        assert resumed.returncode == 0, resumed.stderr
        events_after_takeover = store_events(store)

        old.send_signal(signal.SIGCONT)
        _, err = old.communicate(timeout=30)
        assert old.returncode != 0
        assert "taken over by another process" in err

        assert store_events(store) == events_after_takeover  # the old owner wrote nothing on waking
        with store.read() as tx:
            run = tx.get_run("fenced-1")
            slow = [(a["attempt"], a["state"]) for a in tx.list_attempts("fenced-1", "slow")]
            after = tx.list_attempts("fenced-1", "after")
            output = tx.get_output("fenced-1", "slow", 0)
        assert run is not None and run["status"] == "finished" and run["runtime_owner_id"] is None
        assert slow == [(1, "cancelled"), (2, "finished")]
        assert len(after) == 1
        assert output is not None and json.loads(output["payload_json"]) == {"attempt": 2}
    finally:
        if old.poll() is None:
            old.send_signal(signal.SIGCONT)
            old.kill()
            old.wait()
        store.close()


def store_events(store: Store) -> list[tuple[int, str]]:
    with store.read() as tx:
        return [(e.seq, e.type) for e in tx.list_events("fenced-1", limit=None)]
