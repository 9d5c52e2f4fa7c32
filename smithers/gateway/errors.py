"""Gateway error codes, their HTTP statuses, and the one gateway exception.

Every wire error code is a constant below whose Python name *is* the code, so
``errors.RunNotFound == "RunNotFound"`` and ``errors.INVALID_INPUT == "INVALID_INPUT"``.

Exception tree::

    Exception
     └── GatewayError(code, message=None, details=None)
            .http_status  = http_status_for(code)

    HTTP status of a code (statusForRpcError, protocol §3.6 with §23 D1):
     ├── 400  INVALID_REQUEST InvalidRequest INVALID_FRAME INVALID_INPUT InvalidInput
     │        INVALID_JSON PROTOCOL_UNSUPPORTED InvalidRunId InvalidNodeId InvalidIteration
     │        InvalidDelta InvalidFrameNo ConfirmationRequired FrameOutOfRange SeqOutOfRange
     ├── 401  UNAUTHORIZED Unauthorized
     ├── 403  FORBIDDEN Forbidden
     ├── 404  NOT_FOUND METHOD_NOT_FOUND RunNotFound NodeNotFound AttemptNotFound
     │        IterationNotFound NodeHasNoOutput
     ├── 409  AttemptNotFinished Busy AlreadyDecided RUN_NOT_ACTIVE
     ├── 413  DiffTooLarge PayloadTooLarge PAYLOAD_TOO_LARGE
     ├── 429  RateLimited BackpressureDisconnect
     ├── 501  UnsupportedSandbox
     └── 500  everything else (SERVER_ERROR VcsError RewindFailed CronNotFound ...)

Exceptions that are not ``GatewayError`` are translated at the transport boundary by
:func:`http_error_for` and :func:`ws_error_for` (§3.5).
"""

from __future__ import annotations

from typing import Any, Final

# -- upper-case codes (legacy gateway handlers and transports) ---------------------------------
INVALID_REQUEST: Final = "INVALID_REQUEST"
INVALID_INPUT: Final = "INVALID_INPUT"
INVALID_FRAME: Final = "INVALID_FRAME"
INVALID_JSON: Final = "INVALID_JSON"
UNAUTHORIZED: Final = "UNAUTHORIZED"
FORBIDDEN: Final = "FORBIDDEN"
NOT_FOUND: Final = "NOT_FOUND"
METHOD_NOT_FOUND: Final = "METHOD_NOT_FOUND"
RUN_NOT_ACTIVE: Final = "RUN_NOT_ACTIVE"
SERVER_ERROR: Final = "SERVER_ERROR"
PROTOCOL_UNSUPPORTED: Final = "PROTOCOL_UNSUPPORTED"
PAYLOAD_TOO_LARGE: Final = "PAYLOAD_TOO_LARGE"

# -- contract codes (DevTools, streams, node output/diff, rewind, approvals) -------------------
Unauthorized: Final = "Unauthorized"
Forbidden: Final = "Forbidden"
InvalidRequest: Final = "InvalidRequest"
InvalidInput: Final = "InvalidInput"
RunNotFound: Final = "RunNotFound"
NodeNotFound: Final = "NodeNotFound"
AttemptNotFound: Final = "AttemptNotFound"
IterationNotFound: Final = "IterationNotFound"
NodeHasNoOutput: Final = "NodeHasNoOutput"
InvalidRunId: Final = "InvalidRunId"
InvalidNodeId: Final = "InvalidNodeId"
InvalidIteration: Final = "InvalidIteration"
InvalidDelta: Final = "InvalidDelta"
InvalidFrameNo: Final = "InvalidFrameNo"
ConfirmationRequired: Final = "ConfirmationRequired"
FrameOutOfRange: Final = "FrameOutOfRange"
SeqOutOfRange: Final = "SeqOutOfRange"
AttemptNotFinished: Final = "AttemptNotFinished"
Busy: Final = "Busy"
AlreadyDecided: Final = "AlreadyDecided"
DiffTooLarge: Final = "DiffTooLarge"
PayloadTooLarge: Final = "PayloadTooLarge"
RateLimited: Final = "RateLimited"
BackpressureDisconnect: Final = "BackpressureDisconnect"
UnsupportedSandbox: Final = "UnsupportedSandbox"
VcsError: Final = "VcsError"
RewindFailed: Final = "RewindFailed"
WorkingTreeDirty: Final = "WorkingTreeDirty"
MalformedOutputRow: Final = "MalformedOutputRow"
SchemaConversionError: Final = "SchemaConversionError"
CronNotFound: Final = "CronNotFound"
Internal: Final = "Internal"
# Only used by the later ticket methods (§19), which 0.18.0 does not have; it keeps the 0.18.0
# mapping (500) until those methods exist.
TicketNotFound: Final = "TicketNotFound"

_STATUS_BY_CODE: Final[dict[str, int]] = {
    **dict.fromkeys((UNAUTHORIZED, Unauthorized), 401),
    **dict.fromkeys((FORBIDDEN, Forbidden), 403),
    **dict.fromkeys(
        (
            NOT_FOUND,
            METHOD_NOT_FOUND,
            RunNotFound,
            NodeNotFound,
            AttemptNotFound,
            IterationNotFound,
            NodeHasNoOutput,
        ),
        404,
    ),
    **dict.fromkeys(
        (
            INVALID_REQUEST,
            InvalidRequest,
            INVALID_FRAME,
            INVALID_INPUT,
            InvalidInput,
            # INVALID_JSON only comes from the uncoded-HTTP rule of §3.5, which fixes it at 400.
            INVALID_JSON,
            PROTOCOL_UNSUPPORTED,
            InvalidRunId,
            InvalidNodeId,
            InvalidIteration,
            InvalidDelta,
            InvalidFrameNo,
            ConfirmationRequired,
            FrameOutOfRange,
            SeqOutOfRange,
        ),
        400,
    ),
    # RUN_NOT_ACTIVE is 500 in 0.18.0; ours is 409 (§23 D1).
    **dict.fromkeys((AttemptNotFinished, Busy, AlreadyDecided, RUN_NOT_ACTIVE), 409),
    **dict.fromkeys((DiffTooLarge, PayloadTooLarge, PAYLOAD_TOO_LARGE), 413),
    **dict.fromkeys((RateLimited, BackpressureDisconnect), 429),
    UnsupportedSandbox: 501,
}

ALL_CODES: Final[frozenset[str]] = frozenset(
    value for name, value in dict(globals()).items() if isinstance(value, str) and name == value
)
"""Every wire error code this module defines."""

WS_INVALID_ID: Final = "invalid"
"""Response id for frames that fail validation and for coded errors escaping a handler."""
WS_SERVER_ID: Final = "server"
"""Response id for uncoded errors escaping a handler over WebSocket."""
SERVER_FAILURE_MESSAGE: Final = "Gateway request failed"
DOCS_URL_SUFFIX: Final = " See https://smithers.sh/reference/errors"


def http_status_for(code: str) -> int:
    """HTTP status for an error code (statusForRpcError); unknown codes are 500."""
    return _STATUS_BY_CODE.get(code, 500)


class GatewayError(Exception):
    """A failure reported on the wire as ``{code, message?, ...details}``."""

    def __init__(self, code: str, message: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message if message is not None else code)
        self.code = code
        self.message = message
        self.details = details

    @property
    def http_status(self) -> int:
        """The HTTP status this error maps to."""
        return http_status_for(self.code)

    def __repr__(self) -> str:
        return f"GatewayError({self.code!r}, {self.message!r}, {self.details!r})"


def coded_error(exc: BaseException) -> GatewayError | None:
    """The coded view of ``exc`` (§3.5), or ``None`` when it carries no code.

    A ``GatewayError`` is returned as is. Another exception counts as coded when it has a
    non-empty string attribute ``code``; its wire message is its ``summary`` attribute when that
    is a string, else its string ``message`` attribute without the docs-URL suffix, else absent.
    (The reference treats any object with ``code`` and ``message`` properties as coded; Python
    exceptions have no ``message`` property by convention, so the string ``code`` decides here.)
    """
    if isinstance(exc, GatewayError):
        return exc
    code = getattr(exc, "code", None)
    if not isinstance(code, str) or not code:
        return None
    summary = getattr(exc, "summary", None)
    if not isinstance(summary, str):
        message = getattr(exc, "message", None)
        summary = message.removesuffix(DOCS_URL_SUFFIX) if isinstance(message, str) else None
    return GatewayError(code, summary)


def _uncoded_message(exc: BaseException) -> str:
    return str(exc) or SERVER_FAILURE_MESSAGE


def http_error_for(exc: BaseException) -> GatewayError:
    """The error an HTTP RPC answers for an exception escaping a handler (§3.5)."""
    coded = coded_error(exc)
    if coded is not None:
        return coded
    message = _uncoded_message(exc)
    if "valid JSON" in message:
        return GatewayError(INVALID_JSON, message)
    if "exceeds" in message:
        return GatewayError(PAYLOAD_TOO_LARGE, message)
    return GatewayError(SERVER_ERROR, message)


def ws_error_for(exc: BaseException) -> tuple[str, GatewayError]:
    """The ``(response id, error)`` a WebSocket answers for an escaping exception (§3.5)."""
    coded = coded_error(exc)
    if coded is not None:
        return WS_INVALID_ID, coded
    return WS_SERVER_ID, GatewayError(SERVER_ERROR, _uncoded_message(exc))
