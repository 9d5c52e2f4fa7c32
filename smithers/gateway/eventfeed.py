"""Every run's engine events, whichever process commits them, delivered once and in order
(docs/protocol.md#several-gateways-on-one-database).

A gateway learns of its own commits from the store's bus, at once. Other processes' commits (another
gateway, ``smithers approve`` in a terminal) are read from the database: each transaction that emits
events records each run's latest ``seq`` in ``_smithers_run_activity``; the feed reads the runs
active lately and, for any whose ``seq`` passed what it has delivered, the events after it. On
PostgreSQL a ``LISTEN`` wakes it at each commit (the notification carries nothing it relies on:
a missed one is caught by the next poll); on SQLite it polls.

Per run, events are delivered strictly in ``seq`` order without a gap or a duplicate: an event whose
``seq`` is past the next one expected is preceded by the missing ones, read from the database. A run
first seen after the feed started delivers only its events from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from smithers.store.events_bus import StoredEvent
from smithers.store.rows import now_ms
from smithers.store.store import Store

log = logging.getLogger(__name__)

POLL_MS: Final = 100
"""How often the database is read for other processes' events without a notification (SQLite)."""
LISTEN_POLL_MS: Final = 1000
"""The same on PostgreSQL, where notifications wake the feed at once."""
LOOKBACK_MS: Final = 10_000
"""How far back a full read looks at the runs' latest events: a transaction that commits later than
this after it was stamped (or a writer whose clock is this far behind) would be missed."""
SHORT_LOOKBACK_MS: Final = 1_000
"""How far back the reads between two full ones look (fewer rows on a busy database)."""
FULL_READ_EVERY_MS: Final = 2_000
MAX_RUNS_TRACKED: Final = 100_000
"""Runs whose position is kept (least recently active dropped first)."""
BACKFILL_PAGE: Final = 500


class EventFeed:
    """Delivers every run's engine events to ``deliver(event, remote)`` once each, in per-run ``seq``
    order; ``remote`` says another process committed it."""

    def __init__(self, store: Store, deliver: Callable[[StoredEvent, bool], None]):
        self.store = store
        self.deliver = deliver
        self.positions: OrderedDict[str, int] = OrderedDict()
        """Run → the last ``seq`` delivered."""
        self.joined_ms = 0
        self.floor_ms = 0
        """Events stamped at or before this, of runs whose position was dropped, were delivered."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop_listening = threading.Event()
        self._listener: threading.Thread | None = None
        self._read_since = 0
        self._own: set[tuple[str, int]] = set()
        """Events this process committed from other threads, not yet taken on the loop."""
        self._own_lock = threading.Lock()
        self._last_full = 0

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Follow the bus and the database from now on (on the running event loop)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.joined_ms = self._read_since = now_ms()
        self._unsubscribe = self.store.bus.subscribe(self._on_local)
        self.store.notify_events = True
        self._task = self._loop.create_task(self._follow(), name="smithers-event-feed")
        if self.store.is_postgres:
            self._listener = threading.Thread(
                target=self.store.wait_for_notifications,
                args=(self._stop_listening, self._notified),
                name="smithers-event-listener",
                daemon=True,
            )
            self._listener.start()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop_listening.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:  # it notices within 50 ms (not joined on a worker thread:
            deadline = now_ms() + 5000  # those may all be busy with task bodies)
            while self._listener.is_alive() and now_ms() < deadline:
                await asyncio.sleep(0.05)
            self._listener = None

    # ---- what this process commits ----------------------------------------------------------------
    def _on_local(self, event: StoredEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() != self._loop_thread:
            # committed here, from another thread: the database may show it to the loop first, and
            # it must not count as another process's then
            with self._own_lock:
                self._own.add((event.run_id, event.seq))
            loop.call_soon_threadsafe(self._on_local_later, event)
            return
        self.take(event)

    def _on_local_later(self, event: StoredEvent) -> None:
        self.take(event)
        with self._own_lock:
            self._own.discard((event.run_id, event.seq))

    # ---- what other processes commit -----------------------------------------------------------------
    def _notified(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _follow(self) -> None:
        interval = (LISTEN_POLL_MS if self.store.is_postgres else POLL_MS) / 1000
        while not self._stop_listening.is_set():
            # not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
            # wake-up does, and this loop would never stop
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({woken}, timeout=interval)
            finally:
                woken.cancel()
            self._wake.clear()
            try:
                self.catch_up()
            except Exception:
                log.exception("reading other processes' events failed")

    def catch_up(self) -> int:
        """Deliver what other processes committed since the last read; returns how many events."""
        started = now_ms()
        full = started - self._last_full >= FULL_READ_EVERY_MS
        if full:
            self._last_full = started
        with self.store.read() as tx:
            active = tx.list_active_runs(self._read_since - (LOOKBACK_MS if full else SHORT_LOOKBACK_MS))
        delivered = 0
        for row in active:
            run_id, last = row["run_id"], int(row["last_event_seq"])
            position = self.positions.get(run_id)
            if position is not None and position >= last:
                continue
            for event in self._missing(run_id, position, last):
                delivered += self.take(event, remote=True)
        self._read_since = started
        return delivered

    # ---- ordering ----------------------------------------------------------------------------------------
    def take(self, event: StoredEvent, remote: bool = False) -> int:
        """Deliver ``event`` after any of its run's events not yet delivered; returns how many went out."""
        run_id = event.run_id
        position = self.positions.get(run_id)
        if position is None and event.seq == 0:
            position = -1  # a run's first event: nothing before it to look for
        if position is not None and event.seq <= position:
            return 0
        count = 0
        if position is None or event.seq > position + 1:
            for missing in self._missing(run_id, position, event.seq - 1):
                count += self._send(missing, remote=True)
            position = self.positions.get(run_id)
            if position is not None and event.seq <= position:
                return count
        return count + self._send(event, remote)

    def _send(self, event: StoredEvent, remote: bool) -> int:
        position = self.positions.get(event.run_id)
        if position is not None and event.seq <= position:
            return 0
        if remote and self._own:
            with self._own_lock:
                remote = (event.run_id, event.seq) not in self._own
        self.positions[event.run_id] = event.seq
        self.positions.move_to_end(event.run_id)
        while len(self.positions) > MAX_RUNS_TRACKED:
            self.positions.popitem(last=False)
            self.floor_ms = max(self.floor_ms, event.timestamp_ms)
        try:
            self.deliver(event, remote)
        except Exception:
            log.exception("delivering %s of run %s failed", event.type, event.run_id)
        return 1

    def _missing(self, run_id: str, position: int | None, up_to: int) -> list[StoredEvent]:
        """The run's stored events after ``position`` up to ``up_to`` (for a run not followed yet,
        those stamped since the feed started), oldest first."""
        if up_to < 0:
            return []
        with self.store.read() as tx:
            if position is not None:
                return [e for e in tx.list_events(run_id, position, up_to - position) if e.seq <= up_to]
            since = max(self.joined_ms, self.floor_ms + 1)
            found: list[StoredEvent] = []
            before = up_to + 1
            while True:
                page = tx.list_events_before(run_id, before, BACKFILL_PAGE)
                recent = [e for e in page if e.timestamp_ms >= since]
                found[:0] = recent
                if len(recent) < len(page) or len(page) < BACKFILL_PAGE:
                    break
                before = page[0].seq
        if not found:  # nothing new since the feed started: follow the run from where it is
            self.positions[run_id] = up_to
        return found
