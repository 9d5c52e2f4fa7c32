"""smithers: durable, observable, human-in-the-loop workflows.

The public surface is what ``__all__`` lists; everything else is internal.
"""

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

__all__ = [
    "Approval",
    "Branch",
    "Ctx",
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
