"""An agent attempt's stream as run events: ``NodeOutput``, ``ToolCallStarted``/``ToolCallFinished``
(and ``_smithers_tool_calls`` rows), ``AgentEvent`` and ``TokenUsageReported``
(docs/engine.md#agent-tasks).

What the attempt's ``meta_json`` says of the agent while it works (its prompt, session id, usage,
process group) is written with the events too, so an attempt a crash cuts off keeps them: its
transcript stays readable, the resume continues its session and ends its processes.

A chatty agent streams a token at a time, so writes are batched: what arrives within
:data:`FLUSH_MS` is written in one transaction, adjacent text of one stream becomes one
``NodeOutput`` (at most :data:`MAX_EVENT_TEXT` characters each), and more than
:data:`MAX_BUFFERED` characters waiting are written at once. The attempt flushes the rest when it
ends, in the transaction that records its outcome, before its ``NodeFinished`` (or
``NodeFailed``/``NodeCancelled``): an agent that answers at once costs no transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from smithers.engine import events as ev
from smithers.engine.agent import AgentUsage, OutputStream, ToolCall
from smithers.store.rows import dumps, now_ms
from smithers.store.store import Store, Tx

log = logging.getLogger(__name__)

FLUSH_MS = 200
MAX_EVENT_TEXT = 16_384
MAX_BUFFERED = 65_536
MAX_TOOL_JSON = 65_536
"""A tool call's input or output longer than this (as JSON) is stored cut, as a string."""


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        text = dumps(value)
    except (TypeError, ValueError):
        text = dumps(str(value))
    return text if len(text) <= MAX_TOOL_JSON else dumps(text[:MAX_TOOL_JSON])


class AttemptStream:
    """Buffers one attempt's stream and writes it as events of its run (on the event loop's thread)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        node_id: str,
        iteration: int,
        attempt: int,
        fence: Callable[[Tx], None] | None = None,
    ):
        self.store = store
        self.fence = fence
        """Checks the run's lease in each transaction that writes the stream (raises when it is lost)."""
        self.run_id = run_id
        self.base = {"nodeId": node_id, "iteration": iteration, "attempt": attempt}
        self.key = (node_id, iteration, attempt)
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.rows: list[tuple[str, int, dict[str, Any]]] = []
        """``_smithers_tool_calls`` writes waiting with the events: (start|finish, seq, columns)."""
        self.buffered = 0
        self.timer: asyncio.TimerHandle | None = None
        self.tool_seq = 0
        self.open_tools: dict[str, tuple[int, str]] = {}
        self.events_written = 0
        self.held = False
        self.meta_source: Callable[[], dict[str, Any]] | None = None
        """The attempt's whole ``meta_json`` as it is now (set by the run)."""
        self.meta_dirty = False

    def _elsewhere(self) -> bool:
        return threading.get_ident() != self.thread

    # ---- what the agent streams ------------------------------------------------------------------
    def output(self, text: str, stream: OutputStream) -> None:
        if self._elsewhere():
            self.loop.call_soon_threadsafe(self.output, text, stream)
            return
        if not text:
            return
        stream = "stderr" if stream == "stderr" else "stdout"
        last = self.pending[-1] if self.pending else None
        if (
            last is not None
            and last[0] == ev.NODE_OUTPUT
            and last[1]["stream"] == stream
            and len(last[1]["text"]) + len(text) <= MAX_EVENT_TEXT
        ):
            last[1]["text"] += text
        else:
            for start in range(0, len(text), MAX_EVENT_TEXT):
                self.pending.append((ev.NODE_OUTPUT, {"text": text[start : start + MAX_EVENT_TEXT], "stream": stream}))
        self.buffered += len(text)
        self._schedule()

    def tool_call(self, call: ToolCall) -> None:
        if self._elsewhere():
            self.loop.call_soon_threadsafe(self.tool_call, call)
            return
        if call.status == "started":
            self.tool_seq += 1
            seq = self.tool_seq
            self.open_tools[call.call_id or f"name:{call.name}"] = (seq, call.name)
            payload: dict[str, Any] = {"toolName": call.name, "seq": seq}
            if call.call_id:
                payload["toolCallId"] = call.call_id
            self.pending.append((ev.TOOL_CALL_STARTED, payload))
            row = {"tool_name": call.name, "input_json": _json(call.input), "started_at_ms": now_ms()}
            self.rows.append(("start", seq, row))
        else:
            key = call.call_id if call.call_id in self.open_tools else f"name:{call.name}"
            seq, name = self.open_tools.pop(key, (0, call.name))
            if not seq:  # a finish without a start: number it anyway
                self.tool_seq += 1
                seq = self.tool_seq
            payload = {"toolName": name, "seq": seq, "status": call.status}
            if call.call_id:
                payload["toolCallId"] = call.call_id
            if call.error:
                payload["error"] = call.error[:2000]
            self.pending.append((ev.TOOL_CALL_FINISHED, payload))
            ended: dict[str, Any] = {
                "tool_name": name,
                "status": call.status,
                "finished_at_ms": now_ms(),
                "output_json": _json(call.output),
                "error_json": _json({"message": call.error}) if call.error else None,
            }
            self.rows.append(("finish", seq, ended))
        self._schedule()

    def usage(self, usage: AgentUsage, agent_id: str) -> None:
        if self._elsewhere():
            self.loop.call_soon_threadsafe(self.usage, usage, agent_id)
            return
        self.pending.append((ev.TOKEN_USAGE_REPORTED, {"model": usage.model, "agent": agent_id, **usage.to_json()}))
        self._schedule()

    def agent_event(self, engine: str, event: dict[str, Any]) -> None:
        if self._elsewhere():
            self.loop.call_soon_threadsafe(self.agent_event, engine, event)
            return
        self.pending.append((ev.AGENT_EVENT, {"engine": engine, "event": event}))
        self._schedule()

    def changed(self, now: bool = False) -> None:
        """The attempt's meta changed: written with the next flush (``now``: at once)."""
        if self._elsewhere():
            self.loop.call_soon_threadsafe(self.changed, now)
            return
        self.meta_dirty = True
        if now:
            self.flush()
        else:
            self._schedule()

    # ---- writing ---------------------------------------------------------------------------------
    def _write_rows(self, tx: Tx, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        base = self.base
        for op, seq, columns in rows:
            key = {
                "run_id": self.run_id,
                "node_id": base["nodeId"],
                "iteration": base["iteration"],
                "attempt": base["attempt"],
                "seq": seq,
            }
            if op == "start":
                tx.insert_tool_call(**key, **columns)
            else:
                tx.finish_tool_call(key, **columns)

    def _schedule(self) -> None:
        if self.buffered >= MAX_BUFFERED:
            self.flush()
        elif self.timer is None and not self.held:
            self.timer = self.loop.call_later(FLUSH_MS / 1000, self._timed_flush)

    def hold(self) -> None:
        """The attempt has ended: write nothing more on a timer (the outcome's transaction flushes)."""
        self.held = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_flush(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        """Write what is buffered now (in the caller's transaction, else in one of its own).

        A failed write is logged and dropped: the stream is an observation of the attempt, whose
        outcome does not depend on it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # once held, the outcome's own write records the whole meta: not written twice
        meta = self.meta_source() if self.meta_dirty and self.meta_source is not None and not self.held else None
        if not self.pending and meta is None:
            return
        pending, self.pending, self.buffered = self.pending, [], 0
        rows, self.rows = self.rows, []
        self.meta_dirty = False
        try:
            with self.store.write() as tx:
                if self.fence is not None:
                    self.fence(tx)
                self._write_rows(tx, rows)
                tx.emit_many(self.run_id, [(type_, {**self.base, **payload}) for type_, payload in pending])
                if meta is not None:
                    tx.update_attempt(self.run_id, *self.key, meta_json=dumps(meta))
            self.events_written += len(pending)
        except Exception:
            log.warning("run %s: %d stream events of %s lost", self.run_id, len(pending), self.base, exc_info=True)
