"""The WebSocket protocol the gateway runs under uvicorn: uvicorn's sans-I/O implementation (the
``websockets`` library's frame parser), with a direct path for messages once a socket is accepted.

Through plain ASGI every message goes through a queue, a read pause and an awaited ``send``: about
25 µs per request/response pair on this machine, most of the cost of a cheap RPC. An accepted
socket whose application calls :meth:`GatewayWebSocketProtocol.attach` gets its messages handed to
a callback as they are parsed, and writes frames with :meth:`write_texts`, several per system call.
The handshake, close, ping/pong and ASGI ``receive`` for the disconnect stay as uvicorn does them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

SCOPE_EXTENSION: Final = "smithers.direct"
"""The scope extension under which the protocol offers itself to the application."""

MessageSink = Callable[[str | bytes], None]


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol plus a direct message path for the gateway's connections."""

    sink: MessageSink | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and getattr(self, "scope", None) is not None:
            self.scope["extensions"][SCOPE_EXTENSION] = {"protocol": self}  # type: ignore[index]

    def attach(self, sink: MessageSink) -> None:
        """From now on, deliver each complete message to ``sink`` instead of the ASGI queue."""
        self.sink = sink

    def send_receive_event_to_app(self) -> None:
        sink = self.sink
        if sink is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data: Any = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text":
            try:
                data = bytes(data).decode()
            except UnicodeDecodeError:
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            data = bytes(data)
        sink(data)

    def write_texts(self, texts: Iterable[str]) -> bool:
        """Send text frames in one write; False when the socket is closing or gone."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return False
        conn = self.conn
        try:
            for text in texts:
                conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(conn.data_to_send()))
        return True

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
