"""HTTP transport: routes, headers, RPC envelopes, limits, percent-encoding (D7)."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.gateway.support import Live

pytestmark = pytest.mark.sqlite_only(reason="HTTP routes, headers and envelopes: answered apart from the store")

OPERATOR_TOKEN = "operator-token"
READER_TOKEN = "reader-token"

COMMON = {"cache-control": "no-store", "x-content-type-options": "nosniff", "x-smithers-api-version": "v1"}


def assert_common(response: httpx.Response) -> None:
    for name, value in COMMON.items():
        assert response.headers[name] == value


def raw_http(live: Live, request: bytes) -> bytes:
    port = live.gateway.port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = [int(v.split(b":")[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length")]
                if length and len(body) >= length[0]:
                    break
        return b"".join(chunks)


def test_health_exact_payload_and_headers(live: Live) -> None:
    response = live.http.get("/health")
    assert response.status_code == 200
    assert response.text == '{"ok":true,"protocol":1,"features":["streaming","runs"],"stateVersion":0}'
    assert response.headers["content-type"] == "application/json"
    assert_common(response)


def test_health_and_rpc_match_the_raw_url_only(live: Live) -> None:
    assert live.http.get("/health?x=1").status_code == 404
    assert live.http.head("/health").status_code == 404
    assert live.http.post("/rpc?x=1", json={"method": "health"}).status_code == 404
    assert live.http.post("/rpc/", json={"method": "health"}).status_code == 404
    assert live.http.request("OPTIONS", "/rpc").status_code == 404


def test_fallback_404_shape(live: Live) -> None:
    response = live.http.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "NOT_FOUND", "message": "Route not found"}}
    assert_common(response)


def test_metrics_endpoint(live: Live) -> None:
    live.ok("health")
    response = live.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'smithers_gateway_rpc_calls_total{method="health",transport="http"} 1.0' in response.text
    assert_common(response)


def test_rpc_response_envelope(live: Live) -> None:
    response = live.http.post("/rpc", json={"id": "abc", "method": "health"})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["type", "id", "ok", "apiVersion", "payload"]
    assert body["id"] == "abc" and body["ok"] is True and body["apiVersion"] == "v1"
    assert set(body["payload"]) == {"protocol", "features", "stateVersion", "uptimeMs"}
    assert_common(response)


def test_request_id_header_and_non_string_ids(live: Live) -> None:
    response = live.http.post("/rpc", json={"id": 7, "method": "health"}, headers={"x-request-id": "req-1"})
    assert response.json()["id"] == "req-1"
    generated = live.http.post("/rpc", json={"method": "health"}).json()["id"]
    assert len(generated) == 36 and generated.count("-") == 4


def test_long_id_is_refused_with_the_request_id(live: Live) -> None:
    response = live.http.post("/rpc", json={"id": "x" * 129, "method": "health"}, headers={"x-request-id": "rq"})
    assert response.status_code == 400
    body = response.json()
    assert body["id"] == "rq"
    assert body["error"] == {
        "version": "v1",
        "code": "INVALID_INPUT",
        "message": "id exceeds the maximum length of 128 characters.",
    }


def test_v1_rpc_body_as_params(live: Live) -> None:
    whole = live.http.post("/v1/rpc/launchRun", json={"workflow": "hello", "input": {"name": "a"}})
    assert whole.status_code == 200, whole.text
    assert whole.json()["payload"]["workflow"] == "hello"
    framed = live.http.post(
        "/v1/rpc/launchRun", json={"id": "x", "method": "listRuns", "params": {"workflow": "hello"}}
    )
    assert framed.status_code == 200 and framed.json()["id"] == "x"
    assert framed.json()["payload"]["workflow"] == "hello"  # the path method wins
    empty = live.http.post("/v1/rpc/health", content=b"")
    assert empty.status_code == 200 and empty.json()["ok"] is True
    with_query = live.http.post("/v1/rpc/health?x=1", json={})
    assert with_query.status_code == 200


def test_v1_rpc_percent_decoded_method_and_malformed_encoding(live: Live) -> None:
    assert live.http.post("/v1/rpc/%68ealth", json={}).status_code == 200
    for bad in ("/v1/rpc/%ZZ", "/v1/rpc/abc%", "/v1/rpc/%C3%28"):
        response = live.http.post(bad, json={})
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "INVALID_REQUEST"
        assert_common(response)


def test_body_validation_errors(live: Live) -> None:
    cases: list[tuple[bytes, int, str, str]] = [
        (b"{nope", 400, "INVALID_INPUT", "Gateway RPC payload must be valid JSON."),
        (b'{"method":"health","x":NaN}', 400, "INVALID_INPUT", "Gateway RPC payload must be valid JSON."),
        (b"[1,2]", 400, "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"null", 400, "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"{}", 400, "INVALID_INPUT", "Gateway method name must be a string."),
        (b'{"method":"Bad-Name"}', 400, "INVALID_INPUT", "Gateway method name is invalid."),
        (b'{"method":"health","p":1e999}', 400, "INVALID_INPUT", "gateway frame must contain only finite numbers."),
    ]
    for raw, status, code, message in cases:
        response = live.http.post("/rpc", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == status, raw
        assert response.json()["error"]["code"] == code, raw
        assert response.json()["error"]["message"] == message, raw


def test_unknown_method_and_transport_only_methods(live: Live) -> None:
    unknown = live.rpc("nope.nothing")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "version": "v1",
        "code": "METHOD_NOT_FOUND",
        "message": "Unknown method: nope.nothing",
    }
    connect = live.rpc("connect", {})
    assert connect.status_code == 404 and connect.json()["error"]["code"] == "METHOD_NOT_FOUND"
    stream = live.rpc("streamRunEvents", {"runId": "x"})
    assert stream.status_code == 400
    assert stream.json()["error"]["message"] == "streamRunEvents is only supported over websocket connections"


def test_payload_too_large(start_gateway: Any) -> None:
    live = start_gateway(max_body_bytes=64)
    big = {"method": "health", "params": {"pad": "x" * 100}}
    response = live.http.post("/rpc", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "version": "v1",
        "code": "PayloadTooLarge",
        "message": "Gateway request payload exceeds 64 bytes.",
    }

    def chunks() -> Any:
        yield json.dumps(big).encode()

    streamed = live.http.post("/rpc", content=chunks())  # chunked: no Content-Length
    assert streamed.status_code == 413
    assert live.http.get("/health").status_code == 200


def test_forbidden_conformance_vector(start_gateway: Any) -> None:
    live = start_gateway(auth={"mode": "token", "tokens": {READER_TOKEN: {"role": "viewer", "scopes": ["run:read"]}}})
    response = live.http.post(
        "/v1/rpc/launchRun", json={"workflow": "hello"}, headers={"authorization": f"Bearer {READER_TOKEN}"}
    )
    assert response.status_code == 403
    assert response.headers["x-smithers-api-version"] == "v1"
    assert response.json()["error"] == {
        "version": "v1",
        "code": "FORBIDDEN",
        "message": "Missing required scope run:write for launchRun",
        "requiredScope": "run:write",
    }


def test_expired_token_conformance_vector(token_live: Live) -> None:
    response = token_live.http.post("/v1/rpc/listRuns", json={}, headers={"authorization": "Bearer expired-token"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"
    assert response.json()["error"]["refresh"] == "smithers token issue"


def test_token_sources(token_live: Live) -> None:
    for headers in (
        {"authorization": f"bearer {OPERATOR_TOKEN}"},
        {"authorization": f"BEARER {OPERATOR_TOKEN}"},
        {"authorization": OPERATOR_TOKEN},
        {"x-smithers-key": OPERATOR_TOKEN, "authorization": "Bearer wrong"},
    ):
        assert token_live.http.post("/rpc", json={"method": "health"}, headers=headers).status_code == 200, headers
    missing = token_live.http.post("/rpc", json={"method": "health"}, headers={"x-request-id": "q"})
    assert missing.status_code == 401
    assert missing.json() == {
        "type": "res",
        "id": "q",
        "ok": False,
        "apiVersion": "v1",
        "error": {"version": "v1", "code": "UNAUTHORIZED", "message": "A bearer token is required"},
    }
    assert token_live.http.post("/rpc", content=b"{bad", headers={"authorization": "Bearer nope"}).status_code == 401


def test_request_timeout_answers_408(start_gateway: Any) -> None:
    live = start_gateway(request_timeout=300)
    head = b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    answer = raw_http(live, head)
    assert answer.startswith(b"HTTP/1.1 408")
    assert live.http.get("/health").status_code == 200
