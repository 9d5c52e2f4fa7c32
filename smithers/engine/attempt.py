"""Executing one attempt of a task: compute (sync or async) or static, with timeout and
validation; plus the task-side ``heartbeat()`` API and retry backoff arithmetic (docs/engine.md#tasks-and-attempts).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from smithers.engine.agent import AgentAttempt, agent_heartbeat_ms, run_agent
from smithers.engine.bodies import BODY_THREADS
from smithers.engine.context import Ctx
from smithers.engine.dsl import RetryPolicy, Task
from smithers.engine.vcs import Vcs
from smithers.errors import (
    AGENT_CONFIG_INVALID,
    HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE,
    HEARTBEAT_PAYLOAD_TOO_LARGE,
    INVALID_OUTPUT,
    TASK_HEARTBEAT_TIMEOUT,
    TOKEN_BUDGET_EXCEEDED,
    AttemptStopped,
    InvalidOutputError,
    SmithersError,
    TaskTimeoutError,
)

log = logging.getLogger(__name__)

HEARTBEAT_THROTTLE_MS = 500
HEARTBEAT_MAX_BYTES = 1_000_000
MAX_BACKOFF_MS = 5 * 60 * 1000
WORK_SETTLE_S = 5.0
"""How long a stopped attempt waits for its work to finish cleaning up (a sync body does not wait)."""
NON_RETRYABLE_CODES = frozenset(
    {
        INVALID_OUTPUT,
        AGENT_CONFIG_INVALID,
        TOKEN_BUDGET_EXCEEDED,
        HEARTBEAT_PAYLOAD_TOO_LARGE,
        HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE,
    }
)


@dataclass
class TaskRuntime:
    """What a running attempt can reach through :func:`heartbeat`."""

    node_id: str
    iteration: int
    attempt: int
    on_heartbeat: Callable[[Any, int], None]
    last_beat_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    body: Future[Any] | None = None
    """The thread running a sync body, which may outlive the attempt (Python cannot stop a thread)."""
    ended: bool = False
    """The attempt is over (finished, failed, timed out or cancelled); a body still running should stop."""
    vcs: Vcs | None = None
    """The run's working directory under version control, snapshotted when a compute attempt ends."""
    pointer: str | None = None
    """That snapshot, once taken."""
    agent: AgentAttempt | None = None
    """An agent task's attempt: the agent chosen, its stream, its answer (docs/engine.md#agent-tasks)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The attempt's ``meta_json`` as stored when it opened (an agent attempt adds to it when it ends)."""

    def body_running(self) -> bool:
        """A sync body of this attempt is still running (after a timeout or cancel)."""
        return self.body is not None and not self.body.done()


_runtime: contextvars.ContextVar[TaskRuntime | None] = contextvars.ContextVar("smithers_task", default=None)


def heartbeat(data: Any = None) -> None:
    """Record progress of the current task (a JSON checkpoint, ≤ 1 MB), throttled to one write per 500 ms.

    The latest checkpoint of a failed or interrupted attempt is handed to the next one as
    ``ctx.last_heartbeat``. In a sync body whose attempt has ended (timed out, cancelled) it raises
    :class:`~smithers.errors.AttemptStopped`: calling it regularly is how a sync body can be stopped.
    """
    runtime = _runtime.get()
    if runtime is None:
        raise RuntimeError("heartbeat() called outside a running task")
    if runtime.ended:
        raise AttemptStopped(f"attempt {runtime.attempt} of {runtime.node_id} has ended; stop this body")
    try:
        size = len(json.dumps(data).encode()) if data is not None else 0
    except (TypeError, ValueError) as exc:
        raise SmithersError(
            "heartbeat payload is not JSON-serialisable", code=HEARTBEAT_PAYLOAD_NOT_JSON_SERIALIZABLE
        ) from exc
    if size > HEARTBEAT_MAX_BYTES:
        raise SmithersError(
            f"heartbeat payload is {size} bytes (limit {HEARTBEAT_MAX_BYTES})", code=HEARTBEAT_PAYLOAD_TOO_LARGE
        )
    runtime.last_beat_ms = int(time.time() * 1000)
    runtime.on_heartbeat(data, size)


def to_payload(value: Any, model: type[BaseModel] | None) -> Any:
    """Validate a task's return value against its output model and make it JSON."""
    if model is not None:
        try:
            if isinstance(value, model):
                value = value.model_dump(mode="json")
            return model.model_validate(value).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidOutputError(
                f"output does not match {model.__name__}: {exc.errors()[0].get('msg', 'invalid')}",
                details={"errors": exc.errors(include_url=False, include_context=False, include_input=False)},
            ) from exc
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidOutputError(f"output is not JSON-serialisable: {exc}") from exc
    return value


def _call_arity(fn: Callable[..., Any]) -> int:
    """1 when ``fn`` takes ``ctx``, 0 when it takes nothing (plain functions are read off their code)."""
    code = getattr(fn, "__code__", None)
    if code is not None and not inspect.ismethod(fn):
        return 1 if code.co_argcount or code.co_flags & inspect.CO_VARARGS else 0
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 1
    return 1 if any(p.kind is p.VAR_POSITIONAL for p in params) or params else 0


async def run_attempt(task: Task, ctx: Ctx, runtime: TaskRuntime) -> Any:
    """Run one attempt of ``task`` and return its validated JSON output.

    With a working directory under version control, a compute attempt that ends (well or not)
    records a snapshot of it (``runtime.pointer``; docs/engine.md#working-directory-snapshots).
    """
    if runtime.vcs is None or (task.run is None and task.agent is None):
        return await _attempt(task, ctx, runtime)
    try:
        value = await _attempt(task, ctx, runtime)
    except Exception:
        await _record_pointer(task, runtime)
        raise
    await _record_pointer(task, runtime)
    return value


async def _record_pointer(task: Task, runtime: TaskRuntime) -> None:
    vcs = runtime.vcs
    assert vcs is not None
    label = f"smithers: {task.id} iteration {runtime.iteration} attempt {runtime.attempt}"
    try:
        runtime.pointer = await asyncio.to_thread(vcs.snapshot, label)
    except Exception:  # the attempt's outcome stands; it only has no pointer
        log.warning("could not snapshot %s after %s attempt %d", vcs.root, task.id, runtime.attempt, exc_info=True)


async def _attempt(task: Task, ctx: Ctx, runtime: TaskRuntime) -> Any:
    token = _runtime.set(runtime)
    heartbeat_limit = task.heartbeat_timeout_ms or (agent_heartbeat_ms() if task.agent is not None else None)
    try:
        async with asyncio.timeout(task.timeout_ms / 1000 if task.timeout_ms else None):
            if heartbeat_limit:
                value = await _watch_heartbeats(_invoke(task, ctx, runtime), runtime, heartbeat_limit)
            else:
                value = await _invoke(task, ctx, runtime)
    except TimeoutError as exc:
        still = runtime.body_running()
        raise TaskTimeoutError(
            f"task {task.id!r} timed out after {task.timeout_ms} ms"
            + ("; its sync body is still running and holds the node until it returns" if still else ""),
            details={"bodyStillRunning": True} if still else None,
        ) from exc
    finally:
        runtime.ended = True
        _runtime.reset(token)
    return to_payload(value, task.output)


async def _watch_heartbeats(work: Coroutine[Any, Any, Any], runtime: TaskRuntime, limit_ms: int) -> Any:
    """Abort the attempt when it has not called heartbeat() for ``limit_ms`` (checked every 250 ms)."""
    inner = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({inner}, timeout=0.25)
            if done:
                return inner.result()
            silent = int(time.time() * 1000) - runtime.last_beat_ms
            if silent > limit_ms:
                raise SmithersError(
                    f"no heartbeat for {silent} ms (limit {limit_ms} ms)",
                    code=TASK_HEARTBEAT_TIMEOUT,
                    details={"lastHeartbeatAtMs": runtime.last_beat_ms, "timeoutMs": limit_ms},
                )
    finally:
        if not inner.done():
            inner.cancel()
            # let it clean up before the attempt ends (an agent's subprocess group is killed)
            await asyncio.wait({inner}, timeout=WORK_SETTLE_S)


async def _invoke(task: Task, ctx: Ctx, runtime: TaskRuntime) -> Any:
    if runtime.agent is not None:

        def touch() -> None:
            runtime.last_beat_ms = int(time.time() * 1000)

        return await run_agent(task, ctx, runtime.agent, touch)
    fn = task.run
    if fn is None:
        return task.value
    args = (ctx,) if _call_arity(fn) else ()
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    context = contextvars.copy_context()
    runtime.body = BODY_THREADS.submit(lambda: context.run(fn, *args))
    result = await asyncio.wrap_future(runtime.body)
    if inspect.isawaitable(result):
        return await result
    return result


def is_retryable(error: SmithersError, kind: str = "compute") -> bool:
    """Whether a failed attempt may be retried: an agent's refused answer may (the next attempt can
    use another agent); a compute or static task's invalid output may not."""
    if kind == "agent" and error.code == INVALID_OUTPUT:
        return True
    return error.code not in NON_RETRYABLE_CODES


def backoff_ms(policy: RetryPolicy | None, failures: int) -> int:
    """Delay before the next attempt after the ``failures``-th failure (capped at 5 minutes)."""
    if policy is None or policy.initial_delay_ms <= 0:
        return 0
    base = policy.initial_delay_ms
    if policy.backoff == "fixed":
        delay = float(base)
    elif policy.backoff == "linear":
        delay = float(base * failures)
    else:
        delay = base * policy.multiplier ** (failures - 1)
    if policy.max_delay_ms is not None:
        delay = min(delay, policy.max_delay_ms)
    delay = min(delay, MAX_BACKOFF_MS)
    if policy.jitter:
        delay *= random.uniform(0.75, 1.25)
    return int(delay)
