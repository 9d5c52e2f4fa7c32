"""CLI coding agents (Claude Code, Codex, Gemini CLI) through the real engine, on SQLite and
PostgreSQL, against small executable scripts that speak each CLI's stream-JSON (tests/agents/fakes)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import smithers
from smithers import Task, workflow
from smithers.agents import AgentCall, ClaudeCode, CliAgent, Codex, Gemini
from smithers.engine import events as ev
from smithers.store.store import Store
from tests.agents.scripted import attempts, events
from tests.waiting import wait_for

FAKES = Path(__file__).resolve().parent / "fakes"
CLIS: dict[str, type[CliAgent]] = {"claude": ClaudeCode, "codex": Codex, "gemini": Gemini}
RESUME = {"claude": "--resume", "gemini": "--resume", "codex": "resume"}


class Fix(BaseModel):
    summary: str
    files: list[str]


GOOD = '{"summary": "fixed the bug", "files": ["app.py"]}'


class Fake:
    """A fake CLI with its scenario file and call log in ``tmp``."""

    def __init__(self, tmp: Path, cli: str, turns: list[dict[str, Any]], **options: Any):
        tmp.mkdir(parents=True, exist_ok=True)
        self.cli = cli
        self.log = tmp / f"{cli}-calls.jsonl"
        scenario = tmp / f"{cli}-scenario.json"
        scenario.write_text(json.dumps({"log": str(self.log), "turns": turns}))
        command = [sys.executable, str(FAKES / f"{cli}.py")]
        self.agent = CLIS[cli](command=command, env={"FAKE_AGENT_SCENARIO": str(scenario)}, **options)

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


def fix_flow(agent: Any, workdir: Path, **options: Any) -> smithers.Workflow:
    @workflow("fix", workdir=workdir)
    def fix(ctx: smithers.Ctx) -> Any:
        return Task("fix", output=Fix, agent=agent, prompt=lambda c: f"Fix issue {c.input['issue']}", **options)

    return fix


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_cli_agent_answers_streams_and_continues_its_session(store: Store, tmp_path: Path, cli: str) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    fake = Fake(
        tmp_path,
        cli,
        [
            {"text": "I looked around; no JSON yet.", "tools": [{"name": "Bash", "input": {"command": "ls"}}]},
            {
                "text": f"Done:\n```json\n{GOOD}\n```",
                "tools": [{"name": "Edit", "ok": False}],
                "usage": {"in": 7, "out": 3},
            },
        ],
    )
    result = smithers.run(fix_flow(fake.agent, work), {"issue": 42}, db=store)

    assert result.status == "finished", result.error
    assert result.output == {"summary": "fixed the bug", "files": ["app.py"]}
    first, second = fake.calls()
    assert first["cwd"] == second["cwd"] == str(work)
    assert any("Fix issue 42" in a for a in first["argv"]) and any('"summary"' in a for a in first["argv"])
    assert RESUME[cli] not in first["argv"]
    # the schema retry resumes the CLI's own session with the correction
    session = first["argv"] and second["argv"][second["argv"].index(RESUME[cli]) + 1]
    assert session.endswith("-0")
    assert any(a.startswith("Your answer could not be used") for a in second["argv"])

    [row] = attempts(store, result.run_id, "fix")
    info = json.loads(row["meta_json"])
    assert info["agentId"] == fake.agent.id and info["schemaRetries"] == 1 and info["sessionId"] == session
    assert info["usage"]["inputTokens"] == 17 and info["usage"]["outputTokens"] == 8
    assert "```json" in row["response_text"]
    text = "".join(o["text"] for o in events(store, result.run_id, ev.NODE_OUTPUT) if o["stream"] == "stdout")
    assert "I looked around" in text and "fixed the bug" in text
    started = events(store, result.run_id, ev.TOOL_CALL_STARTED)
    finished = events(store, result.run_id, ev.TOOL_CALL_FINISHED)
    assert [s["seq"] for s in started] == [1, 2] and [f["seq"] for f in finished] == [1, 2]
    assert [f["status"] for f in finished] == ["success", "error"]
    assert started[0]["toolName"] == ("shell" if cli == "codex" else "Bash")
    assert started[1]["toolName"] == ("shell" if cli == "codex" else "Edit")
    with store.read() as tx:
        rows = tx.list_tool_calls(result.run_id, "fix")
    assert [(r["attempt"], r["seq"], r["tool_name"], r["status"]) for r in rows] == [
        (1, 1, started[0]["toolName"], "success"),
        (1, 2, started[1]["toolName"], "error"),
    ]
    assert all(r["started_at_ms"] <= r["finished_at_ms"] for r in rows)
    assert json.loads(rows[0]["input_json"])["command"] == "ls"
    assert rows[1]["error_json"] is not None and rows[0]["error_json"] is None
    usage = events(store, result.run_id, ev.TOKEN_USAGE_REPORTED)
    assert [(u["inputTokens"], u["outputTokens"]) for u in usage] == [(10, 5), (7, 3)]
    if cli == "claude":
        assert usage[0]["costUsd"] == 0.0125 and usage[0]["cacheReadTokens"] == 3 and usage[0]["model"] == "claude-fake"


def test_a_cli_auth_failure_trips_the_breaker_and_the_next_cli_answers(store: Store, tmp_path: Path) -> None:
    claude = Fake(tmp_path, "claude", [{"error": "Invalid API key · Please run /login"}])
    codex = Fake(tmp_path, "codex", [{"text": GOOD}])
    result = smithers.run(fix_flow([claude.agent, codex.agent], tmp_path), {"issue": 1}, db=store)

    assert result.status == "finished", result.error
    rows = attempts(store, result.run_id, "fix")
    assert [json.loads(r["meta_json"])["agentId"] for r in rows] == ["claude-code", "codex"]
    error = json.loads(rows[0]["error_json"])
    assert error["code"] == "AGENT_AUTH_FAILED" and "Invalid API key" in error["message"]


def test_a_failing_cli_reports_its_exit_status_and_stderr(store: Store, tmp_path: Path) -> None:
    gemini = Fake(tmp_path, "gemini", [{"exit": 3, "stderr": "segfault in the matrix\n"}])
    result = smithers.run(fix_flow(gemini.agent, tmp_path), {"issue": 2}, db=store)
    assert result.status == "failed"
    [row] = attempts(store, result.run_id, "fix")
    error = json.loads(row["error_json"])
    assert error["code"] == "AGENT_FAILED"
    assert "exited with status 3" in error["message"] and "segfault in the matrix" in error["message"]
    stderr = [o["text"] for o in events(store, result.run_id, ev.NODE_OUTPUT) if o["stream"] == "stderr"]
    assert "".join(stderr) == "segfault in the matrix\n"


def test_a_missing_cli_says_so(store: Store, tmp_path: Path) -> None:
    agent = ClaudeCode(command=[str(tmp_path / "no-such-claude")])
    result = smithers.run(fix_flow(agent, tmp_path), {"issue": 3}, db=store)
    assert result.status == "failed"
    [row] = attempts(store, result.run_id, "fix")
    error = json.loads(row["error_json"])
    assert error["code"] == "AGENT_FAILED" and "was not found" in error["message"]


def test_cancel_kills_the_whole_process_group(store: Store, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    fake = Fake(tmp_path, "codex", [{"text": "working on it", "child": str(pidfile), "sleep": 600}])

    async def main() -> smithers.RunResult:
        cancel = asyncio.Event()
        run = asyncio.create_task(
            smithers.run_async(fix_flow(fake.agent, tmp_path), {"issue": 4}, db=store, cancel=cancel)
        )
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        cancel.set()
        return await asyncio.wait_for(run, 30)

    started = time.monotonic()
    result = asyncio.run(main())
    assert result.status == "cancelled"
    assert time.monotonic() - started < 20
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), "the CLI's child to be gone", timeout=10)
    [row] = attempts(store, result.run_id, "fix")
    assert row["state"] == "cancelled" and json.loads(row["meta_json"])["agentId"] == "codex"
    text = "".join(o["text"] for o in events(store, result.run_id, ev.NODE_OUTPUT))
    assert "working on it" in text


def test_timeout_kills_the_whole_process_group(store: Store, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    fake = Fake(tmp_path, "claude", [{"text": "starting a long job", "child": str(pidfile), "sleep": 600}])
    result = smithers.run(fix_flow(fake.agent, tmp_path, timeout_ms=1500), {"issue": 5}, db=store)
    assert result.status == "failed"
    [row] = attempts(store, result.run_id, "fix")
    assert json.loads(row["error_json"])["code"] == "TASK_TIMEOUT"
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), "the CLI's child to be gone", timeout=10)


def test_children_left_behind_by_a_finished_cli_are_ended(store: Store, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    fake = Fake(tmp_path, "gemini", [{"text": GOOD, "child": str(pidfile)}], kill_grace_ms=300)
    result = smithers.run(fix_flow(fake.agent, tmp_path), {"issue": 6}, db=store)
    assert result.status == "finished", result.error
    assert not alive(int(pidfile.read_text()))


def _call(prompt: str = "do it", session: str | None = None) -> AgentCall:
    return AgentCall(
        prompt=prompt,
        schema=None,
        cwd=os.getcwd(),
        timeout_ms=None,
        abort=asyncio.Event(),
        on_output=lambda text, stream: None,
        on_tool_call=lambda call: None,
        on_usage=lambda usage: None,
        session_id=session,
    )


def test_command_lines() -> None:
    assert ClaudeCode().argv(_call()) == [
        "claude", "-p", "do it", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"
    ]  # fmt: skip
    explicit = ClaudeCode(tools="explicit-only", allowed_tools=["Read", "Grep"], model="opus")
    assert explicit.argv(_call(session="s1")) == [
        "claude", "-p", "do it", "--output-format", "stream-json", "--verbose", "--resume", "s1", "--model", "opus",
        "--allowedTools", "Read,Grep",
    ]  # fmt: skip
    assert Codex(args=["--profile", "ci"]).argv(_call("-x", "t1")) == [
        "codex", "exec", "--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
        "--profile", "ci", "resume", "t1", " -x",
    ]  # fmt: skip
    assert Codex(tools="explicit-only").argv(_call())[-3:] == ["--sandbox", "read-only", "do it"]
    assert Gemini(model="gemini-2.5-pro").argv(_call(session="g1")) == [
        "gemini", "--output-format", "stream-json", "--resume", "g1", "--model", "gemini-2.5-pro", "--yolo",
        "-p", "do it",
    ]  # fmt: skip
    with pytest.raises(smithers.SmithersError, match="tools must be"):
        Gemini(tools="some")  # type: ignore[arg-type]
