"""The DevTools tree (version 1): building from frames, stable ids, deltas (docs/protocol.md#devtools)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import smithers
from smithers import Approval, Branch, Loop, Parallel, Sequence, Task, workflow
from smithers.engine import devtools as dt
from smithers.engine.extract import extract
from smithers.engine.history import read_frames
from smithers.store.store import Store

WF = "smithers:workflow"
SPEC_TAGS = {
    "smithers:workflow": "workflow",
    "smithers:task": "task",
    "smithers:sequence": "sequence",
    "smithers:parallel": "parallel",
    "smithers:merge-queue": "merge-queue",
    "smithers:branch": "branch",
    "smithers:ralph": "loop",
    "smithers:worktree": "worktree",
    "smithers:approval": "approval",
    "smithers:timer": "timer",
    "smithers:subflow": "subflow",
    "smithers:wait-for-event": "wait-for-event",
    "smithers:saga": "saga",
    "smithers:try-catch-finally": "try-catch",
}


def el(tag: str, props: dict[str, Any] | None = None, *children: Any) -> dict[str, Any]:
    return {"kind": "element", "tag": tag, "props": props or {}, "children": list(children)}


def wf(*children: Any, name: str = "demo") -> dict[str, Any]:
    return el(WF, {"name": name}, *children)


def fnv1a_reference(path: str) -> int:
    """Independent FNV-1a 32-bit over UTF-16 code units, masked to 31 bits."""
    data = path.encode("utf-16-le", "surrogatepass")
    units = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
    h = 2166136261
    for unit in units:
        h = ((h ^ unit) * 16777619) % 2**32
    return h & 0x7FFFFFFF


def exact(value: Any) -> str:
    """A comparison that sees key order and tells ``true`` from ``1``."""
    return json.dumps(value, ensure_ascii=False)


def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(reversed(current["children"]))
    return out


# -- empty snapshot ----------------------------------------------------------------------------------


def test_empty_snapshot_is_the_spec_document() -> None:
    expected = (
        '{"version":1,"runId":"r","frameNo":0,"seq":0,'
        '"root":{"id":0,"type":"workflow","name":"(empty)","props":{},"children":[],"depth":0}}'
    )
    assert json.dumps(dt.empty_snapshot("r"), separators=(",", ":")) == expected
    assert dt.empty_root() == dt.EMPTY_ROOT and dt.empty_root() is not dt.empty_root()
    with_state = dt.empty_snapshot("r", {"status": "running"})
    assert list(with_state) == ["version", "runId", "frameNo", "seq", "root", "runState"]


@pytest.mark.parametrize(
    "xml", [None, [], 3, "not json", "{bad", "[]", {"kind": "text"}, {"tag": WF}, '{"kind":"text"}', b"\xff"]
)
def test_invalid_documents_give_the_empty_root(xml: Any) -> None:
    assert exact(dt.build_tree(xml)) == exact(dt.empty_root())


def test_snapshot_shape_and_json_text_input() -> None:
    doc = wf(el("smithers:task", {"id": "a"}))
    snap = dt.snapshot("run1", 7, json.dumps(doc), run_state={"status": "finished"})
    assert list(snap) == ["version", "runId", "frameNo", "seq", "root", "runState"]
    assert (snap["version"], snap["runId"], snap["frameNo"], snap["seq"]) == (1, "run1", 7, 7)
    assert exact(snap["root"]) == exact(dt.build_tree(doc))
    assert "runState" not in dt.snapshot("run1", 7, doc)


# -- ids -------------------------------------------------------------------------------------------


def test_fnv1a_known_values() -> None:
    # FNV-1a of the empty string is the offset basis; masked to 31 bits.
    assert dt.stable_node_id("") == 0x011C9DC5 == fnv1a_reference("")
    # Conformance vectors of the protocol.
    assert dt.stable_node_id("smithers:workflow") == 1753301139
    assert dt.stable_node_id("smithers:workflow/smithers:task#task1") == 843853727
    assert dt.stable_node_id("smithers:workflow/smithers:sequence") == 1210785256


@pytest.mark.parametrize(
    "path", ["a", "smithers:workflow/smithers:task#x[2]", "naïve/ユニコード", "emoji😀/x", "lone\ud800", "a\u0000b"]
)
def test_fnv1a_matches_the_reference_over_utf16_code_units(path: str) -> None:
    assert dt.stable_node_id(path) == fnv1a_reference(path)


def test_astral_characters_hash_as_two_code_units() -> None:
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16: hashing those two units gives the same id.
    assert dt.stable_node_id("😀") == dt.stable_node_id("\ud83d\ude00") == fnv1a_reference("\ud83d\ude00")
    assert dt.stable_node_id("😀") != dt.stable_node_id("\ufffd")


def test_ids_follow_identity_paths() -> None:
    root = dt.build_tree(wf(el("smithers:sequence", {}, el("smithers:task", {"id": "build"}))))
    seq = root["children"][0]
    task = seq["children"][0]
    assert root["id"] == dt.stable_node_id("smithers:workflow")
    assert seq["id"] == dt.stable_node_id("smithers:workflow/smithers:sequence")
    assert task["id"] == dt.stable_node_id("smithers:workflow/smithers:sequence/smithers:task#build")


def test_repeated_sibling_fragments_get_an_occurrence_suffix() -> None:
    root = dt.build_tree(
        wf(
            el("smithers:sequence"),
            el("smithers:task", {"id": "a"}),
            el("smithers:sequence"),
            el("smithers:task", {"nodeId": "a"}),  # same fragment as the id "a" above
            el("smithers:sequence"),
        )
    )
    paths = [
        "smithers:workflow/smithers:sequence",
        "smithers:workflow/smithers:task#a",
        "smithers:workflow/smithers:sequence[1]",
        "smithers:workflow/smithers:task#a[1]",
        "smithers:workflow/smithers:sequence[2]",
    ]
    assert [c["id"] for c in root["children"]] == [dt.stable_node_id(p) for p in paths]


def test_fragment_uses_the_raw_string_id() -> None:
    # props.id "5" decodes to the number 5 (so the task sidecar ignores it), but the identity path
    # is built from the raw string.
    root = dt.build_tree(wf(el("smithers:task", {"id": "5", "nodeId": "n5"})))
    node = root["children"][0]
    assert node["id"] == dt.stable_node_id("smithers:workflow/smithers:task#5")
    assert node["props"]["id"] == 5
    assert node["task"]["nodeId"] == "n5"
    # An empty string id wins over nodeId: no fragment id, no task.
    empty = dt.build_tree(wf(el("smithers:task", {"id": "", "nodeId": "x"})))["children"][0]
    assert empty["id"] == dt.stable_node_id("smithers:workflow/smithers:task")
    assert "task" not in empty


def test_colliding_paths_are_rehashed_with_a_salt() -> None:
    # These two paths share an FNV-1a id (found by search; checked here).
    first = "smithers:workflow/smithers:task#tuyqkzjd"
    second = "smithers:workflow/smithers:task#wvzedeov"
    assert dt.stable_node_id(first) == dt.stable_node_id(second)
    root = dt.build_tree(wf(el("smithers:task", {"id": "tuyqkzjd"}), el("smithers:task", {"id": "wvzedeov"})))
    ids = [c["id"] for c in root["children"]]
    assert ids == [dt.stable_node_id(first), dt.stable_node_id(second + "\u00001")]


def test_ids_are_assigned_children_first_by_parent() -> None:
    # Pre-order by parent: the root's children are all created before the first one's children, so
    # when a grandchild's path collides with a later child's, the grandchild is the one rehashed.
    grandchild = "smithers:workflow/smithers:sequence#s/smithers:task#fbavmmja"
    child = "smithers:workflow/smithers:task#jlungcvr"
    assert dt.stable_node_id(grandchild) == dt.stable_node_id(child)
    root = dt.build_tree(
        wf(
            el("smithers:sequence", {"id": "s"}, el("smithers:task", {"id": "fbavmmja"})),
            el("smithers:task", {"id": "jlungcvr"}),
        )
    )
    assert root["children"][1]["id"] == dt.stable_node_id(child)
    assert root["children"][0]["children"][0]["id"] == dt.stable_node_id(grandchild + "\u00001")


def test_existing_node_keeps_its_id_when_a_sibling_is_inserted_before_it() -> None:
    before = dt.snapshot("r", 1, wf(el("smithers:sequence", {}, el("smithers:task", {"id": "b"}))))
    after = dt.snapshot(
        "r", 2, wf(el("smithers:sequence", {}, el("smithers:task", {"id": "a"}), el("smithers:task", {"id": "b"})))
    )
    b_before = before["root"]["children"][0]["children"][0]
    b_after = after["root"]["children"][0]["children"][1]
    assert b_before["id"] == b_after["id"]
    delta = dt.diff_snapshots(before, after)
    # b's index changed, so it is removed and re-added (§11.6); a is added at index 0.
    assert [op["op"] for op in delta["ops"]] == ["removeNode", "addNode", "addNode"]
    assert [op.get("index") for op in delta["ops"][1:]] == [0, 1]
    assert exact(dt.apply_delta(before, delta)) == exact(after)


# -- node fields -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "type_"), sorted(SPEC_TAGS.items()))
def test_tag_to_type(tag: str, type_: str) -> None:
    node = dt.build_tree(wf(el(tag)))["children"][0]
    assert node["type"] == type_
    assert node["name"] == tag.removeprefix("smithers:")


def test_unknown_and_missing_tags() -> None:
    root = dt.build_tree(
        wf(
            el("smithers:bogus"),
            el("custom-tag"),
            {"kind": "element", "props": {}},
            el(""),
            "text child",
            {"kind": "text", "text": "x"},
            None,
        )
    )
    kids = root["children"]
    assert [(c["type"], c["name"]) for c in kids] == [
        ("unknown", "bogus"),
        ("unknown", "custom-tag"),
        ("unknown", "unknown"),
        ("unknown", "unknown"),
    ]
    # A missing tag is the string "unknown" in the identity path too.
    assert kids[2]["id"] == dt.stable_node_id("smithers:workflow/unknown")


def test_workflow_name_rule() -> None:
    assert dt.build_tree(wf(name="hello"))["name"] == "hello"
    assert dt.build_tree(wf(name="42"))["name"] == "workflow"  # decodes to a number
    assert dt.build_tree(wf(name=""))["name"] == "unknown"  # empty → unknown
    assert dt.build_tree(el(WF))["name"] == "workflow"
    # Only workflow nodes take their name from props.
    assert dt.build_tree(el("smithers:sequence", {"name": "x"}))["name"] == "sequence"


def test_node_key_order() -> None:
    root = dt.build_tree(wf(el("smithers:task", {"id": "a"}), el("smithers:sequence")))
    assert list(root) == ["id", "type", "name", "props", "children", "depth"]
    assert list(root["children"][0]) == ["id", "type", "name", "props", "task", "children", "depth"]
    assert list(root["children"][1]) == ["id", "type", "name", "props", "children", "depth"]
    assert [c["depth"] for c in root["children"]] == [1, 1] and root["depth"] == 0


def test_props_decoding() -> None:
    raw = {
        "t": "true",
        "f": "false",
        "n": "null",
        "int": "2",
        "neg": "-3",
        "frac": "2.5",
        "intfrac": "2.0",
        "zeros": "007",
        "exp": "1e5",
        "space": " 2",
        "plus": "+2",
        "obj": '{"z":1,"a":[1,{"y":2,"b":3}]}',
        "arr": '[1,"x",null]',
        "badobj": "{not json}",
        "nan": "[NaN]",
        "text": "hello",
        "huge": "1" * 400,
        "raw_number": 4,
        "raw_obj": {"b": 1, "a": 2},
    }
    props = dt.build_tree(el("smithers:sequence", raw))["props"]
    expected = {
        "t": True,
        "f": False,
        "n": None,
        "int": 2,
        "neg": -3,
        "frac": 2.5,
        "intfrac": 2,
        "zeros": 7,
        "exp": "1e5",
        "space": " 2",
        "plus": "+2",
        "obj": {"a": [1, {"b": 3, "y": 2}], "z": 1},
        "arr": [1, "x", None],
        "badobj": "{not json}",
        "nan": "[NaN]",
        "text": "hello",
        "huge": "1" * 400,
        "raw_number": 4,
        "raw_obj": {"a": 2, "b": 1},
    }
    assert exact(props) == exact(expected)
    assert isinstance(props["int"], int) and isinstance(props["intfrac"], int) and isinstance(props["frac"], float)


def test_props_key_order_follows_javascript() -> None:
    # Props keep document order, except that array-index keys come first, ascending (JS objects).
    props = dt.build_tree(el("smithers:sequence", {"b": "1", "10": "x", "9": "y", "a": "2"}))["props"]
    assert list(props) == ["9", "10", "b", "a"]
    # Nested objects are sorted by UTF-16 code units (JS sort), again with index keys first.
    nested = dt.build_tree(el("smithers:sequence", {"v": json.dumps({"\uffff": 1, "😀": 2, "b": 3, "2": 4})}))
    assert list(nested["props"]["v"]) == ["2", "b", "😀", "\uffff"]


def test_value_depth_limit() -> None:
    def depth_of_marker(value: Any) -> int | None:
        depth = 0
        while isinstance(value, list):
            if not value:
                return None
            value = value[0]
            depth += 1
        return depth if value == "[MaxDepth]" else None

    at_limit = dt.build_tree(el("smithers:sequence", {"v": "[" * 101 + "]" * 101}))["props"]["v"]
    assert depth_of_marker(at_limit) is None  # lists at depths 0..100 are kept
    over = dt.build_tree(el("smithers:sequence", {"v": "[" * 102 + "]" * 102}))["props"]["v"]
    assert depth_of_marker(over) == 101


def test_value_entry_limit() -> None:
    text = "[" + ",".join(["{}"] * 100_000) + "]"
    value = dt.build_tree(el("smithers:sequence", {"v": text}))["props"]["v"]
    assert len(value) == 100_000
    assert value[-2] == {} and value[-1] == "[MaxEntries]"  # the outer array counts as one


def test_serializer_marks_cycles_and_odd_values() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    shared = {"k": 1}
    assert dt.serialize_value(cyclic) == [1, "[Circular]"]
    assert dt.serialize_value([shared, shared]) == [{"k": 1}, {"k": 1}]  # shared, not a cycle
    assert dt.serialize_value({1, 2}) == "[set]"
    assert dt.serialize_value(float("inf")) is None
    assert dt.serialize_value(2**60) == float(2**60)


# -- task info ---------------------------------------------------------------------------------------


def test_task_info_with_iteration_suffix() -> None:
    node = dt.build_tree(
        wf(el("smithers:task", {"id": "build::3", "kind": "compute", "label": "Build", "output": "out_t"}))
    )["children"][0]
    assert exact(node["task"]) == exact(
        {"nodeId": "build", "kind": "compute", "label": "Build", "outputTableName": "out_t", "iteration": 3}
    )
    # The identity path uses the raw id, suffix included.
    assert node["id"] == dt.stable_node_id("smithers:workflow/smithers:task#build::3")


@pytest.mark.parametrize(
    ("props", "task"),
    [
        ({"id": "a::3", "iteration": "7"}, {"nodeId": "a", "kind": "static", "iteration": 7}),
        ({"id": "a::x"}, {"nodeId": "a::x", "kind": "static"}),
        ({"id": "a::1::2"}, {"nodeId": "a::1", "kind": "static", "iteration": 2}),
        ({"id": "a", "kind": "approval"}, {"nodeId": "a", "kind": "static"}),
        ({"id": "a", "kind": "agent", "agent": "claude"}, {"nodeId": "a", "kind": "agent", "agent": "claude"}),
        ({"id": "a", "__smithersKind": "compute", "kind": "agent"}, {"nodeId": "a", "kind": "agent"}),
        ({"id": "a", "__smithersKind": "compute"}, {"nodeId": "a", "kind": "compute"}),
        (
            {"id": "a", "outputTableName": "t1", "output": "t2"},
            {"nodeId": "a", "kind": "static", "outputTableName": "t1"},
        ),
        ({"id": "a", "label": "true"}, {"nodeId": "a", "kind": "static"}),  # label decodes to a boolean
        ({"nodeId": "n::0"}, {"nodeId": "n", "kind": "static", "iteration": 0}),
        ({"id": "a\n::3"}, {"nodeId": "a\n::3", "kind": "static"}),  # JS `.` stops at a line break
    ],
)
def test_task_info_rules(props: dict[str, Any], task: dict[str, Any]) -> None:
    node = dt.build_tree(wf(el("smithers:task", props)))["children"][0]
    assert exact(node["task"]) == exact(task)


def test_no_task_info_without_a_string_id_or_on_other_types() -> None:
    root = dt.build_tree(
        wf(el("smithers:task", {}), el("smithers:task", {"id": "true"}), el("smithers:timer", {"id": "t"}))
    )
    assert all("task" not in c for c in root["children"])


def test_our_dsl_elements_map_per_the_table() -> None:
    class Out(BaseModel):
        n: int

    tree = Sequence(
        Task("compute", output=Out, run=lambda ctx: Out(n=1)),
        Task("static", value={"n": 1}),
        Parallel(Task("p", value=1), id="par"),
        Branch(True, Task("then", value=1), id="br"),
        Loop("lp", Task("body", value=1), max_iterations=2),
        Approval("gate", title="Go?"),
        smithers.WaitForEvent("w", event="go"),
        smithers.Timer("tm", duration_ms=5),
    )
    graph = extract(tree, "dsl", {})
    root = dt.build_tree(graph.xml)
    assert (root["type"], root["name"]) == ("workflow", "dsl")
    seq = root["children"][0]
    got = [(c["type"], c["name"], c.get("task", {}).get("kind")) for c in seq["children"]]
    assert got == [
        ("task", "task", "compute"),
        ("task", "task", "static"),
        ("parallel", "parallel", None),
        ("branch", "branch", None),
        ("loop", "ralph", None),
        ("task", "task", "static"),  # Approval renders as smithers:task, kind "approval" → static
        ("wait-for-event", "wait-for-event", None),
        ("timer", "timer", None),
    ]
    assert seq["children"][0]["task"]["outputTableName"] == "out"


# -- depth limit -------------------------------------------------------------------------------------


def test_tree_depth_limit_markers() -> None:
    # workflow (depth 0) → 256 nested sequences (depths 1..256) → two children at depth 257.
    inner: dict[str, Any] = el("smithers:sequence", {}, el("smithers:task", {"id": "deep"}), el("smithers:timer"))
    for _ in range(255):
        inner = el("smithers:sequence", {}, inner)
    root = dt.build_tree(wf(inner))
    node, path = root, "smithers:workflow"
    for depth in range(1, 257):
        node = node["children"][0]
        path += "/smithers:sequence"
        assert node["depth"] == depth and node["type"] == "sequence"
    assert node["id"] == dt.stable_node_id(path)
    markers = node["children"]
    assert [m["id"] for m in markers] == [
        dt.stable_node_id(f"{path}/__maxdepth__0"),
        dt.stable_node_id(f"{path}/__maxdepth__1"),
    ]
    assert exact(markers[0]) == exact(
        {
            "id": markers[0]["id"],
            "type": "unknown",
            "name": "[MaxDepth]",
            "props": {"value": "[MaxDepth]"},
            "children": [],
            "depth": 257,
        }
    )
    # Deep trees survive diff, apply and sizing.
    before = dt.snapshot("r", 1, wf())
    after = {**dt.empty_snapshot("r"), "frameNo": 2, "seq": 2, "root": root}
    assert exact(dt.apply_delta(before, dt.diff_snapshots(before, after))) == exact(after)
    assert dt.event_size(after) > 0


# -- deltas ------------------------------------------------------------------------------------------


def snap(seq: int, doc: Any) -> dict[str, Any]:
    return dt.snapshot("r", seq, doc)


def test_no_change_gives_no_ops() -> None:
    doc = wf(el("smithers:sequence", {}, el("smithers:task", {"id": "a"})))
    delta = dt.diff_snapshots(snap(3, doc), snap(4, doc))
    assert exact(delta) == exact({"version": 1, "baseSeq": 3, "seq": 4, "ops": []})


def test_replace_root_when_the_root_changes() -> None:
    a, b = snap(1, wf(name="one")), snap(2, wf(el("smithers:task", {"id": "x"}), name="two"))
    delta = dt.diff_snapshots(a, b)
    assert exact(delta["ops"]) == exact([{"op": "replaceRoot", "node": b["root"]}])
    assert exact(dt.apply_delta(a, delta)) == exact(b)
    empty = dt.empty_snapshot("r")
    assert [op["op"] for op in dt.diff_snapshots(empty, b)["ops"]] == ["replaceRoot"]


def test_update_props_and_task_ops() -> None:
    a = snap(1, wf(el("smithers:task", {"id": "t", "label": "one", "x": "1"})))
    b = snap(2, wf(el("smithers:task", {"id": "t", "label": "two", "x": "1"})))
    delta = dt.diff_snapshots(a, b)
    tid = b["root"]["children"][0]["id"]
    assert exact(delta["ops"]) == exact(
        [
            {"op": "updateProps", "id": tid, "props": {"id": "t", "label": "two", "x": 1}},
            {"op": "updateTask", "id": tid, "task": {"nodeId": "t", "kind": "static", "label": "two"}},
        ]
    )
    assert exact(dt.apply_delta(a, delta)) == exact(b)


def test_update_task_without_task_removes_it_and_adding_it_keeps_key_order() -> None:
    with_task = snap(1, wf(el("smithers:task", {"id": "7", "nodeId": "n"})))
    without = snap(2, wf(el("smithers:task", {"id": "7"})))  # same identity path, no string id left
    down = dt.diff_snapshots(with_task, without)
    tid = without["root"]["children"][0]["id"]
    assert exact(down["ops"]) == exact(
        [{"op": "updateProps", "id": tid, "props": {"id": 7}}, {"op": "updateTask", "id": tid}]
    )
    assert exact(dt.apply_delta(with_task, down)) == exact(without)
    up = dt.diff_snapshots(without, {**with_task, "seq": 3, "frameNo": 3})
    assert exact(dt.apply_delta(without, up)["root"]) == exact(with_task["root"])


def test_op_order_removes_deepest_first_then_adds_shallowest_first() -> None:
    a = snap(
        1,
        wf(
            el("smithers:sequence", {"id": "s"}, el("smithers:task", {"id": "x"})),
            el("smithers:task", {"id": "gone"}),
        ),
    )
    b = snap(
        2,
        wf(
            el(
                "smithers:sequence", {"id": "s"}, el("smithers:parallel", {"id": "p"}, el("smithers:task", {"id": "y"}))
            ),
            el("smithers:task", {"id": "new"}),
        ),
    )
    ops = dt.diff_snapshots(a, b)["ops"]
    kinds = [(op["op"], op.get("node", {}).get("depth")) for op in ops]
    assert kinds == [("removeNode", None), ("removeNode", None), ("addNode", 1), ("addNode", 2)]
    assert ops[0]["id"] == a["root"]["children"][0]["children"][0]["id"]  # depth 2 before depth 1
    assert ops[3]["node"]["children"][0]["props"] == {"id": "y"}  # an add carries its whole subtree
    assert list(ops[2]) == ["op", "parentId", "index", "node"]
    assert exact(dt.apply_delta(a, dt.diff_snapshots(a, b))) == exact(b)


def test_new_sibling_before_a_moved_one_lands_in_order() -> None:
    # [m, x, u] → [n, m, u]: m moves to index 1, n is new at 0, u keeps index 2. Adding m before n
    # (JavaScript's tie order) would give [n, u, m].
    t = "smithers:task"
    a = snap(1, wf(el(t, {"id": "m"}), el(t, {"id": "x"}), el(t, {"id": "u"})))
    b = snap(2, wf(el(t, {"id": "n"}), el(t, {"id": "m"}), el(t, {"id": "u"})))
    delta = dt.diff_snapshots(a, b)
    assert [(op["op"], op.get("index")) for op in delta["ops"] if op["op"] == "addNode"] == [
        ("addNode", 0),
        ("addNode", 1),
    ]
    assert exact(dt.apply_delta(a, delta)) == exact(b)


def test_grandchild_added_under_a_moved_grandparent_is_added_once() -> None:
    # A moves (index 0 → 1); its child k keeps (parent, index); k gains a child z. z is inside A's
    # re-added subtree, so it must not be added again on its own.
    t, s = "smithers:task", "smithers:sequence"
    a = snap(1, wf(el(s, {"id": "A"}, el(s, {"id": "k"})), el(t, {"id": "B"})))
    b = snap(2, wf(el(t, {"id": "B"}), el(s, {"id": "A"}, el(s, {"id": "k"}, el(t, {"id": "z"})))))
    delta = dt.diff_snapshots(a, b)
    z_id = b["root"]["children"][1]["children"][0]["children"][0]["id"]
    assert all(op.get("node", {}).get("id") != z_id for op in delta["ops"])
    assert exact(dt.apply_delta(a, delta)) == exact(b)


def test_diff_refuses_different_runs() -> None:
    with pytest.raises(ValueError):
        dt.diff_snapshots(dt.empty_snapshot("a"), dt.empty_snapshot("b"))


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"version": 2, "baseSeq": 1, "seq": 2, "ops": []}, "Unsupported delta version"),
        ({"version": 1, "baseSeq": 0, "seq": 2, "ops": []}, "does not match snapshot seq 1"),
        ({"version": 1, "baseSeq": 1, "seq": 2, "ops": [{"op": "removeNode", "id": 12345}]}, "Unknown node id"),
        ({"version": 1, "baseSeq": 1, "seq": 2, "ops": [{"op": "updateProps", "id": 9, "props": {}}]}, "Unknown"),
        ({"version": 1, "baseSeq": 1, "seq": 2, "ops": [{"op": "teleport"}]}, "Unknown op"),
        ({"version": 1, "baseSeq": 1, "seq": 2, "ops": [{"op": "replaceRoot"}]}, "requires a node"),
        (
            {"version": 1, "baseSeq": 1, "seq": 2, "ops": [{"op": "addNode", "parentId": 1, "index": 0, "node": {}}]},
            "Unknown parent id",
        ),
    ],
)
def test_apply_delta_refuses_inconsistent_deltas(delta: dict[str, Any], message: str) -> None:
    base = snap(1, wf(el("smithers:task", {"id": "a"})))
    with pytest.raises(dt.InvalidDeltaError, match=message) as info:
        dt.apply_delta(base, delta)
    assert info.value.code == "InvalidDelta"


def test_apply_delta_refuses_root_removal_bad_index_and_duplicate_ids() -> None:
    base = snap(1, wf(el("smithers:task", {"id": "a"})))
    root_id = base["root"]["id"]
    child = base["root"]["children"][0]
    head = {"version": 1, "baseSeq": 1, "seq": 2}
    with pytest.raises(dt.InvalidDeltaError, match="Cannot remove the root"):
        dt.apply_delta(base, {**head, "ops": [{"op": "removeNode", "id": root_id}]})
    fresh = {**child, "id": 99}
    with pytest.raises(dt.InvalidDeltaError, match="out of range"):
        dt.apply_delta(base, {**head, "ops": [{"op": "addNode", "parentId": root_id, "index": 5, "node": fresh}]})
    with pytest.raises(dt.InvalidDeltaError, match="Duplicate node id"):
        dt.apply_delta(base, {**head, "ops": [{"op": "addNode", "parentId": root_id, "index": 0, "node": child}]})
    # The input snapshot is never modified.
    assert exact(base) == exact(snap(1, wf(el("smithers:task", {"id": "a"}))))


def test_apply_delta_keeps_other_snapshot_fields() -> None:
    base = {**snap(1, wf()), "runState": {"status": "running"}}
    out = dt.apply_delta(base, {"version": 1, "baseSeq": 1, "seq": 5, "ops": []})
    assert list(out) == ["version", "runId", "frameNo", "seq", "root", "runState"]
    assert (out["frameNo"], out["seq"], out["runState"]) == (5, 5, {"status": "running"})


def test_event_size_is_compact_utf8_json() -> None:
    assert dt.event_size({"a": [1, 2], "b": "x"}) == len('{"a":[1,2],"b":"x"}')
    assert dt.event_size({"s": "é😀"}) == len('{"s":""}') + 2 + 4
    assert dt.event_size({"s": "\ud800"}) == len('{"s":"\\ud800"}')  # lone surrogate escaped, as JS does
    event = dt.delta_event({"version": 1, "baseSeq": 0, "seq": 1, "ops": []})
    assert list(event) == ["version", "kind", "delta"]
    assert list(dt.snapshot_event(dt.empty_snapshot("r"))) == ["version", "kind", "snapshot"]


# -- property: deltas reproduce every next snapshot --------------------------------------------------

_TAGS = [*SPEC_TAGS, "smithers:bogus", "custom"]
_PROP_VALUES = ["x", "y", "true", "0", "2.5", "null", '{"b":1,"a":2}', "[1,2]", "{bad}", ""]
_ID_KEYS = ["id", "nodeId"]
_IDS = ["a", "b", "c", "a::1", "a::2", "5", ""]


# Trees are built from a seeded random generator (hypothesis picks the seeds and can replay them):
# drawing every node through hypothesis strategies made the test several times slower.


def _random_element(rng: random.Random, depth: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if rng.random() < 0.6:
        props[rng.choice(_ID_KEYS)] = rng.choice(_IDS)
    for key in rng.sample(["label", "kind", "output", "v", "w", "9"], rng.randint(0, 3)):
        props[key] = rng.choice([*_PROP_VALUES, "compute", "agent"])
    children: list[Any] = []
    if depth < 4:
        for _ in range(rng.randint(0, 4 if depth < 2 else 2)):
            children.append(_random_element(rng, depth + 1) if rng.random() < 0.9 else "text")
    return el(rng.choice(_TAGS), props, *children)


def _random_frame(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.12:
        return _random_element(rng, 0)  # a root of another type or name now and then
    return el(WF, {"name": rng.choice(["w", "w2"])}, *(_random_element(rng, 1) for _ in range(rng.randint(0, 4))))


def _elements_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [doc]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(c for c in current["children"] if isinstance(c, dict))
    return out


def _mutate(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    """The next frame as a few edits of the last one: inserts, deletes, moves, prop and tag changes."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 4)):
        nodes = _elements_of(doc)
        target = rng.choice(nodes)
        edit = rng.randrange(5)
        kids = target["children"]
        if edit == 0:
            kids.insert(rng.randint(0, len(kids)), _random_element(rng, 3))
        elif edit == 1 and kids:
            kids.pop(rng.randrange(len(kids)))
        elif edit == 2 and kids:
            moved = kids.pop(rng.randrange(len(kids)))
            inside = {id(n) for n in _elements_of(moved)} if isinstance(moved, dict) else set()
            dest = rng.choice([n for n in _elements_of(doc) if id(n) not in inside])
            dest["children"].insert(rng.randint(0, len(dest["children"])), moved)
        elif edit == 3:
            target["props"][rng.choice(["label", "kind", "v", "id"])] = rng.choice([*_PROP_VALUES, *_IDS])
        elif target is not doc:
            target["tag"] = rng.choice(_TAGS)
    return doc


def _frame_sequence(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    frames = [_random_frame(rng)]
    while len(frames) < count:
        frames.append(_mutate(rng, frames[-1]) if rng.random() < 0.7 else _random_frame(rng))
    return frames


def _check_delta(a: dict[str, Any], b: dict[str, Any]) -> None:
    delta = dt.diff_snapshots(a, b)
    assert list(delta) == ["version", "baseSeq", "seq", "ops"]
    assert (delta["baseSeq"], delta["seq"]) == (a["seq"], b["seq"])
    ra, rb = a["root"], b["root"]
    root_changed = ra["id"] != rb["id"] or (ra["type"], ra["name"], ra["depth"]) != (
        rb["type"],
        rb["name"],
        rb["depth"],
    )
    kinds = [op["op"] for op in delta["ops"]]
    if root_changed:
        assert kinds == ["replaceRoot"]
    else:
        assert "replaceRoot" not in kinds
    patched = dt.apply_delta(a, delta)
    assert exact(patched) == exact(b)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_deltas_reproduce_each_next_snapshot(seed: int, count: int) -> None:
    frames = _frame_sequence(seed, count)
    snaps = [dt.snapshot("run", n + 1, doc) for n, doc in enumerate(frames)]
    for s in snaps:
        ids = [node["id"] for node in walk(s["root"])]
        assert len(ids) == len(set(ids)) and all(0 <= i <= 0x7FFFFFFF for i in ids)
    for a, b in itertools.pairwise(snaps):
        _check_delta(a, b)
    # And backwards (removals instead of additions), and from the empty snapshot.
    for a, b in itertools.pairwise(reversed(snaps)):
        _check_delta(a, {**b, "seq": a["seq"] + 1, "frameNo": a["seq"] + 1})
    _check_delta(dt.empty_snapshot("run"), snaps[0])


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(_TAGS), st.sampled_from(_TAGS), st.sampled_from(["w", "w2", ""]), st.sampled_from(["w", "w2"]))
def test_root_type_or_name_change_replaces_the_root(tag_a: str, tag_b: str, name_a: str, name_b: str) -> None:
    a = dt.snapshot("r", 1, el(tag_a, {"name": name_a}, el("smithers:task", {"id": "t"})))
    b = dt.snapshot("r", 2, el(tag_b, {"name": name_b}, el("smithers:task", {"id": "t"})))
    ops = dt.diff_snapshots(a, b)["ops"]
    same = (a["root"]["id"], a["root"]["type"], a["root"]["name"]) == (
        b["root"]["id"],
        b["root"]["type"],
        b["root"]["name"],
    )
    if same:
        assert all(op["op"] in ("updateProps", "updateTask") for op in ops)
    else:
        assert [op["op"] for op in ops] == ["replaceRoot"]
    assert exact(dt.apply_delta(a, dt.diff_snapshots(a, b))) == exact(b)


# -- real frames ---------------------------------------------------------------------------------------


class Num(BaseModel):
    n: int


def test_tree_from_real_frames(sqlite_url: str) -> None:
    @workflow("devtools-tree")
    def flow(ctx: Any) -> Any:
        first = ctx.latest(Num, "a")
        return Sequence(
            Task("a", output=Num, run=lambda ctx: Num(n=1), label="First"),
            Parallel(Task("b", output=Num, value={"n": 2}), Task("c", output=Num, run=lambda ctx: {"n": 3})),
            Branch(
                first is not None, Task("then", output=Num, value={"n": 4}), Task("else", output=Num, value={"n": 5})
            ),
            Loop("lp", Task("d", output=Num, run=lambda ctx: {"n": ctx.iteration}), max_iterations=2),
        )

    result = smithers.run(flow, {}, db=sqlite_url)
    assert result.status == "finished"
    store = Store(sqlite_url)
    try:
        with store.read() as tx:
            last = tx.last_frame_no(result.run_id)
            rows = read_frames(tx, result.run_id, 0, last)
    finally:
        store.close()
    assert len(rows) >= 2 and rows[-1]["frame_no"] == last
    snaps = [dt.snapshot(result.run_id, row["frame_no"], row["xml_json"]) for row in rows]
    previous = dt.empty_snapshot(result.run_id)
    for s in snaps:
        delta = dt.diff_snapshots(previous, s)
        assert exact(dt.apply_delta(previous, delta)) == exact(s)
        previous = s
    final = snaps[-1]["root"]
    assert (final["type"], final["name"]) == ("workflow", "devtools-tree")
    tasks = {n["task"]["nodeId"]: n["task"] for n in walk(final) if n["type"] == "task"}
    assert {"a", "b", "c", "d"} <= set(tasks)
    assert tasks["a"] == {"nodeId": "a", "kind": "compute", "label": "First", "outputTableName": "num"}
    assert tasks["b"]["kind"] == "static" and tasks["c"]["kind"] == "compute"
    assert all(isinstance(t["nodeId"], str) and t["kind"] in ("agent", "compute", "static") for t in tasks.values())
    types = {n["type"] for n in walk(final)}
    assert {"workflow", "sequence", "parallel", "branch", "loop", "task"} <= types
    # The branch flipped once "a" had an output: the delta between those frames says so.
    names = [{c["props"].get("id") for c in walk(s["root"]) if c["type"] == "task"} for s in snaps]
    assert any("else" in n for n in names) and "then" in names[-1]
