"""A minimal pipelined WebSocket client for load: frames are masked with a zero key and responses
are only counted, so the client spends little CPU and the gateway is what is measured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from typing import Any


def client_frame(text: bytes) -> bytes:
    """A masked text frame (the all-zero mask leaves the payload as it is)."""
    size = len(text)
    if size < 126:
        head = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, size)
    return head + b"\0\0\0\0" + text


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return await reader.readexactly(size)


async def open_client(host: str, port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade, read the challenge, connect with ``token``."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await read_frame(reader)
    params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "load"}, "auth": {"token": token}}
    writer.write(client_frame(json.dumps({"type": "req", "id": "c", "method": "connect", "params": params}).encode()))
    hello = json.loads(await read_frame(reader))
    assert hello.get("ok"), hello
    return reader, writer


async def rpc_rate(
    host: str, port: int, token: str, method: str, params: Any, *, connections: int, depth: int, seconds: float
) -> float:
    """Requests answered per second with ``connections`` sockets keeping ``depth`` requests in flight."""
    message = client_frame(json.dumps({"type": "req", "id": "x", "method": method, "params": params}).encode())

    async def one() -> int:
        reader, writer = await open_client(host, port, token)
        answered = 0
        end = time.perf_counter() + seconds
        writer.write(message * depth)
        while time.perf_counter() < end:
            frame = await read_frame(reader)
            if answered == 0:
                assert b'"ok":true' in frame, frame
            answered += 1
            writer.write(message)
        for _ in range(depth):
            await read_frame(reader)
        writer.close()
        return answered

    started = time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(connections)))
    return sum(counts) / (time.perf_counter() - started)
