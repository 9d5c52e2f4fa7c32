"""Give large freed buffers back to the operating system (glibc only).

glibc serves big allocations with ``mmap`` (returned to the system when freed) only above a
threshold that it raises each time such a block is freed, up to 32 MiB. After clients have held a
lot of unread answers, the threshold has climbed, later big buffers come from the heap, and the
memory they used stays with the process once they are freed (measured: +538 MiB an idle gateway
kept after 100 clients that had each left ~8 MiB unread went away; +2 MiB with the threshold
fixed). Fixing the threshold at glibc's starting value (128 KiB) keeps every buffer above it
returnable, at the cost of an ``mmap``/``munmap`` pair per such buffer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 128 * 1024

_done = False


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold for this process (once); False where that is not possible."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    if not _done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return _done
