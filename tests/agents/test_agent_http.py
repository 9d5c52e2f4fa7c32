"""``Model(..., base_url=...)`` against a real OpenAI-compatible HTTP server on loopback, started
by the test: the whole path through pydantic-ai and the OpenAI client, with streaming, usage,
schema retries continuing the conversation, and a refused key tripping the auth breaker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import smithers
from smithers import Task, workflow
from smithers.agents import Model
from smithers.engine import events as ev
from smithers.store.store import Store
from tests.agents.chat_server import GOOD_KEY, ChatServer
from tests.agents.scripted import attempts, events


class Verdict(BaseModel):
    ok: bool
    reason: str


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer(['{"ok": "maybe"}', 'Sure.\n```json\n{"ok": true, "reason": "tests pass"}\n```'])
    yield server
    server.close()


def judge_flow(agent: Any) -> smithers.Workflow:
    @workflow("judge")
    def judge(ctx: smithers.Ctx) -> Any:
        return Task("judge", output=Verdict, agent=agent, prompt=lambda c: f"Is change {c.input['id']} fine?")

    return judge


def test_openai_compatible_server_with_a_schema_retry(store: Store, chat: ChatServer) -> None:
    agent = Model("openai:local-llm", base_url=chat.url, api_key=GOOD_KEY)
    result = smithers.run(judge_flow(agent), {"id": 5}, db=store)

    assert result.status == "finished", result.error
    assert result.output == {"ok": True, "reason": "tests pass"}
    assert [r["model"] for r in chat.requests] == ["local-llm", "local-llm"]
    assert all(r["stream"] for r in chat.requests)
    first, second = (r["messages"] for r in chat.requests)
    assert first[-1]["role"] == "user" and first[-1]["content"].startswith("Is change 5 fine?")
    assert '"reason"' in first[-1]["content"]  # the schema went with the prompt
    # the correction continues the same conversation: the refused answer is in the history
    assert [m["role"] for m in second][-3:] == ["user", "assistant", "user"]
    assert second[-2]["content"] == '{"ok": "maybe"}'
    assert second[-1]["content"].startswith("Your answer could not be used")

    [row] = attempts(store, result.run_id, "judge")
    info = json.loads(row["meta_json"])
    assert info["agentId"] == f"model:openai:local-llm@{chat.url}"
    assert info["usage"]["inputTokens"] == 22 and info["usage"]["outputTokens"] == 14
    assert info["agentModel"] == "local-llm"
    usage = events(store, result.run_id, ev.TOKEN_USAGE_REPORTED)
    assert [(u["inputTokens"], u["outputTokens"], u["model"]) for u in usage] == [(11, 7, "local-llm")] * 2
    text = "".join(o["text"] for o in events(store, result.run_id, ev.NODE_OUTPUT))
    assert text == '{"ok": "maybe"}' + row["response_text"]


def test_a_refused_key_trips_the_breaker_and_the_chain_moves_on(store: Store, chat: ChatServer) -> None:
    chat.answers = ['{"ok": false, "reason": "typo"}']
    bad = Model("local-llm", base_url=chat.url, api_key="sk-bad", id="bad-key")
    good = Model("local-llm", base_url=chat.url, api_key=GOOD_KEY, id="good-key")
    result = smithers.run(judge_flow([bad, good]), {"id": 6}, db=store)

    assert result.status == "finished", result.error
    assert result.output == {"ok": False, "reason": "typo"}
    rows = attempts(store, result.run_id, "judge")
    assert [json.loads(r["meta_json"])["agentId"] for r in rows] == ["bad-key", "good-key"]
    error = json.loads(rows[0]["error_json"])
    assert error["code"] == "AGENT_AUTH_FAILED" and "Incorrect API key" in error["message"]
    assert len(chat.requests) == 1  # only the good key's request reached the script
