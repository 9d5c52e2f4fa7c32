"""A real gateway on a free loopback port (uvicorn in a background thread), real clients.

``start_gateway(**options)`` starts a :class:`~smithers.gateway.server.Gateway` over a fresh
SQLite file with the example workflows below and returns a :class:`Live` handle; every server
is closed at the end of the test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from websockets.sync.client import ClientConnection, connect

from smithers import Approval, Parallel, Sequence, Task, Timer, WaitForEvent, workflow
from smithers.gateway.server import Gateway
from smithers.store.store import Store

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


class Greeting(BaseModel):
    message: str


class Named(BaseModel):
    name: str


class Count(BaseModel):
    n: int


@workflow("hello", name="Hello", description="Says hello")
def hello(ctx: Any) -> Any:
    return Sequence(Task("greet", output=Greeting, run=lambda c: Greeting(message=f"hello {c.input.get('name')}")))


@workflow("typed", input=Named)
def typed(ctx: Any) -> Any:
    return Task("greet", output=Greeting, run=lambda c: Greeting(message=c.input["name"]))


async def _sleep_forever(ctx: Any) -> Greeting:
    await asyncio.sleep(3600)
    return Greeting(message="never")


@workflow("slow")
def slow(ctx: Any) -> Any:
    return Task("wait", output=Greeting, run=_sleep_forever)


def _boom(ctx: Any) -> Greeting:
    raise RuntimeError("boom")


@workflow("failing")
def failing(ctx: Any) -> Any:
    return Task("explode", output=Greeting, run=_boom)


def _chatty_task(index: int, delay_s: float) -> Callable[[Any], Coroutine[Any, Any, Count]]:
    async def run(ctx: Any) -> Count:
        await asyncio.sleep(delay_s)
        return Count(n=index)

    return run


@workflow("chatty")
def chatty(ctx: Any) -> Any:
    """``input.tasks`` tasks (default 10), each giving node.started + node.finished, ``input.delay`` apart."""
    count = int(ctx.input.get("tasks", 10))
    delay = float(ctx.input.get("delay", 0))
    return Parallel(*[Task(f"t{i}", output=Count, run=_chatty_task(i, delay)) for i in range(count)])


@workflow("gate")
def gate(ctx: Any) -> Any:
    return Sequence(Approval("ok", title="Ship it?"), Task("after", output=Greeting, value=Greeting(message="done")))


@workflow("waiter")
def waiter(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Greeting, value=Greeting(message="go")))


@workflow("sleeper")
def sleeper(ctx: Any) -> Any:
    return Sequence(Timer("nap", duration_ms=300), Task("after", output=Greeting, value=Greeting(message="awake")))


WORKFLOWS = [hello, typed, slow, failing, chatty, gate, waiter, sleeper]


class Live:
    """A gateway served by uvicorn in a background thread."""

    def __init__(self, gateway: Gateway, db_path: Path):
        self.gateway = gateway
        self.db_path = db_path
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


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite file; each gateway starts from a copy (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    Store(str(path)).close()
    return path


@pytest.fixture
def start_gateway(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db_path: Path | None = None, **options: Any) -> Live:
        if db_path is None:
            db_path = tmp_path / f"gateway-{len(started)}.db"
            shutil.copyfile(migrated_db, db_path)
        gateway = Gateway.for_workflows(WORKFLOWS, db=str(db_path), **options)
        live = Live(gateway, db_path)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture
def live(start_gateway: Callable[..., Live]) -> Live:
    """An open gateway (no auth) with the example workflows."""
    return start_gateway()


@pytest.fixture
def token_live(start_gateway: Callable[..., Live]) -> Live:
    """A token-mode gateway (see :data:`TOKEN_AUTH`)."""
    return start_gateway(auth=TOKEN_AUTH)


def open_store(live: Live) -> Store:
    return live.gateway.store
