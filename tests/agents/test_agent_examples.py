"""The agent examples (examples/code_review.py, examples/research.py) end to end through the
``smithers`` command line, on SQLite and PostgreSQL: Claude Code is the fake of tests/agents/fakes
($SMITHERS_CLAUDE), the model API a loopback OpenAI-compatible server ($SMITHERS_MODEL_BASE_URL)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smithers.store.store import Store
from tests.agents.chat_server import GOOD_KEY, ChatServer
from tests.agents.scripted import attempts

SMITHERS = str(Path(sys.executable).parent / "smithers")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAKES = Path(__file__).resolve().parent / "fakes"


class Setup:
    def __init__(self, tmp: Path, db: str, chat: ChatServer, claude_turns: list[dict[str, Any]]):
        self.tmp = tmp
        self.db = db
        self.log = tmp / "claude-calls.jsonl"
        scenario = tmp / "claude.json"
        scenario.write_text(json.dumps({"log": str(self.log), "turns": claude_turns}))
        self.env = {
            **os.environ,
            "FAKE_AGENT_SCENARIO": str(scenario),
            "SMITHERS_CLAUDE": shlex.join([sys.executable, str(FAKES / "claude.py")]),
            "SMITHERS_MODEL": "openai:local-llm",
            "SMITHERS_MODEL_BASE_URL": chat.url,
            "SMITHERS_MODEL_API_KEY": GOOD_KEY,
        }
        self.env.pop("SMITHERS_DB", None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SMITHERS, *args, "--db", self.db],
            cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def claude_prompts(self) -> list[str]:
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [call["argv"][call["argv"].index("-p") + 1] for call in calls]


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer([])
    yield server
    server.close()


def outputs(db: str, run_id: str) -> dict[tuple[str, int], Any]:
    store = Store(db)
    try:
        with store.read() as tx:
            return {(o["node_id"], o["iteration"]): json.loads(o["payload_json"]) for o in tx.list_outputs(run_id)}
    finally:
        store.close()


def test_code_review_example(db_url: str, tmp_path: Path, chat: ChatServer) -> None:
    chat.answers = ['{"text": "Fix login: sessions survive a restart."}']
    review = '{"verdict": "approve", "risks": ["session fixation"]}'
    setup = Setup(tmp_path, db_url, chat, [{"text": f"Looks fine.\n```json\n{review}\n```"}])
    change = {"title": "Fix login", "diff": "--- a/login.py\n+++ b/login.py\n"}
    waiting = setup.cli("run", str(EXAMPLES / "code_review.py"), "--input", json.dumps(change), "--run-id", "cr-1")
    assert waiting.returncode == 3, waiting.stderr  # waits for the approval
    [prompt] = setup.claude_prompts()
    assert prompt.startswith("Review this change for bugs and risks.\nTitle: Fix login") and '"verdict"' in prompt
    [call] = [json.loads(line) for line in setup.log.read_text().splitlines()]
    assert "--allowedTools" in call["argv"] and "--dangerously-skip-permissions" not in call["argv"]

    done = setup.cli("approve", "cr-1", "--note", "ship it", "--resume")
    assert done.returncode == 0, done.stderr
    out = outputs(db_url, "cr-1")
    assert out[("review", 0)] == {"verdict": "approve", "risks": ["session fixation"]}
    assert out[("summary", 0)] == {"text": "Fix login: sessions survive a restart."}
    assert "session fixation" in chat.requests[0]["messages"][-1]["content"]


def test_research_loop_example(db_url: str, tmp_path: Path, chat: ChatServer) -> None:
    chat.answers = [
        '{"answer": "The build is slow because of X.", "sources": []}',
        '{"answer": "X, see build.py line 3.", "sources": ["build.py"]}',
    ]
    critiques = [
        {"text": '{"approved": false, "feedback": "cite the code"}'},
        {"text": '{"approved": true, "feedback": "good"}'},
    ]
    setup = Setup(tmp_path, db_url, chat, critiques)
    done = setup.cli(
        "run", str(EXAMPLES / "research.py"), "--input", '{"question": "Why is the build slow?"}', "--run-id", "rs-1"
    )
    assert done.returncode == 0, done.stderr
    out = outputs(db_url, "rs-1")
    assert out[("critique", 0)]["approved"] is False and out[("critique", 1)]["approved"] is True
    assert out[("draft", 1)] == {"answer": "X, see build.py line 3.", "sources": ["build.py"]}
    assert ("draft", 2) not in out  # the loop ended when the critic approved
    second_draft = chat.requests[1]["messages"][-1]["content"]
    assert "A reviewer said of your last draft: cite the code" in second_draft
    assert "Draft answer: The build is slow because of X." in setup.claude_prompts()[0]
    store = Store(db_url)
    try:
        assert [json.loads(a["meta_json"])["agentId"] for a in attempts(store, "rs-1", "draft")] == [
            f"model:openai:local-llm@{chat.url}"
        ] * 2
    finally:
        store.close()
