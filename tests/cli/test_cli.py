"""The ``smithers`` command line, run as a real subprocess: commands, exit codes, progress, bad input."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import smithers
from smithers import Store
from smithers.engine.loader import load_workflow

SMITHERS = str(Path(sys.executable).parent / "smithers")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "tests" / "fixtures"
TIMEOUT_S = 60.0
EVENT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} +\d+ [A-Z][A-Za-z]+")


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SMITHERS_DB", None)
    env.update(extra)
    return env


def smithers_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMITHERS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env or cli_env(),
        stdin=subprocess.DEVNULL,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr is one ``error: …`` line (no traceback, no noise)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return value


def runs_in(url: str) -> list[dict[str, Any]]:
    store = Store(url)
    try:
        with store.read() as tx:
            return tx.list_runs(limit=1000)
    finally:
        store.close()


def sqlite_integrity(url: str) -> str:
    """SQLite's own check of the file ("ok"); "ok" for a PostgreSQL URL (the server keeps its own)."""
    if not url.startswith("sqlite:///"):
        return "ok"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


class Cli:
    """The CLI bound to one database and one working directory."""

    def __init__(self, cwd: Path, db: str):
        self.cwd = cwd
        self.db = db

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return smithers_cli(*args, "--db", self.db, cwd=self.cwd)

    def json(self, *args: str) -> Any:
        proc = self(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def events(self, run_id: str, *args: str) -> list[dict[str, Any]]:
        """``events --json`` prints one JSON object per line."""
        proc = self("events", run_id, *args, "--json")
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    """The CLI on SQLite and on PostgreSQL."""
    return Cli(tmp_path, db_url)


# ---- run, progress, --db ---------------------------------------------------------------------------


def test_run_prints_the_output_and_plain_progress_lines_when_piped(cli: Cli) -> None:
    proc = cli("run", f"{EXAMPLES / 'pipeline.py'}:pipeline", "--input", '{"topic": "durable runs"}', "--run-id", "p-1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"url": "https://example.invalid/a-short-note-about", "words": 6}
    assert "\x1b[" not in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "run p-1: finished"
    assert all(EVENT_LINE.match(line) for line in lines[:-1]), proc.stderr
    for needle in (
        "RunStarted",
        "NodeStarted write attempt 1",
        "NodeFinished write attempt 1",
        "NodeStarted review attempt 1",
        "NodeFinished publish attempt 1",
        "RunFinished",
    ):
        assert sum(needle in line for line in lines) == 1, f"{needle!r} not printed once:\n{proc.stderr}"
    started = [line.split("NodeStarted ")[1] for line in lines if "NodeStarted" in line]
    assert started == ["write attempt 1", "review attempt 1", "publish attempt 1"]


def test_run_selects_a_workflow_by_attribute_or_by_key(cli: Cli) -> None:
    # examples/loop.py defines `refine = workflow("loop", ...)`
    by_attr = cli("run", f"{EXAMPLES / 'loop.py'}:refine", "--input", '{"step": 5}', "-q")
    by_key = cli("run", f"{EXAMPLES / 'loop.py'}:loop", "--input", '{"step": 5}', "-q")
    assert by_attr.returncode == 0 and by_key.returncode == 0, by_attr.stderr + by_key.stderr
    assert json.loads(by_attr.stdout) == json.loads(by_key.stdout) == {"value": 10, "passes": 2}
    assert by_attr.stderr == by_key.stderr == ""  # --quiet
    assert sorted(r["workflow_name"] for r in runs_in(cli.db)) == ["loop", "loop"]


def test_db_takes_a_path_a_url_or_smithers_db_and_defaults_to_the_working_directory(tmp_path: Path) -> None:
    hello = str(EXAMPLES / "hello.py")
    (tmp_path / "sub").mkdir()

    default = smithers_cli("run", hello, "--run-id", "in-cwd", "-q", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert [r["run_id"] for r in runs_in(f"sqlite:///{tmp_path / 'smithers.db'}")] == ["in-cwd"]

    relative = smithers_cli("run", hello, "--db", "sub/rel.db", "--run-id", "by-path", "-q", cwd=tmp_path)
    assert relative.returncode == 0, relative.stderr
    assert [r["run_id"] for r in runs_in(f"sqlite:///{tmp_path / 'sub' / 'rel.db'}")] == ["by-path"]

    url = f"sqlite:///{tmp_path / 'sub' / 'url.db'}"
    by_url = smithers_cli("run", hello, "--db", url, "--run-id", "by-url", "-q", cwd=tmp_path)
    assert by_url.returncode == 0, by_url.stderr
    assert [r["run_id"] for r in runs_in(url)] == ["by-url"]

    env = cli_env(SMITHERS_DB=str(tmp_path / "sub" / "env.db"))
    by_env = smithers_cli("run", hello, "--run-id", "by-env", "-q", cwd=tmp_path, env=env)
    assert by_env.returncode == 0, by_env.stderr
    listed = smithers_cli("ps", "--json", cwd=tmp_path, env=env)
    assert [r["runId"] for r in json.loads(listed.stdout)] == ["by-env"]
    # --db wins over SMITHERS_DB
    overridden = smithers_cli("ps", "--json", "--db", url, cwd=tmp_path, env=env)
    assert [r["runId"] for r in json.loads(overridden.stdout)] == ["by-url"]
    # and the default database was not touched by the other runs
    assert [r["run_id"] for r in runs_in(f"sqlite:///{tmp_path / 'smithers.db'}")] == ["in-cwd"]


# ---- ps, inspect, events ---------------------------------------------------------------------------


def seed_two_runs(url: str) -> None:
    """A finished hello run (``h-1``) and an approval run waiting for a person (``a-1``), made in this process."""
    hello = smithers.run(load_workflow(str(EXAMPLES / "hello.py")), {"name": "ada"}, db=url, run_id="h-1")
    assert hello.status == "finished"
    time.sleep(0.005)  # distinct creation times, so "newest first" is well defined
    deploy = smithers.run(load_workflow(str(EXAMPLES / "approval.py")), {"service": "web"}, db=url, run_id="a-1")
    assert deploy.status == "waiting-approval"


def test_ps_lists_runs_newest_first(cli: Cli) -> None:
    seed_two_runs(cli.db)
    runs = cli.json("ps")
    assert [(r["runId"], r["workflowName"], r["status"]) for r in runs] == [
        ("a-1", "deploy", "waiting-approval"),
        ("h-1", "hello", "finished"),
    ]
    assert runs[1]["finishedAtMs"] is not None and runs[0]["finishedAtMs"] is None
    assert [r["runId"] for r in cli.json("ps", "--limit", "1")] == ["a-1"]
    table = cli("ps")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "h-1" in line or "a-1" in line]
    assert len(rows) == 2 and "waiting-approval" in rows[0] and "finished" in rows[1]


def test_ps_filters_by_status(cli: Cli) -> None:
    seed_two_runs(cli.db)
    finished = cli("ps", "--status", "finished", "--json")
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.stderr
    assert [r["runId"] for r in json.loads(finished.stdout)] == ["h-1"]
    assert [r["runId"] for r in cli.json("ps", "--status", "waiting-approval")] == ["a-1"]
    assert cli.json("ps", "--status", "failed") == []


def test_inspect_shows_nodes_states_attempts_and_outputs(cli: Cli) -> None:
    seed_two_runs(cli.db)
    detail = cli.json("inspect", "a-1")
    assert detail["run"]["runId"] == "a-1" and detail["run"]["status"] == "waiting-approval"
    nodes = {n["nodeId"]: n for n in detail["nodes"]}
    assert {k: n["state"] for k, n in nodes.items()} == {"plan": "finished", "ship": "waiting-approval"}
    assert nodes["plan"]["output"] == {"service": "web", "version": "1.0.0"}
    assert nodes["ship"]["output"] is None
    assert [(a["nodeId"], a["attempt"], a["state"]) for a in detail["attempts"]] == [("plan", 1, "finished")]

    shown = cli("inspect", "h-1")
    assert shown.returncode == 0, shown.stderr
    assert "status finished" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if "greet" in line)
    assert "finished" in row and "#1 finished" in row and "hello ada" in row


def test_events_prints_the_log_in_order_and_since_a_seq(cli: Cli) -> None:
    seed_two_runs(cli.db)
    events = cli.events("h-1")
    assert [e["seq"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[0] == "RunStarted" and types.count("RunFinished") == 1
    assert all(e["runId"] == "h-1" for e in events)
    assert cli.events("h-1", "--since", "3") == events[4:]
    assert cli.events("h-1", "--since", str(events[-1]["seq"])) == []
    plain = cli("events", "h-1")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.strip().splitlines()
    assert len(lines) == len(events) and all(EVENT_LINE.match(line) for line in lines)
    assert sum("NodeFinished greet attempt 1" in line for line in lines) == 1


def test_events_follow_streams_a_live_run_until_it_ends(cli: Cli, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    args = {"counter": str(tmp_path / "counter.txt"), "hold": str(hold), "n": 2}
    run_err, follow_out = tmp_path / "run.err", tmp_path / "follow.out"
    command = [SMITHERS, "run", f"{FIXTURES / 'crashy.py'}:crashy", "--input", json.dumps(args)]
    with run_err.open("w") as err, (tmp_path / "run.out").open("w") as out:
        runner = subprocess.Popen(
            [*command, "--run-id", "live", "--db", cli.db],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=cli_env(),
        )
    follower = None
    try:
        # progress is printed while the run executes, not at the end
        wait_for(lambda: "NodeStarted slow attempt 1" in run_err.read_text(), "live progress on stderr")
        assert runner.poll() is None
        with follow_out.open("w") as out, (tmp_path / "follow.err").open("w") as err:
            follower = subprocess.Popen(
                [SMITHERS, "events", "live", "--follow", "--json", "--db", cli.db],
                cwd=tmp_path,
                stdout=out,
                stderr=err,
                env=cli_env(),
            )
        wait_for(lambda: '"NodeStarted"' in follow_out.read_text(), "the follower to print the started task")
        assert follower.poll() is None, "--follow must keep following a running run"
        hold.unlink()
        assert runner.wait(timeout=TIMEOUT_S) == 0
        assert follower.wait(timeout=15) == 0  # ends by itself once the run has ended
    finally:
        for proc in (runner, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    streamed = [json.loads(line) for line in follow_out.read_text().splitlines()]
    assert streamed == cli.events("live")
    assert [e["type"] for e in streamed][-2:] == ["SnapshotCaptured", "RunFinished"]


# ---- approve, deny, signal, cancel ------------------------------------------------------------------


def test_cancel_a_waiting_run_cancels_it_directly(cli: Cli) -> None:
    assert cli("run", str(EXAMPLES / "approval.py"), "--run-id", "c-1", "-q").returncode == 3
    cancelled = cli("cancel", "c-1")
    assert cancelled.returncode == 2, cancelled.stderr
    assert cancelled.stdout.strip() == "run c-1: cancelled"
    store = Store(cli.db)
    try:
        run = store.get_run("c-1")
        with store.read() as tx:
            nodes = {n["node_id"]: n["state"] for n in tx.list_nodes("c-1")}
            types = [e.type for e in tx.list_events("c-1", limit=None)]
    finally:
        store.close()
    assert run is not None and run["status"] == "cancelled"
    assert run["runtime_owner_id"] is None and run["finished_at_ms"] is not None
    assert nodes == {"plan": "finished", "ship": "cancelled"}
    assert types.count("RunCancelled") == 1

    again = cli("cancel", "c-1")
    assert again.returncode == 4 and "RUN_NOT_ACTIVE" in one_error_line(again)
    late = cli("approve", "c-1", "--node", "ship")
    assert late.returncode == 4, late.stdout
    one_error_line(late)
    assert [r["status"] for r in runs_in(cli.db)] == ["cancelled"]


def test_decisions_and_signals_refuse_what_does_not_apply(cli: Cli) -> None:
    assert cli("run", str(EXAMPLES / "approval.py"), "--run-id", "d-1", "-q").returncode == 3
    wrong_node = cli("approve", "d-1", "--node", "plan")
    assert wrong_node.returncode == 4 and "plan" in one_error_line(wrong_node)
    bad_data = cli("signal", "d-1", "payment.received", "--data", "{oops")
    assert bad_data.returncode == 4 and "--data" in one_error_line(bad_data)
    blank = cli("signal", "d-1", "  ", "--data", "{}")
    assert blank.returncode == 4
    one_error_line(blank)

    approved = cli("approve", "d-1", "--node", "ship", "--note", "fine")
    assert approved.returncode == 0 and approved.stdout.strip() == "approved ship of run d-1"
    twice = cli("deny", "d-1", "--node", "ship")
    assert twice.returncode == 4
    one_error_line(twice)
    none_left = cli("approve", "d-1")
    assert none_left.returncode == 4 and "NO_PENDING_APPROVALS" in one_error_line(none_left)

    store = Store(cli.db)
    try:
        with store.read() as tx:
            approvals = [(a["status"], a["note"]) for a in tx.list_approvals("d-1")]
            signals = tx.list_signals("d-1")
    finally:
        store.close()
    assert approvals == [("approved", "fine")] and signals == []
    assert [r["status"] for r in runs_in(cli.db)] == ["waiting-event"]  # decided, not yet resumed


# ---- bad input ---------------------------------------------------------------------------------------


def _seed_state(url: str) -> dict[str, Any]:
    store = Store(url)
    try:
        with store.read() as tx:
            return {
                "runs": tx.list_runs(limit=100),
                "nodes": tx.list_nodes("seed"),
                "events": len(tx.list_events("seed", limit=None)),
            }
    finally:
        store.close()


def _seed(url: str) -> dict[str, Any]:
    """A database holding one finished run, made in this process; returns what is in it."""
    result = smithers.run(load_workflow(str(EXAMPLES / "hello.py")), {"name": "seed"}, db=url, run_id="seed")
    assert result.status == "finished"
    return _seed_state(url)


HELLO = str(EXAMPLES / "hello.py")
BAD = str(FIXTURES / "bad_workflows.py")
BAD_INPUT = [
    ("missing-file", ["run", "{tmp}/nope.py"], "nope.py"),
    ("missing-attribute", ["run", f"{HELLO}:nope"], "nope"),
    ("several-workflows", ["run", BAD], "several"),
    ("input-not-json", ["run", HELLO, "--input", "{name: ada}"], "not valid JSON"),
    ("input-not-object", ["run", HELLO, "--input", "[1, 2]"], "JSON object"),
    ("input-fails-model", ["run", f"{BAD}:strict", "--input", '{"name": "x", "count": "many"}'], "count"),
    ("duplicate-ids", ["run", f"{BAD}:dup"], "DUPLICATE_ID"),
    ("run-id-taken", ["run", HELLO, "--run-id", "seed"], "already exists"),
    ("resume-unknown", ["resume", "ghost"], "RUN_NOT_FOUND"),
    ("inspect-unknown", ["inspect", "ghost"], "RUN_NOT_FOUND"),
    ("events-unknown", ["events", "ghost"], "RUN_NOT_FOUND"),
    ("approve-unknown", ["approve", "ghost"], "RUN_NOT_FOUND"),
    ("deny-unknown", ["deny", "ghost", "--node", "x"], "RUN_NOT_FOUND"),
    ("signal-unknown", ["signal", "ghost", "go", "--data", "{}"], "RUN_NOT_FOUND"),
    ("cancel-unknown", ["cancel", "ghost"], "RUN_NOT_FOUND"),
    ("cancel-finished", ["cancel", "seed"], "RUN_NOT_ACTIVE"),
    ("approve-finished", ["approve", "seed"], "RUN_NOT_ACTIVE"),
]


@pytest.mark.parametrize(("args", "needle"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_gives_one_line_exit_4_and_leaves_the_store_intact(
    tmp_path: Path, sqlite_url: str, args: list[str], needle: str
) -> None:
    before = _seed(sqlite_url)
    proc = smithers_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--db", sqlite_url, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert needle in one_error_line(proc)
    after = _seed_state(sqlite_url)
    assert after == before
    assert sqlite_integrity(sqlite_url) == "ok"


def test_an_output_failing_its_model_fails_the_run_with_one_line(cli: Cli) -> None:
    proc = cli("run", f"{BAD}:bad_output", "--run-id", "bad-out", "-q")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "bad-out" in line and "bad" in line and "INVALID_OUTPUT" in line
    detail = cli.json("inspect", "bad-out")
    assert detail["run"]["status"] == "failed"
    assert json.loads(detail["run"]["errorJson"])["code"] == "INVALID_OUTPUT"
    states = {n["nodeId"]: (n["state"], n["output"]) for n in detail["nodes"]}
    assert states == {"ok": ("finished", {"n": 1}), "bad": ("failed", None), "never": ("pending", None)}
    assert [(a["nodeId"], a["state"]) for a in detail["attempts"]] == [("ok", "finished"), ("bad", "failed")]
    assert sqlite_integrity(cli.db) == "ok"


def test_duplicate_ids_appearing_mid_run_fail_the_run_with_one_line(cli: Cli) -> None:
    proc = cli("run", f"{BAD}:dup_later", "--run-id", "dup-later", "-q")
    assert proc.returncode == 1
    assert "DUPLICATE_ID" in one_error_line(proc)
    detail = cli.json("inspect", "dup-later")
    assert detail["run"]["status"] == "failed"
    assert json.loads(detail["run"]["errorJson"])["code"] == "DUPLICATE_ID"
    assert {n["nodeId"]: n["state"] for n in detail["nodes"]} == {"a": "finished"}
    assert sqlite_integrity(cli.db) == "ok"


@pytest.mark.parametrize("where", ["parent-is-a-file", "is-a-directory", "missing-directory-from-env"])
def test_an_unusable_database_path_gives_one_line_and_creates_nothing(tmp_path: Path, where: str) -> None:
    (tmp_path / "afile").write_text("not a directory")
    env = cli_env()
    if where == "parent-is-a-file":
        args = ["--db", str(tmp_path / "afile" / "x.db")]
    elif where == "is-a-directory":
        args = ["--db", str(tmp_path)]
    else:
        args = []
        env["SMITHERS_DB"] = str(tmp_path / "missing" / "x.db")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = smithers_cli("run", HELLO, *args, cwd=tmp_path, env=env)
    assert proc.returncode == 4, proc.stderr
    assert "DB_ERROR" in one_error_line(proc)
    listed = smithers_cli("ps", *args, cwd=tmp_path, env=env)
    assert listed.returncode == 4
    one_error_line(listed)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_an_unreachable_postgres_url_gives_one_line(tmp_path: Path) -> None:
    proc = smithers_cli("ps", "--db", "postgresql://nobody:secret@127.0.0.1:9/none", cwd=tmp_path)
    assert proc.returncode == 4
    line = one_error_line(proc)
    assert "DB_ERROR" in line and "secret" not in line


def test_resuming_a_finished_run_is_a_no_op_that_says_so(cli: Cli) -> None:
    proc = cli("run", f"{EXAMPLES / 'hello.py'}", "--input", '{"name": "ada"}', "--run-id", "done-1", "-q")
    assert proc.returncode == 0, proc.stderr
    before = cli.events("done-1")
    for args in (("resume", "done-1"), ("resume", "done-1", "--retry")):
        again = cli(*args)
        assert again.returncode == 0, again.stderr
        assert again.stdout == "" and "run done-1 is already finished; nothing to do" in again.stderr
    assert cli.events("done-1") == before  # nothing written: no second RunStarted or RunFinished
    [row] = [r for r in runs_in(cli.db) if r["run_id"] == "done-1"]
    assert row["status"] == "finished"
    # a signal to an ended run is stored; its --resume says the run did nothing with it
    signalled = cli("signal", "done-1", "late", "--resume")
    assert signalled.returncode == 0, signalled.stderr
    assert "run done-1 is already finished; nothing to do" in signalled.stderr
    assert [e["type"] for e in cli.events("done-1")] == [e["type"] for e in before] + ["SignalReceived"]


def test_resuming_a_finished_run_from_python_writes_nothing(sqlite_url: str) -> None:
    flow = load_workflow(str(EXAMPLES / "hello.py"))
    first = smithers.run(flow, {"name": "ada"}, db=sqlite_url, run_id="py-done")
    assert first.status == "finished" and not first.unchanged
    store = Store(sqlite_url)
    try:
        with store.read() as tx:
            count = len(tx.list_events("py-done"))
        again = smithers.run(flow, None, db=store, run_id="py-done", resume=True)
        assert again.unchanged and again.status == "finished" and again.outputs == first.outputs
        with store.read() as tx:
            assert len(tx.list_events("py-done")) == count
    finally:
        store.close()
