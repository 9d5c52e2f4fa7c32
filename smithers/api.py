"""``smithers.run`` / ``smithers.run_async``: run a workflow in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from smithers.engine.ownership import CANCEL_POLL_MS
from smithers.engine.runner import DEFAULT_MAX_CONCURRENCY, RunResult
from smithers.engine.runner import run_async as _run_loop
from smithers.engine.states import WAITING_TIMER
from smithers.engine.workflow import Workflow
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import now_ms
from smithers.store.store import Store


async def run_async(
    workflow: Workflow,
    input: Any = None,
    *,
    db: str | Store | None = None,
    run_id: str | None = None,
    resume: bool = False,
    force: bool = False,
    retry: bool = False,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    auth: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    cancel: asyncio.Event | None = None,
    on_event: Callable[[StoredEvent], None] | None = None,
    wait_timers: bool = True,
) -> RunResult:
    """Run (or resume) ``workflow`` until it finishes, fails, is cancelled or waits.

    With ``wait_timers`` (the default) a run that only waits for timers sleeps here and goes on;
    otherwise it returns ``waiting-timer`` and whoever resumes it later finishes it. Resuming a run
    that has ended writes nothing (``result.unchanged``), unless ``retry=True`` asks to run the failed
    or cancelled nodes of a failed or cancelled run again.
    ``db`` is a path, a URL, or an open :class:`Store` (default ``./smithers.db`` or ``SMITHERS_DB``).
    """
    store = db if isinstance(db, Store) else Store(db)
    try:
        result = await _run_loop(
            workflow,
            input,
            store=store,
            run_id=run_id,
            resume=resume,
            force=force,
            retry=retry,
            max_concurrency=max_concurrency,
            auth=auth,
            config=config,
            cancel=cancel,
            on_event=on_event,
        )
        while wait_timers and result.status == WAITING_TIMER and result.wake_at_ms is not None:
            await _sleep_until_due(store, result.run_id, result.wake_at_ms, cancel)
            result = await _run_loop(
                workflow,
                None,
                store=store,
                run_id=result.run_id,
                resume=True,
                max_concurrency=max_concurrency,
                config=config,
                cancel=cancel,
                on_event=on_event,
            )
            # This call did run the run: a run found ended after the sleep (cancelled elsewhere)
            # is reported as it is, not as a resume that did nothing.
            result.unchanged = False
        return result
    finally:
        if not isinstance(db, Store):
            store.close()


async def _sleep_until_due(store: Store, run_id: str, wake_at_ms: int, cancel: asyncio.Event | None) -> None:
    """Sleep until a suspended run's timer is due, or less: until ``cancel`` is set, or until the run
    leaves ``waiting-timer`` elsewhere (cancelled by another process: the resume that follows then
    writes nothing). The run row is read every 250 ms, as an owner polls for cancel requests.
    """
    while (remaining_ms := wake_at_ms - now_ms()) > 0:
        step = min(remaining_ms, CANCEL_POLL_MS) / 1000
        if cancel is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), timeout=step)
            if cancel.is_set():
                return
        else:
            await asyncio.sleep(step)
        row = store.get_run(run_id)
        if row is None or row["status"] != WAITING_TIMER:
            return


def run(workflow: Workflow, input: Any = None, **options: Any) -> RunResult:
    """Blocking :func:`run_async`; refuses to run inside a running event loop (use ``await run_async``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_async(workflow, input, **options))
    raise RuntimeError("smithers.run() called inside a running event loop; use 'await smithers.run_async(...)'")
