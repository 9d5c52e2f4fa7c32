"""The :class:`Gateway`: registered workflows, the runs it executes, and the HTTP + WebSocket server.

One Store (one database) per gateway. The gateway composes the parts: the run supervisor, the
broadcaster and run windows, the dispatcher with every RPC module's handlers, the cron scheduler,
the wait sweeper and the transports. It is the one concrete implementation of the interface the
handlers and transports use (:class:`~smithers.gateway.host.GatewayHost`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import replace
from typing import Any

from smithers.engine.timetravel import HOLD_STALE_MS, Rewinder, recover_rewinds
from smithers.engine.workflow import Workflow
from smithers.gateway import approvals, cron, devstreams, devtools, history, runs, signals, streams
from smithers.gateway.allocator import return_large_buffers
from smithers.gateway.auth import MODE_TOKEN, Authenticator
from smithers.gateway.broadcast import Broadcaster
from smithers.gateway.context import ClientConnection
from smithers.gateway.devstreams import DevToolsHub
from smithers.gateway.dispatch import Dispatcher
from smithers.gateway.host import OpenConnection
from smithers.gateway.http import UvicornServer, bind_socket
from smithers.gateway.metrics import GatewayMetrics
from smithers.gateway.options import GatewayOptions, Registration, resolve_gateway_ui, resolve_ui
from smithers.gateway.protocol import DEFAULT_PORT
from smithers.gateway.scheduler import CronScheduler, register_schedules
from smithers.gateway.supervisor import RunSupervisor
from smithers.gateway.sweeper import WaitSweeper
from smithers.gateway.takeover import Takeover
from smithers.gateway.tokens import stored_token_lookup
from smithers.gateway.windows import RunWindows
from smithers.store.store import Store

log = logging.getLogger("smithers.gateway")

RPC_MODULES = (runs, streams, approvals, signals, cron, history, devtools, devstreams)


class Gateway:
    """Smithers gateway v1 over HTTP and WebSocket (docs/protocol.md).

    ``Gateway(db="smithers.db", auth={"mode": "token", "tokens": {...}}, heartbeat_ms=15000, ...)``;
    every option of :class:`GatewayOptions` is a keyword (snake_case), or use
    :meth:`from_options` with the JavaScript names (``heartbeatMs``, ``maxBodyBytes``, ...).
    """

    def __init__(self, db: str | Store | None = None, **options: Any):
        self.options = GatewayOptions.build(**options)
        self.store = db if isinstance(db, Store) else Store(db)
        self._owns_store = not isinstance(db, Store)
        self.metrics = GatewayMetrics()
        self.workflows: dict[str, Registration] = {}
        self.ui = resolve_gateway_ui(self.options.ui)
        self.connections: set[OpenConnection] = set()
        self.windows = RunWindows(self.options.event_window_size)
        self.rewinder = Rewinder(self.store, on_rollback=self.metrics.rewind_rollbacks.inc)
        self.devtools = DevToolsHub(self.store, self.metrics)
        self.broadcaster = Broadcaster(self.connections, self.windows, self.metrics.event_sent)
        self.supervisor = RunSupervisor(self.store, self.workflows, self.options, self.metrics, self.broadcast)
        auth = self.options.auth
        self.authenticator = Authenticator(auth, lookup_stored_token=stored_token_lookup(self.store))
        self._configured_tokens = auth.get("tokens") if isinstance(auth, Mapping) else None
        self.dispatcher = Dispatcher()
        for module in RPC_MODULES:
            self.dispatcher.add(module.HANDLERS)
        self.cron = CronScheduler(self)
        self.supervisor.remote_listeners.append(self.cron.on_remote_event)
        self.sweeper = WaitSweeper(self)
        self.takeover = Takeover(self)
        self.host: str | None = None
        self.port: int | None = None
        self._created = time.monotonic()
        self._started = False
        self._server: UvicornServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._rewind_check: asyncio.TimerHandle | None = None

    @classmethod
    def from_options(cls, db: str | Store | None = None, options: Mapping[str, Any] | None = None) -> Gateway:
        """A gateway from JavaScript-style options (``{"heartbeatMs": 1000, "auth": {...}}``)."""
        return cls(db, **GatewayOptions.from_js(options or {}))

    @classmethod
    def for_workflows(
        cls, workflows: Iterable[Workflow] | Mapping[str, Workflow], db: str | Store | None = None, **options: Any
    ) -> Gateway:
        """A gateway with every given workflow registered under its key (or the mapping's key)."""
        gateway = cls(db, **options)
        items = workflows.items() if isinstance(workflows, Mapping) else ((w.key, w) for w in workflows)
        for key, wf in items:
            gateway.register(key, wf)
        return gateway

    def register(
        self,
        key: str,
        workflow: Workflow,
        schedule: str | None = None,
        webhook: Mapping[str, Any] | None = None,
        ui: Mapping[str, Any] | None = None,
        *,
        timezone: str | None = None,
    ) -> None:
        """Register (or replace) ``workflow`` under ``key``.

        ``schedule`` is a cron pattern fired in ``timezone`` (an IANA name; default: the server's
        local time zone); ``webhook`` configures ``POST /webhooks/<key>`` (docs/protocol.md#webhooks).
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(f"register({key!r}, ...) needs a Workflow, got {type(workflow).__name__}")
        mount = resolve_ui(ui, Registration.default_ui_path(key))
        self.workflows[key] = Registration(key, workflow, schedule, timezone, webhook, mount)

    def mount_console(self) -> None:
        """Serve the built-in console at ``/console``, as ``ui=True`` does (``smithers serve --console``).

        It takes the place of the gateway's own UI, which is the one gateway-level mount.
        """
        if self.ui is not None and self.ui.files is None:
            log.warning("the built-in console replaces the gateway's own UI at %s", self.ui.path)
        self.options = replace(self.options, ui=True)
        self.ui = resolve_gateway_ui(True)

    @property
    def console_url(self) -> str | None:
        """Where the built-in console is served (None without it or before :meth:`listen`)."""
        if self.ui is None or self.ui.files is None or self.port is None:
            return None
        return self.url + self.ui.path

    # -- the interface handlers and transports use (GatewayHost) -------------------------------
    @property
    def state_version(self) -> int:
        return self.broadcaster.state_version

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._created) * 1000)

    def is_stored_token(self, token: str | None) -> bool:
        if token is None or self.authenticator.mode != MODE_TOKEN:
            return False
        return not (isinstance(self._configured_tokens, Mapping) and token in self._configured_tokens)

    def resolve_run(self, run_id: str) -> str | None:
        return self.supervisor.resolve_run(run_id)

    def is_executing(self, run_id: str) -> bool:
        return self.supervisor.is_executing(run_id)

    def executing_key(self, run_id: str) -> str | None:
        return self.supervisor.executing_key(run_id)

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
        return await self.supervisor.start_run(
            key, input, auth=auth, run_id=run_id, subscriber=subscriber, config=config
        )

    def has_wake(self, run_id: str) -> bool:
        return self.supervisor.has_wake(run_id)

    def wake_at(self, run_id: str, wake_at_ms: int) -> bool:
        return self.supervisor.wake_at(run_id, wake_at_ms)

    async def resume_if_needed(
        self, run_id: str, auth: dict[str, Any] | None, subscriber: ClientConnection | None = None
    ) -> bool:
        return await self.supervisor.resume_if_needed(run_id, auth, subscriber)

    def abort_run(self, run_id: str) -> bool:
        return self.supervisor.abort_run(run_id)

    def pause_run(self, run_id: str) -> bool:
        return self.supervisor.pause_run(run_id)

    def unpause_run(self, run_id: str) -> None:
        self.supervisor.unpause_run(run_id)

    def broadcast(self, event: str, payload: dict[str, Any]) -> int:
        return self.broadcaster.broadcast(event, payload)

    def schedules_changed(self) -> None:
        self.cron.wake()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.supervisor.spawn(coro)

    # -- serving -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running loop, follow the store's events, recover runs. Idempotent."""
        if self._started:
            return
        self._started = True
        self.supervisor.attach()
        self._recover_rewinds()
        try:
            self.supervisor.recover()
        except Exception:
            log.exception("resuming interrupted runs failed")

    def _recover_rewinds(self) -> None:
        """A rewind cut short by a crash leaves its run needing attention, not half rewound. One that
        began lately may be alive in another process: it is looked at again once it would be stale."""
        self._rewind_check = None
        if self._stopped:
            return
        try:
            _, young = recover_rewinds(self.store)
        except Exception:
            log.exception("recovering interrupted rewinds failed")
            return
        if young:
            loop = asyncio.get_running_loop()
            self._rewind_check = loop.call_later(HOLD_STALE_MS / 1000, self._recover_rewinds)

    async def listen(self, host: str | None = None, port: int = DEFAULT_PORT, *, reuse_port: bool = False) -> None:
        """Start HTTP + WebSocket on ``host:port`` (all interfaces by default) and return once bound."""
        if self._server is not None:
            return
        return_large_buffers()  # what clients left unread goes back to the system once freed
        await self.start()
        register_schedules(self)  # an invalid schedule makes listen() fail
        self.cron.start()
        self.sweeper.start()
        self.takeover.start()
        bind_host = host or "0.0.0.0"
        sock = bind_socket(bind_host, port, reuse_port)
        self.host, self.port = bind_host, sock.getsockname()[1]
        self._server = UvicornServer(self)
        self._serve_task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("the gateway server stopped while starting")
            await asyncio.sleep(0.005)
        log.info("smithers gateway listening on %s", self.url)

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening server (loopback shown for all interfaces)."""
        host = "127.0.0.1" if self.host in (None, "0.0.0.0") else ("[::1]" if self.host == "::" else self.host)
        return f"http://{host}:{self.port}"

    async def serve(self, host: str | None = None, port: int = DEFAULT_PORT, *, reuse_port: bool = False) -> None:
        """Listen and serve until stopped (a signal or :meth:`close`); prints the URL."""
        await self.listen(host, port, reuse_port=reuse_port)
        print(
            f"smithers gateway listening on {self.url} (WebSocket {self.url.replace('http', 'ws', 1)}/)",
            file=sys.stderr,
            flush=True,
        )
        if self.console_url is not None:
            print(f"smithers console: open {self.console_url}", file=sys.stderr, flush=True)
        assert self._serve_task is not None
        try:
            await asyncio.shield(self._serve_task)
        finally:
            await self.close()

    async def stop_runs_and_sockets(self, abort_runs: bool = True) -> None:
        """Abort (or just stop executing) active runs, wait for them, close every socket."""
        if self._stopped:
            return
        self._stopped = True
        if self._rewind_check is not None:
            self._rewind_check.cancel()
        await self.cron.stop()
        await self.sweeper.stop()
        await self.takeover.stop()
        await self.devtools.close()
        await self.supervisor.stop(abort_runs)
        closing = []
        for conn in list(self.connections):
            conn.close()
            closing.append(conn.close_socket(None))
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    async def close(self, abort_runs: bool = True) -> None:
        """Stop everything: runs (aborted unless ``abort_runs=False``), sockets, the server."""
        await self.stop_runs_and_sockets(abort_runs)
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            if not self._serve_task.done():
                await asyncio.wait([self._serve_task], timeout=5)
        self._server = None
        if self._owns_store:
            self.store.close()
