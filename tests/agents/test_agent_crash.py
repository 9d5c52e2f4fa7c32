"""SIGKILL of the process running an agent call, then resume, through the ``smithers`` CLI, on
SQLite and PostgreSQL: the interrupted call is a cancelled attempt whose stream and transcript stay,
its CLI dies with the runner, the resume ends what the CLI left running and runs a new attempt that
continues the CLI's session, and ``smithers chat`` shows both attempts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from smithers.engine import events as ev
from smithers.store.store import Store
from tests.agents.scripted import attempts, events
from tests.waiting import wait_for

SMITHERS = str(Path(sys.executable).parent / "smithers")
FLOW = Path(__file__).resolve().parent / "fakes" / "agent_flow.py"
GOOD = '{"summary": "fixed", "files": ["a.py", "b.py"]}'


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigkill_mid_call_then_resume(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    child = tmp_path / "child.pid"
    scenario = tmp_path / "scenario.json"
    turns = [{"text": "halfway through the fix", "child": str(child), "sleep": 600}, {"text": GOOD}]
    scenario.write_text(json.dumps({"log": str(log), "turns": turns}))
    env = {**os.environ, "FAKE_AGENT_SCENARIO": str(scenario)}
    env.pop("SMITHERS_DB", None)
    run = [SMITHERS, "run", f"{FLOW}:agent_fix", "--input", '{"issue": 7}', "--run-id", "crash-1", "--db", db_url]
    store = Store(db_url)
    runner = subprocess.Popen(run, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    leftover: list[int] = []
    try:

        def streamed() -> bool:
            return any("halfway" in o["text"] for o in events(store, "crash-1", ev.NODE_OUTPUT))

        wait_for(lambda: child.exists() and child.read_text() and streamed(), "the agent to be mid-call", timeout=60)
        leftover.append(int(child.read_text()))
        cli_pid = json.loads(log.read_text().splitlines()[0])["pid"]
        runner.send_signal(signal.SIGKILL)
        assert runner.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not running(cli_pid), "the CLI to die with its runner", timeout=10)

        resumed = subprocess.run(
            [SMITHERS, "resume", "crash-1", "--db", db_url],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        rows = attempts(store, "crash-1", "fix")
        assert [r["state"] for r in rows] == ["cancelled", "finished"]
        assert json.loads(rows[0]["error_json"])["code"] == "ATTEMPT_ABANDONED"
        assert json.loads(rows[1]["meta_json"])["agentId"] == "claude-code"
        with store.read() as tx:
            out = tx.get_output("crash-1", "after", 0)
        assert out is not None and json.loads(out["payload_json"]) == {"files": 2}
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(calls) == 2  # one call per attempt, none after it finished
        texts = [(o["attempt"], o["text"]) for o in events(store, "crash-1", ev.NODE_OUTPUT)]
        assert any(a == 1 and "halfway" in t for a, t in texts)  # the interrupted call's stream is kept
        assert any(a == 2 and "fixed" in t for a, t in texts)

        # what the CLI left running died at the resume; the new attempt continues the CLI's session
        assert not running(leftover[0])
        interrupted = json.loads(rows[0]["meta_json"])
        assert interrupted["sessionId"] == "claude-session-0"
        assert interrupted["prompt"].startswith("Fix issue 7")
        assert interrupted["process"]["pgid"] == cli_pid
        argv = calls[1]["argv"]
        assert argv[argv.index("--resume") + 1] == "claude-session-0"
        assert argv[argv.index("-p") + 1].startswith("This continues your conversation on this task")

        chat = subprocess.run(
            [SMITHERS, "chat", "crash-1", "fix", "--db", db_url],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert chat.returncode == 0, chat.stderr
        assert "attempt 1 · claude-code · cancelled" in chat.stdout
        assert "attempt 2 · claude-code · finished" in chat.stdout
        assert "Fix issue 7" in chat.stdout and "ATTEMPT_ABANDONED" in chat.stdout
        assert chat.stdout.count("prompt (turn 0)") == 2 and "session claude-session-0" in chat.stdout
        as_json = subprocess.run(
            [SMITHERS, "chat", "crash-1", "--json", "--db", db_url],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        first, second = json.loads(as_json.stdout)
        assert (first["attempt"], first["state"], second["state"]) == (1, "cancelled", "finished")
        assert "halfway" in "".join(piece["text"] for piece in first["output"])
        assert first["turns"][0]["prompt"].startswith("Fix issue 7") and "answer" not in first["turns"][0]
        assert second["turns"][0]["answer"] == GOOD and second["usage"]["inputTokens"] == 10
    finally:
        if runner.poll() is None:
            runner.kill()
        for pid in leftover:  # should the resume have failed to end it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        store.close()
