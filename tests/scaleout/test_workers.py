"""``smithers serve --workers 2``: two processes share one port and one database (SQLite and
PostgreSQL); connections are spread over both, every run finishes once, and a client of either
sees every run end (docs/protocol.md#several-gateways-on-one-database)."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path

import httpx

from smithers.store.store import Store
from tests.gateway.support import WsClient
from tests.scaleout.support import Served
from tests.waiting import wait_for

FLOW = textwrap.dedent(
    """
    import os
    from smithers import Sequence, Task, workflow

    @workflow("where")
    def where(ctx):
        return Sequence(Task("pid", run=lambda c: {"pid": os.getpid()}))
    """
)
RUNS = 30


def test_two_workers_share_the_port_and_the_runs(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(FLOW)
    served = Served("flow.py", db_url, tmp_path, "workers", "--workers", "2")
    watcher = WsClient(f"ws://127.0.0.1:{served.port}/", connect_now=True)
    store = Store(db_url)
    try:
        run_ids = []
        for _ in range(RUNS):  # a connection each: the kernel picks a worker per connection
            with httpx.Client(base_url=served.http.base_url, timeout=30) as client:
                response = client.post("/rpc", json={"method": "launchRun", "params": {"workflow": "where"}})
                assert response.status_code == 200, response.text
                run_ids.append(response.json()["payload"]["runId"])

        def all_finished() -> bool:
            return all((store.get_run(r) or {}).get("status") == "finished" for r in run_ids)

        wait_for(all_finished, "every run to finish", timeout=60)
        with store.read() as tx:
            pids = {json.loads(tx.get_output(r, "pid", 0)["payload_json"])["pid"] for r in run_ids}
            attempts = [len(tx.list_attempts(r, "pid")) for r in run_ids]
        assert len(pids) == 2  # both workers executed runs
        assert attempts == [1] * RUNS  # each task ran once

        completed: set[str] = set()
        deadline = time.monotonic() + 30
        while completed != set(run_ids) and time.monotonic() < deadline:
            frame = watcher.recv(max(0.01, deadline - time.monotonic()))
            if frame.get("type") == "event" and frame["event"] == "run.completed":
                assert frame["payload"]["runId"] not in completed  # once each
                completed.add(frame["payload"]["runId"])
        assert completed == set(run_ids)  # the watcher's worker saw the other's runs end too

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
    finally:
        watcher.close()
        served.kill()
        store.close()
