"""The pure scheduler and graph extraction, rule by rule (docs/engine.md#the-run-loop).

Plans are built with ``extract()`` from real DSL trees; node states are written by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smithers.engine.dsl import (
    Approval,
    Branch,
    Loop,
    Node,
    Parallel,
    Sequence,
    Task,
    Timer,
    WaitForEvent,
)
from smithers.engine.extract import Descriptor, Graph, PlanNode, extract
from smithers.engine.scheduler import Schedule, schedule
from smithers.errors import DUPLICATE_ID, NESTED_LOOP, RESERVED_ID, TASK_ID_REQUIRED, GraphError

NOW = 10_000


def T(node_id: str, **kw: Any) -> Task:
    return Task(node_id, value=1, **kw)


def graph(root: Node | None, loop_state: dict[str, tuple[int, bool]] | None = None) -> Graph:
    return extract(root, "wf", loop_state or {})


def run(g: Graph, states: dict[str, str] | None = None, **kw: Any) -> Schedule:
    now = kw.pop("now_ms", NOW)
    return schedule(g.plan, g.by_key, states or {}, g.loops, now, **kw)


def keys(ds: Iterable[Descriptor]) -> list[str]:
    return [d.key for d in ds]


def summary(s: Schedule) -> dict[str, Any]:
    """Every field of a Schedule, with descriptors replaced by their state keys."""
    return {
        "runnable": keys(s.runnable),
        "waiting": keys(s.waiting),
        "in_progress": s.in_progress,
        "backoff_until_ms": s.backoff_until_ms,
        "failed": s.failed.key if s.failed else None,
        "loops_to_advance": list(s.loops_to_advance),
        "skip_in_done_loops": keys(s.skip_in_done_loops),
        "finished": s.finished,
        "blocked": keys(s.blocked),
    }


# ---- sequence ---------------------------------------------------------------------------------


def test_sequence_offers_only_its_first_child_when_nothing_has_run() -> None:
    g = graph(Sequence(T("a"), T("b"), T("c")))
    assert summary(run(g)) == {
        "runnable": ["a::0"],
        "waiting": [],
        "in_progress": 0,
        "backoff_until_ms": None,
        "failed": None,
        "loops_to_advance": [],
        "skip_in_done_loops": [],
        "finished": False,
        "blocked": [],
    }


@pytest.mark.parametrize("state", ["finished", "skipped"])
def test_sequence_moves_past_a_terminal_child(state: str) -> None:
    g = graph(Sequence(T("a"), T("b"), T("c")))
    assert keys(run(g, {"a::0": state}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": state, "b::0": state}).runnable) == ["c::0"]


def test_failed_with_continue_on_fail_is_terminal_for_a_sequence() -> None:
    g = graph(Sequence(T("a", continue_on_fail=True), T("b")))
    s = run(g, {"a::0": "failed"})
    assert keys(s.runnable) == ["b::0"]
    assert s.failed is None


@pytest.mark.parametrize("state", ["in-progress", "waiting-approval", "waiting-event", "waiting-timer", "cancelled"])
def test_sequence_stops_at_the_first_non_terminal_child(state: str) -> None:
    g = graph(Sequence(T("a"), T("b"), T("c")))
    s = run(g, {"a::0": state, "c::0": "pending"})
    assert "b::0" not in keys(s.runnable)
    assert "c::0" not in keys(s.runnable)
    assert s.finished is False


def test_sequence_with_a_failed_child_reports_the_failure_and_stops() -> None:
    g = graph(Sequence(T("a"), T("b")))
    s = run(g, {"a::0": "failed"})
    assert s.failed is g.by_key["a::0"]
    assert keys(s.runnable) == []
    assert s.finished is False


def test_nested_sequences_continue_into_the_next_sibling() -> None:
    g = graph(Sequence(Sequence(T("a"), T("b")), Sequence(T("c"), T("d"))))
    assert keys(run(g, {"a::0": "finished"}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": "finished", "b::0": "skipped"}).runnable) == ["c::0"]


def test_empty_sequence_is_terminal() -> None:
    g = graph(Sequence(Sequence(), T("a")))
    assert keys(run(g).runnable) == ["a::0"]


# ---- parallel and group -----------------------------------------------------------------------


def test_parallel_offers_every_child() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c")))
    assert keys(run(g).runnable) == ["a::0", "b::0", "c::0"]


def test_parallel_is_terminal_only_when_all_children_are() -> None:
    g = graph(Sequence(Parallel(T("a"), T("b")), T("c")))
    assert keys(run(g, {"a::0": "finished"}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": "finished", "b::0": "in-progress"}).runnable) == []
    assert keys(run(g, {"a::0": "finished", "b::0": "skipped"}).runnable) == ["c::0"]


def test_branch_is_a_group_that_visits_all_of_its_mounted_children() -> None:
    g = graph(Sequence(Branch(True, then=[T("a"), T("b")], otherwise=T("x")), T("c")))
    assert sorted(g.by_key) == ["a::0", "b::0", "c::0"]
    assert keys(run(g).runnable) == ["a::0", "b::0"]
    assert keys(run(g, {"a::0": "finished"}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": "finished", "b::0": "finished"}).runnable) == ["c::0"]


def test_branch_else_mounts_only_the_other_side() -> None:
    g = graph(Branch(False, then=T("a"), otherwise=T("b")))
    assert sorted(g.by_key) == ["b::0"]
    assert keys(run(g).runnable) == ["b::0"]


def test_sequence_inside_parallel_is_ordered_while_siblings_run() -> None:
    g = graph(Parallel(Sequence(T("a"), T("b")), Sequence(T("c"), T("d"))))
    assert keys(run(g).runnable) == ["a::0", "c::0"]
    assert keys(run(g, {"c::0": "finished"}).runnable) == ["a::0", "d::0"]


# ---- runnable states --------------------------------------------------------------------------


@pytest.mark.parametrize("state", [None, "pending", "cancelled"])
def test_pending_cancelled_and_unseeded_leaves_are_runnable(state: str | None) -> None:
    g = graph(Parallel(T("a"), T("b")))
    states = {} if state is None else {"a::0": state}
    assert keys(run(g, states).runnable) == ["a::0", "b::0"]


@pytest.mark.parametrize(
    "state", ["in-progress", "finished", "skipped", "waiting-approval", "waiting-event", "waiting-timer"]
)
def test_other_states_are_not_runnable(state: str) -> None:
    g = graph(Parallel(T("a"), T("b")))
    assert keys(run(g, {"a::0": state}).runnable) == ["b::0"]


def test_in_progress_leaves_are_counted() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c")))
    s = run(g, {"a::0": "in-progress", "c::0": "in-progress"})
    assert s.in_progress == 2
    assert keys(s.runnable) == ["b::0"]
    assert s.idle is False


def test_gate_task_needing_approval_is_offered_like_any_pending_leaf() -> None:
    g = graph(Sequence(T("gate", needs_approval=True), T("b")))
    assert keys(run(g).runnable) == ["gate::0"]
    assert keys(run(g, {"gate::0": "waiting-approval"}).waiting) == ["gate::0"]
    assert keys(run(g, {"gate::0": "finished"}).runnable) == ["b::0"]


def test_schedule_does_not_mutate_its_arguments() -> None:
    g = graph(Parallel(T("a"), T("b", depends_on=["a"]), Loop("l", T("c"), until=True), max_concurrency=1))
    states = {"a::0": "in-progress", "c::0": "pending"}
    ready_at = {"b::0": NOW + 1}
    before = (dict(states), dict(ready_at), {k: list(v.node_keys) for k, v in g.loops.items()})
    first = summary(run(g, states, retry_ready_at=ready_at))
    assert (dict(states), dict(ready_at), {k: list(v.node_keys) for k, v in g.loops.items()}) == before
    assert summary(run(g, states, retry_ready_at=ready_at)) == first


# ---- dependencies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dep_state", "ready"),
    [
        (None, False),
        ("pending", False),
        ("in-progress", False),
        ("waiting-approval", False),
        ("waiting-event", False),
        ("waiting-timer", False),
        ("cancelled", False),
        ("finished", True),
        ("skipped", True),
    ],
)
def test_dependencies_must_be_terminal(dep_state: str | None, ready: bool) -> None:
    g = graph(Parallel(Sequence(T("x"), T("a")), T("b", depends_on=["a"])))
    states = {"x::0": "in-progress"}  # keeps "a" from being offered itself
    if dep_state is not None:
        states["a::0"] = dep_state
    s = run(g, states)
    assert ("b::0" in keys(s.runnable)) is ready
    assert keys(s.blocked) == []


def test_failed_dependency_with_continue_on_fail_counts_as_terminal() -> None:
    g = graph(Parallel(T("a", continue_on_fail=True), T("b", depends_on=["a"])))
    s = run(g, {"a::0": "failed"})
    assert keys(s.runnable) == ["b::0"]
    assert s.failed is None


def test_failed_dependency_without_continue_on_fail_fails_the_run_and_blocks_the_dependent() -> None:
    g = graph(Parallel(T("a"), T("b", depends_on=["a"])))
    s = run(g, {"a::0": "failed"})
    assert s.failed is g.by_key["a::0"]
    assert keys(s.runnable) == []


def test_all_dependencies_are_required() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c", depends_on=["a", "b"])))
    assert keys(run(g, {"a::0": "finished", "b::0": "in-progress"}).runnable) == []
    assert keys(run(g, {"a::0": "finished", "b::0": "finished"}).runnable) == ["c::0"]


def test_unmounted_dependency_is_reported_as_blocked() -> None:
    g = graph(Parallel(Branch(False, then=T("a")), T("b", depends_on=["a"]), T("c")))
    s = run(g)
    assert keys(s.blocked) == ["b::0"]
    assert keys(s.runnable) == ["c::0"]
    assert s.finished is False


def test_blocked_only_lists_leaves_that_would_otherwise_run() -> None:
    g = graph(Sequence(T("a"), T("b", depends_on=["ghost"])))
    assert keys(run(g).blocked) == []  # b is not reached yet
    s = run(g, {"a::0": "finished"})
    assert keys(s.blocked) == ["b::0"]
    assert keys(s.runnable) == []


def test_dependency_on_a_loop_node_uses_its_current_iteration() -> None:
    g = graph(
        Sequence(Loop("l", T("a"), T("x")), T("b", depends_on=["a"])),
        {"l": (2, True)},
    )
    assert keys(run(g, {"a::2": "finished", "x::2": "finished"}).runnable) == ["b::0"]


# ---- retry backoff ----------------------------------------------------------------------------


def test_leaf_inside_a_backoff_window_is_not_runnable() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c")))
    ready_at = {"a::0": NOW + 5_000, "b::0": NOW + 3_000, "c::0": NOW - 1}
    s = run(g, {"a::0": "pending", "b::0": "pending"}, retry_ready_at=ready_at)
    assert keys(s.runnable) == ["c::0"]
    assert s.backoff_until_ms == NOW + 3_000
    assert s.idle is False


def test_backoff_ends_exactly_at_the_ready_time() -> None:
    g = graph(Parallel(T("a")))
    s = run(g, retry_ready_at={"a::0": NOW})
    assert keys(s.runnable) == ["a::0"]
    assert s.backoff_until_ms is None


def test_no_backoff_reported_without_retry_windows() -> None:
    g = graph(Parallel(T("a"), T("b")))
    s = run(g, {"a::0": "in-progress"}, retry_ready_at={"a::0": NOW + 99_000})
    assert s.backoff_until_ms is None
    assert keys(s.runnable) == ["b::0"]


def test_cancelled_leaf_in_backoff_waits_too() -> None:
    g = graph(Parallel(T("a")))
    s = run(g, {"a::0": "cancelled"}, retry_ready_at={"a::0": NOW + 1})
    assert keys(s.runnable) == []
    assert s.backoff_until_ms == NOW + 1


# ---- per-group cap ----------------------------------------------------------------------------


def test_parallel_cap_limits_newly_selected_leaves() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c"), T("d"), max_concurrency=2))
    assert keys(run(g).runnable) == ["a::0", "b::0"]


def test_parallel_cap_counts_in_progress_plus_selected() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c"), T("d"), max_concurrency=2))
    assert keys(run(g, {"a::0": "in-progress"}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": "in-progress", "c::0": "in-progress"}).runnable) == []
    assert keys(run(g, {"a::0": "finished", "b::0": "skipped"}).runnable) == ["c::0", "d::0"]


def test_parallel_cap_counts_in_progress_keys_when_given() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c"), max_concurrency=2))
    s = run(g, {"a::0": "in-progress"}, in_progress_keys=["a::0"])
    assert keys(s.runnable) == ["b::0"]


def test_parallel_cap_of_zero_or_less_means_unbounded() -> None:
    for cap in (0, -3, None):
        g = graph(Parallel(T("a"), T("b"), T("c"), max_concurrency=cap))
        assert keys(run(g).runnable) == ["a::0", "b::0", "c::0"]


def test_groups_have_independent_caps() -> None:
    g = graph(
        Parallel(
            Parallel(T("a"), T("b"), id="g1", max_concurrency=1),
            Parallel(T("c"), T("d"), id="g2", max_concurrency=1),
        )
    )
    assert keys(run(g).runnable) == ["a::0", "c::0"]
    assert keys(run(g, {"a::0": "in-progress"}).runnable) == ["c::0"]


def test_the_innermost_parallel_is_the_group_of_a_leaf() -> None:
    g = graph(Parallel(Parallel(T("a"), T("b")), T("c"), T("d"), max_concurrency=1))
    assert keys(run(g).runnable) == ["a::0", "b::0", "c::0"]


def test_cap_applies_to_leaves_nested_in_sequences_of_the_parallel() -> None:
    g = graph(Parallel(Sequence(T("a"), T("b")), Sequence(T("c"), T("d")), max_concurrency=1))
    assert keys(run(g).runnable) == ["a::0"]
    assert keys(run(g, {"a::0": "finished"}).runnable) == ["b::0"]
    assert keys(run(g, {"a::0": "in-progress"}).runnable) == []


def test_group_cap_counts_selected_approvals_too() -> None:
    g = graph(Parallel(Approval("ap", title="ok?"), T("a"), max_concurrency=1))
    assert keys(run(g).runnable) == ["ap::0"]


# ---- global cap -------------------------------------------------------------------------------


def test_global_cap_defaults_to_four() -> None:
    g = graph(Parallel(*(T(f"t{i}") for i in range(6))))
    assert keys(run(g).runnable) == ["t0::0", "t1::0", "t2::0", "t3::0"]


def test_global_cap_counts_in_progress_leaves() -> None:
    g = graph(Parallel(*(T(f"t{i}") for i in range(6))))
    s = run(g, {"t0::0": "in-progress", "t1::0": "in-progress", "t2::0": "in-progress"})
    assert keys(s.runnable) == ["t3::0"]
    s = run(g, {f"t{i}::0": "in-progress" for i in range(4)})
    assert keys(s.runnable) == []


def test_global_cap_is_an_argument() -> None:
    g = graph(Parallel(*(T(f"t{i}") for i in range(6))))
    assert keys(run(g, max_concurrency=2).runnable) == ["t0::0", "t1::0"]
    assert keys(run(g, {"t0::0": "in-progress"}, max_concurrency=2).runnable) == ["t1::0"]
    assert keys(run(g, max_concurrency=10).runnable) == [f"t{i}::0" for i in range(6)]


def test_global_cap_counts_in_progress_across_groups() -> None:
    g = graph(Parallel(Parallel(T("a"), T("b"), id="g"), T("c"), T("d")))
    s = run(g, {"a::0": "in-progress"}, max_concurrency=2)
    assert keys(s.runnable) == ["b::0"]


def test_in_progress_keys_replace_the_in_progress_states_for_counting() -> None:
    g = graph(Parallel(*(T(f"t{i}") for i in range(6))))
    states = {"t0::0": "in-progress"}
    s = run(g, states, max_concurrency=2, in_progress_keys=[])
    assert s.in_progress == 0
    assert keys(s.runnable) == ["t1::0", "t2::0"]
    s = run(g, states, max_concurrency=2, in_progress_keys=["t0::0", "gone::0"])
    assert s.in_progress == 1  # keys that are not mounted are ignored
    assert keys(s.runnable) == ["t1::0"]


def test_skip_if_approvals_waits_and_timers_take_no_global_slot() -> None:
    g = graph(
        Parallel(
            T("busy"),
            T("skip", skip_if=True),
            Approval("ap", title="ok?"),
            WaitForEvent("w", event="go"),
            Timer("t", duration_ms=1000),
            T("work"),
        )
    )
    s = run(g, {"busy::0": "in-progress"}, max_concurrency=1)
    assert keys(s.runnable) == ["skip::0", "ap::0", "w::0", "t::0"]
    s = run(g, {"busy::0": "finished"}, max_concurrency=1)
    assert keys(s.runnable) == ["skip::0", "ap::0", "w::0", "t::0", "work::0"]


def test_global_cap_of_zero_starts_no_task() -> None:
    g = graph(Parallel(T("a"), Timer("t", duration_ms=5)))
    assert keys(run(g, max_concurrency=0).runnable) == ["t::0"]


# ---- failure and waiting ----------------------------------------------------------------------


def test_first_failed_leaf_in_document_order_fails_the_run() -> None:
    g = graph(Parallel(T("a"), T("b"), T("c")))
    s = run(g, {"b::0": "failed", "c::0": "failed"})
    assert s.failed is g.by_key["b::0"]
    assert s.finished is False


def test_all_failed_with_continue_on_fail_finishes() -> None:
    g = graph(Parallel(T("a", continue_on_fail=True), T("b", continue_on_fail=True)))
    s = run(g, {"a::0": "failed", "b::0": "failed"})
    assert s.failed is None
    assert s.finished is True


def test_waiting_leaves_are_listed_in_document_order() -> None:
    g = graph(
        Parallel(
            Timer("t", duration_ms=5),
            Approval("ap", title="ok?"),
            T("gate", needs_approval=True),
            WaitForEvent("w", event="go"),
            T("a"),
        )
    )
    states = {
        "t::0": "waiting-timer",
        "ap::0": "waiting-approval",
        "gate::0": "waiting-approval",
        "w::0": "waiting-event",
    }
    s = run(g, states)
    assert keys(s.waiting) == ["t::0", "ap::0", "gate::0", "w::0"]
    assert keys(s.runnable) == ["a::0"]
    assert s.finished is False
    assert s.idle is False


def test_a_waiting_leaf_blocks_the_rest_of_its_sequence() -> None:
    g = graph(Sequence(Approval("ap", title="ok?"), T("a")))
    s = run(g, {"ap::0": "waiting-approval"})
    assert keys(s.waiting) == ["ap::0"]
    assert keys(s.runnable) == []


def test_idle_when_nothing_runs_waits_or_backs_off() -> None:
    g = graph(Sequence(T("a"), T("b", depends_on=["ghost"])))
    s = run(g, {"a::0": "finished"})
    assert s.idle is True
    assert s.finished is False


# ---- loops ------------------------------------------------------------------------------------


def test_loop_offers_its_children_for_the_current_iteration() -> None:
    g = graph(Loop("l", Sequence(T("a"), T("b"))), {"l": (3, False)})
    s = run(g, {"a::3": "finished"})
    assert keys(s.runnable) == ["b::3"]
    assert s.loops_to_advance == []
    assert s.finished is False


def test_loop_with_all_children_terminal_asks_to_advance() -> None:
    g = graph(Sequence(Loop("l", T("a"), T("b")), T("after")), {"l": (1, False)})
    s = run(g, {"a::1": "finished", "b::1": "skipped"})
    assert s.loops_to_advance == ["l"]
    assert keys(s.runnable) == []
    assert s.finished is False
    assert s.skip_in_done_loops == []


def test_loop_does_not_advance_while_a_child_is_unfinished() -> None:
    g = graph(Loop("l", T("a"), T("b")))
    for state in ("pending", "in-progress", "waiting-event", "cancelled"):
        s = run(g, {"a::0": "finished", "b::0": state})
        assert s.loops_to_advance == []


def test_loop_until_true_is_terminal_and_skips_its_unfinished_leaves() -> None:
    g = graph(
        Sequence(Loop("l", T("a"), T("b"), T("c"), T("d"), T("e"), until=True), T("after")),
        {"l": (2, False)},
    )
    states = {"a::2": "finished", "b::2": "pending", "d::2": "in-progress", "e::2": "waiting-event"}
    s = run(g, states)
    assert keys(s.skip_in_done_loops) == ["b::2", "c::2", "e::2"]
    assert keys(s.runnable) == ["after::0"]
    assert s.loops_to_advance == []
    assert keys(s.waiting) == []


def test_loop_marked_done_in_loop_state_is_terminal() -> None:
    g = graph(Sequence(Loop("l", T("a")), T("after")), {"l": (4, True)})
    assert g.loops["l"].until is True
    s = run(g, {"a::4": "finished"})
    assert keys(s.skip_in_done_loops) == []
    assert keys(s.runnable) == ["after::0"]
    assert s.loops_to_advance == []


def test_done_loop_with_only_terminal_leaves_skips_nothing() -> None:
    g = graph(Loop("l", T("a"), T("b", continue_on_fail=True)), {"l": (0, True)})
    s = run(g, {"a::0": "skipped", "b::0": "failed"})
    assert s.skip_in_done_loops == []
    assert s.finished is True


def test_inner_loop_advances_before_the_outer_one() -> None:
    g = graph(
        Loop("outer", Sequence(T("a"), Loop("inner", T("b")))),
        {"outer": (1, False), "inner@@outer=1": (0, False)},
    )
    s = run(g, {"a::1": "finished", "b@@outer=1::0": "finished"})
    assert s.loops_to_advance == ["inner@@outer=1"]
    assert s.finished is False


def test_outer_loop_advances_when_the_inner_loop_is_done() -> None:
    g = graph(
        Loop("outer", Sequence(T("a"), Loop("inner", T("b")))),
        {"outer": (1, False), "inner@@outer=1": (3, True)},
    )
    s = run(g, {"a::1": "finished", "b@@outer=1::3": "finished"})
    assert s.loops_to_advance == ["outer"]


def test_done_outer_loop_skips_the_leaves_of_loops_nested_in_it() -> None:
    """Once a loop is done, *its* unfinished nodes are never scheduled and are marked skipped.

    The leaves of a loop nested (through a Sequence) in the done loop are its nodes too.
    """
    g = graph(
        Sequence(Loop("outer", Sequence(T("a"), Loop("inner", T("b"))), until=True), T("after")),
        {"outer": (1, False), "inner@@outer=1": (0, False)},
    )
    s = run(g)
    assert keys(s.skip_in_done_loops) == ["a::1", "b@@outer=1::0"]


def test_finished_when_the_whole_tree_is_terminal() -> None:
    g = graph(
        Sequence(
            Parallel(T("a"), Approval("ap", title="ok?")),
            Branch(True, then=Timer("t", duration_ms=1)),
            Loop("l", WaitForEvent("w", event="go"), until=True),
        )
    )
    states = {"a::0": "finished", "ap::0": "finished", "t::0": "finished", "w::0": "skipped"}
    s = run(g, states)
    assert summary(s) == {
        "runnable": [],
        "waiting": [],
        "in_progress": 0,
        "backoff_until_ms": None,
        "failed": None,
        "loops_to_advance": [],
        "skip_in_done_loops": [],
        "finished": True,
        "blocked": [],
    }
    assert s.idle is True
    assert run(g, {**states, "t::0": "in-progress"}).finished is False


def test_empty_tree_is_finished() -> None:
    assert run(graph(None)).finished is True
    assert run(graph(Sequence())).finished is True


# ---- memo -------------------------------------------------------------------------------------

RANK = {
    "pending": 0,
    "cancelled": 0,
    "waiting-approval": 1,
    "waiting-event": 1,
    "waiting-timer": 1,
    "in-progress": 2,
    "finished": 3,
    "skipped": 3,
    "failed": 3,
}
FORWARD = {s: [t for t, r in RANK.items() if r > RANK[s]] for s in RANK}


@st.composite
def trees(draw: st.DrawFn) -> Node:
    """A random tree of every node kind. Loops are never ``until=True`` here (see the test below)."""
    counter = iter(range(10_000))
    ids: list[str] = []

    def leaf() -> Node:
        node_id = f"n{next(counter)}"
        deps = draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)) if ids and draw(st.booleans()) else []
        if draw(st.integers(0, 9)) == 0:
            deps.append("ghost")
        ids.append(node_id)
        kind = draw(st.sampled_from(["task", "task", "cof", "skip", "approval", "wait", "timer"]))
        if kind == "approval":
            return Approval(node_id, title="t", depends_on=deps)
        if kind == "wait":
            return WaitForEvent(node_id, event="e", depends_on=deps)
        if kind == "timer":
            return Timer(node_id, duration_ms=1, depends_on=deps)
        return T(node_id, depends_on=deps, continue_on_fail=kind == "cof", skip_if=kind == "skip")

    def node(depth: int, in_loop: bool) -> Node:
        options = ["leaf"] if depth >= 4 else ["leaf", "leaf", "seq", "seq", "par", "branch", "loop"]
        if in_loop and "loop" in options:
            options.remove("loop")  # a Loop directly inside a Loop is invalid
        choice = draw(st.sampled_from(options))
        if choice == "leaf":
            return leaf()
        size = draw(st.integers(0, 4))
        if choice == "seq":
            return Sequence(*[node(depth + 1, False) for _ in range(size)])
        if choice == "par":
            cap = draw(st.sampled_from([None, 1, 2]))
            return Parallel(*[node(depth + 1, False) for _ in range(size)], max_concurrency=cap)
        if choice == "branch":
            return Branch(True, then=[node(depth + 1, False) for _ in range(size)])
        return Loop(f"loop{next(counter)}", *[node(depth + 1, True) for _ in range(size)])

    return node(0, False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_memo_gives_the_same_schedule_as_no_memo_on_monotonic_state_sequences(data: st.DataObject) -> None:
    g = graph(data.draw(trees()))
    leaf_keys = list(g.by_key)
    states: dict[str, str] = {}
    for key in leaf_keys:
        initial = data.draw(st.sampled_from([None, "pending", "cancelled"]))
        if initial is not None:
            states[key] = initial
    max_concurrency = data.draw(st.integers(1, 5))
    memo: dict[int, int] = {}
    steps = data.draw(st.integers(1, 25))
    for _ in range(steps + 1):
        fresh = schedule(g.plan, g.by_key, states, g.loops, NOW, None, max_concurrency)
        memoised = schedule(g.plan, g.by_key, states, g.loops, NOW, None, max_concurrency, memo)
        assert summary(memoised) == summary(fresh)
        movable = [k for k in leaf_keys if FORWARD[states.get(k, "pending")]]
        if not movable:
            break
        key = data.draw(st.sampled_from(movable))
        states[key] = data.draw(st.sampled_from(FORWARD[states.get(key, "pending")]))


def test_memo_keeps_reporting_the_unfinished_leaves_of_a_done_loop() -> None:
    """The same states, scheduled twice with one memo, give the same answer (a done loop in a sequence)."""
    g = graph(Sequence(Loop("l", T("a"), until=True), T("b")))
    memo: dict[int, int] = {}
    first = schedule(g.plan, g.by_key, {}, g.loops, NOW, None, 4, memo)
    second = schedule(g.plan, g.by_key, {}, g.loops, NOW, None, 4, memo)
    assert keys(first.skip_in_done_loops) == ["a::0"]
    assert summary(second) == summary(first)


def test_memo_is_only_a_shortcut_for_terminal_prefixes() -> None:
    g = graph(Sequence(T("a"), T("b"), T("c")))
    memo: dict[int, int] = {}
    assert keys(schedule(g.plan, g.by_key, {}, g.loops, NOW, memo=memo).runnable) == ["a::0"]
    states = {"a::0": "finished", "b::0": "finished"}
    assert keys(schedule(g.plan, g.by_key, states, g.loops, NOW, memo=memo).runnable) == ["c::0"]
    states["c::0"] = "finished"
    assert schedule(g.plan, g.by_key, states, g.loops, NOW, memo=memo).finished is True


# ---- extract(): validation ---------------------------------------------------------------------


def code_of(root: Node, loop_state: dict[str, tuple[int, bool]] | None = None) -> str:
    with pytest.raises(GraphError) as info:
        graph(root, loop_state)
    return info.value.code


def test_duplicate_ids_are_rejected() -> None:
    assert code_of(Sequence(T("a"), T("a"))) == DUPLICATE_ID
    assert code_of(Parallel(Sequence(T("a")), Branch(True, then=T("a")))) == DUPLICATE_ID
    assert code_of(Sequence(T("x"), Approval("x", title="t"))) == DUPLICATE_ID
    assert code_of(Sequence(Loop("l", T("a")), T("l"))) == DUPLICATE_ID
    assert code_of(Sequence(Loop("l", T("a")), Loop("l", T("b")))) == DUPLICATE_ID


def test_duplicate_id_error_names_the_node() -> None:
    with pytest.raises(GraphError) as info:
        graph(Sequence(WaitForEvent("dup", event="e"), Timer("dup", duration_ms=1)))
    assert info.value.code == DUPLICATE_ID
    assert info.value.details == {"nodeId": "dup"}
    assert "dup" in info.value.message


def test_loop_directly_inside_a_loop_is_rejected() -> None:
    assert code_of(Loop("outer", Loop("inner", T("a")))) == NESTED_LOOP
    assert code_of(Loop("outer", T("x"), Loop("inner", T("a")))) == NESTED_LOOP


def test_loop_nested_through_another_element_is_allowed() -> None:
    for wrapper in (Sequence, Parallel):
        g = graph(Loop("outer", wrapper(Loop("inner", T("a")))))
        assert sorted(g.loops) == ["inner@@outer=0", "outer"]
    g = graph(Loop("outer", Branch(True, then=Loop("inner", T("a")))))
    assert sorted(g.loops) == ["inner@@outer=0", "outer"]


@pytest.mark.parametrize("bad", ["a::b", "::", "a@@b", "@@x", "x::0"])
def test_reserved_sequences_in_ids_are_rejected(bad: str) -> None:
    assert code_of(Sequence(T(bad))) == RESERVED_ID
    assert code_of(Loop(bad, T("ok"))) == RESERVED_ID
    assert code_of(Sequence(WaitForEvent(bad, event="e"))) == RESERVED_ID


def test_empty_id_is_rejected() -> None:
    assert code_of(Sequence(T(""))) == TASK_ID_REQUIRED


# ---- extract(): descriptors, loops, scoped ids -------------------------------------------------


def test_descriptors_are_in_document_order_with_their_kinds() -> None:
    g = graph(
        Sequence(
            T("a"),
            Parallel(Approval("ap", title="ok?"), WaitForEvent("w", event="go")),
            Timer("t", until_ms=5),
            T("g", needs_approval=True, skip_if=True, continue_on_fail=True, depends_on=["a"]),
        )
    )
    assert [(d.ordinal, d.key, d.kind) for d in g.descriptors] == [
        (0, "a::0", "task"),
        (1, "ap::0", "approval"),
        (2, "w::0", "wait"),
        (3, "t::0", "timer"),
        (4, "g::0", "task"),
    ]
    gate = g.by_key["g::0"]
    assert (gate.needs_approval, gate.skip_if, gate.continue_on_fail, gate.depends_on) == (True, True, True, ("a",))
    assert g.by_key["ap::0"].needs_approval is True
    assert g.by_key["ap::0"].label == "ok?"
    assert g.by_key["w::0"].label == "wait:go"
    assert g.by_key["t::0"].label == "timer:t"
    assert [d.iteration for d in g.descriptors] == [0, 0, 0, 0, 0]
    assert [d.ralph_id for d in g.descriptors] == [None] * 5


def test_plan_tree_mirrors_the_dsl_tree() -> None:
    g = graph(Sequence(T("a"), Parallel(T("b")), Branch(True, then=T("c")), Loop("l", T("d"))))

    def shape(p: PlanNode) -> Any:
        return (p.kind, p.key, [shape(c) for c in p.children])

    assert shape(g.plan) == (
        "sequence",
        None,
        [
            (
                "sequence",
                None,
                [
                    ("task", "a::0", []),
                    ("parallel", None, [("task", "b::0", [])]),
                    ("group", None, [("task", "c::0", [])]),
                    ("ralph", "l", [("task", "d::0", [])]),
                ],
            )
        ],
    )


def test_unmounted_parts_leave_no_descriptor() -> None:
    g = graph(Sequence(T("a"), Sequence(T("b"), skip_if=True), Branch(False, then=T("c"))))
    assert list(g.by_key) == ["a::0"]


def test_loop_iteration_comes_from_loop_state() -> None:
    g = graph(
        Sequence(T("before"), Loop("l", T("a"), T("b"), max_iterations=7, on_max_reached="fail")), {"l": (3, False)}
    )
    a = g.by_key["a::3"]
    assert (a.node_id, a.iteration, a.ralph_id) == ("a", 3, "l")
    assert g.by_key["before::0"].ralph_id is None
    info = g.loops["l"]
    assert (info.ralph_id, info.iteration, info.max_iterations, info.on_max_reached, info.until) == (
        "l",
        3,
        7,
        "fail",
        False,
    )
    assert info.node_keys == ["a::3", "b::3"]
    assert g.loop_of == {"a": "l", "b": "l"}


def test_loop_defaults_to_iteration_zero_and_takes_done_from_loop_state() -> None:
    g = graph(Loop("l", T("a")))
    assert (g.loops["l"].iteration, g.loops["l"].until, g.loops["l"].max_iterations) == (0, False, 5)
    assert list(g.by_key) == ["a::0"]
    assert graph(Loop("l", T("a")), {"l": (2, True)}).loops["l"].until is True
    assert graph(Loop("l", T("a"), until=True), {"l": (2, False)}).loops["l"].until is True


def test_nodes_inside_two_nested_loops_get_scoped_ids() -> None:
    g = graph(
        Loop("outer", Sequence(T("pre"), Loop("inner", T("x"), Parallel(T("y"))))),
        {"outer": (2, False), "inner@@outer=2": (1, False)},
    )
    assert list(g.loops) == ["outer", "inner@@outer=2"]
    assert g.loops["inner@@outer=2"].iteration == 1
    rows = [(d.node_id, d.iteration, d.ralph_id, d.key) for d in g.descriptors]
    assert rows == [
        ("pre", 2, "outer", "pre::2"),
        ("x@@outer=2", 1, "inner@@outer=2", "x@@outer=2::1"),
        ("y@@outer=2", 1, "inner@@outer=2", "y@@outer=2::1"),
    ]
    assert g.loops["outer"].node_keys == ["pre::2"]
    assert g.loops["inner@@outer=2"].node_keys == ["x@@outer=2::1", "y@@outer=2::1"]
    inner_xml = g.xml["children"][0]["children"][0]["children"][1]
    assert inner_xml["tag"] == "smithers:ralph"
    assert inner_xml["props"]["id"] == "inner"
    assert inner_xml["children"][0]["props"]["id"] == "x@@outer=2"


def test_scoped_ids_follow_the_outer_iteration() -> None:
    g = graph(Loop("outer", Sequence(Loop("inner", T("x")))), {"outer": (4, False)})
    assert list(g.by_key) == ["x@@outer=4::0"]
    assert list(g.loops) == ["outer", "inner@@outer=4"]


def test_three_nested_loops_scope_with_every_ancestor_loop() -> None:
    g = graph(
        Loop("a", Sequence(Loop("b", Sequence(Loop("c", T("z")))))),
        {"a": (1, False), "b@@a=1": (2, False), "c@@a=1,b=2": (3, False)},
    )
    assert list(g.loops) == ["a", "b@@a=1", "c@@a=1,b=2"]
    z = g.descriptors[0]
    assert (z.node_id, z.iteration, z.ralph_id, z.key) == ("z@@a=1,b=2", 3, "c@@a=1,b=2", "z@@a=1,b=2::3")


# ---- extract(): parallel group ids -------------------------------------------------------------


def test_parallel_root_gets_the_root_auto_id() -> None:
    g = graph(Parallel(T("a"), max_concurrency=3))
    assert (g.by_key["a::0"].parallel_group, g.by_key["a::0"].parallel_max) == ("parallel:root", 3)
    assert g.xml["children"][0]["props"] == {"id": "parallel:root", "maxConcurrency": "3"}


def test_parallel_auto_ids_follow_the_element_index_path() -> None:
    g = graph(Sequence(T("a"), Parallel(T("b")), Sequence(T("c"), Parallel(T("d"), Parallel(T("e"))))))
    groups = {d.node_id: d.parallel_group for d in g.descriptors}
    assert groups == {"a": None, "b": "parallel:1", "c": None, "d": "parallel:2.1", "e": "parallel:2.1.1"}
    assert g.by_key["b::0"].parallel_max is None


def test_explicit_parallel_id_is_kept() -> None:
    g = graph(Sequence(Parallel(T("a"), id="fanout", max_concurrency=2)))
    assert (g.by_key["a::0"].parallel_group, g.by_key["a::0"].parallel_max) == ("fanout", 2)


def test_parallel_auto_id_counts_only_mounted_elements() -> None:
    """The path counts only element children, so an unmounted sibling takes no index."""
    g = graph(Sequence(Sequence(T("x"), skip_if=True), Parallel(T("p"))))
    assert g.by_key["p::0"].parallel_group == "parallel:0"


# ---- extract(): canonical XML ------------------------------------------------------------------


def test_canonical_xml_of_a_small_tree() -> None:
    g = graph(
        Sequence(
            Task("a", run=lambda ctx: 1, retries=2, timeout_ms=500, needs_approval=True, label="A"),
            Approval("ap", title="Ship?", on_deny="fail"),
            WaitForEvent("w", event="go", correlation_id="c1"),
            Timer("t", duration_ms=1500),
            Loop("l", T("b"), max_iterations=3),
        ),
        {"l": (1, False)},
    )
    assert g.xml == {
        "kind": "element",
        "tag": "smithers:workflow",
        "props": {"name": "wf"},
        "children": [
            {
                "kind": "element",
                "tag": "smithers:sequence",
                "props": {},
                "children": [
                    {
                        "kind": "element",
                        "tag": "smithers:task",
                        "props": {
                            "id": "a",
                            "kind": "compute",
                            "label": "A",
                            "needsApproval": "true",
                            "output": "output",
                            "retries": "2",
                            "timeoutMs": "500",
                        },
                        "children": [],
                    },
                    {
                        "kind": "element",
                        "tag": "smithers:task",
                        "props": {
                            "id": "ap",
                            "kind": "approval",
                            "label": "Ship?",
                            "mode": "approve",
                            "onDeny": "fail",
                            "title": "Ship?",
                        },
                        "children": [],
                    },
                    {
                        "kind": "element",
                        "tag": "smithers:wait-for-event",
                        "props": {"correlationId": "c1", "event": "go", "id": "w", "label": "wait:go"},
                        "children": [],
                    },
                    {
                        "kind": "element",
                        "tag": "smithers:timer",
                        "props": {"durationMs": "1500", "id": "t", "label": "timer:t"},
                        "children": [],
                    },
                    {
                        "kind": "element",
                        "tag": "smithers:ralph",
                        "props": {"id": "l", "iteration": "1", "maxIterations": "3", "until": "false"},
                        "children": [
                            {
                                "kind": "element",
                                "tag": "smithers:task",
                                "props": {"id": "b", "kind": "static", "output": "output"},
                                "children": [],
                            }
                        ],
                    },
                ],
            }
        ],
    }


def test_canonical_xml_props_are_sorted_strings() -> None:
    g = graph(
        Parallel(
            Branch(True, then=Sequence(T("z", retries=0, timeout_ms=1))),
            Loop("loop", T("y"), until=True, max_iterations=2),
            id="p",
            max_concurrency=9,
        )
    )

    def elements(el: dict[str, Any]) -> Iterable[dict[str, Any]]:
        yield el
        for child in el["children"]:
            yield from elements(child)

    seen = list(elements(g.xml))
    assert len(seen) == 7
    for el in seen:
        assert list(el["props"]) == sorted(el["props"]), el["tag"]
        assert all(isinstance(v, str) for v in el["props"].values()), el["tag"]
    assert seen[2]["props"] == {"condition": "true"}
    assert seen[4]["props"] == {"id": "z", "kind": "static", "output": "output", "retries": "0", "timeoutMs": "1"}
    assert seen[5]["props"] == {"id": "loop", "iteration": "0", "maxIterations": "2", "until": "true"}
