"""Three ``smithers serve`` processes on one PostgreSQL, 300 runs spread over them (quick ones, some
waiting for approvals, some on timers, some long tasks); one gateway is SIGKILLed mid-flight and the
approvals are decided through another. Every run finishes exactly once, every task's side effect
happens once and never again after it was recorded finished, and a client of a surviving gateway
sees every event of every run, once, in order (docs/protocol.md#several-gateways-on-one-database)."""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from smithers.gateway.broadcast import map_event
from smithers.store.database import DEFAULT_POOL
from smithers.store.store import Store
from tests.gateway.support import WsClient
from tests.scaleout.support import Served

FLOW = textwrap.dedent(
    """
    import os
    import time
    from smithers import Approval, Sequence, Task, Timer, workflow

    MARKS = os.path.join(os.path.dirname(__file__), "marks.txt")

    def marker(node, seconds=0.0):
        def mark(ctx):
            if seconds:
                time.sleep(seconds)
            fd = os.open(MARKS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{ctx.run_id} {node} {ctx.attempt}\\n".encode())  # one write: never torn
            os.close(fd)
            return {"attempt": ctx.attempt}
        return mark

    @workflow("quick")
    def quick(ctx):
        return Sequence(Task("a", run=marker("a")), Task("b", run=marker("b")))

    @workflow("gated")
    def gated(ctx):
        return Sequence(Task("a", run=marker("a")), Approval("ship"), Task("b", run=marker("b")))

    @workflow("timed")
    def timed(ctx):
        return Sequence(Task("a", run=marker("a")), Timer("nap", duration_ms=1500), Task("b", run=marker("b")))

    @workflow("long")
    def long(ctx):
        return Sequence(Task("a", run=marker("a", 2.0)), Task("b", run=marker("b")))
    """
)
MIX = ["quick"] * 120 + ["gated"] * 60 + ["timed"] * 60 + ["long"] * 60


def statuses(store: Store, run_ids: dict[str, str]) -> Counter[tuple[str, str]]:
    """(workflow, status) → runs: what a failed wait shows."""
    with store.read() as tx:
        rows = {r["run_id"]: r["status"] for r in tx.list_runs(1000)}
    return Counter((kind, rows.get(run_id, "missing")) for run_id, kind in run_ids.items())


def smithers_connections(store: Store) -> int:
    """Connections the gateways hold to the test's database (``application_name`` smithers…)."""
    with store.engine.connect() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'smithers%' AND pid <> pg_backend_pid()"
        )
        return int(conn.execute(query).scalar() or 0)


def collect(watcher: WsClient, until: float) -> list[dict[str, Any]]:
    frames = []
    while time.monotonic() < until:
        try:
            frame = watcher.recv(max(0.01, until - time.monotonic()))
        except TimeoutError:
            break
        if frame.get("type") == "event" and frame["event"] != "run.event":
            frames.append(frame)
    return frames


@pytest.mark.timeout(600)
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # this test is about PostgreSQL
def test_three_gateways_one_killed_300_runs(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    marks = tmp_path / "marks.txt"
    gateways = [Served("flow.py", db_url, tmp_path, name) for name in ("a", "b", "c")]
    a, b, c = gateways
    watcher = WsClient(f"ws://127.0.0.1:{c.port}/", connect_now=True)
    store = Store(db_url)
    frames: list[dict[str, Any]] = []
    try:
        run_ids: dict[str, str] = {}
        for index, kind in enumerate(MIX):
            run_ids[gateways[index % 3].rpc("launchRun", {"workflow": kind})["runId"]] = kind
        frames += collect(watcher, time.monotonic() + 0.5)
        connections = smithers_connections(store)
        assert connections <= 3 * (DEFAULT_POOL + 1)  # bounded pools: N gateways fit max_connections
        a.kill()  # mid-flight: long tasks running, timers pending, approvals waiting

        gated = {r for r, kind in run_ids.items() if kind == "gated"}
        decided: set[str] = set()
        deadline = time.monotonic() + 120
        while decided != gated and time.monotonic() < deadline:
            for approval in b.rpc("approvals.list", {"limit": 500}):
                if approval["runId"] in gated and approval["runId"] not in decided:
                    b.rpc("approvals.decide", {"runId": approval["runId"], "nodeId": "ship", "approved": True})
                    decided.add(approval["runId"])
            frames += collect(watcher, time.monotonic() + 0.5)
        assert decided == gated, statuses(store, run_ids)

        def all_finished() -> bool:
            with store.read() as tx:
                rows = {r["run_id"]: r["status"] for r in tx.list_runs(1000)}
            return all(rows.get(r) == "finished" for r in run_ids)

        while not all_finished():
            assert time.monotonic() < deadline + 120, "every run to finish"
            frames += collect(watcher, time.monotonic() + 0.5)
        frames += collect(watcher, time.monotonic() + 2.0)  # the last events reach the watcher

        # every task ran to a recorded finish exactly once; no side effect after that finish
        done = Counter(line for line in marks.read_text().splitlines())
        with store.read() as tx:
            for run_id in run_ids:
                for node in ("a", "b"):
                    attempts = tx.list_attempts(run_id, node)
                    finished = [x["attempt"] for x in attempts if x["state"] == "finished"]
                    assert len(finished) == 1, (run_id, node, attempts)
                    assert done[f"{run_id} {node} {finished[0]}"] == 1
                    later = [k for k in done if k.startswith(f"{run_id} {node} ") and int(k.split()[2]) > finished[0]]
                    assert later == [], (run_id, node, later)
                out = tx.get_output(run_id, "b", 0)
                assert out is not None and json.loads(out["payload_json"])["attempt"] >= 1

        # the survivor's client saw every event of every run, once each, in order
        seen: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        for frame in frames:
            run_id = frame["payload"].get("runId")
            if run_id in run_ids:
                seen[run_id].append((frame["event"], frame["payload"]))
        with store.read() as tx:
            for run_id in run_ids:
                expected = [m for e in tx.list_events(run_id, limit=None) if (m := map_event(e)) is not None]
                assert seen[run_id] == [(name, payload) for name, payload in expected], run_id
        print(
            f"3 gateways, {len(run_ids)} runs, a killed: all finished; {len(frames)} events on c; {connections} conns"
        )
    finally:
        watcher.close()
        for gateway in gateways:
            gateway.kill()
        store.close()
