"""Engine overhead per agent call, with agents that answer at once.

    .venv/bin/python bench/bench_agents.py [--pg URL] [--steps 200] [--repeat 3]

Runs a Sequence of ``--steps`` tasks per kind and database, and prints per task (median of
``--repeat`` runs): wall ms, bytes stored (every column of every row of the run, as text) and
events written. Kinds:

* ``compute``: an async function returning the same JSON (the baseline: what any task costs);
* ``agent``: a plain agent (``async run(call)``) answering the JSON at once, with token usage
  (the engine's own agent overhead: prompt with the schema, JSON extraction and validation,
  ``TokenUsageReported``, the attempt's meta and ``response_text``);
* ``agent+stream``: the same agent streaming its answer in 200 pieces first (``NodeOutput``
  batching: a handful of events, not 200);
* ``model``: :class:`smithers.agents.Model` over pydantic-ai's ``TestModel`` (adds pydantic-ai's
  own cost per call).

The difference between a kind and ``compute`` is the overhead agent mode adds per call.

Then, with ``--ws`` pieces (default 20,000): a gateway on 127.0.0.1 (in this process, SQLite) runs
one agent task that streams that many 16-byte pieces as fast as it can (yielding every 100), and a
WebSocket client counts the ``task.output`` events it receives until ``run.completed``: events/s,
pieces/s and KB/s delivered, and whether the text arrived whole and in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from typing import Any

from pydantic import BaseModel
from websockets.sync.client import connect

import smithers
from smithers import Sequence, Task, workflow
from smithers.agents import AgentCall, AgentReply, AgentUsage, Model
from smithers.store import schema
from smithers.store.store import Store

ANSWER = '{"verdict": "fine", "score": 7}'


class Review(BaseModel):
    verdict: str
    score: int


class Instant:
    """An agent that answers at once (optionally streaming its answer in ``pieces`` parts first)."""

    def __init__(self, pieces: int = 0):
        self.id = "instant" if not pieces else "instant-stream"
        self.pieces = pieces

    async def run(self, call: AgentCall) -> AgentReply:
        if self.pieces:
            for index in range(self.pieces):
                call.on_output(f"token{index} ", "stdout")
        return AgentReply(ANSWER, usage=AgentUsage(input_tokens=120, output_tokens=12, model="instant"))


async def compute(ctx: smithers.Ctx) -> Any:
    return Review(verdict="fine", score=7)


def flow(kind: str, steps: int) -> smithers.Workflow:
    agent: Any = {
        "agent": Instant(),
        "agent+stream": Instant(pieces=200),
        "model": None,
    }.get(kind)
    if kind == "model":
        from pydantic_ai.models.test import TestModel

        agent = Model(TestModel(custom_output_text=ANSWER))

    @workflow(f"bench-{kind}")
    def wf(ctx: smithers.Ctx) -> Any:
        if kind == "compute":
            return Sequence(*[Task(f"t{i}", output=Review, run=compute) for i in range(steps)])
        return Sequence(
            *[Task(f"t{i}", output=Review, agent=agent, prompt=f"Review change {i}.") for i in range(steps)]
        )

    return wf


def stored_bytes(store: Store, run_id: str) -> tuple[int, int]:
    """Bytes of every column of every row of the run (as text), and its event count."""
    total = 0
    with store.read() as tx:
        for table in schema.metadata.sorted_tables:
            if "run_id" not in table.c:
                continue
            for row in tx.select(table, {"run_id": run_id}):
                total += sum(len(str(v).encode()) for v in row.values() if v is not None)
        count = len(tx.list_events(run_id, limit=None))
    return total, count


def measure(db: str, kind: str, steps: int) -> tuple[float, float, float]:
    store = Store(db)
    try:
        started = time.perf_counter()
        result = asyncio.run(smithers.run_async(flow(kind, steps), db=store))
        elapsed = time.perf_counter() - started
        assert result.status == "finished", result.error
        size, events = stored_bytes(store, result.run_id)
        return elapsed * 1000 / steps, size / steps, events / steps
    finally:
        store.close()


class Firehose:
    """Streams ``pieces`` 16-byte pieces as fast as it can, then answers."""

    id = "firehose"

    def __init__(self, pieces: int):
        self.pieces = pieces

    async def run(self, call: AgentCall) -> AgentReply:
        for index in range(self.pieces):
            call.on_output(f"<piece {index:07d}>", "stdout")
            if index % 100 == 99:
                await asyncio.sleep(0)
        return AgentReply(ANSWER)


def websocket_stream(pieces: int, tmp: str) -> None:
    from smithers.gateway.server import Gateway

    firehose = Firehose(pieces)

    @workflow("firehose")
    def firehose_flow(ctx: smithers.Ctx) -> Any:
        return Task("talk", output=Review, agent=firehose, prompt="talk")

    gateway = Gateway.for_workflows([firehose_flow], db=os.path.join(tmp, "ws.db"))
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(gateway.listen("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait(15)
    ws = connect(gateway.url.replace("http://", "ws://") + "/", max_size=None, legacy=True)
    ws.recv(10)  # the challenge
    hello = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "bench", "version": "1", "platform": "py"}}
    ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": hello}))
    ws.send(json.dumps({"type": "req", "id": "l", "method": "launchRun", "params": {"workflow": "firehose"}}))
    started = time.perf_counter()
    events = 0
    text: list[str] = []
    while True:
        frame = json.loads(ws.recv(120))
        if frame.get("type") != "event":
            continue
        if frame["event"] == "task.output":
            events += 1
            text.append(frame["payload"]["output"])
        elif frame["event"] == "run.completed":
            break
    elapsed = time.perf_counter() - started
    whole = "".join(text) == "".join(f"<piece {i:07d}>" for i in range(pieces))
    size = sum(len(t) for t in text)
    print(
        f"websocket: {pieces} pieces in {events} task.output events over {elapsed:.2f} s: "
        f"{events / elapsed:.0f} events/s, {pieces / elapsed:,.0f} pieces/s, {size / elapsed / 1024:,.0f} KB/s; "
        f"whole and in order: {whole}"
    )
    ws.close()
    asyncio.run_coroutine_threadsafe(gateway.close(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", help="a PostgreSQL URL to measure too")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ws", type=int, default=20_000, help="pieces streamed to a WebSocket client (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dbs = [("sqlite", lambda i: f"sqlite:///{os.path.join(tmp, f'b{i}.db')}")]
        if args.pg:
            dbs.append(("postgres", lambda i: args.pg))
        print(f"{args.steps} tasks in a Sequence, median of {args.repeat}")
        head = ("db", "kind", "ms/task", "+ms vs compute", "bytes/task", "+bytes", "events/task")
        print("{:9} {:13} {:>8} {:>15} {:>11} {:>8} {:>12}".format(*head))
        counter = 0
        for name, url in dbs:
            base: tuple[float, float] | None = None
            for kind in ("compute", "agent", "agent+stream", "model"):
                samples = []
                for _ in range(args.repeat):
                    counter += 1
                    samples.append(measure(url(counter), kind, args.steps))
                ms = statistics.median(s[0] for s in samples)
                size = statistics.median(s[1] for s in samples)
                events = statistics.median(s[2] for s in samples)
                if base is None:
                    base = (ms, size)
                extra_ms, extra_bytes = ms - base[0], size - base[1]
                print(f"{name:9} {kind:13} {ms:8.2f} {extra_ms:+15.2f} {size:11.0f} {extra_bytes:+8.0f} {events:12.1f}")
        if args.ws:
            websocket_stream(args.ws, tmp)


if __name__ == "__main__":
    main()
