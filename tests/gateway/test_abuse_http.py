"""Hostile HTTP clients: the gateway stays up, answers with the spec's codes, and changes no run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smithers.errors import ALL_CODES, http_status_for
from smithers.gateway.tokens import issue_token, revoke_token
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import Live, wait_for

WIRE = pytest.mark.sqlite_only(reason="HTTP framing and pipelining: answered by the transport, apart from the store")

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MUTATING = {"runs.create", "launchRun", "resumeRun", "runs.cancel", "cancelRun", "runs.rerun"}
JWT_SECRET = "jwt-secret-for-the-abuse-tests-0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
method_names = st.one_of(
    st.from_regex(r"[a-z][a-zA-Z0-9]{0,10}(\.[a-z][a-zA-Z0-9]{0,8}){0,2}", fullmatch=True),
    st.text(max_size=70),
    st.sampled_from(["health", "getRun", "runs.get", "listRuns", "streamRunEvents", "connect", "hijackRun"]),
)


def fingerprint(live: Live) -> list[tuple[Any, ...]]:
    """Everything about the stored runs that a request could change."""
    with live.gateway.store.read() as tx:
        runs = tx.list_runs(1000)
        return [
            (
                r["run_id"],
                r["status"],
                r["finished_at_ms"],
                r["error_json"],
                tuple(sorted(tx.count_nodes_by_state(r["run_id"]).items())),
            )
            for r in runs
        ]


@pytest.fixture
def seeded(live: Live) -> Live:
    run_id = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(run_id, {"waiting-approval"})
    done = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(done, {"finished"})
    time.sleep(0.05)
    live.before = fingerprint(live)
    return live


def check_answer(response: Any) -> dict[str, Any]:
    assert response.headers["x-smithers-api-version"] == "v1"
    body = response.json()
    if response.status_code == 404 and "type" not in body:
        assert body == {"error": {"code": "NOT_FOUND", "message": "Route not found"}}
        return dict(body)
    if body.get("ok") is True:
        assert response.status_code == 200
        return dict(body)
    code = body["error"]["code"]
    assert code in ALL_CODES, code
    assert code != "SERVER_ERROR", body
    assert response.status_code == http_status_for(code)
    return dict(body)


def still_healthy(live: Live) -> None:
    assert live.http.get("/health").status_code == 200
    assert fingerprint(live) == live.before


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(seeded: Live, body: bytes) -> None:
    for path in ("/rpc", "/v1/rpc/getRun"):
        check_answer(seeded.http.post(path, content=body))
    still_healthy(seeded)


@FUZZ
@given(body=json_values)
def test_random_json_bodies(seeded: Live, body: Any) -> None:
    if isinstance(body, dict):
        assume(body.get("method") not in MUTATING)
    check_answer(seeded.http.post("/rpc", content=json.dumps(body)))
    check_answer(seeded.http.post("/v1/rpc/getRun", content=json.dumps(body)))
    still_healthy(seeded)


@FUZZ
@given(method=method_names, params=json_values)
def test_unknown_methods_and_wrong_types(seeded: Live, method: Any, params: Any) -> None:
    assume(method not in MUTATING)
    body = check_answer(seeded.http.post("/rpc", content=json.dumps({"method": method, "params": params})))
    if body.get("ok") is False and body["error"]["code"] == "METHOD_NOT_FOUND":
        assert body["error"]["message"] == f"Unknown method: {method}"
    still_healthy(seeded)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=31, max_value=3000), kind=st.sampled_from(["[", "{"]))
def test_deep_payloads(seeded: Live, depth: int, kind: str) -> None:
    inner = "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + "}" * depth
    response = seeded.http.post("/rpc", content=f'{{"method":"health","params":{inner}}}')
    body = check_answer(response)
    if depth >= 32:
        assert body["error"]["message"] == "gateway frame exceeds the maximum JSON depth of 32."
    still_healthy(seeded)


def test_huge_payloads(seeded: Live) -> None:
    cases = [
        {"method": "health", "params": {"s": "x" * 16385}},
        {"method": "health", "params": {"a": list(range(257))}},
        {"method": "health", "params": {"s": "😀" * 8193}},
    ]
    for body in cases:
        response = seeded.http.post("/rpc", json=body)
        assert response.status_code == 400 and check_answer(response)["error"]["code"] == "INVALID_INPUT"
    over = seeded.http.post("/rpc", content=b'{"method":"health","p":"' + b"x" * 1_100_000 + b'"}')
    assert over.status_code == 413 and check_answer(over)["error"]["code"] == "PayloadTooLarge"
    still_healthy(seeded)


@FUZZ
@given(token=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60))
def test_forged_tokens(token_live: Live, token: str) -> None:
    if not hasattr(token_live, "before"):
        token_live.before = fingerprint(token_live)
    assume(token not in ("operator-token", "reader-token"))
    response = token_live.http.post(
        "/v1/rpc/launchRun", json={"workflow": "hello"}, headers={"authorization": f"Bearer {token}"}
    )
    body = check_answer(response)
    assert response.status_code == 401 and body["error"]["code"] == "UNAUTHORIZED"
    still_healthy(token_live)


def test_expired_and_revoked_stored_tokens(token_live: Live) -> None:
    token_live.before = fingerprint(token_live)
    store = token_live.gateway.store
    expired = issue_token(store, scopes=["*"], expires_at_ms=1)
    revoked = issue_token(store, scopes=["*"])
    revoke_token(store, revoked.token_id)
    for issued, message in ((expired, "Token expired; issue a refreshed token."), (revoked, "Token has been revoked")):
        response = token_live.http.post(
            "/v1/rpc/launchRun", json={"workflow": "hello"}, headers={"authorization": f"Bearer {issued.token}"}
        )
        assert response.status_code == 401
        assert check_answer(response)["error"] == {
            "version": "v1",
            "code": "UNAUTHORIZED",
            "message": message,
            "refresh": "smithers token issue",
        }
    still_healthy(token_live)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(header: dict[str, Any], claims: dict[str, Any], secret: str, digest: Any = hashlib.sha256) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(hmac.new(secret.encode(), signing.encode(), digest).digest())}"


@FUZZ
@given(
    secret=st.text(min_size=1, max_size=40).filter(lambda s: s != JWT_SECRET),
    alg=st.sampled_from(["HS256", "HS512", "none", "RS256", "hs256"]),
    claims=st.fixed_dictionaries({"iss": st.just("iss"), "aud": st.just("aud"), "exp": st.integers(0, 2**40)}),
)
def test_jwts_with_wrong_key_or_alg(start_gateway: Any, secret: str, alg: str, claims: dict[str, Any]) -> None:
    global _jwt_live
    if _jwt_live is None or not _jwt_live.thread.is_alive():
        _jwt_live = start_gateway(
            auth={
                "mode": "jwt",
                "issuer": "iss",
                "audience": "aud",
                "secret": JWT_SECRET,
                "defaultScopes": ["run:read"],
            }
        )
        _jwt_live.before = fingerprint(_jwt_live)
    live = _jwt_live
    digest = hashlib.sha512 if alg == "HS512" else hashlib.sha256
    token = mint({"alg": alg, "typ": "JWT"}, claims, secret, digest)
    response = live.http.post("/v1/rpc/listRuns", json={}, headers={"authorization": f"Bearer {token}"})
    body = check_answer(response)
    assert response.status_code == 401
    expected = "JWT signature verification failed" if alg == "HS256" else "Unsupported JWT algorithm"
    assert body["error"]["message"] == expected
    good = mint({"alg": "HS256"}, {**claims, "exp": int(time.time()) + 600}, JWT_SECRET)
    assert live.http.post("/v1/rpc/listRuns", json={}, headers={"authorization": f"Bearer {good}"}).status_code == 200
    still_healthy(live)


_jwt_live: Any = None


@pytest.fixture(autouse=True)
def _reset_jwt_live() -> Any:
    global _jwt_live
    _jwt_live = None
    yield
    _jwt_live = None


@WIRE
def test_slow_headers_are_cut_off(start_gateway: Any) -> None:
    live = start_gateway(headers_timeout=300)
    with socket.create_connection(("127.0.0.1", live.gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    assert 0.2 < elapsed < 5
    with socket.create_connection(("127.0.0.1", live.gateway.port), timeout=10) as idle:
        assert idle.recv(1024).startswith(b"HTTP/1.1 408")  # a silent client too
    assert live.http.get("/health").status_code == 200


def _read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` HTTP responses (each with a Content-Length) off ``sock``, in order."""
    buffer, answers = b"", []
    try:
        return _read_into(sock, count, buffer, answers)
    except ConnectionResetError:
        return answers


def _read_into(sock: socket.socket, count: int, buffer: bytes, answers: list[bytes]) -> list[bytes]:
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return answers
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(rest) < length:
            rest += sock.recv(65536)
        answers.append(head.split(b"\r\n")[0])
        buffer = rest[length:]
    return answers


@WIRE
def test_pipelined_requests_are_answered_in_order_and_a_flood_of_them_is_dropped(live: Live) -> None:
    """Up to 32 requests may be sent ahead of their answers; a client that sends far more without
    reading is disconnected instead of having its requests queued without end (see
    tests/gateway/test_memory_bounds.py for what that cost)."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live.gateway.port), timeout=10) as sock:
        sock.sendall(request * 20)
        assert _read_answers(sock, 20) == [b"HTTP/1.1 200 OK"] * 20
        sock.sendall(request)  # the connection is still good
        assert _read_answers(sock, 1) == [b"HTTP/1.1 200 OK"]
    with socket.create_connection(("127.0.0.1", live.gateway.port), timeout=10) as flood:
        flood.sendall(request * 2000)  # one write, far more than 32 ahead
        answers = _read_answers(flood, 2000)
    assert len(answers) < 2000  # dropped part way
    assert live.http.get("/health").status_code == 200


SERVE_UVLOOP = (
    "import sys; from smithers.gateway.server import Gateway; from smithers.cli.gateway_cmds import event_loop_runner; "
    "event_loop_runner()(Gateway(sys.argv[1]).serve('127.0.0.1', 0))"
)


@WIRE
def test_a_pipelining_client_that_leaves_unread_causes_no_error(tmp_path: Path, databases: Databases) -> None:
    """The request being answered when the client goes (an older one than the newest it sent) is
    told the client left, so its answer is not written to a closed connection (under uvloop, as
    ``smithers serve`` runs, that write raised and logged a traceback)."""
    db = databases.new()
    store = Store(db)
    with store.write() as tx:  # listRuns answers of ~150 KB that a 4 KiB window cannot take
        for index in range(60):
            tx.insert_run(
                run_id=f"pad-{index}",
                workflow_name="hello",
                status="finished",
                created_at_ms=index,
                config_json=json.dumps({"pad": "x" * 2000}),
            )
    store.close()
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        server = subprocess.Popen([sys.executable, "-c", SERVE_UVLOOP, db], stderr=err)
    try:
        port = int(wait_for(lambda: re.search(r"127\.0\.0\.1:(\d+)", log.read_text()), "the gateway").group(1))
        body = json.dumps({"method": "listRuns", "params": {"limit": 100}}).encode()
        head = f"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall((head.encode() + body) * 30)
        time.sleep(1)
        sock.close()
        time.sleep(1)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()
