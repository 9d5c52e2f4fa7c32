"""RPC dispatch: a table of handlers keyed by legacy and stable method names, and the one place
where failures become wire errors (docs/protocol.md#envelopes-and-errors).

A handler is ``async def handler(call: Call, params: dict) -> payload``. It refuses a call by
raising a :class:`~smithers.errors.GatewayError` (answered with the request id). Other
:class:`~smithers.errors.SmithersError` s *escape* (over WebSocket they are answered with id
``"invalid"``); :func:`escaping` makes a refusal escape, :func:`returning` makes an escaping error
a refusal. A :class:`~smithers.errors.ServerError` is answered ``SERVER_ERROR`` with its message
(id ``"server"``). Anything else is a bug or an outage: it is logged with a reference that the
answer carries instead of the exception's text.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from smithers.errors import (
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    GatewayError,
    ServerError,
    SmithersError,
)
from smithers.gateway.auth import Principal
from smithers.gateway.context import ClientConnection, GatewayContext
from smithers.gateway.scopes import authorize

log = logging.getLogger(__name__)

Transport = Literal["ws", "http"]
TRANSPORT_WS: Final = "ws"
TRANSPORT_HTTP: Final = "http"

WS_INVALID_ID: Final = "invalid"
"""Response id for frames that fail validation and for coded errors escaping a handler."""
WS_SERVER_ID: Final = "server"
"""Response id for uncoded errors escaping a handler over WebSocket."""
INTERNAL_ERROR_MESSAGE: Final = "internal error"


@dataclass(slots=True)
class Call:
    """One RPC call: who makes it, over what, and the connection it came in on (WS only)."""

    ctx: GatewayContext
    transport: Transport
    principal: Principal
    method: str
    request_id: str
    connection: ClientConnection | None = None


@dataclass(slots=True)
class Reply:
    """A payload plus work to do right after the response frame is queued (e.g. stream replay)."""

    payload: Any
    after: Callable[[], None] | None = None


Handler = Callable[[Call, dict[str, Any]], Any]
"""``handler(call, params)``: returns the payload (or a :class:`Reply`); a coroutine function when it
has to wait (for a run to start, a decision to commit), a plain function otherwise, which is
answered without creating a task."""


@contextmanager
def escaping() -> Iterator[None]:
    """Refusals raised inside the block escape their handler (the protocol's "raised" failures)."""
    try:
        yield
    except SmithersError as exc:
        exc.escapes = True
        raise


@contextmanager
def returning() -> Iterator[None]:
    """Errors raised inside the block are refusals answered with the request id."""
    try:
        yield
    except SmithersError as exc:
        exc.escapes = False
        raise


@dataclass(slots=True)
class Outcome:
    """What to answer: a payload, or an error and the response id it goes out with."""

    response_id: str
    payload: Any = None
    error: GatewayError | None = None
    after: Callable[[], None] | None = None


def wire_error(exc: SmithersError) -> GatewayError:
    """The wire form of an error: its wire code and message (the status follows from the code)."""
    if isinstance(exc, GatewayError):
        return exc
    return GatewayError(exc.wire_code, exc.message, None if isinstance(exc, ServerError) else exc.details)


def internal_error(what: str, exc: BaseException) -> GatewayError:
    """Log an unexpected failure with a reference and answer ``SERVER_ERROR`` naming only the reference."""
    reference = uuid.uuid4().hex[:12]
    log.error("%s failed (ref %s)", what, reference, exc_info=exc)
    return GatewayError(SERVER_ERROR, f"{INTERNAL_ERROR_MESSAGE} (ref {reference})", {"ref": reference})


def outcome_for(transport: Transport, frame_id: str, request_id: str, exc: BaseException, what: str) -> Outcome:
    """How a failure is answered: a refusal with the frame id; an escaping or unexpected failure with
    the HTTP request id, or over WebSocket with id ``"invalid"`` (coded) or ``"server"`` (uncoded)."""
    if isinstance(exc, SmithersError) and not exc.escapes:
        return Outcome(frame_id, error=wire_error(exc))
    uncoded = not isinstance(exc, SmithersError) or isinstance(exc, ServerError)
    error = wire_error(exc) if isinstance(exc, SmithersError) else internal_error(what, exc)
    if transport == TRANSPORT_HTTP:
        return Outcome(request_id, error=error)
    return Outcome(WS_SERVER_ID if uncoded else WS_INVALID_ID, error=error)


class Dispatcher:
    """Method name → handler, with the scope check before every handler."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, bool]] = {}

    def add(self, table: Mapping[str, Handler]) -> None:
        """Register handlers (a later registration of a name replaces the earlier one)."""
        for name, handler in table.items():
            self._handlers[name] = (handler, inspect.iscoroutinefunction(handler))

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def waits(self, method: str) -> bool:
        """Whether answering ``method`` may wait (its handler is a coroutine function)."""
        entry = self._handlers.get(method)
        return entry is not None and entry[1]

    def call_now(self, call: Call, frame_id: str, raw_params: Any) -> Outcome:
        """Authorize and run a call whose handler does not wait; never raises."""
        started = time.perf_counter()
        handler = self._authorized(call, frame_id)
        if isinstance(handler, Outcome):
            outcome = handler
        else:
            try:
                result = handler(call, raw_params if isinstance(raw_params, dict) else {})
            except Exception as exc:
                outcome = outcome_for(call.transport, frame_id, call.request_id, exc, f"{call.transport} {call.method}")
            else:
                outcome = _success(frame_id, result)
        self._record(call, started, outcome)
        return outcome

    async def call(self, call: Call, frame_id: str, raw_params: Any) -> Outcome:
        """Authorize and run any call; never raises."""
        if not self.waits(call.method):
            return self.call_now(call, frame_id, raw_params)
        started = time.perf_counter()
        handler = self._authorized(call, frame_id)
        if isinstance(handler, Outcome):
            outcome = handler
        else:
            try:
                result = await handler(call, raw_params if isinstance(raw_params, dict) else {})
            except Exception as exc:
                outcome = outcome_for(call.transport, frame_id, call.request_id, exc, f"{call.transport} {call.method}")
            else:
                outcome = _success(frame_id, result)
        self._record(call, started, outcome)
        return outcome

    def _authorized(self, call: Call, frame_id: str) -> Handler | Outcome:
        """The handler of an authorized call, or the refusal to answer."""
        try:
            authorize(call.principal.scopes, call.method)
        except GatewayError as exc:
            return Outcome(frame_id, error=exc)
        entry = self._handlers.get(call.method)
        if entry is None:
            return Outcome(frame_id, error=GatewayError(METHOD_NOT_FOUND, f"Unknown method: {call.method}"))
        return entry[0]

    @staticmethod
    def _record(call: Call, started: float, outcome: Outcome) -> None:
        code = outcome.error.code if outcome.error is not None else None
        call.ctx.metrics.rpc(call.transport, call.method, (time.perf_counter() - started) * 1000, code)


def _success(frame_id: str, result: Any) -> Outcome:
    if isinstance(result, Reply):
        return Outcome(frame_id, payload=result.payload, after=result.after)
    return Outcome(frame_id, payload=result)
