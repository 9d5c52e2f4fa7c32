"""Every workflow in ``examples/`` run end to end through the ``smithers`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smithers import Store
from smithers.engine import control

SMITHERS = str(Path(sys.executable).parent / "smithers")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 60.0
COVERED = {"hello", "pipeline", "fanout", "loop", "approval", "wait_event", "flaky", "code_review", "research"}
"""The agent examples (code_review, research) are run by tests/agents/test_agent_examples.py."""


class Cli:
    """The CLI bound to one database, run in a scratch working directory."""

    def __init__(self, cwd: Path, db: str):
        self.cwd = cwd
        self.db = db

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("SMITHERS_DB", None)
        return subprocess.run(
            [SMITHERS, *args, "--db", self.db],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def run(self, example: str, run_id: str, data: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        args = ["run", str(EXAMPLES / f"{example}.py"), "--run-id", run_id]
        if data is not None:
            args += ["--input", json.dumps(data)]
        return self(*args)

    def inspect(self, run_id: str) -> dict[str, Any]:
        proc = self("inspect", run_id, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    """The CLI on SQLite and on PostgreSQL."""
    return Cli(tmp_path, db_url)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr is one ``error: …`` line."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def finished_output(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def db_view(url: str, run_id: str) -> dict[str, Any]:
    store = Store(url)
    try:
        with store.read() as tx:
            return {
                "run": tx.get_run(run_id),
                "nodes": {f"{n['node_id']}::{n['iteration']}": n["state"] for n in tx.list_nodes(run_id)},
                "attempts": [
                    (a["node_id"], a["iteration"], a["attempt"], a["state"]) for a in tx.list_attempts(run_id)
                ],
                "events": tx.list_events(run_id, limit=None),
                "outputs": {
                    f"{o['node_id']}::{o['iteration']}": json.loads(o["payload_json"]) for o in tx.list_outputs(run_id)
                },
            }
    finally:
        store.close()


def test_every_example_workflow_is_covered_here() -> None:
    defining = {p.stem for p in EXAMPLES.glob("*.py") if "@workflow(" in p.read_text()}
    assert defining == COVERED


# ---- examples that run straight through ------------------------------------------------------------


def test_hello(cli: Cli) -> None:
    assert finished_output(cli.run("hello", "hello-default")) == {"message": "hello world"}
    assert finished_output(cli.run("hello", "hello-ada", {"name": "Ada"})) == {"message": "hello Ada"}
    view = db_view(cli.db, "hello-ada")
    assert view["run"]["status"] == "finished" and view["nodes"] == {"greet::0": "finished"}


def test_pipeline(cli: Cli) -> None:
    out = finished_output(cli.run("pipeline", "pipe", {"topic": "Smithers"}))
    assert out == {"url": "https://example.invalid/a-short-note-about", "words": 5}
    detail = cli.inspect("pipe")
    outputs = {n["nodeId"]: n["output"] for n in detail["nodes"]}
    assert outputs == {
        "write": {"text": "A short note about Smithers."},
        "review": {"text": "A SHORT NOTE ABOUT SMITHERS.", "words": 5},
        "publish": out,
    }
    started = [e.payload["nodeId"] for e in db_view(cli.db, "pipe")["events"] if e.type == "NodeStarted"]
    assert started == ["write", "review", "publish"]


def test_fanout_runs_at_most_three_squares_at_once(cli: Cli) -> None:
    assert finished_output(cli.run("fanout", "fan")) == {"total": 55, "count": 5}
    view = db_view(cli.db, "fan")
    assert view["nodes"] == {f"square-{n}::0": "finished" for n in range(1, 6)} | {"total::0": "finished"}
    running, peak = 0, 0
    for event in view["events"]:
        if event.payload.get("nodeId", "").startswith("square-"):
            running += {"NodeStarted": 1, "NodeFinished": -1}.get(event.type, 0)
            peak = max(peak, running)
    assert peak == 3
    custom = finished_output(cli.run("fanout", "fan-2", {"numbers": [2, 3, 10]}))
    assert custom == {"total": 113, "count": 3}


def test_loop_refines_until_the_target(cli: Cli) -> None:
    assert finished_output(cli.run("loop", "refine")) == {"value": 12, "passes": 4}
    view = db_view(cli.db, "refine")
    assert view["nodes"] == {f"improve::{i}": "finished" for i in range(4)} | {"verdict::0": "finished"}
    assert view["outputs"] == {f"improve::{i}": {"value": 3 * (i + 1)} for i in range(4)} | {
        "verdict::0": {"value": 12, "passes": 4}
    }


def test_flaky_is_retried_until_it_works(cli: Cli, tmp_path: Path) -> None:
    counter = tmp_path / "flaky.count"
    out = finished_output(cli.run("flaky", "flaky", {"counter_file": str(counter)}))
    assert out == {"attempts": 3}
    assert counter.read_text() == "3"
    view = db_view(cli.db, "flaky")
    assert view["attempts"] == [("fetch", 0, 1, "failed"), ("fetch", 0, 2, "failed"), ("fetch", 0, 3, "finished")]
    assert [e.type for e in view["events"]].count("NodeRetrying") == 2


# ---- examples that wait for a person or an event -------------------------------------------------------


def test_approval_approve_then_resume(cli: Cli) -> None:
    started = cli.run("approval", "ship-it", {"service": "web", "version": "2.0.0"})
    assert started.returncode == 3, started.stderr
    assert "waiting-approval" in started.stderr and "smithers resume ship-it" in started.stderr
    view = db_view(cli.db, "ship-it")
    assert view["run"]["status"] == "waiting-approval" and view["run"]["runtime_owner_id"] is None
    assert view["nodes"] == {"plan::0": "finished", "ship::0": "waiting-approval"}

    approved = cli("approve", "ship-it", "--node", "ship", "--note", "lgtm", "--by", "alice")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == "approved ship of run ship-it"

    out = finished_output(cli("resume", "ship-it"))
    assert out == {"service": "web", "version": "2.0.0", "approved_by": "alice"}
    view = db_view(cli.db, "ship-it")
    assert view["run"]["status"] == "finished" and view["run"]["runtime_owner_id"] is None
    assert view["nodes"] == {"plan::0": "finished", "ship::0": "finished", "deploy::0": "finished"}
    decision = view["outputs"]["ship::0"]
    assert (decision["approved"], decision["note"], decision["decidedBy"]) == (True, "lgtm", "alice")
    assert [a for a in view["attempts"] if a[0] == "plan"] == [("plan", 0, 1, "finished")]  # not run again


def test_approval_deny_then_resume_fails(cli: Cli) -> None:
    assert cli.run("approval", "no-ship").returncode == 3
    denied = cli("deny", "no-ship", "--node", "ship", "--note", "not today")
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.strip() == "denied ship of run no-ship"

    resumed = cli("resume", "no-ship")
    assert resumed.returncode == 1
    assert "Traceback" not in resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no-ship" in errors[0] and "not today" in errors[0], resumed.stderr
    view = db_view(cli.db, "no-ship")
    assert view["run"]["status"] == "failed" and view["run"]["runtime_owner_id"] is None
    assert view["nodes"] == {"plan::0": "finished", "ship::0": "failed"}
    assert json.loads(view["run"]["error_json"])["code"] == "APPROVAL_DENIED"


def test_approval_approve_with_resume_in_one_step(cli: Cli) -> None:
    assert cli.run("approval", "quick").returncode == 3
    proc = cli("approve", "quick", "--by", "bob", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("approved ship of run quick\n")
    out = json.loads(proc.stdout.split("\n", 1)[1])
    assert out == {"service": "api", "version": "1.0.0", "approved_by": "bob"}
    assert db_view(cli.db, "quick")["run"]["status"] == "finished"


def test_wait_event_signal_then_resume(cli: Cli) -> None:
    started = cli.run("wait_event", "pay", {"order": "B-7"})
    assert started.returncode == 3, started.stderr
    assert "waiting-event" in started.stderr
    view = db_view(cli.db, "pay")
    assert view["run"]["status"] == "waiting-event"
    assert view["nodes"] == {"open::0": "finished", "paid::0": "waiting-event", "receipt::0": "pending"}

    # a run that is only waiting does not move until it is resumed
    sent = cli("signal", "pay", "payment.received", "--data", '{"amount": 42}')
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "signal payment.received stored for run pay (seq 0)"
    assert db_view(cli.db, "pay")["run"]["status"] == "waiting-event"

    assert finished_output(cli("resume", "pay")) == {"text": "received 42 EUR"}
    view = db_view(cli.db, "pay")
    assert view["run"]["status"] == "finished"
    assert view["outputs"] == {
        "open::0": {"order": "B-7"},
        "paid::0": {"amount": 42, "currency": "EUR"},
        "receipt::0": {"text": "received 42 EUR"},
    }


def test_wait_event_resumed_without_a_signal_keeps_waiting(cli: Cli) -> None:
    assert cli.run("wait_event", "idle").returncode == 3
    again = cli("resume", "idle")
    assert again.returncode == 3, again.stderr
    view = db_view(cli.db, "idle")
    assert view["run"]["status"] == "waiting-event" and view["nodes"]["paid::0"] == "waiting-event"


def test_a_signal_whose_payload_fails_the_model_is_refused_and_the_run_keeps_waiting(cli: Cli) -> None:
    assert cli.run("wait_event", "bad-pay").returncode == 3
    refused = cli("signal", "bad-pay", "payment.received", "--data", '"oops"', "--resume")
    assert refused.returncode == 4
    line = one_line_error(refused)
    assert "does not match Payment expected by paid" in line and "[INVALID_INPUT]" in line
    view = db_view(cli.db, "bad-pay")
    assert view["run"]["status"] == "waiting-event" and view["nodes"]["paid::0"] == "waiting-event"
    assert not [e for e in view["events"] if e.type == "SignalReceived"]  # nothing stored
    assert cli("signal", "bad-pay", "payment.received", "--data", '{"amount": 5}').returncode == 0
    assert finished_output(cli("resume", "bad-pay")) == {"text": "received 5 EUR"}


def test_an_unusable_signal_that_got_stored_is_passed_by_and_the_run_keeps_waiting(cli: Cli) -> None:
    """A signal stored without the check (from Python): the wait refuses it and keeps waiting."""
    assert cli.run("wait_event", "raw-pay").returncode == 3
    store = Store(cli.db)
    try:
        control.signal_run(store, "raw-pay", "payment.received", {"amount": "lots"})
    finally:
        store.close()
    again = cli("resume", "raw-pay")
    assert again.returncode == 3, again.stderr
    view = db_view(cli.db, "raw-pay")
    assert view["run"]["status"] == "waiting-event" and view["nodes"]["paid::0"] == "waiting-event"
    [rejected] = [e.payload for e in view["events"] if e.type == "SignalRejected"]
    assert rejected["nodeId"] == "paid" and rejected["seq"] == 0 and "Payment" in rejected["error"]
    assert cli("signal", "raw-pay", "payment.received", "--data", '{"amount": 9}').returncode == 0
    assert finished_output(cli("resume", "raw-pay")) == {"text": "received 9 EUR"}
