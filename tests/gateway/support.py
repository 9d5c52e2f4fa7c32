"""Helpers for gateway tests: a real gateway served on a loopback port in a background thread
(:class:`Live`), a synchronous WebSocket client (:class:`WsClient`), webhook signing and the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from smithers.gateway.server import Gateway
from tests.waiting import wait_for

__all__ = ["wait_for"]

SMITHERS = str(Path(sys.executable).parent / "smithers")
CLI_TIMEOUT_S = 60.0

OPERATOR_TOKEN = "operator-token"
READER_TOKEN = "reader-token"
TOKEN_AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {
        OPERATOR_TOKEN: {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        READER_TOKEN: {"role": "viewer", "scopes": ["run:read"], "userId": "user:reader"},
        "expired-token": {"role": "operator", "scopes": ["*"], "expiresAtMs": 1},
    },
}


HUMAN_AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {
        "op-token": {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        "alice-token": {"role": "operator", "scopes": ["approval:submit", "run:read"], "userId": "user:alice"},
        "bob-token": {"role": "operator", "scopes": ["*"], "userId": "user:bob"},
        "submit-only-token": {"role": "operator", "scopes": ["approval:submit"], "userId": "user:carol"},
        "admin-approver-token": {"role": "admin", "scopes": ["approval:submit", "run:admin"], "userId": "user:dave"},
        "anonymous-token": {"role": "operator", "scopes": ["*"]},
        "signal-token": {"role": "operator", "scopes": ["signal:submit"], "userId": "user:sig"},
    },
}
"""Token mode: who may decide which approval (allowedUsers / allowedScopes) differs per token."""

WEBHOOK_SECRET = "s3cret-key"
SCHEDULE = "0 8 * * 1-5"


class Live:
    """A gateway served by uvicorn in a background thread."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="gateway-server", daemon=True)
        self.thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("gateway did not start")
        if self._error is not None:
            raise self._error
        self.url = gateway.url
        self.ws_url = self.url.replace("http://", "ws://", 1) + "/"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def db_url(self) -> str:
        """The URL of the gateway's database (to open it again: another gateway, ``Store``, the CLI)."""
        return self.gateway.store.url

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gateway.listen("127.0.0.1", 0))
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_sync(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Call ``fn`` on the server's loop thread."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper(), timeout)

    def rpc(self, method: str, params: Any = None, *, token: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        payload = {"method": method, **body}
        if params is not None:
            payload["params"] = params
        return self.http.post("/rpc", json=payload, headers=headers)

    def ok(self, method: str, params: Any = None, *, token: str | None = None) -> Any:
        response = self.rpc(method, params, token=token)
        assert response.status_code == 200, response.text
        return response.json()["payload"]

    def wait_status(self, run_id: str, statuses: set[str], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.gateway.store.get_run(run_id)
            if row is not None and row["status"] in statuses:
                return row
            time.sleep(0.02)
        raise AssertionError(f"run {run_id} did not reach {statuses}: {row and row['status']}")

    def ws(self, **kwargs: Any) -> WsClient:
        """A WebSocket client; ``connect_now=True`` also sends ``connect`` with ``kwargs``."""
        return WsClient(self.ws_url, **kwargs)

    @staticmethod
    def connect_params(**kwargs: Any) -> dict[str, Any]:
        return connect_params_for(**kwargs)

    def stop(self) -> None:
        self.http.close()
        if self.thread.is_alive():
            try:
                self.call(self.gateway.close(), timeout=20)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
        self.gateway.store.close()


class WsClient:
    """A synchronous WebSocket client that keeps events apart from responses."""

    def __init__(self, url: str, connect_now: bool = False, **connect_params: Any):
        self.conn: ClientConnection = connect(url, open_timeout=10, close_timeout=1, max_size=None, legacy=True)
        self.events: list[dict[str, Any]] = []
        self.challenge = self.recv()
        self._ids = 0
        if connect_now:
            self.hello = self.request("connect", connect_params_for(**connect_params))

    def send(self, frame: Any) -> None:
        self.conn.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        message = self.conn.recv(timeout=timeout)
        value: dict[str, Any] = json.loads(message)
        return value

    def response(self, frame_id: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next response frame (with ``frame_id`` when given); events seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame.get("type") == "event":
                self.events.append(frame)
                continue
            if frame_id is None or frame.get("id") == frame_id:
                return frame

    def request(
        self, method: str, params: Any = None, frame_id: str | None = None, *, any_id: bool = False
    ) -> dict[str, Any]:
        """Send a request; return its response (or, with ``any_id``, the next response at all)."""
        self._ids += 1
        frame_id = frame_id or f"r{self._ids}"
        frame: dict[str, Any] = {"type": "req", "id": frame_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.send(frame)
        return self.response(None if any_id else frame_id)

    def event(
        self, name: str, timeout: float = 10, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The next event called ``name`` (from those already seen, then the socket)."""
        for index, frame in enumerate(self.events):
            if frame["event"] == name and (where is None or where(frame)):
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame.get("type") == "event" and frame["event"] == name and (where is None or where(frame)):
                return frame
            if frame.get("type") == "event":
                self.events.append(frame)

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every frame that arrives within ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def close(self) -> None:
        self.conn.close()


def connect_params_for(token: str | None = None, subscribe: Any = None, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "minProtocol": 1,
        "maxProtocol": 1,
        "client": {"id": "test", "version": "1", "platform": "py"},
    }
    if token is not None:
        params["auth"] = {"token": token}
    if subscribe is not None:
        params["subscribe"] = subscribe
    params.update(extra)
    return params


# -- helpers ---------------------------------------------------------------------------------------
def error_of(response: Any) -> dict[str, Any]:
    """The ``error`` of a failed RPC response (HTTP)."""
    body = response.json()
    assert body["ok"] is False, body
    return dict(body["error"])


def sign(body: bytes, secret: str = WEBHOOK_SECRET, prefix: str = "sha256=") -> str:
    return prefix + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_post(
    live: Live,
    key: str,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    header: str = "x-hub-signature-256",
    signature: str | None = None,
    prefix: str = "sha256=",
) -> Any:
    """POST a (by default correctly signed) delivery to ``/webhooks/{key}``."""
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        header: signature if signature is not None else sign(body, prefix=prefix),
    }
    return live.http.post(f"/webhooks/{key}", content=body, headers=headers)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``smithers`` command line in a subprocess."""
    env = dict(os.environ)
    env.pop("SMITHERS_DB", None)
    return subprocess.run(
        [SMITHERS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# -- a raw WebSocket client -----------------------------------------------------------------------
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x11\x22\x33\x44"


def frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + body


def request(method: str, params: Any = None, frame_id: str = "r1") -> bytes:
    body: dict[str, Any] = {"type": "req", "id": frame_id, "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


class RawClient:
    """A WebSocket client on a plain socket: exact control over the bytes and their timing."""

    def __init__(self, live: Live):
        host, port = live.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.buf = b""
        try:
            self.sock.sendall(handshake)
            while b"\r\n\r\n" not in self.buf:
                self.buf += self._recv()
            status, self.buf = self.buf.split(b"\r\n\r\n", 1)
            assert status.startswith(b"HTTP/1.1 101"), status
            self.challenge = self.read_message()
        except BaseException:
            self.sock.close()
            raise

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the gateway")
        return data

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self.buf += self._recv()

    def read_frame(self) -> tuple[int, bytes]:
        self._need(2)
        first, second = self.buf[0], self.buf[1]
        assert not second & 0x80, "server frames are not masked"
        size, head = second & 0x7F, 2
        if size == 126:
            self._need(4)
            size, head = struct.unpack("!H", self.buf[2:4])[0], 4
        elif size == 127:
            self._need(10)
            size, head = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(head + size)
        payload, self.buf = self.buf[head : head + size], self.buf[head + size :]
        assert first & 0x80, "the gateway sends whole messages"
        return first & 0x0F, payload

    def read_message(self) -> dict[str, Any]:
        opcode, payload = self.read_frame()
        assert opcode == OP_TEXT, (opcode, payload)
        value: dict[str, Any] = json.loads(payload)
        return value

    def response(self) -> dict[str, Any]:
        while True:
            message = self.read_message()
            if message["type"] == "res":
                return message

    def close_code(self) -> int:
        """Read until the gateway's close frame; its status code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, token: str | None = None) -> None:
        params: dict[str, Any] = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "raw"}}
        if token is not None:
            params["auth"] = {"token": token}
        self.send(frame(request("connect", params, "c")))
        hello = self.response()
        assert hello["ok"] is True and hello["id"] == "c", hello

    def close(self) -> None:
        self.sock.close()


def waiting_node(run_id: str, node_id: str) -> dict[str, Any]:
    """A node row waiting for approval (an approval is pending only while its node waits)."""
    return {
        "run_id": run_id,
        "node_id": node_id,
        "iteration": 0,
        "state": "waiting-approval",
        "updated_at_ms": 0,
        "output_table": "approval",
    }
