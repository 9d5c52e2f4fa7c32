"""The :class:`Gateway`: registered workflows, runs executed in this process, and the server.

One Store (one database) per gateway. Runs started through the gateway execute in its event loop
(``run_async`` with ``wait_timers=False``); the gateway wakes runs whose timers come due, and on
start resumes runs of its workflows that were left ``running`` by an owner that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smithers.api import run_async
from smithers.engine import events as ev
from smithers.engine.ownership import owner_gone
from smithers.engine.states import CANCELLED, FAILED, FINISHED, RUNNING, TERMINAL_RUN_STATUSES, WAITING_TIMER
from smithers.engine.workflow import Workflow
from smithers.errors import SmithersError
from smithers.gateway import approvals, cron, history, runs, signals, streams, webhooks
from smithers.gateway.auth import MODE_TOKEN, Authenticator, Principal
from smithers.gateway.broadcast import RUN_COMPLETED, Broadcaster, map_event
from smithers.gateway.dispatch import Dispatcher, Handler
from smithers.gateway.http import GatewayApp, UiHandler, UvicornServer, WebhookHandler, bind_socket
from smithers.gateway.metrics import GatewayMetrics
from smithers.gateway.options import GatewayOptions, Registration, resolve_ui
from smithers.gateway.sweeper import WaitSweeper
from smithers.gateway.tokens import stored_token_lookup
from smithers.gateway.ws import Connection
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import now_ms
from smithers.store.store import Store

log = logging.getLogger("smithers.gateway")

RESUME_ATTEMPTS = 20
RESUME_RETRY_S = 0.025
RUN_SETTLE_TIMEOUT_S = 10.0


@dataclass
class ActiveRun:
    """A run executing in this process: its abort handle and whether run.completed went out."""

    key: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    completed: bool = False


class Gateway:
    """Smithers gateway v1 over HTTP and WebSocket (see ``spec/gateway-protocol.md``).

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
        self.ui = resolve_ui(self.options.ui, "/")
        self.registry: dict[str, str] = {}
        self.active: dict[str, ActiveRun] = {}
        self.connections: set[Connection] = set()
        self.windows = streams.RunWindows(self.options.event_window_size)
        self.broadcaster = Broadcaster(self.connections, self.windows, self.metrics.event_sent)
        auth = self.options.auth
        self.authenticator = Authenticator(auth, lookup_stored_token=stored_token_lookup(self.store))
        self._configured_tokens = auth.get("tokens") if isinstance(auth, Mapping) else None
        self.dispatcher = Dispatcher()
        for table in (
            runs.HANDLERS,
            streams.HANDLERS,
            approvals.HANDLERS,
            signals.HANDLERS,
            cron.HANDLERS,
            history.HANDLERS,
        ):
            self.dispatcher.add(table)
        self.webhook_handler: WebhookHandler | None = None
        webhooks.install(self)
        self.cron = cron.CronScheduler(self)
        self.sweeper = WaitSweeper(self, cron.poll_interval_s(self.options.heartbeat_ms))
        self.ui_handler: UiHandler | None = None
        self.app = GatewayApp(self)
        self.host: str | None = None
        self.port: int | None = None
        self._created = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._unsubscribe: Any = None
        self._wakes: dict[str, asyncio.TimerHandle] = {}
        self._server: UvicornServer | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._stopped = False
        self._background: set[asyncio.Task[Any]] = set()

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

    # -- registration --------------------------------------------------------------------------
    def register(
        self,
        key: str,
        workflow: Workflow,
        schedule: str | None = None,
        webhook: Mapping[str, Any] | None = None,
        ui: Mapping[str, Any] | None = None,
    ) -> None:
        """Register (or replace) ``workflow`` under ``key``; schedule, webhook and ui are kept for their modules."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"register({key!r}, ...) needs a Workflow, got {type(workflow).__name__}")
        mount = resolve_ui(ui, Registration.default_ui_path(key))
        self.workflows[key] = Registration(key, workflow, schedule, webhook, mount)

    def add_methods(self, table: Mapping[str, Handler]) -> None:
        """Add RPC handlers (legacy and stable names) to the dispatch table."""
        self.dispatcher.add(table)

    # -- state used by handlers ----------------------------------------------------------------
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._created) * 1000)

    def is_stored_token(self, token: str | None) -> bool:
        """Whether ``token`` would be found in the tokens table rather than the configuration."""
        if token is None or self.authenticator.mode != MODE_TOKEN:
            return False
        return not (isinstance(self._configured_tokens, Mapping) and token in self._configured_tokens)

    def resolve_run(self, run_id: str) -> str | None:
        """The workflow key of a run started here or stored in the database (§10.4), else None."""
        key = self.registry.get(run_id)
        if key is not None:
            return key
        row = self.store.get_run(run_id)
        return None if row is None else runs.stored_workflow_key(row)

    def run_record(self, run_id: str) -> dict[str, Any] | None:
        return runs.run_record(self, run_id)

    def pending_approvals(self) -> list[dict[str, Any]]:
        return runs.pending_approvals(self)

    def broadcast(self, event: str, payload: dict[str, Any]) -> int:
        """Broadcast an event to the connections (§9.2); returns its stateVersion."""
        return self.broadcaster.broadcast(event, payload)

    def hello(self, principal: Principal, session_token: str) -> dict[str, Any]:
        """The payload of a successful ``connect`` (§2.4)."""
        return runs.hello_payload(self, principal, session_token)

    # -- run lifecycle (§10) -------------------------------------------------------------------
    def start_run(
        self,
        key: str,
        input: dict[str, Any],
        *,
        auth: dict[str, Any] | None,
        run_id: str | None = None,
        resume: bool = False,
        subscribe: Connection | None = None,
    ) -> dict[str, Any]:
        """Start (or resume) a run in this process and return ``{runId, workflow}`` at once (§10.1)."""
        reg = self.workflows.get(key)
        if reg is None:
            raise RuntimeError(f"Unknown workflow: {key}")
        run_id = run_id or str(uuid.uuid4())
        if run_id in self.active:
            raise RuntimeError(f"Run {run_id} is already executing")
        entry = ActiveRun(key)
        self.registry[run_id] = key
        self.active[run_id] = entry
        if subscribe is not None:
            subscribe.auto_subscribe(run_id)
        triggered_by = str((auth or {}).get("triggeredBy") or "gateway")
        self.metrics.runs_started.labels(key, runs.trigger_source(triggered_by), str(resume).lower()).inc()
        config = {"gatewayWorkflowKey": key, "gatewayTriggeredBy": triggered_by}
        entry.task = asyncio.get_running_loop().create_task(
            self._execute(run_id, reg.workflow, input, auth, resume, config, entry), name=f"smithers-run:{run_id}"
        )
        return {"runId": run_id, "workflow": key}

    async def _execute(
        self,
        run_id: str,
        workflow: Workflow,
        input: dict[str, Any],
        auth: dict[str, Any] | None,
        resume: bool,
        config: dict[str, Any],
        entry: ActiveRun,
    ) -> None:
        try:
            result = await run_async(
                workflow,
                input,
                db=self.store,
                run_id=run_id,
                resume=resume,
                auth=auth,
                config=config,
                cancel=entry.cancel,
                max_concurrency=self.options.max_concurrency,
                wait_timers=False,
            )
        except Exception as exc:
            log.warning("run %s ended with an error: %s", run_id, exc, exc_info=not isinstance(exc, SmithersError))
            self._settled(run_id, entry, FAILED, runs.serialize_error(exc))
        else:
            if result.status in (FINISHED, FAILED, CANCELLED):
                self._settled(run_id, entry, result.status, result.error)
            elif result.wake_at_ms is not None:
                self._schedule_wake(run_id, result.wake_at_ms)
        finally:
            if self.active.get(run_id) is entry:
                del self.active[run_id]
            if self.registry.get(run_id) == entry.key and run_id not in self.active:
                del self.registry[run_id]  # the stored row answers for it from now on

    def _settled(self, run_id: str, entry: ActiveRun, status: str, error: Any) -> None:
        self.metrics.runs_completed.labels(entry.key, status).inc()
        if status == FAILED:
            self.metrics.error("run", workflow=entry.key)
        if entry.completed:  # the engine's terminal event already went out (§23 D4)
            return
        entry.completed = True
        payload: dict[str, Any] = {"runId": run_id, "status": status}
        if error is not None:
            payload["error"] = error
        self.broadcast(RUN_COMPLETED, payload)

    def _on_engine_event(self, event: StoredEvent) -> None:
        """Store bus subscriber: map events of runs executed here to broadcasts (§9.1)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._on_engine_event, event)
            return
        entry = self.active.get(event.run_id)
        if entry is None and event.type != ev.TIME_TRAVEL_JUMPED:
            return
        if event.type in (ev.APPROVAL_GRANTED, ev.APPROVAL_DENIED):
            return  # the approvals module broadcasts approval.decided itself, with decidedBy (§23 D5)
        mapped = map_event(event)
        if mapped is None:
            return
        name, payload = mapped
        if name == RUN_COMPLETED and entry is not None:
            if entry.completed:
                return
            entry.completed = True
        self.broadcast(name, payload)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def abort_run(self, run_id: str) -> bool:
        """Trigger the abort signal of a run executing here; False when it is not active."""
        entry = self.active.get(run_id)
        if entry is None:
            return False
        entry.cancel.set()
        return True

    async def resume_if_needed(
        self, run_id: str, auth: dict[str, Any] | None, subscribe: Connection | None = None
    ) -> bool:
        """Resume a stored run unless it is executing, terminal or owned by a live process (§10.3)."""
        for _ in range(RESUME_ATTEMPTS):
            if run_id in self.active:
                await asyncio.sleep(RESUME_RETRY_S)
                continue
            row = self.store.get_run(run_id)
            if row is None or row["status"] in TERMINAL_RUN_STATUSES:
                return False
            if row["status"] == RUNNING and not owner_gone(row["runtime_owner_id"], row["heartbeat_at_ms"], now_ms()):
                return False  # another process is executing it
            key = self.registry.get(run_id) or runs.stored_workflow_key(row)
            self.start_run(key, {}, auth=auth, run_id=run_id, resume=True, subscribe=subscribe)
            return True
        return False

    def _schedule_wake(self, run_id: str, wake_at_ms: int) -> None:
        loop = asyncio.get_running_loop()
        old = self._wakes.pop(run_id, None)
        if old is not None:
            old.cancel()

        def wake() -> None:
            self._wakes.pop(run_id, None)
            if not self._stopped:
                self.spawn(self.resume_if_needed(run_id, None))

        self._wakes[run_id] = loop.call_later(max(0.0, (wake_at_ms - now_ms()) / 1000), wake)

    def _recover(self) -> None:
        """Resume runs of registered workflows left running by a gone owner, or waiting for a timer."""
        with self.store.read() as tx:
            rows = tx.list_runs_by_status([RUNNING, WAITING_TIMER])
        now = now_ms()
        for row in rows:
            key = runs.stored_workflow_key(row)
            if key not in self.workflows or row["run_id"] in self.active:
                continue
            if row["status"] == RUNNING and not owner_gone(row["runtime_owner_id"], row["heartbeat_at_ms"], now):
                continue
            log.info("resuming run %s of %s", row["run_id"], key)
            self.start_run(key, {}, auth=None, run_id=row["run_id"], resume=True)

    # -- serving -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running loop, follow the store's events, recover runs. Idempotent."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._unsubscribe = self.store.bus.subscribe(self._on_engine_event)
        try:
            self._recover()
        except Exception:
            log.exception("resuming interrupted runs failed")

    async def listen(self, host: str | None = None, port: int = 7331) -> None:
        """Start HTTP + WebSocket on ``host:port`` (all interfaces by default) and return once bound."""
        if self._server is not None:
            return
        await self.start()
        cron.register_schedules(self)  # an invalid schedule makes listen() fail (§16.1)
        self.cron.start()
        self.sweeper.start()
        bind_host = host or "0.0.0.0"
        sock = bind_socket(bind_host, port)
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

    async def serve(self, host: str | None = None, port: int = 7331) -> None:
        """Listen and serve until stopped (a signal or :meth:`close`); prints the URL."""
        await self.listen(host, port)
        print(
            f"smithers gateway listening on {self.url} (WebSocket {self.url.replace('http', 'ws', 1)}/)",
            file=sys.stderr,
            flush=True,
        )
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
        await self.cron.stop()
        await self.sweeper.stop()
        for handle in self._wakes.values():
            handle.cancel()
        self._wakes.clear()
        tasks = [entry.task for entry in self.active.values() if entry.task is not None]
        for entry in list(self.active.values()):
            if abort_runs:
                entry.cancel.set()
            elif entry.task is not None:
                entry.task.cancel()  # the row stays running; the next start resumes it
        if tasks:
            await asyncio.wait(tasks, timeout=RUN_SETTLE_TIMEOUT_S)
        closing = []
        for conn in list(self.connections):
            conn.close()
            closing.append(conn.close_socket(None))
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def close(self, abort_runs: bool = True) -> None:
        """Stop everything: runs (aborted unless ``abort_runs=False``), sockets, the server (§2.8)."""
        await self.stop_runs_and_sockets(abort_runs)
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            if not self._serve_task.done():
                await asyncio.wait([self._serve_task], timeout=5)
        self._server = None
        if self._owns_store:
            self.store.close()
