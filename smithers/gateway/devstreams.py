"""``streamDevTools``: a run's tree as a snapshot, then one delta per frame (docs/protocol.md#streamdevtools).

One poller per followed run reads the latest frame number every 25 ms (the run may execute in
another process) and builds each new frame's snapshot once for every stream of the run. Each stream
decides for itself between a delta and a full snapshot: after a rewind, every 50 events, or when
the delta would not be smaller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from smithers.engine import devtools
from smithers.engine.history import read_frames
from smithers.engine.runstate import compute_run_state
from smithers.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    BackpressureDisconnect,
    GatewayError,
    InvalidRunId,
    RunNotFound,
    SeqOutOfRange,
)
from smithers.gateway.context import ClientConnection
from smithers.gateway.devtools import require_subscription, valid_run_id
from smithers.gateway.dispatch import TRANSPORT_WS, Call, Handler, Reply
from smithers.gateway.jsvalues import encode_json, js_number_string
from smithers.gateway.metrics import GatewayMetrics
from smithers.store.rows import loads
from smithers.store.store import Store, Tx

log = logging.getLogger(__name__)

EV_DEVTOOLS: Final = "devtools.event"
EV_DEVTOOLS_ERROR: Final = "devtools.error"
REBASELINE_EVERY: Final = 50
MAX_QUEUED_EVENTS: Final = 1000
POLL_S: Final = 0.025
MAX_SEQ: Final = 2**53 - 1

Snapshot = dict[str, Any]


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A ``DevToolsEvent`` as JSON text, and its size in bytes (what the delta-or-snapshot rule compares)."""

    text: str
    size: int


class FrameCache:
    """What one pass over a run's new frames computes once for all its streams: each snapshot's
    event, and each delta between a snapshot a client holds and the next one.

    Streams that received the same event hold the same snapshot object, so most deltas are shared.
    """

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics
        self._snapshots: dict[int, EncodedEvent] = {}
        self._deltas: dict[tuple[int, int], EncodedEvent] = {}
        self._keep: list[Snapshot] = []  # the snapshots keyed by id() stay alive while cached

    def snapshot_event(self, snap: Snapshot) -> EncodedEvent:
        known = self._snapshots.get(id(snap))
        if known is None:
            known = self._snapshots[id(snap)] = _encoded(devtools.snapshot_event(snap))
            self._keep.append(snap)
        return known

    def delta_event(self, held: Snapshot, snap: Snapshot) -> EncodedEvent:
        key = (id(held), id(snap))
        known = self._deltas.get(key)
        if known is None:
            started = time.perf_counter()
            event = devtools.delta_event(devtools.diff_snapshots(held, snap))
            self.metrics.devtools_delta_ms.observe((time.perf_counter() - started) * 1000)
            known = self._deltas[key] = _encoded(event)
            self._keep.extend((held, snap))
        return known


def _encoded(event: dict[str, Any]) -> EncodedEvent:
    text = encode_json(event)
    return EncodedEvent(text, len(text.encode()))


class DevToolsStream:
    """One ``streamDevTools`` subscription: what its client holds, and what to send it next."""

    def __init__(self, hub: DevToolsHub, conn: ClientConnection, run_id: str):
        self.stream_id = str(uuid.uuid4())
        self.hub = hub
        self.conn = conn
        self.run_id = run_id
        self.held: Snapshot | None = None
        self.seen = 0
        self.deltas = 0
        self.rebaseline = False
        self.closed = False

    def deliver(self, frame: dict[str, Any]) -> None:
        """Run events are not what this stream carries (it follows frames)."""

    def stop(self) -> None:
        """The connection went away, or the stream failed: forget it."""
        if not self.closed:
            self.closed = True
            self.hub.remove(self)

    def send_snapshot(self, snap: Snapshot, cache: FrameCache) -> None:
        self._send(cache.snapshot_event(snap), "snapshot")
        self.held, self.seen, self.deltas, self.rebaseline = snap, snap["frameNo"], 0, False

    def send_next(self, snap: Snapshot, cache: FrameCache) -> None:
        """Frame ``snap`` follows what the client holds: a delta, or a full snapshot when due."""
        held = self.held
        if held is None or self.rebaseline or self.deltas + 1 >= REBASELINE_EVERY:
            self.send_snapshot(snap, cache)
            return
        delta = cache.delta_event(held, snap)
        if delta.size >= cache.snapshot_event(snap).size:
            self.send_snapshot(snap, cache)
            return
        self._send(delta, "delta")
        self.held, self.seen, self.deltas = snap, snap["frameNo"], self.deltas + 1

    def _send(self, event: EncodedEvent, kind: str) -> None:
        if self.closed:
            return
        if self.conn.queued_frames() > MAX_QUEUED_EVENTS:
            self.hub.metrics.devtools_backpressure.inc()
            self.fail(BackpressureDisconnect, f"Subscriber outbound queue exceeded {MAX_QUEUED_EVENTS} events.")
            return
        payload = f'{{"streamId":"{self.stream_id}","runId":{encode_json(self.run_id)},"event":{event.text}}}'
        if self.conn.send_event(EV_DEVTOOLS, None, payload_json=payload):
            self.hub.metrics.devtools_events.labels(kind).inc()
            self.hub.metrics.devtools_event_bytes.observe(event.size)

    def fail(self, code: str, message: str) -> None:
        """End the stream with one ``devtools.error`` (the socket stays open)."""
        if self.closed:
            return
        error = {"code": code or SERVER_ERROR, "message": message or "stream failed"}
        self.conn.send_event(EV_DEVTOOLS_ERROR, {"streamId": self.stream_id, "runId": self.run_id, "error": error})
        self.stop()


class DevToolsHub:
    """The DevTools streams of one gateway, and one frame poller per followed run."""

    def __init__(self, store: Store, metrics: GatewayMetrics):
        self.store = store
        self.metrics = metrics
        self._streams: dict[str, list[DevToolsStream]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}

    def open(self, conn: ClientConnection, run_id: str) -> DevToolsStream:
        return DevToolsStream(self, conn, run_id)

    def add(self, stream: DevToolsStream, seq: int | None) -> None:
        """Send the stream's first events (a snapshot, then catching up from ``seq``) and follow the run."""
        try:
            self._start(stream, seq)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("devtools stream of run %s failed to start (ref %s)", stream.run_id, ref)
            stream.fail(SERVER_ERROR, f"internal error (ref {ref})")
            return
        if stream.closed:
            return
        self._streams.setdefault(stream.run_id, []).append(stream)
        self.metrics.devtools_active.labels(_run_label(stream.run_id)).inc()
        if stream.run_id not in self._pollers:
            self._pollers[stream.run_id] = asyncio.get_running_loop().create_task(self._poll(stream.run_id))

    def remove(self, stream: DevToolsStream) -> None:
        streams = self._streams.get(stream.run_id)
        if streams and stream in streams:
            streams.remove(stream)
            self.metrics.devtools_active.labels(_run_label(stream.run_id)).dec()
        if not streams:
            self._streams.pop(stream.run_id, None)
            poller = self._pollers.pop(stream.run_id, None)
            if poller is not None:
                poller.cancel()

    def rebaseline(self, run_id: str) -> None:
        """A rewind moved the run: every stream of it sends a full snapshot next."""
        for stream in self._streams.get(run_id, ()):
            stream.rebaseline = True

    async def close(self) -> None:
        for poller in self._pollers.values():
            poller.cancel()
        self._pollers.clear()
        self._streams.clear()

    # -- building snapshots -------------------------------------------------------------------------
    def latest(self, run_id: str) -> int:
        with self.store.read() as tx:
            return tx.last_frame_no(run_id)

    def run_state(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``runState`` (None when it cannot be computed)."""
        with self.store.read() as tx:
            return _run_state(tx, run_id)

    def snapshots(self, run_id: str, lo: int, hi: int) -> dict[int, Snapshot]:
        """Snapshots of the stored frames ``lo..hi`` (a missing frame is missing from the result)."""
        with self.store.read() as tx:
            rows = read_frames(tx, run_id, lo, hi)
            run_state = _run_state(tx, run_id)
        out = {}
        for row in rows:
            started = time.perf_counter()
            out[row["frame_no"]] = devtools.snapshot(run_id, row["frame_no"], loads(row["xml_json"]), run_state)
            self.metrics.devtools_snapshot_ms.observe((time.perf_counter() - started) * 1000)
        return out

    def _start(self, stream: DevToolsStream, seq: int | None) -> None:
        run_id = stream.run_id
        cache = FrameCache(self.metrics)
        latest = self.latest(run_id)
        if latest == 0:
            if seq:
                stream.fail(SeqOutOfRange, f"fromSeq {seq} is newer than current seq 0")
                return
            stream.send_snapshot(devtools.empty_snapshot(run_id, self.run_state(run_id)), cache)
            return
        if seq is None:
            stream.send_snapshot(self.snapshots(run_id, latest, latest)[latest], cache)
            return
        initial = min((seq // REBASELINE_EVERY) * REBASELINE_EVERY, latest)
        first = self.snapshots(run_id, initial, initial).get(initial)
        if first is None:  # frame 0 too: this engine numbers frames from 1
            log.info("frame %d of run %s is missing; starting from the latest", initial, run_id)
            stream.send_snapshot(self.snapshots(run_id, latest, latest)[latest], cache)
            return
        stream.send_snapshot(first, cache)
        if initial < latest:
            self._catch_up(stream, self.snapshots(run_id, initial + 1, latest), initial + 1, latest, cache)

    def _catch_up(
        self, stream: DevToolsStream, built: dict[int, Snapshot], lo: int, hi: int, cache: FrameCache
    ) -> None:
        for frame_no in range(lo, hi + 1):
            if stream.closed:
                return
            snap = built.get(frame_no)
            if snap is None:  # a frame gone missing: start again from the latest
                latest = self.latest(stream.run_id)
                fresh = self.snapshots(stream.run_id, latest, latest).get(latest)
                if fresh is not None:
                    stream.send_snapshot(fresh, cache)
                return
            stream.send_next(snap, cache)

    async def _poll(self, run_id: str) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            streams = [s for s in self._streams.get(run_id, ()) if not s.closed]
            if not streams:
                return
            try:
                self._advance(run_id, streams)
            except Exception:
                log.exception("devtools poll of run %s failed", run_id)

    def _advance(self, run_id: str, streams: list[DevToolsStream]) -> None:
        latest = self.latest(run_id)
        behind = [s for s in streams if s.seen != latest or s.rebaseline]
        if not behind:
            return
        lo = min(min(s.seen + 1, latest) for s in behind)
        built = self.snapshots(run_id, max(lo, 1), latest)
        cache = FrameCache(self.metrics)
        for stream in behind:
            if latest < stream.seen or stream.rebaseline:  # rewound: the client starts over from here
                snap = built.get(latest)
                if snap is not None:
                    stream.send_snapshot(snap, cache)
                continue
            self._catch_up(stream, built, stream.seen + 1, latest, cache)


def _run_state(tx: Tx, run_id: str) -> dict[str, Any] | None:
    run = tx.get_run(run_id)
    if run is None:
        return None
    try:
        return compute_run_state(tx, run)
    except Exception:  # a snapshot goes out without it rather than not at all
        log.debug("runState of run %s cannot be computed", run_id, exc_info=True)
        return None


def _run_label(run_id: str) -> str:
    return hashlib.sha1(run_id.encode(), usedforsecurity=False).hexdigest()[:12]


def _effective_seq(params: dict[str, Any]) -> tuple[bool, Any]:
    """(given, value): ``fromSeq`` when it is a number, else ``afterSeq`` whatever it is; both numbers
    must agree. ``fromSeq: null`` without ``afterSeq`` means no seq."""
    from_seq, after_seq = params.get("fromSeq"), params.get("afterSeq")
    numbers = [isinstance(v, int | float) and not isinstance(v, bool) for v in (from_seq, after_seq)]
    if all(numbers) and from_seq != after_seq:
        raise GatewayError(SeqOutOfRange, "fromSeq and afterSeq must match when both are provided")
    if numbers[0]:
        return True, from_seq
    return "afterSeq" in params, after_seq


def _valid_seq(value: Any) -> int:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise GatewayError(SeqOutOfRange, "fromSeq must be a non-negative integer.")
    if value < 0 or value > MAX_SEQ or not float(value).is_integer():
        raise GatewayError(SeqOutOfRange, "fromSeq must be a non-negative integer.")
    return int(value)


def stream_devtools(call: Call, params: dict[str, Any]) -> Reply:
    """``streamDevTools`` (WebSocket only): answer, then a snapshot and one event per frame."""
    if call.transport != TRANSPORT_WS or call.connection is None:
        raise GatewayError(INVALID_REQUEST, "streamDevTools is only supported over websocket connections")
    ctx = call.ctx
    metrics = ctx.metrics
    try:
        if not isinstance(params.get("runId"), str) or not params.get("runId"):
            raise GatewayError(InvalidRunId, "runId is required")
        given, raw_seq = _effective_seq(params)
        run_id = valid_run_id(call, params.get("runId"))
        seq = _valid_seq(raw_seq) if given else None
        require_subscription(call, run_id)
        if ctx.resolve_run(run_id) is None:
            raise GatewayError(RunNotFound, f"Run not found: {run_id}")
        if seq is not None:
            latest = ctx.devtools.latest(run_id)
            if seq > latest:
                raise GatewayError(SeqOutOfRange, f"fromSeq {js_number_string(seq)} is newer than current seq {latest}")
    except GatewayError:
        metrics.devtools_subscribe.labels("error").inc()
        raise
    metrics.devtools_subscribe.labels("ok").inc()
    conn = call.connection
    stream = ctx.devtools.open(conn, run_id)
    conn.add_stream(stream)
    payload = {"streamId": stream.stream_id, "runId": run_id, "fromSeq": seq, "afterSeq": seq}
    return Reply(payload, lambda: ctx.devtools.add(stream, seq))


HANDLERS: Final[dict[str, Handler]] = {"streamDevTools": stream_devtools}
