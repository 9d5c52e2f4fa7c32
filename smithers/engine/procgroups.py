"""Process groups of agent subprocesses: is one alive, signal it, and end one a crash left behind.

A CLI agent runs in a process group of its own (docs/engine.md#cli-agents). When the engine's
process dies, the CLI itself is killed with it (Linux's parent-death signal), but a child the CLI
started (a test run, a dev server) would live on. So each attempt records its group and the boot
it belongs to, and a resume ends what is left of the groups of the attempts it finds interrupted
(:func:`end_leftover_group`).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This machine's current boot (Linux), so a group id is never taken for one of another boot or host."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def group_alive(group: int) -> bool:
    """Whether a process of the group still runs (zombies, which nobody may reap in a container, do not)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False


def process_record(group: int) -> dict[str, Any]:
    """What an attempt stores of its agent's process group (``meta_json.process``)."""
    return {"pgid": group, "bootId": boot_id()}


def end_leftover_group(record: Any) -> bool:
    """Kill what is left of a process group an interrupted attempt recorded, when it belongs to this
    machine's current boot and still runs. Returns whether it was killed.

    A group id is not reused while any process of the group lives, so a live group with that id on
    the same boot is the one the attempt started."""
    if not isinstance(record, dict):
        return False
    group, boot = record.get("pgid"), record.get("bootId")
    if not isinstance(group, int) or group <= 1 or boot is None or boot != boot_id():
        return False
    if group == os.getpgrp() or not group_alive(group):
        return False
    signal_group(group, signal.SIGKILL)
    return True
