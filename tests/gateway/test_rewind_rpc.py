"""Rewind (``jumpToFrame`` / ``devtools.jumpToFrame`` / ``rewindRun``), ``getNodeDiff``, ``runs.fork``
and the recovery of interrupted rewinds, with real clients against a live token-mode gateway
(docs/protocol.md#rewind, #getnodediff--devtoolsgetnodediff, #metrics).

The workflows are defined here. Every compute body counts its calls per (run, node) in
:data:`CALLS`, so a test can tell which tasks a rewind ran again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from smithers import Approval, Loop, Parallel, Sequence, Task, workflow
from smithers.engine.ownership import HOLD_STALE_MS
from smithers.engine.workflow import Workflow
from smithers.gateway.server import Gateway
from smithers.store.rows import dumps, now_ms
from smithers.store.store import Row, Store
from tests.databases import Databases
from tests.gateway.support import Live
from tests.waiting import wait_for

ADMIN = "admin-token"
OWNER = "op-token"
OTHER = "other-token"
READER = "reader-token"
AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {
        ADMIN: {"role": "admin", "scopes": ["*"], "userId": "user:admin"},
        OWNER: {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        OTHER: {"role": "operator", "scopes": ["*"], "userId": "user:other"},
        READER: {"role": "viewer", "scopes": ["run:read"], "userId": "user:reader"},
    },
}
RUN_ID_MESSAGE = "runId must match /^[a-z0-9_-]{1,64}$/."
FRAME_NO_MESSAGE = "frameNo must be a non-negative i32 integer."
CONFIRM_MESSAGE = "jumpToFrame is destructive; pass confirm: true to proceed."
UNAUTHORIZED_MESSAGE = "Only the run owner or an admin may rewind this run."
ITERATION_MESSAGE = "iteration must be an i32 non-negative integer."
JUMP_KEYS = {
    "ok",
    "newFrameNo",
    "revertedSandboxes",
    "deletedFrames",
    "deletedAttempts",
    "invalidatedDiffs",
    "durationMs",
}

CALLS: Counter[tuple[str, str]] = Counter()
"""Body calls per (run id, node id)."""


class Num(BaseModel):
    n: int


class Files(BaseModel):
    files: dict[str, str]


def counted(node_id: str, body: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(ctx: Any) -> Any:
        CALLS[(ctx.run_id, node_id)] += 1
        return body(ctx)

    return run


def calls_of(run_id: str) -> dict[str, int]:
    return {node: n for (run, node), n in CALLS.items() if run == run_id}


@workflow("tt_flow")
def flow(ctx: Any) -> Any:
    """A Sequence of tasks reading each other's outputs, a Loop of three passes, then a Parallel."""
    latest = ctx.latest(Num, "inc")
    return Sequence(
        Task("a", output=Num, run=counted("a", lambda c: Num(n=c.input["start"]))),
        Task("b", output=Num, run=counted("b", lambda c: Num(n=c.output(Num, "a").n + 1))),
        Loop(
            "l",
            Task(
                "inc",
                output=Num,
                run=counted("inc", lambda c: Num(n=(c.latest(Num, "inc") or c.output(Num, "b")).n + 1)),
            ),
            until=latest is not None and latest.n >= ctx.input["start"] + 4,
            max_iterations=10,
        ),
        Parallel(
            Task("p1", output=Num, run=counted("p1", lambda c: Num(n=c.latest(Num, "inc").n * 2))),
            Task("p2", output=Num, run=counted("p2", lambda c: Num(n=c.latest(Num, "inc").n * 3))),
        ),
        Task("z", output=Num, run=counted("z", lambda c: Num(n=c.output(Num, "p1").n + c.output(Num, "p2").n))),
    )


@workflow("tt_gate")
def gate(ctx: Any) -> Any:
    return Sequence(
        Task("a", output=Num, run=counted("a", lambda c: Num(n=1))),
        Approval("ok", title="Go on?"),
        Task("after", output=Num, run=counted("after", lambda c: Num(n=2))),
    )


async def _hold(ctx: Any) -> Num:
    """The first call of a run with ``input.block`` waits until cancelled; later calls answer at once."""
    CALLS[(ctx.run_id, "hold")] += 1
    if ctx.input.get("block") and CALLS[(ctx.run_id, "hold")] == 1:
        await asyncio.sleep(3600)
    return Num(n=7)


@workflow("tt_hold")
def hold(ctx: Any) -> Any:
    return Sequence(
        Task("first", output=Num, run=counted("first", lambda c: Num(n=1))),
        Task("hold", output=Num, run=_hold),
        Task("last", output=Num, run=counted("last", lambda c: Num(n=c.output(Num, "hold").n + 1))),
    )


WORKFLOWS = [flow, gate, hold]


def files_workflow(repo: Path) -> Workflow:
    """Tasks that change the git work tree ``repo``; each answers what it found there when it began."""

    def seen() -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(repo.iterdir()) if p.is_file()}

    def w1(ctx: Any) -> Files:
        before = seen()
        (repo / "a.txt").write_text("one\n")
        (repo / "b.txt").write_text("bee\n")
        return Files(files=before)

    def w2(ctx: Any) -> Files:
        before = seen()
        (repo / "a.txt").write_text("one\ntwo\n")
        (repo / "b.txt").unlink()
        (repo / "c.txt").write_text("sea\n")
        return Files(files=before)

    @workflow("tt_files", workdir=repo)
    def files(ctx: Any) -> Any:
        return Sequence(
            Task("prep", output=Files, value=Files(files={})),
            Task("w1", output=Files, run=counted("w1", w1)),
            Task("w2", output=Files, run=counted("w2", w2)),
            Task("w3", output=Files, run=counted("w3", lambda c: Files(files=seen()))),
        )

    return files


# -- fixtures and helpers --------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git configuration, no inherited repository; no body calls counted yet."""
    CALLS.clear()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"):
        monkeypatch.delenv(name, raising=False)


Start = Callable[..., Live]


@pytest.fixture
def start(databases: Databases) -> Iterator[Start]:
    """``start(*extra_workflows, db=url)``: a token-mode gateway (:data:`AUTH`) with :data:`WORKFLOWS`,
    on a new database unless ``db`` is given."""
    started: list[Live] = []

    def start_(*extra: Workflow, db: str | None = None) -> Live:
        gateway = Gateway.for_workflows([*WORKFLOWS, *extra], db=db or databases.new("rewind"), auth=AUTH)
        live = Live(gateway)
        started.append(live)
        return live

    yield start_
    for live in started:
        live.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    for args in (
        ["init", "-q"],
        ["config", "user.name", "Tester"],
        ["config", "user.email", "tester@example.com"],
    ):
        git(path, *args)
    (path / "README.md").write_text("hello\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "init")
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True, text=True, timeout=60).stdout


def work_files(repo: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(repo.iterdir()) if p.is_file()}


def launch(live: Live, key: str, token: str = OWNER, **input: Any) -> str:
    return str(live.ok("launchRun", {"workflow": key, "input": input}, token=token)["runId"])


def finished(live: Live, key: str, token: str = OWNER, **input: Any) -> str:
    run_id = launch(live, key, token, **input)
    live.wait_status(run_id, {"finished"})
    return run_id


def jump(
    live: Live, run_id: Any, frame_no: Any, token: str = ADMIN, method: str = "jumpToFrame", **extra: Any
) -> httpx.Response:
    params: dict[str, Any] = {"runId": run_id, "frameNo": frame_no, "confirm": True, **extra}
    return live.rpc(method, params, token=token)


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["ok"] is False, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


def audits(live: Live, run_id: str | None = None) -> list[dict[str, Any]]:
    with live.gateway.store.read() as tx:
        return [dict(a) for a in tx.list_audits(run_id)]


def table_counts(live: Live, run_id: str) -> dict[str, int]:
    with live.gateway.store.read() as tx:
        return {
            "frames": len(tx.list_frame_rows(run_id)),
            "latest": tx.last_frame_no(run_id),
            "attempts": len(tx.list_attempts(run_id)),
            "events": len(tx.list_events(run_id, limit=None)),
        }


def outputs(live: Live, run_id: str) -> dict[tuple[str, int], Any]:
    with live.gateway.store.read() as tx:
        return {(o["node_id"], int(o["iteration"])): json.loads(o["payload_json"]) for o in tx.list_outputs(run_id)}


def attempts(live: Live, run_id: str) -> list[Row]:
    with live.gateway.store.read() as tx:
        return list(tx.list_attempts(run_id))


def started_after(live: Live, run_id: str, node_id: str, iteration: int = 0) -> int:
    """The frame the node's first attempt started after (rewinding to it runs the node again)."""
    [first] = [
        a
        for a in attempts(live, run_id)
        if a["node_id"] == node_id and a["iteration"] == iteration and a["attempt"] == 1
    ]
    return int(json.loads(first["meta_json"])["frameNo"])


def rewind_total(live: Live) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(live.http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "smithers_rewind_total":
                out[sample.labels["result"]] = sample.value
    return out


def metric(live: Live, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(live.http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def insert_run(live: Live, run_id: str, key: str = "tt_flow", owner: str = "user:op", status: str = "finished") -> None:
    """A run row with no frames (as a crash right after the launch leaves one)."""
    config = {"gatewayWorkflowKey": key, "auth": {"triggeredBy": owner, "scopes": ["*"], "role": "operator"}}
    with live.gateway.store.write() as tx:
        tx.insert_run(
            run_id=run_id, workflow_name=key, status=status, created_at_ms=now_ms(), config_json=dumps(config)
        )


# -- 1. the checks, in order -----------------------------------------------------------------------
def test_gateway_checks_come_first_in_order_and_only_the_ownership_refusal_is_audited(start: Start) -> None:
    live = start()
    run_id = finished(live, "tt_flow", start=1)
    before = table_counts(live, run_id)

    # runId: not a non-empty string (whatever frameNo is)
    for params in ({}, {"runId": "", "frameNo": 1}, {"runId": 5, "frameNo": 1}, {"runId": None, "frameNo": "x"}):
        assert refusal(live.rpc("jumpToFrame", {**params, "confirm": True}, token=ADMIN)) == (
            400,
            "InvalidRunId",
            "runId is required",
        )
    # frameNo: not a JSON number (even for an unknown run)
    for frame_no in ("1", None, True, [1], {"n": 1}):
        for target in (run_id, "nope"):
            assert refusal(jump(live, target, frame_no)) == (400, "InvalidFrameNo", "frameNo is required")
    assert refusal(live.rpc("jumpToFrame", {"runId": run_id, "confirm": True}, token=ADMIN)) == (
        400,
        "InvalidFrameNo",
        "frameNo is required",
    )
    # the run must resolve (before ownership and before the frameNo range)
    assert refusal(jump(live, "nope", 1)) == (404, "RunNotFound", "Run not found: nope")
    assert refusal(jump(live, "nope", -5, token=OTHER)) == (404, "RunNotFound", "Run not found: nope")
    assert refusal(jump(live, "Not-A-Run", 1)) == (404, "RunNotFound", "Run not found: Not-A-Run")
    assert audits(live) == []  # none of these reached the rewind: nothing audited

    # a caller who is neither the owner nor an admin, whatever the rest says: refused and audited
    t0 = now_ms()
    assert refusal(jump(live, run_id, 2, token=OTHER)) == (401, "Unauthorized", UNAUTHORIZED_MESSAGE)
    assert refusal(jump(live, run_id, 1.5, token=OTHER, confirm=False)) == (401, "Unauthorized", UNAUTHORIZED_MESSAGE)
    assert refusal(jump(live, run_id, -3, token=OTHER)) == (401, "Unauthorized", UNAUTHORIZED_MESSAGE)
    rows = audits(live, run_id)
    assert [(a["caller"], a["from_frame_no"], a["to_frame_no"], a["result"], a["duration_ms"]) for a in rows] == [
        ("user:other", -1, 2, "failed", 0),
        ("user:other", -1, -1, "failed", 0),  # frameNo not an integer: -1
        ("user:other", -1, -3, "failed", 0),
    ]
    assert all(t0 <= a["timestamp_ms"] <= now_ms() for a in rows)
    # a reader lacks the scope: refused before the handler (FORBIDDEN), nothing audited
    forbidden = jump(live, run_id, 2, token=READER)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "FORBIDDEN"
    assert len(audits(live, run_id)) == 3
    assert table_counts(live, run_id) == before  # nothing changed
    assert live.gateway.store.get_run(run_id)["status"] == "finished"


def test_rewind_validation_then_confirmation_each_audited_as_failed(start: Start) -> None:
    live = start()
    run_id = finished(live, "tt_flow", start=1)
    before = table_counts(live, run_id)
    # A stored run whose id the rewind refuses: ownership is checked first, then the id's form.
    insert_run(live, "Upper.Case")
    assert refusal(jump(live, "Upper.Case", 1, token=OTHER)) == (401, "Unauthorized", UNAUTHORIZED_MESSAGE)
    assert refusal(jump(live, "Upper.Case", -1, token=OWNER, confirm=False)) == (400, "InvalidRunId", RUN_ID_MESSAGE)
    assert refusal(jump(live, "Upper.Case", 1)) == (400, "InvalidRunId", RUN_ID_MESSAGE)

    expected: list[tuple[int, str, str]] = []
    cases: list[tuple[Any, dict[str, Any]]] = [
        (-1, {}),
        (1.5, {}),
        (2_147_483_648, {}),  # an integer, but not an i32 (all the audit column holds): audited as -1
        (2**64, {}),
        (-1, {"confirm": False}),  # the frame number is checked before the confirmation
        (1, {"confirm": False}),
        (1, {"confirm": "true"}),  # not a boolean: missing
        (1, {"confirm": 1}),
    ]
    for frame_no, extra in cases:
        response = jump(live, run_id, frame_no, token=OWNER, **extra)
        code, message = (
            ("InvalidFrameNo", FRAME_NO_MESSAGE)
            if not (isinstance(frame_no, int) and 0 <= frame_no < 2**31)
            else ("ConfirmationRequired", CONFIRM_MESSAGE)
        )
        assert refusal(response) == (400, code, message), (frame_no, extra)
        expected.append((frame_no if isinstance(frame_no, int) and -(2**31) <= frame_no < 2**31 else -1, -1, 0))
    no_confirm = live.rpc("rewindRun", {"runId": run_id, "frameNo": 1}, token=OWNER)
    assert refusal(no_confirm) == (400, "ConfirmationRequired", CONFIRM_MESSAGE)
    rows = audits(live, run_id)
    assert len(rows) == len(cases) + 1
    for row, (to_frame, *_rest) in zip(rows, [*expected, (1,)], strict=True):
        assert row["caller"] == "user:op" and row["result"] == "failed" and row["from_frame_no"] == -1
        assert row["to_frame_no"] == to_frame and isinstance(row["duration_ms"], int) and row["duration_ms"] >= 0
    bad = audits(live, "Upper.Case")
    assert [(a["caller"], a["to_frame_no"], a["result"]) for a in bad] == [
        ("user:other", 1, "failed"),
        ("user:op", -1, "failed"),
        ("user:admin", 1, "failed"),
    ]
    assert table_counts(live, run_id) == before
    assert rewind_total(live) == {"failed": len(cases) + 1 + 3}


def test_rate_limit_counts_every_attempt_per_caller_and_run(start: Start) -> None:
    live = start()
    run_id = finished(live, "tt_flow", start=1)
    other_run = finished(live, "tt_flow", start=2)
    latest = table_counts(live, run_id)["latest"]
    # one refusal of each kind the rewind audits, then no-op successes: ten in all
    assert refusal(jump(live, run_id, -1))[1] == "InvalidFrameNo"
    assert refusal(jump(live, run_id, 1, confirm=None))[1] == "ConfirmationRequired"
    assert refusal(jump(live, run_id, latest + 1))[1] == "FrameOutOfRange"
    assert refusal(jump(live, run_id, 0))[1] == "FrameOutOfRange"
    for _ in range(6):
        assert jump(live, run_id, latest).json()["payload"]["deletedFrames"] == 0
    assert len(audits(live, run_id)) == 10
    limited = f"Rewind quota exceeded for {run_id}; max 10 per 60m."
    assert refusal(jump(live, run_id, latest)) == (429, "RateLimited", limited)
    # the quota is checked after validation and confirmation, before the run is looked at
    assert refusal(jump(live, run_id, 1, confirm=False))[1] == "ConfirmationRequired"
    assert refusal(jump(live, run_id, latest + 100)) == (429, "RateLimited", limited)
    assert refusal(live.rpc("devtools.jumpToFrame", {"runId": run_id, "frameNo": 1, "confirm": True}, token=ADMIN)) == (
        429,
        "RateLimited",
        limited,
    )
    rows = audits(live, run_id)
    assert len(rows) == 14 and all(a["result"] != "in_progress" for a in rows)
    assert [a["result"] for a in rows[-4:]] == ["failed"] * 4
    # the quota is per caller and per run
    assert jump(live, run_id, latest, token=OWNER).status_code == 200
    assert jump(live, other_run, 1).status_code == 200
    live.wait_status(other_run, {"finished"})
    assert rewind_total(live) == {"failed": 5, "rate_limited": 3, "success": 8}


def test_frame_range_and_a_jump_to_the_latest_frame(start: Start) -> None:
    live = start()
    insert_run(live, "frameless")
    assert refusal(jump(live, "frameless", 0, token=OWNER)) == (
        400,
        "FrameOutOfRange",
        "Run frameless has no frames.",
    )
    [row] = audits(live, "frameless")
    assert (row["result"], row["from_frame_no"], row["to_frame_no"], row["caller"]) == ("failed", -1, 0, "user:op")

    run_id = finished(live, "tt_flow", start=1)
    before = table_counts(live, run_id)
    latest = before["latest"]
    assert refusal(jump(live, run_id, latest + 1)) == (
        400,
        "FrameOutOfRange",
        f"frameNo must be between 0 and {latest}.",
    )
    assert refusal(jump(live, run_id, 0)) == (400, "FrameOutOfRange", f"Frame 0 does not exist for run {run_id}.")

    client = live.ws(connect_now=True, token=ADMIN)
    try:
        answer = client.request("jumpToFrame", {"runId": run_id, "frameNo": latest, "confirm": True})
        assert answer["ok"] is True, answer
        payload = answer["payload"]
        assert set(payload) == JUMP_KEYS and isinstance(payload["durationMs"], int) and payload["durationMs"] >= 0
        assert {k: v for k, v in payload.items() if k != "durationMs"} == {
            "ok": True,
            "newFrameNo": latest,
            "revertedSandboxes": 0,
            "deletedFrames": 0,
            "deletedAttempts": 0,
            "invalidatedDiffs": 0,
        }
        # no mutation, no event, no resume
        assert not [f for f in client.drain(0.3) if f.get("event") == "run.time_travel_jumped"]
        assert not [f for f in client.events if f.get("event") == "run.time_travel_jumped"]
    finally:
        client.close()
    assert table_counts(live, run_id) == before
    assert live.gateway.store.get_run(run_id)["status"] == "finished"
    assert not live.gateway.is_executing(run_id)
    rows = audits(live, run_id)
    assert [(a["result"], a["from_frame_no"], a["to_frame_no"], a["caller"]) for a in rows] == [
        ("failed", -1, latest + 1, "user:admin"),
        ("failed", -1, 0, "user:admin"),
        ("success", latest, latest, "user:admin"),
    ]


# -- 2. a rewound run ends like a fresh one --------------------------------------------------------
def _rewind_and_finish(
    live: Live, run_id: str, target: int, fresh: dict[tuple[str, int], Any], send: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """Rewind ``run_id`` to ``target`` with ``send``; check the counters against the database and
    that the gateway runs it to the same outputs as ``fresh``. Returns the JumpResult."""
    before = table_counts(live, run_id)
    kept = [a for a in attempts(live, run_id) if json.loads(a["meta_json"])["frameNo"] < target]
    result = send({"runId": run_id, "frameNo": target, "confirm": True})
    assert set(result) == JUMP_KEYS and result["ok"] is True and result["newFrameNo"] == target
    assert result["deletedFrames"] == before["frames"] - target
    assert result["deletedAttempts"] == before["attempts"] - len(kept)
    assert result["revertedSandboxes"] == 0 and result["invalidatedDiffs"] == 0
    live.wait_status(run_id, {"finished"})
    assert outputs(live, run_id) == fresh
    return dict(result)


def test_rewinds_run_again_what_came_after_the_frame_and_end_like_a_fresh_run(start: Start) -> None:
    live = start()
    fresh_id = finished(live, "tt_flow", start=3)
    fresh = outputs(live, fresh_id)
    assert fresh[("z", 0)] == {"n": 35} and fresh[("inc", 2)] == {"n": 7}
    run_id = finished(live, "tt_flow", start=3)
    assert outputs(live, run_id) == fresh
    client = live.ws(connect_now=True, token=ADMIN)
    try:
        # late, by the run's owner: after the Parallel, before z (POST /v1/rpc/rewindRun, body as params)
        target = started_after(live, run_id, "z")
        calls = calls_of(run_id)

        def v1(params: dict[str, Any]) -> Any:
            response = live.http.post("/v1/rpc/rewindRun", json=params, headers={"Authorization": f"Bearer {OWNER}"})
            assert response.status_code == 200, response.text
            return response.json()["payload"]

        _rewind_and_finish(live, run_id, target, fresh, v1)
        assert Counter(calls_of(run_id)) - Counter(calls) == Counter({"z": 1})

        # by an admin: the frame right after the first loop iteration (the later passes, the
        # Parallel and z run again)
        target = started_after(live, run_id, "inc", 1)
        calls = calls_of(run_id)
        latest = table_counts(live, run_id)["latest"]
        _rewind_and_finish(live, run_id, target, fresh, lambda p: live.ok("jumpToFrame", p, token=ADMIN))
        jumped = client.event("run.time_travel_jumped", where=lambda e: e["payload"]["caller"] == "user:admin")
        payload = jumped["payload"]
        assert {k: v for k, v in payload.items() if k != "timestampMs"} == {
            "runId": run_id,
            "fromFrameNo": latest,
            "toFrameNo": target,
            "caller": "user:admin",
        }
        assert isinstance(payload["timestampMs"], int)
        assert Counter(calls_of(run_id)) - Counter(calls) == Counter({"inc": 2, "p1": 1, "p2": 1, "z": 1})

        # early: after a, before b (over the WebSocket, as devtools.jumpToFrame)
        target = started_after(live, run_id, "b")
        calls = calls_of(run_id)

        def over_ws(params: dict[str, Any]) -> Any:
            answer = client.request("devtools.jumpToFrame", params)
            assert answer["ok"] is True, answer
            return answer["payload"]

        _rewind_and_finish(live, run_id, target, fresh, over_ws)
        assert Counter(calls_of(run_id)) - Counter(calls) == Counter({"b": 1, "inc": 3, "p1": 1, "p2": 1, "z": 1})

        # the very first frame: everything runs again
        calls = calls_of(run_id)
        _rewind_and_finish(live, run_id, 1, fresh, lambda p: live.ok("rewindRun", p, token=ADMIN))
        assert Counter(calls_of(run_id)) - Counter(calls) == Counter(
            {"a": 1, "b": 1, "inc": 3, "p1": 1, "p2": 1, "z": 1}
        )
    finally:
        client.close()
    # The gateway resumed the run with the rewinding admin's auth, which the engine records as the
    # run's auth (spec §10.2: "overwrites it with the auth of whoever last started/resumed the
    # run"): the admin now owns it, and its first owner may no longer rewind it.
    config = json.loads(live.gateway.store.get_run(run_id)["config_json"])
    assert config["auth"]["triggeredBy"] == "user:admin"
    assert refusal(jump(live, run_id, 1, token=OWNER)) == (401, "Unauthorized", UNAUTHORIZED_MESSAGE)
    rows = audits(live, run_id)[:-1]
    assert [(a["result"], a["caller"]) for a in rows] == [("success", "user:op")] + [("success", "user:admin")] * 3
    assert all(a["from_frame_no"] > a["to_frame_no"] and a["duration_ms"] >= 0 for a in rows)
    assert calls_of(fresh_id) == {"a": 1, "b": 1, "inc": 3, "p1": 1, "p2": 1, "z": 1}  # untouched
    assert rewind_total(live) == {"success": 4, "failed": 1}
    with live.gateway.store.read() as tx:
        jumps = [e for e in tx.list_events(run_id, limit=None) if e.type == "TimeTravelJumped"]
    assert [e.payload["toFrameNo"] for e in jumps] == [r["to_frame_no"] for r in rows]
    assert [e.payload["fromFrameNo"] for e in jumps] == [r["from_frame_no"] for r in rows]


# -- 3. approvals and live runs --------------------------------------------------------------------
def test_a_rewind_past_an_approval_decision_asks_for_it_again(start: Start) -> None:
    live = start()
    run_id = launch(live, "tt_gate")
    live.wait_status(run_id, {"waiting-approval"})
    waiting_frame = table_counts(live, run_id)["latest"]
    assert [a["runId"] for a in live.ok("listApprovals", token=OWNER)] == [run_id]
    decided = live.rpc(
        "submitApproval", {"runId": run_id, "nodeId": "ok", "approved": True, "note": "yes"}, token=OWNER
    )
    assert decided.status_code == 200, decided.text
    live.wait_status(run_id, {"finished"})
    assert live.ok("listApprovals", token=OWNER) == []
    assert calls_of(run_id) == {"a": 1, "after": 1}

    result = live.ok("jumpToFrame", {"runId": run_id, "frameNo": waiting_frame, "confirm": True}, token=OWNER)
    assert result["newFrameNo"] == waiting_frame and result["deletedAttempts"] >= 1
    live.wait_status(run_id, {"waiting-approval"})  # resumed by the gateway: it waits again
    [pending] = live.ok("listApprovals", token=OWNER)
    assert pending["runId"] == run_id and pending["nodeId"] == "ok"
    with live.gateway.store.read() as tx:
        approval = tx.get_approval(run_id, "ok", 0)
        assert approval is not None and approval["status"] == "requested"
        assert approval["decided_at_ms"] is None and approval["decided_by"] is None
        assert tx.get_output(run_id, "after", 0) is None and tx.get_output(run_id, "ok", 0) is None
    assert calls_of(run_id) == {"a": 1, "after": 1}
    # getNodeDiff of a node with no attempt yet
    assert refusal(live.rpc("getNodeDiff", {"runId": run_id, "nodeId": "after", "iteration": 0}, token=OWNER)) == (
        404,
        "AttemptNotFound",
        f"Attempt not found for {run_id}/after/0",
    )
    denied = live.rpc("submitApproval", {"runId": run_id, "nodeId": "ok", "approved": False}, token=OWNER)
    assert denied.status_code == 200, denied.text
    live.wait_status(run_id, {"finished"})
    assert calls_of(run_id) == {"a": 1, "after": 2}  # "a" came before the frame: it did not run again
    with live.gateway.store.read() as tx:
        decision = json.loads(tx.get_output(run_id, "ok", 0)["payload_json"])  # the new decision counts
        assert decision["approved"] is False and decision["decidedBy"] == "user:op"


def test_a_rewind_of_a_run_executing_here_stops_it_first_and_resumes_it(start: Start) -> None:
    live = start()
    run_id = launch(live, "tt_hold", block=True)

    def holding() -> bool:
        with live.gateway.store.read() as tx:
            node = tx.get_node(run_id, "hold", 0)
        return node is not None and node["state"] == "in-progress"

    wait_for(holding, "the hold task to start", timeout=10)
    assert live.gateway.is_executing(run_id)
    # getNodeDiff of a running attempt
    assert refusal(live.rpc("getNodeDiff", {"runId": run_id, "nodeId": "hold", "iteration": 0}, token=OWNER)) == (
        409,
        "AttemptNotFinished",
        "Attempt is still running.",
    )
    before = table_counts(live, run_id)
    assert before["latest"] >= 2
    watcher = live.ws(connect_now=True, token=READER)
    result = live.ok("jumpToFrame", {"runId": run_id, "frameNo": 1, "confirm": True}, token=OWNER)
    assert result["newFrameNo"] == 1 and result["deletedAttempts"] == 2  # first, and the held attempt
    live.wait_status(run_id, {"finished"})
    # paused, not cancelled: clients hear of the rewind and of one completion, the real one
    mine = [f for f in watcher.drain(0.5) if f.get("type") == "event" and f["payload"].get("runId") == run_id]
    watcher.close()
    names = [f["event"] for f in mine]
    assert names.count("run.time_travel_jumped") == 1 and names.count("run.completed") == 1, names
    assert names.index("run.time_travel_jumped") < names.index("run.completed")
    assert mine[names.index("run.completed")]["payload"]["status"] == "finished"
    assert calls_of(run_id) == {"first": 2, "hold": 2, "last": 1}
    assert outputs(live, run_id) == {("first", 0): {"n": 1}, ("hold", 0): {"n": 7}, ("last", 0): {"n": 8}}
    with live.gateway.store.read() as tx:
        types = [e.type for e in tx.list_events(run_id, limit=None)]
        final = [(a["node_id"], a["attempt"], a["state"]) for a in tx.list_attempts(run_id)]
    # stopped (its run loop ended), rewound, then run again by the gateway to the end
    jumped = types.index("TimeTravelJumped")
    assert "RunCancelled" not in types and types.count("RunStarted") >= 1 and types[-1] == "RunFinished"
    assert "NodeStarted" in types[jumped:] and types[jumped:].count("RunFinished") == 1
    assert sorted(final) == [("first", 1, "finished"), ("hold", 1, "finished"), ("last", 1, "finished")]
    [audit] = audits(live, run_id)
    assert audit["result"] == "success" and audit["from_frame_no"] == before["latest"] and audit["to_frame_no"] == 1


# -- 4. the working directory ----------------------------------------------------------------------
def pointer_of(live: Live, run_id: str, node_id: str) -> str:
    [attempt] = [a for a in attempts(live, run_id) if a["node_id"] == node_id]
    return str(attempt["jj_pointer"])


def test_node_diff_shows_what_each_node_changed_and_is_cached(start: Start, repo: Path) -> None:
    live = start(files_workflow(repo))
    run_id = finished(live, "tt_files")
    run = live.gateway.store.get_run(run_id)
    assert (run["vcs_type"], run["vcs_root"]) == ("git", str(repo)) and run["vcs_revision"]
    assert work_files(repo) == {"README.md": "hello\n", "a.txt": "one\ntwo\n", "c.txt": "sea\n"}
    assert git(repo, "status", "--porcelain") == "?? a.txt\n?? c.txt\n"  # HEAD and index left alone

    def diff(node_id: str, method: str = "getNodeDiff") -> Any:
        return live.ok(method, {"runId": run_id, "nodeId": node_id, "iteration": 0}, token=READER)

    first = diff("w1")  # compared with the state the run started from
    assert first["seq"] == 1 and first["baseRef"] == run["vcs_revision"]
    assert [(p["path"], p["operation"]) for p in first["patches"]] == [("a.txt", "add"), ("b.txt", "add")]
    assert first["patches"][0]["diff"].startswith("diff --git a/a.txt b/a.txt\nnew file mode 100644")
    assert first["patches"][0]["diff"].endswith("@@ -0,0 +1 @@\n+one\n")
    second = diff("w2", "devtools.getNodeDiff")  # compared with the previous attempt's pointer
    assert second["seq"] == 1 and second["baseRef"] == pointer_of(live, run_id, "w1")
    assert [(p["path"], p["operation"]) for p in second["patches"]] == [
        ("a.txt", "modify"),
        ("b.txt", "delete"),
        ("c.txt", "add"),
    ]
    modify, delete, add = second["patches"]
    assert "@@ -1 +1,2 @@\n one\n+two\n" in modify["diff"]
    assert "deleted file mode 100644" in delete["diff"] and delete["diff"].endswith("-bee\n")
    assert add["diff"].endswith("+sea\n") and all("binaryContent" not in p for p in second["patches"])
    assert diff("w3") == {"seq": 1, "baseRef": pointer_of(live, run_id, "w2"), "patches": []}

    # cached per (run, node, iteration, base): the second call is answered from the table
    with live.gateway.store.read() as tx:
        cached = tx.get_node_diff(run_id, "w2", 0, second["baseRef"])
    assert cached is not None and json.loads(cached["diff_json"]) == second
    assert cached["size_bytes"] == len(cached["diff_json"].encode())
    marker = {"seq": 1, "baseRef": second["baseRef"], "patches": [{"path": "cached", "operation": "add", "diff": ""}]}
    with live.gateway.store.write() as tx:
        tx.upsert_node_diff(**{**dict(cached), "diff_json": json.dumps(marker)})
    assert diff("w2") == marker

    # the errors of §12.2, each an answer, never SERVER_ERROR
    def error(params: dict[str, Any]) -> tuple[int, str, str]:
        return refusal(live.rpc("getNodeDiff", params, token=READER))

    base = {"runId": run_id, "nodeId": "w1", "iteration": 0}
    for bad in ("0", None, -1, 1.5, 2**31, True):
        assert error({**base, "iteration": bad}) == (400, "InvalidIteration", ITERATION_MESSAGE), bad
    assert error({"runId": run_id, "nodeId": "w1"}) == (400, "InvalidIteration", ITERATION_MESSAGE)
    assert error({**base, "runId": "Bad"}) == (400, "InvalidRunId", RUN_ID_MESSAGE)
    assert error({**base, "nodeId": "no spaces"}) == (
        400,
        "InvalidNodeId",
        "nodeId must match /^[a-zA-Z0-9:_-]{1,128}$/.",
    )
    assert error({**base, "runId": "nope"}) == (404, "RunNotFound", "Run not found: nope")
    assert error({**base, "nodeId": "ghost"}) == (404, "NodeNotFound", f"Node not found: {run_id}/ghost/0")
    assert error({**base, "iteration": 3}) == (404, "NodeNotFound", f"Node not found: {run_id}/w1/3")
    assert error({**base, "nodeId": "prep"}) == (  # a static value: no attempt body, no pointer
        409,
        "AttemptNotFinished",
        "Attempt has no finished working-tree pointer.",
    )
    with live.gateway.store.write() as tx:  # a pointer git does not know (and no cached answer)
        tx.update_attempt(run_id, "w3", 0, 1, jj_pointer="0" * 40)
        assert tx.delete_node_diffs(run_id, "w3", 0) == 1
    status, code, message = error({**base, "nodeId": "w3"})
    assert (status, code) == (500, "VcsError") and message and len(message) <= 513
    # a run some other VCS recorded
    other = finished(live, "tt_flow", start=1)
    with live.gateway.store.write() as tx:
        tx.update_run(other, vcs_type="jj")
    assert error({"runId": other, "nodeId": "a", "iteration": 0}) == (
        500,
        "VcsError",
        "Unsupported VCS type: jj. Only git-backed runs are supported.",
    )
    with live.gateway.store.write() as tx:
        tx.update_run(other, vcs_type=None)
    assert error({"runId": other, "nodeId": "a", "iteration": 0}) == (
        409,
        "AttemptNotFinished",
        "Attempt has no finished working-tree pointer.",
    )
    text = live.http.get("/metrics").text
    assert "SERVER_ERROR" not in text


def test_a_rewind_restores_the_working_directory_and_the_rerun_writes_it_again(start: Start, repo: Path) -> None:
    live = start(files_workflow(repo))
    run_id = finished(live, "tt_files")
    final = work_files(repo)
    w2_diff = live.ok("getNodeDiff", {"runId": run_id, "nodeId": "w2", "iteration": 0}, token=OWNER)
    w1_diff = live.ok("getNodeDiff", {"runId": run_id, "nodeId": "w1", "iteration": 0}, token=OWNER)
    live.ok("getNodeDiff", {"runId": run_id, "nodeId": "w3", "iteration": 0}, token=OWNER)
    before = table_counts(live, run_id)
    w1_state = {"README.md": "hello\n", "a.txt": "one\n", "b.txt": "bee\n"}

    # back to the frame w2 started after: the files as w1 left them; w2 and w3 run again
    target = started_after(live, run_id, "w2")
    result = live.ok("jumpToFrame", {"runId": run_id, "frameNo": target, "confirm": True}, token=OWNER)
    assert result["revertedSandboxes"] == 1
    assert result["deletedAttempts"] == 2 and result["invalidatedDiffs"] == 2  # w2's and w3's cached diffs
    assert result["deletedFrames"] == before["frames"] - target
    live.wait_status(run_id, {"finished"})
    assert calls_of(run_id) == {"w1": 1, "w2": 2, "w3": 2}
    assert outputs(live, run_id)[("w2", 0)] == {"files": w1_state}  # what the re-run found: restored
    assert work_files(repo) == final  # and what it wrote again
    again = live.ok("getNodeDiff", {"runId": run_id, "nodeId": "w2", "iteration": 0}, token=OWNER)
    assert again["baseRef"] == w2_diff["baseRef"] == pointer_of(live, run_id, "w1")
    assert [(p["path"], p["operation"]) for p in again["patches"]] == [
        (p["path"], p["operation"]) for p in w2_diff["patches"]
    ]
    with live.gateway.store.read() as tx:  # w1's cached diff is still there
        assert tx.get_node_diff(run_id, "w1", 0, w1_diff["baseRef"]) is not None

    # back to the first frame: the files as the run found them (its start snapshot)
    (repo / "stray.txt").write_text("made after the run\n")
    result = live.ok("rewindRun", {"runId": run_id, "frameNo": 1, "confirm": True}, token=OWNER)
    assert result["revertedSandboxes"] == 1 and result["deletedAttempts"] == 4  # prep has an attempt too
    live.wait_status(run_id, {"finished"})
    assert outputs(live, run_id)[("w1", 0)] == {"files": {"README.md": "hello\n"}}
    assert work_files(repo) == final  # the whole (non-ignored) tree is the frame's: stray.txt went too
    assert calls_of(run_id) == {"w1": 2, "w2": 3, "w3": 3}
    assert git(repo, "log", "--format=%s") == "init\n"  # the user's branch never moved


def test_a_rewind_that_fails_leaves_the_run_as_it_was_and_free_to_go_on(start: Start, repo: Path) -> None:
    """A rewind that fails half way (git broken under it) changes nothing stored, withdraws its hold
    on the run, and is audited; once git works again the same rewind goes through."""
    live = start(files_workflow(repo))
    run_id = finished(live, "tt_files")
    final = work_files(repo)
    before = table_counts(live, run_id)
    target = started_after(live, run_id, "w2")
    head = repo / ".git" / "HEAD"
    good_head = head.read_text()
    head.write_text("not a ref\n")
    try:
        status, code, message = refusal(jump(live, run_id, target, token=OWNER))
    finally:
        head.write_text(good_head)
    assert code == "VcsError" and status >= 400 and message
    row = live.gateway.store.get_run(run_id)
    assert row["status"] == "finished" and row["pause_requested_at_ms"] is None
    assert table_counts(live, run_id) == before and work_files(repo) == final
    assert [a["result"] for a in audits(live, run_id)] == ["failed"]
    # nothing holds the run: the next rewind is not Busy, and works
    result = live.ok("jumpToFrame", {"runId": run_id, "frameNo": target, "confirm": True}, token=OWNER)
    assert result["revertedSandboxes"] == 1
    live.wait_status(run_id, {"finished"})
    assert [a["result"] for a in audits(live, run_id)] == ["failed", "success"]


# -- 5. runs.fork ----------------------------------------------------------------------------------
def test_a_fork_runs_to_the_same_end_and_leaves_its_source_alone(start: Start) -> None:
    live = start()
    source = finished(live, "tt_flow", start=2)
    expected = outputs(live, source)
    source_counts, source_calls = table_counts(live, source), calls_of(source)
    frame_no = started_after(live, source, "inc", 1)  # right after the loop's first pass

    forked = live.ok(
        "runs.fork", {"runId": source, "frameNo": frame_no, "newRunId": "fork-one", "label": "try"}, token=OTHER
    )
    assert forked == {"runId": "fork-one", "parentRunId": source, "parentFrameNo": frame_no, "workflow": "tt_flow"}
    live.wait_status("fork-one", {"finished"})
    assert outputs(live, "fork-one") == expected
    assert calls_of("fork-one") == {"inc": 2, "p1": 1, "p2": 1, "z": 1}  # a, b and the first pass were copied
    assert table_counts(live, source) == source_counts and calls_of(source) == source_calls
    assert live.gateway.store.get_run(source)["status"] == "finished"
    record = live.ok("getRun", {"runId": "fork-one"}, token=READER)
    assert record["parentRunId"] == source and record["status"] == "finished" and record["workflowKey"] == "tt_flow"
    assert live.ok("getRun", {"runId": source}, token=READER)["parentRunId"] is None
    with live.gateway.store.read() as tx:
        branch = tx.get_branch("fork-one")
        assert tx.get_branch(source) is None
    assert branch is not None
    assert (branch["parent_run_id"], branch["parent_frame_no"], branch["branch_label"]) == (source, frame_no, "try")
    # the fork belongs to whoever made it: they may rewind it, the source's owner may not
    assert json.loads(live.gateway.store.get_run("fork-one")["config_json"])["auth"]["triggeredBy"] == "user:other"
    assert refusal(jump(live, "fork-one", 1, token=OWNER))[1] == "Unauthorized"

    # from the first frame, with a generated id: everything runs
    anonymous = live.ok("runs.fork", {"runId": source, "frameNo": 1}, token=OWNER)
    assert anonymous["parentRunId"] == source and anonymous["runId"] not in (source, "fork-one")
    live.wait_status(anonymous["runId"], {"finished"})
    assert outputs(live, anonymous["runId"]) == expected
    assert calls_of(anonymous["runId"]) == {"a": 1, "b": 1, "inc": 3, "p1": 1, "p2": 1, "z": 1}

    def error(params: dict[str, Any], token: str = OWNER) -> tuple[int, str, str]:
        return refusal(live.rpc("runs.fork", params, token=token))

    latest = source_counts["latest"]
    frame_message = "frameNo must be an integer between 1 and 2147483647."
    assert error({"frameNo": 1}) == (400, "InvalidRunId", "runId is required")
    for bad in (0, -1, "1", None, 1.5, 2**31):
        assert error({"runId": source, "frameNo": bad}) == (400, "InvalidFrameNo", frame_message), bad
    assert error({"runId": "nope", "frameNo": 1}) == (404, "RunNotFound", "Run not found: nope")
    assert error({"runId": source, "frameNo": latest + 1}) == (
        400,
        "FrameOutOfRange",
        f"frameNo must be between 1 and {latest}.",
    )
    for taken in ("fork-one", source):
        assert error({"runId": source, "frameNo": 1, "newRunId": taken}) == (
            400,
            "INVALID_REQUEST",
            f"Run already exists: {taken}",
        )
    assert error({"runId": source, "frameNo": 1, "newRunId": "Not Valid"}) == (
        400,
        "InvalidRunId",
        "newRunId must match /^[a-z0-9_-]{1,64}$/.",
    )
    forbidden = live.rpc("runs.fork", {"runId": source, "frameNo": 1}, token=READER)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["requiredScope"] == "run:write"
    assert table_counts(live, source) == source_counts


# -- 6. recovery at start --------------------------------------------------------------------------
def test_a_rewind_left_in_progress_is_partial_at_start_and_its_run_needs_attention(start: Start) -> None:
    first = start()
    db_url = first.db_url
    cut = finished(first, "tt_flow", start=1)
    kept = finished(first, "tt_flow", start=2)
    first.stop()
    store = Store(db_url)
    try:
        t0 = now_ms()
        old = t0 - HOLD_STALE_MS  # older than a live rewind in another process can be
        with store.write() as tx:
            # a crash after the truncation committed (run set running, no owner), before the audit ended
            tx.update_run(cut, status="running", finished_at_ms=None, runtime_owner_id=None, heartbeat_at_ms=None)
            stuck = tx.insert_audit(
                run_id=cut,
                from_frame_no=-1,
                to_frame_no=2,
                caller="user:admin",
                timestamp_ms=old - 5000,
                result="in_progress",
            )
            timed = tx.insert_audit(
                run_id=kept,
                from_frame_no=9,
                to_frame_no=3,
                caller="user:op",
                timestamp_ms=old - 1000,
                result="in_progress",
                duration_ms=123,
            )
            gone = tx.insert_audit(
                run_id="gone", from_frame_no=-1, to_frame_no=1, caller="x", timestamp_ms=old, result="in_progress"
            )
            # begun a moment ago: perhaps alive in another process, so left alone for now
            young = tx.insert_audit(
                run_id=kept, from_frame_no=-1, to_frame_no=2, caller="user:op", timestamp_ms=t0, result="in_progress"
            )
            done = tx.insert_audit(
                run_id=kept,
                from_frame_no=5,
                to_frame_no=1,
                caller="user:op",
                timestamp_ms=t0,
                result="success",
                duration_ms=7,
            )
            events_before = len(tx.list_events(cut, limit=None))
    finally:
        store.close()

    live = start(db=db_url)
    by_id = {a["id"]: a for a in audits(live)}
    assert by_id[stuck]["result"] == "partial"
    assert HOLD_STALE_MS + 5000 <= by_id[stuck]["duration_ms"] <= now_ms() - old + 5000
    assert by_id[young]["result"] == "in_progress"
    assert (by_id[timed]["result"], by_id[timed]["duration_ms"]) == ("partial", 123)  # kept when it was set
    assert by_id[gone]["result"] == "partial"
    assert (by_id[done]["result"], by_id[done]["duration_ms"]) == ("success", 7)
    row = live.gateway.store.get_run(cut)
    assert row["status"] == "failed" and row["runtime_owner_id"] is None and row["heartbeat_at_ms"] is None
    error = json.loads(row["error_json"])
    assert {k: v for k, v in error.items() if k != "timestampMs"} == {
        "code": "RewindFailed",
        "needsAttention": True,
        "message": f"Rewind audit {stuck} was in_progress at startup; marked partial.",
    }
    assert t0 <= error["timestampMs"] <= now_ms()
    # the kept run was finished: it needs attention now too, as the spec says of every stuck audit's run
    assert json.loads(live.gateway.store.get_run(kept)["error_json"])["needsAttention"] is True
    # the cut run was not resumed
    assert not live.gateway.is_executing(cut)
    assert table_counts(live, cut)["events"] == events_before
    record = live.ok("getRun", {"runId": cut}, token=READER)
    assert record["status"] == "failed"


# -- metrics ----------------------------------------------------------------------------------------
def test_rewind_metrics_observe_each_rewind(start: Start, repo: Path) -> None:
    live = start(files_workflow(repo))
    run_id = finished(live, "tt_files")
    target = started_after(live, run_id, "w2")
    result = live.ok("jumpToFrame", {"runId": run_id, "frameNo": target, "confirm": True}, token=OWNER)
    live.wait_status(run_id, {"finished"})
    assert result["revertedSandboxes"] == 1
    assert rewind_total(live) == {"success": 1}
    assert metric(live, "smithers_rewind_duration_ms_count") == 1
    assert metric(live, "smithers_rewind_frames_deleted_count") == 1
    assert metric(live, "smithers_rewind_frames_deleted_sum") == result["deletedFrames"]
    assert metric(live, "smithers_rewind_sandboxes_reverted_count") == 1
    assert metric(live, "smithers_rewind_sandboxes_reverted_sum") == 1


def test_node_diff_cache_hits_and_misses_are_counted(start: Start, repo: Path) -> None:
    live = start(files_workflow(repo))
    run_id = finished(live, "tt_files")
    params = {"runId": run_id, "nodeId": "w2", "iteration": 0}
    assert live.ok("getNodeDiff", params, token=OWNER) == live.ok("getNodeDiff", params, token=OWNER)
    assert metric(live, "smithers_node_diff_request_total", result="ok") == 2
    assert metric(live, "smithers_node_diff_compute_ms_count") == 2
    assert metric(live, "smithers_node_diff_cache_rows") == 1
    assert metric(live, "smithers_node_diff_cache_total", result="miss") == 1
    assert metric(live, "smithers_node_diff_cache_total", result="hit") == 1
