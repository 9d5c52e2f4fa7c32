"""Two gateways on one database (SQLite and PostgreSQL): when one is SIGKILLed mid-flight, the
other takes its runs over within seconds and finishes them, each finished task never running
again; approvals work through whichever gateway is left (docs/protocol.md#several-gateways-on-one-database)."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from smithers.store.store import Store
from tests.scaleout.support import Served
from tests.waiting import wait_for

FLOW = textwrap.dedent(
    """
    import time
    from pathlib import Path
    from smithers import Approval, Sequence, Task, workflow

    MARKS = Path(__file__).parent / "marks.txt"

    def mark(text):
        with MARKS.open("a") as f:
            f.write(text + "\\n")

    def slow(ctx):
        mark(f"slow start {ctx.run_id} {ctx.attempt}")
        time.sleep(3)
        mark(f"slow end {ctx.run_id} {ctx.attempt}")
        return {"attempt": ctx.attempt}

    @workflow("long")
    def long(ctx):
        return Sequence(
            Task("first", run=lambda c: mark(f"first {c.run_id}") or {"ok": True}),
            Task("slow", run=slow),
            Task("last", run=lambda c: mark(f"last {c.run_id}") or {"ok": True}),
        )

    @workflow("gated")
    def gated(ctx):
        return Sequence(Approval("ship"), Task("after", run=lambda c: mark(f"after {c.run_id}") or {"ok": True}))
    """
)


def test_a_killed_gateways_runs_are_taken_over_by_another(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    marks = tmp_path / "marks.txt"
    a = Served("flow.py", db_url, tmp_path, "a")
    b = Served("flow.py", db_url, tmp_path, "b")
    store = Store(db_url)
    try:
        long_id = a.rpc("launchRun", {"workflow": "long"})["runId"]
        gated_id = a.rpc("launchRun", {"workflow": "gated"})["runId"]
        wait_for(lambda: marks.exists() and f"slow start {long_id} 1" in marks.read_text(), "slow to start on a")
        wait_for(lambda: (store.get_run(gated_id) or {}).get("status") == "waiting-approval", "the gate")
        owner_a = (store.get_run(long_id) or {})["runtime_owner_id"]

        a.kill()
        killed = time.monotonic()
        taken = wait_for(
            lambda: (row := store.get_run(long_id)) is not None and row["runtime_owner_id"] not in (None, owner_a),
            "gateway b to take the run over",
            timeout=30,
        )
        assert taken
        takeover_s = time.monotonic() - killed
        decided = b.rpc("approvals.decide", {"runId": gated_id, "nodeId": "ship", "approved": True})
        assert decided["approved"] is True  # through the survivor

        wait_for(lambda: (store.get_run(long_id) or {}).get("status") == "finished", "the long run to finish", 60)
        wait_for(lambda: (store.get_run(gated_id) or {}).get("status") == "finished", "the gated run to finish", 60)
        text = marks.read_text().splitlines()
        assert text.count(f"first {long_id}") == 1  # finished before the kill: never again
        assert text.count(f"last {long_id}") == 1
        assert f"slow start {long_id} 2" in text  # the interrupted attempt ran again on b
        assert text.count(f"after {gated_id}") == 1
        with store.read() as tx:
            slow = [(r["attempt"], r["state"]) for r in tx.list_attempts(long_id, "slow")]
            out = tx.get_output(long_id, "slow", 0)
        assert slow == [(1, "cancelled"), (2, "finished")]
        assert out is not None and json.loads(out["payload_json"]) == {"attempt": 2}
        print(f"takeover after SIGKILL: {takeover_s:.2f} s")
    finally:
        a.kill()
        b.stop()
        store.close()
