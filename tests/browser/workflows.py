"""Workflows the browser tests run: the gateway examples plus ``grow``, whose tree gains a node per
finished step (so every step is a new frame for the frame slider and rewinds)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from smithers import Sequence, Task, Timer, workflow
from smithers.gateway.server import Gateway
from tests.gateway.support import SCHEDULE
from tests.gateway.workflows import chatty, failing, gate, hello, nightly, pick, rank, ship, slow, waiter


class Step(BaseModel):
    n: int


def _step(index: int, delay_s: float) -> Callable[[Any], Coroutine[Any, Any, Step]]:
    async def run(ctx: Any) -> Step:
        await asyncio.sleep(delay_s)
        return Step(n=index)

    return run


@workflow("grow", name="Grow", description="One step after another; each finished step mounts the next")
def grow(ctx: Any) -> Any:
    """``input.steps`` steps (default 3), ``input.delay`` seconds each (default 0.05)."""
    count = int(ctx.input.get("steps", 3))
    delay = float(ctx.input.get("delay", 0.05))
    children = []
    for index in range(count):
        children.append(Task(f"step-{index}", output=Step, run=_step(index, delay)))
        if ctx.output_maybe(f"step-{index}") is None:
            break
    return Sequence(*children)


@workflow("nap")
def nap(ctx: Any) -> Any:
    """A durable sleep of ``input.ms`` (default a minute), then a step."""
    sleep = Timer("nap", duration_ms=int(ctx.input.get("ms", 60_000)))
    return Sequence(sleep, Task("after", output=Step, value=Step(n=1)))


WORKFLOWS = [grow, nap, hello, chatty, failing, gate, slow, ship, pick, rank, waiter]


def build(db: str, **options: Any) -> Gateway:
    """A gateway serving the console (``ui=True``) with the browser tests' workflows and a schedule."""
    options.setdefault("heartbeat_ms", 1000)
    gateway = Gateway(db=db, ui=True, **options)
    for wf in WORKFLOWS:
        gateway.register(wf.key, wf)
    gateway.register("nightly", nightly, schedule=SCHEDULE)
    return gateway
