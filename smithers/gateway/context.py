"""What RPC handlers may use of the running gateway: a small typed interface.

Handlers (``runs``, ``approvals``, ``signals``, ``cron``, ``history``, ``streams``), the webhook
route, the wait sweeper and the cron scheduler depend on :class:`GatewayContext`, never on the
concrete server class, so they can be read, tested and added to without the transports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from smithers.engine.timetravel import Rewinder
    from smithers.gateway.metrics import GatewayMetrics
    from smithers.gateway.options import GatewayOptions, Registration
    from smithers.gateway.windows import RunWindows
    from smithers.store.store import Store


class RunStream(Protocol):
    """One subscription to a run's events living on a connection (``streamRunEvents``)."""

    @property
    def stream_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    def deliver(self, frame: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


class ClientConnection(Protocol):
    """The WebSocket a call came in on: it follows the runs it starts and hosts run streams."""

    @property
    def is_open(self) -> bool: ...

    def auto_subscribe(self, run_id: str) -> None: ...

    def add_stream(self, stream: RunStream) -> None: ...

    def send_event(self, event: str, payload: Any, *, payload_json: str | None = None) -> bool:
        """Queue an event frame; ``payload_json`` is the payload already encoded (then ``payload`` is unused)."""
        ...

    def follows(self, run_id: str) -> bool:
        """Whether the subscription filter lets this run's events through (no filter: every run)."""
        ...

    def queued_frames(self) -> int:
        """Frames queued for this client and not yet written to its socket."""
        ...


class DevToolsStreams(Protocol):
    """The DevTools streams of the gateway (``streamDevTools``)."""

    def latest(self, run_id: str) -> int:
        """The run's latest frame number (0 without frames)."""
        ...

    def open(self, conn: ClientConnection, run_id: str) -> RunStream:
        """A new stream of ``run_id`` for ``conn`` (not started)."""
        ...

    def add(self, stream: Any, seq: int | None) -> None:
        """Start a stream: its first snapshot, catching up from ``seq``, then one event per frame."""
        ...

    def rebaseline(self, run_id: str) -> None:
        """The run was rewound: its streams send a full snapshot next."""
        ...


class GatewayContext(Protocol):
    """The running gateway as handlers see it."""

    @property
    def store(self) -> Store: ...

    @property
    def options(self) -> GatewayOptions: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def workflows(self) -> Mapping[str, Registration]: ...

    @property
    def windows(self) -> RunWindows: ...

    @property
    def rewinder(self) -> Rewinder:
        """Rewinds of this gateway's runs (one at a time per run)."""
        ...

    @property
    def devtools(self) -> DevToolsStreams:
        """The DevTools streams and their frame pollers."""
        ...

    @property
    def state_version(self) -> int:
        """The global ``stateVersion``: bumped by every broadcast."""
        ...

    def uptime_ms(self) -> int: ...

    def resolve_run(self, run_id: str) -> str | None:
        """The workflow key of a run executing here or stored in the database, else None."""
        ...

    async def start_run(
        self,
        key: str,
        input: dict[str, Any],
        *,
        auth: dict[str, Any] | None,
        run_id: str | None = None,
        subscriber: ClientConnection | None = None,
        config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a run of workflow ``key``; returns ``{runId, workflow}`` once its row is committed.
        ``config`` adds keys to the run's ``config_json``."""
        ...

    async def resume_if_needed(
        self, run_id: str, auth: dict[str, Any] | None, subscriber: ClientConnection | None = None
    ) -> bool:
        """Resume a stored run unless it is executing, terminal or owned by a live process."""
        ...

    def is_executing(self, run_id: str) -> bool:
        """Whether this gateway is executing the run right now."""
        ...

    def has_wake(self, run_id: str) -> bool:
        """Whether this gateway will resume the run at a due time it knows."""
        ...

    def wake_at(self, run_id: str, wake_at_ms: int) -> bool:
        """Resume the run at ``wake_at_ms`` unless a wake of it is already set here; False then."""
        ...

    def executing_key(self, run_id: str) -> str | None:
        """The workflow key of a run this gateway is executing (no database read), else None."""
        ...

    def abort_run(self, run_id: str) -> bool:
        """Trigger the abort signal of a run executing here; False when it is not."""
        ...

    def pause_run(self, run_id: str) -> bool:
        """Stop a run executing here without ending it (it stays resumable); False when it is not."""
        ...

    def unpause_run(self, run_id: str) -> None:
        """Withdraw a pause the run executing here has not reached yet."""
        ...

    def schedules_changed(self) -> None:
        """Crons were added, removed or made due: the scheduler looks at them now."""
        ...

    def broadcast(self, event: str, payload: dict[str, Any]) -> int:
        """Send an event to every connection whose filter passes; returns its stateVersion."""
        ...
