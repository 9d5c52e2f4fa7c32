"""Engine overhead: milliseconds per step for chains of trivial tasks, and runs per second.

    .venv/bin/python bench/bench_engine.py [--pg URL] [--repeat 3]

Prints, per database and kind of task (static value, async function, sync function run in a
worker thread): ms/step for sequences of 100 and 1,000 trivial tasks (median of --repeat runs),
the share of that time spent inside database calls, the growth from 100 to 1,000 steps, and the
throughput of 200 one-task runs executed back to back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scratch_pg import drop_created, fresh_pg

import smithers
from smithers import Sequence, Task, workflow
from smithers.store import store as store_module


async def async_step(ctx: smithers.Ctx) -> Any:
    return {"ok": True}


def sync_step(ctx: smithers.Ctx) -> Any:
    return {"ok": True}


KINDS = ("static", "async", "sync")


def chain(n: int, kind: str = "static") -> smithers.Workflow:
    """n trivial tasks in a sequence: static values, async functions, or sync functions (run in a thread)."""

    @workflow(f"chain{n}-{kind}")
    def wf(ctx: smithers.Ctx) -> Any:
        if kind == "static":
            return Sequence(*[Task(f"t{i}", value={"i": i}) for i in range(n)])
        return Sequence(*[Task(f"t{i}", run=async_step if kind == "async" else sync_step) for i in range(n)])

    return wf


@workflow("one")
def one(ctx: smithers.Ctx) -> Any:
    return Task("only", value={"ok": True})


class DbClock:
    """Wall time spent inside statements and commits (the store's two choke points)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def installed(self) -> Iterator[None]:
        execute, end = store_module.Tx.execute, store_module.Store._finish

        def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start

            return wrapper

        store_module.Tx.execute = timed(execute)  # type: ignore[method-assign]
        store_module.Store._finish = timed(end)  # type: ignore[method-assign]
        try:
            yield
        finally:
            store_module.Tx.execute = execute  # type: ignore[method-assign]
            store_module.Store._finish = end  # type: ignore[method-assign]


def step_overhead(url: str, n: int, repeat: int, kind: str = "static") -> tuple[float, float, float]:
    """(median wall ms/step, median CPU ms/step of this process, median share of wall time in the database).

    The CPU figure is steadier than wall time on a shared virtual machine; the difference between
    the two is waiting (fsync, worker-thread hand-offs, other tenants).
    """
    wf = chain(n, kind)
    store = smithers.Store(url)
    smithers.run(wf, {}, db=store)  # warm up: imports, compiled statements
    per_step, cpu, shares = [], [], []
    for _ in range(repeat):
        clock = DbClock()
        with clock.installed():
            start, cpu_start = time.perf_counter(), time.process_time()
            result = smithers.run(wf, {}, db=store)
            elapsed, cpu_used = time.perf_counter() - start, time.process_time() - cpu_start
        assert result.status == "finished", result
        per_step.append(elapsed * 1000 / n)
        cpu.append(cpu_used * 1000 / n)
        shares.append(clock.seconds / elapsed)
    store.close()
    return statistics.median(per_step), statistics.median(cpu), statistics.median(shares)


def throughput(url: str, runs: int = 200) -> float:
    store = smithers.Store(url)
    smithers.run(one, {}, db=store)
    start = time.perf_counter()
    for _ in range(runs):
        assert smithers.run(one, {}, db=store).status == "finished"
    elapsed = time.perf_counter() - start
    store.close()
    return runs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", help="PostgreSQL admin URL (default: $SMITHERS_TEST_PG_URL or ensure-postgres.sh)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    targets: list[tuple[str, Callable[[], str]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="smithers-bench-"))
    targets.append(("sqlite", lambda: f"sqlite:///{tmp / f'{time.time_ns()}.db'}"))
    if not args.no_pg:
        pg = (
            args.pg
            or os.environ.get("SMITHERS_TEST_PG_URL")
            or subprocess.run(
                ["bash", str(Path(__file__).parent.parent / "scripts" / "ensure-postgres.sh")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        targets.append(("postgresql", lambda: fresh_pg(pg)))
    for name, make_url in targets:
        for kind in KINDS:
            small, small_cpu, small_db = step_overhead(make_url(), 100, args.repeat, kind)
            large, large_cpu, large_db = step_overhead(make_url(), 1000, args.repeat, kind)
            print(
                f"{name:10} {kind:6} 100 steps: {small:.3f} ms/step (cpu {small_cpu:.3f}, {small_db:.0%} in db)   "
                f"1000 steps: {large:.3f} ms/step (cpu {large_cpu:.3f}, {large_db:.0%} in db)   "
                f"growth x{large / small:.2f}",
                flush=True,
            )
        print(f"{name:10} 200 one-task runs back to back: {throughput(make_url()):.0f} runs/s", flush=True)


if __name__ == "__main__":
    try:
        main()
    finally:
        drop_created()
