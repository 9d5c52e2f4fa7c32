"""``streamRunEvents``: replay a run's window, then follow it live (docs/protocol.md#run-event-streams).

Ordering: the ``res`` frame first, then ``run.gap_resync`` (if events were evicted), then the
replayed frames, then live frames. A new stream buffers live frames until its replay is done and
never sends a run frame twice or out of seq order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Final

from smithers.errors import INVALID_REQUEST, GatewayError, Internal, InvalidRunId, RunNotFound, SeqOutOfRange
from smithers.gateway.context import ClientConnection
from smithers.gateway.dispatch import TRANSPORT_WS, Call, Handler, Reply
from smithers.gateway.jsvalues import js_number_string
from smithers.gateway.protocol import API_VERSION, RUN_EVENT_HEARTBEAT_MS, error_object
from smithers.gateway.shapes import run_record
from smithers.gateway.windows import RunWindows
from smithers.store.rows import now_ms

log = logging.getLogger(__name__)

EV_RUN_EVENT: Final = "run.event"
EV_GAP_RESYNC: Final = "run.gap_resync"
EV_RUN_HEARTBEAT: Final = "run.heartbeat"
EV_RUN_ERROR: Final = "run.error"


class RunEventStream:
    """One ``streamRunEvents`` subscription on one connection."""

    __slots__ = ("_buffer", "_heartbeat", "conn", "last_seq", "live", "run_id", "stream_id")

    def __init__(self, conn: ClientConnection, run_id: str):
        self.stream_id = str(uuid.uuid4())
        self.conn = conn
        self.run_id = run_id
        self.live = False
        self.last_seq = 0
        self._buffer: list[dict[str, Any]] = []
        self._heartbeat: asyncio.TimerHandle | None = None

    def deliver(self, frame: dict[str, Any]) -> None:
        """A live RunEvent frame: buffered until the replay is done, then sent."""
        if self.live:
            self._send(frame)
        else:
            self._buffer.append(frame)

    def _send(self, frame: dict[str, Any]) -> None:
        if frame["seq"] <= self.last_seq:
            return
        self.last_seq = frame["seq"]
        self.conn.send_event(EV_RUN_EVENT, {"streamId": self.stream_id, **frame})

    def start(self, windows: RunWindows, after_seq: int | None, snapshot: Callable[[], Any]) -> None:
        """Replay (gap resync first) then go live; ``snapshot`` builds the run record for a gap."""
        try:
            if after_seq is not None:
                self.last_seq = after_seq
                window = windows.frames(self.run_id)
                first_seq = window[0]["seq"] if window else windows.current_seq(self.run_id) + 1
                if window and after_seq < first_seq - 1:
                    gap = {
                        "apiVersion": API_VERSION,
                        "type": "GapResync",
                        "streamId": self.stream_id,
                        "runId": self.run_id,
                        "fromSeq": after_seq + 1,
                        "toSeq": first_seq - 1,
                        "snapshot": snapshot(),
                    }
                    self.conn.send_event(EV_GAP_RESYNC, gap)
                for frame in window:
                    if frame["seq"] > after_seq:
                        self._send(frame)
        except Exception:
            log.exception("replay of run %s failed", self.run_id)
            error = GatewayError(Internal, "streamRunEvents replay failed")
            payload = {"streamId": self.stream_id, "runId": self.run_id, "error": error_object(error)}
            self.conn.send_event(EV_RUN_ERROR, payload)
        self.live = True
        buffered, self._buffer = self._buffer, []
        for frame in buffered:
            self._send(frame)
        self._schedule_heartbeat()

    def _schedule_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(RUN_EVENT_HEARTBEAT_MS / 1000, self._beat)

    def _beat(self) -> None:
        if not self.conn.is_open:
            return
        payload = {
            "apiVersion": API_VERSION,
            "type": "Heartbeat",
            "streamId": self.stream_id,
            "runId": self.run_id,
            "ts": now_ms(),
        }
        self.conn.send_event(EV_RUN_HEARTBEAT, payload)
        self._schedule_heartbeat()

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._buffer.clear()


def _after_seq(params: dict[str, Any]) -> int | None:
    if "afterSeq" not in params:
        return None
    value = params["afterSeq"]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or not float(value).is_integer():
        raise GatewayError(SeqOutOfRange, "afterSeq must be a non-negative integer")
    return int(value)


def stream_run_events(call: Call, params: dict[str, Any]) -> Reply:
    """``streamRunEvents``: register a stream, answer, then replay and go live."""
    if call.transport != TRANSPORT_WS or call.connection is None:
        raise GatewayError(INVALID_REQUEST, "streamRunEvents is only supported over websocket connections")
    run_id = params.get("runId")
    if not isinstance(run_id, str) or not run_id:
        raise GatewayError(InvalidRunId, "runId is required")
    after_seq = _after_seq(params)
    ctx = call.ctx
    if ctx.resolve_run(run_id) is None:
        raise GatewayError(RunNotFound, f"Run not found: {run_id}")
    current = ctx.windows.current_seq(run_id)
    if after_seq is not None and after_seq > current:
        shown = js_number_string(after_seq)
        raise GatewayError(SeqOutOfRange, f"afterSeq {shown} is newer than current seq {current}")
    conn = call.connection
    stream = RunEventStream(conn, run_id)
    conn.add_stream(stream)
    payload = {"streamId": stream.stream_id, "runId": run_id, "afterSeq": after_seq, "currentSeq": current}

    def after() -> None:
        stream.start(ctx.windows, after_seq, lambda: run_record(ctx, run_id))

    return Reply(payload, after)


HANDLERS: Final[dict[str, Handler]] = {"streamRunEvents": stream_run_events}
