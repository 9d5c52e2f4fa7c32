"""streamRunEvents: windows, replay, gap resync, heartbeats, ordering, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from smithers.gateway.streams import RunWindows
from tests.gateway.support import Live


def test_conformance_vector_gap_resync(start_gateway: Any) -> None:
    live = start_gateway(event_window_size=2)
    live.ok("launchRun", {"workflow": "hello", "runId": "r"})
    live.wait_status("r", {"finished"})
    time.sleep(0.1)
    client = live.ws(connect_now=True)
    response = client.request("streamRunEvents", {"runId": "r", "afterSeq": 0}, frame_id="s")
    stream_id = response["payload"]["streamId"]
    assert response["payload"] == {"streamId": stream_id, "runId": "r", "afterSeq": 0, "currentSeq": 3}
    assert client.events == []  # D6: nothing of the stream before its response
    gap = client.recv()
    assert gap["event"] == "run.gap_resync"
    payload = gap["payload"]
    assert list(payload) == ["apiVersion", "type", "streamId", "runId", "fromSeq", "toSeq", "snapshot"]
    assert payload["type"] == "GapResync" and payload["streamId"] == stream_id
    assert (payload["fromSeq"], payload["toSeq"]) == (1, 1)
    assert payload["snapshot"]["runId"] == "r" and payload["snapshot"]["summary"] == {"finished": 1}
    replay = [client.recv(), client.recv()]
    assert [f["event"] for f in replay] == ["run.event", "run.event"]
    inner = [f["payload"] for f in replay]
    assert [(p["seq"], p["event"]) for p in inner] == [(2, "node.finished"), (3, "run.completed")]
    assert list(inner[0]) == ["streamId", "apiVersion", "type", "runId", "event", "payload", "seq", "stateVersion"]
    assert inner[0]["type"] == "RunEvent" and inner[0]["streamId"] == stream_id
    client.close()


def test_replay_without_gap_and_without_after_seq(live: Live) -> None:
    live.ok("launchRun", {"workflow": "hello", "runId": "r"})
    live.wait_status("r", {"finished"})
    time.sleep(0.1)
    client = live.ws(connect_now=True)
    client.request("streamRunEvents", {"runId": "r", "afterSeq": 1})
    replay = [client.recv(), client.recv()]
    assert [f["payload"]["seq"] for f in replay] == [2, 3]
    none = client.request("streamRunEvents", {"runId": "r"})
    assert none["payload"]["afterSeq"] is None and none["payload"]["currentSeq"] == 3
    assert [f for f in client.drain(0.3) if f["event"] == "run.event"] == []
    client.close()


def test_run_heartbeat_every_second(live: Live) -> None:
    live.ok("launchRun", {"workflow": "hello", "runId": "r"})
    live.wait_status("r", {"finished"})
    client = live.ws(connect_now=True)
    stream_id = client.request("streamRunEvents", {"runId": "r"})["payload"]["streamId"]
    beat = client.event("run.heartbeat", timeout=3)
    assert set(beat["payload"]) == {"apiVersion", "type", "streamId", "runId", "ts"}
    assert beat["payload"]["type"] == "Heartbeat" and beat["payload"]["streamId"] == stream_id
    client.close()


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({}, "InvalidRunId", "runId is required"),
        ({"runId": 5}, "InvalidRunId", "runId is required"),
        ({"runId": "r", "afterSeq": None}, "SeqOutOfRange", "afterSeq must be a non-negative integer"),
        ({"runId": "r", "afterSeq": -1}, "SeqOutOfRange", "afterSeq must be a non-negative integer"),
        ({"runId": "r", "afterSeq": 1.5}, "SeqOutOfRange", "afterSeq must be a non-negative integer"),
        ({"runId": "r", "afterSeq": "1"}, "SeqOutOfRange", "afterSeq must be a non-negative integer"),
        ({"runId": "ghost"}, "RunNotFound", "Run not found: ghost"),
        ({"runId": "r", "afterSeq": 4}, "SeqOutOfRange", "afterSeq 4 is newer than current seq 3"),
    ],
)
def test_stream_errors(live: Live, params: dict[str, Any], code: str, message: str) -> None:
    live.ok("launchRun", {"workflow": "hello", "runId": "r"})
    live.wait_status("r", {"finished"})
    time.sleep(0.1)
    client = live.ws(connect_now=True)
    response = client.request("streamRunEvents", params, frame_id="s")
    assert response["id"] == "s"
    assert response["error"] == {"version": "v1", "code": code, "message": message}
    client.close()


def test_live_events_follow_the_replay_in_order(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "chatty", "input": {"tasks": 30, "delay": 0.002}})["payload"][
        "runId"
    ]
    client.event("node.started")
    watcher = live.ws(connect_now=True, subscribe=[run_id])
    watcher.request("streamRunEvents", {"runId": run_id, "afterSeq": 0})
    seqs: list[int] = []
    while True:
        frame = watcher.event("run.event")
        seqs.append(frame["payload"]["seq"])
        if frame["payload"]["event"] == "run.completed":
            break
    assert seqs == list(range(1, len(seqs) + 1))  # every event once, in order, replay then live
    assert len(seqs) == 61
    watcher.close()
    client.close()


def test_streams_stop_when_the_socket_closes(live: Live) -> None:
    live.ok("launchRun", {"workflow": "hello", "runId": "r"})
    live.wait_status("r", {"finished"})
    client = live.ws(connect_now=True)
    client.request("streamRunEvents", {"runId": "r"})
    [conn] = list(live.gateway.connections)
    stream = next(iter(conn.streams.values()))
    client.close()
    deadline = time.monotonic() + 5
    while live.gateway.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not live.gateway.connections and conn.streams == {} and stream._heartbeat is None


def test_windows_keep_the_newest_frames_and_runs() -> None:
    windows = RunWindows(size=3, max_runs=2)
    for index in range(5):
        frame = windows.append("a", "e", {"runId": "a", "i": index}, index + 10)
    assert frame["seq"] == 5 and frame["stateVersion"] == 14
    assert [f["seq"] for f in windows.frames("a")] == [3, 4, 5]
    assert windows.current_seq("a") == 5 and windows.current_seq("nope") == 0
    windows.append("b", "e", {"runId": "b"}, 1)
    windows.append("c", "e", {"runId": "c"}, 2)
    assert windows.current_seq("a") == 0 and windows.current_seq("c") == 1
