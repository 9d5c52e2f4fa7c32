"""Hostile WebSocket clients: bad frames, forged credentials, too many sockets; nothing breaks."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smithers.errors import ALL_CODES
from tests.gateway.support import Live

WIRE = pytest.mark.sqlite_only(reason="connection limits of the WebSocket transport: apart from the store")

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MUTATING = {"runs.create", "launchRun", "resumeRun", "runs.cancel", "cancelRun", "runs.rerun"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def fingerprint(live: Live) -> list[tuple[Any, ...]]:
    with live.gateway.store.read() as tx:
        return [(r["run_id"], r["status"], r["finished_at_ms"]) for r in tx.list_runs(1000)]


@pytest.fixture
def client(live: Live) -> Any:
    run_id = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(run_id, {"waiting-approval"})
    live.before = fingerprint(live)
    ws = live.ws(connect_now=True, subscribe=["nothing"])
    yield ws
    ws.close()


def check_response(frame: dict[str, Any]) -> None:
    assert frame["type"] == "res" and frame["apiVersion"] == "v1"
    if not frame["ok"]:
        assert frame["error"]["version"] == "v1"
        assert frame["error"]["code"] in ALL_CODES


def still_fine(live: Live, client: Any) -> None:
    pong = client.request("health", frame_id="alive")
    assert pong["ok"] is True
    assert fingerprint(live) == live.before


@FUZZ
@given(message=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_messages(live: Live, client: Any, message: Any) -> None:
    client.send(message)
    frame = client.response()
    check_response(frame)
    # random text or bytes is never a request frame: refused as invalid input, answered with id "invalid"
    assert frame["ok"] is False and frame["id"] == "invalid" and frame["error"]["code"] == "INVALID_INPUT", frame
    still_fine(live, client)


@FUZZ
@given(frame=json_values)
def test_random_json_frames(live: Live, client: Any, frame: Any) -> None:
    if isinstance(frame, dict):
        assume(frame.get("method") not in MUTATING and frame.get("method") != "connect")
    client.send(json.dumps(frame))
    check_response(client.response())
    still_fine(live, client)


@FUZZ
@given(
    method=st.from_regex(r"[a-z][a-zA-Z0-9]{0,12}(\.[a-z][a-zA-Z0-9]{0,8}){0,2}", fullmatch=True),
    params=json_values,
)
def test_unknown_methods_and_wrong_param_types(live: Live, client: Any, method: str, params: Any) -> None:
    assume(method not in MUTATING and method != "connect")
    response = client.request(method, params, any_id=True)
    check_response(response)
    if not response["ok"] and response["error"]["code"] == "METHOD_NOT_FOUND":
        assert response["error"]["message"] == f"Unknown method: {method}"
    still_fine(live, client)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=33, max_value=5000))
def test_deep_frames(live: Live, client: Any, depth: int) -> None:
    client.send('{"type":"req","id":"d","method":"health","params":' + "[" * depth + "]" * depth + "}")
    frame = client.response()
    assert frame["id"] == "invalid"
    assert frame["error"]["message"] == "gateway frame exceeds the maximum JSON depth of 32."
    still_fine(live, client)


@FUZZ
@given(token=st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)))
def test_forged_tokens_on_connect(token_live: Live, token: Any) -> None:
    assume(token not in ("operator-token", "reader-token"))
    if not hasattr(token_live, "before"):
        token_live.before = fingerprint(token_live)
    ws = token_live.ws()
    params = token_live.connect_params()
    params["auth"] = {"token": token}
    response = ws.request("connect", params, any_id=True)
    check_response(response)
    assert response["ok"] is False and response["error"]["code"] == "UNAUTHORIZED"
    assert ws.request("launchRun", {"workflow": "hello"})["error"]["message"] == "Connect first"
    ws.close()
    assert fingerprint(token_live) == token_live.before


def read_raw(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@WIRE
def test_over_limit_connections_get_503(start_gateway: Any) -> None:
    live = start_gateway(max_connections=3)
    clients = [live.ws(connect_now=True) for _ in range(3)]  # connected: the whole limit is theirs
    port = live.gateway.port
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(upgrade)
            answer = read_raw(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
        assert headers[b"connection"] == b"close"
        assert headers[b"content-type"] == b"text/plain; charset=utf-8"
        assert headers[b"x-smithers-api-version"] == b"v1"
        assert headers[b"content-length"] == b"33"
        assert body == b"Gateway connection limit reached\n"
    clients[0].close()
    deadline = time.monotonic() + 5
    while len(live.gateway.connections) > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    again = live.ws(connect_now=True)  # a freed slot is usable again
    assert again.hello["ok"] is True
    for ws in [*clients[1:], again]:
        ws.close()
    assert 'kind="connection_limit"' in live.http.get("/metrics").text


@WIRE
def test_a_client_that_never_reads_does_not_block_others(live: Live) -> None:
    lazy = live.ws(connect_now=True)
    busy = live.ws(connect_now=True)
    for index in range(200):
        lazy.send({"type": "req", "id": f"x{index}", "method": "health"})
    assert busy.request("health")["ok"] is True
    lazy.close()
    busy.close()
