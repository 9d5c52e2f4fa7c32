"""HTTP transport: route precedence, RPC over ``/rpc`` and ``/v1/rpc/{method}``, ``/health``,
``/metrics``, webhooks, UI mounts, the 404 fallback, body limits and the header/request timeouts
(docs/protocol.md#http-routes).

:class:`GatewayApp` is a plain ASGI application (HTTP, WebSocket and lifespan); the routes are
matched by hand because the protocol compares the *raw* target (``/health?x=1`` is not ``/health``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from typing import Any, Final

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from smithers.errors import INVALID_REQUEST, GatewayError
from smithers.gateway import ui, webhooks
from smithers.gateway.auth import header_value, node_headers, peer_address
from smithers.gateway.dispatch import TRANSPORT_HTTP, Call, internal_error
from smithers.gateway.host import GatewayHost
from smithers.gateway.metrics import METRICS_CONTENT_TYPE
from smithers.gateway.protocol import (
    COMMON_HEADERS,
    error_frame,
    http_rpc_request,
    parse_http_body,
    payload_too_large,
    response_frame,
    route_not_found_body,
    webhook_error_body,
)
from smithers.gateway.responses import BodyTooLarge, json_response, read_body
from smithers.gateway.shapes import health_payload
from smithers.gateway.ws import serve_websocket
from smithers.gateway.wsproto import GatewayWebSocketProtocol
from smithers.store.rows import now_ms

log = logging.getLogger(__name__)

WEBHOOK_PATH: Final = re.compile(r"/webhooks/([^/]+)")
RPC_PATH: Final = re.compile(r"/v1/rpc/([^/]+)")
_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
REQUEST_TIMEOUT_RESPONSE: Final = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n"
FORCE_EXIT_AFTER_S: Final = 0.25
"""After the gateway closed its sockets, uvicorn gets this long before it is forced to stop."""
MAX_PIPELINED_REQUESTS: Final = 32
"""Requests a connection may send ahead of the answers it has not received yet; more and it is dropped."""


def decode_segment(segment: str) -> str:
    """``decodeURIComponent``; malformed escapes or UTF-8 raise ``INVALID_REQUEST``.

    The reference leaves such a request unanswered (docs/protocol.md#departures-from-0180).
    """
    if "%" not in segment:
        return segment
    malformed = GatewayError(INVALID_REQUEST, "Malformed percent-encoding in the request path")
    if _PERCENT.search(segment) is not None:
        raise malformed
    raw = bytearray()
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "%":
            raw.append(int(segment[index + 1 : index + 3], 16))
            index += 3
        else:
            raw.extend(char.encode("utf-8"))
            index += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed from exc


async def rpc(host: GatewayHost, request: Request, path_method: str | None) -> Response:
    """``POST /rpc`` and ``POST /v1/rpc/{method}``: authenticate, read, validate, authorize, dispatch."""
    headers = node_headers(request.scope.get("headers", []))
    request_id = _first_header(request, "x-request-id") or str(uuid.uuid4())
    metrics = host.metrics
    metrics.received("http")
    try:
        principal = host.authenticator.authenticate_http(headers, now_ms(), peer_address(request.scope))
    except GatewayError as exc:
        metrics.auth("http", host.authenticator.mode, False)
        return json_response(error_frame(request_id, exc), exc.http_status)
    metrics.auth("http", host.authenticator.mode, True)
    limit = host.options.max_body_bytes
    try:
        declared = header_value(headers, "content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise BodyTooLarge
        raw = await read_body(request.receive, limit)
        if raw is None:
            return Response(status_code=400)
        frame = http_rpc_request(parse_http_body(raw), request_id, path_method)
    except BodyTooLarge:
        error = payload_too_large(limit)
        metrics.error("http", transport="http", code=error.code)
        return json_response(error_frame(request_id, error), error.http_status)
    except GatewayError as exc:
        metrics.error("http", transport="http", code=exc.code)
        return json_response(error_frame(request_id, exc), exc.http_status)
    call = Call(host, TRANSPORT_HTTP, principal, frame.method, request_id)
    outcome = await host.dispatcher.call(call, frame.id, frame.params)
    if outcome.error is not None:
        return json_response(error_frame(outcome.response_id, outcome.error), outcome.error.http_status)
    return json_response(response_frame(outcome.response_id, outcome.payload))


def _first_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    return values[0] if values and values[0] else None


async def route(host: GatewayHost, request: Request) -> Response:
    """Pick the handler of a request in route-precedence order."""
    scope = request.scope
    method = scope["method"]
    path = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
    bare = not scope.get("query_string")
    if method == "GET" and bare and path == "/health":
        return json_response(health_payload(host, route=True))
    if method == "GET" and bare and path == "/metrics":
        return Response(host.metrics.render(), 200, dict(COMMON_HEADERS), METRICS_CONTENT_TYPE)
    if method == "POST":
        hook = WEBHOOK_PATH.fullmatch(path)
        if hook is not None:
            try:
                key = decode_segment(hook.group(1))
            except GatewayError as exc:
                return json_response(webhook_error_body(exc), exc.http_status)
            return await webhooks.handle(host, request, key)
        forced = RPC_PATH.fullmatch(path)
        if forced is not None:
            try:
                name = decode_segment(forced.group(1))
            except GatewayError as exc:
                request_id = _first_header(request, "x-request-id") or str(uuid.uuid4())
                return json_response(error_frame(request_id, exc), exc.http_status)
            return await rpc(host, request, name)
        if bare and path == "/rpc":
            return await rpc(host, request, None)
    page = await ui.answer(host.ui, host.workflows.values(), method, path)  # GET/HEAD under a UI mount
    if page is not None:
        return page
    return json_response(route_not_found_body(), 404)


class GatewayApp:
    """The gateway as an ASGI application."""

    def __init__(self, host: GatewayHost):
        self.host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.host.start()
        if kind == "websocket":
            await serve_websocket(self.host, scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await route(self.host, request)
        except Exception as exc:
            error = internal_error("HTTP request", exc)
            self.host.metrics.error("http", transport="http", code=error.code)
            response = json_response({"error": {"code": error.code, "message": error.message}}, error.http_status)
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start and stop the gateway when an outside ASGI server runs this app."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.host.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.host.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class PipelineOverrun(Exception):
    """Raised inside the HTTP parser to stop parsing a client's requests (see ``MAX_PIPELINED_REQUESTS``)."""


def protocol_class(headers_timeout_ms: int, request_timeout_ms: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol plus Node's ``headersTimeout``/``requestTimeout`` (docs/protocol.md#http-routes).

    A client that has not sent complete headers within ``headersTimeout``, or the whole request
    within ``requestTimeout``, gets ``408`` and the connection is closed. WebSocket upgrades stop
    both clocks.
    """

    class GatewayHttpProtocol(HttpToolsProtocol):
        _headers_timer: asyncio.TimerHandle | None = None
        _request_timer: asyncio.TimerHandle | None = None
        _overrun = False  # the client sent more than MAX_PIPELINED_REQUESTS ahead: it is being dropped
        _serving: Any = None  # the request-response cycle being answered

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def _arm(self) -> None:
            if self._headers_timer is None:
                self._headers_timer = self.loop.call_later(headers_timeout_ms / 1000, self._expire)
            if self._request_timer is None:
                self._request_timer = self.loop.call_later(request_timeout_ms / 1000, self._expire)

        def _disarm(self, headers: bool = True, request: bool = True) -> None:
            if headers and self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None
            if request and self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def _expire(self) -> None:
            self._disarm()
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or not cycle.response_started or cycle.response_complete:
                self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if not self._overrun:
                super().data_received(data)

        def on_message_begin(self) -> None:
            # Requests sent ahead of their answers wait in memory: a client that keeps sending
            # without reading is dropped rather than queued without end (docs/protocol.md#http-routes).
            if len(self.pipeline) >= MAX_PIPELINED_REQUESTS:
                self._overrun = True
                raise PipelineOverrun
            super().on_message_begin()
            self._arm()

        def send_400_response(self, msg: str) -> None:
            if not self._overrun:
                super().send_400_response(msg)
                return
            log.warning("dropping an HTTP client that sent %d requests ahead of its answers", MAX_PIPELINED_REQUESTS)
            self._disarm()
            self.transport.abort()  # its unread answers are dropped with it

        def on_headers_complete(self) -> None:
            self._disarm(request=False)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            super().handle_websocket_upgrade()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            self._serving = cycle
            super()._start_asgi_task(cycle, app)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            # uvicorn tells only the newest request that the client left; the one being answered
            # (with pipelining, an older one) and those waiting their turn must know it too, or the
            # answer is written to a closed transport.
            for cycle in [self._serving, *(queued for queued, _ in self.pipeline)]:
                if cycle is not None and not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            self.pipeline.clear()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle keep-alive is uvicorn's timeout_keep_alive; the next request re-arms
            if self.pipeline:
                # uvicorn reads on after each answer; parse no more while requests already wait
                self.flow.pause_reading()

    return GatewayHttpProtocol


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``port`` 0 picks a free one); raises OSError.
    ``reuse_port``: several processes bind the same port and the kernel spreads connections over
    them (``SO_REUSEPORT``: ``smithers serve --workers N``)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class UvicornServer(uvicorn.Server):
    """uvicorn configured for the gateway; on shutdown the gateway first stops its runs and sockets."""

    def __init__(self, host: GatewayHost):
        options = host.options
        config = uvicorn.Config(
            GatewayApp(host),
            http=protocol_class(options.headers_timeout, options.request_timeout),
            ws=GatewayWebSocketProtocol,
            ws_max_size=options.max_payload,
            ws_ping_interval=None,  # the gateway never pings (it answers client pings)
            ws_ping_timeout=None,
            ws_per_message_deflate=False,
            lifespan="off",
            # The peer address is the socket's own: uvicorn would replace it with X-Forwarded-For for
            # loopback peers, and trustedProxies must judge the proxy, not what it forwards
            # (docs/protocol.md#authentication).
            proxy_headers=False,
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        super().__init__(config)
        self.host = host

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.host.stop_runs_and_sockets()
        asyncio.get_running_loop().call_later(FORCE_EXIT_AFTER_S, setattr, self, "force_exit", True)
        await super().shutdown(sockets)
