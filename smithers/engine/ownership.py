"""Who executes a run: owner ids, liveness, and the rules for taking a run over.

See docs/engine.md#durability-and-ownership.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Final

HEARTBEAT_INTERVAL_MS = 1000
CANCEL_POLL_MS = 250
OWNER_STALE_MS = 5000
"""An owner whose heartbeat is older than this is gone: ``resume`` takes the run over without --force."""


def new_owner_id() -> str:
    """``pid:<pid>:<uuid>@<host>``: the spec's form, plus the host so liveness can be checked."""
    return f"pid:{os.getpid()}:{uuid.uuid4().hex[:12]}@{socket.gethostname()}"


def owner_pid_alive(owner_id: str | None) -> bool | None:
    """True/False when the owner is a process on this host; None when that cannot be told."""
    if not owner_id or not owner_id.startswith("pid:"):
        return None
    rest = owner_id[4:]
    pid_text, _, tail = rest.partition(":")
    host = tail.partition("@")[2]
    if host and host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_gone(owner_id: str | None, heartbeat_at_ms: int | None, now_ms: int) -> bool:
    """The run's owner no longer exists on this host, or has not heartbeat for a few seconds."""
    if not owner_id:
        return True
    if owner_pid_alive(owner_id) is False:
        return True
    return heartbeat_at_ms is None or now_ms - heartbeat_at_ms > OWNER_STALE_MS


HOLD_STALE_MS: Final = 120_000
"""A rewind that has held its run (or left its audit ``in_progress``) this long is gone: its
process died. Younger ones may be alive in another process (the CLI, another gateway)."""


def held_by_rewind(pause_requested_at_ms: int | None, now_ms: int) -> bool:
    """Whether a rewind in some process holds the run still (docs/engine.md#time-travel)."""
    return pause_requested_at_ms is not None and now_ms - int(pause_requested_at_ms) < HOLD_STALE_MS
