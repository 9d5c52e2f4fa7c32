"""RPC dispatch: a table of handlers keyed by legacy and stable method names (protocol §5, §7).

A handler is ``async def handler(call: Call, params: dict) -> payload``. It *returns* an error
(answered with the request id) by raising :class:`GatewayError`; anything else that escapes it
follows §3.5 (WebSocket ids ``"invalid"``/``"server"``, HTTP ``requestId``). Failures that the
reference throws rather than returns (a bad ``limit``, engine errors) are raised as
:class:`Escaped` (see :func:`escaping`). This module is the one boundary where handler failures
become wire errors; the transports only frame them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy.exc import SQLAlchemyError

from smithers.errors import (
    INVALID_INPUT as ENGINE_INVALID_INPUT,
)
from smithers.errors import (
    RUN_ALREADY_EXISTS,
    RUN_NOT_FOUND,
    SmithersError,
)
from smithers.errors import (
    RUN_NOT_ACTIVE as ENGINE_RUN_NOT_ACTIVE,
)
from smithers.gateway.auth import Principal
from smithers.gateway.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    RUN_NOT_ACTIVE,
    SERVER_FAILURE_MESSAGE,
    WS_INVALID_ID,
    GatewayError,
    coded_error,
    http_error_for,
    ws_error_for,
)
from smithers.gateway.protocol import as_params
from smithers.gateway.scopes import authorize

if TYPE_CHECKING:
    from smithers.gateway.server import Gateway
    from smithers.gateway.ws import Connection

log = logging.getLogger(__name__)

Transport = Literal["ws", "http"]
TRANSPORT_WS: Final = "ws"
TRANSPORT_HTTP: Final = "http"

_ENGINE_CODES: Final[Mapping[str, str]] = {
    ENGINE_INVALID_INPUT: INVALID_INPUT,
    RUN_NOT_FOUND: NOT_FOUND,
    ENGINE_RUN_NOT_ACTIVE: RUN_NOT_ACTIVE,
    # A duplicate run id is the caller's mistake; 400 keeps it among launchRun's documented codes.
    RUN_ALREADY_EXISTS: INVALID_REQUEST,
}


@dataclass(slots=True)
class Call:
    """One RPC call: who makes it, over what, and the connection to auto-subscribe (WS only)."""

    gateway: Gateway
    transport: Transport
    principal: Principal
    method: str
    request_id: str
    connection: Connection | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A payload plus work to do right after the response frame is queued (e.g. stream replay)."""

    payload: Any
    after: Callable[[], None] | None = None


Handler = Callable[[Call, dict[str, Any]], Awaitable[Any]]


class Escaped(Exception):
    """A coded failure that escapes its handler (§3.5) instead of being returned."""

    def __init__(self, error: GatewayError):
        super().__init__(error.message or error.code)
        self.error = error


@contextmanager
def escaping() -> Iterator[None]:
    """Turn a ``GatewayError`` raised inside the block into an escaping one (a thrown helper)."""
    try:
        yield
    except GatewayError as exc:
        raise Escaped(exc) from exc


def engine_error(exc: SmithersError) -> GatewayError:
    """The gateway error for an engine error: its code mapped, its message kept."""
    return GatewayError(_ENGINE_CODES.get(exc.code, exc.code), exc.message)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer: a payload, or an error and the response id it goes out with."""

    response_id: str
    payload: Any = None
    error: GatewayError | None = None
    after: Callable[[], None] | None = None


def escaped_outcome(call: Call, exc: BaseException) -> Outcome:
    """§3.5 for ``exc`` escaping a handler of ``call``; uncoded failures are logged here."""
    error: GatewayError | None = None
    if isinstance(exc, Escaped):
        error = exc.error
    elif isinstance(exc, SmithersError):
        error = engine_error(exc)
    elif isinstance(exc, SQLAlchemyError | sqlite3.Error):
        # Database driver errors carry codes that mean nothing to a client (and SQL text that
        # should not reach one): they are server errors, logged here.
        log.error("%s %s failed", call.transport, call.method, exc_info=exc)
        exc = RuntimeError(SERVER_FAILURE_MESSAGE)
    elif coded_error(exc) is None:
        log.error("%s %s failed", call.transport, call.method, exc_info=exc)
    if call.transport == TRANSPORT_HTTP:
        return Outcome(call.request_id, error=error if error is not None else http_error_for(exc))
    if error is not None:
        return Outcome(WS_INVALID_ID, error=error)
    response_id, wire = ws_error_for(exc)
    return Outcome(response_id, error=wire)


class Dispatcher:
    """Method name → handler, with the scope check of §5 before every handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add(self, table: Mapping[str, Handler]) -> None:
        """Register handlers (a later registration of a name replaces the earlier one)."""
        self._handlers.update(table)

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    async def call(self, call: Call, frame_id: str, raw_params: Any) -> Outcome:
        """Authorize and run one call; never raises."""
        started = time.perf_counter()
        outcome = await self._run(call, frame_id, raw_params)
        code = outcome.error.code if outcome.error is not None else None
        call.gateway.metrics.rpc(call.transport, call.method, (time.perf_counter() - started) * 1000, code)
        return outcome

    async def _run(self, call: Call, frame_id: str, raw_params: Any) -> Outcome:
        try:
            authorize(call.principal.scopes, call.method)
        except GatewayError as exc:
            return Outcome(frame_id, error=exc)
        handler = self._handlers.get(call.method)
        if handler is None:
            return Outcome(frame_id, error=GatewayError(METHOD_NOT_FOUND, f"Unknown method: {call.method}"))
        try:
            result = await handler(call, as_params(raw_params))
        except Escaped as exc:
            return escaped_outcome(call, exc)
        except GatewayError as exc:
            return Outcome(frame_id, error=exc)
        except Exception as exc:
            return escaped_outcome(call, exc)
        if isinstance(result, Reply):
            return Outcome(frame_id, payload=result.payload, after=result.after)
        return Outcome(frame_id, payload=result)
