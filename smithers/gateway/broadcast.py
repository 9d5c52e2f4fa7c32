"""Engine events → gateway events, and broadcast to connections (docs/protocol.md#events).

Only events of runs executed by this gateway process are mapped (plus ``TimeTravelJumped``).
``run.completed`` goes out once per terminal transition: the gateway remembers, per execution,
that the engine's terminal event was mapped and does not broadcast its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Protocol

from smithers.engine import events as ev
from smithers.engine.states import CANCELLED, FAILED, FINISHED, IN_PROGRESS
from smithers.gateway.context import RunStream
from smithers.gateway.jsvalues import encode_json
from smithers.gateway.shapes import RUN_COMPLETED, run_completed
from smithers.gateway.windows import RunWindows
from smithers.store.events_bus import StoredEvent

Payload = dict[str, Any]


class Receiver(Protocol):
    """What a broadcast needs of a connection."""

    def receives(self, payload: Mapping[str, Any]) -> bool: ...

    def send_event(
        self,
        event: str,
        payload: Any,
        state_version: int | None = None,
        *,
        payload_json: str | None = None,
        counted: bool = True,
    ) -> bool: ...

    def streams_on(self, run_id: str) -> list[RunStream]: ...


def _node(state: str) -> Callable[[StoredEvent], Payload]:
    def build(event: StoredEvent) -> Payload:
        return {"runId": event.run_id, "nodeId": event.payload.get("nodeId"), "state": state}

    return build


def _node_failed(event: StoredEvent) -> Payload:
    return {**_node(FAILED)(event), "error": event.payload.get("error")}


def _output(event: StoredEvent) -> Payload:
    stream = event.payload.get("stream")
    return {
        "runId": event.run_id,
        "nodeId": event.payload.get("nodeId"),
        "output": event.payload.get("text", ""),
        "stream": stream if stream in ("stdout", "stderr") else "stdout",
    }


def _approval(extra: Mapping[str, Any]) -> Callable[[StoredEvent], Payload]:
    def build(event: StoredEvent) -> Payload:
        iteration = event.payload.get("iteration")
        return {"runId": event.run_id, "nodeId": event.payload.get("nodeId"), "iteration": iteration, **extra}

    return build


def _decided(approved: bool) -> Callable[[StoredEvent], Payload]:
    """``approval.decided`` with ``decidedBy``, as the approvals RPC broadcasts it."""

    def build(event: StoredEvent) -> Payload:
        p = event.payload
        return {
            "runId": event.run_id,
            "nodeId": p.get("nodeId"),
            "iteration": p.get("iteration"),
            "approved": approved,
            "decidedBy": p.get("decidedBy"),
        }

    return build


def _heartbeat(event: StoredEvent) -> Payload:
    p = event.payload
    return {
        "runId": event.run_id,
        "nodeId": p.get("nodeId"),
        "iteration": p.get("iteration"),
        "attempt": p.get("attempt"),
    }


def _jumped(event: StoredEvent) -> Payload:
    p = event.payload
    return {
        "runId": event.run_id,
        "fromFrameNo": p.get("fromFrameNo"),
        "toFrameNo": p.get("toFrameNo"),
        "timestampMs": p.get("timestampMs", event.timestamp_ms),
        "caller": p.get("caller"),
    }


def _completed(status: str) -> Callable[[StoredEvent], Payload]:
    def build(event: StoredEvent) -> Payload:
        return run_completed(event.run_id, status, event.payload.get("error"))

    return build


EVENT_MAP: Final[Mapping[str, tuple[str, Callable[[StoredEvent], Payload]]]] = {
    ev.NODE_STARTED: ("node.started", _node(IN_PROGRESS)),
    ev.NODE_FINISHED: ("node.finished", _node(FINISHED)),
    ev.NODE_FAILED: ("node.failed", _node_failed),
    ev.NODE_OUTPUT: ("task.output", _output),
    ev.APPROVAL_REQUESTED: ("approval.requested", _approval({})),
    ev.APPROVAL_GRANTED: ("approval.decided", _decided(True)),
    ev.APPROVAL_AUTO_APPROVED: ("approval.auto_approved", _approval({})),
    ev.APPROVAL_DENIED: ("approval.decided", _decided(False)),
    ev.TASK_HEARTBEAT: ("task.heartbeat", _heartbeat),
    ev.TIME_TRAVEL_JUMPED: ("run.time_travel_jumped", _jumped),
    ev.RUN_FINISHED: (RUN_COMPLETED, _completed(FINISHED)),
    ev.RUN_FAILED: (RUN_COMPLETED, _completed(FAILED)),
    ev.RUN_CANCELLED: (RUN_COMPLETED, _completed(CANCELLED)),
}
"""Engine event type → (gateway event, payload builder); unlisted types are not forwarded."""


def map_event(event: StoredEvent) -> tuple[str, Payload] | None:
    """The gateway event for an engine event, or None when it is not forwarded."""
    entry = EVENT_MAP.get(event.type)
    if entry is None:
        return None
    name, build = entry
    return name, build(event)


class Broadcaster:
    """Owns the global ``stateVersion`` and fans broadcasts out to the connections."""

    def __init__(
        self,
        connections: Collection[Receiver],
        windows: RunWindows,
        on_sent: Callable[[str, int], None] | None = None,
    ):
        self.state_version = 0
        self._connections = connections
        self._windows = windows
        self._on_sent = on_sent

    def broadcast(self, event: str, payload: Payload) -> int:
        """Send ``event`` to every authenticated connection whose filter passes; returns its stateVersion."""
        self.state_version += 1
        version = self.state_version
        run_id = payload.get("runId")
        frame = self._windows.append(run_id, event, payload, version) if isinstance(run_id, str) else None
        if not self._connections:
            return version
        payload_json = encode_json(payload)  # serialised once, framed per connection
        sent = 0
        for conn in list(self._connections):
            if not conn.receives(payload):
                continue
            sent += conn.send_event(event, payload, version, payload_json=payload_json, counted=False)
            if frame is not None and isinstance(run_id, str):
                for stream in conn.streams_on(run_id):
                    stream.deliver(frame)
        if sent and self._on_sent is not None:
            self._on_sent(event, sent)
        return version
