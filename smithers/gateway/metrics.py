"""Prometheus metrics of one gateway (docs/protocol.md#metrics), on a private registry per :class:`Gateway`.

prometheus_client needs a fixed label set per metric, so a label that does not apply to one
observation is exported as the empty string (Prometheus treats that as an absent label).
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from smithers.gateway.tallies import Spread, Tally

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_MS_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
_BYTE_BUCKETS: Final = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_COUNT_BUCKETS: Final = (0, 1, 2, 5, 10, 25, 50, 100, 250, 1000)


class GatewayMetrics:
    """Every metric of docs/protocol.md#metrics as an attribute; transports and handlers record through the helpers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "smithers_gateway_"
        # The per-request series are Tally/Spread families (lock-free; see tallies.py).
        self.rpc_calls = Tally(p + "rpc_calls", "RPC calls", ["transport", "method"], r)
        self.rpc_duration = Spread(p + "rpc_duration_ms", "RPC duration (ms)", ["transport", "method"], _MS_BUCKETS, r)
        self.errors = Counter(
            p + "errors", "Gateway errors", ["kind", "transport", "method", "code", "workflow"], registry=r
        )
        self.messages_received = Tally(
            p + "messages_received", "Inbound messages", ["transport", "frameType", "workflow"], r
        )
        self.messages_sent = Tally(
            p + "messages_sent",
            "Outbound messages",
            ["transport", "frameType", "outcome", "event", "route", "workflow"],
            r,
        )
        self.auth_events = Counter(p + "auth_events", "Authentications", ["transport", "mode", "outcome"], registry=r)
        self.connections = Counter(p + "connections", "WebSocket connections opened", ["transport"], registry=r)
        self.connections_active = Gauge(
            p + "connections_active", "Open WebSocket connections", ["transport"], registry=r
        )
        self.connections_closed = Counter(
            p + "connections_closed", "WebSocket connections closed", ["transport", "reason"], registry=r
        )
        self.heartbeat_ticks = Counter(p + "heartbeat_ticks", "tick events sent", registry=r)
        self.slow_consumer_closes = Counter(
            p + "ws_slow_consumer_closes", "WebSocket clients closed for leaving too much unread", registry=r
        )
        self.runs_started = Counter(p + "runs_started", "Runs started", ["workflow", "source", "resume"], registry=r)
        self.runs_completed = Counter(p + "runs_completed", "Runs completed", ["workflow", "status"], registry=r)
        self.approval_decisions = Counter(p + "approval_decisions", "Approval decisions", ["outcome"], registry=r)
        self.signals = Counter(p + "signals", "Signals delivered", ["outcome"], registry=r)
        self.cron_triggers = Counter(p + "cron_triggers", "Cron triggers", ["source"], registry=r)
        self.webhooks_received = Counter(p + "webhooks_received", "Webhooks received", ["workflow"], registry=r)
        self.webhooks_verified = Counter(p + "webhooks_verified", "Webhooks verified", ["workflow"], registry=r)
        self.webhooks_rejected = Counter(
            p + "webhooks_rejected", "Webhooks rejected", ["workflow", "reason"], registry=r
        )
        d = "smithers_devtools_"
        self.devtools_subscribe = Counter(d + "subscribe", "DevTools subscriptions", ["result"], registry=r)
        self.devtools_active = Gauge(d + "active_subscribers", "DevTools subscribers", ["runId"], registry=r)
        self.devtools_events = Counter(d + "event", "DevTools events", ["kind"], registry=r)
        self.devtools_event_bytes = Histogram(
            d + "event_bytes", "DevTools event size", buckets=_BYTE_BUCKETS, registry=r
        )
        self.devtools_snapshot_ms = Histogram(
            d + "snapshot_build_ms", "Snapshot build", buckets=_MS_BUCKETS, registry=r
        )
        self.devtools_delta_ms = Histogram(d + "delta_build_ms", "Delta build", buckets=_MS_BUCKETS, registry=r)
        self.devtools_backpressure = Counter(d + "backpressure_disconnect", "Backpressure disconnects", registry=r)
        n = "smithers_node_"
        self.node_output_requests = Counter(n + "output_request", "Node output requests", ["status"], registry=r)
        self.node_output_bytes = Histogram(n + "output_bytes", "Node output size", buckets=_BYTE_BUCKETS, registry=r)
        self.node_output_ms = Histogram(n + "output_duration_ms", "Node output time", buckets=_MS_BUCKETS, registry=r)
        self.node_output_schema_errors = Counter(
            n + "output_schema_conversion_error", "Schema conversion errors", registry=r
        )
        self.node_diff_requests = Counter(n + "diff_request", "Node diff requests", ["result"], registry=r)
        self.node_diff_ms = Histogram(n + "diff_compute_ms", "Node diff time", buckets=_MS_BUCKETS, registry=r)
        self.node_diff_bytes = Histogram(n + "diff_bytes", "Node diff size", buckets=_BYTE_BUCKETS, registry=r)
        self.node_diff_cache = Counter(n + "diff_cache", "Node diff cache", ["result"], registry=r)
        self.node_diff_cache_rows = Gauge(n + "diff_cache_rows", "Node diff cache rows", registry=r)
        w = "smithers_rewind_"
        self.rewinds = Counter(w[:-1], "Rewinds", ["result"], registry=r)
        self.rewind_rollbacks = Counter(w + "rollback", "Rewind rollbacks", registry=r)
        self.rewind_ms = Histogram(w + "duration_ms", "Rewind time", buckets=_MS_BUCKETS, registry=r)
        self.rewind_frames_deleted = Histogram(
            w + "frames_deleted", "Frames deleted", buckets=_COUNT_BUCKETS, registry=r
        )
        self.rewind_sandboxes_reverted = Histogram(
            w + "sandboxes_reverted", "Sandboxes reverted", buckets=_COUNT_BUCKETS, registry=r
        )
        self.connections_active.labels(transport="ws").set(0)
        self._event_children: dict[str, Any] = {}
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._received_children: dict[str, Any] = {}

    # -- helpers used by the transports --------------------------------------------------------
    # ``labels()`` costs a few microseconds; the children of the hot series are kept per label set.
    def rpc(self, transport: str, method: str, duration_ms: float, code: str | None) -> None:
        """One RPC call; ``code`` is the error code, or None when it succeeded."""
        key = (transport, method)
        children = self._rpc_children.get(key)
        if children is None:
            children = self._rpc_children[key] = (
                self.rpc_calls.labels(transport, method),
                self.rpc_duration.labels(transport, method),
                self.messages_sent.labels(transport, "response", "ok", "", "", ""),
            )
        calls, duration, sent_ok = children
        calls.inc()
        duration.observe(duration_ms)
        if code is None:
            sent_ok.inc()
        else:
            self.messages_sent.labels(transport, "response", "error", "", "", "").inc()
            self.errors.labels("rpc", transport, method, code, "").inc()

    def received(self, transport: str) -> None:
        """One inbound request frame."""
        child = self._received_children.get(transport)
        if child is None:
            child = self._received_children[transport] = self.messages_received.labels(transport, "request", "")
        child.inc()

    def error(self, kind: str, *, transport: str = "", method: str = "", code: str = "", workflow: str = "") -> None:
        self.errors.labels(kind, transport, method, code, workflow).inc()

    def auth(self, transport: str, mode: str, ok: bool) -> None:
        self.auth_events.labels(transport, mode, "success" if ok else "failure").inc()
        if not ok:
            self.errors.labels("auth", transport, "", "UNAUTHORIZED", "").inc()

    def event_sent(self, event: str, count: int = 1) -> None:
        child = self._event_children.get(event)
        if child is None:  # labels() is slow enough to matter when one event fans out to many sockets
            child = self._event_children[event] = self.messages_sent.labels("ws", "event", "ok", event, "", "")
        child.inc(count)

    def connection_opened(self, active: int) -> None:
        self.connections.labels("ws").inc()
        self.connections_active.labels("ws").set(active)

    def connection_closed(self, active: int, reason: str) -> None:
        self.connections_closed.labels("ws", reason).inc()
        self.connections_active.labels("ws").set(active)

    def render(self) -> bytes:
        """The text exposition of this gateway's registry."""
        return generate_latest(self.registry)
