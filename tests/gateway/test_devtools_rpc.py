"""DevTools over the gateway, through real clients (docs/protocol.md#devtools, #metrics).

``getDevToolsSnapshot`` and ``getNodeOutput``/``devtools.getNodeOutput`` over HTTP and WebSocket,
``streamDevTools`` over WebSocket: the validation tables in order, the snapshot shape, a client
that applies every delta to the snapshot it holds (with :func:`smithers.engine.devtools.apply_delta`)
and must always hold what ``getDevToolsSnapshot`` answers for that frame, the ``fromSeq``/``afterSeq``
rules and catch-up, rebaselines every 50 events, a stream across a rewind, node output statuses and
schemas, and the metrics these methods count.

Our deliberate choices are tested as implemented: ``iteration`` may be omitted or null (the node's
latest iteration); a task without an output model answers its payload as ``row`` with no schema
fields; deltas may differ from 0.18.0's op order but must always apply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, Literal

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field
from websockets.sync.client import connect

from smithers import Approval, Branch, Loop, Sequence, Task, Timer, heartbeat, workflow
from smithers.engine.devtools import apply_delta
from smithers.gateway.server import Gateway
from tests.databases import Databases
from tests.gateway.support import Live, WsClient, connect_params_for, error_of, wait_for

Start = Callable[..., Live]

ADMIN_TOKEN = "admin-token"
ADMIN_AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {ADMIN_TOKEN: {"role": "admin", "scopes": ["*"], "userId": "user:admin"}},
}
RUN_ID_RULE = "runId must match /^[a-z0-9_-]{1,64}$/."
NODE_ID_RULE = "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/."
FRAME_RULE = "frameNo must be an integer between 0 and 2147483647."
SEQ_RULE = "fromSeq must be a non-negative integer."
ITERATION_RULE = "iteration must be a non-negative 32-bit integer."
NODE_KEYS = {"id", "type", "name", "props", "task", "children", "depth"}


# -- workflows -------------------------------------------------------------------------------------
class Level(StrEnum):
    LOW = "low"
    HIGH = "high"


class Inner(BaseModel):
    x: int


class Rich(BaseModel):
    title: str = Field(description="What it is")
    count: int
    ratio: float = 0.5
    ok: bool
    tags: list[str]
    note: str | None = None
    maybe: int | None
    level: Level
    when: Level | None = None
    mode: Literal["fast"]
    choice: Literal["a", "b"] = "a"
    either: int | str = 0
    inner: Inner
    extra: dict[str, int]


class Count(BaseModel):
    n: int


RICH = Rich(
    title="t",
    count=3,
    ok=True,
    tags=["x", "y"],
    maybe=None,
    level=Level.HIGH,
    mode="fast",
    inner=Inner(x=1),
    extra={"k": 2},
)
RICH_SCHEMA = {
    "fields": [
        {"name": "title", "type": "string", "optional": False, "nullable": False, "description": "What it is"},
        {"name": "count", "type": "number", "optional": False, "nullable": False},
        {"name": "ratio", "type": "number", "optional": True, "nullable": False},
        {"name": "ok", "type": "boolean", "optional": False, "nullable": False},
        {"name": "tags", "type": "array", "optional": False, "nullable": False},
        {"name": "note", "type": "string", "optional": True, "nullable": True},
        {"name": "maybe", "type": "number", "optional": False, "nullable": True},
        {"name": "level", "type": "string", "optional": False, "nullable": False, "enum": ["low", "high"]},
        {"name": "when", "type": "string", "optional": True, "nullable": True, "enum": ["low", "high"]},
        {"name": "mode", "type": "string", "optional": False, "nullable": False, "enum": ["fast"]},
        {"name": "choice", "type": "string", "optional": True, "nullable": False, "enum": ["a", "b"]},
        {"name": "either", "type": "unknown", "optional": True, "nullable": False},
        {"name": "inner", "type": "object", "optional": False, "nullable": False},
        {
            "name": "extra",
            "type": "object",
            "optional": False,
            "nullable": False,
            "description": "A record: any string keys, each with a value of the described type.",
        },
    ]
}
COUNT_SCHEMA = {"fields": [{"name": "n", "type": "number", "optional": False, "nullable": False}]}
APPROVAL_SCHEMA = {
    "fields": [
        {"name": "approved", "type": "boolean", "optional": False, "nullable": False},
        {"name": "note", "type": "string", "optional": True, "nullable": True},
        {"name": "decidedBy", "type": "string", "optional": True, "nullable": True},
        {"name": "decidedAt", "type": "string", "optional": True, "nullable": True},
    ]
}
PLAIN = [1, "two", {"three": 3}, None]


def _later(value: Count) -> Callable[[Any], Any]:
    async def run(ctx: Any) -> Count:
        await asyncio.sleep(0.02)  # frames arrive over several polls of the stream (25 ms)
        return value

    return run


async def _step(ctx: Any) -> Count:
    await asyncio.sleep(0.02)
    return Count(n=10 * ctx.iteration)


def _grown(ctx: Any) -> list[Any]:
    """g0, g1, g2: each mounted once the one before it has its output (the tree grows: addNode)."""
    out = []
    for i in range(3):
        out.append(Task(f"g{i}", output=Count, run=_later(Count(n=i))))
        if ctx.output_maybe(f"g{i}") is None:
            break
    return out


@workflow("dt_flow")
def dt_flow(ctx: Any) -> Any:
    """A tree that changes while it runs: a loop's iteration (updateProps), a branch that drops its
    task once g1 has run (updateProps + removeNode), tasks mounted one after the other (addNode)."""
    return Sequence(
        Task("rich", output=Rich, value=RICH),
        Task("plain", run=lambda c: PLAIN),
        Timer("nap", duration_ms=1),
        Approval("gate", title="Go on?"),
        Branch(ctx.output_maybe("g1") is None, then=Task("temp", output=Count, run=_later(Count(n=7)))),
        Loop("l", Task("step", output=Count, run=_step), max_iterations=3),
        *_grown(ctx),
    )


def _fail_now(ctx: Any) -> Count:
    raise RuntimeError("at once")


async def _beat_then_fail(ctx: Any) -> Count:
    heartbeat({"done": 2, "of": 5})
    raise RuntimeError("half way")


@workflow("dt_fail")
def dt_fail(ctx: Any) -> Any:
    return Sequence(
        Task("quiet", output=Count, run=_fail_now, continue_on_fail=True),
        Task("beat", output=Count, run=_beat_then_fail),
        Task("never", output=Count, value=Count(n=0)),
    )


@workflow("dt_many")
def dt_many(ctx: Any) -> Any:
    """A gate, then 60 static tasks: each completion records a frame (more than 50 frames)."""
    return Sequence(Approval("gate"), *[Task(f"t{i}", output=Count, value=Count(n=i)) for i in range(60)])


@workflow("dt_flood")
def dt_flood(ctx: Any) -> Any:
    """A gate, then 1,500 loop iterations, each relabelling its task with 2 KB: far more frames (and
    bytes) than a socket and a stream may hold back."""
    label = f"{ctx.iteration_count('tick')}:" + "x" * 2048
    tick = Task("tick", output=Count, value=Count(n=1), label=label)
    return Sequence(Approval("gate"), Loop("l", tick, max_iterations=1500))


WORKFLOWS = [dt_flow, dt_fail, dt_many, dt_flood]


# -- fixtures and helpers --------------------------------------------------------------------------
@pytest.fixture
def start(databases: Databases) -> Iterator[Start]:
    """Gateways serving this file's workflows (options as for ``Gateway``)."""
    started: list[Live] = []

    def run(**options: Any) -> Live:
        live = Live(Gateway.for_workflows(WORKFLOWS, db=databases.new("devtools"), **options))
        started.append(live)
        return live

    yield run
    for live in started:
        live.stop()


@pytest.fixture
def gw(start: Start) -> Live:
    return start()


def launch(live: Live, key: str, token: str | None = None) -> str:
    return str(live.ok("launchRun", {"workflow": key, "input": {}}, token=token)["runId"])


def approve(live: Live, run_id: str, token: str | None = None, note: str = "ship") -> None:
    live.ok("submitApproval", {"runId": run_id, "nodeId": "gate", "approved": True, "note": note}, token=token)


def finished_flow(live: Live, token: str | None = None) -> str:
    run_id = launch(live, "dt_flow", token)
    live.wait_status(run_id, {"waiting-approval"})
    approve(live, run_id, token)
    live.wait_status(run_id, {"finished"})
    return run_id


def insert_run(live: Live, run_id: str, status: str = "finished") -> None:
    """A run row without frames, written straight to the store."""
    with live.gateway.store.write() as tx:
        tx.insert_run(run_id=run_id, workflow_name="dt_flow", status=status, created_at_ms=int(time.time() * 1000))


def http_error(live: Live, method: str, params: Any, status: int, token: str | None = None) -> tuple[str, str]:
    response = live.rpc(method, params, token=token)
    assert response.status_code == status, (params, response.text)
    error = error_of(response)
    return error["code"], error["message"]


def ws_error(ws: WsClient, method: str, params: Any) -> tuple[str, str]:
    frame = ws.request(method, params)  # waits for the response carrying the request id
    assert frame["ok"] is False, (params, frame)
    return frame["error"]["code"], frame["error"]["message"]


def snapshot(live: Live, run_id: str, frame_no: float | None = None, token: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"runId": run_id}
    if frame_no is not None:
        params["frameNo"] = frame_no
    return dict(live.ok("getDevToolsSnapshot", params, token=token))


def latest_frame(live: Live, run_id: str) -> int:
    with live.gateway.store.read() as tx:
        return tx.last_frame_no(run_id)


def without_state(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot minus ``runState`` (computed when the snapshot is built, so it changes over time)."""
    return {k: v for k, v in snap.items() if k != "runState"}


def walk(node: dict[str, Any], parent_depth: int = -1) -> Iterator[dict[str, Any]]:
    assert node["depth"] == parent_depth + 1
    yield node
    for child in node["children"]:
        yield from walk(child, node["depth"])


def by_node_id(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["task"]["nodeId"]: n for n in walk(snap["root"]) if "task" in n}


def fnv1a_31(path: str) -> int:
    """The stable id of §11.5, computed independently: FNV-1a over UTF-16 code units, 31 bits."""
    h = 0x811C9DC5
    data = path.encode("utf-16-le")
    for i in range(0, len(data), 2):
        h = ((h ^ int.from_bytes(data[i : i + 2], "little")) * 16777619) % 2**32
    return h & 0x7FFFFFFF


def metrics(live: Live) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(live.http.get("/metrics").text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


class Follower:
    """A ``streamDevTools`` client: holds a snapshot, applies each delta to it, and checks after
    every event that it holds what ``getDevToolsSnapshot`` answers for that frame."""

    def __init__(self, live: Live, ws: WsClient, params: dict[str, Any], token: str | None = None):
        response = ws.request("streamDevTools", params)
        assert response["ok"] is True, response
        self.answer: dict[str, Any] = response["payload"]
        self.stream_id: str = self.answer["streamId"]
        self.live, self.ws, self.token, self.run_id = live, ws, token, params["runId"]
        self.held: dict[str, Any] | None = None
        self.log: list[tuple[str, int]] = []
        self.ops: set[str] = set()

    def mine(self, frame: dict[str, Any]) -> bool:
        return bool(frame["payload"].get("streamId") == self.stream_id)

    def next(self, timeout: float = 10) -> dict[str, Any]:
        frame = self.ws.event("devtools.event", timeout, where=self.mine)
        assert frame["type"] == "event" and frame["payload"]["runId"] == self.run_id
        event: dict[str, Any] = frame["payload"]["event"]
        assert event["version"] == 1
        if event["kind"] == "snapshot":
            assert set(event) == {"version", "kind", "snapshot"}
            self.held = event["snapshot"]
        else:
            assert event["kind"] == "delta" and set(event) == {"version", "kind", "delta"}
            delta = event["delta"]
            assert self.held is not None, "a delta before any snapshot"
            assert delta["version"] == 1 and list(delta) == ["version", "baseSeq", "seq", "ops"]
            assert delta["baseSeq"] == self.held["seq"], (delta["baseSeq"], self.held["seq"])
            assert delta["seq"] == delta["baseSeq"] + 1, "a delta skipped a frame"
            self.ops.update(op["op"] for op in delta["ops"])
            self.held = apply_delta(self.held, delta)
        assert self.held is not None
        self.log.append((event["kind"], self.held["frameNo"]))
        expected = snapshot(self.live, self.run_id, self.held["frameNo"], self.token)
        assert without_state(self.held) == without_state(expected), f"after {self.log}"
        return event

    def follow_to(self, frame_no: int) -> None:
        while self.held is None or self.held["frameNo"] != frame_no:
            self.next()

    def buffered(self) -> list[dict[str, Any]]:
        """This stream's events received so far and not consumed (a ``health`` round trip first:
        what the stream sent before that answer has arrived)."""
        assert self.ws.request("health")["ok"] is True
        return [f for f in self.ws.events if f["event"] == "devtools.event" and self.mine(f)]


# -- getDevToolsSnapshot ----------------------------------------------------------------------------
SNAPSHOT_INPUT_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "InvalidRunId", "runId is required"),
    ({"runId": ""}, "InvalidRunId", "runId is required"),
    ({"runId": 5}, "InvalidRunId", "runId is required"),
    ({"runId": None, "frameNo": -1}, "InvalidRunId", "runId is required"),
    ({"runId": "Bad!"}, "InvalidRunId", RUN_ID_RULE),
    ({"runId": "ABC"}, "InvalidRunId", RUN_ID_RULE),
    ({"runId": "a" * 65}, "InvalidRunId", RUN_ID_RULE),
    ({"runId": "Bad!", "frameNo": -1}, "InvalidRunId", RUN_ID_RULE),
    # frameNo is checked before the run is looked up, so an unknown run does not matter here
    ({"runId": "nope", "frameNo": None}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": "1"}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": -1}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": 1.5}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": 2**31}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": True}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": [1]}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope", "frameNo": {}}, "FrameOutOfRange", FRAME_RULE),
    ({"runId": "nope"}, "RunNotFound", "Run not found: nope"),
    ({"runId": "nope", "frameNo": 0}, "RunNotFound", "Run not found: nope"),
    ({"runId": "nope", "frameNo": 2**31 - 1}, "RunNotFound", "Run not found: nope"),
]
STATUS = {"InvalidRunId": 400, "FrameOutOfRange": 400, "RunNotFound": 404}


def test_snapshot_validation_in_order_over_both_transports(gw: Live) -> None:
    run_id = finished_flow(gw)
    latest = latest_frame(gw, run_id)
    insert_run(gw, "frameless")
    cases = [
        *SNAPSHOT_INPUT_ERRORS,
        ({"runId": run_id, "frameNo": latest + 1}, "FrameOutOfRange", f"frameNo must be between 0 and {latest}."),
        ({"runId": run_id, "frameNo": 2**31 - 1}, "FrameOutOfRange", f"frameNo must be between 0 and {latest}."),
        ({"runId": run_id, "frameNo": 0}, "FrameOutOfRange", f"Frame 0 is not available for run {run_id}."),
        (
            {"runId": "frameless", "frameNo": 3},
            "FrameOutOfRange",
            "frameNo must be 0 for runs with no frames (got 3).",
        ),
    ]
    ws = gw.ws(connect_now=True)
    try:
        for params, code, message in cases:
            assert http_error(gw, "getDevToolsSnapshot", params, STATUS[code]) == (code, message), params
            assert ws_error(ws, "getDevToolsSnapshot", params) == (code, message), params
    finally:
        ws.close()


def test_snapshot_of_a_run_without_frames_is_empty(gw: Live) -> None:
    insert_run(gw, "frameless")
    empty = {
        "version": 1,
        "runId": "frameless",
        "frameNo": 0,
        "seq": 0,
        "root": {"id": 0, "type": "workflow", "name": "(empty)", "props": {}, "children": [], "depth": 0},
    }
    for params in (
        {"runId": "frameless"},
        {"runId": "frameless", "frameNo": 0},
        {"runId": "frameless", "frameNo": 0.0},
    ):
        snap = gw.ok("getDevToolsSnapshot", params)
        assert list(snap) == ["version", "runId", "frameNo", "seq", "root", "runState"]
        assert without_state(snap) == empty
        assert snap["runState"]["runId"] == "frameless" and snap["runState"]["state"] == "succeeded"


def test_snapshot_shape_stable_ids_and_task_info(gw: Live) -> None:
    run_id = finished_flow(gw)
    latest = latest_frame(gw, run_id)
    last = snapshot(gw, run_id)
    assert list(last) == ["version", "runId", "frameNo", "seq", "root", "runState"]
    assert last["version"] == 1 and last["runId"] == run_id
    assert last["frameNo"] == last["seq"] == latest
    assert last["runState"]["runId"] == run_id and last["runState"]["state"] == "succeeded"
    assert isinstance(last["runState"]["computedAt"], str)
    assert without_state(snapshot(gw, run_id, latest)) == without_state(last)

    root = last["root"]
    assert {k: root[k] for k in ("type", "name", "props", "depth")} == {
        "type": "workflow",
        "name": "dt_flow",
        "props": {"name": "dt_flow"},
        "depth": 0,
    }
    nodes = list(walk(root))
    ids = [n["id"] for n in nodes]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and 0 <= i < 2**31 for i in ids)
    for node in nodes:
        assert set(node) <= NODE_KEYS and list(node)[:4] == ["id", "type", "name", "props"]
        assert list(node)[-2:] == ["children", "depth"]
    # ids are the FNV-1a hash of the node's identity path (§11.5)
    sequence = root["children"][0]
    assert root["id"] == fnv1a_31("smithers:workflow")
    assert sequence["id"] == fnv1a_31("smithers:workflow/smithers:sequence")
    tasks = by_node_id(last)
    assert tasks["rich"]["id"] == fnv1a_31("smithers:workflow/smithers:sequence/smithers:task#rich")

    assert tasks["rich"]["task"] == {"nodeId": "rich", "kind": "static", "outputTableName": "rich"}
    assert tasks["rich"]["props"] == {"id": "rich", "kind": "static", "output": "rich"}
    assert tasks["plain"]["task"] == {"nodeId": "plain", "kind": "compute", "outputTableName": "output"}
    assert tasks["gate"]["task"] == {"nodeId": "gate", "kind": "static", "label": "Go on?"}  # no output prop
    assert tasks["gate"]["props"]["title"] == "Go on?"
    assert tasks["step"]["task"] == {"nodeId": "step", "kind": "compute", "outputTableName": "count"}
    assert set(tasks) == {"rich", "plain", "gate", "step", "g0", "g1", "g2"}  # temp is gone by the end
    types = [n["type"] for n in sequence["children"]]
    assert types == ["task", "task", "timer", "task", "branch", "loop", "task", "task", "task"]
    loop = sequence["children"][5]
    assert loop["name"] == "ralph" and loop["props"]["iteration"] == 2 and loop["props"]["maxIterations"] == 3
    assert "task" not in sequence["children"][2]  # a timer is not a task node

    # the same node keeps its id in every frame; seq is the frame number
    first = snapshot(gw, run_id, 1)
    assert first["frameNo"] == first["seq"] == 1
    assert first["root"]["id"] == root["id"]
    early = by_node_id(first)
    for node_id in ("rich", "plain", "gate", "g0"):
        assert early[node_id]["id"] == tasks[node_id]["id"]
    assert "temp" in early and "g1" not in early
    for frame_no in range(1, latest + 1):
        snap = snapshot(gw, run_id, frame_no)
        assert snap["frameNo"] == snap["seq"] == frame_no
        assert {k: v["id"] for k, v in by_node_id(snap).items() if k in tasks} == {
            k: tasks[k]["id"] for k in by_node_id(snap) if k in tasks
        }
    assert without_state(snapshot(gw, run_id, 1.0)) == without_state(first)


def test_snapshot_subscription_filter_over_websocket(gw: Live) -> None:
    run_id = finished_flow(gw)
    narrow = gw.ws(connect_now=True, subscribe=["someone-else"])
    mine = gw.ws(connect_now=True, subscribe=[run_id])
    everything = gw.ws(connect_now=True, subscribe=[])
    try:
        denied = ("Unauthorized", "Connection is not subscribed to this runId.")
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": run_id}) == denied
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": run_id, "frameNo": 1}) == denied
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": "nope"}) == denied  # before RunNotFound
        # the input checks come first
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": run_id, "frameNo": -1}) == (
            "FrameOutOfRange",
            FRAME_RULE,
        )
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": "Bad!"}) == ("InvalidRunId", RUN_ID_RULE)
        # a followed run that does not exist
        assert ws_error(narrow, "getDevToolsSnapshot", {"runId": "someone-else"}) == (
            "RunNotFound",
            "Run not found: someone-else",
        )
        expected = without_state(snapshot(gw, run_id))
        for ws in (mine, everything):
            frame = ws.request("getDevToolsSnapshot", {"runId": run_id})
            assert frame["ok"] is True and without_state(frame["payload"]) == expected
    finally:
        for ws in (narrow, mine, everything):
            ws.close()


def test_snapshot_http_statuses_in_token_mode(token_live: Live) -> None:
    response = token_live.rpc("getDevToolsSnapshot", {"runId": "nope"})
    assert response.status_code == 401
    assert error_of(response)["code"] == "UNAUTHORIZED"
    assert http_error(token_live, "getDevToolsSnapshot", {}, 400, token="operator-token") == (
        "InvalidRunId",
        "runId is required",
    )
    assert http_error(token_live, "getDevToolsSnapshot", {"runId": "nope"}, 404, token="operator-token") == (
        "RunNotFound",
        "Run not found: nope",
    )


def test_snapshot_of_a_missing_frame(gw: Live) -> None:
    """A frame row that is not there (frames 1 and 3 stored, 2 missing)."""
    insert_run(gw, "gappy")
    doc = '{"kind":"element","tag":"smithers:workflow","props":{"name":"gappy"},"children":[]}'
    with gw.gateway.store.write() as tx:
        for frame_no in (1, 3):
            tx.insert_frame(
                run_id="gappy",
                frame_no=frame_no,
                created_at_ms=frame_no,
                xml_json=doc,
                xml_hash=f"h{frame_no}",
                encoding="full",
            )
    assert http_error(gw, "getDevToolsSnapshot", {"runId": "gappy", "frameNo": 2}, 400) == (
        "FrameOutOfRange",
        "Frame 2 is not available for run gappy.",
    )
    assert snapshot(gw, "gappy")["frameNo"] == 3
    assert snapshot(gw, "gappy", 1)["root"]["name"] == "gappy"


# -- streamDevTools ----------------------------------------------------------------------------------
def test_stream_devtools_is_websocket_only(gw: Live) -> None:
    run_id = finished_flow(gw)
    for params in ({"runId": run_id}, {}, {"runId": "Bad!", "fromSeq": -1}):
        assert http_error(gw, "streamDevTools", params, 400) == (
            "INVALID_REQUEST",
            "streamDevTools is only supported over websocket connections",
        )


def test_stream_validation_in_order(gw: Live) -> None:
    run_id = finished_flow(gw)
    latest = latest_frame(gw, run_id)
    ws = gw.ws(connect_now=True)
    narrow = gw.ws(connect_now=True, subscribe=["someone-else"])
    mismatch = ("SeqOutOfRange", "fromSeq and afterSeq must match when both are provided")
    bad_seq = ("SeqOutOfRange", SEQ_RULE)
    try:
        cases: list[tuple[WsClient, dict[str, Any], tuple[str, str]]] = [
            (ws, {}, ("InvalidRunId", "runId is required")),
            (ws, {"runId": ""}, ("InvalidRunId", "runId is required")),
            (ws, {"runId": 7, "fromSeq": 1, "afterSeq": 2}, ("InvalidRunId", "runId is required")),
            # both numbers and different: refused before the runId is checked further
            (ws, {"runId": "Bad!", "fromSeq": 1, "afterSeq": 2}, mismatch),
            (ws, {"runId": run_id, "fromSeq": 1, "afterSeq": 1.5}, mismatch),
            (ws, {"runId": "Bad!"}, ("InvalidRunId", RUN_ID_RULE)),
            (ws, {"runId": "Bad!", "fromSeq": "x"}, ("InvalidRunId", RUN_ID_RULE)),
            (ws, {"runId": run_id, "fromSeq": -1}, bad_seq),
            (ws, {"runId": run_id, "fromSeq": 1.5}, bad_seq),
            (ws, {"runId": run_id, "fromSeq": 2**53}, bad_seq),
            (ws, {"runId": run_id, "afterSeq": -3}, bad_seq),
            (ws, {"runId": run_id, "afterSeq": None}, bad_seq),
            (ws, {"runId": run_id, "afterSeq": "3"}, bad_seq),
            (ws, {"runId": run_id, "afterSeq": True}, bad_seq),
            # a fromSeq that is not a number gives way to afterSeq, whatever afterSeq is
            (ws, {"runId": run_id, "fromSeq": "3", "afterSeq": 0.5}, bad_seq),
            (ws, {"runId": run_id, "fromSeq": None, "afterSeq": None}, bad_seq),
            (ws, {"runId": "nope", "fromSeq": -1}, bad_seq),
            (ws, {"runId": "nope"}, ("RunNotFound", "Run not found: nope")),
            (ws, {"runId": "nope", "fromSeq": 10**6}, ("RunNotFound", "Run not found: nope")),
            (narrow, {"runId": run_id, "fromSeq": -1}, bad_seq),
            (narrow, {"runId": run_id}, ("Unauthorized", "Connection is not subscribed to this runId.")),
            (narrow, {"runId": "nope"}, ("Unauthorized", "Connection is not subscribed to this runId.")),
            (
                narrow,
                {"runId": run_id, "fromSeq": 10**6},
                ("Unauthorized", "Connection is not subscribed to this runId."),
            ),
            (
                ws,
                {"runId": run_id, "fromSeq": latest + 1},
                ("SeqOutOfRange", f"fromSeq {latest + 1} is newer than current seq {latest}"),
            ),
            (
                ws,
                {"runId": run_id, "afterSeq": 2**53 - 1},
                ("SeqOutOfRange", f"fromSeq {2**53 - 1} is newer than current seq {latest}"),
            ),
            (
                ws,
                {"runId": run_id, "fromSeq": latest + 1, "afterSeq": latest + 1},
                ("SeqOutOfRange", f"fromSeq {latest + 1} is newer than current seq {latest}"),
            ),
        ]
        for client, params, expected in cases:
            assert ws_error(client, "streamDevTools", params) == expected, params
        # refusals open no stream
        assert not [f for f in ws.events + narrow.events if f["event"].startswith("devtools.")]
        values = metrics(gw)
        assert metric(values, "smithers_devtools_subscribe_total", result="error") == len(cases)
        assert metric(values, "smithers_devtools_subscribe_total", result="ok") == 0
    finally:
        ws.close()
        narrow.close()


def test_stream_checks_the_run_id_pattern_before_the_seq(gw: Live) -> None:
    """§11.3 step 5 applies the §11.1 rules in their order: the runId pattern before the seq
    (regression: the seq used to be checked first, answering ``SeqOutOfRange``)."""
    ws = gw.ws(connect_now=True)
    try:
        assert ws_error(ws, "streamDevTools", {"runId": "Bad!", "fromSeq": -1}) == ("InvalidRunId", RUN_ID_RULE)
        assert ws_error(ws, "streamDevTools", {"runId": "UPPER", "afterSeq": None}) == ("InvalidRunId", RUN_ID_RULE)
    finally:
        ws.close()


def test_stream_answer_and_first_snapshot(gw: Live) -> None:
    run_id = finished_flow(gw)
    latest = latest_frame(gw, run_id)
    ws = gw.ws(connect_now=True)
    try:
        plain = Follower(gw, ws, {"runId": run_id})
        assert list(plain.answer) == ["streamId", "runId", "fromSeq", "afterSeq"]
        assert plain.answer["runId"] == run_id and plain.answer["fromSeq"] is None and plain.answer["afterSeq"] is None
        assert isinstance(plain.stream_id, str) and plain.stream_id
        event = plain.next()
        assert event["kind"] == "snapshot" and plain.log == [("snapshot", latest)]
        assert event["snapshot"]["runState"]["state"] == "succeeded"  # built like getDevToolsSnapshot

        # a fromSeq that is not a number is ignored when afterSeq is absent; null means no seq
        for params in ({"runId": run_id, "fromSeq": None}, {"runId": run_id, "fromSeq": "3"}):
            other = Follower(gw, ws, params)
            assert (other.answer["fromSeq"], other.answer["afterSeq"]) == (None, None)
            assert other.stream_id != plain.stream_id
            other.next()
            assert other.log == [("snapshot", latest)]

        # both names echo the effective seq
        seq_params: list[dict[str, Any]] = [
            {"runId": run_id, "fromSeq": 5},
            {"runId": run_id, "afterSeq": 5},
            {"runId": run_id, "fromSeq": 5.0, "afterSeq": 5},
            {"runId": run_id, "fromSeq": "x", "afterSeq": 5},
        ]
        for params in seq_params:
            seq = Follower(gw, ws, params)
            assert (seq.answer["fromSeq"], seq.answer["afterSeq"]) == (5, 5), params

        # one subscriber gauge per run (first 12 hex chars of SHA-1 of the run id), counted while open
        label = hashlib.sha1(run_id.encode()).hexdigest()[:12]
        assert metric(metrics(gw), "smithers_devtools_active_subscribers", runId=label) == 7
    finally:
        ws.close()
    wait_for(
        lambda: metric(metrics(gw), "smithers_devtools_active_subscribers", runId=label) == 0,
        "the streams of a closed socket to be dropped",
        timeout=10,
    )


def test_stream_of_a_run_without_frames(gw: Live) -> None:
    insert_run(gw, "frameless")
    ws = gw.ws(connect_now=True)
    try:
        for params in ({"runId": "frameless"}, {"runId": "frameless", "fromSeq": 0}):
            follower = Follower(gw, ws, params)
            follower.next()
            assert follower.log == [("snapshot", 0)]
            assert follower.held is not None and follower.held["root"]["name"] == "(empty)"
            # stream snapshots carry runState like getDevToolsSnapshot's
            fresh = snapshot(gw, "frameless")["runState"]
            assert {**follower.held["runState"], "computedAt": None} == {**fresh, "computedAt": None}
        assert ws_error(ws, "streamDevTools", {"runId": "frameless", "fromSeq": 3}) == (
            "SeqOutOfRange",
            "fromSeq 3 is newer than current seq 0",
        )
    finally:
        ws.close()


def test_stream_follows_a_running_run_delta_by_delta(gw: Live) -> None:
    run_id = launch(gw, "dt_flow")
    gw.wait_status(run_id, {"waiting-approval"})
    at_gate = latest_frame(gw, run_id)
    ws = gw.ws(connect_now=True)
    try:
        follower = Follower(gw, ws, {"runId": run_id})
        follower.next()
        assert follower.log == [("snapshot", at_gate)]
        approve(gw, run_id)
        gw.wait_status(run_id, {"finished"})
        latest = latest_frame(gw, run_id)
        follower.follow_to(latest)
        # every frame after the gate, one event each, in order
        assert [frame for _, frame in follower.log] == list(range(at_gate, latest + 1))
        assert [kind for kind, _ in follower.log[1:]] == ["delta"] * (latest - at_gate)
        # the tree changed: tasks mounted, the branch's task dropped, props updated
        assert {"addNode", "removeNode", "updateProps"} <= follower.ops
        assert follower.held is not None and without_state(follower.held) == without_state(snapshot(gw, run_id))
        assert not follower.buffered()
        values = metrics(gw)
        assert metric(values, "smithers_devtools_event_total", kind="snapshot") == 1
        assert metric(values, "smithers_devtools_event_total", kind="delta") == latest - at_gate
        assert metric(values, "smithers_devtools_subscribe_total", result="ok") == 1
    finally:
        ws.close()


def test_stream_rebaselines_every_50_events_and_catches_up_from_seq(gw: Live) -> None:
    run_id = launch(gw, "dt_many")
    gw.wait_status(run_id, {"waiting-approval"})
    at_gate = latest_frame(gw, run_id)
    ws = gw.ws(connect_now=True)
    try:
        live_follower = Follower(gw, ws, {"runId": run_id})
        live_follower.next()
        approve(gw, run_id)
        gw.wait_status(run_id, {"finished"})
        latest = latest_frame(gw, run_id)
        assert latest - at_gate > 50
        live_follower.follow_to(latest)
        kinds = [kind for kind, _ in live_follower.log]
        assert [frame for _, frame in live_follower.log] == list(range(at_gate, latest + 1))
        # at most 49 deltas in a row: the 50th event after a snapshot is a snapshot again
        assert kinds[:51] == ["snapshot"] + ["delta"] * 49 + ["snapshot"]
        longest = max(len(run) for run in "".join("d" if k == "delta" else " " for k in kinds).split(" "))
        assert longest <= 49

        # fromSeq s: a snapshot at floor(s / 50) * 50, then every frame up to the latest
        for params in (
            {"runId": run_id, "fromSeq": 55},
            {"runId": run_id, "afterSeq": 55},
            {"runId": run_id, "fromSeq": 50, "afterSeq": 50},
            {"runId": run_id, "fromSeq": latest},
        ):
            follower = Follower(gw, ws, params)
            follower.follow_to(latest)
            assert follower.log[0] == ("snapshot", 50), params
            assert [frame for _, frame in follower.log] == list(range(50, latest + 1))
            assert all(kind == "delta" for kind, _ in follower.log[1:])
            assert not follower.buffered()

        # below 50 the base is frame 0, which a run with frames does not have: the latest frame instead
        below = Follower(gw, ws, {"runId": run_id, "fromSeq": 10})
        below.next()
        assert below.log == [("snapshot", latest)]
        assert not below.buffered()
    finally:
        ws.close()


def test_stream_stays_consistent_across_a_rewind(start: Start) -> None:
    live = start(auth=ADMIN_AUTH)
    run_id = finished_flow(live, ADMIN_TOKEN)
    before = latest_frame(live, run_id)
    ws = live.ws(connect_now=True, token=ADMIN_TOKEN)
    try:
        follower = Follower(live, ws, {"runId": run_id}, token=ADMIN_TOKEN)
        follower.next()
        assert follower.log == [("snapshot", before)]

        jumped = live.ok("jumpToFrame", {"runId": run_id, "frameNo": 1, "confirm": True}, token=ADMIN_TOKEN)
        assert jumped["ok"] is True and jumped["newFrameNo"] == 1 and jumped["deletedFrames"] == before - 1
        live.wait_status(run_id, {"waiting-approval"})
        at_gate = latest_frame(live, run_id)
        assert at_gate < before

        # the next event is a full snapshot of the rewound run (never a delta against the old frames)
        event = follower.next()
        assert event["kind"] == "snapshot" and 1 <= follower.log[-1][1] <= at_gate
        follower.follow_to(at_gate)

        approve(live, run_id, ADMIN_TOKEN)
        live.wait_status(run_id, {"finished"})
        again = latest_frame(live, run_id)
        follower.follow_to(again)
        assert follower.log[-1] == ("delta", again)
        assert follower.held is not None
        assert without_state(follower.held) == without_state(snapshot(live, run_id, token=ADMIN_TOKEN))
        assert by_node_id(follower.held).keys() == {"rich", "plain", "gate", "step", "g0", "g1", "g2"}
    finally:
        ws.close()


# -- getNodeOutput / devtools.getNodeOutput ----------------------------------------------------------
OUTPUT_METHODS = ("getNodeOutput", "devtools.getNodeOutput")
OUTPUT_STATUS = {
    "InvalidRunId": 400,
    "InvalidNodeId": 400,
    "InvalidIteration": 400,
    "RunNotFound": 404,
    "NodeNotFound": 404,
    "IterationNotFound": 404,
    "NodeHasNoOutput": 404,
}


def output_cases(run_id: str) -> list[tuple[dict[str, Any], str, str]]:
    bad_iteration = "iteration must be a non-negative 32-bit integer."
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "InvalidRunId", RUN_ID_RULE),
        ({"runId": ""}, "InvalidRunId", RUN_ID_RULE),
        ({"runId": 5, "nodeId": "rich"}, "InvalidRunId", RUN_ID_RULE),
        ({"runId": "Bad!", "nodeId": "rich", "iteration": 0}, "InvalidRunId", RUN_ID_RULE),
        ({"runId": "Bad!", "nodeId": "bad id", "iteration": -1}, "InvalidRunId", RUN_ID_RULE),
        ({"runId": run_id}, "InvalidNodeId", NODE_ID_RULE),
        ({"runId": run_id, "nodeId": ""}, "InvalidNodeId", NODE_ID_RULE),
        ({"runId": run_id, "nodeId": 5}, "InvalidNodeId", NODE_ID_RULE),
        ({"runId": run_id, "nodeId": "a b", "iteration": -1}, "InvalidNodeId", NODE_ID_RULE),
        ({"runId": run_id, "nodeId": "x" * 129}, "InvalidNodeId", NODE_ID_RULE),
        ({"runId": run_id, "nodeId": "a/b"}, "InvalidNodeId", NODE_ID_RULE),
    ]
    refused: list[Any] = ["", " ", -1, "-1", 2**31, str(2**31), 1.5, "1.5", True, [0], {}, "abc"]
    for iteration in refused:
        cases.append(({"runId": "nope", "nodeId": "rich", "iteration": iteration}, "InvalidIteration", bad_iteration))
    cases += [
        ({"runId": "nope", "nodeId": "rich"}, "RunNotFound", "Run not found: nope"),
        ({"runId": "nope", "nodeId": "rich", "iteration": 0}, "RunNotFound", "Run not found: nope"),
        ({"runId": run_id, "nodeId": "ghost"}, "NodeNotFound", "Node not found: ghost"),
        ({"runId": run_id, "nodeId": "ghost", "iteration": 4}, "NodeNotFound", "Node not found: ghost"),
        ({"runId": run_id, "nodeId": "rich", "iteration": 1}, "IterationNotFound", "Iteration not found: 1"),
        ({"runId": run_id, "nodeId": "rich", "iteration": "7"}, "IterationNotFound", "Iteration not found: 7"),
        (
            {"runId": run_id, "nodeId": "rich", "iteration": 2**31 - 1},
            "IterationNotFound",
            "Iteration not found: 2147483647",
        ),
        ({"runId": run_id, "nodeId": "step", "iteration": 3}, "IterationNotFound", "Iteration not found: 3"),
        ({"runId": run_id, "nodeId": "nap", "iteration": 9}, "IterationNotFound", "Iteration not found: 9"),
        ({"runId": run_id, "nodeId": "nap"}, "NodeHasNoOutput", "Node nap has no output table."),
        ({"runId": run_id, "nodeId": "nap", "iteration": 0}, "NodeHasNoOutput", "Node nap has no output table."),
    ]
    return cases


def test_node_output_validation_in_order_over_both_transports(gw: Live) -> None:
    run_id = finished_flow(gw)
    cases = output_cases(run_id)
    ws = gw.ws(connect_now=True)
    try:
        for method in OUTPUT_METHODS:
            for params, code, message in cases:
                assert http_error(gw, method, params, OUTPUT_STATUS[code]) == (code, message), (method, params)
                assert ws_error(ws, method, params) == (code, message), (method, params)
    finally:
        ws.close()


def test_node_output_of_a_table_the_gateway_does_not_know(gw: Live) -> None:
    insert_run(gw, "stranger")
    with gw.gateway.store.write() as tx:
        node = {"run_id": "stranger", "node_id": "x", "iteration": 0, "state": "finished", "updated_at_ms": 0}
        tx.insert_nodes([{**node, "output_table": "foo", "last_attempt": None, "label": None}])
    for method in OUTPUT_METHODS:
        assert http_error(gw, method, {"runId": "stranger", "nodeId": "x"}, 404) == (
            "NodeHasNoOutput",
            "Output table foo is not registered.",
        )


def test_node_output_statuses_and_schemas(gw: Live) -> None:
    run_id = launch(gw, "dt_flow")
    gw.wait_status(run_id, {"waiting-approval"})
    ws = gw.ws(connect_now=True)
    try:

        def both(params: dict[str, Any]) -> dict[str, Any]:
            """The answer over HTTP, checked to be the same over WebSocket under both names."""
            answer: dict[str, Any] = gw.ok("getNodeOutput", params)
            for method in OUTPUT_METHODS:
                frame = ws.request(method, params)
                assert frame["ok"] is True, frame
                assert frame["payload"] == answer, (method, params)
            return answer

        # produced, with the schema of its model
        rich = both({"runId": run_id, "nodeId": "rich", "iteration": 0})
        assert rich == {"status": "produced", "row": RICH.model_dump(mode="json"), "schema": RICH_SCHEMA}
        assert list(rich) == ["status", "row", "schema"]
        # a task without an output model: its payload as row, no schema fields
        assert both({"runId": run_id, "nodeId": "plain"}) == {
            "status": "produced",
            "row": PLAIN,
            "schema": {"fields": []},
        }
        # pending: the gate waits, and what comes after it has not run
        assert both({"runId": run_id, "nodeId": "gate"}) == {
            "status": "pending",
            "row": None,
            "schema": APPROVAL_SCHEMA,
        }
        assert both({"runId": run_id, "nodeId": "g0", "iteration": None}) == {
            "status": "pending",
            "row": None,
            "schema": COUNT_SCHEMA,
        }
        assert both({"runId": run_id, "nodeId": "step"})["status"] == "pending"
        # not mounted yet: g1 appears once g0 has run
        assert http_error(gw, "getNodeOutput", {"runId": run_id, "nodeId": "g1"}, 404) == (
            "NodeNotFound",
            "Node not found: g1",
        )

        approve(gw, run_id, note="looks good")
        gw.wait_status(run_id, {"finished"})

        # the approval's decision is its output
        gate = both({"runId": run_id, "nodeId": "gate"})
        assert gate["status"] == "produced" and gate["schema"] == APPROVAL_SCHEMA
        assert gate["row"]["approved"] is True and gate["row"]["note"] == "looks good"
        assert set(gate["row"]) <= {"approved", "note", "decidedBy", "decidedAt"}
        # loop iterations: the latest when omitted or null, else the one asked for ("2" is 2)
        latest_step = {"status": "produced", "row": {"n": 20}, "schema": COUNT_SCHEMA}
        assert both({"runId": run_id, "nodeId": "step"}) == latest_step
        assert both({"runId": run_id, "nodeId": "step", "iteration": None}) == latest_step
        assert both({"runId": run_id, "nodeId": "step", "iteration": "2"}) == latest_step
        assert both({"runId": run_id, "nodeId": "step", "iteration": " 2 "}) == latest_step
        assert both({"runId": run_id, "nodeId": "step", "iteration": 2.0}) == latest_step
        assert both({"runId": run_id, "nodeId": "step", "iteration": 1})["row"] == {"n": 10}
        assert both({"runId": run_id, "nodeId": "step", "iteration": "0"})["row"] == {"n": 0}
        assert both({"runId": run_id, "nodeId": "g2"})["row"] == {"n": 2}
    finally:
        ws.close()


def test_node_output_of_a_node_the_tree_no_longer_mounts(gw: Live) -> None:
    """A node that ran, then was unmounted by a later render, keeps its stored output.

    ``temp`` ran and its row ``{"n": 7}`` is stored in table ``count``, which ``step`` and
    ``g0``..``g2`` still write once its Branch drops it; the table is registered, so the row is
    served with that table's schema (§12.1 refuses only an unregistered table).
    """
    run_id = finished_flow(gw)
    with gw.gateway.store.read() as tx:
        stored = tx.get_output(run_id, "temp", 0)
    assert stored is not None and stored["output_table"] == "count"
    assert gw.ok("getNodeOutput", {"runId": run_id, "nodeId": "temp"}) == {
        "status": "produced",
        "row": {"n": 7},
        "schema": COUNT_SCHEMA,
    }


def test_node_output_of_failed_tasks(gw: Live) -> None:
    run_id = launch(gw, "dt_fail")
    gw.wait_status(run_id, {"failed"})
    quiet = gw.ok("getNodeOutput", {"runId": run_id, "nodeId": "quiet", "iteration": 0})
    assert quiet == {"status": "failed", "row": None, "schema": COUNT_SCHEMA, "partial": None}
    beat = gw.ok("devtools.getNodeOutput", {"runId": run_id, "nodeId": "beat"})
    assert beat == {"status": "failed", "row": None, "schema": COUNT_SCHEMA, "partial": {"done": 2, "of": 5}}
    assert list(beat) == ["status", "row", "schema", "partial"]
    # the task after the failure never ran
    assert gw.ok("getNodeOutput", {"runId": run_id, "nodeId": "never"}) == {
        "status": "pending",
        "row": None,
        "schema": COUNT_SCHEMA,
    }


def test_node_output_metrics(gw: Live) -> None:
    run_id = launch(gw, "dt_fail")
    gw.wait_status(run_id, {"failed"})
    flow = launch(gw, "dt_flow")
    gw.wait_status(flow, {"waiting-approval"})
    calls = [
        ({"runId": flow, "nodeId": "rich"}, "produced"),
        ({"runId": flow, "nodeId": "plain"}, "produced"),
        ({"runId": flow, "nodeId": "rich", "iteration": 0}, "produced"),
        ({"runId": flow, "nodeId": "g0"}, "pending"),
        ({"runId": run_id, "nodeId": "beat"}, "failed"),
        ({"runId": run_id, "nodeId": "quiet"}, "failed"),
        ({"runId": run_id, "nodeId": "never"}, "pending"),
        ({"runId": run_id, "nodeId": "ghost"}, "error"),
        ({"runId": "Bad!", "nodeId": "x"}, "error"),
        ({"runId": flow, "nodeId": "rich", "iteration": -1}, "error"),
        ({"runId": flow, "nodeId": "nap"}, "error"),
    ]
    ws = gw.ws(connect_now=True)
    try:
        for index, (params, status) in enumerate(calls):
            method = OUTPUT_METHODS[index % 2]
            if index % 3:
                response = gw.rpc(method, params)
                assert (response.status_code == 200) == (status != "error"), response.text
            else:
                assert ws.request(method, params)["ok"] is (status != "error")
    finally:
        ws.close()
    values = metrics(gw)
    for status in ("produced", "pending", "failed", "error"):
        expected = sum(1 for _, s in calls if s == status)
        assert metric(values, "smithers_node_output_request_total", status=status) == expected, status
    answered = sum(1 for _, s in calls if s != "error")
    assert metric(values, "smithers_node_output_duration_ms_count") == answered


def test_node_output_bytes_are_observed(gw: Live) -> None:
    """§17 lists ``smithers_node_output_bytes`` (histogram): one observation per row served."""
    run_id = finished_flow(gw)
    gw.ok("getNodeOutput", {"runId": run_id, "nodeId": "rich"})
    assert metric(metrics(gw), "smithers_node_output_bytes_count") == 1


@pytest.mark.parametrize("iteration", ["²", "٢"])
def test_node_output_iteration_strings_that_are_not_ascii_numbers(gw: Live, iteration: str) -> None:
    """Numeric strings are accepted as iterations (``"2"``); other strings are ``InvalidIteration``.

    Digits JavaScript's ``Number()`` does not read (``"²"``, Arabic-Indic ``"٢"``) are refused, not
    read as numbers or answered with a 500.
    """
    run_id = finished_flow(gw)
    assert http_error(gw, "getNodeOutput", {"runId": run_id, "nodeId": "step", "iteration": iteration}, 400) == (
        "InvalidIteration",
        ITERATION_RULE,
    )


@pytest.mark.sqlite_only(reason="a bound on the stream's queue for a client that stopped reading, whatever the store")
def test_a_subscriber_that_stops_reading_is_cut_off_after_1000_waiting_events(gw: Live) -> None:
    """§11.4 backpressure: once more than 1,000 events wait for a client that stopped reading, its
    stream fails with ``BackpressureDisconnect`` (counted), and nothing more is queued for it.

    The client's receive buffer is made tiny so the waiting events pile up in the gateway rather
    than in the kernel's socket buffers.
    """
    run_id = launch(gw, "dt_flood")
    gw.wait_status(run_id, {"waiting-approval"})
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port.rstrip("/"))))
    conn = connect(gw.ws_url, sock=sock, open_timeout=10, close_timeout=1, max_size=None, max_queue=4, legacy=True)
    try:
        assert json.loads(conn.recv(timeout=10))["event"] == "connect.challenge"
        conn.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": connect_params_for()}))
        assert json.loads(conn.recv(timeout=10))["ok"] is True
        request = {"type": "req", "id": "s", "method": "streamDevTools", "params": {"runId": run_id}}
        conn.send(json.dumps(request))
        # from here on the client reads nothing until the run is over
        approve(gw, run_id)
        gw.wait_status(run_id, {"finished"}, timeout=60)
        wait_for(
            lambda: metric(metrics(gw), "smithers_devtools_backpressure_disconnect_total") == 1,
            "the stream to be cut off",
            timeout=10,
        )
        errors = []
        while not errors:
            frame = json.loads(conn.recv(timeout=10))
            if frame.get("event") == "devtools.error":
                errors.append(frame["payload"])
        assert errors[0]["error"] == {
            "code": "BackpressureDisconnect",
            "message": "Subscriber outbound queue exceeded 1000 events.",
        }
        # the stream is over: no DevTools event follows its error
        with pytest.raises(TimeoutError):
            while True:
                frame = json.loads(conn.recv(timeout=0.5))
                assert frame.get("event") not in ("devtools.event", "devtools.error"), frame
    finally:
        conn.close()
