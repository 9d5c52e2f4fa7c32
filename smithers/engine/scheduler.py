"""The scheduler: a pure function from (plan, node states, clock) to what may run now.

No I/O and no clock reads: everything it needs comes in as arguments (docs/engine.md#the-run-loop).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from smithers.engine.extract import Descriptor, LoopInfo, PlanNode
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    PENDING,
    SKIPPED,
    WAITING_NODE_STATES,
)


@dataclass
class Schedule:
    """What the scheduler found on one pass."""

    runnable: list[Descriptor] = field(default_factory=list)
    """Leaves to start now, in document order, within the group and global caps."""
    waiting: list[Descriptor] = field(default_factory=list)
    """Leaves suspended on an approval, event or timer, in document order."""
    in_progress: int = 0
    backoff_until_ms: int | None = None
    """Earliest time a node in retry backoff becomes runnable (None: no node is backing off)."""
    failed: Descriptor | None = None
    """First failed node without continue_on_fail: the run fails."""
    loops_to_advance: list[str] = field(default_factory=list)
    """Loops whose current iteration is complete (advance only when nothing else is active)."""
    skip_in_done_loops: list[Descriptor] = field(default_factory=list)
    """Unfinished leaves of loops that are done: they will never run and are marked skipped."""
    finished: bool = False
    """The whole tree is terminal."""
    blocked: list[Descriptor] = field(default_factory=list)
    """Pending leaves whose dependencies can never be met (not mounted)."""

    @property
    def idle(self) -> bool:
        """Nothing runs, waits, or backs off."""
        return not (self.runnable or self.waiting or self.in_progress or self.backoff_until_ms is not None)


def is_terminal(d: Descriptor, state: str | None) -> bool:
    return state in (FINISHED, SKIPPED) or (state == FAILED and d.continue_on_fail)


def schedule(
    plan: PlanNode,
    descriptors: Mapping[str, Descriptor],
    states: Mapping[str, str],
    loops: Mapping[str, LoopInfo],
    now_ms: int,
    retry_ready_at: Mapping[str, int] | None = None,
    max_concurrency: int = 4,
    memo: dict[int, int] | None = None,
    in_progress_keys: Collection[str] | None = None,
) -> Schedule:
    """One scheduling pass over the plan tree.

    ``in_progress_keys`` are the leaves that hold a concurrency slot: attempts in flight, and sync
    bodies of ended attempts that still run (such a leaf is not started again until its body returns).

    ``memo`` (optional) remembers, per sequence, how many leading children were terminal. It is
    only valid while terminal states stay terminal, which holds within one execution of a run
    (finished and skipped are final; resets happen only when a run is resumed); pass a fresh dict
    (or none) whenever states may have gone backwards.
    """
    out = Schedule()
    ready_at = retry_ready_at or {}
    group_busy: dict[str, int] = {}
    by_node_id: dict[str, Descriptor] = {}
    running = in_progress_keys if in_progress_keys is not None else {k for k, s in states.items() if s == IN_PROGRESS}
    for key in running:
        d = descriptors.get(key)
        if d is not None:
            out.in_progress += 1
            if d.parallel_group:
                group_busy[d.parallel_group] = group_busy.get(d.parallel_group, 0) + 1
    slots = max(0, max_concurrency - out.in_progress)

    def deps_ready(d: Descriptor) -> bool | None:
        """True: all dependencies terminal; False: not yet; None: a dependency is not mounted."""
        if not d.depends_on:
            return True
        if not by_node_id:
            by_node_id.update((x.node_id, x) for x in descriptors.values())
        for dep in d.depends_on:
            target = by_node_id.get(dep)
            if target is None:
                return None
            if not is_terminal(target, states.get(target.key)):
                return False
        return True

    def visit_leaf(key: str) -> bool:
        nonlocal slots
        d = descriptors[key]
        state = states.get(key, PENDING)
        if is_terminal(d, state):
            return True
        if state == FAILED:
            if out.failed is None:
                out.failed = d
            return False
        if state in WAITING_NODE_STATES:
            out.waiting.append(d)
            return False
        if state in (PENDING, CANCELLED):
            if key in running:
                return False  # a body of its last attempt still runs
            ready = deps_ready(d)
            if ready is None:
                out.blocked.append(d)
                return False
            if not ready:
                return False
            eligible = ready_at.get(key)
            if eligible is not None and eligible > now_ms:
                out.backoff_until_ms = eligible if out.backoff_until_ms is None else min(out.backoff_until_ms, eligible)
                return False
            uses_slot = d.kind == "task" and not d.skip_if
            group_full = d.parallel_group and d.parallel_max is not None
            if group_full and group_busy.get(d.parallel_group or "", 0) >= (d.parallel_max or 0):
                return False
            if uses_slot and slots <= 0:
                return False
            if d.parallel_group:
                group_busy[d.parallel_group] = group_busy.get(d.parallel_group, 0) + 1
            if uses_slot:
                slots -= 1
            out.runnable.append(d)
        return False

    def visit(node: PlanNode) -> bool:
        if node.kind == "task":
            assert node.key is not None
            return visit_leaf(node.key)
        if node.kind == "ralph":
            assert node.key is not None
            info = loops[node.key]
            if info.until:  # done: its unfinished leaves (nested loops' included) never run
                for key in _leaf_keys(node):
                    d = descriptors[key]
                    if not is_terminal(d, states.get(key)) and states.get(key) != IN_PROGRESS:
                        out.skip_in_done_loops.append(d)
                return True
            if all(visit(child) for child in node.children):
                out.loops_to_advance.append(node.key)
            return False
        if node.kind == "sequence":  # stop at the first child that is not terminal
            start = memo.get(id(node), 0) if memo is not None else 0
            stable = start  # leading children that are terminal leaves: safe to skip next time
            for index in range(start, len(node.children)):
                child = node.children[index]
                if not visit(child):
                    if memo is not None:
                        memo[id(node)] = stable
                    return False
                if stable == index and child.kind == "task":
                    stable += 1
            return True
        results = [visit(child) for child in node.children]  # parallel / group: visit all
        return all(results)

    out.finished = visit(plan)
    return out


def _leaf_keys(node: PlanNode) -> list[str]:
    if node.kind == "task":
        return [node.key] if node.key is not None else []
    return [key for child in node.children for key in _leaf_keys(child)]
