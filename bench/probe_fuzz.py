"""Fuzz probe: fire fuzzed RPC requests at a gateway in a child process over HTTP and WebSocket.

    .venv/bin/python bench/probe_fuzz.py [--requests 12000] [--seed N] [--workers 8]
                                         [--mutating 0.25] [--timeout 30] [--examples 10]

The gateway runs in a child process (bench/child_gateway.py) on a fresh SQLite database, in token
mode (an operator token with every scope, a reader token with ``run:read``), serving small
workflows: hello, typed (an input model), gate (an approval), waiter (a signal wait), failing and
slow. It is seeded with one run of each in its resting state and two yearly schedules.

``--requests`` requests are then sent by ``--workers`` HTTP clients and as many WebSocket clients,
every method the gateway has (plus ``connect`` and unknown names), each with params drawn from every
JSON type: null, booleans, huge / negative / fractional numbers, strings with lone surrogates (sent
as ``\\ud800`` escapes), long and empty strings, deep nesting, wide arrays and objects, the
protocol's keys with realistic or hostile values; and raw invalid UTF-8 as a body or binary frame.
Requests go with no token, a bogus one, the reader's and the operator's (WebSocket: before and after
``connect``).

Phase 1 (``1 - --mutating`` of the requests) makes only calls that cannot legitimately change
stored data (mutating methods keyed by a run or cron id get an id that does not exist): the stored
runs, approvals, signals and schedules must come out identical. Phase 2 fuzzes the mutating methods
for real: every run that appears must be one a successful call answered with (or one a schedule
fired), a refused launch with a given run id must leave no such run, and no more signals or
decisions may be stored than calls that succeeded.

Prints the total requests, the answers by HTTP status and by WebSocket error code, the number of
5xx answers (HTTP status >= 500; WebSocket ``SERVER_ERROR`` or response id ``"server"``), the
number of requests left unanswered (no response within ``--timeout`` seconds, or the connection
dropped first), and whether stored runs changed except by valid calls, with up to ``--examples``
examples of each problem. Exits 1 if there was any 5xx answer, unanswered request or unexplained
stored change, 0 otherwise. The requests are drawn from ``--seed`` (printed; random by default), so
a run can be repeated; the interleaving of concurrent clients depends on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sqlite3
import sys
import time
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from child_gateway import HOST, child_gateway  # noqa: E402

from smithers import Approval, Sequence, Task, WaitForEvent, workflow  # noqa: E402
from smithers.gateway.server import Gateway  # noqa: E402
from smithers.store import schema  # noqa: E402

OPERATOR = "probe-operator"
READER = "probe-reader"
AUTH = {
    "mode": "token",
    "tokens": {
        OPERATOR: {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        READER: {"role": "viewer", "scopes": ["run:read"], "userId": "user:reader"},
    },
}
TOKENS = [None, "bogus-token", READER, OPERATOR]


# -- the child's workflows -------------------------------------------------------------------------
class Out(BaseModel):
    message: str


class Named(BaseModel):
    name: str


@workflow("hello")
def hello(ctx: Any) -> Any:
    return Task("greet", output=Out, value=Out(message="hi"))


@workflow("typed", input=Named)
def typed(ctx: Any) -> Any:
    return Task("greet", output=Out, run=lambda c: Out(message=c.input["name"]))


@workflow("gate")
def gate(ctx: Any) -> Any:
    return Sequence(Approval("ok", title="Ship it?"), Task("after", output=Out, value=Out(message="done")))


@workflow("waiter")
def waiter(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Out, value=Out(message="go")))


def _boom(ctx: Any) -> Out:
    raise RuntimeError("boom")


@workflow("failing")
def failing(ctx: Any) -> Any:
    return Task("explode", output=Out, run=_boom)


async def _forever(ctx: Any) -> Out:
    await asyncio.sleep(3600)
    return Out(message="never")


@workflow("slow")
def slow(ctx: Any) -> Any:
    return Task("wait", output=Out, run=_forever)


def serve(port: int, db: str) -> None:
    """Child process: the token-mode gateway with the probe's workflows."""
    gateway = Gateway.for_workflows([hello, typed, gate, waiter, failing, slow], db=db, auth=AUTH)
    from smithers.cli.gateway_cmds import event_loop_runner

    event_loop_runner()(gateway.serve(HOST, port))


# -- methods and values ----------------------------------------------------------------------------
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "health": (),
    "runs.list": ("limit", "status", "filter"),
    "workflows.list": ("hasUi", "filter"),
    "runs.get": ("runId",),
    "runs.diff": ("leftRunId", "rightRunId"),
    "frames.list": ("runId", "limit", "afterFrameNo"),
    "frames.get": ("runId", "frameNo"),
    "attempts.list": ("runId", "nodeId", "iteration"),
    "attempts.get": ("runId", "nodeId", "iteration", "attempt"),
    "approvals.list": ("runId", "workflow", "limit", "filter"),
    "streamRunEvents": ("runId", "afterSeq"),
    "hijackRun": ("runId", "options"),
    "runs.create": ("workflow", "input", "runId", "options"),
    "resumeRun": ("runId", "options"),
    "runs.cancel": ("runId",),
    "runs.rerun": ("runId", "newRunId"),
    "approvals.decide": ("runId", "nodeId", "iteration", "approved", "note", "decision"),
    "signals.send": ("runId", "signalName", "correlationKey", "correlationId", "data", "payload"),
    "cron.list": ("filter", "workflow"),
    "cron.add": ("workflow", "pattern", "cronId", "enabled", "timezone"),
    "cron.remove": ("cronId",),
    "cron.trigger": ("cronId", "workflow", "input"),
    "connect": ("minProtocol", "maxProtocol", "client", "auth", "subscribe"),
}
STABLE = {
    "listRuns": "runs.list",
    "listWorkflows": "workflows.list",
    "getRun": "runs.get",
    "listApprovals": "approvals.list",
    "launchRun": "runs.create",
    "cancelRun": "runs.cancel",
    "submitApproval": "approvals.decide",
    "submitSignal": "signals.send",
    "cronList": "cron.list",
    "cronCreate": "cron.add",
    "cronDelete": "cron.remove",
    "cronRun": "cron.trigger",
}
RUN_TARGETED = {
    "resumeRun",
    "cancelRun",
    "runs.cancel",
    "runs.rerun",
    "submitApproval",
    "approvals.decide",
    "submitSignal",
    "signals.send",
}
CRON_TARGETED = {"cron.remove", "cronDelete"}
CREATING = {"launchRun", "runs.create", "cron.trigger", "cronRun", "cron.add", "cronCreate"}
MUTATING = RUN_TARGETED | CRON_TARGETED | CREATING
LAUNCHING = {"launchRun", "runs.create", "runs.rerun", "cron.trigger", "cronRun"}
UNKNOWN = ["nope", "runs.nope", "config.get", "getNodeOutput", "rewindRun", "streamDevTools", "a" * 64]
ALL_KEYS = sorted({k for keys in METHOD_KEYS.values() for k in keys})

INTEGERS = [0, 1, -1, 2**31, 2**53 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 10**300]
FLOATS = [0.5, -0.0, 1.5, 1e-7, 5e-324, 1.7976931348623157e308, 1e21, 1e300, 2.0**64]
SURROGATES = ["\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "😀\ud83d", "\udbff\udfff", "go\udfff"]
ODD = ["", " ", "\x00", "\ufeff", "null", "0", "1e999", "NaN", "0x10", " 7 ", "__proto__", "%ZZ", "a" * 129, "a" * 257]
LONG = ["x" * 16384, "x" * 16385, "😀" * 8193, ("ab\ud800" * 5462)[:16385]]
REFS = ["@gate", "@waiter", "@hello", "@failed", "@slow", "@typed", "missing", "@gate "]
CRONS = ["@cron", "@typedcron", "missing-cron"]
REALISTIC: dict[str, list[Any]] = {
    "runId": REFS,
    "leftRunId": REFS,
    "rightRunId": REFS,
    "newRunId": [*REFS, "fresh"],
    "nodeId": ["ok", "w", "greet", "explode", "wait", "after", "nope"],
    "iteration": [0, 1, -1, 0.5, "1", 2**64],
    "attempt": [1, 0, 2, "1"],
    "frameNo": [0, 1, 2, "1", -1, 0.5, 2**53],
    "afterFrameNo": [0, 1, "0", -1],
    "afterSeq": [0, 1, 5, -1, 0.5, None],
    "limit": [1, 5, 50, "5", " 7 ", "0x10", "1e2", 0, -1, 2**53],
    "status": ["running", "finished", "failed", "waiting-approval", "waiting-event", "RUNNING"],
    "workflow": ["hello", "typed", "gate", "waiter", "failing", "slow", "nope", " hello"],
    "input": [{}, {"name": "ada"}, {"name": 5}, {"name": "\ud800"}, {"\ud800": 1}, {"n": 2**64}],
    "options": [{"runId": "fresh"}, {"runId": "\ud800"}, {"runId": "x" * 300}, {"force": True}],
    "cronId": CRONS,
    "pattern": ["0 0 1 1 *", "* * * * *", "@yearly", "@never", "0 0 31 2 *", "*/0 * * * *", "* * * *", "1-0 * * * *"],
    "timezone": ["UTC", "Europe/Paris", "America", "Etc", "x" * 300, "../../etc/passwd", "", "Nowhere/City"],
    "signalName": ["go", "nope", "", " ", "\ud800"],
    "correlationKey": ["go", "c1", ""],
    "correlationId": ["c1", "", "\udfff", None],
    "approved": [True, False, "true", 1, None],
    "note": ["fine", "", "\ud800"],
    "decision": [{"approved": True}, {"value": 1}, {"selected": "blue"}, {"ranked": ["a"]}, "yes", None],
    "hasUi": [True, False, "false"],
    "enabled": [True, False, "no"],
    "filter": [{"limit": 5}, {"limit": "x"}, {"status": "finished"}, {"runId": "@hello"}, {"workflow": "gate"}],
    "data": [{}, {"x": 1}, "\ud800", 2**64],
    "payload": [{}, [1, 2], None],
    "minProtocol": [1, 0, 2, 1.5, "1", -1],
    "maxProtocol": [1, 0, 2, 1.5, "1", -1],
    "client": [{"id": "probe"}, "cli", 0, "", None],
    "auth": [{"token": OPERATOR}, {"token": READER}, {"token": "nope"}, {"token": 5}, [], "tok", 5],
    "subscribe": [["@hello"], [], "x", [5, None]],
}
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\x80", b"\xf0\x28\x8c\xbc"]


def nest(depth: int, leaf: Any, kind: str) -> Any:
    for level in range(depth):
        leaf = [leaf] if kind == "list" or (kind == "mixed" and level % 2) else {"a": leaf}
    return leaf


class Fuzzer:
    """Random params from a seeded generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def text(self) -> str:
        r = self.rng
        alphabet = [chr(r.randrange(0x20, 0x7F)), chr(r.randrange(0xA0, 0xD800)), chr(r.randrange(0xD800, 0xE000))]
        return "".join(
            r.choice(alphabet) if r.random() < 0.3 else chr(r.randrange(0x20, 0x7F)) for _ in range(r.randrange(12))
        )

    def scalar(self) -> Any:
        r = self.rng
        kind = r.randrange(10)
        if kind == 0:
            return r.choice([None, True, False])
        if kind == 1:
            return r.choice(INTEGERS)
        if kind == 2:
            return r.randint(-(2**70), 2**70) if r.random() < 0.5 else r.randint(-1000, 1000)
        if kind == 3:
            return r.choice(FLOATS) if r.random() < 0.5 else r.uniform(-1e6, 1e6)
        if kind == 4:
            return r.choice(SURROGATES)
        if kind == 5:
            return r.choice(ODD)
        if kind == 6 and r.random() < 0.3:
            return r.choice(LONG)
        if kind == 7 and r.random() < 0.5:
            return nest(
                r.choice([r.randint(1, 40), 29, 30, 31]),
                r.choice([0, "x", None, {}]),
                r.choice(["list", "dict", "mixed"]),
            )
        if kind == 8 and r.random() < 0.3:
            return r.choice([[0] * 256, [0] * 257, {f"k{i}": i for i in range(300)}, ["x"] * 200])
        return self.text()

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        roll = r.random()
        if depth < 3 and roll < 0.15:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        if depth < 3 and roll < 0.3:
            return {self.key(): self.value(depth + 1) for _ in range(r.randrange(4))}
        return self.scalar()

    def key(self) -> str:
        r = self.rng
        return r.choice(ALL_KEYS) if r.random() < 0.6 else r.choice([self.text(), *SURROGATES])

    def params(self, method: str) -> Any:
        r = self.rng
        roll = r.random()
        if roll < 0.1:
            return self.value()
        if roll < 0.15:
            return MISSING
        keys = METHOD_KEYS.get(STABLE.get(method, method))
        out: dict[str, Any] = {}
        for key in keys if keys is not None else r.sample(ALL_KEYS, 3):
            if r.random() < 0.8:
                out[key] = r.choice(REALISTIC[key]) if r.random() < 0.65 else self.value()
        if r.random() < 0.3:
            out.setdefault(self.key(), self.value())
        return out


MISSING = object()


def resolve(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [resolve(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, ids) for k, v in value.items()}
    return value


def harmless(method: str, params: Any) -> Any:
    """Phase 1: mutating methods name a run or cron that does not exist."""
    if isinstance(params, dict) and method in RUN_TARGETED:
        return {**params, "runId": f"missing-{uuid.uuid4()}"}
    if isinstance(params, dict) and method in CRON_TARGETED:
        return {**params, "cronId": f"missing-{uuid.uuid4()}"}
    return params


# -- tallies ---------------------------------------------------------------------------------------
@dataclass
class Tally:
    requests: int = 0
    http: int = 0
    ws: int = 0
    http_status: Counter[int] = field(default_factory=Counter)
    ws_codes: Counter[str] = field(default_factory=Counter)
    ws_ids: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    launched: set[str] = field(default_factory=set)  # run ids successful calls answered with
    refused_ids: set[str] = field(default_factory=set)  # run ids refused launches asked for
    signals_ok: int = 0
    decisions_ok: int = 0

    def server_error(self, what: str) -> None:
        self.server_errors.append(what)

    def record_success(self, method: str, params: Any, payload: Any) -> None:
        if method in LAUNCHING and isinstance(payload, dict) and isinstance(payload.get("runId"), str):
            self.launched.add(payload["runId"])
        if method in ("submitSignal", "signals.send"):
            self.signals_ok += 1
        if method in ("submitApproval", "approvals.decide"):
            self.decisions_ok += 1

    def record_refusal(self, method: str, params: Any) -> None:
        if method in ("launchRun", "runs.create") and isinstance(params, dict):
            run_id = params.get("runId")
            if not isinstance(run_id, str):
                options = params.get("options")
                run_id = options.get("runId") if isinstance(options, dict) else None
            if isinstance(run_id, str) and run_id:
                self.refused_ids.add(run_id)
        if method == "runs.rerun" and isinstance(params, dict) and isinstance(params.get("newRunId"), str):
            self.refused_ids.add(params["newRunId"])


def short(data: Any, limit: int = 240) -> str:
    text = data if isinstance(data, str) else repr(data)
    return text if len(text) <= limit else text[:limit] + "…"


# -- HTTP ------------------------------------------------------------------------------------------
class Http:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams (no retries: a lost answer counts)."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.used > 3:
            await self.close()  # the server drops idle connections after 5 s
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        try:
            self.writer.write(head.encode("latin-1") + body)
            status, answer, close = await asyncio.wait_for(self._read(self.reader), self.timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            await self.close()
            raise ConnectionError(repr(exc)) from exc
        self.used = time.monotonic()
        if close:
            await self.close()
        return status, answer

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        status = int((await reader.readuntil(b"\r\n")).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, body, headers.get("connection", "").lower() == "close"


def http_body(rng: random.Random, method: str, params: Any) -> tuple[str, bytes]:
    """A path and body for a call of ``method``: /rpc or /v1/rpc/{method}, sometimes mangled bytes."""
    if rng.random() < 0.5:
        body: Any = {"method": method}
        if params is not MISSING:
            body["params"] = params
        if rng.random() < 0.2:
            body["id"] = rng.choice(["h1", "", "\ud800", "a" * 129, 5, None, []])
        path = "/rpc"
    else:
        path = "/v1/rpc/" + quote(method, safe="")
        body = params if isinstance(params, dict) and rng.random() < 0.7 else {"method": "x", "params": params}
        if params is MISSING:
            body = {}
    raw = json.dumps(body).encode()
    if rng.random() < 0.05:  # invalid UTF-8 somewhere in the body
        at = rng.randrange(len(raw) + 1)
        raw = raw[:at] + rng.choice(INVALID_UTF8) + raw[at:]
    return path, raw


async def http_worker(
    port: int, jobs: asyncio.Queue[tuple[str, Any]], tally: Tally, rng: random.Random, timeout: float
) -> None:
    client = Http(port, timeout)
    try:
        while True:
            try:
                method, params = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            token = rng.choice(TOKENS)
            path, body = http_body(rng, method, params)
            headers = {"content-type": "application/json"}
            if token is not None:
                headers["authorization"] = f"Bearer {token}"
            tally.requests += 1
            tally.http += 1
            what = f"HTTP POST {path} token={token} {short(body)}"
            try:
                status, answer = await client.post(path, body, headers)
            except ConnectionError as exc:
                tally.unanswered.append(f"{what}: {exc}")
                continue
            tally.http_status[status] += 1
            if status >= 500:
                tally.server_error(f"{what} -> {status} {short(answer.decode('utf-8', 'replace'))}")
            try:
                parsed = json.loads(answer)
            except ValueError:
                parsed = None
            if status == 200 and isinstance(parsed, dict) and parsed.get("ok") is True and token == OPERATOR:
                tally.record_success(method, params, parsed.get("payload"))
            elif status != 200 or not (isinstance(parsed, dict) and parsed.get("ok") is True):
                tally.record_refusal(method, params)
    finally:
        await client.close()


# -- WebSocket -------------------------------------------------------------------------------------
CONNECT_PARAMS = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "probe"}}
_ids = itertools.count()


class Socket:
    """One WebSocket client in a fixed role: before connect, or connected with a token."""

    def __init__(self, url: str, role: str | None, timeout: float):
        self.url = url
        self.role = role  # None: never connects
        self.timeout = timeout
        self.ws: ClientConnection | None = None
        self.opened = 0.0

    async def open(self) -> None:
        await self.close()
        self.ws = await connect(self.url, max_size=None, open_timeout=30, ping_interval=None)
        self.opened = time.monotonic()
        await self.ws.recv()  # connect.challenge
        if self.role is not None:
            answer = await self.call(
                json.dumps(
                    {
                        "type": "req",
                        "id": "c",
                        "method": "connect",
                        "params": {**CONNECT_PARAMS, "auth": {"token": self.role}},
                    }
                )
            )
            assert answer.get("ok") is True, answer

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.ws = None

    async def call(self, message: str | bytes) -> dict[str, Any]:
        """Send one message and return the next response frame (events skipped)."""
        assert self.ws is not None
        await self.ws.send(message)
        deadline = time.monotonic() + self.timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            if frame.get("type") == "res":
                return dict(frame)


async def ws_worker(
    url: str, jobs: asyncio.Queue[tuple[str, Any]], tally: Tally, rng: random.Random, timeout: float
) -> None:
    sockets = {role: Socket(url, role, timeout) for role in (None, READER, OPERATOR)}
    try:
        for sock in sockets.values():
            await sock.open()
        while True:
            try:
                method, params = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            role = rng.choice([None, READER, OPERATOR, OPERATOR])
            sock = sockets[role]
            if sock.ws is None or (role is None and time.monotonic() - sock.opened > 5):
                await sock.open()  # a socket that never connects is closed after 10 s
            frame_id = f"p{next(_ids)}"
            body: dict[str, Any] = {"type": "req", "id": frame_id, "method": method}
            if params is not MISSING:
                body["params"] = params
            text = json.dumps(body)
            message: str | bytes = text
            if rng.random() < 0.3:
                message = text.encode()
                if rng.random() < 0.2:
                    at = rng.randrange(len(message) + 1)
                    message = message[:at] + rng.choice(INVALID_UTF8) + message[at:]
            tally.requests += 1
            tally.ws += 1
            what = f"WS role={role} {short(message)}"
            try:
                answer = await sock.call(message)
            except (ConnectionClosed, TimeoutError, OSError) as exc:
                tally.unanswered.append(f"{what}: {exc!r}")
                await sock.open()
                continue
            error = answer.get("error") if isinstance(answer.get("error"), dict) else None
            code = error.get("code") if error else "ok"
            tally.ws_codes[str(code)] += 1
            answer_id = answer.get("id")
            decoded = decoded_id(message)
            if answer_id == frame_id:
                tally.ws_ids["own id"] += 1
            elif answer_id == decoded:
                tally.ws_ids["own id, as decoded (invalid UTF-8 in it)"] += 1
            else:
                tally.ws_ids[f"{answer_id!r}"] += 1
            if code == "SERVER_ERROR" or answer_id == "server":
                tally.server_error(f"{what} -> {short(answer)}")
            if answer_id not in (frame_id, "invalid", "server", decoded):
                tally.mismatched.append(f"{what} -> {short(answer)}")
            if answer.get("ok") is True and role == OPERATOR:
                tally.record_success(method, params, answer.get("payload"))
            elif answer.get("ok") is not True:
                tally.record_refusal(method, params)
            if method == "connect":  # the fuzzed connect may have changed who the socket is
                await sock.open()
    finally:
        for sock in sockets.values():
            with contextlib.suppress(Exception):  # best effort at the end
                await sock.close()


def decoded_id(message: str | bytes) -> Any:
    """The id the gateway reads from a message (a binary one is decoded with U+FFFD replacement)."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


# -- the store -------------------------------------------------------------------------------------
def read_store(db: str) -> dict[str, Any]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        runs = conn.execute(
            f"SELECT run_id, status, finished_at_ms, length(error_json), "
            f'config_json LIKE \'%"gatewayTriggeredBy":"cron:%\' FROM {schema.runs.name}'
        ).fetchall()
        return {
            "runs": {r[0]: r[1:4] for r in runs},
            "by_cron": {r[0] for r in runs if r[4]},
            "approvals": sorted(conn.execute(f"SELECT * FROM {schema.approvals.name}").fetchall(), key=repr),
            "decided": conn.execute(
                f"SELECT count(*) FROM {schema.approvals.name} WHERE status != 'requested'"
            ).fetchone()[0],
            "signals": conn.execute(f"SELECT count(*) FROM {schema.signals.name}").fetchone()[0],
            "crons": sorted(conn.execute(f"SELECT * FROM {schema.cron.name}").fetchall(), key=repr),
        }


# -- the run ---------------------------------------------------------------------------------------
SEEDS = {
    "gate": ("gate", "waiting-approval"),
    "waiter": ("waiter", "waiting-event"),
    "hello": ("hello", "finished"),
    "failed": ("failing", "failed"),
    "slow": ("slow", "running"),
    "typed": ("typed", "finished"),
}


async def seed(port: int, db: str) -> dict[str, str]:
    client = Http(port, 30)
    headers = {"content-type": "application/json", "authorization": f"Bearer {OPERATOR}"}
    ids: dict[str, str] = {}
    try:
        for role, (wf, _) in SEEDS.items():
            body = json.dumps({"workflow": wf, "runId": f"seed-{role}", "input": {"name": "ada"}}).encode()
            status, answer = await client.post("/v1/rpc/launchRun", body, headers)
            assert status == 200, answer
            ids[f"@{role}"] = f"seed-{role}"
        for ref, wf in (("@cron", "hello"), ("@typedcron", "typed")):
            params = {"cronId": f"seed-{ref[1:]}", "workflow": wf, "pattern": "0 0 1 1 *", "timezone": "UTC"}
            status, answer = await client.post("/v1/rpc/cron.add", json.dumps(params).encode(), headers)
            assert status == 200, answer
            ids[ref] = params["cronId"]
    finally:
        await client.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = read_store(db)["runs"]
        if all(runs.get(f"seed-{role}", ("",))[0] == status for role, (_, status) in SEEDS.items()):
            await asyncio.sleep(0.3)
            return ids
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the seeded runs did not come to rest: {read_store(db)['runs']}")


async def run_phase(
    child: Any, jobs: list[tuple[str, Any]], tally: Tally, rng: random.Random, workers: int, timeout: float
) -> None:
    port = int(child.base.rsplit(":", 1)[1])
    http_jobs: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    ws_jobs: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for index, job in enumerate(jobs):
        (http_jobs if index % 2 == 0 else ws_jobs).put_nowait(job)
    await asyncio.gather(
        *(http_worker(port, http_jobs, tally, random.Random(rng.random()), timeout) for _ in range(workers)),
        *(ws_worker(child.ws_url, ws_jobs, tally, random.Random(rng.random()), timeout) for _ in range(workers)),
    )


def stored_changes(before: dict[str, Any], after: dict[str, Any], tally: Tally | None) -> list[str]:
    """Changes not explained by a valid call (phase 1: any change at all)."""
    if tally is None:
        return [f"{key} changed" for key in ("runs", "approvals", "signals", "crons") if before[key] != after[key]]
    problems = []
    new = set(after["runs"]) - set(before["runs"])
    if unexplained := sorted(new - tally.launched - after["by_cron"]):
        problems.append(f"{len(unexplained)} runs no successful call started: {unexplained[:10]}")
    if created := sorted((tally.refused_ids - tally.launched - set(before["runs"])) & set(after["runs"])):
        problems.append(f"{len(created)} refused launches stored their run: {created[:10]}")
    if missing := sorted(set(before["runs"]) - set(after["runs"])):
        problems.append(f"runs deleted: {missing[:10]}")
    if after["signals"] - before["signals"] > tally.signals_ok:
        problems.append(f"{after['signals'] - before['signals']} signals stored, {tally.signals_ok} calls succeeded")
    if after["decided"] - before["decided"] > tally.decisions_ok:
        problems.append(
            f"{after['decided'] - before['decided']} approvals decided, {tally.decisions_ok} calls succeeded"
        )
    return problems


async def main(args: argparse.Namespace) -> int:
    seed_value = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed_value)
    fuzz = Fuzzer(rng)
    methods = sorted(set(itertools.chain(METHOD_KEYS, STABLE)) - {"connect"})
    readers = [m for m in methods if m not in CREATING] + ["connect", *UNKNOWN]
    writers = sorted(MUTATING)
    mutating_count = int(args.requests * args.mutating)
    tally = Tally()
    started = time.perf_counter()
    async with child_gateway(__file__, "smithers-probe-fuzz-") as child:
        ids = await seed(int(child.base.rsplit(":", 1)[1]), child.db)
        before = read_store(child.db)
        phase1 = []
        for _ in range(args.requests - mutating_count):
            method = rng.choice(readers)
            phase1.append((method, harmless(method, resolve(fuzz.params(method), ids))))
        await run_phase(child, phase1, tally, rng, args.workers, args.timeout)
        await asyncio.sleep(0.5)
        middle = read_store(child.db)
        phase1_problems = stored_changes(before, middle, None)
        phase2 = []
        for _ in range(mutating_count):
            method = rng.choice(writers)
            phase2.append((method, resolve(fuzz.params(method), ids)))
        await run_phase(child, phase2, tally, rng, args.workers, args.timeout)
        await asyncio.sleep(0.5)
        phase2_problems = stored_changes(middle, read_store(child.db), tally)
    elapsed = time.perf_counter() - started

    def show(items: list[str]) -> None:
        for item in items[: args.examples]:
            print(f"    {item}")
        if len(items) > args.examples:
            print(f"    … and {len(items) - args.examples} more")

    print(f"probe_fuzz: seed {seed_value}, {tally.requests} requests in {elapsed:.1f} s")
    print(
        f"  HTTP: {tally.http} requests; answers by status: "
        + ", ".join(f"{s}: {n}" for s, n in sorted(tally.http_status.items()))
    )
    print(
        f"  WebSocket: {tally.ws} requests; answers by code: "
        + ", ".join(f"{c}: {n}" for c, n in tally.ws_codes.most_common())
    )
    print("    by response id: " + ", ".join(f"{i}: {n}" for i, n in tally.ws_ids.most_common()))
    print(f"  5xx answers: {len(tally.server_errors)}")
    show(tally.server_errors)
    print(f"  unanswered requests: {len(tally.unanswered)}")
    show(tally.unanswered)
    if tally.mismatched:
        print(f"  responses with another request's id: {len(tally.mismatched)}")
        show(tally.mismatched)
    problems = [f"phase 1 (read-only calls): {p}" for p in phase1_problems]
    problems += [f"phase 2 (mutating calls): {p}" for p in phase2_problems]
    print(
        f"  stored runs changed except by valid calls: {'yes' if problems else 'no'} "
        f"({len(tally.launched)} runs started by successful calls)"
    )
    show(problems)
    failed = bool(tally.server_errors or tally.unanswered or tally.mismatched or problems)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=12000, help="requests in all (default 12000)")
    parser.add_argument("--seed", type=int, help="seed of the generated requests (default: random, printed)")
    parser.add_argument("--workers", type=int, default=8, help="HTTP clients, and as many WebSocket clients")
    parser.add_argument("--mutating", type=float, default=0.25, help="share of phase 2 (mutating calls)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts unanswered")
    parser.add_argument("--examples", type=int, default=10, help="examples printed per kind of problem")
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.db)
    else:
        sys.exit(asyncio.run(main(options)))
