"""In-process delivery of persisted events to subscribers (the CLI's live view, the gateway)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredEvent:
    """One row of ``_smithers_events``: ``payload`` is the whole event object."""

    run_id: str
    seq: int
    timestamp_ms: int
    type: str
    payload: dict[str, Any] = field(hash=False)


Subscriber = Callable[[StoredEvent], None]


class EventBus:
    """Fan-out of events after their transaction commits, in commit (and per-run seq) order."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Register ``callback``; returns a function that unsubscribes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, events: list[StoredEvent]) -> None:
        for ev in events:
            for callback in list(self._subscribers):
                try:
                    callback(ev)
                except Exception:  # a broken subscriber must not break the run
                    log.exception("event subscriber failed for %s", ev.type)
