"""The DevTools tree, version 1: snapshots built from frames and the deltas between them.

Pure functions, no I/O. The wire shapes are the protocol's (docs/protocol.md#devtools), with keys
in the protocol's order::

    node     = {id, type, name, props, task?, children, depth}
    task     = {nodeId, kind, agent?, label?, outputTableName?, iteration?}
    snapshot = {version, runId, frameNo, seq, root, runState?}
    delta    = {version, baseSeq, seq, ops}
    ops      = {op:"replaceRoot", node} | {op:"removeNode", id} | {op:"addNode", parentId, index, node}
               | {op:"updateProps", id, props} | {op:"updateTask", id, task?}

Where the spec is silent the JavaScript gateway's behaviour is followed, so the values a client
sees (props decoding, number forms, key order, ids) are the same as 0.18.0's. Two places depart
from it on purpose, because the JavaScript delta can be wrong there; both are marked DEPARTURE in
:func:`diff_snapshots`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Final

Node = dict[str, Any]
Snapshot = dict[str, Any]
Delta = dict[str, Any]

VERSION: Final = 1
TREE_MAX_DEPTH: Final = 256
"""Deepest node depth kept; children below it become ``[MaxDepth]`` marker nodes."""
VALUE_MAX_DEPTH: Final = 100
"""Nesting kept inside a prop value; deeper values become ``"[MaxDepth]"``."""
VALUE_MAX_ENTRIES: Final = 100_000
"""Objects and arrays traversed per prop value; later ones become ``"[MaxEntries]"``."""
MAX_SALT: Final = 1024
INVALID_DELTA: Final = "InvalidDelta"

FNV_OFFSET_BASIS: Final = 0x811C9DC5
FNV_PRIME: Final = 16777619

TAG_TO_TYPE: Final[dict[str, str]] = {
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

EMPTY_ROOT: Final[Node] = {
    "id": 0,
    "type": "workflow",
    "name": "(empty)",
    "props": {},
    "children": [],
    "depth": 0,
}
"""The root of a run without frames (or of an unreadable frame). Do not mutate: use :func:`empty_root`."""


class InvalidDeltaError(ValueError):
    """A delta that does not apply to the snapshot it is given (the protocol's ``InvalidDelta``)."""

    code: Final = INVALID_DELTA


# -- JavaScript values -------------------------------------------------------------------------

_MAX_SAFE_INTEGER: Final = 2**53 - 1
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# JavaScript's `.` stops at line terminators; `$` there is the end of the string (fullmatch here).
_ITERATION_SUFFIX = re.compile(r"([^\n\r\u2028\u2029]*)::([0-9]+)")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _js_number(value: int | float) -> int | float | None:
    """A number as JavaScript holds it: a double, written as an int when it is a safe integer.

    JavaScript writes ``Number("2.0")`` as ``2``, so integral values come back as ``int``; values
    beyond 2**53 are rounded to a double as JavaScript rounds them; non-finite values are ``None``
    (``JSON.stringify`` writes them as ``null``).
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
            return int(value)
        return value
    if -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
        return value
    try:
        return _js_number(float(value))
    except OverflowError:
        return None


def _js_int_text(text: str) -> int | float | None:
    try:
        return _js_number(int(text))
    except ValueError:  # more digits than int() accepts: JavaScript reads Infinity (or a double)
        return _js_number(float(text))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _js_json_loads(text: str | bytes | bytearray) -> Any:
    """``JSON.parse``: no NaN/Infinity literals, numbers as JavaScript numbers."""
    return json.loads(
        text, parse_int=_js_int_text, parse_float=lambda s: _js_number(float(s)), parse_constant=_no_constant
    )


def _utf16_key(key: str) -> bytes:
    """Sort key giving JavaScript's default string order (UTF-16 code units)."""
    return key.encode("utf-16-be", "surrogatepass")


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) < 2**32 - 1


def _js_key_order(keys: list[str]) -> list[str]:
    """The order JavaScript enumerates an object's keys: array indices ascending, then the rest as given."""
    indices = sorted((k for k in keys if _is_array_index(k)), key=int)
    if not indices:
        return keys
    return indices + [k for k in keys if not _is_array_index(k)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- prop values -----------------------------------------------------------------------------------


def decode_prop(raw: str) -> Any:
    """A frame's string prop read back (docs/protocol.md#devtools): literals, numbers, then JSON objects and arrays."""
    if raw == "true":
        return True
    if raw == "false":
        return False
    if raw == "null":
        return None
    if _NUMBER.fullmatch(raw):
        number = _js_number(float(raw))
        if number is not None:  # too many digits is Infinity in JavaScript: left as text
            return number
    if (raw.startswith("{") and raw.endswith("}")) or (raw.startswith("[") and raw.endswith("]")):
        try:
            return _js_json_loads(raw)
        except (ValueError, RecursionError):
            # RecursionError: nesting deeper than Python's parser takes (JavaScript would parse it and
            # cut it at depth 100); the text is kept instead.
            return raw
    return raw


class _SerializeState:
    __slots__ = ("seen", "traversed")

    def __init__(self) -> None:
        self.traversed = 0
        self.seen: set[int] = set()


def serialize_value(value: Any) -> Any:
    """A prop value made JSON-safe (``snapshotSerialize``): keys sorted, depth 100, 100 000 entries."""
    return _serialize(value, _SerializeState(), 0)


def _serialize(value: Any, state: _SerializeState, depth: int) -> Any:
    if depth > VALUE_MAX_DEPTH:
        return "[MaxDepth]"
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        return _js_number(value)
    if not isinstance(value, dict | list | tuple):
        return f"[{type(value).__name__}]"
    if state.traversed >= VALUE_MAX_ENTRIES:
        return "[MaxEntries]"
    state.traversed += 1
    key = id(value)
    if key in state.seen:
        return "[Circular]"
    state.seen.add(key)
    try:
        if isinstance(value, list | tuple):
            return [_serialize(entry, state, depth + 1) for entry in value]
        entries = {str(k): v for k, v in value.items()}
        out: dict[str, Any] = {}
        for name in _js_key_order(sorted(entries, key=_utf16_key)):
            out[name] = _serialize(entries[name], state, depth + 1)
        return out
    finally:
        state.seen.discard(key)


# -- ids -------------------------------------------------------------------------------------------


def stable_node_id(path: str) -> int:
    """32-bit FNV-1a over the path's UTF-16 code units, masked to 31 bits."""
    return fnv_extend(FNV_OFFSET_BASIS, path) & 0x7FFFFFFF


@functools.lru_cache(maxsize=16384)  # consecutive frames hash the same paths
def fnv_extend(state: int, text: str) -> int:
    """The 32-bit FNV-1a state after hashing ``text``'s UTF-16 code units from ``state``.

    A child's path starts with its parent's, so the tree carries each node's state and hashes only
    the new part of its children's paths.
    """
    h = state
    if text.isascii():
        for unit in text.encode():
            h = ((h ^ unit) * FNV_PRIME) & 0xFFFFFFFF
        return h
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        h = ((h ^ (data[i] | (data[i + 1] << 8))) * FNV_PRIME) & 0xFFFFFFFF
    return h


def _fragment(element: dict[str, Any]) -> str:
    """``<tag>#<id>`` from the *raw* (undecoded) ``props.id``, else ``props.nodeId``; else ``<tag>``."""
    tag = element.get("tag")
    tag = tag if isinstance(tag, str) else "unknown"
    props = element.get("props")
    props = props if isinstance(props, dict) else {}
    raw_id = props.get("id")
    raw_node_id = props.get("nodeId")
    # A string `id` wins even when empty, as in JavaScript (then the fragment is the bare tag).
    task_id = raw_id if isinstance(raw_id, str) else raw_node_id if isinstance(raw_node_id, str) else ""
    return f"{tag}#{task_id}" if task_id else tag


# -- building ----------------------------------------------------------------------------------------


def empty_root() -> Node:
    return {"id": 0, "type": "workflow", "name": "(empty)", "props": {}, "children": [], "depth": 0}


def _is_element(value: Any) -> bool:
    return isinstance(value, dict) and value.get("kind") == "element"


def _task_info(props: dict[str, Any]) -> dict[str, Any] | None:
    """The ``task`` sidecar of a task node, from its *decoded* props."""
    prop_id, prop_node_id = props.get("id"), props.get("nodeId")
    raw = prop_id if isinstance(prop_id, str) else prop_node_id if isinstance(prop_node_id, str) else None
    if not raw:
        return None
    node_id = raw
    iteration: Any = props.get("iteration") if _is_number(props.get("iteration")) else None
    match = _ITERATION_SUFFIX.fullmatch(raw)
    if match:
        node_id = match.group(1)
        if iteration is None:
            iteration = _js_int_text(match.group(2))
    kinds = (props.get("__smithersKind"), props.get("kind"))
    kind = "agent" if "agent" in kinds else "compute" if "compute" in kinds else "static"
    info: dict[str, Any] = {"nodeId": node_id, "kind": kind}
    if isinstance(props.get("agent"), str):
        info["agent"] = props["agent"]
    if isinstance(props.get("label"), str):
        info["label"] = props["label"]
    if isinstance(props.get("outputTableName"), str):
        info["outputTableName"] = props["outputTableName"]
    elif isinstance(props.get("output"), str):
        info["outputTableName"] = props["output"]
    if _is_number(iteration) and math.isfinite(iteration):
        info["iteration"] = iteration
    return info


_Decoded = tuple[str, str, dict[str, Any], dict[str, Any] | None]  # type, name, props, task
_DECODED: dict[tuple[Any, ...], _Decoded] = {}
DECODED_CACHE_SIZE: Final = 8192
"""Elements decoded lately, by tag and raw props: consecutive frames repeat nearly every element."""


def _decode_element(tag: str, raw_props: Any) -> _Decoded:
    """An element's node type, name, decoded props and task sidecar (shared: never mutate them)."""
    raw = {str(k): v for k, v in raw_props.items()} if isinstance(raw_props, dict) else {}
    key: tuple[Any, ...] | None = None
    if all(isinstance(v, str) for v in raw.values()):  # frames write props as text
        key = (tag, *raw.items())
        known = _DECODED.get(key)
        if known is not None:
            return known
    node_type = TAG_TO_TYPE.get(tag, "unknown")
    props: dict[str, Any] = {}
    for name in _js_key_order(list(raw)):
        value = raw[name]
        props[name] = serialize_value(decode_prop(value) if isinstance(value, str) else value)
    if node_type == "workflow" and isinstance(props.get("name"), str):
        name = props["name"]
    else:
        name = tag.removeprefix("smithers:") if tag.startswith("smithers:") else tag
    task = _task_info(props) if node_type == "task" else None
    decoded = (node_type, name or "unknown", props, task)
    if key is not None:
        if len(_DECODED) >= DECODED_CACHE_SIZE:
            _DECODED.clear()
        _DECODED[key] = decoded
    return decoded


def _make_node(element: dict[str, Any], depth: int, node_id: int) -> Node:
    tag = element.get("tag")
    node_type, name, props, task = _decode_element(tag if isinstance(tag, str) else "unknown", element.get("props"))
    node: Node = {"id": node_id, "type": node_type, "name": name, "props": props}
    if task is not None:
        node["task"] = task
    node["children"] = []
    node["depth"] = depth
    return node


def build_tree(xml: Any) -> Node:
    """The DevTools root of a frame document.

    ``xml`` is the parsed document, or its JSON text (``str``/``bytes``). Invalid JSON or a root that
    is not an element gives the empty root.
    """
    if isinstance(xml, str | bytes | bytearray):
        try:
            xml = _js_json_loads(xml)
        except (ValueError, RecursionError):
            return empty_root()
    if not _is_element(xml):
        return empty_root()

    used: set[int] = set()

    def assign_id(state: int) -> int:
        """The id of the path hashed to ``state``; a taken id is salted (``path + "\\0" + salt``)."""
        candidate = state & 0x7FFFFFFF
        salt = 0
        while candidate in used and salt < MAX_SALT:
            salt += 1
            candidate = fnv_extend(state, f"\u0000{salt}") & 0x7FFFFFFF
        used.add(candidate)
        return candidate

    root_state = fnv_extend(FNV_OFFSET_BASIS, _fragment(xml))
    root = _make_node(xml, 0, assign_id(root_state))
    # Ids are assigned root first, then each node's children are created (in document order) before
    # any of them is descended into: a stack of (element, node, depth, path state), children pushed
    # reversed. A path is its parent's, "/", the child's fragment and "[n]" from its second occurrence.
    stack: list[tuple[dict[str, Any], Node, int, int]] = [(xml, root, 0, root_state)]
    while stack:
        element, node, depth, state = stack.pop()
        raw_children = element.get("children")
        pending: list[tuple[dict[str, Any], Node, int, int]] = []
        occurrences: dict[str, int] = {}
        for child in raw_children if isinstance(raw_children, list) else []:
            if not _is_element(child):
                continue
            child_depth = depth + 1
            if child_depth > TREE_MAX_DEPTH:
                marker_state = fnv_extend(state, f"/__maxdepth__{len(node['children'])}")
                node["children"].append(
                    {
                        "id": assign_id(marker_state),
                        "type": "unknown",
                        "name": "[MaxDepth]",
                        "props": {"value": "[MaxDepth]"},
                        "children": [],
                        "depth": child_depth,
                    }
                )
                continue
            fragment = _fragment(child)
            occurrence = occurrences.get(fragment, 0)
            occurrences[fragment] = occurrence + 1
            child_state = fnv_extend(state, f"/{fragment}" if occurrence == 0 else f"/{fragment}[{occurrence}]")
            child_node = _make_node(child, child_depth, assign_id(child_state))
            node["children"].append(child_node)
            pending.append((child, child_node, child_depth, child_state))
        stack.extend(reversed(pending))
    return root


def snapshot(run_id: str, frame_no: int, xml: Any, run_state: dict[str, Any] | None = None) -> Snapshot:
    """``{version, runId, frameNo, seq: frameNo, root}`` (+ ``runState``) of a frame."""
    out: Snapshot = {"version": VERSION, "runId": run_id, "frameNo": frame_no, "seq": frame_no, "root": build_tree(xml)}
    if run_state is not None:
        out["runState"] = run_state
    return out


def empty_snapshot(run_id: str, run_state: dict[str, Any] | None = None) -> Snapshot:
    """The snapshot of a run without frames: frame 0, seq 0, the empty root."""
    out: Snapshot = {"version": VERSION, "runId": run_id, "frameNo": 0, "seq": 0, "root": empty_root()}
    if run_state is not None:
        out["runState"] = run_state
    return out


def snapshot_event(snap: Snapshot) -> dict[str, Any]:
    """The ``DevToolsEvent`` carrying a snapshot."""
    return {"version": VERSION, "kind": "snapshot", "snapshot": snap}


def delta_event(delta: Delta) -> dict[str, Any]:
    """The ``DevToolsEvent`` carrying a delta."""
    return {"version": VERSION, "kind": "delta", "delta": delta}


def event_size(obj: Any) -> int:
    """UTF-8 bytes of ``JSON.stringify(obj)`` (compact; lone surrogates escaped as JavaScript does)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # Pair up surrogate halves (as JavaScript strings would), then escape those left alone.
    text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return len(text.encode("utf-8"))


# -- deltas ------------------------------------------------------------------------------------------


def _clone(value: Any) -> Any:
    """A deep copy of a JSON value, without recursion (node trees are up to ~520 levels deep)."""
    if not isinstance(value, dict | list):
        return value
    top: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, top)]
    while stack:
        src, dst = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for key, item in items:
            if isinstance(item, dict | list):
                copy: Any = {} if isinstance(item, dict) else []
                stack.append((item, copy))
            else:
                copy = item
            if isinstance(dst, dict):
                dst[key] = copy
            else:
                dst.append(copy)
    return top


def deep_equal(left: Any, right: Any) -> bool:
    """JavaScript ``deepEqual`` of the diff: key order irrelevant; ``true`` is not ``1``."""
    if left is right:  # snapshots share the props of elements that did not change
        return True
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(deep_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(deep_equal(left[k], right[k]) for k in left)
    return False


_Entry = tuple[Node, int | None, int]  # (node, parent id, index among the parent's children)


def _index_tree(root: Node) -> dict[int, _Entry]:
    """Every node by id, in pre-order (the dict's order)."""
    out: dict[int, _Entry] = {}
    stack: list[_Entry] = [(root, None, 0)]
    while stack:
        entry = stack.pop()
        node = entry[0]
        out[node["id"]] = entry  # a repeated id keeps its first place, as in a JavaScript Map
        children = node["children"]
        for index in range(len(children) - 1, -1, -1):
            stack.append((children[index], node["id"], index))
    return out


def _same_shape(left: Node, right: Node) -> bool:
    return bool(left["type"] == right["type"] and left["name"] == right["name"] and left["depth"] == right["depth"])


def diff_snapshots(previous: Snapshot, next: Snapshot) -> Delta:
    """The ops turning ``previous`` into ``next``: ``{version, baseSeq, seq, ops}``."""
    if previous["runId"] != next["runId"]:
        raise ValueError("Cannot diff snapshots from different runs.")
    head: Delta = {"version": VERSION, "baseSeq": previous["seq"], "seq": next["seq"]}
    old_root, new_root = previous["root"], next["root"]
    if old_root["id"] != new_root["id"] or not _same_shape(old_root, new_root):
        return {**head, "ops": [{"op": "replaceRoot", "node": _clone(new_root)}]}

    before = _index_tree(old_root)
    after = _index_tree(new_root)
    removed: dict[int, None] = {}  # ordered sets
    added: dict[int, None] = {}
    updates: list[dict[str, Any]] = []
    # "Traversal order" of the update ops: the pre-order of the *previous* tree, as the JavaScript
    # diff iterates it. (Any order gives the same result: each update touches one node.)
    for node_id, (old, old_parent, old_index) in before.items():
        found = after.get(node_id)
        if found is None:
            removed[node_id] = None
            continue
        new, new_parent, new_index = found
        if old_parent != new_parent or old_index != new_index or not _same_shape(old, new):
            removed[node_id] = None
            added[node_id] = None
            continue
        if not deep_equal(old["props"], new["props"]):
            updates.append({"op": "updateProps", "id": node_id, "props": _clone(new["props"])})
        if not deep_equal(old.get("task"), new.get("task")) or ("task" in old) != ("task" in new):
            op: dict[str, Any] = {"op": "updateTask", "id": node_id}
            if "task" in new:
                op["task"] = _clone(new["task"])
            updates.append(op)
    for node_id in after:
        if node_id not in before:
            added[node_id] = None

    removes = sorted(removed, key=lambda i: -before[i][0]["depth"])  # stable: ties keep pre-order

    # DEPARTURE 1: the spec (and JavaScript) add "ids whose parent is not itself added". A node whose
    # parent kept its place but whose grandparent (or higher) moved is then added twice: once inside
    # the moved ancestor's subtree, once on its own. So we add only ids with no added ancestor.
    covered: set[int] = set()
    for node_id, (_, parent, _) in after.items():  # pre-order: parents first
        if parent is not None and (parent in added or parent in covered):
            covered.add(node_id)
    position = {node_id: rank for rank, node_id in enumerate(after)}
    # DEPARTURE 2: JavaScript sorts the adds by depth alone (ties in the order ids were found), which
    # can insert a later sibling before an earlier one and leave a kept sibling out of place. Ties
    # are broken by pre-order of `next`, so each parent's new children arrive by ascending index.
    tops = sorted((i for i in added if i not in covered), key=lambda i: (after[i][0]["depth"], position[i]))
    ops: list[dict[str, Any]] = [{"op": "removeNode", "id": i} for i in removes]
    for node_id in tops:
        node, parent, index = after[node_id]
        ops.append({"op": "addNode", "parentId": parent, "index": index, "node": _clone(node)})
    ops.extend(updates)
    return {**head, "ops": ops}


_NODE_KEYS: Final = ("id", "type", "name", "props", "task", "children", "depth")


def _canonical_order(node: Node) -> None:
    """Put a node's keys back in the spec's order, in place (after ``task`` appears)."""
    items = dict(node)
    node.clear()
    for key in _NODE_KEYS:
        if key in items:
            node[key] = items.pop(key)
    node.update(items)


class _Tree:
    """The tree being patched, with every node reachable by id."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self.nodes: dict[int, Node] = {}
        self.parents: dict[int, Node | None] = {}
        self.register(root, None)

    def register(self, node: Node, parent: Node | None) -> None:
        stack: list[tuple[Any, Node | None]] = [(node, parent)]
        while stack:
            current, up = stack.pop()
            if not isinstance(current, dict) or not isinstance(current.get("children"), list):
                raise InvalidDeltaError("A node needs an id and a children list.")
            node_id = current.get("id")
            if not isinstance(node_id, int) or isinstance(node_id, bool):
                raise InvalidDeltaError(f"A node id must be an integer, not {node_id!r}.")
            if node_id in self.nodes:
                raise InvalidDeltaError(f"Duplicate node id: {node_id}")
            self.nodes[node_id] = current
            self.parents[node_id] = up
            stack.extend((child, current) for child in current["children"])

    def unregister(self, node: Node) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            self.nodes.pop(current["id"], None)
            self.parents.pop(current["id"], None)
            stack.extend(current["children"])

    def has(self, node_id: Any) -> bool:
        return isinstance(node_id, int) and not isinstance(node_id, bool) and node_id in self.nodes

    def find(self, node_id: Any) -> Node:
        if not self.has(node_id):
            raise InvalidDeltaError(f"Unknown node id: {node_id}")
        return self.nodes[node_id]


def apply_delta(snap: Snapshot, delta: Delta) -> Snapshot:
    """``snap`` with ``delta`` applied (what a client does); raises :class:`InvalidDeltaError`.

    Stricter than the JavaScript client, which clamps an out-of-range ``addNode`` index and does not
    check for duplicate ids: both are refused here.
    """
    if delta.get("version") != VERSION:
        raise InvalidDeltaError(f"Unsupported delta version: {delta.get('version')}")
    base_seq, seq = delta.get("baseSeq"), snap.get("seq")
    if isinstance(base_seq, bool) or base_seq != seq:
        raise InvalidDeltaError(f"Delta base seq {base_seq} does not match snapshot seq {seq}.")
    ops = delta.get("ops")
    if not isinstance(ops, list):
        raise InvalidDeltaError("A delta needs a list of ops.")
    tree = _Tree(_clone(snap["root"]))
    for op in ops:
        kind = op.get("op") if isinstance(op, dict) else None
        if kind == "replaceRoot":
            if not isinstance(op.get("node"), dict):
                raise InvalidDeltaError("replaceRoot requires a node.")
            tree = _Tree(_clone(op["node"]))
        elif kind == "removeNode":
            if op.get("id") == tree.root["id"]:
                raise InvalidDeltaError("Cannot remove the root node.")
            target = tree.find(op.get("id"))
            parent = tree.parents[target["id"]]
            assert parent is not None
            parent["children"][:] = [c for c in parent["children"] if c is not target]
            tree.unregister(target)
        elif kind == "addNode":
            if not tree.has(op.get("parentId")):
                raise InvalidDeltaError(f"Unknown parent id: {op.get('parentId')}")
            parent = tree.nodes[op["parentId"]]
            index = op.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(parent["children"]):
                raise InvalidDeltaError(f"addNode index {index!r} is out of range for parent {op['parentId']}.")
            if not isinstance(op.get("node"), dict):
                raise InvalidDeltaError("addNode requires a node.")
            node = _clone(op["node"])
            tree.register(node, parent)
            parent["children"].insert(index, node)
        elif kind == "updateProps":
            target = tree.find(op.get("id"))
            if not isinstance(op.get("props"), dict):
                raise InvalidDeltaError("updateProps requires props.")
            target["props"] = _clone(op["props"])
        elif kind == "updateTask":
            target = tree.find(op.get("id"))
            if "task" in op:
                target["task"] = _clone(op["task"])
                _canonical_order(target)
            else:
                target.pop("task", None)
        else:
            raise InvalidDeltaError(f"Unknown op: {kind}")
    return {**snap, "frameNo": delta.get("seq"), "seq": delta.get("seq"), "root": tree.root}
