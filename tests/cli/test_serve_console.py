"""`smithers serve --console`: the built-in console mounted at /console, and its URL printed at start."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from smithers.gateway.options import CONSOLE_DIR_ENV
from tests.cli.test_serve_and_tokens import ROOT, SMITHERS, free_port, wait_health


def serve(target: str, tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Serve ``target`` with ``extra`` arguments; return its URL and what it printed once up."""
    console = tmp_path / "console"
    console.mkdir()
    (console / "app.js").write_text("export const console_ = true;\n")
    port = free_port()
    env = {**os.environ, CONSOLE_DIR_ENV: str(console), "SMITHERS_TOKEN": "console-token"}
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [SMITHERS, "serve", target, "--port", str(port), "--db", str(tmp_path / "c.db"), *extra],
            stderr=err,
            text=True,
            env=env,
        )
    try:
        wait_health(url, proc, log)
        page = httpx.get(f"{url}/console/runs/abc", timeout=10)
        client = httpx.get(f"{url}/console/__smithers_ui/client.js", timeout=10)
        statuses = (page.status_code, client.status_code, httpx.get(f"{url}/", timeout=10).status_code)
        if extra:
            assert statuses == (200, 200, 404)
            assert "<title>Smithers console</title>" in page.text
            assert client.content == (console / "app.js").read_bytes()
        else:
            assert statuses == (404, 404, 404)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, log.read_text()
    return url, log.read_text()


@pytest.mark.parametrize("target", ["gateway.py", "hello.py"])
def test_serve_console_mounts_it_and_prints_its_url(target: str, tmp_path: Path) -> None:
    """A module's own Gateway (gateway.py) or one built from its @workflows (hello.py)."""
    url, printed = serve(str(ROOT / "examples" / target), tmp_path, "--console")
    assert f"listening on {url}" in printed
    assert f"smithers console: open {url}/console\n" in printed


def test_serve_without_console_mounts_none(tmp_path: Path) -> None:
    _, printed = serve(str(ROOT / "examples" / "hello.py"), tmp_path)
    assert "smithers console" not in printed
