"""smithers: durable, observable, human-in-the-loop workflows.

The public surface is what ``__all__`` lists; everything else is internal.
"""

from typing import TYPE_CHECKING, Any

from smithers.api import run, run_async
from smithers.engine.attempt import heartbeat
from smithers.engine.context import Ctx
from smithers.engine.control import approve_node, cancel_run, deny_node, signal_run
from smithers.engine.dsl import (
    Approval,
    Branch,
    Loop,
    Parallel,
    RetryPolicy,
    Sequence,
    Task,
    Timer,
    WaitForEvent,
)
from smithers.engine.runner import RunResult
from smithers.engine.workflow import Workflow, workflow
from smithers.errors import SmithersError
from smithers.store.store import Store

if TYPE_CHECKING:
    from smithers.gateway.server import Gateway

__all__ = [
    "Approval",
    "Branch",
    "Ctx",
    "Gateway",
    "Loop",
    "Parallel",
    "RetryPolicy",
    "RunResult",
    "Sequence",
    "SmithersError",
    "Store",
    "Task",
    "Timer",
    "WaitForEvent",
    "Workflow",
    "approve_node",
    "cancel_run",
    "deny_node",
    "heartbeat",
    "run",
    "run_async",
    "signal_run",
    "workflow",
]


def __getattr__(name: str) -> Any:
    """``smithers.Gateway`` is imported on first use, so the engine and CLI start without the server stack."""
    if name == "Gateway":
        from smithers.gateway.server import Gateway

        return Gateway
    raise AttributeError(f"module 'smithers' has no attribute {name!r}")
