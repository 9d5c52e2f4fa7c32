"""Engine semantics through the ``smithers`` command line, on SQLite and PostgreSQL: a cancel sticks
for a process sleeping on a timer, a cancelled sync body does not hold its process, one signal
wakes every open wait, and ``events --follow`` follows a run to its end."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smithers import Store
from tests.cli.support import SMITHERS, TIMEOUT_S, CliOn
from tests.waiting import wait_for

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "semantics.py"


class Cli(CliOn):
    """The CLI on one database, with ``$SEMANTICS_MARKS`` pointing at a file of side effects."""

    def __init__(self, cwd: Path, db: str):
        self.marks = cwd / "marks"
        super().__init__(cwd, db, {"SEMANTICS_MARKS": str(self.marks)})
        self.store = Store(db)

    def run(self, workflow: str, run_id: str, data: dict[str, Any] | None = None) -> subprocess.Popen[str]:
        return self.start("run", f"{FIXTURE}:{workflow}", "--run-id", run_id, "--input", json.dumps(data or {}))

    def status(self, run_id: str) -> str | None:
        row = self.store.get_run(run_id)
        return None if row is None else str(row["status"])

    def events(self, run_id: str) -> list[Any]:
        with self.store.read() as tx:
            return tx.list_events(run_id, limit=None)

    def lines(self) -> list[str]:
        return self.marks.read_text().splitlines() if self.marks.exists() else []


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Iterator[Cli]:
    harness = Cli(tmp_path, db_url)
    yield harness
    harness.store.close()


def finish(proc: subprocess.Popen[str], within_s: float) -> tuple[int, str, str]:
    """The exit code and output of a background command, which must end within ``within_s``."""
    out, err = proc.communicate(timeout=within_s)
    return proc.returncode, out, err


def test_a_cancel_sticks_for_a_process_sleeping_on_a_timer(cli: Cli) -> None:
    """``smithers run`` suspends on a 30 s timer and sleeps; ``smithers cancel`` from another process
    ends the run for good: the sleeping process notices within its poll and exits, the timer is
    cancelled (``TimerCancelled``), and the task after the timer never runs."""
    proc = cli.run("nap", "n1")
    wait_for(lambda: cli.status("n1") == "waiting-timer", "the run to sleep on its timer", TIMEOUT_S)
    cancelled = cli("cancel", "n1")
    assert cancelled.returncode == 2 and "cancelled" in cancelled.stdout + cancelled.stderr, cancelled.stderr
    code, _, err = finish(proc, within_s=20)  # the timer is 30 s away
    assert code == 2, err
    assert cli.status("n1") == "cancelled"
    assert cli.lines() == []
    events = cli.events("n1")
    types = [e.type for e in events]
    assert "NodeStarted" not in types and types.count("RunCancelled") == 1 and types[-1] == "RunCancelled"
    timer_cancelled = types.index("TimerCancelled")
    node_cancelled = next(e for e in events if e.type == "NodeCancelled")
    assert timer_cancelled < events.index(node_cancelled)
    assert node_cancelled.payload["nodeId"] == "nap" and node_cancelled.payload["reason"] == "run-cancelled"
    assert node_cancelled.payload["attempt"] == 1
    # nobody resumes it again: a second run process on the same id finds it ended
    again = cli("resume", "n1")
    assert again.returncode == 0 and "already cancelled; nothing to do" in again.stderr
    assert cli.lines() == []


def test_a_cancelled_sync_body_does_not_hold_its_process(cli: Cli) -> None:
    """A sync body sleeping 8 s cannot be interrupted; cancelling its run records the attempt
    cancelled at once and the process exits without waiting for the body, which never finishes."""
    proc = cli.run("sync_slow", "s1", {"seconds": 8})
    wait_for(lambda: cli.lines() == ["started"], "the body to start", TIMEOUT_S)
    started = time.monotonic()
    cli("cancel", "s1")
    code, _, err = finish(proc, within_s=30)
    assert code == 2, err
    assert time.monotonic() - started < 6, "the process waited for the body to return"
    assert cli.status("s1") == "cancelled"
    time.sleep(0.2)
    assert cli.lines() == ["started"]
    cancelled = [e.payload for e in cli.events("s1") if e.type == "NodeCancelled"]
    assert cancelled == [
        {"type": "NodeCancelled", "runId": "s1", "timestampMs": cancelled[0]["timestampMs"]}
        | {"nodeId": "slow", "iteration": 0, "attempt": 1, "reason": "aborted"}
    ]


def test_one_signal_wakes_every_wait_open_for_it(cli: Cli) -> None:
    proc = cli.run("two_waits", "w")
    code, _, err = finish(proc, within_s=TIMEOUT_S)
    assert code == 3 and cli.status("w") == "waiting-event", err
    sent = cli("signal", "w", "go", "--data", '{"n": 1}', "--resume")
    assert sent.returncode == 0, sent.stderr
    stored, _, output = sent.stdout.partition("\n")
    assert stored == "signal go stored for run w (seq 0)"
    assert json.loads(output) == {"w1": {"n": 1}, "w2": {"n": 1}}
    assert cli.status("w") == "finished"


def test_events_follow_follows_a_run_through_its_timer_to_its_end(cli: Cli) -> None:
    """Following a run that sleeps on a timer prints the timer firing and the end of the run
    (the process running it resumes it when the timer is due)."""
    runner = cli.run("short_nap", "f1")
    wait_for(lambda: cli.status("f1") == "waiting-timer", "the run to sleep on its timer", TIMEOUT_S)
    follow = cli.start("events", "f1", "--follow", "--json")
    code, out, err = finish(follow, within_s=TIMEOUT_S)
    assert code == 0, err
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert "TimerFired" in types and types[-1] == "RunFinished"
    assert finish(runner, within_s=TIMEOUT_S)[0] == 0


def test_events_follow_waits_with_a_waiting_run_and_says_so(cli: Cli) -> None:
    """A run waiting for an event has not ended: ``--follow`` says it keeps following, and prints
    the rest of the run once a signal resumes it."""
    assert finish(cli.run("two_waits", "f2"), within_s=TIMEOUT_S)[0] == 3
    log = cli.cwd / "follow.err"
    with log.open("w") as err_file:
        follow = subprocess.Popen(
            [SMITHERS, "events", "f2", "--follow", "--json", "--db", cli.db],
            cwd=cli.cwd,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            env=cli.env,
            stdin=subprocess.DEVNULL,
        )
    notice = "run f2 is waiting-event; following until it ends (Ctrl-C to stop)"
    wait_for(lambda: notice in log.read_text(), "the follower to say it keeps following", TIMEOUT_S)
    assert follow.poll() is None
    assert cli("signal", "f2", "go", "--data", '{"n": 2}', "--resume").returncode == 0
    code, out, _ = finish(follow, within_s=TIMEOUT_S)
    assert code == 0
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types.count("NodeFinished") == 3 and types[-1] == "RunFinished"
    assert log.read_text().strip() == notice


def test_a_resume_sleeping_on_a_timer_reports_a_cancel_from_elsewhere(cli: Cli) -> None:
    """``smithers resume`` takes a timer run over and sleeps; cancelled from another process, it
    exits as ``smithers run`` does (2, cancelled), not as a resume that found nothing to do."""
    first = cli.run("nap", "n2")
    wait_for(lambda: cli.status("n2") == "waiting-timer", "the run to sleep on its timer", TIMEOUT_S)
    first.kill()  # the sleeper is gone; the run waits on its timer with nobody sleeping on it
    first.communicate(timeout=TIMEOUT_S)
    resumed = cli.start("resume", "n2")
    wait_for(lambda: any(e.type == "RunStarted" and e.payload.get("resumed") for e in cli.events("n2")), "the resume")
    wait_for(lambda: cli.status("n2") == "waiting-timer", "the resume to sleep on the timer", TIMEOUT_S)
    assert cli("cancel", "n2").returncode == 2
    code, _, err = finish(resumed, within_s=20)
    assert code == 2, err
    assert "nothing to do" not in err and cli.lines() == []
