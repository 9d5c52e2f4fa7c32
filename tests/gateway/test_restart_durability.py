"""Waiting runs survive a restart of a real gateway process (``smithers serve`` killed and started again).

The gateway serves ``tests/fixtures/gw_humans.py`` on a free port; the runs wait for an approval,
a signal and a timer. After SIGKILL or SIGTERM a new process on the same database still shows them
waiting, accepts the decision and the signal, and finishes the timer by itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smithers.engine.control import approve_node, signal_run
from smithers.store.rows import now_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import SMITHERS, wait_for

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gw_humans.py"
TOKEN = "restart-token"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
TIMER_DELAY_MS = 6000


class Served:
    """``smithers serve`` in a subprocess, its stderr in a file, plus an HTTP client for it."""

    def __init__(self, db: str, workdir: Path, name: str):
        env = dict(os.environ)
        env.pop("SMITHERS_DB", None)
        self.err = workdir / f"{name}.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [SMITHERS, "serve", str(FIXTURE), "--port", "0", "--db", db],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.url = wait_for(self._listening, f"{name} to listen", timeout=60)
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=20)

    def _listening(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}: {self.err.read_text()}")
        found = LISTENING.search(self.err.read_text())
        return found.group(1) if found else None

    def rpc(self, method: str, params: Any = None) -> httpx.Response:
        return self.http.post(f"/v1/rpc/{method}", json=params if params is not None else {})

    def ok(self, method: str, params: Any = None) -> Any:
        response = self.rpc(method, params)
        assert response.status_code == 200, response.text
        return response.json()["payload"]

    def status(self, run_id: str) -> str:
        return str(self.ok("getRun", {"runId": run_id})["status"])

    def wait_status(self, run_id: str, wanted: str, timeout: float = 30) -> None:
        wait_for(lambda: self.status(run_id) == wanted, f"run {run_id} to be {wanted}", timeout=timeout, interval=0.05)

    def stop(self, sig: signal.Signals) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve(tmp_path: Path, databases: Databases) -> Iterator[Any]:
    db = databases.new("restart")
    started: list[Served] = []

    def start(name: str) -> Served:
        served = Served(db, tmp_path, name)
        started.append(served)
        return served

    start.db = db  # type: ignore[attr-defined]
    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(timeout=10)


def after_value(db: str, run_id: str) -> Any:
    store = Store(db)
    try:
        with store.read() as tx:
            row = tx.get_output(run_id, "after", 0)
    finally:
        store.close()
    assert row is not None
    return json.loads(row["payload_json"])["value"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_waiting_runs_survive_a_restart(serve: Any, sig: signal.Signals) -> None:
    first = serve("first")
    fires_at = now_ms() + TIMER_DELAY_MS
    approval = first.ok("launchRun", {"workflow": "approve", "runId": "r-approve"})["runId"]
    waiting = first.ok("launchRun", {"workflow": "signal", "runId": "r-signal"})["runId"]
    timer = first.ok("launchRun", {"workflow": "timer", "runId": "r-timer", "input": {"until": fires_at}})["runId"]
    assert (approval, waiting, timer) == ("r-approve", "r-signal", "r-timer")
    first.wait_status(approval, "waiting-approval")
    first.wait_status(waiting, "waiting-event")
    first.wait_status(timer, "waiting-timer")

    code = first.stop(sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), first.err.read_text()

    second = serve("second")
    asked_at = now_ms()
    records = {run_id: second.ok("getRun", {"runId": run_id}) for run_id in (approval, waiting, timer)}
    assert records[approval]["status"] == "waiting-approval"
    assert records[waiting]["status"] == "waiting-event"
    assert records[approval]["workflowKey"] == "approve" and records[waiting]["workflowKey"] == "signal"
    if asked_at < fires_at:  # it cannot have fired yet
        assert records[timer]["status"] == "waiting-timer"
    [pending] = second.ok("listApprovals")
    assert (pending["runId"], pending["workflowKey"], pending["nodeId"]) == (approval, "approve", "ok")
    assert pending["requestTitle"] == "Release?"

    decided = second.ok(
        "submitApproval", {"runId": approval, "nodeId": "ok", "approved": True, "note": "after restart"}
    )
    assert decided == {"runId": approval, "nodeId": "ok", "iteration": 0, "approved": True}
    delivered = second.ok("submitSignal", {"runId": waiting, "signalName": "go", "data": {"n": 7}})
    assert delivered["runId"] == waiting and delivered["signalName"] == "go"

    for run_id in (approval, waiting, timer):
        second.wait_status(run_id, "finished")
    assert second.ok("listApprovals") == []
    decision = after_value(serve.db, approval)
    assert decision["approved"] is True and decision["note"] == "after restart" and decision["decidedBy"] == "user:ops"
    assert after_value(serve.db, waiting) == {"n": 7}
    assert after_value(serve.db, timer) == "awake"
    assert now_ms() >= fires_at
    assert second.stop(signal.SIGTERM) == 0, second.err.read_text()


def test_a_decision_made_while_the_gateway_was_down_is_continued_on_start(serve: Any) -> None:
    first = serve("first")
    approval = first.ok("launchRun", {"workflow": "approve"})["runId"]
    waiting = first.ok("launchRun", {"workflow": "signal"})["runId"]
    first.wait_status(approval, "waiting-approval")
    first.wait_status(waiting, "waiting-event")
    assert first.stop(signal.SIGTERM) == 0, first.err.read_text()

    # decided and signalled in the database while no gateway runs (what `smithers approve`/`signal` do)
    store = Store(serve.db)
    try:
        approve_node(store, approval, "ok", decided_by="user:cli")
        signal_run(store, waiting, "go", {"n": 1}, received_by="user:cli")
    finally:
        store.close()

    second = serve("second")
    second.wait_status(approval, "finished")
    second.wait_status(waiting, "finished")
    assert after_value(serve.db, waiting) == {"n": 1}
    assert after_value(serve.db, approval)["decidedBy"] == "user:cli"
    assert second.stop(signal.SIGTERM) == 0, second.err.read_text()
