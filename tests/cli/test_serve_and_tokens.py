"""`smithers serve` and `smithers token issue|list|revoke` against a real gateway process."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SMITHERS = str(Path(sys.executable).parent / "smithers")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SMITHERS, *args, "--db", str(db)], capture_output=True, text=True, timeout=60)


def wait_health(url: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start")


def rpc(url: str, token: str, method: str, params: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}/v1/rpc/{method}", json=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_serve_example_gateway_with_issued_and_revoked_tokens(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    issued = cli(
        "token",
        "issue",
        "--role",
        "operator",
        "--scope",
        "run:read",
        "--scope",
        "run:write",
        "--user",
        "ops",
        "--ttl",
        "1h",
        db=db,
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert token.startswith("smt_") and "shown only once" in issued.stderr
    listed = json.loads(cli("token", "list", "--json", db=db).stdout)
    assert [t["userId"] for t in listed] == ["ops"] and "tokenHash" not in listed[0]
    assert token not in db.read_bytes().decode("latin-1")  # only the hash is stored

    port = free_port()
    env = {**os.environ, "SMITHERS_TOKEN": "admin-secret"}
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [SMITHERS, "serve", str(ROOT / "examples" / "gateway.py"), "--port", str(port), "--db", str(db)],
            stderr=err,
            text=True,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc, log)
        launched = rpc(url, token, "launchRun", {"workflow": "hello", "input": {"name": "ada"}})
        assert launched.status_code == 200, launched.text
        run_id = launched.json()["payload"]["runId"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            run = rpc(url, token, "getRun", {"runId": run_id}).json()["payload"]
            if run["status"] == "finished":
                break
            time.sleep(0.1)
        assert run["status"] == "finished"
        assert json.loads(run["configJson"])["auth"]["triggeredBy"] == "ops"
        forbidden = rpc(url, token, "cronList", {})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "FORBIDDEN"
        assert rpc(url, "admin-secret", "cronList", {}).json()["payload"][0]["cronId"] == "gateway:pipeline"

        revoked = cli("token", "revoke", listed[0]["tokenId"], db=db)
        assert revoked.returncode == 0, revoked.stderr
        refused = rpc(url, token, "listRuns", {})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()
    assert f"listening on {url}" in log.read_text()


def test_the_example_gateway_has_no_published_webhook_secret(tmp_path: Path) -> None:
    """Without SMITHERS_WEBHOOK_SECRET a fresh secret is made and printed; a post signed with an old default fails."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SMITHERS_WEBHOOK_SECRET", "SMITHERS_TOKEN")}
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                SMITHERS,
                "serve",
                str(ROOT / "examples" / "gateway.py"),
                "--port",
                str(port),
                "--db",
                str(tmp_path / "g.db"),
            ],
            stderr=err,
            text=True,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc, log)
        printed = [line for line in log.read_text().splitlines() if "payment webhook secret" in line]
        assert len(printed) == 1
        secret = printed[0].rsplit(": ", 1)[1]
        assert len(secret) >= 24 and secret != "change-me"
        body = b'{"payment": {"amount": 1}}'
        for guess, status in (("change-me", 401), (secret, 200)):
            signature = "sha256=" + hmac.new(guess.encode(), body, hashlib.sha256).hexdigest()
            answer = httpx.post(f"{url}/webhooks/payment", content=body, headers={"x-hub-signature-256": signature})
            assert answer.status_code == status, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_token_issue_rejects_bad_arguments(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    no_scope = cli("token", "issue", db=db)
    assert no_scope.returncode == 4 and no_scope.stderr.strip().startswith("error:")
    bad_ttl = cli("token", "issue", "--scope", "*", "--ttl", "soon", db=db)
    assert bad_ttl.returncode == 4 and "invalid duration" in bad_ttl.stderr
    assert cli("token", "revoke", "nope", db=db).returncode == 4


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [
                SMITHERS,
                "serve",
                str(ROOT / "examples" / "hello.py"),
                "--port",
                str(port),
                "--db",
                str(tmp_path / "x.db"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 4 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
