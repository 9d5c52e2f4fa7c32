"""The workflow tree: node types returned by a workflow's render function.

A render function is called on every frame and returns a fresh tree of these nodes. Leaves
(``Task``, ``Approval``, ``WaitForEvent``, ``Timer``) become database rows; the others arrange them.
Node ids must be stable across renders: derive them from data, never from time or randomness.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from smithers.errors import APPROVAL_OPTIONS_REQUIRED, INVALID_INPUT, INVALID_NODE, AgentConfigError, GraphError

OnDeny = Literal["fail", "continue", "skip"]
OnTimeout = Literal["fail", "skip", "continue"]
ApprovalMode = Literal["approve", "select", "rank"]


class Node:
    """Base of every tree node."""

    tag: str = ""


def flatten(children: Iterable[Any]) -> list[Node]:
    """Children as a flat list: ``None`` and ``False`` are dropped, lists and tuples spliced in."""
    out: list[Node] = []
    for child in children:
        if child is None or child is False or child is True:
            continue
        if isinstance(child, Node):
            out.append(child)
        elif isinstance(child, list | tuple) or (hasattr(child, "__iter__") and not isinstance(child, str | bytes)):
            out.extend(flatten(child))
        else:
            raise GraphError(f"not a workflow node: {child!r}", code=INVALID_NODE)
    return out


@dataclass(eq=False)
class RetryPolicy:
    """Backoff between attempts: fixed, linear or exponential from ``initial_delay_ms``."""

    backoff: Literal["fixed", "linear", "exponential"] = "exponential"
    initial_delay_ms: int = 1000
    max_delay_ms: int | None = None
    multiplier: float = 2.0
    jitter: bool = False


@dataclass(eq=False)
class Task(Node):
    """A unit of work: ``run=`` (sync or async callable of ctx), ``value=`` (static) or ``agent=``.

    Agent mode (docs/engine.md#agent-tasks): ``agent=`` is an agent or a list of them (a fallback
    chain: attempt n uses the n-th, the last one for every later attempt) and ``prompt=`` a string or
    a callable of ctx. Without ``retries=``, an agent task has one retry per extra agent in its chain.
    """

    id: str
    output: type[BaseModel] | None = None
    run: Callable[..., Any] | None = None
    value: Any = None
    agent: Any = None
    prompt: Any = None
    retries: int | None = None
    retry_policy: RetryPolicy | None = None
    timeout_ms: int | None = None
    heartbeat_timeout_ms: int | None = None
    needs_approval: bool = False
    continue_on_fail: bool = False
    skip_if: bool = False
    depends_on: Seq[str] = ()
    label: str | None = None
    tag = "smithers:task"

    def __post_init__(self) -> None:
        if self.agent is None:
            return
        agents = self.agents
        if not agents:
            raise AgentConfigError(f"Task {self.id!r}: agent= needs at least one agent")
        for agent in agents:
            if not inspect.iscoroutinefunction(getattr(agent, "run", None)):
                raise AgentConfigError(
                    f"Task {self.id!r}: {agent!r} is not an agent (it needs an 'async def run(call)' method)"
                )
        if self.prompt is None:
            raise AgentConfigError(f"Task {self.id!r}: an agent task needs prompt= (a string or a callable of ctx)")
        if self.run is not None:
            raise AgentConfigError(f"Task {self.id!r}: give either run= or agent=, not both")

    @property
    def kind(self) -> str:
        if self.agent is not None:
            return "agent"
        return "compute" if self.run is not None else "static"

    @property
    def agents(self) -> list[Any]:
        """The task's agents in fallback order (empty for compute and static tasks)."""
        if self.agent is None:
            return []
        return list(self.agent) if isinstance(self.agent, list | tuple) else [self.agent]


@dataclass(eq=False)
class Approval(Node):
    """A durable human decision. Its output is the decision: ``{approved, note, decidedBy, decidedAt}``.

    ``on_deny``: ``"fail"`` fails the node (and the run); ``"continue"`` records
    ``approved: false`` and carries on; ``"skip"`` records it too but marks the node skipped.
    Left unset it behaves as ``"continue"``, as the JavaScript engine does
    (docs/engine.md#departures-from-the-engine-model).
    """

    id: str
    title: str | None = None
    summary: str | None = None
    on_deny: OnDeny | None = None
    mode: ApprovalMode = "approve"
    options: Seq[dict[str, Any]] = ()
    allowed_scopes: Seq[str] = ()
    allowed_users: Seq[str] = ()
    metadata: dict[str, Any] | None = None
    timeout_ms: int | None = None
    depends_on: Seq[str] = ()
    label: str | None = None
    tag = "smithers:task"

    def __post_init__(self) -> None:
        if self.mode in ("select", "rank") and not self.options:
            raise GraphError(f"Approval {self.id!r} in {self.mode} mode needs options", code=APPROVAL_OPTIONS_REQUIRED)


@dataclass(eq=False)
class WaitForEvent(Node):
    """Wait durably for a signal named ``event`` (optionally with ``correlation_id``)."""

    id: str
    event: str
    correlation_id: str | None = None
    output: type[BaseModel] | None = None
    timeout_ms: int | None = None
    on_timeout: OnTimeout = "fail"
    depends_on: Seq[str] = ()
    label: str | None = None
    tag = "smithers:wait-for-event"


@dataclass(eq=False)
class Timer(Node):
    """A durable sleep of ``duration_ms`` (or until the epoch-ms ``until_ms``) that survives restarts."""

    id: str
    duration_ms: int | None = None
    until_ms: int | None = None
    depends_on: Seq[str] = ()
    label: str | None = None
    tag = "smithers:timer"

    def __post_init__(self) -> None:
        if (self.duration_ms is None) == (self.until_ms is None):
            raise GraphError(f"Timer {self.id!r} needs exactly one of duration_ms or until_ms", code=INVALID_INPUT)


class Sequence(Node):
    """Children run one after another."""

    tag = "smithers:sequence"

    def __init__(self, *children: Any, id: str | None = None, skip_if: bool = False):
        self.id = id
        self.skip_if = skip_if
        self.children = flatten(children)


class Parallel(Node):
    """Children run concurrently, at most ``max_concurrency`` at a time (unbounded by default)."""

    tag = "smithers:parallel"

    def __init__(self, *children: Any, id: str | None = None, max_concurrency: int | None = None):
        self.id = id
        self.max_concurrency = max_concurrency if max_concurrency and max_concurrency > 0 else None
        self.children = flatten(children)


class Branch(Node):
    """Mounts ``then`` when ``condition`` is true, else ``otherwise``; re-evaluated every render."""

    tag = "smithers:branch"

    def __init__(self, condition: Any, then: Any = None, otherwise: Any = None, *, id: str | None = None):
        self.id = id
        self.condition = bool(condition)
        self.children = flatten([then if self.condition else otherwise])


class Loop(Node):
    """Repeats its children until ``until`` is true, at most ``max_iterations`` times.

    ``ctx.iteration`` is the current pass (0-based). ``on_max_reached``: ``"return-last"``
    (default) ends the loop keeping the last outputs; ``"fail"`` fails the run.
    """

    tag = "smithers:ralph"

    def __init__(
        self,
        id: str,
        *items: Any,
        until: Any = False,
        max_iterations: int = 5,
        on_max_reached: Literal["return-last", "fail"] = "return-last",
        children: Any = None,
    ):
        self.id = id
        self.until = bool(until)
        self.max_iterations = max(1, int(max_iterations))
        self.on_max_reached = on_max_reached
        self.children = flatten([*items, children])
