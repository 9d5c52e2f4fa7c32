"""Crashes, takeovers, races and cancellation across real ``smithers`` processes, on SQLite and PostgreSQL.

The workflows live in ``tests/fixtures/crashy.py``: every task appends a line to a counter file when
it starts (so the tests count real executions), and one task waits while a "hold" file exists, which
gives the tests a run that is reliably in the middle of a task. The tests watch the database to
know when to kill, stop or race the processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smithers import Store
from smithers.engine.ownership import OWNER_STALE_MS
from smithers.store.rows import now_ms
from tests.waiting import wait_for

SMITHERS = str(Path(sys.executable).parent / "smithers")
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "crashy.py"
TIMEOUT_S = 60.0
CANCEL_NOTICE_MS = 1000
"""The owner polls for cancel requests every 250 ms; allow for a loaded machine on top."""


class Job:
    """A ``smithers`` process running in the background, its output going to files."""

    def __init__(self, args: list[str], cwd: Path, name: str):
        self.out = cwd / f"{name}.out"
        self.err = cwd / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [SMITHERS, *args], cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=cli_env()
            )
        self.pid = self.proc.pid

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SMITHERS_DB", None)
    return env


class Harness:
    """One database, one working directory, the counter and hold files, and the processes started."""

    def __init__(self, tmp_path: Path, db_url: str):
        self.cwd = tmp_path
        self.db = db_url
        self.store = Store(db_url)
        self.counter = tmp_path / "counter.txt"
        self.hold = tmp_path / "hold"
        self.jobs: list[Job] = []

    def close(self) -> None:
        for job in self.jobs:
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait(timeout=10)
        self.store.close()

    def input(self, n: int = 5) -> str:
        return json.dumps({"counter": str(self.counter), "hold": str(self.hold), "n": n})

    def start(self, *args: str, name: str) -> Job:
        job = Job([*args, "--db", self.db], self.cwd, name)
        self.jobs.append(job)
        return job

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SMITHERS, *args, "--db", self.db],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
        )

    def start_run(self, run_id: str, workflow: str = "crashy") -> Job:
        return self.start("run", f"{FIXTURE}:{workflow}", "--input", self.input(), "--run-id", run_id, name=run_id)

    # ---- reading the database ------------------------------------------------------------------
    def counter_lines(self) -> list[str]:
        return self.counter.read_text().splitlines() if self.counter.exists() else []

    def run_row(self, run_id: str) -> dict[str, Any]:
        row = self.store.get_run(run_id)
        assert row is not None, f"run {run_id} is not in the database"
        return row

    def attempts(self, run_id: str, node_id: str, iteration: int = 0) -> list[tuple[int, str]]:
        with self.store.read() as tx:
            rows = tx.list_attempts(run_id, node_id, iteration)
        return sorted((int(r["attempt"]), r["state"]) for r in rows)

    def node_states(self, run_id: str) -> dict[str, str]:
        with self.store.read() as tx:
            return {f"{n['node_id']}::{n['iteration']}": n["state"] for n in tx.list_nodes(run_id)}

    def events(self, run_id: str) -> list[Any]:
        with self.store.read() as tx:
            return tx.list_events(run_id, limit=None)

    def wait_executing(self, run_id: str, node_id: str, attempt: int, starts: int, iteration: int = 0) -> None:
        """Wait until attempt ``attempt`` of the node is in progress and its task has started ``starts`` times."""
        line = node_id if node_id != "tick" else f"tick{iteration}"

        def ready() -> bool:
            states = dict(self.attempts(run_id, node_id, iteration))
            return states.get(attempt) == "in-progress" and self.counter_lines().count(line) == starts

        wait_for(ready, f"attempt {attempt} of {node_id}[{iteration}] to be executing")

    def wait_owned_by(self, run_id: str, job: Job) -> dict[str, Any]:
        def owned() -> dict[str, Any] | None:
            row = self.store.get_run(run_id)
            owner = (row or {}).get("runtime_owner_id") or ""
            return row if owner.startswith(f"pid:{job.pid}:") else None

        return wait_for(owned, f"run {run_id} to be owned by pid {job.pid}")  # type: ignore[no-any-return]


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    harness = Harness(tmp_path, db_url)
    try:
        yield harness
    finally:
        harness.close()


def assert_finished_cleanly(h: Harness, run_id: str) -> None:
    row = h.run_row(run_id)
    assert row["status"] == "finished"
    assert row["runtime_owner_id"] is None and row["heartbeat_at_ms"] is None
    assert row["finished_at_ms"] is not None
    seqs = [e.seq for e in h.events(run_id)]
    assert seqs == list(range(len(seqs))), "event sequence numbers must stay gap-free across processes"


# ---- crash and resume ----------------------------------------------------------------------------


def test_sigkill_mid_task_then_resume_reruns_only_the_interrupted_task(h: Harness) -> None:
    h.hold.touch()
    job = h.start_run("crash")
    h.wait_executing("crash", "slow", attempt=1, starts=1)
    owner = h.run_row("crash")["runtime_owner_id"]
    assert owner.startswith(f"pid:{job.pid}:")

    job.kill()
    left = h.run_row("crash")
    assert left["status"] == "running" and left["runtime_owner_id"] == owner  # nobody cleaned up
    assert h.attempts("crash", "slow") == [(1, "in-progress")]
    h.hold.unlink()
    # a heartbeat a minute ahead can never look stale: only seeing that the owner's process is
    # gone lets the resume take the run over
    with h.store.write() as tx:
        tx.update_run("crash", heartbeat_at_ms=now_ms() + 60_000)

    resumed = h.cli("resume", "crash")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"name": "last", "value": 11}
    assert "Traceback" not in resumed.stderr

    assert h.counter_lines() == ["first", "slow", "slow", "last"]
    assert h.attempts("crash", "first") == [(1, "finished")]
    assert h.attempts("crash", "slow") == [(1, "cancelled"), (2, "finished")]
    assert h.attempts("crash", "last") == [(1, "finished")]
    assert h.node_states("crash") == {"first::0": "finished", "slow::0": "finished", "last::0": "finished"}
    assert_finished_cleanly(h, "crash")

    events = h.events("crash")
    abandoned = [
        {k: e.payload.get(k) for k in ("nodeId", "iteration", "attempt", "reason")}
        for e in events
        if e.type == "NodeCancelled"
    ]
    assert abandoned == [{"nodeId": "slow", "iteration": 0, "attempt": 1, "reason": "aborted"}]
    restarts = [e for e in events if e.type == "RunStarted" and e.payload.get("resumed")]
    assert len(restarts) == 1
    started = [e.payload["nodeId"] for e in events if e.type == "NodeStarted"]
    assert started == ["first", "slow", "slow", "last"]


def test_sigkill_inside_a_loop_resumes_at_the_interrupted_iteration(h: Harness) -> None:
    h.hold.touch()
    job = h.start_run("loop-crash", "crashy_loop")
    h.wait_executing("loop-crash", "tick", attempt=1, starts=1, iteration=1)
    job.kill()
    h.hold.unlink()

    resumed = h.cli("resume", "loop-crash")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"name": "done", "value": 3}
    assert h.counter_lines() == ["tick0", "tick1", "tick1", "tick2", "done"]
    assert h.attempts("loop-crash", "tick", 0) == [(1, "finished")]
    assert h.attempts("loop-crash", "tick", 1) == [(1, "cancelled"), (2, "finished")]
    assert h.attempts("loop-crash", "tick", 2) == [(1, "finished")]
    assert h.node_states("loop-crash") == {
        "tick::0": "finished",
        "tick::1": "finished",
        "tick::2": "finished",
        "done::0": "finished",
    }
    with h.store.read() as tx:
        loops = tx.list_ralph("loop-crash")
    assert [(r["ralph_id"], r["iteration"], bool(r["done"])) for r in loops] == [("ticks", 2, True)]
    assert_finished_cleanly(h, "loop-crash")


# ---- ownership: live owners, --force, stale heartbeats -------------------------------------------


def test_resume_refuses_a_live_owner_and_force_takes_it_over(h: Harness) -> None:
    h.hold.touch()
    first = h.start_run("live")
    h.wait_executing("live", "slow", attempt=1, starts=1)
    owner = h.run_row("live")["runtime_owner_id"]

    refused = h.cli("resume", "live")
    assert refused.returncode == 4
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and owner in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert h.run_row("live")["runtime_owner_id"] == owner  # nothing changed
    assert h.attempts("live", "slow") == [(1, "in-progress")]

    forced = h.start("resume", "live", "--force", name="forced")
    row = h.wait_owned_by("live", forced)
    assert row["status"] == "running"
    h.wait_executing("live", "slow", attempt=2, starts=2)
    assert h.attempts("live", "slow") == [(1, "cancelled"), (2, "in-progress")]

    # the old owner notices at its next heartbeat that the run is no longer its own, and stops
    code = first.wait(timeout=15)
    assert code != 0, first.stderr
    assert "taken over" in first.stderr and "Traceback" not in first.stderr
    # ... without touching the run it lost
    row = h.run_row("live")
    assert row["status"] == "running" and row["runtime_owner_id"].startswith(f"pid:{forced.pid}:")
    assert h.attempts("live", "slow") == [(1, "cancelled"), (2, "in-progress")]
    assert not [e for e in h.events("live") if e.type in ("RunCancelled", "RunFailed", "RunFinished")]

    h.hold.unlink()
    assert forced.wait() == 0, forced.stderr
    assert json.loads(forced.stdout) == {"name": "last", "value": 11}
    assert h.counter_lines() == ["first", "slow", "slow", "last"]
    assert h.attempts("live", "slow") == [(1, "cancelled"), (2, "finished")]
    assert_finished_cleanly(h, "live")


def test_resume_takes_over_without_force_once_the_owner_heartbeat_is_stale(h: Harness) -> None:
    h.hold.touch()
    first = h.start_run("frozen")
    h.wait_executing("frozen", "slow", attempt=1, starts=1)
    # stop the owner right after a heartbeat commits, far from its next database write
    seen = h.run_row("frozen")["heartbeat_at_ms"]
    beat = wait_for(lambda: (b := h.run_row("frozen")["heartbeat_at_ms"]) != seen and b, "a heartbeat", interval=0.005)
    first.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: now_ms() - beat > OWNER_STALE_MS + 100, "the heartbeat to go stale", interval=0.1)
        assert h.run_row("frozen")["heartbeat_at_ms"] == beat  # the stopped process is alive but silent

        second = h.start("resume", "frozen", name="second")
        h.wait_owned_by("frozen", second)
        h.wait_executing("frozen", "slow", attempt=2, starts=2)
    finally:
        first.proc.send_signal(signal.SIGCONT)

    code = first.wait(timeout=15)
    assert code != 0 and "taken over" in first.stderr, first.stderr
    assert h.attempts("frozen", "slow") == [(1, "cancelled"), (2, "in-progress")]

    h.hold.unlink()
    assert second.wait() == 0, second.stderr
    assert json.loads(second.stdout) == {"name": "last", "value": 11}
    assert h.counter_lines() == ["first", "slow", "slow", "last"]
    assert h.attempts("frozen", "slow") == [(1, "cancelled"), (2, "finished")]
    assert_finished_cleanly(h, "frozen")


def _hold_run_row(db_url: str, run_id: str) -> Any:
    """PostgreSQL: lock the run row, so that racing resumes all read it before any of them can write."""
    import psycopg

    conn = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("SELECT run_id FROM _smithers_runs WHERE run_id = %s FOR UPDATE", (run_id,))
    return conn


def _lock_waiters(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return int(cur.fetchone()[0])


def test_two_racing_resumes_exactly_one_wins_and_the_other_names_the_owner(h: Harness) -> None:
    h.hold.touch()
    job = h.start_run("race")
    h.wait_executing("race", "slow", attempt=1, starts=1)
    job.kill()

    postgres = h.db.startswith("postgres")
    lock = _hold_run_row(h.db, "race") if postgres else None
    try:
        racers = [h.start("resume", "race", name=f"racer{i}") for i in (1, 2)]
        if lock is not None:
            import psycopg

            with psycopg.connect(h.db.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as probe:
                wait_for(lambda: _lock_waiters(probe) >= 2, "both resumes to wait for the run row")
    finally:
        if lock is not None:
            lock.rollback()
            lock.close()

    loser = wait_for(lambda: next((r for r in racers if r.proc.poll() is not None), None), "one resume to give up")
    winner = next(r for r in racers if r is not loser)
    assert winner.proc.poll() is None, f"both resumes ended: {winner.stderr}"
    assert loser.proc.returncode != 0
    row = h.run_row("race")
    assert row["status"] == "running" and row["runtime_owner_id"].startswith(f"pid:{winner.pid}:")
    lines = loser.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in loser.stderr, loser.stderr
    assert row["runtime_owner_id"] in lines[0], f"the losing resume should name the owner: {lines[0]}"

    h.wait_executing("race", "slow", attempt=2, starts=2)
    h.hold.unlink()
    assert winner.wait() == 0, winner.stderr
    assert h.counter_lines() == ["first", "slow", "slow", "last"]
    assert h.attempts("race", "slow") == [(1, "cancelled"), (2, "finished")]
    assert_finished_cleanly(h, "race")


# ---- cancellation ----------------------------------------------------------------------------------


def test_cancel_stops_a_run_executing_in_another_process(h: Harness) -> None:
    h.hold.touch()
    job = h.start_run("stop")
    h.wait_executing("stop", "slow", attempt=1, starts=1)

    canceller = h.start("cancel", "stop", name="cancel")
    # watch the row: when was the cancel requested, and when did the run end?
    requested: int | None = None
    last_clear = now_ms()
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        polled_at = now_ms()
        row = h.run_row("stop")
        if row["status"] == "cancelled":
            break
        if row["cancel_requested_at_ms"] is not None:
            requested = requested or row["cancel_requested_at_ms"]
        else:
            last_clear = polled_at
        assert time.monotonic() < deadline, "the run was never cancelled"
        time.sleep(0.01)
    assert canceller.wait() == 2, canceller.stderr
    assert "cancel" in canceller.stdout

    assert job.wait(timeout=15) == 2, job.stderr
    assert "Traceback" not in job.stderr
    assert row["finished_at_ms"] - (requested or last_clear) <= CANCEL_NOTICE_MS
    assert row["runtime_owner_id"] is None and row["heartbeat_at_ms"] is None
    assert row["cancel_requested_at_ms"] is None
    assert h.attempts("stop", "slow") == [(1, "cancelled")]
    assert h.node_states("stop") == {"first::0": "finished", "slow::0": "cancelled", "last::0": "pending"}
    assert h.counter_lines() == ["first", "slow"]
    types = [e.type for e in h.events("stop")]
    assert types.count("RunCancelled") == 1 and "RunFinished" not in types and "RunFailed" not in types
    cancelled = [e.payload for e in h.events("stop") if e.type == "NodeCancelled"]
    assert [(p["nodeId"], p.get("attempt")) for p in cancelled] == [("slow", 1)]

    # resuming an ended run writes nothing and says so
    h.hold.unlink()
    events_before = len(h.events("stop"))
    untouched = h.cli("resume", "stop")
    assert untouched.returncode == 0, untouched.stderr
    assert "already cancelled; nothing to do" in untouched.stderr and untouched.stdout == ""
    assert len(h.events("stop")) == events_before and h.run_row("stop")["status"] == "cancelled"
    # --retry runs it again: the cancelled task runs again, the finished one does not
    resumed = h.cli("resume", "stop", "--retry")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"name": "last", "value": 11}
    assert h.counter_lines() == ["first", "slow", "slow", "last"]
    assert h.attempts("stop", "slow") == [(1, "cancelled"), (2, "finished")]
    assert_finished_cleanly(h, "stop")


def test_cancel_of_a_run_whose_owner_died_cancels_it_directly(h: Harness) -> None:
    h.hold.touch()
    job = h.start_run("orphan")
    h.wait_executing("orphan", "slow", attempt=1, starts=1)
    job.kill()

    cancelled = h.cli("cancel", "orphan")
    assert cancelled.returncode == 2, cancelled.stderr
    assert cancelled.stdout.strip() == "run orphan: cancelled"
    row = h.run_row("orphan")
    assert row["status"] == "cancelled" and row["finished_at_ms"] is not None
    assert row["runtime_owner_id"] is None and row["heartbeat_at_ms"] is None
    assert h.attempts("orphan", "slow") == [(1, "cancelled")]
    assert h.node_states("orphan") == {"first::0": "finished", "slow::0": "cancelled", "last::0": "pending"}
    assert [e.type for e in h.events("orphan")].count("RunCancelled") == 1
