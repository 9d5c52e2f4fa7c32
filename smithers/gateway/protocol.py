"""Gateway wire protocol v1: constants, JSON rules, frame validation and envelopes.

Pure functions only (no I/O, no clock). Validation failures raise
:class:`~smithers.errors.GatewayError` with the exact code and message of the spec
(docs/protocol.md#quick-reference).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from smithers.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    PROTOCOL_UNSUPPORTED,
    GatewayError,
    PayloadTooLarge,
)
from smithers.gateway.jsvalues import (
    JsonNestingError,
    js_to_number,
    js_truthy,
    json_byte_length,
    loads_strict,
    to_float,
    utf16_length,
)

T = TypeVar("T")

# -- quick reference ------------------------------------------------------------------------
API_VERSION: Final = "v1"
API_VERSION_HEADER: Final = "X-Smithers-API-Version"
JSON_CONTENT_TYPE: Final = "application/json"
COMMON_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    API_VERSION_HEADER: API_VERSION,
}
DEFAULT_PROTOCOL: Final = 1
DEFAULT_FEATURES: Final[tuple[str, ...]] = ("streaming", "runs")
DEFAULT_PORT: Final = 7331
DEFAULT_HEARTBEAT_MS: Final = 15_000
RUN_EVENT_HEARTBEAT_MS: Final = 1_000
DEFAULT_EVENT_WINDOW_SIZE: Final = 10_000
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576
DEFAULT_MAX_PAYLOAD: Final = 1_048_576
DEFAULT_MAX_CONNECTIONS: Final = 1_000
DEFAULT_CONNECT_TIMEOUT_MS: Final = 10_000
DEFAULT_MAX_BUFFERED_BYTES: Final = 8 * 1024 * 1024
UNAUTHENTICATED_BUFFER_BYTES: Final = 256 * 1024
"""What a socket that has not connected may have waiting to be sent (only error frames go to it)."""
MAX_HELLO_BYTES: Final = 960 * 1024
"""The hello frame stays under the 1 MiB message limit of common WebSocket clients."""
DEFAULT_HEADERS_TIMEOUT_MS: Final = 30_000
DEFAULT_REQUEST_TIMEOUT_MS: Final = 60_000
MAX_FRAME_DEPTH: Final = 32
MAX_FRAME_ARRAY_LENGTH: Final = 256
MAX_FRAME_STRING_LENGTH: Final = 16_384
MAX_METHOD_LENGTH: Final = 64
MAX_FRAME_ID_LENGTH: Final = 128
MAX_RUN_INPUT_BYTES: Final = 1_048_576
MAX_RUN_INPUT_DEPTH: Final = 32
DEFAULT_LIMIT: Final = 50

FRAME_REQ: Final = "req"
FRAME_RES: Final = "res"
FRAME_EVENT: Final = "event"
CONNECT_METHOD: Final = "connect"
FRAME_FIELD: Final = "gateway frame"

METHOD_PATTERN: Final = re.compile(r"[a-z][a-zA-Z0-9]*(?:\.[a-z][a-zA-Z0-9]*)*")
"""The method-name pattern (use ``fullmatch``; ``^…$`` in Python would accept a trailing newline)."""


def poll_interval_ms(heartbeat_ms: int) -> int:
    """How often the cron scheduler and the wait sweeper poll: ``max(1000, min(heartbeatMs, 15000))``."""
    return max(1_000, min(heartbeat_ms, 15_000))


# -- frame bounds -------------------------------------------------------------------------
def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list | tuple)


def _children(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list | tuple):
        return list(value)
    return None


def _bound_violation(item: Any, field: str) -> GatewayError | None:
    """The size or finiteness violation of one value (not its depth), or None."""
    kind = type(item)
    if kind is str:
        if len(item) > MAX_FRAME_STRING_LENGTH // 2 and utf16_length(item) > MAX_FRAME_STRING_LENGTH:
            return GatewayError(
                INVALID_INPUT, f"{field} contains a string exceeding {MAX_FRAME_STRING_LENGTH} characters."
            )
    elif kind is float:
        if not math.isfinite(item):
            return GatewayError(INVALID_INPUT, f"{field} must contain only finite numbers.")
    elif (kind is list or kind is tuple) and len(item) > MAX_FRAME_ARRAY_LENGTH:
        return GatewayError(INVALID_INPUT, f"{field} contains an array exceeding {MAX_FRAME_ARRAY_LENGTH} items.")
    return None


def check_frame_bounds(value: Any, field: str = FRAME_FIELD) -> None:
    """Enforce the frame bounds: a too-deep value first, else the first other violation in document order.

    One pre-order walk: a depth violation is raised as soon as it is seen (it wins wherever it is);
    the first other violation is remembered and raised at the end. The walk recurses at most
    ``MAX_FRAME_DEPTH`` levels, since deeper is already a violation.
    """
    first = _walk_bounds(value, 1, field, None)
    if first is not None:
        raise first


def _walk_bounds(item: Any, depth: int, field: str, first: GatewayError | None) -> GatewayError | None:
    kind = type(item)
    if kind is dict:
        children: Any = item.values()
    elif kind is list or kind is tuple:
        if first is None and len(item) > MAX_FRAME_ARRAY_LENGTH:
            first = _bound_violation(item, field)
        children = item
    else:
        if first is None and (kind is str or kind is float):
            first = _bound_violation(item, field)
        return first
    if not children:
        return first
    if depth >= MAX_FRAME_DEPTH:
        raise GatewayError(INVALID_INPUT, f"{field} exceeds the maximum JSON depth of {MAX_FRAME_DEPTH}.")
    for child in children:
        kind = type(child)
        if kind is dict or kind is list or kind is tuple:
            first = _walk_bounds(child, depth + 1, field, first)
        elif first is None and (kind is str or kind is float):
            first = _bound_violation(child, field)
    return first


def _too_deep() -> GatewayError:
    return GatewayError(INVALID_INPUT, f"{FRAME_FIELD} exceeds the maximum JSON depth of {MAX_FRAME_DEPTH}.")


def _invalid_json() -> GatewayError:
    return GatewayError(INVALID_INPUT, "Gateway RPC payload must be valid JSON.")


def parse_rpc_json(text: str) -> Any:
    """Parse an RPC payload; a too-deep text fails like a too-deep frame (docs/protocol.md#frame-bounds).

    Python's parser cannot follow arbitrarily deep nesting; such text is necessarily deeper than
    the frame limit, so it gets the depth message the reference gives after parsing it.
    """
    try:
        return loads_strict(text)
    except JsonNestingError as exc:
        raise _too_deep() from exc
    except ValueError as exc:
        raise _invalid_json() from exc


# -- method names, frame ids --------------------------------------------------------------
def validate_method(value: Any) -> str:
    """Return a valid method name or raise ``INVALID_INPUT``; length is in UTF-16 units.

    See docs/protocol.md#method-names-and-frame-ids.
    """
    if isinstance(value, str) and value in _VALID_METHODS:
        return value
    return _validate_method(value)


_VALID_METHODS: Final[set[str]] = set()
"""Method names already found valid (bounded: only the first 4 096 are kept)."""


def _validate_method(value: Any) -> str:
    if not isinstance(value, str):
        raise GatewayError(INVALID_INPUT, "Gateway method name must be a string.")
    if utf16_length(value) > MAX_METHOD_LENGTH:
        raise GatewayError(INVALID_INPUT, f"method exceeds the maximum length of {MAX_METHOD_LENGTH} characters.")
    if METHOD_PATTERN.fullmatch(value) is None:
        raise GatewayError(INVALID_INPUT, "Gateway method name is invalid.")
    if len(_VALID_METHODS) < 4096:
        _VALID_METHODS.add(value)
    return value


def validate_frame_id(value: Any) -> str:
    """Return a valid frame id or raise ``INVALID_INPUT``; length is in UTF-16 units (docs/protocol.md#frames)."""
    if not isinstance(value, str):
        raise GatewayError(INVALID_INPUT, "Gateway frame id must be a string.")
    if utf16_length(value) > MAX_FRAME_ID_LENGTH:
        raise GatewayError(INVALID_INPUT, f"id exceeds the maximum length of {MAX_FRAME_ID_LENGTH} characters.")
    return value


# -- inbound requests --------------------------------------------------------------------------
@dataclass(slots=True)
class RequestFrame:
    """A validated request: id, method and raw params (``None`` when absent or null)."""

    id: str
    method: str
    params: Any = None


def parse_ws_frame(message: str | bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> RequestFrame:
    """Validate one inbound WebSocket message in the documented order (docs/protocol.md#inbound-validation).

    On failure the caller answers with id ``errors.WS_INVALID_ID``.
    """
    if isinstance(message, str):
        text, size = message, len(message.encode("utf-8", "surrogatepass"))
    else:  # a binary message is measured as received, before U+FFFD replacement
        text, size = bytes(message).decode("utf-8", "replace"), len(message)
    if size > max_payload:
        raise GatewayError(INVALID_INPUT, f"Gateway RPC payload exceeds {max_payload} bytes.")
    value = parse_rpc_json(text)
    check_frame_bounds(value)
    if not isinstance(value, dict) or value.get("type") != FRAME_REQ:
        raise GatewayError(INVALID_INPUT, "Gateway frame must be a request object.")
    frame_id = validate_frame_id(value.get("id"))
    return RequestFrame(frame_id, validate_method(value.get("method")), value.get("params"))


def payload_too_large(limit: int) -> GatewayError:
    """The error for an HTTP or webhook body over ``maxBodyBytes`` (413)."""
    return GatewayError(PayloadTooLarge, f"Gateway request payload exceeds {limit} bytes.")


def parse_http_body(raw: bytes) -> dict[str, Any]:
    """An already size-checked RPC body: parse, require an object, bound it (docs/protocol.md#post-rpc)."""
    if not raw:
        return {}
    text = raw.decode("utf-8", "replace")
    try:
        value = loads_strict(text)
    except JsonNestingError as exc:
        # Too deep to parse: the reference would parse it, then check "is an object" (step 4)
        # before the bounds (step 5), so only an object gets the depth message.
        if text.lstrip(" \t\n\r").startswith("{"):
            raise _too_deep() from exc
        raise GatewayError(INVALID_REQUEST, "RPC body must be a JSON object") from exc
    except ValueError as exc:
        raise _invalid_json() from exc
    if not isinstance(value, dict):
        raise GatewayError(INVALID_REQUEST, "RPC body must be a JSON object")
    check_frame_bounds(value)
    return value


def http_rpc_request(body: Mapping[str, Any], request_id: str, path_method: str | None = None) -> RequestFrame:
    """The method, id (falling back to ``request_id``) and params of an HTTP RPC (docs/protocol.md#post-rpc).

    ``path_method`` is the decoded ``/v1/rpc/{method}`` segment; it wins over ``body.method``,
    and when the body has no ``method`` key the whole body is the params.
    """
    method = validate_method(path_method if path_method is not None else body.get("method"))
    body_id = body.get("id")
    frame_id = validate_frame_id(body_id) if isinstance(body_id, str) else request_id
    params = dict(body) if path_method is not None and "method" not in body else body.get("params")
    return RequestFrame(frame_id, method, params)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Negotiated ``connect`` params (docs/protocol.md#handshake); ``subscribe`` is ``None`` for "no filter"."""

    min_protocol: int
    max_protocol: int
    client: Any
    subscribe: frozenset[str] | None


def _is_json_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_connect_request(params: Any, protocol: int = DEFAULT_PROTOCOL) -> ConnectRequest:
    """Check ``connect`` params in the documented order (docs/protocol.md#handshake); authentication is separate."""
    if not isinstance(params, dict):
        raise GatewayError(INVALID_REQUEST, "Connect params must be an object")
    low, high = params.get("minProtocol"), params.get("maxProtocol")
    if not (_is_json_number(low) and _is_json_number(high) and js_truthy(params.get("client"))):
        raise GatewayError(INVALID_REQUEST, "Connect request is missing protocol negotiation fields")
    min_protocol = positive_int(low, "minProtocol")
    max_protocol = positive_int(high, "maxProtocol")
    if min_protocol > protocol or max_protocol < protocol:
        raise GatewayError(PROTOCOL_UNSUPPORTED, f"Gateway protocol {protocol} is not supported by the client")
    subscribe = params.get("subscribe")
    runs = frozenset(run for run in subscribe if isinstance(run, str)) if isinstance(subscribe, list) else None
    return ConnectRequest(min_protocol, max_protocol, params.get("client"), runs)


# -- value coercion -----------------------------------------------------------------------
def as_object(value: Any) -> dict[str, Any] | None:
    """A JSON object, else ``None``."""
    return value if isinstance(value, dict) else None


def as_params(value: Any) -> dict[str, Any]:
    """Request params: a JSON object, else ``{}``."""
    return value if isinstance(value, dict) else {}


def as_string(value: Any) -> str | None:
    """A JSON string (``""`` included), else ``None``."""
    return value if isinstance(value, str) else None


def as_number(value: Any) -> int | float | None:
    """A finite JSON number, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(to_float(value)) else None


def as_boolean(value: Any) -> bool | None:
    """JSON ``true``/``false``, else ``None``."""
    return value if isinstance(value, bool) else None


MAX_SAFE_INTEGER: Final = 2**53 - 1
"""JavaScript's ``Number.MAX_SAFE_INTEGER``: the largest count a client can express exactly."""


def positive_int(value: Any, field: str) -> int:
    """``Number(value)`` as a positive integer, else ``INVALID_INPUT`` (numeric strings pass).

    Values above ``MAX_SAFE_INTEGER`` are refused too: the reference hands them to the database,
    which fails (docs/protocol.md#departures-from-0180).
    """
    number = js_to_number(value)
    if not math.isfinite(number) or number <= 0:
        raise GatewayError(INVALID_INPUT, f"{field} must be a finite number greater than 0.")
    if not number.is_integer():
        raise GatewayError(INVALID_INPUT, f"{field} must be an integer greater than 0.")
    if number > MAX_SAFE_INTEGER:
        raise GatewayError(INVALID_INPUT, f"{field} must be at most {MAX_SAFE_INTEGER}.")
    return int(number)


def optional_positive_int(value: Any, field: str) -> int | None:
    """Like :func:`positive_int` but ``None`` (null or absent) is missing."""
    return None if value is None else positive_int(value, field)


def read_alias(params: Mapping[str, Any], key: str, coerce: Callable[[Any], T | None], *nested: str) -> T | None:
    """Typed alias read: coerce ``params[key]``, then ``params[n][key]`` for each ``n`` in order."""
    found = coerce(params.get(key))
    for container in nested:
        if found is not None:
            break
        inner = as_object(params.get(container))
        found = coerce(inner.get(key)) if inner is not None else None
    return found


def read_limit(params: Mapping[str, Any], default: int = DEFAULT_LIMIT) -> int:
    """``limit`` (raw value first, ``filter.limit`` when null/absent), validated afterwards."""
    raw = params.get("limit")
    if raw is None:
        inner = as_object(params.get("filter"))
        raw = inner.get("limit") if inner is not None else None
    limit = optional_positive_int(raw, "limit")
    return default if limit is None else limit


# -- run input ----------------------------------------------------------------------------
def input_depth(value: Any) -> int:
    """Nesting depth of a run input: objects/arrays count one level, primitives none."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = _children(item)
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if _is_container(child))
    return deepest


def validate_run_input(value: Any) -> dict[str, Any]:
    """Return the run input (non-objects become ``{}``) or raise ``INVALID_INPUT`` (see docs/protocol.md).

    Size is the byte length of the ``JSON.stringify`` text (numbers formatted as JavaScript
    does), so a value near the limit is judged as the reference judges it.
    """
    if not isinstance(value, dict):
        return {}
    if json_byte_length(value) > MAX_RUN_INPUT_BYTES:
        raise GatewayError(INVALID_INPUT, f"Gateway RPC input exceeds {MAX_RUN_INPUT_BYTES} bytes.")
    if input_depth(value) > MAX_RUN_INPUT_DEPTH:
        raise GatewayError(
            INVALID_INPUT, f"Gateway RPC input exceeds the maximum nesting depth of {MAX_RUN_INPUT_DEPTH}."
        )
    return value


# -- envelopes ----------------------------------------------------------------------------
def error_object(error: GatewayError, *, versioned: bool = True) -> dict[str, Any]:
    """The wire ``error``: ``{version?, code, message?, ...details}``.

    Details are merged after the fixed keys and never replace ``version``, ``code`` or
    ``message`` (the spec only says details come after them; a handler never supplies those).
    """
    body: dict[str, Any] = {"version": API_VERSION} if versioned else {}
    body["code"] = error.code
    body["message"] = error.message
    for key, value in (error.details or {}).items():
        if key not in ("version", "code", "message"):
            body[key] = value
    return body


def response_frame(frame_id: str, payload: Any) -> dict[str, Any]:
    """A successful ``res`` frame (also the HTTP RPC body)."""
    return {"type": FRAME_RES, "id": frame_id, "ok": True, "apiVersion": API_VERSION, "payload": payload}


def error_frame(frame_id: str, error: GatewayError) -> dict[str, Any]:
    """A failed ``res`` frame (also the HTTP RPC body; status is ``error.http_status``)."""
    return {
        "type": FRAME_RES,
        "id": frame_id,
        "ok": False,
        "apiVersion": API_VERSION,
        "error": error_object(error),
    }


def event_frame(event: str, payload: Any, *, seq: int, state_version: int) -> dict[str, Any]:
    """An ``event`` frame with the connection ``seq`` and global ``stateVersion``."""
    return {
        "type": FRAME_EVENT,
        "event": event,
        "payload": payload,
        "seq": seq,
        "stateVersion": state_version,
        "apiVersion": API_VERSION,
    }


def route_not_found_body() -> dict[str, Any]:
    """The fallback 404 body (docs/protocol.md#404-fallback): no ``ok``, no ``apiVersion``."""
    return {"error": {"code": NOT_FOUND, "message": "Route not found"}}


def webhook_error_body(error: GatewayError) -> dict[str, Any]:
    """The webhook failure body (docs/protocol.md#webhooks): ``{"ok": false, "error": {code, message}}``."""
    return {"ok": False, "error": error_object(error, versioned=False)}
