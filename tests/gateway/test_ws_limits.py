"""What one WebSocket client can hold: a deadline to connect, half the slots for sockets that have
not connected, a byte budget for what it leaves unread, and a hello that fits a client's frame limit.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

import httpx
import pytest

from smithers.engine.states import WAITING_APPROVAL
from smithers.store.rows import dumps, now_ms
from tests.gateway.support import OP_CLOSE, TOKEN_AUTH, Live, RawClient, frame, request, wait_for, waiting_node

WIRE = pytest.mark.sqlite_only(reason="connection limits of the WebSocket transport: apart from the store")

OPERATOR = "operator-token"


def metric(live: Live, name: str) -> float:
    for line in live.http.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def close_code(client: RawClient, timeout: float = 10) -> tuple[int, str]:
    client.sock.settimeout(timeout)
    while True:
        opcode, payload = client.read_frame()
        if opcode == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


@WIRE
def test_a_socket_that_never_connects_is_closed(start_gateway: Any) -> None:
    live = start_gateway(connect_timeout_ms=300)
    idle, connected = RawClient(live), RawClient(live)
    try:
        connected.connect()
        started = time.monotonic()
        assert close_code(idle) == (1008, "connect timeout")
        assert 0.25 <= time.monotonic() - started <= 5
        idle.close()
        wait_for(lambda: len(live.gateway.connections) == 1, "the timed-out socket to be forgotten")
        time.sleep(0.5)
        connected.send(frame(request("health", frame_id="still")))
        assert connected.response()["id"] == "still"  # a connected socket is not timed out
    finally:
        idle.close()
        connected.close()


@WIRE
def test_sockets_that_have_not_connected_hold_at_most_half_the_slots(start_gateway: Any) -> None:
    live = start_gateway(max_connections=4)
    waiting = [RawClient(live), RawClient(live)]
    try:
        with pytest.raises(AssertionError, match="503"):
            RawClient(live)
        waiting[0].connect()  # one of them authenticates: a slot for a new socket opens
        newcomer = RawClient(live)
        newcomer.connect()
        newcomer.close()
    finally:
        for client in waiting:
            client.close()


@WIRE
def test_a_client_that_stops_reading_is_closed_before_it_costs_more_than_its_budget(start_gateway: Any) -> None:
    budget = 256 * 1024
    live = start_gateway(max_buffered_bytes=budget, auth=TOKEN_AUTH)
    for index in range(60):
        live.ok("launchRun", {"workflow": "hello", "runId": f"r{index}", "input": {"pad": "x" * 2000}}, token=OPERATOR)
    client = RawClient(live)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(OPERATOR)
    request_bytes = frame(request("listRuns", {"limit": 100}, "big"))
    closed = False
    try:
        for _ in range(20_000):  # each answer is ~150 KB; nothing is read
            client.sock.sendall(request_bytes)
            if metric(live, "smithers_gateway_ws_slow_consumer_closes_total") >= 1:
                closed = True
                break
    except OSError:
        closed = True
    finally:
        client.close()
    assert closed
    wait_for(lambda: metric(live, "smithers_gateway_ws_slow_consumer_closes_total") == 1, "the slow-consumer close")
    wait_for(lambda: len(live.gateway.connections) == 0, "the connection to be forgotten")
    assert httpx.get(f"{live.url}/health").status_code == 200


def test_the_hello_snapshot_fits_a_client_frame_limit(start_gateway: Any) -> None:
    live = start_gateway(auth=TOKEN_AUTH)
    store = live.gateway.store
    title = "t" * 2000
    base = now_ms()
    with store.write() as tx:
        for index in range(700):
            run_id = f"wait-{index:04d}"
            tx.insert_run(
                run_id=run_id,
                workflow_name="gate",
                status=WAITING_APPROVAL,
                created_at_ms=base + index,
                config_json=dumps({"workflowKey": "gate", "pad": "p" * 500}),
            )
            tx.insert_approval(
                run_id=run_id,
                node_id="ok",
                iteration=0,
                status="requested",
                requested_at_ms=base + index,
                request_json=dumps({"title": title}),
                auto_approved=0,
            )
            tx.insert_nodes([waiting_node(run_id, "ok")])
    client = RawClient(live)
    try:
        params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "raw"}, "auth": {"token": OPERATOR}}
        client.send(frame(request("connect", params, "c")))
        _, payload = client.read_frame()
        assert len(payload) <= 1024 * 1024
        hello = json.loads(payload)
        snapshot = hello["payload"]["snapshot"]
        assert snapshot["truncated"] is True
        runs, approvals = snapshot["runs"], snapshot["approvals"]
        assert 0 < len(runs) < 700 and 0 < len(approvals) < 700
        assert [r["runId"] for r in runs] == [f"wait-{i:04d}" for i in range(699, 699 - len(runs), -1)]  # newest
        newest = [f"wait-{i:04d}" for i in range(700 - len(approvals), 700)]
        assert [a["runId"] for a in approvals] == newest  # the newest, oldest first as usual
    finally:
        client.close()
    small = start_gateway(auth=TOKEN_AUTH)
    assert "truncated" not in small.ws(connect_now=True, token=OPERATOR).hello["payload"]["snapshot"]
