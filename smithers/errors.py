"""Engine errors.

The tree::

    SmithersError                 every engine failure; carries a wire ``code``
    ├── InvalidInputError         INVALID_INPUT: bad workflow input or bad call arguments
    ├── InvalidOutputError        INVALID_OUTPUT: a task returned something its model refuses
    ├── GraphError                DUPLICATE_ID, NESTED_LOOP, TASK_ID_REQUIRED, ...: a bad tree
    ├── RunNotFoundError          RUN_NOT_FOUND
    ├── RunOwnershipError         RUN_OWNER_ALIVE, RUN_STILL_RUNNING, RUN_RESUME_CLAIM_FAILED
    └── TaskTimeoutError          TASK_TIMEOUT

    RunCancelled(BaseException)   cancellation; user code cannot swallow it with ``except Exception``

Errors stored on runs and attempts are ``SmithersError.to_dict()`` JSON, and
``SmithersError.from_dict`` restores an equal error.
"""

from __future__ import annotations

from typing import Any

# Error codes (wire strings).
INVALID_INPUT = "INVALID_INPUT"
INVALID_OUTPUT = "INVALID_OUTPUT"
TASK_ID_REQUIRED = "TASK_ID_REQUIRED"
DUPLICATE_ID = "DUPLICATE_ID"
NESTED_LOOP = "NESTED_LOOP"
RESERVED_ID = "RESERVED_ID"
TASK_TIMEOUT = "TASK_TIMEOUT"
TASK_FAILED = "TASK_FAILED"
TASK_HEARTBEAT_TIMEOUT = "TASK_HEARTBEAT_TIMEOUT"
HEARTBEAT_PAYLOAD_TOO_LARGE = "HEARTBEAT_PAYLOAD_TOO_LARGE"
HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE = "HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE"
MISSING_OUTPUT = "MISSING_OUTPUT"
RALPH_MAX_REACHED = "RALPH_MAX_REACHED"
APPROVAL_DENIED = "APPROVAL_DENIED"
APPROVAL_OPTIONS_REQUIRED = "APPROVAL_OPTIONS_REQUIRED"
RUN_NOT_FOUND = "RUN_NOT_FOUND"
RUN_NOT_RESUMABLE = "RUN_NOT_RESUMABLE"
RUN_OWNER_ALIVE = "RUN_OWNER_ALIVE"
RUN_STILL_RUNNING = "RUN_STILL_RUNNING"
RUN_RESUME_CLAIM_FAILED = "RUN_RESUME_CLAIM_FAILED"
RUN_ALREADY_EXISTS = "RUN_ALREADY_EXISTS"
RUN_NOT_ACTIVE = "RUN_NOT_ACTIVE"
RUN_CANCELLED = "RUN_CANCELLED"
NO_PENDING_APPROVALS = "NO_PENDING_APPROVALS"
AMBIGUOUS_APPROVAL = "AMBIGUOUS_APPROVAL"
AGENT_NOT_AVAILABLE = "AGENT_NOT_AVAILABLE"
DB_ERROR = "DB_ERROR"
WORKFLOW_NOT_FOUND = "WORKFLOW_NOT_FOUND"


class SmithersError(Exception):
    """An engine failure with a stable wire code."""

    default_code = TASK_FAILED

    def __init__(self, message: str, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``error_json`` columns and sent on the wire."""
        out: dict[str, Any] = {"name": type(self).__name__, "code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmithersError:
        """Rebuild an error stored with :meth:`to_dict`."""
        by_name = {c.__name__: c for c in _all_subclasses(SmithersError)}
        klass = by_name.get(str(data.get("name")), SmithersError)
        return klass(str(data.get("message", "")), code=data.get("code"), details=data.get("details"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SmithersError) and self.to_dict() == other.to_dict()

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

    def __init__(self, run_id: str):
        super().__init__(f"Run not found: {run_id}", details={"runId": run_id})


class RunOwnershipError(SmithersError):
    default_code = RUN_OWNER_ALIVE


class TaskTimeoutError(SmithersError):
    default_code = TASK_TIMEOUT


class RunCancelled(BaseException):
    """Raised inside a run or task when it is cancelled; derives from BaseException on purpose."""


def error_from_exception(exc: BaseException) -> SmithersError:
    """Wrap any exception raised by user code as a SmithersError (keeping SmithersErrors as they are)."""
    if isinstance(exc, SmithersError):
        return exc
    message = str(exc) or type(exc).__name__
    return SmithersError(message, code=TASK_FAILED, details={"exception": type(exc).__name__})
