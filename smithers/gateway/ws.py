"""WebSocket transport: upgrade, handshake, frames, heartbeats, delivery, close
(docs/protocol.md#websocket-transport).

Each connection writes through an outbox drained by one short-lived task, so frames leave in the
order they were queued and callers never await the socket. Inbound messages are handled
concurrently (as the reference does), at most :data:`MAX_IN_FLIGHT` at a time per connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from smithers.errors import UNAUTHORIZED, GatewayError
from smithers.gateway.auth import Principal, node_headers, peer_address, token_from_connect
from smithers.gateway.context import RunStream
from smithers.gateway.dispatch import TRANSPORT_WS, WS_INVALID_ID, Call, Outcome, outcome_for
from smithers.gateway.host import GatewayHost
from smithers.gateway.jsvalues import encode_json
from smithers.gateway.protocol import (
    API_VERSION,
    API_VERSION_HEADER,
    CONNECT_METHOD,
    MAX_HELLO_BYTES,
    UNAUTHENTICATED_BUFFER_BYTES,
    RequestFrame,
    error_frame,
    event_frame,
    parse_connect_request,
    parse_ws_frame,
    response_frame,
)
from smithers.gateway.shapes import bounded_hello, hello_payload
from smithers.gateway.wsproto import SCOPE_EXTENSION, GatewayWebSocketProtocol
from smithers.store.rows import now_ms

log = logging.getLogger(__name__)

MAX_IN_FLIGHT: Final = 32
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN: Final = 1013
CONNECT_TIMEOUT_REASON: Final = "connect timeout"
SLOW_CONSUMER_REASON: Final = "slow consumer"
LIMIT_BODY: Final = "Gateway connection limit reached\n"


class ConnectionState(enum.Enum):
    """Lifecycle of a connection; :meth:`Connection.transition` allows only the edges below."""

    CONNECTING = "connecting"
    OPEN = "open"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


_LEGAL: Final[Mapping[ConnectionState, frozenset[ConnectionState]]] = {
    ConnectionState.CONNECTING: frozenset({ConnectionState.OPEN, ConnectionState.CLOSED}),
    ConnectionState.OPEN: frozenset({ConnectionState.AUTHENTICATED, ConnectionState.CLOSED}),
    # connect again replaces the identity; a refused credential drops back to OPEN
    ConnectionState.AUTHENTICATED: frozenset(
        {ConnectionState.AUTHENTICATED, ConnectionState.OPEN, ConnectionState.CLOSED}
    ),
    ConnectionState.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A connection was asked to move along an edge its state machine does not have."""


class Connection:
    """One WebSocket client: its state, identity, subscription filter, seq and streams."""

    __slots__ = (
        "_connect_timer",
        "_direct",
        "_flush_handle",
        "_outbox",
        "_pending",
        "_queued_bytes",
        "_recheck",
        "_room",
        "_send",
        "_slots",
        "_tasks",
        "_tick",
        "_token",
        "_writer",
        "headers",
        "host",
        "peer",
        "principal",
        "seq",
        "session_token",
        "state",
        "streams",
        "subscribed",
        "websocket",
    )

    def __init__(self, host: GatewayHost, websocket: WebSocket, headers: dict[str, str], send: Send):
        self.host = host
        self.websocket: WebSocket | None = websocket
        self._send = send
        self.headers = headers
        self.peer = peer_address(websocket.scope) if websocket is not None else None
        self.state = ConnectionState.CONNECTING
        self.seq = 0
        self.principal: Principal | None = None
        self.session_token: str | None = None
        self.subscribed: set[str] | None = None
        self.streams: dict[str, RunStream] = {}
        self._token: str | None = None
        self._recheck = False
        self._outbox: deque[str] | None = None  # created when a frame waits to be sent (idle sockets stay small)
        self._writer: asyncio.Task[None] | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._slots = 0  # messages being handled; at most MAX_IN_FLIGHT at once
        self._room: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._direct: GatewayWebSocketProtocol | None = None  # the protocol's direct path, when it offers one
        self._flush_handle: asyncio.Handle | None = None
        self._pending: deque[tuple[Call, Any]] | None = None  # calls read while MAX_IN_FLIGHT are handled
        self._queued_bytes = 0  # of the frames in the outbox
        self._connect_timer: asyncio.TimerHandle | None = None

    # -- state ---------------------------------------------------------------------------------
    def transition(self, new: ConnectionState) -> None:
        if new not in _LEGAL[self.state]:
            raise IllegalTransition(f"connection cannot go from {self.state.value} to {new.value}")
        self.state = new

    @property
    def is_open(self) -> bool:
        return self.state in (ConnectionState.OPEN, ConnectionState.AUTHENTICATED)

    @property
    def authenticated(self) -> bool:
        return self.state is ConnectionState.AUTHENTICATED

    # -- delivery ------------------------------------------------------------------------------
    def receives(self, payload: Mapping[str, Any]) -> bool:
        """The subscription filter: authenticated, and the run (if any) passes the subscription set."""
        if self.state is not ConnectionState.AUTHENTICATED:
            return False
        run_id = payload.get("runId")
        return not isinstance(run_id, str) or not self.subscribed or run_id in self.subscribed

    def follows(self, run_id: str) -> bool:
        return not self.subscribed or run_id in self.subscribed

    def queued_frames(self) -> int:
        """Frames this client has not been sent yet: queued here, or written and held by the transport."""
        queued = len(self._outbox) if self._outbox is not None else 0
        return queued + self._direct.unsent_frames() if self._direct is not None else queued

    def auto_subscribe(self, run_id: str) -> None:
        """Add a run this connection started or resumed to its filter (creating the filter)."""
        if self.subscribed is None:
            self.subscribed = set()
        self.subscribed.add(run_id)

    def add_stream(self, stream: RunStream) -> None:
        self.streams[stream.stream_id] = stream

    def streams_on(self, run_id: str) -> list[RunStream]:
        if not self.streams:
            return []
        return [s for s in self.streams.values() if s.run_id == run_id]

    def send_event(
        self,
        event: str,
        payload: Any,
        state_version: int | None = None,
        *,
        payload_json: str | None = None,
        counted: bool = True,
    ) -> bool:
        """Queue an event frame with the next connection seq (not consumed if the socket is closed).

        Returns whether it was queued; ``counted=False`` leaves the sent-message metric to the
        caller (a broadcast counts all its frames at once).
        """
        if self.state is not ConnectionState.OPEN and self.state is not ConnectionState.AUTHENTICATED:
            return False
        self.seq += 1
        version = self.host.state_version if state_version is None else state_version
        if payload_json is None:
            text = encode_json(event_frame(event, payload, seq=self.seq, state_version=version))
        else:  # the payload serialised once for all connections; same key order as event_frame
            text = (
                f'{{"type":"event","event":{encode_json(event)},"payload":{payload_json},'
                f'"seq":{self.seq},"stateVersion":{version},"apiVersion":"{API_VERSION}"}}'
            )
        if counted:
            self.host.metrics.event_sent(event)
        self._enqueue(text)
        return True

    def send_frame(self, frame: Mapping[str, Any]) -> None:
        if self.is_open:
            self._enqueue(encode_json(frame))

    def answer(self, outcome: Outcome) -> None:
        """Queue the response frame of a call, then run its after-response work."""
        if outcome.error is not None:
            self.send_frame(error_frame(outcome.response_id, outcome.error))
        else:
            self.send_frame(response_frame(outcome.response_id, outcome.payload))
        if outcome.after is not None and self.is_open:
            outcome.after()

    def _enqueue(self, text: str) -> None:
        if self._outbox is None:
            self._outbox = deque()
        size = len(text)
        buffered = self._queued_bytes + size
        if self._direct is not None:
            buffered += self._direct.buffered_bytes()
        if buffered > self._buffer_limit():
            self._slow_consumer(buffered)
            return
        self._outbox.append(text)
        self._queued_bytes += size
        if self._direct is not None:
            # Frames queued in one pass of the event loop leave in one write.
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        elif self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _check_backlog(self, unread: int) -> None:
        """Bytes the protocol wrote on its own (pongs) count against the same budget."""
        buffered = unread + self._queued_bytes
        if self.is_open and buffered > self._buffer_limit():
            self._slow_consumer(buffered)

    def _buffer_limit(self) -> int:
        """Bytes this client may leave unread: ``maxBufferedBytes``, much less before it connects."""
        limit = self.host.options.max_buffered_bytes
        return limit if self.state is ConnectionState.AUTHENTICATED else min(limit, UNAUTHENTICATED_BUFFER_BYTES)

    def _slow_consumer(self, buffered: int) -> None:
        """The client stopped reading: drop what it has not taken and close it (1013)."""
        log.warning("closing a WebSocket client that stopped reading (%d bytes waiting)", buffered)
        self.host.metrics.slow_consumer_closes.inc()
        self._outbox = None
        self._queued_bytes = 0
        direct = self._direct
        self.close()
        if direct is not None:
            direct.abort(CLOSE_TRY_AGAIN, SLOW_CONSUMER_REASON)
        else:
            self.host.spawn(self.close_socket(CLOSE_TRY_AGAIN, SLOW_CONSUMER_REASON))

    def _flush(self) -> None:
        """Write every queued frame through the direct path, in order, in one system call."""
        self._flush_handle = None
        outbox, self._outbox = self._outbox, None
        self._queued_bytes = 0
        if outbox and self._direct is not None and self.is_open:
            self._direct.write_texts(outbox)

    async def _drain(self) -> None:
        send = self._send
        try:
            while self._outbox and self.is_open:
                text = self._outbox.popleft()
                self._queued_bytes -= len(text)
                await send({"type": "websocket.send", "text": text})
        except Exception:  # the peer went away; the receive loop notices and closes
            self._outbox = None
        finally:
            self._writer = None
            if not self._outbox:
                self._outbox = None

    # -- inbound -------------------------------------------------------------------------------
    def on_message(self, data: str | bytes) -> None:
        """Validate and answer one inbound message; never raises.

        Calls whose handler does not wait are answered here and now. The others run as tasks, at
        most :data:`MAX_IN_FLIGHT` at a time; further ones wait their turn with reading paused.
        """
        try:
            prepared = self._prepare(data)
        except Exception as exc:
            self.answer(outcome_for(TRANSPORT_WS, WS_INVALID_ID, WS_INVALID_ID, exc, "ws message"))
            return
        if prepared is None:
            return
        call, params = prepared
        dispatcher = self.host.dispatcher
        if not dispatcher.waits(call.method):
            self.answer(dispatcher.call_now(call, call.request_id, params))
            return
        self._start(call, params)

    def _prepare(self, data: str | bytes) -> tuple[Call, Any] | None:
        """Parse and authenticate a message into a call (None: it was answered already)."""
        host = self.host
        host.metrics.received("ws")
        try:
            frame = parse_ws_frame(data, host.options.max_payload)
        except GatewayError as exc:
            host.metrics.error("frame", transport="ws", code=exc.code)
            self.send_frame(error_frame(WS_INVALID_ID, exc))
            return None
        if frame.method == CONNECT_METHOD:
            self._connect(frame)
            return None
        principal = self._current_principal(frame)
        if principal is None:
            return None
        return Call(host, TRANSPORT_WS, principal, frame.method, frame.id, self), frame.params

    def _current_principal(self, frame: RequestFrame) -> Principal | None:
        if self.principal is None or not self.authenticated:
            self.send_frame(error_frame(frame.id, GatewayError(UNAUTHORIZED, "Connect first")))
            return None
        if self._recheck:
            # Stored and expiring credentials are checked again on every request, so a revoked or
            # expired token stops working at once; the connection must connect again.
            try:
                return self.host.authenticator.authenticate_connect(
                    {"auth": {"token": self._token}}, self.headers, now_ms(), self.peer
                )
            except GatewayError as exc:
                self.host.metrics.auth("ws", self.host.authenticator.mode, False)
                self._deauthenticate()
                self.send_frame(error_frame(frame.id, exc))
                return None
        return self.principal

    def _connect(self, frame: RequestFrame) -> None:
        host = self.host
        try:
            request = parse_connect_request(frame.params, host.options.protocol)
            params = frame.params if isinstance(frame.params, dict) else {}
            token = token_from_connect(params)
            principal = host.authenticator.authenticate_connect(params, self.headers, now_ms(), self.peer)
        except Exception as exc:
            if isinstance(exc, GatewayError) and exc.code == UNAUTHORIZED:
                host.metrics.auth("ws", host.authenticator.mode, False)
            self.answer(outcome_for(TRANSPORT_WS, frame.id, frame.id, exc, "ws connect"))
            return
        host.metrics.auth("ws", host.authenticator.mode, True)
        if not self.is_open:  # the socket closed while this connect was being checked
            return
        self.transition(ConnectionState.AUTHENTICATED)
        self._stop_connect_timer()
        self.principal = principal
        self._token = token
        self._recheck = principal.expires_at_ms is not None or host.is_stored_token(token)
        self.session_token = str(uuid.uuid4())
        self.subscribed = set(request.subscribe) if request.subscribe is not None else None
        self._start_ticks()
        hello = bounded_hello(hello_payload(host, principal, self.session_token), MAX_HELLO_BYTES)
        self.send_frame(response_frame(frame.id, hello))

    def _deauthenticate(self) -> None:
        self.transition(ConnectionState.OPEN)
        self.principal = None
        self._stop_ticks()
        self._start_connect_timer()

    # -- connect timeout -----------------------------------------------------------------------
    def _start_connect_timer(self) -> None:
        """A socket must complete ``connect`` within ``connectTimeoutMs`` (docs/protocol.md#handshake)."""
        self._stop_connect_timer()
        timeout = self.host.options.connect_timeout_ms
        self._connect_timer = asyncio.get_running_loop().call_later(timeout / 1000, self._connect_timed_out)

    def _stop_connect_timer(self) -> None:
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if self.state is ConnectionState.OPEN:
            self.host.metrics.error("connect_timeout", transport="ws")
            self.host.spawn(self.close_socket(CLOSE_POLICY, CONNECT_TIMEOUT_REASON))

    # -- heartbeat -----------------------------------------------------------------------------
    def _start_ticks(self) -> None:
        self._stop_ticks()
        interval = self.host.options.heartbeat_ms
        if interval > 0:  # heartbeatMs is not validated; a non-positive value sends no ticks
            self._tick = asyncio.get_running_loop().call_later(interval / 1000, self._on_tick)

    def _stop_ticks(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _on_tick(self) -> None:
        self._tick = None
        if not self.authenticated:
            return
        self.send_event("tick", {"ts": now_ms()})
        self.host.metrics.heartbeat_ticks.inc()
        self._start_ticks()

    # -- close ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Forget the connection: stop ticks and streams. Idempotent."""
        if self.state is ConnectionState.CLOSED:
            return
        self.transition(ConnectionState.CLOSED)
        self._stop_ticks()
        self._stop_connect_timer()
        for stream in self.streams.values():
            stream.stop()
        self.streams.clear()
        self._outbox = None

    async def close_socket(self, code: int | None = 1000, reason: str = "") -> None:
        """Send a close frame after what is queued; ``None`` sends one without a status code (1005)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        if self._direct is not None:
            self._direct.shut(code, reason)
            return
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:
            log.debug("closing a WebSocket that is already gone", exc_info=True)

    async def run(self) -> bool:
        """Accept and challenge; then read messages until the client goes away.

        Returns True at once when the protocol offers its direct path: the connection then lives
        in the protocol, which calls :meth:`ended` when the socket goes; False when it has ended.
        """
        websocket = self.websocket
        assert websocket is not None, "run() is called once"
        await websocket.accept(headers=[(API_VERSION_HEADER.lower().encode(), API_VERSION.encode())])
        direct = websocket.scope.get("extensions", {}).get(SCOPE_EXTENSION)
        self.transition(ConnectionState.OPEN)
        self._start_connect_timer()
        if direct is not None:
            self._direct = direct["protocol"]
            self._direct.attach(self.on_message, self.ended, self._check_backlog)
            self.websocket = None  # the protocol carries the socket from here on
            self.send_event("connect.challenge", {"nonce": str(uuid.uuid4()), "ts": now_ms()})
            return True
        self.send_event("connect.challenge", {"nonce": str(uuid.uuid4()), "ts": now_ms()})
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            data = message.get("text")
            self.on_message(data if data is not None else message.get("bytes") or b"")
            while self._slots >= MAX_IN_FLIGHT:
                if self._room is None:
                    self._room = asyncio.Event()
                await self._room.wait()

    def ended(self, reason: str = "close") -> None:
        """The socket is gone: forget the connection and count it (once)."""
        self.close()
        host = self.host
        if self in host.connections:
            host.connections.discard(self)
            host.metrics.connection_closed(len(host.connections), reason)

    def _start(self, call: Call, params: Any) -> None:
        if self._slots >= MAX_IN_FLIGHT:
            if self._pending is None:
                self._pending = deque()
            self._pending.append((call, params))
            if self._direct is not None:
                self._direct.pause_reading()
            return
        self._slots += 1
        task = asyncio.get_running_loop().create_task(self._dispatch(call, params))
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, call: Call, params: Any) -> None:
        try:
            self.answer(await self.host.dispatcher.call(call, call.request_id, params))
        finally:
            self._slots -= 1
            if self._pending:
                self._start(*self._pending.popleft())
            elif self._direct is not None:
                self._direct.resume_reading()
            if self._room is not None:
                self._room.set()
                self._room = None


async def serve_websocket(host: GatewayHost, scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI WebSocket endpoint: any path; 503 when ``maxConnections`` sockets are open."""
    websocket = WebSocket(scope, receive, send)
    waiting = sum(1 for conn in host.connections if not conn.authenticated)
    # Sockets that have not connected never hold more than half of the slots, so they cannot lock
    # authenticated clients out (docs/protocol.md#departures-from-0180).
    if len(host.connections) >= host.options.max_connections or waiting >= max(1, host.options.max_connections // 2):
        host.metrics.error("connection_limit", transport="ws")
        response = PlainTextResponse(
            LIMIT_BODY,
            status_code=503,
            headers={"Connection": "close", API_VERSION_HEADER: API_VERSION},
            media_type="text/plain; charset=utf-8",
        )
        await websocket.send_denial_response(response)
        return
    conn = Connection(host, websocket, node_headers(scope.get("headers", [])), send)
    host.connections.add(conn)
    host.metrics.connection_opened(len(host.connections))
    reason = "close"
    try:
        if await conn.run():
            return  # the protocol carries the connection on and calls conn.ended()
    except WebSocketDisconnect:
        pass
    except Exception:
        reason = "error"
        host.metrics.error("socket", transport="ws")
        log.exception("WebSocket connection failed")
    conn.ended(reason)
