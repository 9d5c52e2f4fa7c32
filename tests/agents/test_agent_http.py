"""``Model(..., base_url=...)`` against a real OpenAI-compatible HTTP server on loopback, started
by the test: the whole path through pydantic-ai and the OpenAI client, with streaming, usage,
schema retries continuing the conversation, and a refused key tripping the auth breaker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import BaseModel

import smithers
from smithers import Task, workflow
from smithers.agents import Model
from smithers.engine import events as ev
from smithers.store.store import Store
from tests.agents.scripted import attempts, events

GOOD_KEY = "sk-good"


class Verdict(BaseModel):
    ok: bool
    reason: str


class ChatServer:
    """A tiny ``/v1/chat/completions``: answers from a script, streamed as server-sent events."""

    def __init__(self, answers: list[str]):
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "not found", "type": "not_found"}})
                if self.headers.get("Authorization") != f"Bearer {GOOD_KEY}":
                    error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
                    return self._json(401, {"error": {**error, "code": "invalid_api_key"}})
                server.requests.append(body)
                text = server.answers[min(len(server.requests) - 1, len(server.answers) - 1)]
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                if not body.get("stream"):
                    message = {"role": "assistant", "content": text}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    return self._json(200, {**self._head(body), "object": "chat.completion", "choices": [choice]})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                pieces = [text[i : i + 6] for i in range(0, len(text), 6)]
                for index, piece in enumerate(pieces):
                    delta = {"content": piece, **({"role": "assistant"} if index == 0 else {})}
                    self._event({**self._head(body), "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                self._event({**self._head(body), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                self._event({**self._head(body), "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")

            def _head(self, body: dict[str, Any]) -> dict[str, Any]:
                return {"id": f"c{len(server.requests)}", "created": 0, "model": body["model"], "object": "chunk"}

            def _event(self, data: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
                self.wfile.flush()

            def _json(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
