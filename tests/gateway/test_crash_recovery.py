"""Crash recovery of a real gateway process: ``smithers serve`` SIGKILLed at random moments under load.

Concurrent clients (half over HTTP, half over WebSocket) launch runs of ``tests/fixtures/gw_crash.py``
(plain tasks, an approval, a signal wait, an async sleep), decide the approvals those runs ask for
and send the signals they wait for, while the gateway is killed with SIGKILL at random moments and
started again on the same database, a few times. Once the last gateway has had time to finish
everything, the database and the tasks' side-effect file must show:

* every run whose launch was acknowledged exists, and finished exactly once (status ``finished``,
  one ``RunFinished``, no other terminal event, each node finished once; nothing left running or
  waiting);
* no task recorded finished ran again: every side-effect line belongs to a stored attempt of its
  node, no attempt wrote twice, no attempt was started after the node's finished one, and no line
  is younger than the node's finish (an interrupted attempt may have written before it was retried);
* every acknowledged decision and signal took effect (its run finished with it).

A launch, decision or signal whose answer was lost in a crash is retried (a launch with the same
run id; "already exists" then shows the lost one was stored). Runs whose launch was never
acknowledged need not exist, but those that do must finish like the others.

:func:`run_scenario` is shared with ``bench/probe_crash.py``, which runs it at a larger scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Connection, text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import SMITHERS

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "gw_crash.py"
TOKEN = "crash-token"  # the fixture's operator token
EFFECTS_ENV = "GW_CRASH_EFFECTS"  # the fixture's side-effect file variable
SIGNAL_NAME = "go"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
WORKFLOW_MIX = ("plain", "approve", "signal", "sleepy")
TASK_NODES = {
    "plain": ("a", "b1", "b2", "c"),
    "approve": ("before", "after"),
    "signal": ("before", "after"),
    "sleepy": ("nap", "after"),
}
"""Nodes with a body (one side-effect line per attempt), per workflow."""
STEP_NODES = {"approve": ("ok",), "signal": ("w",)}
"""Nodes without a body: the approval and the wait."""
APPROVAL_NODE, WAIT_NODE = "ok", "w"
CALL_TIMEOUT_S = 20.0
START_TIMEOUT_S = 60.0
TERMINAL = frozenset({"finished", "failed", "cancelled", "continued"})
MAX_PROBLEMS_SHOWN = 40


@dataclass
class Scenario:
    """How hard to shake the gateway. The defaults are the test's; the probe raises them."""

    kills: int = 3
    launches: int = 100
    clients: int = 6  # half HTTP, half WebSocket
    uptime_s: tuple[float, float] = (0.5, 2.5)  # a gateway lives this long (after listening) before its SIGKILL
    downtime_s: tuple[float, float] = (0.0, 0.3)  # pause between the SIGKILL and the next start
    early_kills: float = 0.0  # this share of the SIGKILLs hit a gateway that is starting (recovering runs)
    decide_delay_s: tuple[float, float] = (0.0, 0.8)  # an approval is decided this long after it is seen
    signal_delay_s: tuple[float, float] = (0.0, 1.2)  # a signal is sent this long after its run's launch
    sleep_ms: tuple[int, int] = (50, 800)  # the ``sleepy`` workflow's async sleep
    deny_one_in: int = 5  # about one approval in this many is denied (the run still finishes)
    settle_s: float = 30.0  # after the last start: time allowed for every run to finish
    seed: int = 1


@dataclass(frozen=True)
class Outcome:
    """One RPC's answer; ``lost`` when none came (the call may or may not have taken effect)."""

    payload: Any = None
    code: str | None = None
    message: str = ""
    lost: bool = False
    refused: bool = False  # lost before anything was sent (no connection): it certainly had no effect

    @property
    def ok(self) -> bool:
        return not self.lost and self.code is None


class HttpRpc:
    """``POST /v1/rpc/{method}`` with the operator token, to wherever the gateway listens now."""

    def __init__(self, gateway: ServedGateway):
        self.gateway = gateway
        self.client = httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=CALL_TIMEOUT_S)

    async def call(self, method: str, params: dict[str, Any]) -> Outcome:
        try:
            response = await self.client.post(f"{self.gateway.url}/v1/rpc/{method}", json=params)
            body = response.json()
        except httpx.ConnectError as exc:
            return Outcome(lost=True, refused=True, message=f"{type(exc).__name__}: {exc}")
        except (httpx.TransportError, ValueError) as exc:
            return Outcome(lost=True, message=f"{type(exc).__name__}: {exc}")
        if response.status_code == 200 and body.get("ok") is True:
            return Outcome(payload=body.get("payload"))
        error = body.get("error") or {}
        return Outcome(code=str(error.get("code")), message=f"{response.status_code} {error.get('message')}")

    async def close(self) -> None:
        await self.client.aclose()


class WsRpc:
    """A WebSocket RPC client: connects (and authenticates) on demand, matches responses by id."""

    def __init__(self, gateway: ServedGateway):
        self.gateway = gateway
        self.ws: ClientConnection | None = None
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.ids = itertools.count(1)

    async def _connect(self) -> ClientConnection:
        url = self.gateway.url.replace("http://", "ws://", 1) + "/"
        ws = await connect(url, open_timeout=5, close_timeout=1, max_size=None)
        try:
            await asyncio.wait_for(ws.recv(), 5)  # connect.challenge
            params = {
                "minProtocol": 1,
                "maxProtocol": 1,
                "client": {"id": "crash-test", "version": "1", "platform": "py"},
                "auth": {"token": TOKEN},
            }
            await ws.send(json.dumps({"type": "req", "id": "hello", "method": "connect", "params": params}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if frame.get("type") == "res" and frame.get("id") == "hello":
                    break
            if not frame.get("ok"):
                raise ConnectionError(f"connect refused: {frame.get('error')}")
        except BaseException:
            await ws.close()
            raise
        pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ws, self.pending = ws, pending
        self.reader = asyncio.create_task(self._read(ws, pending))
        return ws

    async def _read(self, ws: ClientConnection, pending: dict[str, asyncio.Future[dict[str, Any]]]) -> None:
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "res":  # events (run progress, ticks) are not needed here
                    future = pending.pop(str(frame.get("id")), None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except (WebSocketException, OSError):
            pass
        finally:
            if self.ws is ws:
                self.ws = None
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the socket closed"))
            pending.clear()

    async def call(self, method: str, params: dict[str, Any]) -> Outcome:
        frame_id = f"c{next(self.ids)}"
        try:
            ws = self.ws or await self._connect()
        except (WebSocketException, OSError, ConnectionError, TimeoutError) as exc:
            return Outcome(lost=True, refused=True, message=f"{type(exc).__name__}: {exc}")
        pending = self.pending
        try:
            future = asyncio.get_running_loop().create_future()
            pending[frame_id] = future
            await ws.send(json.dumps({"type": "req", "id": frame_id, "method": method, "params": params}))
            frame = await asyncio.wait_for(future, CALL_TIMEOUT_S)
        except (WebSocketException, OSError, ConnectionError, TimeoutError) as exc:
            pending.pop(frame_id, None)
            return Outcome(lost=True, message=f"{type(exc).__name__}: {exc}")
        if frame.get("ok") is True:
            return Outcome(payload=frame.get("payload"))
        error = frame.get("error") or {}
        return Outcome(code=str(error.get("code")), message=str(error.get("message")))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class ServedGateway:
    """``smithers serve`` in a subprocess: started, SIGKILLed and started again on the same database.

    Each process listens on a port of its own (``--port 0``), and ``url`` follows the one that
    listens last: a fixed port could be taken while the gateway is down, even by a client's own
    connection attempt (a loopback socket connecting to its own port connects to itself).
    """

    def __init__(self, workdir: Path, db: str, effects: Path):
        self.workdir, self.db, self.effects = workdir, db, effects
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.began = 0.0
        self.listens = False  # the current process has been seen listening
        self.logs: list[Path] = []
        self.kills = 0
        self.start_s: list[float] = []  # how long each start took until the gateway listened

    async def start(self) -> None:
        """Start a gateway and return once it listens."""
        self.spawn()
        await self.listening()

    def spawn(self) -> None:
        env = dict(os.environ)
        env.pop("SMITHERS_DB", None)
        env[EFFECTS_ENV] = str(self.effects)
        log = self.workdir / f"gateway-{len(self.logs) + 1}.err"
        self.logs.append(log)
        self.began = time.monotonic()
        self.listens = False
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [SMITHERS, "serve", str(FIXTURE), "--port", "0", "--db", self.db],
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    async def listening(self) -> None:
        """Return once the current process listens (at once if it was seen listening)."""
        assert self.proc is not None
        if self.listens:
            return
        log = self.logs[-1]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (found := LISTENING.search(log.read_text())):
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited with {self.proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not listen within {START_TIMEOUT_S} s: {log.read_text()}")
            await asyncio.sleep(0.02)
        self.start_s.append(time.monotonic() - self.began)
        self.listens = True
        self.url = found.group(1)

    async def _wait(self) -> int:
        assert self.proc is not None
        while (code := self.proc.poll()) is None:
            await asyncio.sleep(0.01)
        return code

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        code = await self._wait()
        assert code == -signal.SIGKILL, f"the gateway exited with {code} before its SIGKILL"
        self.kills += 1

    async def stop(self) -> int:
        """SIGTERM (runs are left to the next start, nothing is cancelled); the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self._wait(), 30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_lines(self, pattern: str = r"Traceback|ERROR|WARNING|Error:") -> list[str]:
        found = re.compile(pattern)
        return [
            f"{log.name}: {line}" for log in self.logs for line in log.read_text().splitlines() if found.search(line)
        ]


@dataclass
class Ledger:
    """What the clients asked for and what the gateway acknowledged."""

    workflows: dict[str, str] = field(default_factory=dict)  # run id → workflow, every launch tried
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)  # launchRun answered ok
    confirmed: set[str] = field(default_factory=set)  # a retried launch answered "exists": the lost one was stored
    unsure: deque[str] = field(default_factory=deque)  # launches whose answer was lost (retried)
    maybe_stored: set[str] = field(default_factory=set)  # a launch was sent and its answer lost
    decisions: dict[str, bool] = field(default_factory=dict)  # run id → decision sent
    decided: set[str] = field(default_factory=set)  # decisions acknowledged
    decide_lost: set[str] = field(default_factory=set)  # a decision was sent and its answer lost
    signals_sent: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    signalled: set[str] = field(default_factory=set)  # runs with an acknowledged signal
    answered: Counter[str] = field(default_factory=Counter)  # method → calls answered
    lost: Counter[str] = field(default_factory=Counter)  # method → calls sent without an answer
    refused: Counter[str] = field(default_factory=Counter)  # method → calls that found no gateway
    unexpected: list[str] = field(default_factory=list)

    def stored(self) -> set[str]:
        return self.acked | self.confirmed


class Driver:
    """The clients' shared state: the launch budget, the queue of due decisions and signals."""

    def __init__(self, scenario: Scenario, gateway: ServedGateway):
        self.scenario = scenario
        self.gateway = gateway
        self.ledger = Ledger()
        self.rng = random.Random(scenario.seed)
        self.payloads = itertools.count(1)
        mean_uptime = sum(scenario.uptime_s) / 2
        self.launch_interval_s = max(0.001, scenario.kills * mean_uptime / max(1, scenario.launches))
        self.next_launch_at = time.monotonic()
        self.due: list[tuple[float, str, str]] = []  # (when, "decide" | "signal", run id)
        self.queued: set[tuple[str, str]] = set()
        self.busy: set[tuple[str, str]] = set()
        self.calling = 0  # clients in the middle of a step (an RPC whose outcome is not booked yet)
        self.done = asyncio.Event()

    # -- work --------------------------------------------------------------------------------
    def launches_left(self) -> bool:
        return len(self.ledger.workflows) < self.scenario.launches

    def schedule(self, kind: str, run_id: str, delay: tuple[float, float] | float) -> None:
        if (kind, run_id) in self.queued:
            return
        seconds = delay if isinstance(delay, float) else self.rng.uniform(*delay)
        self.queued.add((kind, run_id))
        heapq.heappush(self.due, (time.monotonic() + seconds, kind, run_id))

    def exists(self, run_id: str) -> None:
        """A launch is known to be stored: signal its run later (approvals are found by polling)."""
        if self.ledger.workflows[run_id] == "signal":
            self.schedule("signal", run_id, self.scenario.signal_delay_s)

    async def client(self, index: int, rpc: HttpRpc | WsRpc) -> None:
        while not self.done.is_set():
            self.calling += 1
            try:
                outcome = await self.step(index, rpc)
            finally:
                self.calling -= 1
            if outcome is None:
                await asyncio.sleep(0.02)
            elif outcome.lost:  # the gateway is down or restarting: do not spin
                await asyncio.sleep(0.1 + 0.1 * self.rng.random())
            else:
                await asyncio.sleep(0.005 * self.rng.random())

    async def step(self, index: int, rpc: HttpRpc | WsRpc) -> Outcome | None:
        ledger = self.ledger
        if ledger.unsure:
            return await self.launch(rpc, ledger.unsure.popleft())
        now = time.monotonic()
        if self.due and self.due[0][0] <= now:
            _, kind, run_id = heapq.heappop(self.due)
            self.queued.discard((kind, run_id))
            self.busy.add((kind, run_id))
            try:
                return await (self.decide(index, rpc, run_id) if kind == "decide" else self.signal(rpc, run_id))
            finally:
                self.busy.discard((kind, run_id))
        if self.launches_left() and now >= self.next_launch_at:
            self.next_launch_at = max(self.next_launch_at + self.launch_interval_s, now - 3 * self.launch_interval_s)
            number = len(ledger.workflows) + 1
            workflow = WORKFLOW_MIX[number % len(WORKFLOW_MIX)]
            run_id = f"{workflow}-{number:05d}"
            ledger.workflows[run_id] = workflow
            ledger.inputs[run_id] = {"ms": self.rng.randint(*self.scenario.sleep_ms)} if workflow == "sleepy" else {}
            return await self.launch(rpc, run_id)
        return None

    def note(self, method: str, outcome: Outcome) -> None:
        ledger = self.ledger
        (ledger.refused if outcome.refused else ledger.lost if outcome.lost else ledger.answered)[method] += 1

    async def launch(self, rpc: HttpRpc | WsRpc, run_id: str) -> Outcome:
        ledger = self.ledger
        params = {"workflow": ledger.workflows[run_id], "runId": run_id, "input": ledger.inputs[run_id]}
        outcome = await rpc.call("launchRun", params)
        self.note("launchRun", outcome)
        if outcome.lost:
            if not outcome.refused:  # it may have been stored
                ledger.maybe_stored.add(run_id)
            ledger.unsure.append(run_id)
        elif outcome.ok:
            ledger.acked.add(run_id)
            self.exists(run_id)
        elif run_id in ledger.maybe_stored and (
            outcome.code == "CONFLICT" or (outcome.code == "INVALID_REQUEST" and "already exists" in outcome.message)
        ):
            ledger.confirmed.add(run_id)
            self.exists(run_id)
        else:
            ledger.unexpected.append(f"launchRun {run_id}: {outcome.code} {outcome.message}")
        return outcome

    async def decide(self, index: int, rpc: HttpRpc | WsRpc, run_id: str) -> Outcome | None:
        ledger = self.ledger
        if run_id in ledger.decided:
            return None
        approved = ledger.decisions.setdefault(run_id, self.rng.randrange(self.scenario.deny_one_in) != 0)
        params = {"runId": run_id, "nodeId": APPROVAL_NODE, "approved": approved, "note": f"client {index}"}
        outcome = await rpc.call("submitApproval", params)
        self.note("submitApproval", outcome)
        if outcome.lost:
            if not outcome.refused:  # it may have been recorded
                ledger.decide_lost.add(run_id)
            self.schedule("decide", run_id, 0.2)
        elif outcome.ok or (outcome.code == "AlreadyDecided" and run_id in ledger.decide_lost):
            ledger.decided.add(run_id)
        else:
            ledger.unexpected.append(f"submitApproval {run_id}: {outcome.code} {outcome.message}")
        return outcome

    async def signal(self, rpc: HttpRpc | WsRpc, run_id: str) -> Outcome | None:
        ledger = self.ledger
        if run_id in ledger.signalled:
            return None
        payload = {"n": next(self.payloads)}
        ledger.signals_sent[run_id].append(payload)
        outcome = await rpc.call("submitSignal", {"runId": run_id, "signalName": SIGNAL_NAME, "data": payload})
        self.note("submitSignal", outcome)
        if outcome.lost:
            self.schedule("signal", run_id, 0.2)
        elif outcome.ok:
            ledger.signalled.add(run_id)
        else:
            ledger.unexpected.append(f"submitSignal {run_id}: {outcome.code} {outcome.message}")
        return outcome

    async def poll_approvals(self, rpc: HttpRpc) -> None:
        """Find pending approvals and queue their decisions (each after a random delay)."""
        while not self.done.is_set():
            outcome = await rpc.call("listApprovals", {})
            if outcome.ok:
                for entry in outcome.payload:
                    run_id = entry["runId"]
                    if run_id in self.ledger.decided or ("decide", run_id) in self.busy:
                        continue
                    self.schedule("decide", run_id, self.scenario.decide_delay_s)
            await asyncio.sleep(0.15)

    # -- chaos and settling ---------------------------------------------------------------------
    async def chaos(self) -> None:
        """SIGKILL the gateway at random moments, restarting it each time on the same database."""
        gateway = self.gateway
        for _ in range(self.scenario.kills):
            if self.rng.random() < self.scenario.early_kills:
                # while it starts: it may have claimed runs to resume and not be listening yet
                await asyncio.sleep(self.rng.uniform(0.0, max(gateway.start_s)))
            else:
                await gateway.listening()
                await asyncio.sleep(self.rng.uniform(*self.scenario.uptime_s))
            await gateway.kill()
            await asyncio.sleep(self.rng.uniform(*self.scenario.downtime_s))
            gateway.spawn()
        await gateway.listening()

    def settled(self) -> bool:
        """Nothing left to launch, retry, decide or signal, and every stored run has ended."""
        ledger = self.ledger
        if self.launches_left() or ledger.unsure or self.due or self.calling:
            return False
        statuses = read_statuses(self.gateway.db)
        if not ledger.stored() <= statuses.keys():
            return False  # an acknowledged run is missing: waiting will not bring it back, the checks say so
        return all(status in TERMINAL for status in statuses.values())

    async def settle(self) -> bool:
        deadline = time.monotonic() + self.scenario.settle_s
        while time.monotonic() < deadline:
            if self.settled():
                return True
            await asyncio.sleep(0.2)
        return False


@contextlib.contextmanager
def reading(db: str) -> Iterator[Connection]:
    """A connection to the scenario's database (a SQLite path or a database URL) while gateways write to it."""
    store = Store(db, migrate_schema=False)
    try:
        with store.engine.connect() as conn:
            yield conn
    finally:
        store.close()


def read_statuses(db: str) -> dict[str, str]:
    with reading(db) as conn:
        return {row[0]: row[1] for row in conn.execute(text("SELECT run_id, status FROM _smithers_runs"))}


@dataclass
class Report:
    """What the database and the side-effect file say after the crashes."""

    seed: int
    kills: int = 0
    elapsed_s: float = 0.0
    settled: bool = False
    launches_tried: int = 0
    acknowledged: int = 0
    confirmed_after_retry: int = 0
    runs_in_db: int = 0
    finished: int = 0
    decisions: int = 0
    signals: int = 0
    resumes: int = 0
    interrupted_attempts: int = 0
    effect_lines: int = 0
    start_s: list[float] = field(default_factory=list)
    answered: dict[str, int] = field(default_factory=dict)
    lost_calls: dict[str, int] = field(default_factory=dict)
    refused_calls: dict[str, int] = field(default_factory=dict)
    lost_runs: list[str] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)
    finished_twice: list[str] = field(default_factory=list)
    repeated_effects: list[str] = field(default_factory=list)
    lost_decisions: list[str] = field(default_factory=list)
    lost_signals: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    gateway_log: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        named = (
            ("acknowledged run lost", self.lost_runs),
            ("run not finished", self.unsettled),
            ("run or node finished more than once", self.finished_twice),
            ("task side effect repeated after it was recorded finished", self.repeated_effects),
            ("acknowledged decision lost", self.lost_decisions),
            ("acknowledged signal lost", self.lost_signals),
            ("other", self.other),
        )
        return [f"{name}: {item}" for name, items in named for item in items]

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {self.kills} SIGKILLs, {self.elapsed_s:.1f} s, settled={self.settled}; gateway "
            f"starts took {', '.join(f'{s:.1f}' for s in self.start_s)} s",
            f"launches tried {self.launches_tried}, acknowledged {self.acknowledged}, stored per a retry after "
            f"a lost answer {self.confirmed_after_retry}, runs in the database {self.runs_in_db}, "
            f"finished {self.finished}",
            f"decisions acknowledged {self.decisions}, signals acknowledged {self.signals}, resumes "
            f"{self.resumes}, attempts interrupted by a crash {self.interrupted_attempts}, side-effect lines "
            f"{self.effect_lines}",
            f"calls answered {self.answered}; sent, answer lost in a crash {self.lost_calls}; "
            f"refused while the gateway was down {self.refused_calls}",
            f"runs lost after SIGKILL (acknowledged, missing): {len(self.lost_runs)}",
            f"runs not finished: {len(self.unsettled)}",
            f"runs (or nodes) finished more than once: {len(self.finished_twice)}",
            f"task side effects repeated after being recorded finished: {len(self.repeated_effects)}",
            f"acknowledged decisions lost: {len(self.lost_decisions)}, acknowledged signals lost: "
            f"{len(self.lost_signals)}, other problems: {len(self.other)}",
        ]
        problems = self.problems()
        lines += [f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  … {len(problems) - MAX_PROBLEMS_SHOWN} more")
        if self.gateway_log:
            lines.append(f"gateway log lines worth a look ({len(self.gateway_log)}):")
            lines += [f"  {line}" for line in self.gateway_log[:20]]
        return "\n".join(lines)


@dataclass(frozen=True)
class Effect:
    run_id: str
    node_id: str
    iteration: int
    attempt: int
    at_ms: int
    pid: int


def read_effects(path: Path, report: Report) -> list[Effect]:
    effects = []
    text = path.read_text() if path.exists() else ""
    for number, line in enumerate(text.splitlines(), 1):
        try:
            run_id, node_id, iteration, attempt, at_ms, pid = line.split("\t")
            effects.append(Effect(run_id, node_id, int(iteration), int(attempt), int(at_ms), int(pid)))
        except ValueError:
            report.other.append(f"side-effect line {number} is malformed: {line!r}")
    return effects


AttemptRows = dict[tuple[str, str, int], dict[int, tuple[str, int | None]]]


def check(db: str, effects_path: Path, ledger: Ledger, report: Report) -> None:
    """Compare what was acknowledged with the database, and the side-effect lines with the attempts."""
    with reading(db) as conn:
        runs = {
            r[0]: (r[1], r[2]) for r in conn.execute(text("SELECT run_id, status, workflow_name FROM _smithers_runs"))
        }
        terminal_events: Counter[tuple[str, str]] = Counter()
        node_finishes: Counter[tuple[str, str, int]] = Counter()
        for run_id, kind, payload_json in conn.execute(
            text(
                "SELECT run_id, type, payload_json FROM _smithers_events"
                " WHERE type IN ('RunFinished', 'RunFailed', 'RunCancelled', 'NodeFinished', 'RunStarted')"
            )
        ):
            payload = json.loads(payload_json)
            if kind == "NodeFinished":
                node_finishes[(run_id, payload["nodeId"], int(payload.get("iteration") or 0))] += 1
            elif kind == "RunStarted":
                report.resumes += bool(payload.get("resumed"))
            else:
                terminal_events[(run_id, kind)] += 1
        nodes = {
            (r[0], r[1], r[2]): r[3]
            for r in conn.execute(text("SELECT run_id, node_id, iteration, state FROM _smithers_nodes"))
        }
        attempts: AttemptRows = defaultdict(dict)
        for run_id, node_id, iteration, attempt, state, finished_at, error_json in conn.execute(
            text(
                "SELECT run_id, node_id, iteration, attempt, state, finished_at_ms, error_json FROM _smithers_attempts"
            )
        ):
            attempts[(run_id, node_id, iteration)][attempt] = (state, finished_at)
            if error_json and "ATTEMPT_ABANDONED" in error_json:
                report.interrupted_attempts += 1
        approvals = {
            r[0]: r[1]
            for r in conn.execute(
                text("SELECT run_id, status FROM _smithers_approvals WHERE node_id = :node"), {"node": APPROVAL_NODE}
            )
        }
        outputs = {
            (r[0], r[1]): json.loads(r[2])
            for r in conn.execute(
                text("SELECT run_id, node_id, payload_json FROM _smithers_outputs WHERE node_id IN (:a, :b)"),
                {"a": APPROVAL_NODE, "b": WAIT_NODE},
            )
        }

    report.launches_tried = len(ledger.workflows)
    report.acknowledged = len(ledger.acked)
    report.confirmed_after_retry = len(ledger.confirmed - ledger.acked)
    report.runs_in_db = len(runs)
    report.finished = sum(1 for status, _ in runs.values() if status == "finished")
    report.decisions = len(ledger.decided)
    report.signals = len(ledger.signalled)
    report.answered = dict(ledger.answered)
    report.lost_calls = dict(ledger.lost)
    report.refused_calls = dict(ledger.refused)
    report.other += [f"unexpected answer: {u}" for u in ledger.unexpected]

    report.lost_runs = sorted(ledger.acked - runs.keys())
    report.other += [f"{r} answered 'exists' on a retry but is missing" for r in sorted(ledger.confirmed - runs.keys())]
    report.other += [f"{r} was never launched by the clients" for r in sorted(runs.keys() - ledger.workflows.keys())]

    for run_id, (status, workflow) in sorted(runs.items()):
        expected = ledger.workflows.get(run_id)
        if expected is not None and workflow != expected:
            report.other.append(f"{run_id} stored as workflow {workflow!r}, launched as {expected!r}")
        if status != "finished":
            report.unsettled.append(f"{run_id} is {status}")
        finishes = terminal_events[(run_id, "RunFinished")]
        failures = terminal_events[(run_id, "RunFailed")]
        cancels = terminal_events[(run_id, "RunCancelled")]
        if finishes > 1 or (status == "finished" and (finishes != 1 or failures or cancels)):
            report.finished_twice.append(
                f"{run_id}: {finishes} RunFinished, {failures} RunFailed, {cancels} RunCancelled"
            )
        for node_id in TASK_NODES.get(workflow, ()) + STEP_NODES.get(workflow, ()):
            key = (run_id, node_id, 0)
            state = nodes.get(key)
            if status == "finished" and state != "finished":
                report.other.append(f"{run_id}/{node_id} is {state} in a finished run")
            count = node_finishes[key]
            if count > 1:
                report.finished_twice.append(f"{run_id}/{node_id}: {count} NodeFinished events")
            elif state == "finished" and count == 0:
                report.other.append(f"{run_id}/{node_id} is finished without a NodeFinished event")

    check_effects(read_effects(effects_path, report), runs, nodes, attempts, report)
    check_decisions_and_signals(ledger, runs, approvals, outputs, report)


def check_effects(
    effects: list[Effect],
    runs: dict[str, tuple[str, str]],
    nodes: dict[tuple[str, str, int], str],
    attempts: AttemptRows,
    report: Report,
) -> None:
    """Every line belongs to a distinct stored attempt, none after the node's finished attempt."""
    report.effect_lines = len(effects)
    by_node: dict[tuple[str, str, int], list[Effect]] = defaultdict(list)
    for effect in effects:
        by_node[(effect.run_id, effect.node_id, effect.iteration)].append(effect)
    finished_nodes = {key for key, state in nodes.items() if key[0] in runs and state == "finished"}
    for key in sorted(by_node.keys() | finished_nodes):
        run_id, node_id, _ = key
        where = f"{run_id}/{node_id}"
        if node_id not in TASK_NODES.get(runs.get(run_id, ("", ""))[1], ()):
            if key in by_node:
                report.other.append(f"side effects for {where}, which is not a task of a stored run")
            continue
        lines = by_node.get(key, [])
        stored = attempts.get(key, {})
        for attempt, count in Counter(e.attempt for e in lines).items():
            if count > 1:
                report.repeated_effects.append(f"{where}: attempt {attempt} ran {count} times")
        for effect in lines:
            if effect.attempt not in stored:
                report.repeated_effects.append(
                    f"{where}: a body ran as attempt {effect.attempt} (pid {effect.pid}), which is not stored "
                    f"(stored: {sorted(stored)})"
                )
        if len(lines) > len(stored):
            report.repeated_effects.append(f"{where}: {len(lines)} side effects for {len(stored)} stored attempts")
        if nodes.get(key) != "finished":
            continue
        done = [a for a, (state, _) in stored.items() if state == "finished"]
        if len(done) != 1:
            report.finished_twice.append(f"{where}: finished attempts {sorted(done)}")
            continue
        final = done[0]
        finished_at = stored[final][1]
        later = sorted(a for a in stored if a > final)
        if later:
            report.repeated_effects.append(f"{where}: attempts {later} were started after attempt {final} finished")
        for effect in lines:
            if effect.attempt > final:
                report.repeated_effects.append(
                    f"{where}: attempt {effect.attempt} ran (pid {effect.pid}) after attempt {final} finished"
                )
            elif finished_at is not None and effect.at_ms > finished_at:
                report.repeated_effects.append(
                    f"{where}: attempt {effect.attempt} wrote at {effect.at_ms}, after the node finished at "
                    f"{finished_at}"
                )
        if not any(e.attempt == final for e in lines):
            report.other.append(f"{where}: the finished attempt {final} left no side effect")


def check_decisions_and_signals(
    ledger: Ledger,
    runs: dict[str, tuple[str, str]],
    approvals: dict[str, str],
    outputs: dict[tuple[str, str], Any],
    report: Report,
) -> None:
    for run_id in sorted(ledger.decided):
        wanted = "approved" if ledger.decisions[run_id] else "denied"
        output = outputs.get((run_id, APPROVAL_NODE))
        status = runs.get(run_id, ("missing", ""))[0]
        if approvals.get(run_id) != wanted:
            report.lost_decisions.append(
                f"{run_id}: {wanted} was acknowledged, the approval is {approvals.get(run_id)}"
            )
        elif not isinstance(output, dict) or output.get("approved") is not ledger.decisions[run_id]:
            report.lost_decisions.append(f"{run_id}: {wanted} was acknowledged, the approval's output is {output}")
        elif status != "finished":
            report.lost_decisions.append(f"{run_id}: {wanted} was acknowledged, the run is {status}")
    for run_id in sorted(ledger.signalled):
        output = outputs.get((run_id, WAIT_NODE))
        status = runs.get(run_id, ("missing", ""))[0]
        if output not in ledger.signals_sent[run_id]:
            report.lost_signals.append(f"{run_id}: the wait's output is {output}, sent {ledger.signals_sent[run_id]}")
        elif status != "finished":
            report.lost_signals.append(f"{run_id}: a signal was acknowledged, the run is {status}")
    for run_id in sorted(ledger.stored()):
        workflow = ledger.workflows[run_id]
        if workflow == "approve" and run_id not in ledger.decided:
            report.other.append(f"{run_id}: no decision was acknowledged (its approval was never seen pending)")
        if workflow == "signal" and run_id not in ledger.signalled:
            report.other.append(f"{run_id}: no signal was acknowledged")


async def run_scenario(scenario: Scenario, workdir: Path, db: str) -> Report:
    """Serve the crash fixture on ``db`` (a path or URL), shake it as ``scenario`` says, then check everything."""
    effects = workdir / "effects.log"
    gateway = ServedGateway(workdir, db, effects)
    driver = Driver(scenario, gateway)
    report = Report(seed=scenario.seed)
    began = time.monotonic()
    rpcs: list[HttpRpc | WsRpc] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        await gateway.start()
        for index in range(scenario.clients):
            rpcs.append(HttpRpc(gateway) if index % 2 == 0 else WsRpc(gateway))
            tasks.append(asyncio.create_task(driver.client(index, rpcs[-1])))
        poller = HttpRpc(gateway)
        rpcs.append(poller)
        tasks.append(asyncio.create_task(driver.poll_approvals(poller)))
        await driver.chaos()
        report.settled = await driver.settle()
        driver.done.set()
        await asyncio.gather(*tasks)
        code = await gateway.stop()
        if code != 0:
            report.other.append(f"the last gateway exited with {code} on SIGTERM")
    finally:
        driver.done.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rpc in rpcs:
            await rpc.close()
        gateway.cleanup()
    report.kills = gateway.kills
    report.start_s = gateway.start_s
    report.elapsed_s = time.monotonic() - began
    report.gateway_log = gateway.log_lines()
    check(db, effects, driver.ledger, report)
    return report


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path, databases: Databases) -> None:
    report = asyncio.run(run_scenario(Scenario(), tmp_path, databases.new("crash")))
    print(report.summary())
    assert report.kills == 3
    assert report.acknowledged >= 50, report.summary()  # the gateway was really under load
    assert report.problems() == [], report.summary()
    assert report.settled, report.summary()
