"""A tiny OpenAI-compatible server on loopback for the tests: ``/v1/chat/completions`` answers from a
script, streamed as server-sent events (or as one JSON body), and refuses keys other than
:data:`GOOD_KEY` with a 401 as OpenAI does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD_KEY = "sk-good"


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
