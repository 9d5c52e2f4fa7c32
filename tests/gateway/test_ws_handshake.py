"""WebSocket transport: upgrade, challenge, connect, frame validation, ticks, close."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from smithers.gateway.ws import _LEGAL, Connection, ConnectionState, IllegalTransition
from tests.gateway.support import Live

WIRE = pytest.mark.sqlite_only(reason="the WebSocket handshake and frames: answered apart from the store")

OPERATOR_TOKEN = "operator-token"
READER_TOKEN = "reader-token"


@WIRE
def test_upgrade_header_and_challenge(live: Live) -> None:
    with connect(live.ws_url + "any/path?x=1", open_timeout=10) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Smithers-API-Version"] == "v1"
        challenge = json.loads(ws.recv(timeout=5))
    assert challenge["type"] == "event" and challenge["event"] == "connect.challenge"
    assert challenge["seq"] == 1 and challenge["stateVersion"] == 0 and challenge["apiVersion"] == "v1"
    assert set(challenge["payload"]) == {"nonce", "ts"}
    assert list(challenge) == ["type", "event", "payload", "seq", "stateVersion", "apiVersion"]


@WIRE
def test_hello_payload(token_live: Live) -> None:
    client = token_live.ws()
    hello = client.request("connect", token_live.connect_params(token=OPERATOR_TOKEN), frame_id="c1")
    assert hello["type"] == "res" and hello["id"] == "c1" and hello["ok"] is True
    payload = hello["payload"]
    assert list(payload) == ["protocol", "features", "policy", "auth", "snapshot"]
    assert payload["protocol"] == 1 and payload["features"] == ["streaming", "runs"]
    assert payload["policy"] == {"heartbeatMs": 15000}
    auth = payload["auth"]
    assert list(auth) == ["sessionToken", "role", "scopes", "userId", "tokenId"]
    assert auth["role"] == "operator" and auth["scopes"] == ["*"] and auth["userId"] == "user:op"
    assert auth["tokenId"] == "0850123315d21ab9"  # the derived tokenId of "operator-token"
    assert payload["snapshot"] == {"runs": [], "approvals": [], "stateVersion": 0}
    client.close()


def test_hello_snapshot_lists_active_runs_and_pending_approvals(live: Live) -> None:
    run_id = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(run_id, {"waiting-approval"})
    done = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(done, {"finished"})
    client = live.ws(connect_now=True)
    snapshot = client.hello["payload"]["snapshot"]
    assert [r["runId"] for r in snapshot["runs"]] == [run_id]
    assert snapshot["runs"][0]["workflowKey"] == "gate"
    [approval] = snapshot["approvals"]
    assert approval["runId"] == run_id and approval["nodeId"] == "ok" and approval["workflowKey"] == "gate"
    assert approval["requestTitle"] == "Ship it?" and approval["approvalMode"] == "decision"
    client.close()


@WIRE
@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ("x", "INVALID_REQUEST", "Connect params must be an object"),
        (
            {"minProtocol": 1, "maxProtocol": 1},
            "INVALID_REQUEST",
            "Connect request is missing protocol negotiation fields",
        ),
        (
            {"minProtocol": "1", "maxProtocol": 1, "client": {}},
            "INVALID_REQUEST",
            "Connect request is missing protocol negotiation fields",
        ),
        (
            {"minProtocol": 0, "maxProtocol": 1, "client": {}},
            "INVALID_INPUT",
            "minProtocol must be a finite number greater than 0.",
        ),
        (
            {"minProtocol": 1, "maxProtocol": 1.5, "client": {}},
            "INVALID_INPUT",
            "maxProtocol must be an integer greater than 0.",
        ),
        (
            {"minProtocol": 2, "maxProtocol": 2, "client": {}},
            "PROTOCOL_UNSUPPORTED",
            "Gateway protocol 1 is not supported by the client",
        ),
    ],
)
def test_connect_negotiation_errors(live: Live, params: Any, code: str, message: str) -> None:
    client = live.ws()
    response = client.request("connect", params, frame_id="c")
    assert response["id"] == "c" and response["ok"] is False
    assert response["error"] == {"version": "v1", "code": code, "message": message}
    assert client.request("health", frame_id="h")["error"]["message"] == "Connect first"  # still unauthenticated
    client.close()


@WIRE
def test_connect_auth_failures_leave_the_socket_open(token_live: Live) -> None:
    client = token_live.ws()
    denied = client.request("connect", token_live.connect_params(token="wrong"))
    assert denied["error"] == {"version": "v1", "code": "UNAUTHORIZED", "message": "Invalid token"}
    expired = client.request("connect", token_live.connect_params(token="expired-token"))
    assert expired["error"]["refresh"] == "smithers token issue"
    odd = client.request("connect", token_live.connect_params(auth=None), "odd")
    assert odd["id"] == "odd" and odd["error"]["code"] == "INVALID_REQUEST"
    assert client.request("connect", token_live.connect_params(token=OPERATOR_TOKEN))["ok"] is True
    assert client.request("health")["ok"] is True
    client.close()


@WIRE
def test_reconnect_replaces_identity(token_live: Live) -> None:
    client = token_live.ws(connect_now=True, token=OPERATOR_TOKEN)
    assert client.request("launchRun", {"workflow": "hello"})["ok"] is True
    again = client.request("connect", token_live.connect_params(token=READER_TOKEN))
    assert again["payload"]["auth"]["scopes"] == ["run:read"]
    forbidden = client.request("launchRun", {"workflow": "hello"})
    assert forbidden["error"]["code"] == "FORBIDDEN" and forbidden["error"]["requiredScope"] == "run:write"
    client.close()


@WIRE
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"type":"req","id":5,"method":"health"}', "Gateway frame id must be a string."),
        ("not json", "Gateway RPC payload must be valid JSON."),
        ('{"type":"res","id":"a","method":"health"}', "Gateway frame must be a request object."),
        ("[1]", "Gateway frame must be a request object."),
        ('{"type":"req","id":"a","method":"run:read"}', "Gateway method name is invalid."),
        ('{"type":"req","id":"a","method":"' + "a" * 65 + '"}', "method exceeds the maximum length of 64 characters."),
        (
            '{"type":"req","id":"' + "i" * 129 + '","method":"health"}',
            "id exceeds the maximum length of 128 characters.",
        ),
        (
            '{"type":"req","id":"a","method":"health","params":' + "[" * 40 + "]" * 40 + "}",
            "gateway frame exceeds the maximum JSON depth of 32.",
        ),
    ],
)
def test_invalid_frames_answer_with_id_invalid(live: Live, raw: str, message: str) -> None:
    client = live.ws()
    client.send(raw)
    response = client.response()
    assert response["id"] == "invalid"
    assert response["error"] == {"version": "v1", "code": "INVALID_INPUT", "message": message}
    client.close()


@WIRE
def test_unauthenticated_requests_and_binary_frames(live: Live) -> None:
    client = live.ws()
    assert client.request("health", frame_id="a")["error"] == {
        "version": "v1",
        "code": "UNAUTHORIZED",
        "message": "Connect first",
    }
    client.request("connect", live.connect_params())
    client.send(json.dumps({"type": "req", "id": "bin", "method": "health"}).encode())
    assert client.response("bin")["ok"] is True
    client.close()


@WIRE
def test_escaped_errors_use_id_invalid(live: Live) -> None:
    client = live.ws(connect_now=True)
    response = client.request("listRuns", {"limit": "x"}, any_id=True)
    assert response["id"] == "invalid"
    assert response["error"]["message"] == "limit must be a finite number greater than 0."
    client.close()


@WIRE
def test_tick_heartbeat_and_seq(start_gateway: Any) -> None:
    live = start_gateway(heartbeat_ms=100)
    client = live.ws(connect_now=True)
    ticks = [client.event("tick", timeout=3) for _ in range(3)]
    seqs = [t["seq"] for t in ticks]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 2
    assert all(set(t["payload"]) == {"ts"} for t in ticks)
    metrics = live.http.get("/metrics").text
    assert "smithers_gateway_heartbeat_ticks_total" in metrics
    client.close()


@WIRE
def test_unauthenticated_connections_get_no_ticks(start_gateway: Any) -> None:
    live = start_gateway(heartbeat_ms=50)
    client = live.ws()
    assert client.drain(0.3) == []
    client.close()


@WIRE
def test_oversized_message_closes_with_1009(start_gateway: Any) -> None:
    live = start_gateway(max_payload=1024)
    client = live.ws(connect_now=True)
    client.send(json.dumps({"type": "req", "id": "a", "method": "health", "params": {"pad": "x" * 2000}}))
    with pytest.raises(ConnectionClosed) as info:
        client.drain(5)
        client.recv(1)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert live.http.get("/health").status_code == 200


@WIRE
def test_requests_are_handled_concurrently(live: Live) -> None:
    client = live.ws(connect_now=True)
    for index in range(20):
        client.send({"type": "req", "id": f"q{index}", "method": "health"})
    ids = {client.response()["id"] for _ in range(20)}
    assert ids == {f"q{index}" for index in range(20)}
    client.close()


@WIRE
def test_close_frees_the_slot_and_gateway_close_sends_close(start_gateway: Any) -> None:
    live = start_gateway(max_connections=1)
    first = live.ws(connect_now=True)
    first.close()
    deadline = time.monotonic() + 5
    while live.gateway.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    second = live.ws(connect_now=True)
    live.call(live.gateway.close())
    with pytest.raises(ConnectionClosed) as info:
        second.drain(5)
        second.recv(1)
    assert info.value.rcvd is None or info.value.rcvd.code in (1000, 1005)


def test_connection_state_machine() -> None:
    conn = Connection(None, None, {}, None)  # type: ignore[arg-type]  # no I/O happens on transitions
    with pytest.raises(IllegalTransition):
        conn.transition(ConnectionState.AUTHENTICATED)
    conn.transition(ConnectionState.OPEN)
    conn.transition(ConnectionState.AUTHENTICATED)
    conn.transition(ConnectionState.AUTHENTICATED)
    conn.transition(ConnectionState.OPEN)
    conn.transition(ConnectionState.CLOSED)
    for state in ConnectionState:
        with pytest.raises(IllegalTransition):
            conn.transition(state)
    assert all(
        ConnectionState.CLOSED in edges for state, edges in _LEGAL.items() if state is not ConnectionState.CLOSED
    )
