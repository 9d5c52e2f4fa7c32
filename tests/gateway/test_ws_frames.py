"""WebSocket framing on the wire, with a raw socket: frames split across reads, batched in one read,
fragmented, interleaved with pings, binary, oversized and malformed. The gateway parses common
frames itself and leaves the rest to the websockets library; either way a client must see the
same answers.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import pytest

from tests.gateway.support import (
    MASK,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Live,
    RawClient,
    frame,
    request,
)

pytestmark = pytest.mark.sqlite_only(reason="WebSocket framing: answered by the transport, apart from the store")


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


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
def test_a_data_frame_inside_a_fragmented_message_closes_with_1002(raw: RawClient, opcode: int) -> None:
    """RFC 6455 §5.4: a new data frame before the final continuation fails the connection; neither
    message is answered."""
    first, second = request("health", frame_id="a"), request("health", frame_id="b")
    raw.send(frame(first[:10], opcode, fin=False) + frame(second, opcode) + frame(first[10:], OP_CONT))
    assert raw.close_code() == 1002
