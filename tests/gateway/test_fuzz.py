"""Fuzzing every RPC method over HTTP and WebSocket, before and after authentication.

Params are drawn from every JSON type: null, booleans, integers (huge, negative, at the 2**53 /
2**63 / 2**64 edges), fractional and extreme floats, strings with lone surrogates (sent as
``\\ud800`` escapes, as a JavaScript client does), long and empty strings, nesting up to 40 levels,
wide arrays and objects, and the protocol's real keys (``runId``, ``nodeId``, ``afterSeq``, ...)
with hostile or realistic values; plus raw invalid UTF-8 as an HTTP body or a binary frame.

The properties (docs/protocol.md, "Envelopes and errors", "HTTP routes", "WebSocket transport"):

a) never a 5xx: HTTP status < 500; over WebSocket never ``SERVER_ERROR`` and never id ``"server"``;
b) never an unanswered request: every HTTP request gets a response; every WebSocket message gets
   exactly one response frame, with its own id or ``"invalid"`` (validation and escaping errors);
c) no stored change except by a valid call. On the *reader* gateways (no auth and token auth,
   seeded with runs in every resting state) only calls that cannot legitimately change anything
   are made -- the mutating methods keyed by a run or cron id get an id that does not exist -- and
   everything stored (runs, nodes, attempts, frames, events, approvals, signals, inputs, crons)
   must stay identical. On the *writer* gateway (token auth) the mutating methods are made for
   real; after every refused call nothing may have been stored for it: no run, input, signal,
   decision or schedule change, no finished run touched.

The tests, each per method so that a bug in one method does not hide the others:

* ``test_{http,ws}_reader`` / ``test_{http,ws}_writer``: hypothesis draws params for the method
  (its own keys most of the time, so calls reach the deep paths of the handler) and sends them
  without a token, with the reader's (``run:read``) and with the operator's; over WebSocket on a
  socket before ``connect`` and on connected ones;
* ``test_{http,ws}_sweep_*``: deterministic, each param of the method's valid call replaced in turn
  by each hostile value (writer cases alternate between the transports);
* envelopes (hostile ``type``/``id``/``method``, path segments, ``X-Request-Id``), raw bodies and
  binary frames (invalid UTF-8, numbers no double holds, cut or wrapped JSON), frames fragmented
  with pings and written in random pieces, invalid UTF-8 text (closed with 1007), and a burst of
  waiting calls beyond the 32 a socket runs at once.

The gateways are shared by the tests of this module (starting and seeding one per test would cost
more than the fuzzing); the example counts keep the file well under 90 s on two cores.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, text
from websockets.exceptions import ConnectionClosed

from smithers.gateway.dispatch import Dispatcher
from smithers.gateway.server import RPC_MODULES, Gateway
from smithers.store import schema
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    OPERATOR_TOKEN,
    READER_TOKEN,
    TOKEN_AUTH,
    Live,
    RawClient,
    WsClient,
    frame,
)
from tests.gateway.workflows import WORKFLOWS

WIRE = pytest.mark.sqlite_only(
    reason="envelopes, bodies and frames refused before any handler reads the store (and, last, a check of this file)"
)

SUPPRESSED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
PER_METHOD = settings(max_examples=6, deadline=None, suppress_health_check=SUPPRESSED)
PER_MUTATION = settings(max_examples=8, deadline=None, suppress_health_check=SUPPRESSED)
RAW = settings(max_examples=40, deadline=None, suppress_health_check=SUPPRESSED)

ANSWER_TIMEOUT_S = 15.0
MAX_FRAME_BYTES = 1_000_000  # under maxPayload / maxBodyBytes (1 MiB): bigger ones are refused whole
TERMINAL = {"finished", "failed", "cancelled", "continued"}


# -- the methods ---------------------------------------------------------------------------------
def registered_methods() -> list[str]:
    """Every method name the gateway registers (the same modules, without starting one)."""
    dispatcher = Dispatcher()
    for module in RPC_MODULES:
        dispatcher.add(module.HANDLERS)
    return dispatcher.methods()


METHODS = registered_methods()
RUN_TARGETED = frozenset(
    {
        "resumeRun",
        "cancelRun",
        "runs.cancel",
        "runs.rerun",
        "submitApproval",
        "approvals.decide",
        "submitSignal",
        "signals.send",
    }
)
"""Mutating methods that act on the run named by ``runId``: harmless with an id that does not exist."""
CRON_TARGETED = frozenset({"cron.remove", "cronDelete"})
"""Mutating methods that act on the cron named by ``cronId``."""
CREATING = frozenset({"launchRun", "runs.create", "cron.trigger", "cronRun", "cron.add", "cronCreate"})
"""Methods that create whatever they are given: never sent to the reader gateways."""
MUTATING = RUN_TARGETED | CRON_TARGETED | CREATING
READ_ONLY = [m for m in METHODS if m not in MUTATING]
UNKNOWN = "(unknown)"
UNKNOWN_METHODS = [
    "nope",
    "runs.nope",
    "config.get",
    "getNodeOutput",
    "devtools.getNodeDiff",
    "rewindRun",
    "jumpToFrame",
    "streamDevTools",
    "getDevToolsSnapshot",
    "listTickets",
    "a" * 64,
    "runs.get.again",
]
READER_METHODS = [*READ_ONLY, *sorted(RUN_TARGETED | CRON_TARGETED), "connect", UNKNOWN]


# -- values --------------------------------------------------------------------------------------
INTEGERS = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    10**30,
    -(10**30),
    10**300,
    -(10**300),
]
FLOATS = [
    0.5,
    -0.0,
    1.5,
    -1.5,
    1e-7,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e21,
    1e300,
    0.30000000000000004,
    2.0**53,
    2.0**63,
    2.0**64,
    -(2.0**64),
]
SURROGATES = [
    "\ud800",
    "\udfff",
    "\udbff\udfff",  # a valid pair once escaped: the server sees U+10FFFF
    "a\ud800b",
    "\udc00\ud800",
    "😀\ud83d",
    "go\udfff",
    "\ud800\ud800\ud800x",
]
ODD_STRINGS = [
    "",
    " ",
    "\t\n",
    "\u00a0",
    "\x00",
    "\ufeff",
    "\u202e",
    "😀",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "NaN",
    "Infinity",
    "0x10",
    " 7 ",
    "__proto__",
    "constructor",
    "../../etc/passwd",
    "%00",
    "%ZZ",
    "' OR 1=1 --",
    '"; DROP TABLE _smithers_runs; --',
    "*",
    "run:*",
    "a" * 128,
    "a" * 129,
    "a" * 256,
    "a" * 257,
]
LONG_STRINGS = [
    "x" * 16384,
    "x" * 16385,
    "😀" * 8192,
    "😀" * 8193,
    ("ab\ud800" * 5462)[:16385],
]
WIDE = [
    [0] * 255,
    [0] * 256,
    [0] * 257,
    list(range(300)),
    {f"k{i}": i for i in range(300)},
    ["x" * 40] * 256,
    [{"runId": "x"}] * 100,
    {f"\ud800{i}": None for i in range(200)},
]
KEYS = [
    "runId",
    "nodeId",
    "iteration",
    "attempt",
    "frameNo",
    "afterFrameNo",
    "afterSeq",
    "limit",
    "status",
    "workflow",
    "input",
    "options",
    "cronId",
    "pattern",
    "timezone",
    "signalName",
    "correlationId",
    "correlationKey",
    "data",
    "payload",
    "decision",
    "approved",
    "note",
    "newRunId",
    "filter",
    "hasUi",
    "leftRunId",
    "rightRunId",
    "enabled",
    "minProtocol",
    "maxProtocol",
    "client",
    "auth",
    "subscribe",
]


def nest(depth: int, leaf: Any, kind: str) -> Any:
    """``depth`` levels of arrays, objects or both around ``leaf``."""
    value = leaf
    for level in range(depth):
        wrap_list = kind == "list" or (kind == "mixed" and level % 2 == 0)
        value = [value] if wrap_list else {"a": value}
    return value


SCALARS = [None, True, False, *INTEGERS, *FLOATS, *SURROGATES, *ODD_STRINGS]
integers = st.one_of(st.integers(), st.sampled_from(INTEGERS))
# any code point, lone surrogates included (they reach the gateway as \\uXXXX escapes, see ``dumps``)
any_text = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12).map("".join)
strings = st.one_of(any_text, st.sampled_from(SURROGATES + ODD_STRINGS))
deep = st.builds(
    nest,
    st.one_of(st.integers(1, 40), st.sampled_from([29, 30, 31, 32])),
    st.sampled_from([0, "x", None, {}, [], "\ud800"]),
    st.sampled_from(["list", "dict", "mixed"]),
)
bulky = st.one_of(st.sampled_from(LONG_STRINGS + WIDE), deep)
keys = st.one_of(st.sampled_from(KEYS + SURROGATES), st.text(max_size=10))
json_values = st.recursive(
    st.one_of(
        st.sampled_from(SCALARS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        any_text,
        bulky,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=8,
)

# Placeholders for the seeded ids; each gateway substitutes its own (see ``resolve``).
RUN_REFS = ["@gate", "@waiter", "@hello", "@failed", "@slow", "@typed", "missing-run", "@gate ", " @hello"]
CRON_REFS = ["@cron", "@typedcron", "missing-cron", "gateway:hello"]
WORKFLOW_KEYS = ["hello", "typed", "gate", "waiter", "failing", "slow", "sleeper", "nope", "Hello", " hello"]
NODE_IDS = ["ok", "w", "greet", "explode", "wait", "after", "nap", "nope"]
STATUSES = ["running", "finished", "failed", "cancelled", "continued", "waiting-approval", "waiting-event", "RUNNING"]
PATTERNS = [
    "0 0 1 1 *",
    "* * * * *",
    "@yearly",
    "@YEARLY",
    "@never",
    "0 0 31 2 *",
    "0 0 29 2 *",
    "*/0 * * * *",
    "1-0 * * * *",
    "* * * * 5#9",
    "* * L * *",
    "*/99999999999999999999 * * * *",
    "* * * *",
    "* * * * * * *",
    "1," * 3000 + "1 * * * *",
]
TIMEZONES = [
    "UTC",
    "Europe/Paris",
    "America",  # a directory of the zone database
    "Etc",
    "America/Indiana",
    "x" * 300,  # longer than a file name may be
    "../../../etc/passwd",
    "Europe/Paris\x00",
    "posixrules",
    "Factory",
    "",
    "  ",
]
NUMBERISH = [0, 1, 2, 3, -1, 0.5, "1", "5", " 7 ", "0x10", "1e2", "", "abc", [5], [], True, None, 2**53, 2**64]

realistic: dict[str, st.SearchStrategy[Any]] = {
    "runId": st.sampled_from(RUN_REFS),
    "leftRunId": st.sampled_from(RUN_REFS),
    "rightRunId": st.sampled_from(RUN_REFS),
    "newRunId": st.one_of(st.sampled_from(RUN_REFS), st.uuids().map(str)),
    "nodeId": st.sampled_from(NODE_IDS),
    "iteration": st.sampled_from(NUMBERISH),
    "attempt": st.sampled_from(NUMBERISH),
    "frameNo": st.sampled_from(NUMBERISH),
    "afterFrameNo": st.sampled_from(NUMBERISH),
    "afterSeq": st.sampled_from(NUMBERISH),
    "limit": st.sampled_from(NUMBERISH),
    "status": st.sampled_from(STATUSES),
    "workflow": st.sampled_from(WORKFLOW_KEYS),
    "input": st.one_of(
        st.fixed_dictionaries({}, optional={"name": strings, "n": integers}),
        st.dictionaries(keys, json_values, max_size=3),
    ),
    "cronId": st.sampled_from(CRON_REFS),
    "pattern": st.sampled_from(PATTERNS),
    "timezone": st.sampled_from(TIMEZONES),
    "signalName": st.sampled_from(["go", "nope", "", " ", " go ", "\ud800"]),
    "correlationId": st.sampled_from(["c1", "", "\udfff", None]),
    "correlationKey": st.sampled_from(["go", "c1", "", " "]),
    "approved": st.sampled_from([True, False, "true", 1, None]),
    "note": st.sampled_from(["fine", "", "\ud800", "x" * 16385]),
    "decision": st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "approved": st.booleans(),
                "note": strings,
                "value": json_values,
                "selected": st.sampled_from(["blue", "", "nope"]),
                "ranked": st.sampled_from([["a", "b"], [], [1], "a"]),
            },
        ),
        json_values,
    ),
    "hasUi": st.sampled_from([True, False, "false", 0]),
    "enabled": st.sampled_from([True, False, "no", None]),
    "minProtocol": st.sampled_from([1, 0, 2, 1.5, "1", -1, 2**64]),
    "maxProtocol": st.sampled_from([1, 0, 2, 1.5, "1", -1, 2**64]),
    "client": st.sampled_from([{"id": "fuzz"}, "cli", 0, "", None, True, []]),
    "auth": st.one_of(
        st.fixed_dictionaries({}, optional={"token": st.sampled_from([OPERATOR_TOKEN, READER_TOKEN, "nope", 5, ""])}),
        json_values,
    ),
    "subscribe": st.one_of(st.lists(st.sampled_from(RUN_REFS)), json_values),
}
realistic["filter"] = st.fixed_dictionaries(
    {},
    optional={k: realistic[k] for k in ("runId", "workflow", "limit", "status", "hasUi")},
)
realistic["options"] = st.fixed_dictionaries(
    {},
    optional={"runId": realistic["newRunId"], "idempotencyKey": strings, "force": st.booleans()},
)
realistic["data"] = realistic["payload"] = json_values


_RUN = ("runId",)
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "health": (),
    "runs.list": ("limit", "status", "filter"),
    "workflows.list": ("hasUi", "filter"),
    "runs.get": _RUN,
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
    "runs.cancel": _RUN,
    "runs.rerun": ("runId", "newRunId"),
    "approvals.decide": ("runId", "nodeId", "iteration", "approved", "note", "decision"),
    "signals.send": ("runId", "signalName", "correlationKey", "correlationId", "data", "payload"),
    "cron.list": ("filter", "workflow"),
    "cron.add": ("workflow", "pattern", "cronId", "enabled", "timezone"),
    "cron.remove": ("cronId",),
    "cron.trigger": ("cronId", "workflow", "input"),
    "connect": ("minProtocol", "maxProtocol", "client", "auth", "subscribe"),
}
"""The params each method reads (docs/protocol.md#methods), under its legacy name."""
STABLE_NAMES = {
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


def keys_of(method: str) -> tuple[str, ...] | None:
    """The params ``method`` reads; None for a method this table does not know."""
    return METHOD_KEYS.get(STABLE_NAMES.get(method, method))


@st.composite
def param_objects(draw: st.DrawFn, method: str | None = None) -> dict[str, Any]:
    """An object of protocol keys, each with a realistic or a hostile value, plus a stray key.

    With a known ``method``, each of its params is there four times in five, realistic two times
    in three, so that calls get past the first checks into the deep paths of the handler.
    """
    params: dict[str, Any] = {}
    wanted = keys_of(method) if method is not None else None
    if wanted is None:
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
            params[key] = draw(st.one_of(realistic[key], json_values))
    else:
        for key in wanted:
            if draw(st.integers(0, 4)):
                params[key] = draw(st.one_of(realistic[key], realistic[key], json_values))
    for key, value in draw(st.dictionaries(keys, json_values, max_size=1)).items():
        params.setdefault(key, value)
    return params


MISSING = object()
"""No ``params`` key at all."""
_batches: dict[str, st.SearchStrategy[list[Any]]] = {}


def batches_for(method: str) -> st.SearchStrategy[list[Any]]:
    """One to three params values for calls of ``method``: mostly objects of its keys, or any JSON, or none."""
    if method not in _batches:
        objects = param_objects(method)
        _batches[method] = st.lists(
            st.one_of(objects, objects, objects, json_values, st.just(MISSING)), min_size=1, max_size=3
        )
    return _batches[method]


def resolve(value: Any, ids: dict[str, str]) -> Any:
    """Replace the placeholders (``@gate``, ``@cron``, ...) with a gateway's real ids."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [resolve(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, ids) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    """JSON text as a JavaScript client sends it: lone surrogates as ``\\uXXXX`` escapes."""
    return json.dumps(value)


_ids = itertools.count()


def next_id(prefix: str = "f") -> str:
    return f"{prefix}{next(_ids)}"


# -- gateways and the store ----------------------------------------------------------------------
class HttpConn:
    """A minimal keep-alive HTTP/1.1 client (httpx costs several times what the gateway spends on a call).

    No retries: a request the gateway does not answer fails the test. A connection idle for longer
    than the server keeps it (5 s) is replaced before it is used, so a close never hides a request.
    """

    IDLE_S = 3.0

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.sock: socket.socket | None = None
        self.reader: Any = None
        self.used = 0.0

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
        self.sock = self.reader = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
        if self.sock is not None and time.monotonic() - self.used > self.IDLE_S:
            self.close()
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=ANSWER_TIMEOUT_S)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader = self.sock.makefile("rb")
        head = f"POST {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        try:
            self.sock.sendall(head.encode("latin-1") + b"\r\n" + body)
            answer = self._read()
        except (OSError, ValueError) as exc:
            self.close()
            raise ConnectionError(f"no answer: {exc!r}") from exc
        self.used = time.monotonic()
        if answer.headers.get("connection", "").lower() == "close":
            self.close()
        return answer

    def _read(self) -> HttpAnswer:
        status_line = self.reader.readline()
        if not status_line:
            raise ConnectionError("closed without an answer")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.reader.readline().split(b";")[0], 16):
                body += self.reader.read(size)
                self.reader.readline()
            self.reader.readline()
        else:
            body = self.reader.read(int(headers.get("content-length", "0")))
        return HttpAnswer(status, headers, body)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Target:
    """A gateway under test, the placeholder ids it resolves, its token and its store baseline."""

    live: Live
    name: str
    token: str | None = None
    ids: dict[str, str] = field(default_factory=dict)
    baseline: Ledger | None = None
    http: HttpConn = field(init=False)
    db: Connection = field(init=False)
    _reader: Store = field(init=False)

    def __post_init__(self) -> None:
        self.http = HttpConn(self.live.url)
        # a connection of our own to the gateway's database, each query seeing what is committed
        self._reader = Store(self.live.db_url, migrate_schema=False)
        self.db = self._reader.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def headers(self, token: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"} if token else {}

    def stop(self) -> None:
        self.http.close()
        self.db.close()
        self._reader.close()
        self.live.stop()


def start(databases: Databases, name: str, **options: Any) -> Live:
    """A gateway with the example workflows on a new database, as ``start_gateway`` does."""
    return Live(Gateway.for_workflows(WORKFLOWS, db=databases.new(name), **options))


SEEDS = {
    "gate": ("gate", {"waiting-approval"}),
    "waiter": ("waiter", {"waiting-event"}),
    "hello": ("hello", {"finished"}),
    "failed": ("failing", {"failed"}),
    "slow": ("slow", {"running"}),
    "typed": ("typed", {"finished"}),
}


def seed(target: Target, prefix: str, roles: list[str]) -> None:
    """Start one run per role (ids ``<prefix>-<role>``) and wait until each rests in its state."""
    for role in roles:
        run_id = f"{prefix}-{role}"
        params = {"workflow": SEEDS[role][0], "runId": run_id, "input": {"name": "ada"}}
        target.live.ok("launchRun", params, token=target.token)
        target.ids[f"@{role}"] = run_id
    for role in roles:
        target.live.wait_status(f"{prefix}-{role}", SEEDS[role][1])


CRON_SEEDS = {"@cron": "hello", "@typedcron": "typed"}


def seed_crons(target: Target, prefix: str) -> None:
    for ref, workflow in CRON_SEEDS.items():
        cron_id = f"{prefix}-{ref[1:]}"
        params = {"cronId": cron_id, "workflow": workflow, "pattern": "0 0 1 1 *", "timezone": "UTC"}
        target.live.ok("cron.add", params, token=target.token)
        target.ids[ref] = cron_id


def query(target: Target, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in target.db.execute(text(sql))]


@dataclass(frozen=True)
class Ledger:
    """Everything stored about runs and schedules on a reader gateway, row by row (heartbeat times
    left out: the engine moves them on its own)."""

    runs: frozenset[tuple[Any, ...]]
    nodes: frozenset[tuple[Any, ...]]
    attempts: frozenset[tuple[Any, ...]]
    frames: frozenset[tuple[Any, ...]]
    events: frozenset[tuple[Any, ...]]
    approvals: frozenset[tuple[Any, ...]]
    signals: frozenset[tuple[Any, ...]]
    inputs: frozenset[tuple[Any, ...]]
    crons: frozenset[tuple[Any, ...]]


LEDGER_SQL = {
    "runs": f"SELECT run_id, workflow_name, status, created_at_ms, started_at_ms, finished_at_ms, runtime_owner_id, "
    f"cancel_requested_at_ms, hijack_requested_at_ms, hijack_target, error_json, config_json FROM {schema.runs.name}",
    "nodes": f"SELECT * FROM {schema.nodes.name}",
    "attempts": f"SELECT run_id, node_id, iteration, attempt, state, started_at_ms, finished_at_ms, error_json, "
    f"response_text, meta_json FROM {schema.attempts.name}",
    "frames": f"SELECT run_id, count(*), max(frame_no) FROM {schema.frames.name} GROUP BY run_id",
    "events": f"SELECT run_id, count(*), max(seq) FROM {schema.events.name} GROUP BY run_id",
    "approvals": f"SELECT * FROM {schema.approvals.name}",
    "signals": f"SELECT * FROM {schema.signals.name}",
    "inputs": f"SELECT * FROM {schema.run_input.name}",
    "crons": f"SELECT * FROM {schema.cron.name}",
}


def ledger(target: Target) -> Ledger:
    return Ledger(**{name: frozenset(query(target, sql)) for name, sql in LEDGER_SQL.items()})


def settle(target: Target) -> Ledger:
    """The ledger once two readings 100 ms apart agree (the seeded runs have come to rest)."""
    previous = ledger(target)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = ledger(target)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{target.name}: the store did not settle")


def assert_unchanged(target: Target, what: Callable[[], str]) -> None:
    """Property (c) on a reader gateway: the whole store is as it was seeded."""
    assert target.baseline is not None
    current = ledger(target)
    if current != target.baseline:
        changed = [
            name for name in Ledger.__dataclass_fields__ if getattr(current, name) != getattr(target.baseline, name)
        ]
        pytest.fail(f"{target.name}: stored {changed} changed -- after {what()}")


TERMINAL_SQL = ", ".join(f"'{status}'" for status in sorted(TERMINAL))


@dataclass(frozen=True)
class Writes:
    """What a refused call on the writer gateway must leave as it was; cheap to read however many
    runs the writer has accumulated."""

    last_created: int  # the newest run's creation time (runs are created at the time of their call) ...
    created_then: frozenset[str]  # ... and the runs created then: any other run created since is new
    finished: dict[str, tuple[Any, ...]]  # runs in a terminal status, which nothing may touch
    signals: int
    inputs: int
    decided: frozenset[tuple[Any, ...]]  # approvals that are no longer pending
    approvals: int
    crons: frozenset[tuple[Any, ...]]


def writes(target: Target) -> Writes:
    runs = schema.runs.name
    last_created, signals, inputs, approvals = query(
        target,
        f"SELECT (SELECT coalesce(max(created_at_ms), 0) FROM {runs}), (SELECT count(*) FROM {schema.signals.name}), "
        f"(SELECT count(*) FROM {schema.run_input.name}), (SELECT count(*) FROM {schema.approvals.name})",
    )[0]
    created_then = query(target, f"SELECT run_id FROM {runs} WHERE created_at_ms = {last_created}")
    finished = query(
        target,
        f"SELECT run_id, status, finished_at_ms, cancel_requested_at_ms, hijack_requested_at_ms, "
        f"length(error_json), length(config_json) FROM {runs} WHERE status IN ({TERMINAL_SQL})",
    )
    decided = query(
        target,
        f"SELECT run_id, node_id, iteration, status, decided_at_ms, note, decided_by, decision_json "
        f"FROM {schema.approvals.name} WHERE status != 'requested'",
    )
    return Writes(
        last_created=last_created,
        created_then=frozenset(row[0] for row in created_then),
        finished={row[0]: row[1:] for row in finished},
        signals=signals,
        inputs=inputs,
        decided=frozenset(decided),
        approvals=approvals,
        crons=frozenset(query(target, f"SELECT * FROM {schema.cron.name}")),
    )


def runs_since(target: Target, before: Writes) -> list[tuple[str, bool]]:
    """The runs stored since ``before`` was read, each with whether a schedule started it."""
    rows = query(
        target,
        f'SELECT run_id, config_json LIKE \'%"gatewayTriggeredBy":"cron:%\' FROM {schema.runs.name} '
        f"WHERE created_at_ms >= {before.last_created}",
    )
    return [(run_id, bool(by_cron)) for run_id, by_cron in rows if run_id not in before.created_then]


def assert_nothing_stored(target: Target, before: Writes, what: Callable[[], str]) -> None:
    """Property (c) on the writer gateway, after a refused call: no run, input, signal, decision or
    cron stored, no finished run touched. Runs a schedule fired are not the call's (none should
    fire: the seeded schedules are yearly and fuzzed ones are removed at once)."""
    after = writes(target)
    problems = []
    new_runs = runs_since(target, before)
    if created := [run_id for run_id, by_cron in new_runs if not by_cron]:
        problems.append(f"runs created: {created}")
    if touched := [run_id for run_id, row in before.finished.items() if after.finished.get(run_id) != row]:
        problems.append(f"finished runs changed: {touched}")
    if after.inputs - before.inputs > len(new_runs) - len(created):
        problems.append(f"{after.inputs - before.inputs} inputs stored")
    if after.signals != before.signals:
        problems.append(f"{after.signals - before.signals} signals stored")
    if after.decided != before.decided:
        problems.append(f"approvals decided: {sorted(after.decided ^ before.decided, key=repr)}")
    if after.crons != before.crons:
        problems.append(f"crons changed: {sorted(after.crons ^ before.crons, key=repr)}")
    if problems:
        pytest.fail(f"refused call stored something -- {what()} -- {'; '.join(problems)}")


@pytest.fixture(scope="module")
def module_databases(
    request: pytest.FixtureRequest, db_kind: str, tmp_path_factory: pytest.TempPathFactory, migrated_db: Path
) -> Iterator[Databases]:
    """Databases for the gateways this module shares between its tests (one set per kind of database)."""
    template = str(request.getfixturevalue("pg_template")) if db_kind == "postgres" else None
    made = Databases(db_kind, tmp_path_factory.mktemp(f"fuzz-{db_kind}"), migrated_db, template)
    yield made
    made.close()


@pytest.fixture(scope="module")
def readers(module_databases: Databases) -> Iterator[list[Target]]:
    """Two seeded gateways, one without auth and one in token mode, whose stores must never change."""
    targets: list[Target] = []
    try:
        targets.append(Target(start(module_databases, "open"), "open gateway"))
        targets.append(Target(start(module_databases, "token", auth=TOKEN_AUTH), "token gateway", OPERATOR_TOKEN))
        for target in targets:
            seed(target, "seed", list(SEEDS))
            seed_crons(target, "seed")
        for target in targets:
            target.baseline = settle(target)
        yield targets
    finally:
        for target in targets:
            target.stop()


@pytest.fixture(scope="module")
def writer_gateway(module_databases: Databases) -> Iterator[Target]:
    """A token-mode gateway on which the mutating methods are fuzzed."""
    live = start(module_databases, "writer", auth=TOKEN_AUTH)
    target = Target(live, "writer gateway", OPERATOR_TOKEN)
    try:
        seed(target, "w", list(SEEDS))
        seed_crons(target, "w")
        yield target
    finally:
        target.stop()


@pytest.fixture
def writer(writer_gateway: Target, request: pytest.FixtureRequest) -> Target:
    """The writer gateway; tests of methods that approve, signal, cancel or resume get fresh runs to act on."""
    callspec = getattr(request.node, "callspec", None)
    method = callspec.params.get("method") if callspec is not None else None
    if method is None or method in RUN_TARGETED:
        seed(writer_gateway, f"w{next(_ids)}", ["gate", "waiter", "slow"])
    reset_crons(writer_gateway)
    return writer_gateway


def reset_crons(target: Target) -> None:
    """Back to the two seeded schedules (which never fire during a test): a fuzzed schedule that
    fires every second would start runs in the middle of later calls."""
    seeded = {target.ids[ref] for ref in CRON_SEEDS}
    for row in operator_call(target, "cron.list", {}):
        if row["cronId"] not in seeded:
            operator_call(target, "cron.remove", {"cronId": row["cronId"]})
    for ref, workflow in CRON_SEEDS.items():
        params = {"cronId": target.ids[ref], "workflow": workflow, "pattern": "0 0 1 1 *", "timezone": "UTC"}
        operator_call(target, "cron.add", params)


def operator_call(target: Target, method: str, params: dict[str, Any]) -> Any:
    """A call the test needs to succeed (ids may hold lone surrogates: sent escaped, as ``dumps`` does)."""
    answer = target.http.post(
        "/rpc", dumps({"method": method, "params": params}).encode(), target.headers(target.token)
    )
    assert answer.status == 200, answer.body
    return answer.json()["payload"]


# -- HTTP ----------------------------------------------------------------------------------------
ABSENT = object()
frame_ids = st.one_of(
    st.just(ABSENT), st.just(ABSENT), st.sampled_from(["h1", "", "\ud800", "a" * 128, "a" * 129, 5, None, [], {}])
)


@dataclass(frozen=True)
class HttpShape:
    """How a call is put on the wire: which route, which body id, params as the body or wrapped."""

    route: str
    frame_id: Any
    wrapped: bool
    body_method: Any


http_shapes = st.builds(
    HttpShape,
    st.sampled_from(["/rpc", "/v1/rpc"]),
    frame_ids,
    st.booleans(),
    st.one_of(st.just(ABSENT), st.sampled_from([None, 5, "health", "nope", "Bad name"])),
)


def http_request(method: str, params: Any, shape: HttpShape) -> tuple[str, bytes]:
    """The path and body of a call of ``method``."""
    body: Any
    if shape.route == "/rpc":
        body = {"method": method}
        path = "/rpc"
    else:
        path = "/v1/rpc/" + quote(method, safe="")
        body = {}
        if shape.wrapped or not isinstance(params, dict):
            if shape.body_method is not ABSENT:
                body["method"] = shape.body_method
        else:
            body = dict(params)
    if shape.frame_id is not ABSENT:
        body["id"] = shape.frame_id
    if (shape.route == "/rpc" or shape.wrapped or not isinstance(params, dict)) and params is not MISSING:
        if shape.route == "/v1/rpc" and not isinstance(params, dict) and not shape.wrapped:
            return path, dumps(params).encode()  # a body that is not an object
        body["params"] = params
    return path, dumps(body).encode()


def post(target: Target, path: str, body: bytes, token: str | None, extra: dict[str, str] | None = None) -> HttpAnswer:
    """POST and check (a) and (b): an answer, below 500, JSON, never ``SERVER_ERROR``."""
    headers = {"content-type": "application/json", **target.headers(token), **(extra or {})}
    what = f"{target.name}: POST {path} (token {token!r}) {body[:300]!r}"
    try:
        response = target.http.post(path, body, headers)
    except ConnectionError as exc:
        pytest.fail(f"unanswered: {what} -- {exc}")
    assert response.status < 500, f"{what} -> {response.status} {response.body[:500]!r}"
    try:
        answer = response.json()
    except ValueError:
        pytest.fail(f"{what} -> not JSON: {response.status} {response.body[:300]!r}")
    error = answer.get("error") if isinstance(answer, dict) else None
    assert not (isinstance(error, dict) and error.get("code") == "SERVER_ERROR"), f"{what} -> {answer}"
    return response


def http_ok(response: HttpAnswer) -> bool:
    return bool(response.status == 200 and response.json().get("ok") is True)


def token_variants(target: Target) -> list[str | None]:
    """Without a token; with the operator's and the reader's (run:read only) when the gateway has tokens."""
    return [None] if target.token is None else [None, OPERATOR_TOKEN, READER_TOKEN]


def reader_params(method: str, params: Any) -> Any:
    """What a reader gateway may be sent: mutating methods only ever name a run or cron that does not exist."""
    if isinstance(params, dict) and method in RUN_TARGETED:
        return {**params, "runId": f"missing-{uuid.uuid4()}"}
    if isinstance(params, dict) and method in CRON_TARGETED:
        return {**params, "cronId": f"missing-{uuid.uuid4()}"}
    return params


def fits(*bodies: bytes | str) -> bool:
    return all(len(b.encode("utf-8", "surrogatepass") if isinstance(b, str) else b) < MAX_FRAME_BYTES for b in bodies)


@pytest.mark.parametrize("method", READER_METHODS)
@PER_METHOD
@given(data=st.data())
def test_http_reader(readers: list[Target], method: str, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(UNKNOWN_METHODS), label="method") if method == UNKNOWN else method
    batch = data.draw(batches_for(name), label="params")
    shapes = data.draw(st.lists(http_shapes, min_size=len(batch), max_size=len(batch)), label="shapes")
    sent: list[str] = []
    for index, raw in enumerate(batch):
        for target in readers:
            params = reader_params(name, resolve(raw, target.ids))
            path, body = http_request(name, params, shapes[index])
            assume(fits(body))
            for token in token_variants(target):
                post(target, path, body, token)
                sent.append(f"{target.name} {path} {body[:200]!r}")
    for target in readers:
        assert_unchanged(target, lambda: "; ".join(sent))


# -- WebSocket -----------------------------------------------------------------------------------
class Sockets:
    """WebSocket clients for one test, kept between examples unless a fuzzed call could change who
    they are (``connect``): then every example gets new ones."""

    WAITING_MAX_AGE_S = 5.0
    """A socket that has not connected is closed after ``connectTimeoutMs`` (10 s): replaced before."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str | None], WsClient] = {}
        self._waiting: dict[int, tuple[WsClient, float]] = {}
        self._fresh: list[WsClient] = []

    def connected(self, target: Target, token: str | None, fresh: bool) -> WsClient:
        key = (id(target), token)
        client = None if fresh else self._kept.get(key)
        if client is None:
            client = target.live.ws(connect_now=True, token=token)
            assert client.hello["ok"] is True, client.hello
            if fresh:
                self._fresh.append(client)
            else:
                self._kept[key] = client
        return client

    def unauthenticated(self, target: Target, fresh: bool) -> WsClient:
        if fresh:
            client = target.live.ws()
            self._fresh.append(client)
            return client
        entry = self._waiting.get(id(target))
        if entry is None or time.monotonic() - entry[1] > self.WAITING_MAX_AGE_S:
            if entry is not None:
                entry[0].close()
            entry = (target.live.ws(), time.monotonic())
            self._waiting[id(target)] = entry
        return entry[0]

    def variants(self, target: Target, *, fresh: bool = False) -> list[tuple[str, WsClient]]:
        """A socket before ``connect``, then one connected with each token (operator, reader) if any."""
        out = [("before connect", self.unauthenticated(target, fresh))]
        for token in [None] if target.token is None else [OPERATOR_TOKEN, READER_TOKEN]:
            out.append((f"connected (token {token!r})", self.connected(target, token, fresh)))
        return out

    def close_fresh(self) -> None:
        for client in self._fresh:
            client.close()
        self._fresh.clear()

    def close(self) -> None:
        self.close_fresh()
        for client in [*self._kept.values(), *(c for c, _ in self._waiting.values())]:
            client.close()
        self._kept.clear()
        self._waiting.clear()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    pool = Sockets()
    yield pool
    pool.close()


def receive(client: WsClient, deadline: float, what: Callable[[], str]) -> dict[str, Any]:
    """The next response frame (events are skipped)."""
    while True:
        try:
            message = client.recv(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            pytest.fail(f"unanswered after {ANSWER_TIMEOUT_S} s: {what()}")
        except ConnectionClosed as exc:
            pytest.fail(f"the gateway closed the socket ({exc!r}) instead of answering: {what()}")
        if message.get("type") != "event":
            return message


def exchange(client: WsClient, messages: list[str | bytes], own_ids: list[str | None], label: str) -> list[Any]:
    """Send ``messages``; check (a) and (b): exactly one response each, none from the server's error path.

    A sentinel ``health`` request follows them; waiting handlers may answer after it, so reading
    goes on until the sentinel and every expected response are in. A second sentinel then shows
    any response beyond the expected ones.
    """

    def what() -> str:
        return f"{label}: {[m[:300] for m in messages]}"

    for message in messages:
        client.send(message)
    sentinel = next_id("~sentinel")
    client.send(dumps({"type": "req", "id": sentinel, "method": "health"}))
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    answers: list[dict[str, Any]] = []
    seen_sentinel = False
    while not seen_sentinel or len(answers) < len(messages):
        answer = receive(client, deadline, what)
        if answer.get("id") == sentinel:
            seen_sentinel = True
        else:
            answers.append(answer)
    second = next_id("~sentinel")
    client.send(dumps({"type": "req", "id": second, "method": "health"}))
    while (answer := receive(client, deadline, what)).get("id") != second:
        answers.append(answer)
    assert len(answers) == len(messages), f"{what()} -> {len(answers)} responses to {len(messages)} messages: {answers}"
    allowed = {i for i in own_ids if i is not None} | {"invalid"}
    counts = Counter(a.get("id") for a in answers)
    for answer in answers:
        assert answer.get("type") == "res" and answer.get("apiVersion") == "v1", f"{what()} -> {answer}"
        assert answer.get("id") != "server", f"{what()} -> {answer}"
        error = answer.get("error")
        assert not (isinstance(error, dict) and error.get("code") == "SERVER_ERROR"), f"{what()} -> {answer}"
        assert answer.get("id") in allowed, f"{what()} -> unexpected response id: {answer}"
    duplicated = [i for i, n in counts.items() if i != "invalid" and n > 1]
    assert not duplicated, f"{what()} -> answered more than once: {duplicated}"
    return answers


def ws_request(method: str, params: Any, binary: bool) -> tuple[str | bytes, str]:
    frame_id = next_id()
    body: dict[str, Any] = {"type": "req", "id": frame_id, "method": method}
    if params is not MISSING:
        body["params"] = params
    text = dumps(body)
    return (text.encode() if binary else text), frame_id


@pytest.mark.parametrize("method", READER_METHODS)
@PER_METHOD
@given(data=st.data())
def test_ws_reader(readers: list[Target], sockets: Sockets, method: str, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(UNKNOWN_METHODS), label="method") if method == UNKNOWN else method
    batch = data.draw(batches_for(name), label="params")
    binary = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)), label="binary")
    sent: list[str] = []
    try:
        for target in readers:
            frames: list[str | bytes] = []
            ids: list[str | None] = []
            for index, raw in enumerate(batch):
                message, frame_id = ws_request(name, reader_params(name, resolve(raw, target.ids)), binary[index])
                assume(fits(message))
                frames.append(message)
                ids.append(frame_id)
            # connect changes who a socket is: those tests get new connected sockets every time
            for label, client in sockets.variants(target, fresh=name == "connect"):
                exchange(client, frames, ids, f"{target.name}, {label}")
                sent.append(f"{target.name} {label} {[f[:200] for f in frames]}")
    finally:
        sockets.close_fresh()
    for target in readers:
        assert_unchanged(target, lambda: "; ".join(sent))


# -- the mutating methods, for real --------------------------------------------------------------
CRON_METHODS = frozenset({"cron.add", "cronCreate", "cron.remove", "cronDelete", "cron.trigger", "cronRun"})


def after_success(target: Target, method: str, payload: Any) -> None:
    """Undo what a successful cron call did to the schedules (a fuzzed schedule could fire every
    second and start runs in the middle of later calls)."""
    if method not in CRON_METHODS or not isinstance(payload, dict):
        return
    cron_id = payload.get("cronId")
    seeds = {target.ids[ref]: workflow for ref, workflow in CRON_SEEDS.items()}
    if cron_id in seeds:
        params = {"cronId": cron_id, "workflow": seeds[cron_id], "pattern": "0 0 1 1 *", "timezone": "UTC"}
        operator_call(target, "cron.add", params)
    elif isinstance(cron_id, str) and method in ("cron.add", "cronCreate"):
        operator_call(target, "cron.remove", {"cronId": cron_id})


def call_writer(target: Target, method: str, send: Callable[[], tuple[Any, Any]], what: Callable[[], str]) -> None:
    """Make one call on the writer gateway; if refused, check that nothing was stored for it.

    ``send`` makes the call (checking (a) and (b)) and returns whether it succeeded and its payload.
    """
    before = writes(target)
    ok, payload = send()
    if ok:
        after_success(target, method, payload)
    else:
        assert_nothing_stored(target, before, lambda: f"{what()}: {payload}")


def http_send(target: Target, path: str, body: bytes, token: str | None) -> Callable[[], tuple[Any, Any]]:
    def send() -> tuple[Any, Any]:
        response = post(target, path, body, token)
        answer = response.json()
        if http_ok(response):
            return True, answer.get("payload")
        return False, answer

    return send


def ws_send(client: WsClient, message: str | bytes, frame_id: str, label: str) -> Callable[[], tuple[Any, Any]]:
    def send() -> tuple[Any, Any]:
        (answer,) = exchange(client, [message], [frame_id], label)
        return (True, answer.get("payload")) if answer.get("ok") is True else (False, answer)

    return send


@pytest.mark.parametrize("method", sorted(MUTATING))
@PER_MUTATION
@given(data=st.data())
def test_http_writer(writer: Target, method: str, data: st.DataObject) -> None:
    batch = data.draw(batches_for(method), label="params")
    shapes = data.draw(st.lists(http_shapes, min_size=len(batch), max_size=len(batch)), label="shapes")
    for index, raw in enumerate(batch):
        path, body = http_request(method, resolve(raw, writer.ids), shapes[index])
        assume(fits(body))
        for token in token_variants(writer):
            what = f"POST {path} (token {token!r}) {body[:300]!r}"
            call_writer(writer, method, http_send(writer, path, body, token), lambda: what)  # noqa: B023


@pytest.mark.parametrize("method", sorted(MUTATING))
@PER_MUTATION
@given(data=st.data())
def test_ws_writer(writer: Target, sockets: Sockets, method: str, data: st.DataObject) -> None:
    batch = data.draw(batches_for(method), label="params")
    binary = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)), label="binary")
    try:
        for index, raw in enumerate(batch):
            message, frame_id = ws_request(method, resolve(raw, writer.ids), binary[index])
            assume(fits(message))
            for label, client in sockets.variants(writer):
                what = f"{writer.name}, {label}: {message[:300]!r}"
                call_writer(writer, method, ws_send(client, message, frame_id, what), lambda: what)  # noqa: B023
    finally:
        sockets.close_fresh()


LAUNCHING = frozenset({"launchRun", "runs.create", "runs.rerun", "cron.trigger", "cronRun"})
WAITING = sorted(m for m in MUTATING if m not in CRON_TARGETED and m not in ("cron.add", "cronCreate", "cancelRun"))
"""Methods whose handlers wait: a socket runs at most 32 of them at once and queues the rest."""
burst_calls = st.sampled_from([*WAITING, "health", "getRun", "cancelRun"]).flatmap(
    lambda method: st.tuples(st.just(method), st.one_of(param_objects(method), param_objects(method), json_values))
)


@settings(max_examples=4, deadline=None, suppress_health_check=SUPPRESSED)
@given(calls=st.lists(burst_calls, min_size=33, max_size=70), binary=st.booleans())
def test_ws_burst_beyond_the_in_flight_limit(
    writer: Target, sockets: Sockets, calls: list[tuple[str, Any]], binary: bool
) -> None:
    """More waiting calls at once than a socket runs (32): each still gets exactly one response, and
    only the calls that succeeded stored anything."""
    client = sockets.connected(writer, writer.token, fresh=False)
    frames: list[str | bytes] = []
    ids: list[str | None] = []
    for method, raw in calls:
        message, frame_id = ws_request(method, resolve(raw, writer.ids), binary)
        assume(fits(message))
        frames.append(message)
        ids.append(frame_id)
    before = writes(writer)
    answers = exchange(client, frames, ids, "a burst of waiting calls")
    methods = dict(zip(ids, (method for method, _ in calls), strict=True))
    succeeded = [(methods[a["id"]], a.get("payload")) for a in answers if a.get("ok") is True]
    launched = {p["runId"] for m, p in succeeded if m in LAUNCHING and isinstance(p, dict)}
    for method, payload in succeeded:
        after_success(writer, method, payload)
    new_runs = runs_since(writer, before)
    unexplained = [run_id for run_id, by_cron in new_runs if not by_cron and run_id not in launched]
    assert not unexplained, f"runs no successful call started: {unexplained}"
    after = writes(writer)
    signals_ok = sum(1 for m, _ in succeeded if m in ("submitSignal", "signals.send"))
    decisions_ok = sum(1 for m, _ in succeeded if m in ("submitApproval", "approvals.decide"))
    assert after.signals - before.signals <= signals_ok, "more signals stored than calls succeeded"
    assert len(after.decided - before.decided) <= decisions_ok, "more approvals decided than calls succeeded"
    assert not [run_id for run_id, row in before.finished.items() if after.finished.get(run_id) != row]


# -- a deterministic sweep: each param of each method, one hostile value at a time ------------------
SWEEP_VALUES: list[Any] = [
    MISSING,
    None,
    True,
    False,
    0,
    -1,
    0.5,
    -0.0,
    2**53 + 1,
    2**63,
    2**64,
    -(10**30),
    10**300,
    1e300,
    5e-324,
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\udbff\udfff",
    "😀\ud83d",
    "x" * 16385,
    "a" * 257,
    "0x10",
    " 7 ",
    "1e999",
    [],
    [1],
    ["@hello"],
    {},
    {"a": 1},
    nest(30, 0, "list"),
    nest(31, 0, "dict"),
    [0] * 257,
    {f"k{i}": i for i in range(300)},
]
"""Every param of every method gets each of these in turn (``MISSING``: the key is left out)."""
SWEEP_SPECIFIC: dict[str, list[Any]] = {
    "runId": RUN_REFS,
    "leftRunId": RUN_REFS,
    "rightRunId": RUN_REFS,
    "newRunId": RUN_REFS,
    "nodeId": NODE_IDS,
    "iteration": NUMBERISH,
    "attempt": NUMBERISH,
    "frameNo": NUMBERISH,
    "afterFrameNo": NUMBERISH,
    "afterSeq": NUMBERISH,
    "limit": NUMBERISH,
    "status": STATUSES,
    "workflow": WORKFLOW_KEYS,
    "cronId": CRON_REFS,
    "pattern": PATTERNS,
    "timezone": TIMEZONES,
    "signalName": ["go", " go ", "\ud800x"],
    "correlationKey": ["go", " "],
    "correlationId": ["c1", "\udfff"],
    "approved": [True, "true", 1],
    "note": ["fine"],
    "hasUi": [True, "false"],
    "enabled": [False, "no"],
    "input": [{"name": "\ud800"}, {"name": 5}, {"\ud800": 1}, {"n": 2**64}, {"name": "x" * 16384}, nest(29, 0, "dict")],
    "filter": [{"limit": "x"}, {"limit": 0}, {"status": 5}, {"runId": "\ud800"}, {"workflow": []}, {"hasUi": True}],
    "options": [{"runId": "x" * 300}, {"runId": "\ud800"}, {"runId": 5}, {"runId": "@hello"}, {"idempotencyKey": []}],
    "data": [{"x": "\ud800"}, 2**64, nest(29, 0, "list")],
    "payload": [{"x": "\ud800"}, -(2**63) - 1],
    "decision": [
        {"approved": True},
        {"value": None},
        {"value": "\ud800"},
        {"selected": "blue"},
        {"ranked": ["a"]},
        {"approved": "yes", "note": 5},
    ],
    "minProtocol": [1.5, 2, "1", 2**64],
    "maxProtocol": [1.5, 0, "1", 2**64],
    "client": [{"id": "fuzz"}, 0, "", True],
    "auth": [{"token": OPERATOR_TOKEN}, {"token": READER_TOKEN}, {"token": 5}, {"token": "\ud800"}, [], "tok", 5],
    "subscribe": [["@hello"], "x", [5, None], ["\ud800"]],
}
SWEEP_BASES: dict[str, dict[str, Any]] = {
    "health": {},
    "runs.list": {"limit": 5, "status": "finished"},
    "workflows.list": {"hasUi": False},
    "runs.get": {"runId": "@hello"},
    "runs.diff": {"leftRunId": "@hello", "rightRunId": "@failed"},
    "frames.list": {"runId": "@hello", "limit": 2, "afterFrameNo": 0},
    "frames.get": {"runId": "@hello", "frameNo": 1},
    "attempts.list": {"runId": "@hello", "nodeId": "greet", "iteration": 0},
    "attempts.get": {"runId": "@hello", "nodeId": "greet", "iteration": 0, "attempt": 1},
    "approvals.list": {"runId": "@gate", "workflow": "gate", "limit": 5},
    "streamRunEvents": {"runId": "@hello", "afterSeq": 0},
    "hijackRun": {"runId": "@hello"},
    "runs.create": {"workflow": "hello", "input": {"name": "ada"}},
    "resumeRun": {"runId": "@gate"},
    "runs.cancel": {"runId": "@slow"},
    "runs.rerun": {"runId": "@hello"},
    # a node that is not waiting: every check runs, and the gate stays pending for the next case
    "approvals.decide": {"runId": "@gate", "nodeId": "nope", "iteration": 0, "approved": True, "note": "n"},
    "signals.send": {"runId": "@waiter", "signalName": "nope", "data": {}},
    "cron.list": {"filter": {"workflow": "hello"}},
    "cron.add": {"workflow": "hello", "pattern": "0 0 1 1 *", "cronId": "sweep", "timezone": "UTC"},
    "cron.remove": {"cronId": "@cron"},
    "cron.trigger": {"cronId": "@typedcron", "input": {"name": "ada"}},
    "connect": {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "fuzz"}, "auth": {"token": OPERATOR_TOKEN}},
}
"""Valid params per method (legacy names): the sweep changes one key at a time."""


def sweep_cases(method: str) -> list[Any]:
    """Params for ``method``: its valid base, then each key with each sweep value, then non-objects."""
    canonical = STABLE_NAMES.get(method, method)
    base = SWEEP_BASES.get(canonical, {})
    cases: list[Any] = [base]
    for key in keys_of(method) or ():
        for value in SWEEP_VALUES + SWEEP_SPECIFIC.get(key, []):
            params = {k: v for k, v in base.items() if k != key}
            if value is not MISSING:
                params[key] = value
            cases.append(params)
    return [*cases, MISSING, None, [], "x", 5, [base]]


SWEEP_METHODS = [m for m in READER_METHODS if m != UNKNOWN]


class Findings:
    """Failures of a sweep, gathered so that one bad value does not hide the others."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, case: Callable[[], None]) -> None:
        try:
            case()
        except (AssertionError, pytest.fail.Exception) as exc:
            self.failures.append(str(exc).split("\n")[0][:1500])

    def done(self) -> None:
        if self.failures:
            pytest.fail(f"{len(self.failures)} failing cases:\n" + "\n".join(self.failures), pytrace=False)


def sweep_shape(index: int) -> HttpShape:
    return HttpShape("/rpc" if index % 2 else "/v1/rpc", ABSENT, False, ABSENT)


@pytest.mark.parametrize("method", SWEEP_METHODS)
def test_http_sweep_reader(readers: list[Target], method: str) -> None:
    target = readers[1]  # the token gateway, with the operator's token: every call reaches its handler
    findings = Findings()
    for index, raw in enumerate(sweep_cases(method)):
        path, body = http_request(method, reader_params(method, resolve(raw, target.ids)), sweep_shape(index))
        findings.check(lambda: post(target, path, body, target.token))  # noqa: B023
    for each in readers:
        findings.check(lambda: assert_unchanged(each, lambda: f"the {method} sweep"))  # noqa: B023
    findings.done()


@pytest.mark.parametrize("method", SWEEP_METHODS)
def test_ws_sweep_reader(readers: list[Target], sockets: Sockets, method: str) -> None:
    target = readers[1]
    findings = Findings()
    client = sockets.connected(target, target.token, fresh=method == "connect")
    for index, raw in enumerate(sweep_cases(method)):
        message, frame_id = ws_request(method, reader_params(method, resolve(raw, target.ids)), index % 3 == 0)
        findings.check(lambda: exchange(client, [message], [frame_id], f"the {method} sweep"))  # noqa: B023
    sockets.close_fresh()
    for each in readers:
        findings.check(lambda: assert_unchanged(each, lambda: f"the {method} sweep"))  # noqa: B023
    findings.done()


@pytest.mark.parametrize("method", sorted(MUTATING))
def test_http_sweep_writer(writer: Target, method: str) -> None:
    """The even cases of the sweep over HTTP (the odd ones go over WebSocket: each is made once)."""
    findings = Findings()
    for index, raw in enumerate(sweep_cases(method)[0::2]):
        path, body = http_request(method, resolve(raw, writer.ids), sweep_shape(index))
        send = http_send(writer, path, body, writer.token)
        findings.check(lambda: call_writer(writer, method, send, lambda: f"POST {path} {body[:300]!r}"))  # noqa: B023
    findings.done()


@pytest.mark.parametrize("method", sorted(MUTATING))
def test_ws_sweep_writer(writer: Target, sockets: Sockets, method: str) -> None:
    """The odd cases of the sweep over WebSocket."""
    findings = Findings()
    client = sockets.connected(writer, writer.token, fresh=False)
    for index, raw in enumerate(sweep_cases(method)[1::2]):
        message, frame_id = ws_request(method, resolve(raw, writer.ids), index % 3 == 0)
        send = ws_send(client, message, frame_id, f"the {method} sweep")
        findings.check(lambda: call_writer(writer, method, send, lambda: repr(message[:300])))  # noqa: B023
    findings.done()


# -- envelopes: ids, method names, types, paths ----------------------------------------------------
envelope_values = st.one_of(
    st.sampled_from(
        [
            "req",
            "res",
            "event",
            "REQ",
            "",
            "health",
            "getRun",
            "connect",
            "runs.get",
            "Health",
            "runs..get",
            ".runs",
            "runs.",
            "1health",
            "a" * 64,
            "a" * 65,
            "h\u0435alth",  # a Cyrillic e
            "health\n",
            "a" * 128,
            "a" * 129,
            "😀" * 64,
            "😀" * 65,
        ]
    ),
    json_values,
)


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A request object whose ``type``, ``id`` and ``method`` may each be wrong or missing."""
    body: dict[str, Any] = {}
    for key, good in (("type", "req"), ("id", "e1"), ("method", "health")):
        choice = draw(st.sampled_from(["good", "good", "absent", "hostile"]))
        if choice == "good":
            body[key] = good
        elif choice == "hostile":
            body[key] = draw(envelope_values)
    if draw(st.booleans()):
        body["params"] = draw(json_values)
    for key, value in draw(st.dictionaries(keys, json_values, max_size=2)).items():
        body.setdefault(key, value)
    return body


@WIRE
@RAW
@given(body=envelopes(), binary=st.booleans())
def test_ws_envelopes(readers: list[Target], sockets: Sockets, body: dict[str, Any], binary: bool) -> None:
    """Hostile ``type``/``id``/``method``: one response each, with the frame's own id or ``"invalid"``."""
    if body.get("method") == "connect" or str(body.get("method")) in MUTATING:
        body["method"] = "health"
    text = dumps(body)
    assume(fits(text))
    own = body.get("id") if isinstance(body.get("id"), str) else None
    try:
        for target in readers:
            for label, client in sockets.variants(target):
                exchange(client, [text.encode() if binary else text], [own], f"{target.name}, {label}")
    finally:
        sockets.close_fresh()
    for target in readers:
        assert_unchanged(target, lambda: text[:300])


path_segments = st.one_of(
    st.sampled_from(
        [
            "health",
            "getRun",
            "%ZZ",
            "%",
            "%C3%28",
            "%F0%9F%98%80",
            "%00",
            "%2F",
            "runs%2Eget",
            "%ED%A0%80",  # an encoded lone surrogate: not UTF-8
            "a" * 65,
            "connect",
            "streamRunEvents",
            "launchRun",  # without a token: refused before anything is read
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#"), min_size=1, max_size=20),
)


@WIRE
@RAW
@given(body=envelopes(), segment=path_segments, request_id=st.sampled_from([None, "", "x" * 300, "r-1"]))
def test_http_envelopes(readers: list[Target], body: dict[str, Any], segment: str, request_id: str | None) -> None:
    """Hostile ids and method names in the body and in the path of ``/v1/rpc/{method}``."""
    if str(body.get("method")) in MUTATING:
        body["method"] = "health"
    raw = dumps(body).encode()
    assume(fits(raw))
    extra = {"x-request-id": request_id} if request_id is not None else {}
    for target in readers:
        post(target, "/rpc", raw, target.token, extra)
        # mutating methods named in the path only without a token: they are refused unread
        token = None if segment in ("launchRun",) else target.token
        post(target, f"/v1/rpc/{segment}", raw, token, extra)
    for target in readers:
        assert_unchanged(target, lambda: f"{segment} {raw[:300]!r}")


# -- raw bytes: invalid UTF-8, number literals JSON cannot hold, broken JSON ------------------------
NUMBER_LITERALS = [
    b"1e999",
    b"-1e999",
    b"1E400",
    b"-0",
    b"0e0",
    b"-0.0e-0",
    b"1" + b"0" * 400,
    b"-" + b"9" * 310,
    b"0." + b"0" * 400 + b"1",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"0x10",
    b"01",
    b".5",
    b"5.",
    b"1e",
    b"+1",
]
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xa0\xa1",
    b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\xbc",
    b"\xed\xa0\x80",
    b"\x80",
]


@st.composite
def raw_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A request as bytes, mangled: invalid UTF-8 spliced in, a number no double holds, cut short,
    a BOM or garbage around it; or plain random bytes. Returns the bytes and the method."""
    method = draw(st.sampled_from([*READ_ONLY, "connect", "nope"]))
    kind = draw(st.sampled_from(["utf8", "utf8-string", "number", "cut", "wrap", "random"]))
    params = draw(st.one_of(param_objects(method), json_values))
    text = dumps({"type": "req", "id": "raw1", "method": method, "params": params}).encode()
    if kind == "random":
        return draw(st.binary(max_size=400)), method
    if kind == "utf8":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:], method
    if kind == "utf8-string":  # inside a string value: the rest stays valid JSON
        bad = draw(st.sampled_from(INVALID_UTF8))
        return dumps({"type": "req", "id": "raw1", "method": method, "params": {"runId": "@"}}).encode().replace(
            b'"@"', b'"' + bad + b'"'
        ), method
    if kind == "number":
        literal = draw(st.sampled_from(NUMBER_LITERALS))
        key = draw(st.sampled_from(["limit", "frameNo", "afterSeq", "iteration", "minProtocol", "x"]))
        return dumps({"type": "req", "id": "raw1", "method": method, "params": {key: 7}}).encode().replace(
            b":7}", b":" + literal + b"}"
        ), method
    if kind == "cut":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))], method
    prefix = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b" \n\t", b"[", b"\x00"]))
    suffix = draw(st.sampled_from([b"", b"x", b"}", b"\x00", b" ", b"\n{}"]))
    return prefix + text + suffix, method


@WIRE
@RAW
@given(raw=raw_bodies(), route=st.sampled_from(["/rpc", "/v1/rpc/getRun", "/v1/rpc/health", "/v1/rpc/listRuns"]))
def test_http_raw_bodies(readers: list[Target], raw: tuple[bytes, str], route: str) -> None:
    body, _ = raw
    assume(fits(body))
    for target in readers:
        for token in token_variants(target):
            post(target, route, body, token)
    for target in readers:
        assert_unchanged(target, lambda: f"{route} {body[:300]!r}")


def decoded_id(message: bytes) -> Any:
    """The ``id`` the gateway reads from a binary message (decoded with U+FFFD replacement), if any."""
    try:
        value = json.loads(message.decode("utf-8", "replace"))
    except ValueError:
        return None
    return value.get("id") if isinstance(value, dict) else None


@WIRE
@RAW
@given(raw=raw_bodies())
def test_ws_raw_binary_frames(readers: list[Target], sockets: Sockets, raw: tuple[bytes, str]) -> None:
    """Any bytes as a binary message (decoded with U+FFFD replacement): exactly one response."""
    body, method = raw
    assume(fits(body))
    own = decoded_id(body)  # invalid UTF-8 inside the id turns into U+FFFD there too
    try:
        for target in readers:
            for label, client in sockets.variants(target, fresh=method == "connect"):
                exchange(client, [body], [own if isinstance(own, str) else None], f"{target.name}, {label}")
    finally:
        sockets.close_fresh()
    for target in readers:
        assert_unchanged(target, lambda: repr(body[:300]))


# -- the wire: fragments, pings, split writes, invalid UTF-8 text ----------------------------------
def read_answers(raw: RawClient, wanted: int, pings: int, what: str) -> list[dict[str, Any]]:
    """Read until ``wanted`` responses and ``pings`` pongs arrived (events skipped)."""
    answers: list[dict[str, Any]] = []
    pongs = 0
    raw.sock.settimeout(ANSWER_TIMEOUT_S)
    while len(answers) < wanted or pongs < pings:
        try:
            opcode, payload = raw.read_frame()
        except (TimeoutError, ConnectionError) as exc:
            pytest.fail(f"{len(answers)}/{wanted} responses, {pongs}/{pings} pongs ({exc!r}): {what}")
        if opcode == OP_PONG:
            pongs += 1
        elif opcode == OP_CLOSE:
            pytest.fail(f"closed ({payload!r}) after {len(answers)}/{wanted} responses: {what}")
        else:
            message = json.loads(payload)
            if message.get("type") == "res":
                answers.append(message)
    return answers


@st.composite
def wire_messages(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A fuzzed request as WebSocket frames: whole or in fragments, pings in between; and its ping count."""
    method = draw(st.sampled_from(READ_ONLY))
    params = reader_params(method, draw(st.one_of(param_objects(method), json_values)))
    frame_id = next_id("w")
    payload = dumps({"type": "req", "id": frame_id, "method": method, "params": params}).encode()
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(payload) - 1)), max_size=4))))
    pieces = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
    out = b""
    pings = 0
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        out += frame(piece, opcode if index == 0 else OP_CONT, fin=last)
        if not last and draw(st.booleans()):
            out += frame(b"p", OP_PING)
            pings += 1
    return out, pings, len(payload)


@WIRE
@RAW
@given(messages=st.lists(wire_messages(), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_ws_fragments_and_split_writes(
    readers: list[Target], messages: list[tuple[bytes, int, int]], seed: int
) -> None:
    """Fuzzed requests fragmented, interleaved with pings and written in random pieces: one answer each."""
    stream = b"".join(m[0] for m in messages)
    pings = sum(m[1] for m in messages)
    assume(all(m[2] < MAX_FRAME_BYTES for m in messages))
    rng = random.Random(seed)
    for target in readers:
        raw = RawClient(target.live)
        try:
            raw.connect(target.token)
            at = 0
            while at < len(stream):
                step = rng.choice([1, 2, 7, 64, 1000, len(stream)])
                raw.send(stream[at : at + step])
                at += step
            answers = read_answers(raw, len(messages), pings, f"{target.name}: {stream[:300]!r}")
            assert all(a["id"] != "server" and a.get("error", {}).get("code") != "SERVER_ERROR" for a in answers), (
                answers
            )
            raw.send(frame(dumps({"type": "req", "id": "last", "method": "health"}).encode()))
            (last,) = read_answers(raw, 1, 0, "the last health")
            assert last["id"] == "last", f"an extra response: {last}"
        finally:
            raw.close()
    for target in readers:
        assert_unchanged(target, lambda: repr(stream[:300]))


@WIRE
@settings(max_examples=15, deadline=None, suppress_health_check=SUPPRESSED)
@given(bad=st.sampled_from(INVALID_UTF8), at=st.integers(0, 60), connected=st.booleans())
def test_ws_invalid_utf8_text_is_closed_with_1007(readers: list[Target], bad: bytes, at: int, connected: bool) -> None:
    """A text message that is not UTF-8 is answered by closing with 1007, never by silence."""
    target = readers[0]
    text = dumps({"type": "req", "id": "u1", "method": "listRuns", "params": {"status": "finished"}}).encode()
    at = min(at, len(text))
    raw = RawClient(target.live)
    try:
        if connected:
            raw.connect()
        raw.sock.settimeout(ANSWER_TIMEOUT_S)
        raw.send(frame(text[:at] + bad + text[at:], OP_TEXT))
        assert raw.close_code() == 1007
    finally:
        raw.close()
    assert target.live.http.get("/health").status_code == 200  # the gateway is still up
    assert_unchanged(target, lambda: repr(bad))


@WIRE
# -- bookkeeping -----------------------------------------------------------------------------------
def test_every_registered_method_is_fuzzed(readers: list[Target]) -> None:
    for target in readers:
        assert target.live.gateway.dispatcher.methods() == METHODS
    assert set(READER_METHODS) | MUTATING >= set(METHODS)
    assert set(METHODS) >= MUTATING, sorted(MUTATING - set(METHODS))
