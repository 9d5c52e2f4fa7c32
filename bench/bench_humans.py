"""Humans-in-the-loop benchmarks on 127.0.0.1 (the gateway runs in a child process).

    .venv/bin/python bench/bench_humans.py [--runs 200] [--fanin 500] [--clients 16]

Prints:
  1. decision latency for an approve-then-one-task workflow: ``--runs`` runs are started and wait
     for their approval; then, one at a time, ``submitApproval`` over HTTP and the time until the
     run's ``run.completed`` reaches a WebSocket watcher — p50/p99 measured from the RPC response
     (and, for reference, from the moment the request was sent);
  2. signal fan-in: ``--fanin`` runs wait on one event name; one ``submitSignal`` each, sent by
     ``--clients`` concurrent HTTP clients; total time from the first signal until every run has
     finished (its ``run.completed`` seen by the watcher).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from smithers import Approval, Sequence, Task, WaitForEvent, workflow  # noqa: E402
from smithers.gateway.server import Gateway  # noqa: E402

TOKEN = "bench-token"
LAUNCH_CLIENTS = 16
TIMEOUT_S = 300


class Out(BaseModel):
    n: int


@workflow("ship")
def ship(ctx: Any) -> Any:
    return Sequence(Approval("ok", title="Ship it?"), Task("after", output=Out, value=Out(n=1)))


@workflow("fanin")
def fanin(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Out, value=Out(n=2)))


def serve(port: int, db: str) -> None:
    """Child process: a token-mode gateway with the two workflows."""
    auth = {"mode": "token", "tokens": {TOKEN: {"role": "operator", "scopes": ["*"], "userId": "bench"}}}
    gateway = Gateway.for_workflows([ship, fanin], db=db, auth=auth)
    asyncio.run(gateway.serve(HOST, port))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Watcher:
    """One WebSocket connection without a filter: when each run's approval/completion was seen."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.requested: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.statuses: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> Watcher:
        ws = await connect(url, max_size=None, open_timeout=30, ping_interval=None)
        await ws.recv()  # connect.challenge
        params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "bench"}, "auth": {"token": TOKEN}}
        await ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": params}))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "res":
                assert frame["ok"], frame
                return cls(ws)

    async def _read(self) -> None:
        async for message in self.ws:
            frame = json.loads(message)
            if frame.get("type") != "event":
                continue
            now = time.perf_counter()
            run_id = frame["payload"].get("runId")
            if frame["event"] == "approval.requested":
                self.requested[run_id] = now
            elif frame["event"] == "run.completed":
                self.completed.setdefault(run_id, now)
                self.statuses[run_id] = frame["payload"]["status"]
            else:
                continue
            self._changed.set()

    async def until(self, predicate: Any) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT_S)

    async def close(self) -> None:
        self._task.cancel()
        await self.ws.close()


async def launch_many(http: httpx.AsyncClient, workflow_key: str, count: int) -> list[str]:
    ids: list[str] = []
    remaining = iter(range(count))

    async def client() -> None:
        for _ in remaining:
            response = await http.post("/v1/rpc/launchRun", json={"workflow": workflow_key})
            assert response.status_code == 200, response.text
            ids.append(response.json()["payload"]["runId"])

    await asyncio.gather(*(client() for _ in range(LAUNCH_CLIENTS)))
    return ids


async def bench_decisions(http: httpx.AsyncClient, watcher: Watcher, runs: int) -> None:
    ids = await launch_many(http, "ship", runs)
    await watcher.until(lambda: all(r in watcher.requested for r in ids))
    # the approval row is written with the event; make sure every run has suspended before deciding
    while True:
        response = await http.post("/v1/rpc/listRuns", json={"status": "waiting-approval", "limit": 1000})
        if len({r["runId"] for r in response.json()["payload"]} & set(ids)) == len(ids):
            break
        await asyncio.sleep(0.05)
    from_response: list[float] = []
    from_request: list[float] = []
    for run_id in ids:
        sent = time.perf_counter()
        response = await http.post("/v1/rpc/submitApproval", json={"runId": run_id, "nodeId": "ok", "approved": True})
        answered = time.perf_counter()
        assert response.status_code == 200, response.text
        await watcher.until(lambda run_id=run_id: run_id in watcher.completed)
        done = watcher.completed[run_id]
        from_response.append((done - answered) * 1000)
        from_request.append((done - sent) * 1000)
    finished = sum(1 for r in ids if watcher.statuses.get(r) == "finished")
    print(f"decision latency, approve-then-one-task workflow, {runs} runs decided one at a time:")
    print(
        f"  submitApproval response -> run.completed: p50 {statistics.median(from_response):.1f} ms, "
        f"p99 {percentile(from_response, 0.99):.1f} ms"
    )
    print(
        f"  (request sent -> run.completed: p50 {statistics.median(from_request):.1f} ms, "
        f"p99 {percentile(from_request, 0.99):.1f} ms; runs finished: {finished}/{runs})"
    )


async def bench_fanin(http: httpx.AsyncClient, watcher: Watcher, runs: int, clients: int) -> None:
    ids = await launch_many(http, "fanin", runs)
    while True:
        response = await http.post("/v1/rpc/listRuns", json={"status": "waiting-event", "limit": 1000})
        if len({r["runId"] for r in response.json()["payload"]} & set(ids)) == len(ids):
            break
        await asyncio.sleep(0.05)
    remaining = iter(ids)

    async def client() -> None:
        for run_id in remaining:
            response = await http.post(
                "/v1/rpc/submitSignal", json={"runId": run_id, "signalName": "go", "data": {"n": 1}}
            )
            assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    signalled = time.perf_counter()
    await watcher.until(lambda: all(r in watcher.completed for r in ids))
    elapsed = max(watcher.completed[r] for r in ids) - started
    finished = sum(1 for r in ids if watcher.statuses.get(r) == "finished")
    print(f"signal fan-in: {runs} runs waiting on one event name, one submitSignal each ({clients} clients):")
    print(
        f"  all signals answered after {signalled - started:.2f} s; all runs finished after {elapsed:.2f} s "
        f"({runs / elapsed:.0f} runs/s; finished: {finished}/{runs})"
    )


async def main(args: argparse.Namespace) -> None:
    async with child_gateway(__file__, "smithers-bench-humans-") as child:
        limits = httpx.Limits(max_connections=max(args.clients, LAUNCH_CLIENTS))
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=child.base, headers=headers, limits=limits, timeout=60) as http:
            watcher = await Watcher.open(child.ws_url)
            try:
                await bench_decisions(http, watcher, args.runs)
                await bench_fanin(http, watcher, args.fanin, args.clients)
            finally:
                await watcher.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--fanin", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.db)
    else:
        asyncio.run(main(options))
