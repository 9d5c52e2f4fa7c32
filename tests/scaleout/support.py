"""Several ``smithers serve`` processes on one database, driven over HTTP (the scale-out tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_for

SMITHERS = str(Path(sys.executable).parent / "smithers")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """One ``smithers serve FILE --port P --db URL`` process and an HTTP client for it."""

    def __init__(self, target: str, db_url: str, cwd: Path, name: str, *extra: str):
        self.name = name
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "SMITHERS_DB"}
        self.log = (cwd / f"{name}.log").open("w")
        self.proc = subprocess.Popen(
            [SMITHERS, "serve", target, "--port", str(self.port), "--db", db_url, *extra],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        wait_for(self._healthy, f"gateway {name} to listen", timeout=60, interval=0.1)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway {self.name} exited with {self.proc.returncode}")
        try:
            return self.http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.http.post("/rpc", json={"method": method, "params": params or {}})
        assert response.status_code == 200, (method, response.status_code, response.text)
        return response.json()["payload"]

    def kill(self) -> None:
        """SIGKILL: the gateway dies mid-flight, as on a lost machine."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        self.http.close()
        self.log.close()
