"""The WebSocket protocol the gateway runs under uvicorn: uvicorn's sans-I/O implementation (the
``websockets`` library's parser), with a direct path for messages once a socket is accepted.

Through plain ASGI every message goes through a queue, a read pause and an awaited ``send``; and
the ``websockets`` parser, a generator per frame, costs about 10 µs a frame. Together that is most
of the cost of a cheap RPC. An accepted socket whose application calls
:meth:`GatewayWebSocketProtocol.attach` gets its messages handed to a callback as they arrive, and
writes frames with :meth:`GatewayWebSocketProtocol.write_texts`, several per system call.

On the direct path the common frame (final, unfragmented, masked text or binary, within the size
limit) is parsed here; every other frame (ping, pong, close, fragments, oversized or malformed
ones) is handed whole to the ``websockets`` parser, which therefore always sees the stream at a
frame boundary and answers it exactly as before. The handshake, close and ASGI ``receive`` for the
disconnect stay as uvicorn does them.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.speedups import apply_mask

SCOPE_EXTENSION: Final = "smithers.direct"
"""The scope extension under which the protocol offers itself to the application."""
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
FRAME_TRACK_LIMIT: Final = 1024
"""Frames waiting in the transport that are counted one by one; beyond, the count stays at this."""
_FIN: Final = 0x80
_MASKED: Final = 0x80

MessageSink = Callable[[str | bytes], None]
LostHook = Callable[[], None]
BacklogHook = Callable[[int], None]


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked server text frame."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN | OP_TEXT, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", _FIN | OP_TEXT, 126, size) + payload
    return struct.pack("!BBQ", _FIN | OP_TEXT, 127, size) + payload


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol plus a direct message path for the gateway's connections."""

    sink: MessageSink | None = None
    on_lost: LostHook | None = None
    on_backlog: BacklogHook | None = None
    _direct = False  # frames are parsed here (see data_received)
    _partial: bytearray | None = None  # the start of a frame whose rest has not arrived
    _written = 0  # bytes handed to the transport by write_texts, ever
    _frame_ends: deque[int] | None = None  # where each frame still in the transport ends (see unsent_frames)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and getattr(self, "scope", None) is not None:
            self.scope["extensions"][SCOPE_EXTENSION] = {"protocol": self}  # type: ignore[index]

    def attach(self, sink: MessageSink, on_lost: LostHook, on_backlog: BacklogHook | None = None) -> None:
        """From now on, deliver each complete message to ``sink``; call ``on_lost`` when the socket goes,
        and ``on_backlog`` with the bytes the peer has not taken whenever a frame the library answers
        itself (a pong) has added to them: a client that pings without reading is a slow consumer too.

        The application may then return: the connection lives on in this protocol (an idle socket
        keeps no task, coroutine frames or ASGI queue entries). Frames are parsed here only if the
        ``websockets`` parser holds nothing yet.
        """
        self.sink = sink
        self.on_lost = on_lost
        self.on_backlog = on_backlog
        conn = self.conn
        self._direct = not conn.reader.buffer and not conn.extensions and conn.state is State.OPEN
        # What uvicorn kept of the handshake is not needed any more.
        self.request = self.response = None  # type: ignore[assignment]

    async def run_asgi(self) -> None:
        """uvicorn's, except that an attached connection stays open when the application returns."""
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
        if self.sink is not None and not self.disconnected:
            self.scope = None  # type: ignore[assignment]
            return
        if self.close_timer is None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        hook, self.on_lost, self.sink, self.on_backlog = self.on_lost, None, None, None
        if hook is not None:
            hook()

    def shut(self, code: int | None = 1000, reason: str = "") -> None:
        """Send a close frame (``None``: without a status code) and close once the peer answers."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    # -- receiving -------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._direct:
            super().data_received(data)
            self._report_backlog()
            return
        partial = self._partial
        if partial:
            partial.extend(data)
            buf: bytes | bytearray = partial
        else:
            buf = data
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            size = second & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if size > self.config.ws_max_size:
                # The library refuses it (1009) from its header alone.
                self._to_library(buf[pos:])
                return
            frame_end = pos + head + (4 if second & _MASKED else 0) + size
            if frame_end > end:
                break
            opcode = first & 0x0F
            simple = (first & 0xF0) == _FIN and second & _MASKED and opcode in (OP_TEXT, OP_BINARY)
            if not simple or self.conn.current_size is not None:
                # Control frames, fragments (and any frame while a fragmented message is being
                # received), reserved bits, unmasked frames: the library's answer.
                super().data_received(bytes(buf[pos:frame_end]))
                pos = frame_end
                if self.conn.state is not State.OPEN:
                    self._to_library(buf[pos:])
                    return
                self._report_backlog()
                if self.transport.is_closing():
                    return
                continue
            mask = buf[pos + head : pos + head + 4]
            payload = apply_mask(buf[pos + head + 4 : frame_end], mask)
            pos = frame_end
            self._deliver(opcode, payload)
            if not self._direct:
                return
        if pos >= end:
            self._partial = None
        elif buf is partial:
            del partial[:pos]
        else:
            self._partial = bytearray(buf[pos:])

    def _report_backlog(self) -> None:
        hook = self.on_backlog
        if hook is not None and not self.transport.is_closing():
            waiting = self.transport.get_write_buffer_size()
            if waiting:
                hook(waiting)

    def _to_library(self, rest: bytes | bytearray) -> None:
        """Hand the rest of the stream to the ``websockets`` parser for good."""
        self._direct = False
        self._partial = None
        if rest:
            super().data_received(bytes(rest))

    def _deliver(self, opcode: int, payload: bytes) -> None:
        sink = self.sink
        if sink is None or self.close_sent:
            return
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._direct = False
                self.conn.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                self.handle_parser_exception()
                return
            sink(text)
        else:
            sink(payload)

    def send_receive_event_to_app(self) -> None:
        """Messages the library parsed (fragmented ones): to the sink when attached."""
        sink = self.sink
        if sink is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data: Any = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        self._deliver(OP_TEXT if self.curr_msg_data_type == "text" else OP_BINARY, bytes(data))

    # -- sending ---------------------------------------------------------------------------------
    def write_texts(self, texts: Iterable[str]) -> bool:
        """Send text frames in one write; False when the socket is closing or gone."""
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN or self.transport.is_closing():
            return False
        frames = [text_frame(text.encode()) for text in texts]
        data = b"".join(frames)
        self.transport.write(data)
        start, self._written = self._written, self._written + len(data)
        if self._frame_ends is not None or self.transport.get_write_buffer_size():
            ends = self._frame_ends if self._frame_ends is not None else deque(maxlen=FRAME_TRACK_LIMIT)
            for frame in frames:
                start += len(frame)
                ends.append(start)
            self._frame_ends = ends
            self.unsent_frames()
        return True

    def unsent_frames(self) -> int:
        """Frames written that still wait in this process for the socket (at most ``FRAME_TRACK_LIMIT``).

        Nothing is tracked while writes go straight to the kernel, the usual case: the frame ends are
        recorded only once the transport holds bytes back, and forgotten once it has sent them.
        """
        ends = self._frame_ends
        if ends is None:
            return 0
        sent = self._written - int(self.transport.get_write_buffer_size())
        while ends and ends[0] <= sent:
            ends.popleft()
        if not ends:
            self._frame_ends = None
            return 0
        return len(ends)

    def abort(self, code: int, reason: str) -> None:
        """Close at once, dropping what the peer has not read (a client that stopped reading)."""
        if not (self.close_sent or self.disconnected or self.transport.is_closing()):
            try:
                self.conn.send_close(code, reason)
                self.transport.write(b"".join(self.conn.data_to_send()))
            except InvalidState:
                pass
        self.close_sent = True
        self.transport.abort()

    def buffered_bytes(self) -> int:
        """Bytes written to the socket that the peer has not taken yet (in this process)."""
        return int(self.transport.get_write_buffer_size())

    def pause_reading(self) -> None:
        if not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()
