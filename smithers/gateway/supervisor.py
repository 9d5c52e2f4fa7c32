"""Runs executed by this gateway: starting, resuming, aborting, waking on timers, recovering after a
restart, and forwarding their engine events as broadcasts (docs/protocol.md#run-lifecycle).

Runs execute in the gateway's event loop (``run_async`` with ``wait_timers=False``); a run that
suspends on a timer is woken here when the timer is due.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from smithers.engine import events as ev
from smithers.engine.agent_run import CLI_AGENT_TOOLS_KEY
from smithers.engine.ownership import owner_gone
from smithers.engine.runner import RunLoop, prepare_run
from smithers.engine.states import CANCELLED, FAILED, FINISHED, RUNNING, TERMINAL_RUN_STATUSES, WAITING_TIMER
from smithers.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    RENDER_FAILED,
    GatewayError,
    GraphError,
    RunActiveError,
    RunExistsError,
    RunOwnershipError,
    ServerError,
    SmithersError,
)
from smithers.gateway.broadcast import map_event
from smithers.gateway.context import ClientConnection
from smithers.gateway.eventfeed import EventFeed
from smithers.gateway.launches import LaunchBatcher
from smithers.gateway.metrics import GatewayMetrics
from smithers.gateway.options import GatewayOptions, Registration
from smithers.gateway.shapes import RUN_COMPLETED, run_completed, serialize_error, stored_workflow_key, trigger_source
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import now_ms
from smithers.store.store import Store

log = logging.getLogger(__name__)

WAKING_EVENTS: Final = frozenset({ev.APPROVAL_GRANTED, ev.APPROVAL_DENIED, ev.SIGNAL_RECEIVED})
"""Engine events after which a waiting run may go on (the sweeper looks for the same ones)."""

RESUME_ATTEMPTS: Final = 20
RESUME_RETRY_S: Final = 0.025
RUN_SETTLE_TIMEOUT_S: Final = 10.0
COMPLETED_KEPT: Final = 10_000
"""Runs remembered as having had their ``run.completed`` (a late duplicate is dropped)."""

Broadcast = Callable[[str, dict[str, Any]], int]


@dataclass
class ActiveRun:
    """A run executing in this process: its abort handle and whether run.completed went out."""

    key: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    loop: RunLoop | None = None
    completed: bool = False


class RunSupervisor:
    """Starts, resumes, aborts and wakes the runs this gateway executes."""

    def __init__(
        self,
        store: Store,
        workflows: Mapping[str, Registration],
        options: GatewayOptions,
        metrics: GatewayMetrics,
        broadcast: Broadcast,
    ):
        self.store = store
        self.workflows = workflows
        self.options = options
        self.metrics = metrics
        self.broadcast = broadcast
        self.active: dict[str, ActiveRun] = {}
        self.launches = LaunchBatcher(store)
        self._registry: dict[str, str] = {}
        self._wakes: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stopped = False
        self.feed = EventFeed(store, self._on_engine_event)
        """Every run's engine events, this process's and others' (docs/protocol.md#several-gateways-on-one-database)."""
        self._completed: OrderedDict[str, None] = OrderedDict()
        """Runs whose ``run.completed`` went out lately (one per run, whoever ended it)."""
        self.remote_listeners: list[Callable[[StoredEvent], None]] = []
        """Called (on the loop) with each engine event another process committed."""

    # -- lookups -------------------------------------------------------------------------------
    def resolve_run(self, run_id: str) -> str | None:
        """The workflow key of a run started here or stored in the database, else None."""
        key = self._registry.get(run_id)
        if key is not None:
            return key
        row = self.store.get_run(run_id)
        return None if row is None else stored_workflow_key(row)

    def is_executing(self, run_id: str) -> bool:
        return run_id in self.active

    def executing_key(self, run_id: str) -> str | None:
        return self._registry.get(run_id)

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(self) -> None:
        """Bind to the running loop and follow the store's events. Idempotent."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.feed.start()

    def recover(self) -> None:
        """Resume runs of registered workflows left running by a gone owner, or waiting for a timer."""
        with self.store.read() as tx:
            rows = tx.list_runs_in([RUNNING, WAITING_TIMER], oldest_first=True)
        now = now_ms()
        for row in rows:
            key = stored_workflow_key(row)
            if key not in self.workflows or row["run_id"] in self.active:
                continue
            if row["status"] == RUNNING and not owner_gone(row["runtime_owner_id"], row["heartbeat_at_ms"], now):
                continue
            log.info("resuming run %s of %s", row["run_id"], key)
            self._resume(key, row["run_id"], None)

    async def stop(self, abort_runs: bool = True) -> None:
        """Abort (or just stop executing) active runs and wait for them; stop following events."""
        if self._stopped:
            return
        self._stopped = True
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
        await self.feed.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- runs ----------------------------------------------------------------------------------
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
        """Start a run in this process; return ``{runId, workflow}`` once its row is committed
        (``config``: keys added to the run's ``config_json``)."""
        reg = self.workflows.get(key)
        if reg is None:
            raise ServerError(f"Unknown workflow: {key}")
        run_id = run_id or str(uuid.uuid4())
        if run_id in self.active:
            raise RunActiveError(f"Run {run_id} is already active")
        entry = self._register(run_id, key)
        try:
            options = self._run_options(run_id, entry, auth)
            options["config"].update(config or {})
            loop = prepare_run(reg.workflow, input, **options)
        except SmithersError as exc:
            self._unregister(run_id, entry)
            raise _cannot_start(exc, key, run_id) from exc
        except BaseException:
            self._unregister(run_id, entry)
            raise

        def settled(error: BaseException | None) -> None:
            if error is not None:
                self._unregister(run_id, entry)
            else:
                self._begin(run_id, entry, loop, auth, resume=False, subscriber=subscriber)

        try:
            await self.launches.commit(loop, settled)
        except SmithersError as exc:
            raise _cannot_start(exc, key, run_id) from exc
        return {"runId": run_id, "workflow": key}

    def _resume(
        self, key: str, run_id: str, auth: dict[str, Any] | None, subscriber: ClientConnection | None = None
    ) -> bool:
        """Take a stored run over and execute it here; False when there was nothing to take."""
        reg = self.workflows.get(key)
        if reg is None or run_id in self.active:
            return False
        entry = self._register(run_id, key)
        try:
            loop = prepare_run(reg.workflow, None, resume=True, **self._run_options(run_id, entry, auth))
        except SmithersError as exc:  # another process got there first, or the run ended meanwhile
            log.info("run %s not resumed: %s", run_id, exc.message)
            self._unregister(run_id, entry)
            return False
        except BaseException:
            self._unregister(run_id, entry)
            raise
        if not loop.claimed:
            self._unregister(run_id, entry)
            return False
        self._begin(run_id, entry, loop, auth, resume=True, subscriber=subscriber)
        return True

    def _run_options(self, run_id: str, entry: ActiveRun, auth: dict[str, Any] | None) -> dict[str, Any]:
        triggered_by = str((auth or {}).get("triggeredBy") or "gateway")
        config: dict[str, Any] = {"gatewayWorkflowKey": entry.key, "gatewayTriggeredBy": triggered_by}
        tools = (self.options.defaults or {}).get("cliAgentTools")
        if tools is not None:  # GatewayOptions.defaults, forwarded as the run's default
            config[CLI_AGENT_TOOLS_KEY] = tools
        return {
            "store": self.store,
            "run_id": run_id,
            "auth": auth,
            "config": config,
            "cancel": entry.cancel,
            "max_concurrency": self.options.max_concurrency,
        }

    def _register(self, run_id: str, key: str) -> ActiveRun:
        entry = ActiveRun(key)
        self._registry[run_id] = key
        self.active[run_id] = entry
        return entry

    def _unregister(self, run_id: str, entry: ActiveRun) -> None:
        if self.active.get(run_id) is entry:
            del self.active[run_id]
        if self._registry.get(run_id) == entry.key and run_id not in self.active:
            del self._registry[run_id]  # the stored row answers for it from now on

    def _begin(
        self,
        run_id: str,
        entry: ActiveRun,
        loop: RunLoop,
        auth: dict[str, Any] | None,
        *,
        resume: bool,
        subscriber: ClientConnection | None,
    ) -> None:
        """Execute a prepared run in the background."""
        if subscriber is not None:
            subscriber.auto_subscribe(run_id)
        triggered_by = str((auth or {}).get("triggeredBy") or "gateway")
        self.metrics.runs_started.labels(entry.key, trigger_source(triggered_by), str(resume).lower()).inc()
        entry.loop = loop
        entry.task = asyncio.get_running_loop().create_task(
            self._execute(run_id, entry, loop), name=f"smithers-run:{run_id}"
        )

    async def _execute(self, run_id: str, entry: ActiveRun, loop: RunLoop) -> None:
        try:
            result = await loop.execute()
        except RunOwnershipError as exc:  # taken over by another gateway: it goes on there, not ended
            log.warning("run %s stopped here: %s", run_id, exc.message)
        except Exception as exc:
            log.warning("run %s ended with an error: %s", run_id, exc, exc_info=not isinstance(exc, SmithersError))
            self._settled(run_id, entry, FAILED, serialize_error(exc))
        else:
            if result.status in (FINISHED, FAILED, CANCELLED):
                self._settled(run_id, entry, result.status, result.error)
            elif result.wake_at_ms is not None:
                self._schedule_wake(run_id, result.wake_at_ms)
        finally:
            self._unregister(run_id, entry)

    def _settled(self, run_id: str, entry: ActiveRun, status: str, error: Any) -> None:
        self.metrics.runs_completed.labels(entry.key, status).inc()
        if status == FAILED:
            self.metrics.error("run", workflow=entry.key)
        if self._first_completion(run_id):  # unless the engine's terminal event went out already
            self.broadcast(RUN_COMPLETED, run_completed(run_id, status, error))

    def _on_engine_event(self, event: StoredEvent, remote: bool = False) -> None:
        """Feed subscriber (on the loop): map the events of every run, executed here or anywhere
        else, to broadcasts (ours: 0.18.0 maps only those of runs it executes, P67)."""
        if remote:
            if event.type in WAKING_EVENTS:  # (this process's own RPCs resume the run themselves)
                self._wake_for(event.run_id)
            for listener in self.remote_listeners:
                listener(event)
        mapped = map_event(event)
        if mapped is None:
            return
        name, payload = mapped
        if name == RUN_COMPLETED and not self._first_completion(event.run_id):
            return
        self.broadcast(name, payload)

    def _wake_for(self, run_id: str) -> None:
        """A decision or a signal was stored by another process (a gateway, a terminal): a run
        executing here takes a step now; a waiting one is resumed (by whichever gateway claims it)."""
        entry = self.active.get(run_id)
        if entry is not None:
            if entry.loop is not None:
                entry.loop.poke()
        elif not self._stopped:
            self.spawn(self.resume_if_needed(run_id, None))

    def _first_completion(self, run_id: str) -> bool:
        """Whether ``run.completed`` of this run has not gone out yet (and now counts as sent)."""
        entry = self.active.get(run_id)
        if entry is not None:
            if entry.completed:
                return False
            entry.completed = True
        if run_id in self._completed:
            return False
        self._completed[run_id] = None
        while len(self._completed) > COMPLETED_KEPT:
            self._completed.popitem(last=False)
        return True

    def abort_run(self, run_id: str) -> bool:
        """Trigger the abort signal of a run executing here; False when it is not active."""
        entry = self.active.get(run_id)
        if entry is None:
            return False
        entry.cancel.set()
        return True

    def pause_run(self, run_id: str) -> bool:
        """Ask a run executing here to stop without ending (it stays resumable); False when it is not active."""
        entry = self.active.get(run_id)
        if entry is None or entry.loop is None:
            return False
        entry.loop.request_pause()
        return True

    def unpause_run(self, run_id: str) -> None:
        """Withdraw a pause the run has not reached yet."""
        entry = self.active.get(run_id)
        if entry is not None and entry.loop is not None:
            entry.loop.pause_event.clear()

    async def resume_if_needed(
        self, run_id: str, auth: dict[str, Any] | None, subscriber: ClientConnection | None = None
    ) -> bool:
        """Resume a stored run unless it is executing, terminal or owned by a live process."""
        for _ in range(RESUME_ATTEMPTS):
            if run_id in self.active:
                await asyncio.sleep(RESUME_RETRY_S)
                continue
            row = self.store.get_run(run_id)
            if row is None or row["status"] in TERMINAL_RUN_STATUSES:
                return False
            if row["status"] == RUNNING and not owner_gone(row["runtime_owner_id"], row["heartbeat_at_ms"], now_ms()):
                return False  # another process is executing it
            key = self._registry.get(run_id) or stored_workflow_key(row)
            return self._resume(key, run_id, auth, subscriber)
        return False

    def has_wake(self, run_id: str) -> bool:
        return run_id in self._wakes

    def wake_at(self, run_id: str, wake_at_ms: int) -> bool:
        """Resume a run another process suspended at its due time, unless a wake is set here already."""
        if run_id in self._wakes or run_id in self.active or self._stopped:
            return False
        self._schedule_wake(run_id, wake_at_ms)
        return True

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


def _cannot_start(exc: SmithersError, key: str, run_id: str) -> SmithersError:
    """How a caller hears that a new run cannot start (docs/protocol.md#starting).

    A first frame that cannot render, or a tree the engine refuses (a duplicate id, …), usually
    comes from this input meeting the workflow's code: 400 ``INVALID_INPUT`` with the engine's code
    in the details, answered with the request id, not a server error. An id another launch took
    meanwhile reads as the check before the launch does. Anything else is the engine's own error.
    """
    if isinstance(exc, RunExistsError):
        return GatewayError(INVALID_REQUEST, f"Run already exists: {run_id}")
    if exc.code == RENDER_FAILED or isinstance(exc, GraphError):
        details = {**(exc.details or {}), "engineCode": exc.code}
        return GatewayError(INVALID_INPUT, f"Workflow {key} cannot start: {exc.message}", details)
    return exc
