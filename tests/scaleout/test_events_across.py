"""A client of one gateway sees the events of runs another gateway (or a terminal) drives, live,
in order, once each (docs/protocol.md#several-gateways-on-one-database): broadcasts, run event
streams, ``approval.decided`` from ``smithers approve``, on SQLite and PostgreSQL."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

from tests.cli.support import CliOn
from tests.gateway.support import WsClient
from tests.scaleout.support import Served

FLOW = textwrap.dedent(
    """
    import time
    from smithers import Approval, Sequence, Task, workflow

    def step(ctx):
        time.sleep(0.05)
        return {"ok": True}

    @workflow("steps")
    def steps(ctx):
        return Sequence(*[Task(f"s{i}", run=step) for i in range(5)])

    @workflow("gated")
    def gated(ctx):
        return Sequence(Approval("ship"), Task("after", run=step))
    """
)


def events_until(client: WsClient, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Event frames until ``done(frame)`` holds for one (included)."""
    out: list[dict[str, Any]] = []
    while client.events:  # those that came in while waiting for a response
        frame = client.events.pop(0)
        out.append(frame)
        if done(frame):
            return out
    deadline = time.monotonic() + timeout
    while True:
        frame = client.recv(max(0.01, deadline - time.monotonic()))
        if frame.get("type") != "event":
            continue
        out.append(frame)
        if done(frame):
            return out


def test_a_client_of_one_gateway_sees_the_runs_of_another(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    a = Served("flow.py", db_url, tmp_path, "a")
    b = Served("flow.py", db_url, tmp_path, "b")
    watcher = WsClient(f"ws://127.0.0.1:{b.port}/", connect_now=True)
    try:
        run_id = a.rpc("launchRun", {"workflow": "steps"})["runId"]
        stream = watcher.request("streamRunEvents", {"runId": run_id})
        assert stream["ok"], stream

        def completed(frame: dict[str, Any]) -> bool:
            return frame["event"] == "run.completed" and frame["payload"]["runId"] == run_id

        seen = events_until(watcher, completed)
        mine = [f for f in seen if f["event"] != "run.event" and f["payload"].get("runId") == run_id]
        names = [(f["event"], f["payload"].get("nodeId")) for f in mine]
        expected = [(kind, f"s{i}") for i in range(5) for kind in ("node.started", "node.finished")]
        assert names == [*expected, ("run.completed", None)]  # every event of a's run, once, in order
        versions = [f["stateVersion"] for f in seen if f["event"] != "run.event"]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        streamed = [f["payload"] for f in seen if f["event"] == "run.event"]
        stream_seqs = [p["seq"] for p in streamed]
        assert stream_seqs == list(range(stream_seqs[0], stream_seqs[0] + len(stream_seqs)))  # no gap, no repeat

        gated_id = a.rpc("launchRun", {"workflow": "gated"})["runId"]
        events_until(watcher, lambda f: f["event"] == "approval.requested" and f["payload"]["runId"] == gated_id)
        approved = CliOn(tmp_path, db_url)("approve", gated_id, "--node", "ship")  # a third process decides
        assert approved.returncode == 0, approved.stderr
        decided = events_until(
            watcher, lambda f: f["event"] == "approval.decided" and f["payload"]["runId"] == gated_id, 15
        )[-1]
        assert decided["payload"]["approved"] is True and decided["payload"]["nodeId"] == "ship"
        later = events_until(watcher, lambda f: f["event"] == "run.completed" and f["payload"]["runId"] == gated_id)
        assert [f["event"] for f in later if f["event"] == "approval.decided"] == []  # once
    finally:
        watcher.close()
        a.stop()
        b.stop()
