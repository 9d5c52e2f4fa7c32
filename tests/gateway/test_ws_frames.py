"""WebSocket framing on the wire, with a raw socket: frames split across reads, batched in one read,
fragmented, interleaved with pings, binary, oversized and malformed. The gateway parses common
frames itself and leaves the rest to the websockets library; either way a client must see the
same answers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

import pytest

from tests.gateway.support import Live

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x11\x22\x33\x44"


def frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + body


def request(method: str, params: Any = None, frame_id: str = "r1") -> bytes:
    body: dict[str, Any] = {"type": "req", "id": frame_id, "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


class RawClient:
    """A WebSocket client on a plain socket: exact control over the bytes and their timing."""

    def __init__(self, live: Live):
        host, port = live.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sock.sendall(handshake)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        status, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert status.startswith(b"HTTP/1.1 101"), status
        self.challenge = self.read_message()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the gateway")
        return data

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self.buf += self._recv()

    def read_frame(self) -> tuple[int, bytes]:
        self._need(2)
        first, second = self.buf[0], self.buf[1]
        assert not second & 0x80, "server frames are not masked"
        size, head = second & 0x7F, 2
        if size == 126:
            self._need(4)
            size, head = struct.unpack("!H", self.buf[2:4])[0], 4
        elif size == 127:
            self._need(10)
            size, head = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(head + size)
        payload, self.buf = self.buf[head : head + size], self.buf[head + size :]
        assert first & 0x80, "the gateway sends whole messages"
        return first & 0x0F, payload

    def read_message(self) -> dict[str, Any]:
        opcode, payload = self.read_frame()
        assert opcode == OP_TEXT, (opcode, payload)
        value: dict[str, Any] = json.loads(payload)
        return value

    def response(self) -> dict[str, Any]:
        while True:
            message = self.read_message()
            if message["type"] == "res":
                return message

    def close_code(self) -> int:
        """Read until the gateway's close frame; its status code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self) -> None:
        params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "raw"}}
        self.send(frame(request("connect", params, "c")))
        hello = self.response()
        assert hello["ok"] is True and hello["id"] == "c", hello

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(live: Live) -> Any:
    client = RawClient(live)
    client.connect()
    yield client
    client.close()


def test_a_frame_split_at_every_byte(raw: RawClient) -> None:
    data = frame(request("health", frame_id="slow"))
    for index in range(len(data)):
        raw.send(data[index : index + 1])
        time.sleep(0.002)
    answer = raw.response()
    assert answer["id"] == "slow" and answer["ok"] is True and answer["payload"]["protocol"] == 1


def test_many_frames_in_one_write_are_answered_in_order(raw: RawClient) -> None:
    raw.send(b"".join(frame(request("health", frame_id=f"h{i}")) for i in range(200)))
    assert [raw.response()["id"] for _ in range(200)] == [f"h{i}" for i in range(200)]


def test_a_frame_split_across_writes_after_whole_ones(raw: RawClient) -> None:
    first, second = frame(request("health", frame_id="a")), frame(request("health", frame_id="b"))
    raw.send(first + second[:5])
    time.sleep(0.05)
    raw.send(second[5:])
    assert [raw.response()["id"], raw.response()["id"]] == ["a", "b"]


def test_fragmented_message_with_a_ping_in_between(raw: RawClient) -> None:
    data = request("health", frame_id="frag")
    parts = [data[:10], data[10:30], data[30:]]
    raw.send(frame(parts[0], OP_TEXT, fin=False))
    raw.send(frame(parts[1], OP_CONT, fin=False) + frame(b"are you there", OP_PING))
    opcode, payload = raw.read_frame()
    assert (opcode, payload) == (OP_PONG, b"are you there")
    raw.send(frame(parts[2], OP_CONT))
    answer = raw.response()
    assert answer["id"] == "frag" and answer["ok"] is True


def test_binary_frames_carry_requests_too(raw: RawClient) -> None:
    raw.send(frame(request("health", frame_id="bin"), OP_BINARY))
    assert raw.response()["id"] == "bin"


def test_sixteen_and_sixty_four_bit_lengths(raw: RawClient) -> None:
    for size in (200, 70_000):
        raw.send(frame(request("launchRun", {"workflow": "hello", "input": {"pad": "x" * 8000, "n": size}}, "big")))
        answer = raw.response()
        assert answer["ok"] is True, answer
        padding = [{"k": "y" * 300} for _ in range(size // 400)]  # deep enough arrays stay under the bounds
        raw.send(frame(json.dumps({"type": "req", "id": "p", "method": "health", "params": {"pad": padding}}).encode()))
        assert raw.response()["ok"] is True


def test_invalid_utf8_closes_with_1007(raw: RawClient) -> None:
    raw.send(frame(b'{"type":"req","id":"x","method":"health","params":"\xff\xfe"}'))
    assert raw.close_code() == 1007


def test_an_unmasked_client_frame_closes_with_1002(raw: RawClient) -> None:
    raw.send(frame(request("health"), masked=False))
    assert raw.close_code() == 1002


def test_reserved_bits_close_with_1002(raw: RawClient) -> None:
    raw.send(frame(request("health"), rsv=0x40))
    assert raw.close_code() == 1002


def test_a_frame_over_the_size_limit_closes_with_1009(raw: RawClient) -> None:
    head = struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, 2 * 1024 * 1024)
    raw.send(head + MASK + b"x" * 1000)
    assert raw.close_code() == 1009


def test_client_close_is_answered(raw: RawClient) -> None:
    raw.send(frame(struct.pack("!H", 1000) + b"bye", OP_CLOSE))
    assert raw.close_code() == 1000
