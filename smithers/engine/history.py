"""Reading a run's history: frames with deltas expanded, the latest snapshot, and snapshot diffs.

See docs/engine.md#frames-snapshots-and-history.
"""

from __future__ import annotations

import json
from typing import Any

from smithers.engine import frames
from smithers.store.store import Row, Tx


def read_frames(tx: Tx, run_id: str, lo: int, hi: int) -> list[Row]:
    """Frame rows ``lo..hi`` (ascending) with ``xml_json`` expanded to the full document.

    Delta frames store the mounted-task lists only when they change (NULL = as the frame before);
    they are filled in here, so every returned row is complete.
    """
    if hi < lo:
        return []
    start = tx.last_keyframe_no(run_id, lo) or 0
    rows = tx.list_frame_rows(run_id, up_to=hi, since=start)
    if not rows:
        return []
    texts = iter(frames.expand_texts(rows, lo))
    out: list[Row] = []
    mounted, index = None, None
    for row in rows:
        mounted = row["mounted_task_ids_json"] if row["mounted_task_ids_json"] is not None else mounted
        index = row["task_index_json"] if row["task_index_json"] is not None else index
        if row["frame_no"] >= lo:
            out.append({**row, "xml_json": next(texts), "mounted_task_ids_json": mounted, "task_index_json": index})
    return out


def latest_snapshot(tx: Tx, run_id: str) -> Row | None:
    rows = tx.select_snapshots(run_id)
    return rows[-1] if rows else None


def _node_key(node: dict[str, Any]) -> str:
    return f"{node.get('nodeId')}::{node.get('iteration') or 0}"


def diff_snapshots(left: Row, right: Row) -> dict[str, Any]:
    """``SnapshotDiff`` of two snapshot rows (docs/engine.md#frames-snapshots-and-history)."""
    ln = {_node_key(n): n for n in json.loads(left["nodes_json"])}
    rn = {_node_key(n): n for n in json.loads(right["nodes_json"])}
    changed = [
        {"nodeId": key, "from": ln[key], "to": rn[key]}
        for key in sorted(ln.keys() & rn.keys())
        if any(ln[key].get(f) != rn[key].get(f) for f in ("state", "lastAttempt", "label"))
    ]
    lo, ro = json.loads(left["outputs_json"]), json.loads(right["outputs_json"])
    outputs_changed = [
        {"key": key, "from": lo[key], "to": ro[key]}
        for key in sorted(lo.keys() & ro.keys())
        if json.dumps(lo[key], sort_keys=True) != json.dumps(ro[key], sort_keys=True)
    ]
    lr = {r["ralphId"]: r for r in json.loads(left["ralph_json"])}
    rr = {r["ralphId"]: r for r in json.loads(right["ralph_json"])}
    ralph_changed = [
        {"ralphId": key, "from": lr[key], "to": rr[key]}
        for key in sorted(lr.keys() & rr.keys())
        if (lr[key].get("iteration"), lr[key].get("done")) != (rr[key].get("iteration"), rr[key].get("done"))
    ]
    return {
        "nodesAdded": sorted(rn.keys() - ln.keys()),
        "nodesRemoved": sorted(ln.keys() - rn.keys()),
        "nodesChanged": changed,
        "outputsAdded": sorted(ro.keys() - lo.keys()),
        "outputsRemoved": sorted(lo.keys() - ro.keys()),
        "outputsChanged": outputs_changed,
        "ralphChanged": ralph_changed,
        "inputChanged": left["input_json"] != right["input_json"],
        "vcsPointerChanged": left["vcs_pointer"] != right["vcs_pointer"],
    }
