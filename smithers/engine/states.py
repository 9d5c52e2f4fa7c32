"""Run statuses, node states and attempt states (docs/engine.md#statuses-and-states): the wire strings."""

from __future__ import annotations

# Run statuses.
RUNNING = "running"
WAITING_APPROVAL = "waiting-approval"
WAITING_EVENT = "waiting-event"
WAITING_TIMER = "waiting-timer"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
CONTINUED = "continued"

RUN_STATUSES = (RUNNING, WAITING_APPROVAL, WAITING_EVENT, WAITING_TIMER, FINISHED, FAILED, CANCELLED, CONTINUED)
TERMINAL_RUN_STATUSES = frozenset({FINISHED, FAILED, CANCELLED, CONTINUED})
WAITING_RUN_STATUSES = frozenset({WAITING_APPROVAL, WAITING_EVENT, WAITING_TIMER})
ACTIVE_RUN_STATUSES = frozenset({RUNNING, *WAITING_RUN_STATUSES})
ACTIVE_RUN_STATUS_LIST = tuple(sorted(ACTIVE_RUN_STATUSES))

# Node states (FINISHED, FAILED, CANCELLED and the WAITING_* strings are shared with run statuses).
PENDING = "pending"
IN_PROGRESS = "in-progress"
SKIPPED = "skipped"

NODE_STATES = (
    PENDING,
    WAITING_APPROVAL,
    WAITING_EVENT,
    WAITING_TIMER,
    IN_PROGRESS,
    FINISHED,
    FAILED,
    CANCELLED,
    SKIPPED,
)
WAITING_NODE_STATES = frozenset({WAITING_APPROVAL, WAITING_EVENT, WAITING_TIMER})

# Approval statuses.
APPROVAL_REQUESTED = "requested"
APPROVAL_APPROVED = "approved"
APPROVAL_DENIED = "denied"


def statuses_matching(status: str) -> list[str]:
    """The run statuses a status filter selects: ``running`` also selects ``continued`` (JavaScript parity)."""
    return [RUNNING, CONTINUED] if status == RUNNING else [status]


# NodeCancelled reasons: an attempt stopped mid-flight, or a wait ended with its run.
ABORTED = "aborted"
RUN_CANCELLED_REASON = "run-cancelled"
RUN_FAILED_REASON = "run-failed"
UNMOUNTED = "unmounted"
