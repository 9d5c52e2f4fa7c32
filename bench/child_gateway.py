"""A gateway in a child process on 127.0.0.1, for the gateway benchmarks (the client load stays in the parent)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    base: str
    ws_url: str
    db: str
    pid: int


@asynccontextmanager
async def child_gateway(script: str, prefix: str) -> AsyncIterator[Child]:
    """Run ``script --serve PORT --db PATH`` (a fresh database) until it answers /health."""
    port = free_port()
    db = str(Path(tempfile.mkdtemp(prefix=prefix)) / "gateway.db")
    proc = subprocess.Popen([sys.executable, script, "--serve", str(port), "--db", db], stderr=subprocess.DEVNULL)
    base = f"http://{HOST}:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(400):
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield Child(base, f"ws://{HOST}:{port}/", db, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
