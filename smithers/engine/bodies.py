"""Worker threads for synchronous task bodies (docs/engine.md#tasks-and-attempts).

Python cannot stop a thread, so a sync body that outlives its attempt (timed out, cancelled) keeps
running until it returns. These threads are daemons: a body still running when the process ends
does not hold the process up (``concurrent.futures`` threads are joined at exit, which made
``smithers run`` wait for bodies of attempts that had already ended). Idle threads are reused and
exit after a while.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

IDLE_EXIT_S = 30.0

_Work = tuple["Future[Any]", Callable[[], Any]]


class BodyThreads:
    """A growing pool of daemon threads: a body never waits for a free thread."""

    def __init__(self, idle_exit_s: float = IDLE_EXIT_S):
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._idle_exit_s = idle_exit_s

    def submit(self, body: Callable[[], Any]) -> Future[Any]:
        """Run ``body`` on a worker thread; its future completes when the body returns or raises."""
        future: Future[Any] = Future()
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # an idle worker is promised to this item
        self._work.put((future, body))
        if spawn:
            threading.Thread(target=self._serve, name="smithers-body", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            try:
                future, body = self._work.get(timeout=self._idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counted on this thread: leave
                        self._idle -= 1
                        return
                continue  # a submitter counted on an idle thread: work is on its way
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(body())
                except BaseException as exc:  # the body's own failure, handed to the attempt
                    future.set_exception(exc)
            del future, body
            with self._lock:
                self._idle += 1


BODY_THREADS = BodyThreads()
