"""Frame encoding: keyframes every 50 frames, structural JSON deltas in between.

See docs/engine.md#frames-snapshots-and-history.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from smithers.store.rows import dumps

KEYFRAME_INTERVAL = 50
KEYFRAME = "keyframe"
DELTA = "delta"
FULL = "full"

Path = list[str | int]


def canonical(doc: Any) -> str:
    """The canonical text of a frame document: compact, keys sorted."""
    return dumps(doc, sort_keys=True)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def diff(a: Any, b: Any, path: Path | None = None, ops: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Ops turning ``a`` into ``b``: objects key by key, arrays trimmed of common ends."""
    path = path or []
    ops = [] if ops is None else ops
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in b:
                ops.append({"op": "remove", "path": [*path, key]})
            elif key not in a:
                ops.append({"op": "set", "path": [*path, key], "value": b[key]})
            elif a[key] != b[key]:
                diff(a[key], b[key], [*path, key], ops)
        return ops
    if isinstance(a, list) and isinstance(b, list):
        start = 0
        while start < len(a) and start < len(b) and a[start] == b[start]:
            start += 1
        end_a, end_b = len(a), len(b)
        while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
            end_a -= 1
            end_b -= 1
        if end_a - start == end_b - start:
            for i in range(start, end_a):
                diff(a[i], b[i], [*path, i], ops)
        else:
            for i in range(end_a - 1, start - 1, -1):
                ops.append({"op": "remove", "path": [*path, i]})
            for i in range(start, end_b):
                ops.append({"op": "insert", "path": [*path, i], "value": b[i]})
        return ops
    ops.append({"op": "set", "path": path, "value": b})
    return ops


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply delta ops to a copy of ``doc``."""
    return apply_in_place(copy.deepcopy(doc), copy.deepcopy(ops))


def apply_in_place(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Apply delta ops to ``doc`` itself, taking the ops' values as they are (parse them fresh)."""
    for op in ops:
        path = op["path"]
        if not path:
            doc = op["value"]
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op["op"] == "set":
            parent[last] = op["value"]
        elif op["op"] == "insert":
            parent.insert(last, op["value"])
        else:
            del parent[last]
    return doc


@dataclass
class EncodedFrame:
    xml_json: str
    xml_hash: str
    encoding: str


def encode(frame_no: int, doc: Any, text: str, previous: Any | None, previous_hash: str | None) -> EncodedFrame:
    """Store ``doc`` as a keyframe or as a delta against ``previous`` (whichever the rules pick)."""
    digest = sha256_hex(text)
    if previous is None or frame_no % KEYFRAME_INTERVAL == 0:
        return EncodedFrame(text, digest, KEYFRAME)
    ops = [] if digest == previous_hash else diff(previous, doc)
    delta = canonical({"version": 1, "ops": ops})
    if len(delta) < len(text):
        return EncodedFrame(delta, digest, DELTA)
    return EncodedFrame(text, digest, KEYFRAME)


EMPTY_DELTA = canonical({"version": 1, "ops": []})


def encode_unchanged(frame_no: int, text: str, digest: str) -> EncodedFrame:
    """A frame whose document equals the previous one (``text``/``digest``)."""
    if frame_no % KEYFRAME_INTERVAL == 0:
        return EncodedFrame(text, digest, KEYFRAME)
    return EncodedFrame(EMPTY_DELTA, digest, DELTA)


def expand(rows: list[dict[str, Any]]) -> list[Any]:
    """Full documents of consecutive frame rows, the first of which is not a delta."""
    docs: list[Any] = []
    current: Any = None
    for row in rows:
        body = json.loads(row["xml_json"])
        current = apply(current, body["ops"]) if row["encoding"] == DELTA else body
        docs.append(current)
    return docs


def expand_last(rows: list[dict[str, Any]]) -> Any:
    """The full document of the last of consecutive frame rows, the first of which is not a delta."""
    current: Any = None
    for row in rows:
        body = json.loads(row["xml_json"])
        current = apply_in_place(current, body["ops"]) if row["encoding"] == DELTA else body
    return current


def expand_texts(rows: list[dict[str, Any]], first: int) -> list[str]:
    """Canonical text of the full document of each row whose ``frame_no`` is at least ``first``
    (rows consecutive, the first not a delta): one working document, each delta applied in place."""
    texts: list[str] = []
    current: Any = None
    for row in rows:
        body = json.loads(row["xml_json"])
        current = apply_in_place(current, body["ops"]) if row["encoding"] == DELTA else body
        if row["frame_no"] >= first:
            texts.append(canonical(current))
    return texts
