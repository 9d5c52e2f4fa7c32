"""Small helpers shared by tests: polling with a deadline, and a probe of concurrent work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ConcurrencyProbe:
    """An async task body that records how many copies of it ran at the same time (``peak``)."""

    def __init__(self, result: Any = 1, seconds: float = 0.03):
        self.now = 0
        self.peak = 0
        self.result = result
        self.seconds = seconds

    async def __call__(self, ctx: Any) -> Any:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.seconds)
        self.now -= 1
        return self.result
