"""Several gateways on one database: runs/s, cross-gateway event latency, takeover time.

    .venv/bin/python bench/bench_scaleout.py --pg URL [--runs 600] [--latency-runs 200] [--takeovers 5]

Every gateway is a real ``smithers serve`` process on 127.0.0.1 serving one workflow of one task.

* **runs/s**: ``--runs`` runs launched over HTTP on 32 keep-alive connections (round-robin over the
  ports of separate gateways; the kernel spreads those to one port over its ``--workers``
  processes), one launch in flight on each, until every run is stored finished; for 1, 2 and 3
  gateways on PostgreSQL and ``--workers 1`` and ``2`` on SQLite.
* **latency**: gateways A and B on PostgreSQL; runs launched on A one at a time (20 a second), whose
  task returns the wall clock when it ends; a WebSocket client of B times each ``node.finished`` of
  those runs (p50/p99).
* **takeover**: gateways A and B; a run with a long task starts on A; A is SIGKILLed; the time until
  B owns the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from scratch_pg import drop_created, fresh_pg
from websockets.sync.client import connect

from smithers.store.store import Store

SMITHERS = str(Path(sys.executable).parent / "smithers")
FLOW = """
import time
from smithers import Sequence, Task, workflow

@workflow("one")
def one(ctx):
    return Sequence(Task("t", run=lambda c: {"t": time.time()}))

@workflow("slow")
def slow(ctx):
    return Sequence(Task("t", run=lambda c: time.sleep(30) or {"t": time.time()}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateways:
    """``smithers serve`` processes (one with ``--workers N``, or N separate ones)."""

    def __init__(self, db: str, workdir: Path, count: int, workers: int = 1):
        Store(db).close()
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {k: v for k, v in os.environ.items() if k != "SMITHERS_DB"}
        for _ in range(count):
            port = free_port()
            argv = [SMITHERS, "serve", "flow.py", "--port", str(port), "--db", db]
            if workers > 1:
                argv += ["--workers", str(workers)]
            log = (workdir / f"gw-{port}.log").open("w")
            self.procs.append(subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT))
            self.ports.append(port)
        for port in self.ports:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway on {port} did not start")
                time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker listening

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def launch_all(ports: list[int], count: int, workflow: str = "one", connections: int = 32) -> list[str]:
    """``count`` launches over ``connections`` keep-alive connections (one launch in flight on
    each), the connections round-robin over ``ports``; the kernel spreads those to one port over its
    ``--workers`` processes. A minimal HTTP/1.1 client: a full-featured one costs more CPU than the
    gateways it measures on two cores."""
    ids: list[str] = []
    remaining = iter(range(count))
    body = json.dumps({"method": "launchRun", "params": {"workflow": workflow}}).encode()
    request = (
        f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def client(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in remaining:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(v.split(b":")[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length"))
            answer = await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200"), answer
            ids.append(json.loads(answer)["payload"]["runId"])
        writer.close()

    await asyncio.gather(*(client(ports[i % len(ports)]) for i in range(connections)))
    return ids


def wait_finished(store: Store, ids: list[str], timeout: float = 600) -> None:
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.read() as tx:
            done = {r["run_id"] for r in tx.list_runs_in(["finished"], limit=len(ids) * 2)}
        if wanted <= done:
            return
        time.sleep(0.05)
    raise RuntimeError("runs did not finish")


def runs_per_second(db: str, workdir: Path, gateways: int, workers: int, runs: int) -> float:
    served = Gateways(db, workdir, gateways, workers)
    store = Store(db)
    try:
        started = time.perf_counter()
        ids = asyncio.run(launch_all(served.ports, runs))
        wait_finished(store, ids)
        return runs / (time.perf_counter() - started)
    finally:
        store.close()
        served.stop()


def latency(db: str, workdir: Path, runs: int) -> tuple[float, float, int]:
    served = Gateways(db, workdir, 2)
    a, b = served.ports
    client = connect(f"ws://127.0.0.1:{b}/", open_timeout=10, max_size=None, legacy=True)
    got: dict[str, float] = {}
    done = threading.Event()

    def read() -> None:  # on its own thread: arrivals are timed while the launches go on
        while not done.is_set():
            try:
                frame = json.loads(client.recv(timeout=0.5))
            except TimeoutError:
                continue
            if frame.get("type") == "event" and frame["event"] == "node.finished":
                got.setdefault(frame["payload"]["runId"], time.time())

    try:
        client.recv(timeout=10)  # connect.challenge
        hello = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "bench", "version": "1", "platform": "py"}}
        client.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": hello}))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ids = []
        with httpx.Client(base_url=f"http://127.0.0.1:{a}", timeout=30) as http:
            for _ in range(runs):  # one at a time, 20 a second: the delay of the path, not of a queue
                reply = http.post("/rpc", json={"method": "launchRun", "params": {"workflow": "one"}})
                ids.append(reply.json()["payload"]["runId"])
                time.sleep(0.05)
        deadline = time.monotonic() + 120
        while not set(ids) <= got.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        reader.join(5)
        store = Store(db)
        delays = []
        with store.read() as tx:
            for run_id in ids:
                out = tx.get_output(run_id, "t", 0)
                if out is not None and run_id in got:
                    delays.append((got[run_id] - json.loads(out["payload_json"])["t"]) * 1000)
        store.close()
        delays.sort()
        return statistics.median(delays), delays[max(0, int(len(delays) * 0.99) - 1)], len(delays)
    finally:
        done.set()
        client.close()
        served.stop()


def takeover(db: str, workdir: Path) -> float:
    served = Gateways(db, workdir, 2)
    a = served.ports[0]
    store = Store(db)
    try:
        [run_id] = asyncio.run(launch_all([a], 1, "slow"))
        while True:
            row = store.get_run(run_id)
            if row and row["runtime_owner_id"]:
                owner = row["runtime_owner_id"]
                break
            time.sleep(0.02)
        time.sleep(0.5)
        served.procs[0].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        while True:
            row = store.get_run(run_id)
            if row and row["runtime_owner_id"] not in (None, owner):
                return time.perf_counter() - killed
            time.sleep(0.01)
    finally:
        store.close()
        served.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", default=os.environ.get("SMITHERS_TEST_PG_URL"))
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--takeovers", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "flow.py").write_text(FLOW)
        print(f"one-task runs, {args.runs} launched over HTTP, 32 in flight")
        for workers in (1, 2):
            rate = runs_per_second(f"sqlite:///{workdir}/w{workers}.db", workdir, 1, workers, args.runs)
            print(f"  sqlite    --workers {workers}: {rate:7.1f} runs/s", flush=True)
        if not args.pg:
            print("  (no --pg: PostgreSQL figures skipped)")
            return
        for count in (1, 2, 3):
            rate = runs_per_second(fresh_pg(args.pg), workdir, count, 1, args.runs)
            print(f"  postgres  {count} gateway{'s' if count > 1 else ' '}: {rate:7.1f} runs/s", flush=True)
        p50, p99, n = latency(fresh_pg(args.pg), workdir, args.latency_runs)
        print(f"cross-gateway latency (task ends on A -> node.finished on a client of B, {n} runs): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)  # fmt: skip
        times = [takeover(fresh_pg(args.pg), workdir) for _ in range(args.takeovers)]
        print(f"takeover after SIGKILL ({args.takeovers} times): median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s")  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    finally:
        drop_created()
