"""Gateway benchmarks on 127.0.0.1 (the gateway runs in a child process so its memory can be read).

    .venv/bin/python bench/bench_gateway.py [--launches 800] [--clients 16] [--tasks 300]
                                            [--subscribers 100] [--idle 1000] [--rpc-seconds 4]

Prints:
  1. WebSocket RPC: ``health`` and ``getRun`` answered per second (4 sockets, 64 requests in
     flight each), and the gateway's CPU per request;
  2. launchRun over HTTP for a one-task workflow with ``--clients`` concurrent clients:
     completed runs/s and p50/p99 RPC latency;
  3. one run emitting 2 x ``--tasks`` + 1 events to ``--subscribers`` WebSocket subscribers:
     events/s delivered, and whether every subscriber got every event in order;
  4. memory of ``--idle`` idle authenticated WebSocket connections (KiB per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from child_gateway import HOST, child_gateway  # noqa: E402
from ws_load import rpc_rate  # noqa: E402

from smithers import Parallel, Task, workflow  # noqa: E402
from smithers.gateway.server import Gateway  # noqa: E402
from smithers.store.store import Store  # noqa: E402

TOKEN = "bench-token"


class Out(BaseModel):
    n: int


@workflow("one")
def one(ctx: Any) -> Any:
    return Task("only", output=Out, value=Out(n=1))


@workflow("many")
def many(ctx: Any) -> Any:
    count = int(ctx.input.get("tasks", 300))
    return Parallel(*[Task(f"t{i}", output=Out, value=Out(n=i)) for i in range(count)])


def serve(port: int, db: str) -> None:
    """Child process: a token-mode gateway with the two workflows."""
    auth = {"mode": "token", "tokens": {TOKEN: {"role": "operator", "scopes": ["*"]}}}
    gateway = Gateway.for_workflows([one, many], db=db, auth=auth, max_connections=5000)
    from smithers.cli.gateway_cmds import event_loop_runner

    event_loop_runner()(gateway.serve(HOST, port))  # the event loop `smithers serve` uses


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def ws_connect(url: str, subscribe: list[str] | None = None) -> ClientConnection:
    ws = await connect(url, max_size=None, open_timeout=30, ping_interval=None)
    await ws.recv()  # connect.challenge
    params: dict[str, Any] = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "bench"}, "auth": {"token": TOKEN}}
    if subscribe is not None:
        params["subscribe"] = subscribe
    await ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": params}))
    while True:
        frame = json.loads(await ws.recv())
        if frame.get("type") == "res":
            assert frame["ok"], frame
            return ws


async def bench_rpc(base: str, pid: int, seconds: float) -> None:
    """WebSocket RPC throughput of a cheap method and of a database read."""
    port = int(base.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        response = await http.post("/v1/rpc/launchRun", json={"workflow": "one", "runId": "rpc-bench"})
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.5)
    print("WebSocket RPC, 4 sockets x 64 requests in flight:")
    for method, params in (("health", {}), ("getRun", {"runId": "rpc-bench"})):
        before = cpu_ms(pid)
        rate = await rpc_rate(HOST, port, TOKEN, method, params, connections=4, depth=64, seconds=seconds)
        used = cpu_ms(pid) - before
        print(f"  {method}: {rate:,.0f} requests/s, gateway CPU {used * 1000 / (rate * seconds):.0f} µs per request")


async def bench_launch(base: str, ws_url: str, launches: int, clients: int) -> None:
    watcher = await ws_connect(ws_url)
    done: set[str] = set()
    all_done = asyncio.Event()

    async def watch() -> None:
        async for message in watcher:
            frame = json.loads(message)
            if frame.get("event") == "run.completed":
                done.add(frame["payload"]["runId"])
                if len(done) >= launches:
                    all_done.set()
                    return

    watching = asyncio.create_task(watch())
    latencies: list[float] = []
    remaining = iter(range(launches))
    body = json.dumps({"workflow": "one"}).encode()
    request = (
        f"POST /v1/rpc/launchRun HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    port = int(base.rsplit(":", 1)[1])

    async def client() -> None:
        # A minimal keep-alive HTTP/1.1 client: a full-featured one costs more CPU than the server.
        reader, writer = await asyncio.open_connection(HOST, port)
        for _ in remaining:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(v.split(b":")[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length"))
            answer = await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            assert head.startswith(b"HTTP/1.1 200"), answer
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    answered = time.perf_counter() - started
    await asyncio.wait_for(all_done.wait(), timeout=300)
    elapsed = time.perf_counter() - started
    watching.cancel()
    await watcher.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"launchRun over HTTP, one-task workflow, {clients} concurrent clients, {launches} runs:")
    print(
        f"  completed runs/s: {launches / elapsed:.0f}   acknowledged (stored) runs/s: {launches / answered:.0f}   "
        f"RPC latency p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms"
    )


async def bench_fanout(base: str, ws_url: str, tasks: int, subscribers: int) -> None:
    run_id = f"fanout-{os.getpid()}"
    expected = 2 * tasks + 1
    sockets = await asyncio.gather(*(ws_connect(ws_url, [run_id]) for _ in range(subscribers)))
    finished_at: list[float] = []

    async def collect(ws: ClientConnection) -> list[int]:
        seqs: list[int] = []
        async for message in ws:
            frame = json.loads(message)
            if frame.get("type") == "event" and frame["payload"].get("runId") == run_id:
                seqs.append(frame["stateVersion"])
                if frame["event"] == "run.completed":
                    finished_at.append(time.perf_counter())
                    return seqs
        return seqs

    collectors = [asyncio.create_task(collect(ws)) for ws in sockets]
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        started = time.perf_counter()
        response = await http.post(
            "/v1/rpc/launchRun", json={"workflow": "many", "runId": run_id, "input": {"tasks": tasks}}
        )
        assert response.status_code == 200, response.text
        results = await asyncio.wait_for(asyncio.gather(*collectors), timeout=300)
    elapsed = max(finished_at) - started
    complete = all(len(r) == expected and r == sorted(r) and len(set(r)) == expected for r in results)
    same = all(r == results[0] for r in results)
    print(f"one run with {expected} events to {subscribers} WebSocket subscribers:")
    print(
        f"  events/s delivered: {subscribers * expected / elapsed:.0f} ({elapsed:.2f} s for the run)   "
        f"every subscriber got every event in order: {complete and same}"
    )
    await asyncio.gather(*(ws.close() for ws in sockets))


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def bench_connect(ws_url: str, pid: int, label: str, count: int = 200) -> None:
    """Server CPU and latency of one connect (challenge, connect, hello snapshot), sequentially."""
    latencies = []
    before = cpu_ms(pid)
    for _ in range(count):
        start = time.perf_counter()
        ws = await ws_connect(ws_url)
        latencies.append((time.perf_counter() - start) * 1000)
        await ws.close()
    used = cpu_ms(pid) - before
    latencies.sort()
    print(
        f"connect with {label}: server CPU {used / count:.2f} ms per connect, "
        f"latency p50 {latencies[count // 2]:.2f} ms"
    )


def seed_finished_runs(db: str, count: int) -> None:
    """Store ``count`` finished runs directly, to show that connect cost does not grow with them."""
    store = Store(db)
    with store.write() as tx:
        for i in range(count):
            tx.insert_run(
                run_id=f"seed-{i}",
                workflow_name="one",
                status="finished",
                created_at_ms=i,
                config_json='{"workflowKey": "one"}',
            )
    store.close()


async def bench_idle(ws_url: str, pid: int, idle: int) -> None:
    await asyncio.sleep(1)
    before = rss_kib(pid)
    sockets = []
    for start in range(0, idle, 100):
        sockets += await asyncio.gather(*(ws_connect(ws_url) for _ in range(min(100, idle - start))))
    await asyncio.sleep(1)
    after = rss_kib(pid)
    print(f"{idle} idle authenticated WebSocket connections:")
    print(f"  server RSS {before} KiB -> {after} KiB: {(after - before) / idle:.1f} KiB per connection")
    await asyncio.gather(*(ws.close() for ws in sockets))


async def main(args: argparse.Namespace) -> None:
    async with child_gateway(__file__, "smithers-bench-") as child:
        base, ws_url = child.base, child.ws_url
        await bench_rpc(base, child.pid, args.rpc_seconds)
        await bench_connect(ws_url, child.pid, "0 runs stored")
        await bench_launch(base, ws_url, args.launches, args.clients)
        await bench_connect(ws_url, child.pid, f"{args.launches} runs stored")
        seed_finished_runs(child.db, 5000)
        await bench_connect(ws_url, child.pid, f"{args.launches + 5000} runs stored")
        await bench_fanout(base, ws_url, args.tasks, args.subscribers)
        await bench_idle(ws_url, child.pid, args.idle)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--launches", type=int, default=800)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rpc-seconds", type=float, default=4.0)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.db)
    else:
        asyncio.run(main(options))
