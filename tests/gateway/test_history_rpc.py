"""frames.list/get, attempts.list/get and runs.diff against a live gateway."""

from __future__ import annotations

import json
from typing import Any

from smithers.engine import frames
from tests.gateway.support import Live


def finished_run(live: Live, workflow: str = "hello", **input: Any) -> str:
    run_id = str(live.ok("launchRun", {"workflow": workflow, "input": input or {"name": "ada"}})["runId"])
    live.wait_status(run_id, {"finished"})
    return run_id


def error_of(live: Live, method: str, params: dict[str, Any]) -> tuple[int, str, str]:
    response = live.rpc(method, params)
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["message"]


def test_frames_are_listed_newest_first_with_full_documents(live: Live) -> None:
    run_id = finished_run(live, "chatty", tasks=4)
    listed = live.ok("frames.list", {"runId": run_id})
    numbers = [f["frameNo"] for f in listed]
    assert numbers == sorted(numbers, reverse=True) and numbers[-1] == 1
    for frame in listed:
        doc = json.loads(frame["xmlJson"])
        assert doc["tag"] == "smithers:workflow"
        assert frames.sha256_hex(frames.canonical(doc)) == frame["xmlHash"]
        assert json.loads(frame["mountedTaskIdsJson"]) == [f"t{i}::0" for i in range(4)]
        assert frame["encoding"] in {"keyframe", "delta"}
    assert [f["frameNo"] for f in live.ok("frames.list", {"runId": run_id, "limit": 2})] == numbers[:2]
    after = live.ok("frames.list", {"runId": run_id, "afterFrameNo": numbers[1]})
    assert [f["frameNo"] for f in after] == [numbers[0]]


def test_frames_get_latest_and_by_number(live: Live) -> None:
    run_id = finished_run(live)
    latest = live.ok("frames.get", {"runId": run_id})
    assert latest["frameNo"] == live.ok("frames.list", {"runId": run_id})[0]["frameNo"]
    first = live.ok("frames.get", {"runId": run_id, "frameNo": 1})
    assert first["frameNo"] == 1 and first["encoding"] == "keyframe"
    assert error_of(live, "frames.get", {"runId": run_id, "frameNo": 999}) == (404, "NOT_FOUND", "Frame not found")
    assert error_of(live, "frames.get", {"runId": run_id, "frameNo": 0}) == (404, "NOT_FOUND", "Frame not found")
    assert error_of(live, "frames.get", {"runId": "nope"}) == (404, "NOT_FOUND", "Run not found: nope")
    assert error_of(live, "frames.list", {})[:2] == (400, "INVALID_REQUEST")


def test_attempts_list_and_get(live: Live) -> None:
    run_id = finished_run(live)
    [attempt] = live.ok("attempts.list", {"runId": run_id})
    assert attempt["nodeId"] == "greet" and attempt["state"] == "finished" and attempt["cached"] is False
    assert live.ok("attempts.list", {"runId": run_id, "nodeId": "greet", "iteration": 0}) == [attempt]
    got = live.ok("attempts.get", {"runId": run_id, "nodeId": "greet", "iteration": 0, "attempt": 1})
    assert got == attempt
    assert error_of(live, "attempts.get", {"runId": run_id, "nodeId": "greet", "iteration": 0, "attempt": 2}) == (
        404,
        "NOT_FOUND",
        "Attempt not found",
    )
    assert error_of(live, "attempts.get", {"runId": run_id}) == (
        400,
        "INVALID_REQUEST",
        "runId, nodeId, iteration, and attempt are required",
    )


def test_runs_diff_compares_latest_snapshots(live: Live) -> None:
    left = finished_run(live, name="ada")
    right = finished_run(live, name="bob")
    same = live.ok("runs.diff", {"leftRunId": left, "rightRunId": left})
    assert same["nodesChanged"] == [] and same["outputsChanged"] == [] and same["inputChanged"] is False
    diff = live.ok("runs.diff", {"leftRunId": left, "rightRunId": right})
    assert diff["inputChanged"] is True and diff["nodesAdded"] == [] and diff["nodesRemoved"] == []
    assert [c["key"] for c in diff["outputsChanged"]] == ["greeting"]
    other = finished_run(live, "chatty", tasks=2)
    added = live.ok("runs.diff", {"leftRunId": left, "rightRunId": other})
    assert added["nodesAdded"] == ["t0::0", "t1::0"] and added["nodesRemoved"] == ["greet::0"]
    assert error_of(live, "runs.diff", {"leftRunId": left}) == (
        400,
        "INVALID_REQUEST",
        "leftRunId and rightRunId are required",
    )
    assert error_of(live, "runs.diff", {"leftRunId": left, "rightRunId": "nope"}) == (
        404,
        "NOT_FOUND",
        "Both runs must exist",
    )


def test_frame_number_errors_name_their_parameter(live: Live) -> None:
    run_id = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(run_id, {"finished"})
    for method, field in (("frames.list", "afterFrameNo"), ("frames.get", "frameNo")):
        response = live.rpc(method, {"runId": run_id, field: -1})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == f"{field} must be a finite number greater than 0."


def test_events_list_pages_through_the_stored_event_log(live: Live) -> None:
    """``events.list`` (ours): the durable engine events, newest page first, then older pages with
    ``beforeSeq`` and newer ones with ``afterSeq``; no page repeats or skips an event."""
    run_id = live.ok("launchRun", {"workflow": "hello", "input": {"name": "log"}})["runId"]
    live.wait_status(run_id, {"finished"})
    everything = live.ok("events.list", {"runId": run_id, "limit": 1000})
    events = everything["events"]
    assert everything["runId"] == run_id and everything["lastSeq"] == events[-1]["seq"]
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[-1]["seq"] + 1))
    assert events[0]["type"] == "RunStarted" and events[-1]["type"] == "RunFinished"
    assert set(events[0]) == {"seq", "type", "timestampMs", "payload"}
    newest = live.ok("events.list", {"runId": run_id, "limit": 2})["events"]
    assert newest == events[-2:]
    older, before = [], newest[0]["seq"]
    while page := live.ok("events.list", {"runId": run_id, "limit": 2, "beforeSeq": before})["events"]:
        older = page + older
        before = page[0]["seq"]
    assert older + newest == events
    after = live.ok("events.list", {"runId": run_id, "afterSeq": events[1]["seq"], "limit": 3})["events"]
    assert after == events[2:5]
    assert live.ok("events.list", {"runId": run_id, "afterSeq": everything["lastSeq"]})["events"] == []
    for params, code in (
        ({}, "INVALID_REQUEST"),
        ({"runId": "nope"}, "NOT_FOUND"),
        ({"runId": run_id, "afterSeq": 1, "beforeSeq": 3}, "INVALID_INPUT"),
        ({"runId": run_id, "afterSeq": "1"}, "INVALID_INPUT"),
        ({"runId": run_id, "limit": 0}, "INVALID_INPUT"),
    ):
        response = live.rpc("events.list", params)
        assert response.status_code in (400, 404) and response.json()["error"]["code"] == code, params
