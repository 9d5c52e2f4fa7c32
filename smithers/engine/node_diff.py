"""What a node's attempt changed in its working directory: a ``DiffBundle`` between two snapshots
(docs/protocol.md#getnodediff--devtoolsgetnodediff, docs/engine.md#working-directory-snapshots).

Every failure is a coded :class:`SmithersError`; :func:`diff_failure` turns an unexpected one into
the protocol's ``VcsError``/``WorkingTreeDirty``, so the route never raises.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from smithers.engine.states import FINISHED, IN_PROGRESS
from smithers.engine.vcs import GitVcs, vcs_of
from smithers.errors import (
    AttemptNotFinished,
    AttemptNotFound,
    DiffTooLarge,
    NodeNotFound,
    RunNotFound,
    SmithersError,
    VcsError,
    WorkingTreeDirty,
)
from smithers.store.rows import dumps, now_ms
from smithers.store.store import Row, Store

MAX_DIFF_BYTES: Final = 50 * 1024 * 1024
MAX_MESSAGE_CHARS: Final = 512
_DIRTY: Final = re.compile(r"working copy|dirty|conflict|cannot restore", re.IGNORECASE)


def node_diff(store: Store, run_id: str, node_id: str, iteration: int) -> tuple[dict[str, Any], int, bool]:
    """``{seq, baseRef, patches}`` of the node's latest attempt (cached per base), its size as JSON,
    and whether the cache answered."""
    with store.read() as tx:
        run = tx.get_run(run_id)
        if run is None:
            raise SmithersError(f"Run not found: {run_id}", code=RunNotFound)
        if tx.get_node(run_id, node_id, iteration) is None:
            raise SmithersError(f"Node not found: {run_id}/{node_id}/{iteration}", code=NodeNotFound)
        attempts = tx.list_attempts(run_id, node_id, iteration)
        if not attempts:
            raise SmithersError(f"Attempt not found for {run_id}/{node_id}/{iteration}", code=AttemptNotFound)
        latest = max(attempts, key=lambda a: int(a["attempt"]))
        if latest["state"] == IN_PROGRESS:
            raise SmithersError("Attempt is still running.", code=AttemptNotFinished)
        kind = run["vcs_type"]
        if kind and kind != GitVcs.kind:
            raise SmithersError(f"Unsupported VCS type: {kind}. Only git-backed runs are supported.", code=VcsError)
        pointer, cwd = latest["jj_pointer"], latest["jj_cwd"]
        if not pointer:
            raise SmithersError("Attempt has no finished working-tree pointer.", code=AttemptNotFinished)
        if not cwd:
            raise SmithersError("Attempt did not record a working directory.", code=VcsError)
        base = _base_ref(run, latest, attempts, tx.list_attempts(run_id))
        cached = tx.get_node_diff(run_id, node_id, iteration, base)
    if cached is not None:
        return dict(json.loads(cached["diff_json"])), int(cached["size_bytes"]), True
    vcs = vcs_of(run)
    if vcs is None or vcs.root != cwd:
        raise SmithersError(f"Working directory {cwd} is not available here.", code=VcsError)
    bundle = {"seq": int(latest["attempt"]), "baseRef": base, "patches": vcs.diff(base, pointer)}
    text = dumps(bundle)
    size = len(text.encode())
    if size > MAX_DIFF_BYTES:
        raise SmithersError(f"Serialized diff exceeds {MAX_DIFF_BYTES} bytes [truncated]", code=DiffTooLarge)
    with store.write() as tx:
        tx.upsert_node_diff(
            run_id=run_id,
            node_id=node_id,
            iteration=iteration,
            base_ref=base,
            diff_json=text,
            size_bytes=size,
            created_at_ms=now_ms(),
        )
    return bundle, size, False


def _base_ref(run: Row, latest: Row, attempts: list[Row], everything: list[Row]) -> str:
    """The pointer the attempt is compared with: its node's previous finished attempt in the same
    directory; else the latest other attempt there that finished before it started; else the
    state the run started from; else its own pointer (an empty diff)."""
    cwd = latest["jj_cwd"]
    earlier = [
        a
        for a in attempts
        if int(a["attempt"]) < int(latest["attempt"])
        and a["state"] == FINISHED
        and a["jj_pointer"]
        and a["jj_cwd"] == cwd
    ]
    if earlier:
        return str(max(earlier, key=lambda a: int(a["attempt"]))["jj_pointer"])
    before = [
        a
        for a in everything
        if a["jj_cwd"] == cwd
        and a["jj_pointer"]
        and (a["node_id"], a["iteration"]) != (latest["node_id"], latest["iteration"])
        and a["finished_at_ms"] is not None
        and a["finished_at_ms"] <= latest["started_at_ms"]
    ]
    if before:
        return str(max(before, key=lambda a: (a["finished_at_ms"], a["started_at_ms"]))["jj_pointer"])
    if run["vcs_revision"]:
        return str(run["vcs_revision"])
    return str(latest["jj_pointer"])


def diff_failure(exc: BaseException) -> SmithersError:
    """An unexpected failure as the protocol reports it: ``WorkingTreeDirty`` when it is about the
    working copy, else ``VcsError``; the message trimmed to 512 characters."""
    if isinstance(exc, SmithersError) and exc.code in _ROUTE_CODES:
        return exc
    message = ((exc.message if isinstance(exc, SmithersError) else str(exc)) or "").strip()
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    code = WorkingTreeDirty if _DIRTY.search(message) else VcsError
    return SmithersError(message or "VCS operation failed.", code=code)


_ROUTE_CODES: Final = frozenset(
    {RunNotFound, NodeNotFound, AttemptNotFound, AttemptNotFinished, DiffTooLarge, WorkingTreeDirty}
)
"""Refusals answered as they are; any other failure (git's own included) is trimmed and classified."""
