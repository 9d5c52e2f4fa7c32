"""DevTools benchmarks on 127.0.0.1 (the gateway runs in a child process, under uvloop as ``smithers serve``).

    .venv/bin/python bench/bench_devtools.py [--nodes 500] [--steps 200] [--subscribers 50]

The gateway runs in token mode with one admin token (``{"role": "admin", "scopes": ["*"],
"userId": "user:admin"}``). Prints:

  1. ``getDevToolsSnapshot`` of a finished run whose tree holds ``--nodes`` task nodes (a Sequence of
     Parallel groups of 20 static tasks, plus the workflow, sequence and group nodes): ms per call
     over WebSocket RPC, one request in flight on one socket (median, p95, calls/s), the calls/s
     the gateway sustains with 4 sockets x 8 requests in flight and its CPU per call; then the pure
     build cost in this process, ``devtools.snapshot(...)`` on the latest frame's parsed document
     (µs per call), next to the cost of parsing the frame's ``xml_json`` and of encoding the answer.
  2. Delta vs snapshot bytes over a ``--steps`` run (a Sequence of compute tasks, each reading the
     previous one's output; each completion records a frame): the snapshot of every frame, as read
     by ``history.read_frames`` from the database, then ``diff_snapshots`` between consecutive frames.
     Sizes are ``devtools.event_size`` of the ``snapshot_event``/``delta_event`` (compact JSON bytes,
     without ``runState``); the ratio compares frames 2..last, the ones a delta can replace. The tree
     of that workflow does not change from frame to frame, so its deltas carry no ops; a second line
     does the same for a variant whose tasks' ``label`` says "done" once they have an output (one
     ``updateProps`` + one ``updateTask`` per frame).
  3. ``streamDevTools`` to ``--subscribers`` WebSocket subscribers while a ``--steps`` run executes:
     the run's first task waits for a file, every subscriber opens its stream (and receives the
     snapshot of frame 1), then the file is created. Counted: ``devtools.event`` frames received
     after that, per subscriber and in total, and events/s from the gate opening to the last event
     received by any subscriber. Every subscriber then rebuilds the final tree (snapshots replace,
     deltas go through ``apply_delta``), which must equal a fresh ``getDevToolsSnapshot`` of the run
     (``runState`` aside).
  4. Rewind of the run of figure 2 (``--steps`` + 1 frames) to frame 10: wall time of the
     ``jumpToFrame`` RPC (``confirm: true``, admin token), then the time until the resumed run
     finishes again (its ``run.completed`` reaching a subscribed WebSocket), and whether it ends
     ``finished`` with exactly the same output rows as before the rewind (each output is a hash
     chain over the previous one, so a wrong replay shows). The frame count ends one higher: the
     resume records its first render as a frame (docs/engine.md, "RunStarted{resumed}, FrameCommitted").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from child_gateway import HOST, child_gateway  # noqa: E402
from ws_load import client_frame, open_client, read_frame, rpc_rate  # noqa: E402

from smithers import Ctx, Parallel, Sequence, Task, workflow  # noqa: E402
from smithers.engine import devtools  # noqa: E402
from smithers.engine.history import read_frames  # noqa: E402
from smithers.gateway.server import Gateway  # noqa: E402
from smithers.store.rows import loads  # noqa: E402
from smithers.store.store import Store  # noqa: E402

TOKEN = "bench-admin-token"
ADMIN = {"role": "admin", "scopes": ["*"], "userId": "user:admin"}
GROUP = 20
TIMEOUT_S = 120.0
REWIND_TO = 10

Frame = dict[str, Any]


# -- workflows (defined here so the child gateway registers them) ---------------------------------
@workflow("tree")
def tree(ctx: Ctx) -> Any:
    """``nodes`` static tasks in Parallel groups of 20, the groups in a Sequence."""
    count = int(ctx.input.get("nodes", 500))
    groups = [range(start, min(count, start + GROUP)) for start in range(0, count, GROUP)]
    return Sequence(*[Parallel(*[Task(f"t{i}", value={"i": i}) for i in group]) for group in groups])


def step(index: int, gate: str | None = None) -> Callable[[Ctx], Awaitable[dict[str, int]]]:
    """Compute task ``s<index>``: a hash chain over the previous output (so a replay must read it)."""

    async def run(ctx: Ctx) -> dict[str, int]:
        while gate is not None and not Path(gate).exists():
            await asyncio.sleep(0.005)
        previous = ctx.output_maybe(f"s{index - 1}") if index else None
        return {"n": ((previous["n"] if previous else 7) * 31 + index) % 2**31}

    return run


@workflow("steps")
def steps(ctx: Ctx) -> Any:
    """A Sequence of ``steps`` compute tasks; the first waits for the file ``gate`` when given."""
    gate = ctx.input.get("gate")
    count = int(ctx.input.get("steps", 200))
    return Sequence(*[Task(f"s{i}", run=step(i, gate if i == 0 else None)) for i in range(count)])


@workflow("labelled")
def labelled(ctx: Ctx) -> Any:
    """``steps`` whose tasks are labelled "done" once they have an output: the tree changes every frame."""
    count = int(ctx.input.get("steps", 200))
    return Sequence(
        *[
            Task(f"s{i}", run=step(i), label="done" if ctx.output_maybe(f"s{i}") is not None else "pending")
            for i in range(count)
        ]
    )


def serve(port: int, db: str) -> None:
    """Child process: a token-mode gateway (one admin token) with the three workflows."""
    auth = {"mode": "token", "tokens": {TOKEN: ADMIN}}
    gateway = Gateway.for_workflows([tree, steps, labelled], db=db, auth=auth)
    from smithers.cli.gateway_cmds import event_loop_runner

    event_loop_runner()(gateway.serve(HOST, port))  # the event loop `smithers serve` uses


# -- a WebSocket client ---------------------------------------------------------------------------
class Client:
    """One authenticated WebSocket: answers matched to requests by id; events optionally recorded
    as ``(arrival time, message bytes, frame)``; waiters resolved with the arrival time of an event."""

    def __init__(self, ws: ClientConnection, record: bool):
        self.ws = ws
        self.record = record
        self.events: list[tuple[float, int, Frame]] = []
        self._count = 0
        self._pending: dict[str, asyncio.Future[Frame]] = {}
        self._waits: list[tuple[Callable[[Frame], bool], asyncio.Future[float]]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, subscribe: list[str] | None = None, record: bool = False) -> Client:
        ws = await connect(url, max_size=None, open_timeout=30, ping_interval=None, compression=None)
        await ws.recv()  # connect.challenge
        params: Frame = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "bench"}, "auth": {"token": TOKEN}}
        if subscribe is not None:
            params["subscribe"] = subscribe
        await ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": params}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "res":
                assert frame["ok"], frame
                return cls(ws, record)

    async def _read(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            frame = json.loads(message)
            if frame.get("type") == "res":
                future = self._pending.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(frame)
                continue
            if self.record:
                self.events.append((now, len(message), frame))
            for wait in [w for w in self._waits if w[0](frame)]:
                self._waits.remove(wait)
                if not wait[1].done():
                    wait[1].set_result(now)

    def wait_event(self, predicate: Callable[[Frame], bool]) -> asyncio.Future[float]:
        """A future resolved with the arrival time of the first later event matching ``predicate``."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waits.append((predicate, future))
        return future

    async def call(self, method: str, params: Frame) -> Any:
        self._count += 1
        request_id = f"r{self._count}"
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self.ws.send(json.dumps({"type": "req", "id": request_id, "method": method, "params": params}))
        frame = await asyncio.wait_for(future, TIMEOUT_S)
        if not frame["ok"]:
            raise RuntimeError(f"{method} failed: {frame.get('error')}")
        return frame.get("payload")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def completed(run_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("event") == "run.completed" and f.get("payload", {}).get("runId") == run_id


async def launch_and_wait(url: str, workflow_key: str, run_id: str, params: Frame) -> tuple[Client, float]:
    """Launch a run and wait for its ``run.completed``: (the watcher, subscribed to the run; seconds taken)."""
    watcher = await Client.open(url, subscribe=[run_id])
    done = watcher.wait_event(completed(run_id))
    started = time.perf_counter()
    await watcher.call("launchRun", {"workflow": workflow_key, "runId": run_id, "input": params})
    return watcher, await asyncio.wait_for(done, TIMEOUT_S) - started


# -- helpers --------------------------------------------------------------------------------------
def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def count_nodes(node: Frame) -> int:
    return 1 + sum(count_nodes(child) for child in node["children"])


def without_run_state(snap: Frame) -> Frame:
    return {k: v for k, v in snap.items() if k != "runState"}


def read_snapshots(db: str, run_id: str) -> list[Frame]:
    """The snapshot (without ``runState``) of every stored frame of a run."""
    store = Store(db)
    try:
        with store.read() as tx:
            rows = read_frames(tx, run_id, 1, tx.last_frame_no(run_id))
    finally:
        store.close()
    return [devtools.snapshot(run_id, row["frame_no"], loads(row["xml_json"])) for row in rows]


def read_outputs(db: str, run_id: str) -> tuple[int, dict[tuple[str, int], str]]:
    """(last frame number, output payloads by (node, iteration)) of a run."""
    store = Store(db)
    try:
        with store.read() as tx:
            rows = tx.list_outputs(run_id)
            return tx.last_frame_no(run_id), {(r["node_id"], r["iteration"]): r["payload_json"] for r in rows}
    finally:
        store.close()


def timed_us(fn: Callable[[], Any], repeat: int) -> float:
    """Median µs per call of ``fn`` over ``repeat`` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


# -- 1. getDevToolsSnapshot of a large tree -------------------------------------------------------
async def bench_snapshot(url: str, port: int, db: str, pid: int, nodes: int, seconds: float) -> None:
    run_id = f"tree-{nodes}"
    watcher, _ = await launch_and_wait(url, "tree", run_id, {"nodes": nodes})
    await watcher.close()
    params = {"runId": run_id}

    reader, writer = await open_client(HOST, port, TOKEN)  # a lean client: the answer is not parsed
    request = client_frame(
        json.dumps({"type": "req", "id": "s", "method": "getDevToolsSnapshot", "params": params}).encode()
    )

    async def one_call() -> bytes:
        writer.write(request)
        while True:
            frame = await read_frame(reader)
            if frame.startswith(b'{"type":"res"'):
                assert b'"ok":true' in frame[:80], frame[:300]
                return frame

    answer = b""
    for _ in range(20):
        answer = await one_call()
    latencies: list[float] = []
    before = cpu_ms(pid)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        await one_call()
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    sequential_cpu = (cpu_ms(pid) - before) / len(latencies)
    writer.close()

    before = cpu_ms(pid)
    rate = await rpc_rate(HOST, port, TOKEN, "getDevToolsSnapshot", params, connections=4, depth=8, seconds=seconds)
    pipelined_cpu = (cpu_ms(pid) - before) / (rate * seconds)

    snap = json.loads(answer)["payload"]
    tree_nodes = count_nodes(snap["root"])
    store = Store(db)
    try:
        with store.read() as tx:
            last = tx.last_frame_no(run_id)
            row = read_frames(tx, run_id, last, last)[0]
    finally:
        store.close()
    text = row["xml_json"]
    doc = loads(text)
    built = devtools.snapshot(run_id, last, doc)
    assert without_run_state(built) == without_run_state(snap), "the RPC's tree differs from a local build"
    build_us = timed_us(lambda: devtools.snapshot(run_id, last, doc), 200)
    parse_us = timed_us(lambda: loads(text), 200)
    encode_us = timed_us(lambda: json.dumps(snap, separators=(",", ":"), ensure_ascii=False), 200)

    print(
        f"1. getDevToolsSnapshot, finished run with {nodes} task nodes ({tree_nodes} tree nodes, frame {last}), "
        f"answer {len(answer) / 1024:.0f} KiB:"
    )
    print(
        f"   WebSocket RPC, 1 in flight: median {statistics.median(latencies):.2f} ms, "
        f"p95 {percentile(latencies, 0.95):.2f} ms, {len(latencies) / elapsed:.0f} calls/s "
        f"({len(latencies)} calls), gateway CPU {sequential_cpu:.2f} ms per call"
    )
    print(f"   WebSocket RPC, 4 sockets x 8 in flight: {rate:.0f} calls/s, gateway CPU {pipelined_cpu:.2f} ms per call")
    print(
        f"   pure build devtools.snapshot(doc): {build_us:.0f} µs per call "
        f"(for reference: parsing xml_json {parse_us:.0f} µs, JSON-encoding the snapshot {encode_us:.0f} µs)"
    )


# -- 2. delta vs snapshot bytes -------------------------------------------------------------------
def delta_figures(db: str, run_id: str) -> tuple[int, list[int], list[int], list[int], float]:
    """(frames, snapshot event sizes, delta event sizes, ops per delta, µs per diff) of a run."""
    snaps = read_snapshots(db, run_id)
    snapshot_sizes = [devtools.event_size(devtools.snapshot_event(s)) for s in snaps]
    started = time.perf_counter()
    deltas = [devtools.diff_snapshots(a, b) for a, b in itertools.pairwise(snaps)]
    diff_us = (time.perf_counter() - started) * 1e6 / max(1, len(deltas))
    delta_sizes = [devtools.event_size(devtools.delta_event(d)) for d in deltas]
    held = snaps[0]
    for delta in deltas:
        held = devtools.apply_delta(held, delta)
    assert held == snaps[-1], "applying every delta to frame 1 does not give the last frame"
    return len(snaps), snapshot_sizes, delta_sizes, [len(d["ops"]) for d in deltas], diff_us


def print_deltas(label: str, figures: tuple[int, list[int], list[int], list[int], float]) -> None:
    frames, snapshot_sizes, delta_sizes, ops, diff_us = figures
    replaced = snapshot_sizes[1:]  # frames 2..last: the ones a delta stands for
    print(f"   {label}: {frames} frames, {len(delta_sizes)} deltas ({min(ops)}-{max(ops)} ops each)")
    print(
        f"     snapshot events (frames 2..{frames}): total {sum(replaced):,} B, mean {statistics.mean(replaced):,.0f} B"
        f"   delta events: total {sum(delta_sizes):,} B, mean {statistics.mean(delta_sizes):,.0f} B"
        f"   ratio snapshot/delta {sum(replaced) / sum(delta_sizes):,.0f}x"
        f"   (diff_snapshots {diff_us:.0f} µs per pair)"
    )


async def bench_deltas(url: str, db: str, count: int) -> tuple[Client, float]:
    """Figure 2; returns the watcher of the ``steps`` run (which figure 4 rewinds) and its duration."""
    run_id = f"steps-{count}"
    watcher, took = await launch_and_wait(url, "steps", run_id, {"steps": count})
    other, _ = await launch_and_wait(url, "labelled", f"labelled-{count}", {"steps": count})
    await other.close()
    print(f"2. delta vs snapshot event bytes, a Sequence of {count} compute tasks (the run took {took * 1000:.0f} ms):")
    print_deltas("unchanging tree", delta_figures(db, run_id))
    print_deltas("tree with task labels changing (pending -> done)", delta_figures(db, f"labelled-{count}"))
    return watcher, took


# -- 3. streamDevTools fan-out --------------------------------------------------------------------
def reconstruct(events: list[Frame]) -> tuple[Frame, list[int]]:
    """The tree a client holds after ``events`` (DevToolsEvents), and the seq after each event."""
    held: Frame | None = None
    seqs = []
    for event in events:
        if event["kind"] == "snapshot":
            held = event["snapshot"]
        else:
            assert held is not None, "a delta before any snapshot"
            held = devtools.apply_delta(held, event["delta"])
        seqs.append(held["seq"])
    assert held is not None
    return held, seqs


def devtools_events(client: Client) -> list[tuple[float, int, Frame]]:
    return [e for e in client.events if e[2].get("event") == "devtools.event"]


def holds(client: Client, seq: int) -> bool:
    """Whether ``client`` has received the event of frame ``seq``."""
    for _, _, frame in devtools_events(client):
        event = frame["payload"]["event"]
        if event.get("snapshot", event.get("delta", {})).get("seq") == seq:
            return True
    return False


async def bench_stream(url: str, pid: int, count: int, subscribers: int, alone: float) -> None:
    run_id = f"stream-{count}"
    gate = Path(tempfile.mkdtemp(prefix="smithers-bench-gate-")) / "go"
    admin = await Client.open(url, subscribe=[run_id])
    done = admin.wait_event(completed(run_id))
    await admin.call("launchRun", {"workflow": "steps", "runId": run_id, "input": {"steps": count, "gate": str(gate)}})
    sockets = await asyncio.gather(*(Client.open(url, subscribe=[run_id], record=True) for _ in range(subscribers)))
    firsts = [s.wait_event(lambda f: f.get("event") == "devtools.event") for s in sockets]
    await asyncio.gather(*(s.call("streamDevTools", {"runId": run_id}) for s in sockets))
    await asyncio.wait_for(asyncio.gather(*firsts), TIMEOUT_S)
    cpu_before = cpu_ms(pid)
    opened = time.perf_counter()
    gate.touch()
    finished_at = await asyncio.wait_for(done, TIMEOUT_S)
    fresh = await admin.call("getDevToolsSnapshot", {"runId": run_id})
    final = fresh["seq"]

    deadline = time.perf_counter() + TIMEOUT_S
    while not all(holds(s, final) for s in sockets):
        assert time.perf_counter() < deadline, "subscribers never received the final frame"
        await asyncio.sleep(0.01)
    cpu_used = cpu_ms(pid) - cpu_before

    per_subscriber: list[int] = []
    kinds = {"snapshot": 0, "delta": 0}
    last_arrival = opened
    bytes_during = 0
    rebuilt_ok = True
    for client in sockets:
        received = devtools_events(client)
        during = [e for e in received if e[0] >= opened]
        per_subscriber.append(len(during))
        bytes_during += sum(e[1] for e in during)
        last_arrival = max([last_arrival] + [e[0] for e in during])
        for _, _, frame in during:
            kinds[frame["payload"]["event"]["kind"]] += 1
        held, seqs = reconstruct([e[2]["payload"]["event"] for e in received])
        rebuilt_ok &= seqs == list(range(1, final + 1)) and without_run_state(held) == without_run_state(fresh)
    total = sum(per_subscriber)
    elapsed = last_arrival - opened
    snapshot_bytes = devtools.event_size(devtools.snapshot_event(fresh))
    print(f"3. streamDevTools, {subscribers} WebSocket subscribers, a {count}-step run ({final} frames):")
    print(
        f"   devtools.event frames received during the run: {total} ({min(per_subscriber)}-{max(per_subscriber)} "
        f"per subscriber; {kinds['snapshot']} snapshots, {kinds['delta']} deltas), "
        f"{total / elapsed:,.0f} events/s over {elapsed * 1000:.0f} ms (gate open -> last event received)"
    )
    print(
        f"   run finished {(finished_at - opened) * 1000:.0f} ms after the gate opened "
        f"(the same run without subscribers, figure 2: {alone * 1000:.0f} ms); "
        f"last event {(last_arrival - finished_at) * 1000:.0f} ms after run.completed; "
        f"gateway CPU {cpu_used:.0f} ms; {bytes_during / subscribers / 1024:.0f} KiB per subscriber "
        f"(one full snapshot event: {snapshot_bytes / 1024:.0f} KiB)"
    )
    print(
        f"   every subscriber saw frames 1..{final} once each and rebuilt the final tree "
        f"(apply_delta) equal to a fresh getDevToolsSnapshot, runState aside: {rebuilt_ok}"
    )
    await asyncio.gather(*(s.close() for s in sockets))
    await admin.close()


# -- 4. rewind ------------------------------------------------------------------------------------
async def bench_rewind(url: str, db: str, watcher: Client, count: int) -> None:
    run_id = f"steps-{count}"
    frames_before, outputs_before = read_outputs(db, run_id)
    admin = await Client.open(url)
    done = watcher.wait_event(completed(run_id))
    started = time.perf_counter()
    result = await admin.call("jumpToFrame", {"runId": run_id, "frameNo": REWIND_TO, "confirm": True})
    answered = time.perf_counter()
    finished_at = await asyncio.wait_for(done, TIMEOUT_S)
    run = await admin.call("getRun", {"runId": run_id})
    frames_after, outputs_after = read_outputs(db, run_id)
    redone = frames_after - REWIND_TO
    same = run["status"] == "finished" and outputs_after == outputs_before
    print(f"4. rewind of the {frames_before}-frame run of figure 2 to frame {REWIND_TO}:")
    print(
        f"   jumpToFrame RPC {(answered - started) * 1000:.1f} ms (deletedFrames {result['deletedFrames']}, "
        f"deletedAttempts {result['deletedAttempts']}, durationMs {result['durationMs']})"
    )
    print(
        f"   run finished again {(finished_at - answered) * 1000:.0f} ms after the answer "
        f"({(finished_at - started) * 1000:.0f} ms after the request; {redone} frames recorded again, "
        f"{(finished_at - answered) * 1000 / redone:.2f} ms per frame)"
    )
    print(
        f"   finished with the same {len(outputs_after)} output rows as before the rewind: {same} "
        f"(status {run['status']}; {frames_after} frames, was {frames_before}: the resume records "
        f"its first render as a frame, docs/engine.md)"
    )
    await admin.close()


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    async with child_gateway(__file__, "smithers-bench-devtools-") as child:
        port = int(child.base.rsplit(":", 1)[1])
        await bench_snapshot(child.ws_url, port, child.db, child.pid, args.nodes, args.rpc_seconds)
        watcher, alone = await bench_deltas(child.ws_url, child.db, args.steps)
        await bench_stream(child.ws_url, child.pid, args.steps, args.subscribers, alone)
        await bench_rewind(child.ws_url, child.db, watcher, args.steps)
        await watcher.close()
    print(f"(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--rpc-seconds", type=float, default=3.0)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.db)
    else:
        asyncio.run(main(options))
