"""New runs are stored before the gateway answers for them (docs/protocol.md#departures-from-0180).

``launchRun`` answers once the run's row is committed, so an acknowledged run id exists after any
crash. Launches that arrive in one pass of the event loop are committed in one transaction, which
keeps the launch rate close to what answering first gave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from smithers.engine.runner import RunLoop, commit_new_runs
from smithers.store.store import Store


class LaunchBatcher:
    """Commits the rows of new runs, several per transaction."""

    def __init__(self, store: Store):
        self.store = store
        self._queued: list[tuple[RunLoop, Callable[[BaseException | None], None], asyncio.Future[None]]] = []

    async def commit(self, loop: RunLoop, settled: Callable[[BaseException | None], None]) -> None:
        """Return once ``loop``'s rows are committed; raise what refused them.

        ``settled`` is called with the outcome as soon as it is known, even if the caller stopped
        waiting: a committed run must start executing whoever asked for it.
        """
        done = asyncio.get_running_loop().create_future()
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append((loop, settled, done))
        await done

    def _flush(self) -> None:
        batch, self._queued = self._queued, []
        try:
            errors: list[BaseException | None] = list(commit_new_runs(self.store, [loop for loop, _, _ in batch]))
        except Exception as exc:  # nothing of the batch is stored
            errors = [exc] * len(batch)
        for (_, settled, done), error in zip(batch, errors, strict=True):
            settled(error)
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
