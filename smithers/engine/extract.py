"""Render → graph: walk the tree a render function returned into descriptors, a plan and XML.

The XML is the canonical frame document (docs/engine.md#the-run-loop): ``{"kind":"element","tag",
"props","children"}`` with scalar props only, as strings, keys sorted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from smithers.engine.dsl import (
    Approval,
    Branch,
    Loop,
    Node,
    Parallel,
    RetryPolicy,
    Sequence,
    Task,
    Timer,
    WaitForEvent,
)
from smithers.errors import DUPLICATE_ID, INVALID_NODE, NESTED_LOOP, RESERVED_ID, TASK_ID_REQUIRED, GraphError

LeafKind = Literal["task", "approval", "wait", "timer"]
PlanKind = Literal["task", "sequence", "parallel", "group", "ralph"]

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def table_name(model: Any) -> str:
    """The output table (schema key) of a model: its class name in snake_case."""
    return _CAMEL.sub("_", model.__name__).lower() if model is not None else "output"


def state_key(node_id: str, iteration: int) -> str:
    return f"{node_id}::{iteration}"


@dataclass(eq=False)
class Descriptor:
    """One mounted leaf: what the scheduler and executor need to know about it."""

    node_id: str
    ordinal: int
    iteration: int
    kind: LeafKind
    node: Node
    output_table: str
    label: str | None
    ralph_id: str | None = None
    depends_on: tuple[str, ...] = ()
    parallel_group: str | None = None
    parallel_max: int | None = None
    needs_approval: bool = False
    continue_on_fail: bool = False
    skip_if: bool = False
    retries: float = 0
    retry_policy: RetryPolicy | None = None
    timeout_ms: int | None = None
    key: str = ""

    def __post_init__(self) -> None:
        self.key = state_key(self.node_id, self.iteration)


@dataclass(eq=False)
class PlanNode:
    kind: PlanKind
    children: list[PlanNode] = field(default_factory=list)
    key: str | None = None  # state key for leaves, ralph id for loops


@dataclass(eq=False)
class LoopInfo:
    ralph_id: str
    iteration: int
    max_iterations: int
    on_max_reached: str
    until: bool
    node_keys: list[str] = field(default_factory=list)
    logical_id: str = ""
    parent: str | None = None
    """Ralph id of the loop this one is nested in."""


@dataclass(eq=False)
class Graph:
    xml: dict[str, Any]
    descriptors: list[Descriptor]
    plan: PlanNode
    loops: dict[str, LoopInfo]
    by_key: dict[str, Descriptor] = field(default_factory=dict)
    loop_of: dict[str, str] = field(default_factory=dict)
    """Node id → ralph id of the loop it is in (nodes outside loops are absent)."""

    def __post_init__(self) -> None:
        self.by_key = {d.key: d for d in self.descriptors}
        self.loop_of = {d.node_id: d.ralph_id for d in self.descriptors if d.ralph_id}


def _props(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in sorted(values):
        value = values[name]
        if value is None or name.startswith("__"):
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[name] = str(value)
    return out


def _element(tag: str, props: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "element", "tag": tag, "props": props, "children": children}


class _Extractor:
    def __init__(self, loop_state: dict[str, tuple[int, bool]]):
        self.loop_state = loop_state
        self.descriptors: list[Descriptor] = []
        self.loops: dict[str, LoopInfo] = {}
        self.ids: set[str] = set()

    def claim(self, node_id: Any, what: str) -> str:
        if not isinstance(node_id, str) or not node_id:
            raise GraphError(f"every {what} needs a string id", code=TASK_ID_REQUIRED)
        if "::" in node_id or "@@" in node_id:
            raise GraphError(f"id {node_id!r} uses a reserved sequence ('::' or '@@')", code=RESERVED_ID)
        if node_id in self.ids:
            raise GraphError(
                f"duplicate node id {node_id!r} in one tree", code=DUPLICATE_ID, details={"nodeId": node_id}
            )
        self.ids.add(node_id)
        return node_id

    def walk(
        self, node: Node, path: str, loops: list[LoopInfo], group: tuple[str, int | None] | None, parent_is_loop: bool
    ) -> tuple[dict[str, Any], PlanNode] | None:
        if isinstance(node, Task | Approval | WaitForEvent | Timer):
            return self.leaf(node, loops, group)
        if isinstance(node, Sequence):
            if node.skip_if:
                return None
            return self.container(node, "sequence", _props(id=node.id), path, loops, group)
        if isinstance(node, Parallel):
            gid = node.id or f"parallel:{path or 'root'}"
            props = _props(id=gid, maxConcurrency=node.max_concurrency)
            return self.container(node, "parallel", props, path, loops, (gid, node.max_concurrency))
        if isinstance(node, Branch):
            return self.container(node, "group", _props(id=node.id, condition=node.condition), path, loops, group)
        if isinstance(node, Loop):
            if parent_is_loop:
                raise GraphError(f"Loop {node.id!r} is a direct child of another Loop", code=NESTED_LOOP)
            self.claim(node.id, "Loop")
            scope = _scope(loops)
            ralph_id = f"{node.id}@@{scope}" if scope else node.id
            iteration, done = self.loop_state.get(ralph_id, (0, False))
            info = LoopInfo(
                ralph_id,
                iteration,
                node.max_iterations,
                node.on_max_reached,
                node.until or done,
                logical_id=node.id,
                parent=loops[-1].ralph_id if loops else None,
            )
            self.loops[ralph_id] = info
            # The loop's position is in the frame, so a frame alone says where every loop stood
            # (a rewind or fork restores loops from it; docs/engine.md#frames-snapshots-and-history).
            props = _props(
                id=node.id,
                maxIterations=node.max_iterations,
                until=node.until,
                iteration=iteration,
                done=True if done else None,
                ralphId=ralph_id if ralph_id != node.id else None,
            )
            out = self.container(node, "ralph", props, path, [*loops, info], group, is_loop=True)
            assert out is not None
            out[1].key = ralph_id
            return out
        raise GraphError(f"not a workflow node: {node!r}", code=INVALID_NODE)

    def container(
        self,
        node: Any,
        kind: PlanKind,
        props: dict[str, str],
        path: str,
        loops: list[LoopInfo],
        group: tuple[str, int | None] | None,
        is_loop: bool = False,
    ) -> tuple[dict[str, Any], PlanNode]:
        xml_children: list[dict[str, Any]] = []
        plan = PlanNode(kind)
        for child in node.children:
            index = len(xml_children)  # paths count mounted elements only
            out = self.walk(child, f"{path}.{index}" if path else str(index), loops, group, is_loop)
            if out is not None:
                xml_children.append(out[0])
                plan.children.append(out[1])
        return _element(node.tag, props, xml_children), plan

    def leaf(
        self, node: Task | Approval | WaitForEvent | Timer, loops: list[LoopInfo], group: tuple[str, int | None] | None
    ) -> tuple[dict[str, Any], PlanNode] | None:
        base_id = self.claim(getattr(node, "id", None), type(node).__name__)
        outer = _scope(loops[:-1])
        node_id = f"{base_id}@@{outer}" if outer else base_id
        loop = loops[-1] if loops else None
        iteration = loop.iteration if loop else 0
        d = Descriptor(
            node_id=node_id,
            ordinal=len(self.descriptors),
            iteration=iteration,
            kind="task",
            node=node,
            output_table="",
            label=node.label,
            ralph_id=loop.ralph_id if loop else None,
            depends_on=tuple(node.depends_on),
            parallel_group=group[0] if group else None,
            parallel_max=group[1] if group else None,
        )
        props: dict[str, Any] = {"id": node_id, "label": node.label}
        if isinstance(node, Task):
            d.output_table = table_name(node.output)
            d.needs_approval = node.needs_approval
            d.continue_on_fail = node.continue_on_fail
            d.skip_if = node.skip_if
            d.retry_policy = node.retry_policy
            d.timeout_ms = node.timeout_ms
            agents = node.agents
            if node.retries is not None:
                d.retries = max(0, node.retries)
                if d.retries > 0 and d.retry_policy is None:
                    d.retry_policy = RetryPolicy()
            else:
                # an agent chain gets one retry per fallback agent, without waiting (E38)
                d.retries = max(0, len(agents) - 1)
            props.update(
                kind=node.kind,
                output=d.output_table,
                needsApproval=node.needs_approval or None,
                retries=node.retries,
                timeoutMs=node.timeout_ms,
                agent=",".join(_agent_name(a) for a in agents) or None,
            )
        elif isinstance(node, Approval):
            d.kind = "approval"
            d.output_table = "approval"
            d.needs_approval = True
            d.label = node.label or node.title
            props.update(kind="approval", mode=node.mode, onDeny=node.on_deny, title=node.title, label=d.label)
        elif isinstance(node, WaitForEvent):
            d.kind = "wait"
            d.output_table = table_name(node.output) if node.output else "signal"
            d.label = node.label or f"wait:{node.event}"
            props.update(event=node.event, correlationId=node.correlation_id, label=d.label)
        else:
            d.kind = "timer"
            d.label = node.label or f"timer:{base_id}"
            props.update(durationMs=node.duration_ms, untilMs=node.until_ms, label=d.label)
        self.descriptors.append(d)
        if loop is not None:
            loop.node_keys.append(d.key)
        return _element(node.tag, _props(**props), []), PlanNode("task", key=d.key)


def _agent_name(agent: Any) -> str:
    name = getattr(agent, "id", None)
    return name if isinstance(name, str) and name else type(agent).__name__


def _scope(loops: list[LoopInfo]) -> str:
    """``a=1,b=2``: the logical ids and iterations of enclosing loops (docs/engine.md#the-run-loop)."""
    return ",".join(f"{lp.logical_id}={lp.iteration}" for lp in loops)


def extract(root: Node | None, workflow_name: str, loop_state: dict[str, tuple[int, bool]]) -> Graph:
    """Turn a rendered tree into a Graph; ``loop_state`` maps ralph id → (iteration, done)."""
    ex = _Extractor(loop_state)
    children: list[dict[str, Any]] = []
    plan = PlanNode("sequence")
    if root is not None:
        if not isinstance(root, Node):
            raise GraphError(
                f"a render function must return a workflow node, not {type(root).__name__}", code=INVALID_NODE
            )
        out = ex.walk(root, "", [], None, False)
        if out is not None:
            children.append(out[0])
            plan.children.append(out[1])
    xml = _element("smithers:workflow", {"name": workflow_name}, children)
    return Graph(xml=xml, descriptors=ex.descriptors, plan=plan, loops=ex.loops)
