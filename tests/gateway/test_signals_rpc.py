"""Signals end to end: both parameter shapes, correlation, early signals, the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.gateway.support import HUMAN_AUTH, Live, cli, error_of, wait_for

OP = "op-token"
Start = Callable[..., Live]


def waiting(live: Live, workflow: str, **input: Any) -> str:
    run_id = str(live.ok("launchRun", {"workflow": workflow, "input": input}, token=OP)["runId"])
    live.wait_status(run_id, {"waiting-event"})
    return run_id


def after_value(live: Live, run_id: str) -> Any:
    with live.gateway.store.read() as tx:
        row = tx.get_output(run_id, "after", 0)
    assert row is not None
    return json.loads(row["payload_json"])["value"]


def signals_of(live: Live, run_id: str) -> list[dict[str, Any]]:
    with live.gateway.store.read() as tx:
        return [dict(r) for r in tx.list_signals(run_id)]


def wait_meta(live: Live, run_id: str, node_id: str) -> dict[str, Any]:
    with live.gateway.store.read() as tx:
        attempts = tx.list_attempts(run_id, node_id, 0)
    return dict(json.loads(attempts[-1]["meta_json"])["waitForEvent"])


def test_legacy_shape_over_ws_resumes_and_delivers_the_payload(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "waiter")
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request("signals.send", {"runId": run_id, "signalName": "go", "data": {"value": 42}})
        assert frame["ok"] is True, frame
        payload = frame["payload"]
        assert isinstance(payload["receivedAtMs"], int) and isinstance(payload["seq"], int)
        assert payload == {
            "runId": run_id,
            "seq": payload["seq"],
            "signalName": "go",
            "correlationId": None,
            "receivedAtMs": payload["receivedAtMs"],
        }
        # the resume auto-subscribed the sender, so it hears the run finish
        completed = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
        assert completed["payload"] == {"runId": run_id, "status": "finished"}
        assert not [e for e in ws.events if e["event"].startswith("signal")]  # no event for the signal itself
    finally:
        ws.close()
    assert after_value(live, run_id) == {"value": 42}
    [row] = signals_of(live, run_id)
    assert row["signal_name"] == "go" and row["correlation_id"] is None and row["received_by"] == "user:op"
    assert row["seq"] == payload["seq"] and row["received_at_ms"] == payload["receivedAtMs"]
    assert json.loads(row["payload_json"]) == {"value": 42}
    assert wait_meta(live, run_id, "w")["resolvedSignalSeq"] == payload["seq"]


def test_stable_shape_correlation_key_resumes_a_plain_wait(start_humans: Start) -> None:
    """submitSignal {runId, correlationKey, payload} resumes an uncorrelated WaitForEvent (P3)."""
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "waiter")
    response = live.rpc("submitSignal", {"runId": run_id, "correlationKey": "go", "payload": {"x": 1}}, token=OP)
    assert response.status_code == 200, response.text
    payload = response.json()["payload"]
    assert payload["signalName"] == "go" and payload["correlationId"] == "go"
    live.wait_status(run_id, {"finished"})
    assert after_value(live, run_id) == {"x": 1}


def test_correlation_id_must_match_a_correlated_wait(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "order", order="A-1")
    other = live.rpc(
        "submitSignal",
        {"runId": run_id, "correlationKey": "order.paid", "correlationId": "B-2", "payload": {"paid": "wrong"}},
        token=OP,
    )
    assert other.status_code == 200, other.text
    assert other.json()["payload"]["correlationId"] == "B-2"  # correlationId wins over correlationKey
    first = other.json()["payload"]["seq"]
    plain = live.rpc("signals.send", {"runId": run_id, "signalName": "order.paid", "data": {"paid": "none"}}, token=OP)
    assert plain.status_code == 200 and plain.json()["payload"]["seq"] == first + 1
    matching = live.rpc(
        "signals.send",
        {"runId": run_id, "signalName": "order.paid", "correlationId": "A-1", "data": {"paid": 10}},
        token=OP,
    )
    assert matching.status_code == 200, matching.text
    assert matching.json()["payload"]["seq"] == first + 2 and matching.json()["payload"]["correlationId"] == "A-1"
    live.wait_status(run_id, {"finished"})
    assert after_value(live, run_id) == {"paid": 10}
    assert wait_meta(live, run_id, "paid")["resolvedSignalSeq"] == first + 2
    stored = [(s["seq"], s["correlation_id"]) for s in signals_of(live, run_id)]
    assert stored == [(first, "B-2"), (first + 1, None), (first + 2, "A-1")]


def test_payload_fallbacks(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"signalName": "go", "data": None, "payload": {"p": 1}}, {"p": 1}),  # null data counts as missing
        ({"signalName": "go"}, {}),
        ({"signalName": "go", "data": [1, 2], "payload": {"p": 1}}, [1, 2]),
        ({"signalName": "  go  ", "data": "text"}, "text"),  # the engine trims the name
    ]
    runs = []
    for params, _ in cases:
        run_id = waiting(live, "waiter")
        response = live.rpc("submitSignal", {"runId": run_id, **params}, token=OP)
        assert response.status_code == 200, response.text
        assert response.json()["payload"]["signalName"] == "go"
        runs.append(run_id)
    for run_id, (_, expected) in zip(runs, cases, strict=True):
        live.wait_status(run_id, {"finished"})
        assert after_value(live, run_id) == expected


def test_errors(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "waiter")
    required = {"version": "v1", "code": "INVALID_REQUEST", "message": "runId and signalName are required"}
    for params in ({"signalName": "go"}, {"runId": run_id}, {"runId": run_id, "signalName": ""}, {"runId": 5}):
        response = live.rpc("signals.send", params, token=OP)
        assert response.status_code == 400, params
        assert error_of(response) == required
    response = live.rpc("submitSignal", {"runId": "nope", "signalName": "go"}, token=OP)
    assert response.status_code == 404
    assert error_of(response) == {"version": "v1", "code": "NOT_FOUND", "message": "Run not found: nope"}
    blank = {"version": "v1", "code": "INVALID_INPUT", "message": "Signal name must be a non-empty string."}
    response = live.rpc("submitSignal", {"runId": run_id, "signalName": "   "}, token=OP)
    assert response.status_code == 400 and error_of(response) == blank
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request("submitSignal", {"runId": run_id, "signalName": " "}, "s1", any_id=True)
        assert frame["id"] == "invalid" and frame["ok"] is False and frame["error"] == blank
    finally:
        ws.close()
    response = live.rpc("submitSignal", {"runId": run_id, "signalName": "go"}, token="alice-token")
    assert response.status_code == 403 and error_of(response)["requiredScope"] == "signal:submit"
    assert signals_of(live, run_id) == []
    assert live.gateway.store.get_run(run_id)["status"] == "waiting-event"
    # signal:submit alone is enough, and the signal records who sent it
    response = live.rpc("submitSignal", {"runId": run_id, "signalName": "go", "data": 1}, token="signal-token")
    assert response.status_code == 200, response.text
    live.wait_status(run_id, {"finished"})
    assert signals_of(live, run_id)[0]["received_by"] == "user:sig"


def test_a_signal_before_the_wait_is_stored_and_consumed_later(start_humans: Start, tmp_path: Path) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    hold = tmp_path / "hold"
    hold.touch()
    run_id = str(live.ok("launchRun", {"workflow": "late", "input": {"hold": str(hold)}}, token=OP)["runId"])

    def prep_running() -> bool:
        with live.gateway.store.read() as tx:
            node = tx.get_node(run_id, "prep", 0)
        return node is not None and node["state"] == "in-progress"

    wait_for(prep_running, "the prep task to start")
    assert live.gateway.store.get_run(run_id)["status"] == "running"  # not waiting yet
    response = live.rpc("submitSignal", {"runId": run_id, "signalName": "go", "data": {"early": True}}, token=OP)
    assert response.status_code == 200, response.text
    seq = response.json()["payload"]["seq"]
    hold.unlink()
    assert live.wait_status(run_id, {"finished", "failed"})["status"] == "finished"
    assert after_value(live, run_id) == {"early": True}
    assert wait_meta(live, run_id, "w")["resolvedSignalSeq"] == seq


def test_each_signal_resumes_only_its_run(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    runs = [waiting(live, "waiter") for _ in range(3)]
    ws = live.ws(connect_now=True, token="bob-token")
    try:
        for index, run_id in enumerate(runs[:2]):
            response = live.rpc("submitSignal", {"runId": run_id, "signalName": "go", "data": index}, token=OP)
            assert response.status_code == 200, response.text
        done = {ws.event("run.completed")["payload"]["runId"] for _ in range(2)}
        assert done == set(runs[:2])
    finally:
        ws.close()
    assert [after_value(live, r) for r in runs[:2]] == [0, 1]
    assert live.gateway.store.get_run(runs[2])["status"] == "waiting-event"


def test_cli_signal_is_picked_up_by_the_gateway(start_humans: Start, tmp_path: Path) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "waiter")
    proc = cli(
        "signal",
        run_id,
        "go",
        "--data",
        '{"from": "cli"}',
        "--by",
        "user:cli",
        "--db",
        live.db_url,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    [row] = signals_of(live, run_id)
    assert proc.stdout.strip() == f"signal go stored for run {run_id} (seq {row['seq']})"
    assert row["received_by"] == "user:cli"
    assert live.wait_status(run_id, {"finished", "failed"}, timeout=20)["status"] == "finished"
    assert after_value(live, run_id) == {"from": "cli"}


def test_a_payload_the_waiting_model_refuses_is_refused_and_the_run_keeps_waiting(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "typed_pay")
    for data in ("oops", {"amount": "lots"}, {}):
        response = live.rpc("submitSignal", {"runId": run_id, "signalName": "payment.received", "data": data}, token=OP)
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["code"] == "INVALID_INPUT" and "does not match Amount expected by paid" in error["message"]
        assert error["nodeId"] == "paid"
    assert signals_of(live, run_id) == []
    time.sleep(0.3)
    assert live.gateway.store.get_run(run_id)["status"] == "waiting-event"
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request(
            "signals.send", {"runId": run_id, "correlationKey": "payment.received", "payload": "x"}, "s1"
        )
        assert frame["ok"] is False and frame["id"] == "s1" and frame["error"]["code"] == "INVALID_INPUT"
    finally:
        ws.close()
    live.ok("submitSignal", {"runId": run_id, "signalName": "payment.received", "data": {"amount": 3}}, token=OP)
    live.wait_status(run_id, {"finished"})
    assert after_value(live, run_id) == {"amount": 3}
