"""Every error smithers raises, its wire code and its HTTP status.

The tree::

    SmithersError                   root; .code, .message, .details; .wire_code and .http_status
    ├── InvalidInputError           INVALID_INPUT (400): bad workflow input or bad call arguments
    ├── InvalidOutputError          INVALID_OUTPUT: a task returned something its model refuses
    ├── GraphError                  DUPLICATE_ID, NESTED_LOOP, TASK_ID_REQUIRED, ...: a bad tree
    ├── RunNotFoundError            RUN_NOT_FOUND (NOT_FOUND, 404 on the gateway)
    ├── RunExistsError              RUN_ALREADY_EXISTS (INVALID_REQUEST, 400 on the gateway)
    ├── RunActiveError              CONFLICT (409): a run with that id is still active
    ├── RunNotActiveError           RUN_NOT_ACTIVE (409)
    ├── RunOwnershipError           RUN_OWNER_ALIVE, RUN_STILL_RUNNING, RUN_RESUME_CLAIM_FAILED
    ├── TaskTimeoutError            TASK_TIMEOUT
    ├── AgentError                  AGENT_FAILED: an agent (model API or CLI) failed to answer
    │   ├── AgentAuthError          AGENT_AUTH_FAILED: its credentials were refused or are missing
    │   └── AgentRateLimitError     AGENT_RATE_LIMITED: the provider kept answering 429 (too many requests)
    ├── TokenBudgetExceededError    TOKEN_BUDGET_EXCEEDED: the run used up its token budget
    ├── AgentConfigError            AGENT_CONFIG_INVALID: an agent task or agent cannot be used as written
    ├── DatabaseError               DB_ERROR: a database cannot be opened or used
    ├── GatewayError                a refusal answered to a gateway client, with any wire code below
    └── ServerError                 SERVER_ERROR (500): a failure answered without a code of its own

    RunCancelled(BaseException)     cancellation; user code cannot swallow it with ``except Exception``

Wire codes come in the protocol's two spellings: the legacy methods answer ``UPPER_SNAKE`` codes
(``NOT_FOUND``), the contract methods ``PascalCase`` ones (``RunNotFound``). Each is defined once
below and imported wherever it is raised. ``http_status_for`` is the one status table (see
docs/protocol.md#envelopes-and-errors).

How a gateway client sees an error (docs/protocol.md#envelopes-and-errors): a :class:`GatewayError`
is *returned* (answered with the request id); other errors *escape* their handler (over
WebSocket, id ``"invalid"``); :class:`ServerError` and exceptions that are not SmithersErrors
are *uncoded* (``SERVER_ERROR``, id ``"server"``).

Errors stored on runs and attempts are ``to_dict()`` JSON, and ``SmithersError.from_dict``
restores an equal error of the same class.
"""

from __future__ import annotations

import traceback
from typing import Any, ClassVar, Final

# -- engine codes (stored on runs and attempts, printed by the CLI) ----------------------------
INVALID_INPUT: Final = "INVALID_INPUT"
INVALID_OUTPUT: Final = "INVALID_OUTPUT"
TASK_ID_REQUIRED: Final = "TASK_ID_REQUIRED"
DUPLICATE_ID: Final = "DUPLICATE_ID"
NESTED_LOOP: Final = "NESTED_LOOP"
RESERVED_ID: Final = "RESERVED_ID"
INVALID_NODE: Final = "INVALID_NODE"
RENDER_FAILED: Final = "RENDER_FAILED"
DEPENDENCY_NOT_MOUNTED: Final = "DEPENDENCY_NOT_MOUNTED"
TASK_TIMEOUT: Final = "TASK_TIMEOUT"
TASK_FAILED: Final = "TASK_FAILED"
TASK_HEARTBEAT_TIMEOUT: Final = "TASK_HEARTBEAT_TIMEOUT"
ATTEMPT_ABANDONED: Final = "ATTEMPT_ABANDONED"
HEARTBEAT_PAYLOAD_TOO_LARGE: Final = "HEARTBEAT_PAYLOAD_TOO_LARGE"
HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE: Final = "HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE"
MISSING_OUTPUT: Final = "MISSING_OUTPUT"
RALPH_MAX_REACHED: Final = "RALPH_MAX_REACHED"
APPROVAL_DENIED: Final = "APPROVAL_DENIED"
APPROVAL_OPTIONS_REQUIRED: Final = "APPROVAL_OPTIONS_REQUIRED"
RUN_NOT_FOUND: Final = "RUN_NOT_FOUND"
RUN_NOT_RESUMABLE: Final = "RUN_NOT_RESUMABLE"
RUN_OWNER_ALIVE: Final = "RUN_OWNER_ALIVE"
RUN_RESUME_CLAIM_FAILED: Final = "RUN_RESUME_CLAIM_FAILED"
RUN_ALREADY_EXISTS: Final = "RUN_ALREADY_EXISTS"
RUN_NOT_ACTIVE: Final = "RUN_NOT_ACTIVE"
NO_PENDING_APPROVALS: Final = "NO_PENDING_APPROVALS"
AMBIGUOUS_APPROVAL: Final = "AMBIGUOUS_APPROVAL"
NOT_WAITING_FOR_APPROVAL: Final = "NOT_WAITING_FOR_APPROVAL"
AGENT_FAILED: Final = "AGENT_FAILED"
AGENT_AUTH_FAILED: Final = "AGENT_AUTH_FAILED"
AGENT_CONFIG_INVALID: Final = "AGENT_CONFIG_INVALID"
AGENT_RATE_LIMITED: Final = "AGENT_RATE_LIMITED"
TOKEN_BUDGET_EXCEEDED: Final = "TOKEN_BUDGET_EXCEEDED"
DB_ERROR: Final = "DB_ERROR"
WORKFLOW_NOT_FOUND: Final = "WORKFLOW_NOT_FOUND"

# -- gateway codes, legacy spelling --------------------------------------------------------------
INVALID_REQUEST: Final = "INVALID_REQUEST"
UNAUTHORIZED: Final = "UNAUTHORIZED"
FORBIDDEN: Final = "FORBIDDEN"
NOT_FOUND: Final = "NOT_FOUND"
METHOD_NOT_FOUND: Final = "METHOD_NOT_FOUND"
CONFLICT: Final = "CONFLICT"
SERVER_ERROR: Final = "SERVER_ERROR"
PROTOCOL_UNSUPPORTED: Final = "PROTOCOL_UNSUPPORTED"

# -- gateway codes, contract spelling ------------------------------------------------------------
RunNotFound: Final = "RunNotFound"
InvalidRunId: Final = "InvalidRunId"
SeqOutOfRange: Final = "SeqOutOfRange"
AlreadyDecided: Final = "AlreadyDecided"
PayloadTooLarge: Final = "PayloadTooLarge"
Internal: Final = "Internal"
# DevTools, node output and node diff (docs/protocol.md#devtools)
InvalidNodeId: Final = "InvalidNodeId"
InvalidIteration: Final = "InvalidIteration"
InvalidDelta: Final = "InvalidDelta"
NodeNotFound: Final = "NodeNotFound"
IterationNotFound: Final = "IterationNotFound"
NodeHasNoOutput: Final = "NodeHasNoOutput"
MalformedOutputRow: Final = "MalformedOutputRow"
FrameOutOfRange: Final = "FrameOutOfRange"
Unauthorized: Final = "Unauthorized"
BackpressureDisconnect: Final = "BackpressureDisconnect"
AttemptNotFound: Final = "AttemptNotFound"
AttemptNotFinished: Final = "AttemptNotFinished"
VcsError: Final = "VcsError"
WorkingTreeDirty: Final = "WorkingTreeDirty"
DiffTooLarge: Final = "DiffTooLarge"
# Rewind (docs/protocol.md#rewind)
InvalidFrameNo: Final = "InvalidFrameNo"
ConfirmationRequired: Final = "ConfirmationRequired"
Busy: Final = "Busy"
RateLimited: Final = "RateLimited"
UnsupportedSandbox: Final = "UnsupportedSandbox"
RewindFailed: Final = "RewindFailed"

_STATUS_BY_CODE: Final[dict[str, int]] = {
    INVALID_REQUEST: 400,
    INVALID_INPUT: 400,
    PROTOCOL_UNSUPPORTED: 400,
    InvalidRunId: 400,
    SeqOutOfRange: 400,
    InvalidNodeId: 400,
    InvalidIteration: 400,
    InvalidDelta: 400,
    InvalidFrameNo: 400,
    ConfirmationRequired: 400,
    FrameOutOfRange: 400,
    UNAUTHORIZED: 401,
    Unauthorized: 401,
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    METHOD_NOT_FOUND: 404,
    RunNotFound: 404,
    NodeNotFound: 404,
    AttemptNotFound: 404,
    IterationNotFound: 404,
    NodeHasNoOutput: 404,
    AttemptNotFinished: 409,
    Busy: 409,
    DiffTooLarge: 413,
    RateLimited: 429,
    BackpressureDisconnect: 429,
    UnsupportedSandbox: 501,
    # RUN_NOT_ACTIVE is 500 in 0.18.0, and CONFLICT has no status there (so 500): both are
    # conflicts, not server faults (docs/protocol.md#departures-from-0180).
    RUN_NOT_ACTIVE: 409,
    CONFLICT: 409,
    AlreadyDecided: 409,
    PayloadTooLarge: 413,
}


ALL_CODES: Final[frozenset[str]] = frozenset(
    value for name, value in dict(globals()).items() if isinstance(value, str) and name == value
)
"""Every code this module defines (each constant above is named after its value)."""


def http_status_for(code: str) -> int:
    """The HTTP status of a wire code (``statusForRpcError``); every code not listed is 500."""
    return _STATUS_BY_CODE.get(code, 500)


class SmithersError(Exception):
    """A failure with a stable wire code.

    ``code`` is what runs store and the CLI prints; ``wire_code`` is how the gateway answers it
    (the same, unless the class says otherwise) and ``http_status`` follows from it.
    """

    default_code: ClassVar[str] = TASK_FAILED
    gateway_code: ClassVar[str | None] = None
    """The wire code the gateway answers instead of ``code`` (None: ``code`` itself)."""
    escapes: bool = True
    """Whether the error escapes its handler (the protocol's "raised" errors) or is returned."""

    def __init__(self, message: str, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details
        self.stack: str | None = None
        """The traceback of the exception this error stands for, when it came from user code."""

    @property
    def wire_code(self) -> str:
        return self.gateway_code or self.code

    @property
    def http_status(self) -> int:
        return http_status_for(self.wire_code)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``error_json`` columns and sent in run events."""
        out: dict[str, Any] = {"name": type(self).__name__, "code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        if self.stack is not None:
            out["stack"] = self.stack
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmithersError:
        """Rebuild an error stored with :meth:`to_dict` (its class, code, message and details)."""
        by_name = {c.__name__: c for c in _all_subclasses(SmithersError)}
        klass = by_name.get(str(data.get("name")), SmithersError)
        error = klass.__new__(klass)  # subclasses' own constructors take other arguments
        SmithersError.__init__(error, str(data.get("message", "")), data.get("code"), data.get("details"))
        stack = data.get("stack")
        error.stack = stack if isinstance(stack, str) else None
        return error

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SmithersError) and type(self) is type(other) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


def _all_subclasses(klass: type[SmithersError]) -> list[type[SmithersError]]:
    out = [klass]
    for sub in klass.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


class InvalidInputError(SmithersError):
    default_code = INVALID_INPUT


class InvalidOutputError(SmithersError):
    default_code = INVALID_OUTPUT


class GraphError(SmithersError):
    default_code = DUPLICATE_ID


class RunNotFoundError(SmithersError):
    default_code = RUN_NOT_FOUND
    gateway_code = NOT_FOUND

    @classmethod
    def of(cls, run_id: str) -> RunNotFoundError:
        return cls(f"Run not found: {run_id}", details={"runId": run_id})


class RunExistsError(SmithersError):
    default_code = RUN_ALREADY_EXISTS
    # A duplicate run id is the caller's mistake: 400 keeps it among launchRun's documented codes.
    gateway_code = INVALID_REQUEST


class RunActiveError(SmithersError):
    """A run with this id exists and is still active (running or waiting)."""

    default_code = CONFLICT


class RunNotActiveError(SmithersError):
    default_code = RUN_NOT_ACTIVE


class RunOwnershipError(SmithersError):
    default_code = RUN_OWNER_ALIVE


class TaskTimeoutError(SmithersError):
    default_code = TASK_TIMEOUT


class AgentError(SmithersError):
    """An agent failed to answer (an API error, a CLI that exited badly). Retryable: the next
    attempt may use the next agent of the task's chain."""

    default_code = AGENT_FAILED


class AgentAuthError(AgentError):
    """An agent's credentials were refused, or are missing. The engine's auth circuit breaker skips
    that agent for the rest of the run (docs/engine.md#agent-tasks)."""

    default_code = AGENT_AUTH_FAILED


class AgentRateLimitError(AgentError):
    """The provider refused a call for too many requests (HTTP 429). Raised by an agent with the
    wait the provider asked for (``retry_after_ms``); the engine waits and calls again, and after
    its last try fails the attempt with it, so the next attempt may use the next agent."""

    default_code = AGENT_RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message, code, details)
        self.retry_after_ms = retry_after_ms


class TokenBudgetExceededError(SmithersError):
    """The run has used up its token budget (``workflow(..., token_budget=N)``). Not retryable: the
    task fails, and so does the run unless it goes on from failures (docs/engine.md#agent-tasks)."""

    default_code = TOKEN_BUDGET_EXCEEDED


class AgentConfigError(SmithersError):
    """An agent task or an agent cannot be used as written (no prompt, a missing optional extra, a
    bad option). Not retryable."""

    default_code = AGENT_CONFIG_INVALID


class DatabaseError(SmithersError):
    default_code = DB_ERROR


class GatewayError(SmithersError):
    """A refusal a gateway handler answers with the request id: ``GatewayError(code, message)``."""

    escapes = False

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message, code, details)


class ServerError(SmithersError):
    """A failure answered as ``SERVER_ERROR`` with this message (the protocol's uncoded errors)."""

    default_code = SERVER_ERROR


class RunCancelled(BaseException):
    """Raised inside a run or task when it is cancelled; derives from BaseException on purpose."""


class AttemptStopped(BaseException):
    """Raised by ``heartbeat()`` in a sync body whose attempt has already ended (timed out, cancelled,
    or its run stopped): the body should stop. A BaseException, so ``except Exception`` lets it through.
    """


MAX_STACK_CHARS: Final = 16_384


def format_stack(exc: BaseException) -> str:
    """The exception's traceback as Python prints it (its last 16 KiB)."""
    text = "".join(traceback.format_exception(exc))
    return text[-MAX_STACK_CHARS:]


def error_from_exception(exc: BaseException) -> SmithersError:
    """Wrap any exception raised by user code as a SmithersError (keeping SmithersErrors as they are)."""
    if isinstance(exc, SmithersError):
        return exc
    message = str(exc) or type(exc).__name__
    error = SmithersError(message, code=TASK_FAILED, details={"exception": type(exc).__name__})
    error.stack = format_stack(exc)
    return error
