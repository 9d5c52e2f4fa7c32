"""What clients that stop reading cost a gateway in memory (default options: ``maxBufferedBytes``
8 MiB per WebSocket client).

    .venv/bin/python bench/probe_memory.py [--clients 100] [--runs 60] [--pad 2000] [--seconds 30]
                                           [--rss-cap-mib 2048] [--only ws|http]

A token-mode gateway runs in a child process (its memory is read from /proc/<pid>/status) with
``--runs`` stored runs whose rows are ~``--pad`` bytes, so that ``listRuns {"limit": 100}`` answers
are large (~150 KB with the defaults). Then, each phase with a fresh gateway:

1. WebSocket: ``--clients`` authenticated clients, each with a 4 KiB receive buffer, send
   ``listRuns`` requests as fast as the gateway takes them and read nothing;
2. the same, but each client sends only as many requests as leave its answers just under its
   8 MiB budget: none is closed, so this is the most they can hold together;
3. HTTP: ``--clients`` keep-alive connections, each pipelining ``POST /rpc`` ``listRuns`` requests
   without reading a single response.

A client stops writing when the gateway resets its connection (``reset``: the slow-consumer
close, 1013), when a write waits more than 2 s (``stalled``: the gateway is not reading it, being
busy with other clients or having paused it), or after ``--seconds`` (``deadline``). For safety
every client connection is dropped as soon as the gateway's RSS passes ``--rss-cap-mib``. Once the
gateway is idle again (it has worked through what it read; at most ``--seconds`` from the start),
the probe prints the gateway's RSS before, its peak during (the kernel's VmHWM, reset before the
phase), how the clients' writing ended and the state of their connections, the slow-consumer
closes counted by ``smithers_gateway_ws_slow_consumer_closes_total``; then it drops every client
and prints the RSS once the gateway is idle again, after a ``gc.collect()`` in the gateway (memory
that only the cycle collector frees) and then after glibc's ``malloc_trim(0)`` (memory that was
freed but kept by the allocator). A run with the defaults takes about a minute (a few more
against a gateway that keeps reading pipelined HTTP requests; ``--rss-cap-mib`` bounds the damage).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import gc
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from child_gateway import HOST, Child, child_gateway  # noqa: E402
from ws_load import client_frame, read_frame  # noqa: E402

from smithers.gateway.protocol import DEFAULT_MAX_BUFFERED_BYTES  # noqa: E402
from smithers.store.rows import dumps, now_ms  # noqa: E402
from smithers.store.store import Store  # noqa: E402

TOKEN = "probe-token"
MIB = 1024 * 1024
CLIENT_RCVBUF = 4096
STALL_S = 2.0
SLOW_CLOSES = "smithers_gateway_ws_slow_consumer_closes_total"


# -- the child ----------------------------------------------------------------------------------------
def serve(port: int, db: str) -> None:
    """Child process: a token-mode gateway with default limits, as ``smithers serve`` runs it."""
    from smithers.cli.gateway_cmds import event_loop_runner
    from smithers.gateway.server import Gateway

    watch_gc_requests(db)
    auth = {"mode": "token", "tokens": {TOKEN: {"role": "operator", "scopes": ["*"]}}}
    gateway = Gateway.for_workflows([], db=db, auth=auth)
    event_loop_runner()(gateway.serve(HOST, port))


def watch_gc_requests(db: str) -> None:
    """When ``<db>.gc`` appears: ``gc.collect()`` (file content ``gc``) or glibc's ``malloc_trim(0)``
    (``trim``); the result goes to ``<db>.gc.done``."""
    trigger, done = Path(db + ".gc"), Path(db + ".gc.done")

    def trim() -> int:
        try:
            return int(ctypes.CDLL(None).malloc_trim(0))
        except (OSError, AttributeError):
            return -1  # not glibc

    def loop() -> None:
        while True:
            if trigger.exists():
                request = trigger.read_text()
                trigger.unlink()
                partial = Path(db + ".gc.partial")
                partial.write_text(str(gc.collect() if request == "gc" else trim()))
                partial.rename(done)
            time.sleep(0.05)

    threading.Thread(target=loop, name="gc-on-request", daemon=True).start()


# -- measuring the child ---------------------------------------------------------------------------------
def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss(pid: int) -> int:
    return status_kib(pid, "VmRSS") * 1024


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak RSS (VmHWM) starts again from VmRSS


def settled_rss(pid: int) -> int:
    last = rss(pid)
    for _ in range(30):
        time.sleep(0.1)
        now = rss(pid)
        if now == last:
            break
        last = now
    return last


async def in_child(child: Child, request: str) -> int:
    """``gc.collect()`` (``gc``: the number of objects it found unreachable) or ``malloc_trim(0)``
    (``trim``: 1 if memory was given back, -1 without glibc) in the child."""
    done = Path(child.db + ".gc.done")
    done.unlink(missing_ok=True)
    asking = Path(child.db + ".gc.asking")
    asking.write_text(request)
    asking.rename(child.db + ".gc")  # the child sees the request whole
    for _ in range(1200):
        if done.exists():
            return int(done.read_text())
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the gateway did not run {request}")


def seed_runs(db: str, runs: int, pad: int) -> None:
    store = Store(db)
    base = now_ms()
    with store.write() as tx:
        for index in range(runs):
            tx.insert_run(
                run_id=f"probe-{index:04d}",
                workflow_name="probe",
                status="finished",
                created_at_ms=base + index,
                config_json=dumps({"workflowKey": "probe", "input": {"pad": "x" * pad}}),
            )
    store.close()


def mib(value: float) -> str:
    return f"{value / MIB:,.1f} MiB"


# -- clients ---------------------------------------------------------------------------------------------
async def small_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer (hence TCP window) is small: unread bytes wait in the gateway."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    return await asyncio.open_connection(sock=sock)


async def ws_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade, read the challenge, connect, read the hello; then stop reading for good."""
    reader, writer = await small_connection(port)
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await read_frame(reader)  # connect.challenge
    params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "probe"}, "auth": {"token": TOKEN}}
    writer.write(client_frame(json.dumps({"type": "req", "id": "c", "method": "connect", "params": params}).encode()))
    hello = json.loads(await read_frame(reader))
    assert hello.get("ok"), hello
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    return reader, writer


class Flood:
    """Clients that write ``message`` over and over and read nothing."""

    def __init__(self, pid: int, seconds: float, cap: int, writers: list[asyncio.StreamWriter]):
        self.pid = pid
        self.writers = writers
        self.deadline = time.monotonic() + seconds
        self.cap = cap
        self.capped = False
        self.watching = True
        self.writes: Counter[str] = Counter()

    async def run(self, writer: asyncio.StreamWriter, message: bytes, count: int | None) -> None:
        """Write until the connection is reset, a write waits :data:`STALL_S`, the deadline or the cap;
        or, with ``count``, write ``count`` messages at once and stop (``sent``)."""
        chunk = message * max(1, 16384 // len(message))
        outcome = "deadline"
        try:
            if count is not None:
                writer.write(message * count)
                await asyncio.wait_for(writer.drain(), self.deadline - time.monotonic())
                self.writes["sent"] += 1
                return
            while time.monotonic() < self.deadline and not self.capped:
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), STALL_S)
                except TimeoutError:
                    outcome = "stalled"
                    break
        except (ConnectionError, OSError):
            outcome = "reset"
        if self.capped and outcome == "deadline":
            outcome = "capped"
        self.writes[outcome] += 1

    async def watch(self) -> None:
        """Every 50 ms: once the gateway's RSS passes the cap, drop every client connection (what
        their kernel buffers hold would otherwise still reach the gateway)."""
        while self.watching:
            if not self.capped and rss(self.pid) > self.cap:
                self.capped = True
                for writer in self.writers:
                    writer.transport.abort()
            await asyncio.sleep(0.05)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_idle(pid: int, limit_s: float) -> str:
    """Wait until the gateway uses under 5 % of a CPU over 0.5 s (it has worked through what it read)."""
    started = time.monotonic()
    last = cpu_s(pid)
    while time.monotonic() - started < limit_s:
        await asyncio.sleep(0.5)
        now = cpu_s(pid)
        if now - last < 0.025:
            return f"idle after {time.monotonic() - started:.1f} s"
        last = now
    return f"still busy after {time.monotonic() - started:.1f} s"


TCP_STATES = {1: "open", 7: "closed by the gateway", 8: "closed by the gateway"}  # ESTABLISHED, CLOSE, CLOSE_WAIT


def tcp_state(writer: asyncio.StreamWriter) -> str:
    """The client side's TCP state, from TCP_INFO (asyncio only notices a reset when it writes)."""
    if writer.transport.is_closing():  # asyncio saw the reset
        return "closed by the gateway"
    state = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return TCP_STATES.get(state, f"TCP state {state}")


async def phase(
    label: str, args: argparse.Namespace, open_one: Any, message: bytes, under_budget: bool = False
) -> None:
    """One phase on a fresh gateway; ``under_budget``: each client sends only as many requests as
    leave its answers just under ``maxBufferedBytes`` (so none is closed and all hold memory at once)."""
    async with child_gateway(__file__, "smithers-probe-") as child:
        seed_runs(child.db, args.runs, args.pad)
        headers = {"authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=child.base, headers=headers, timeout=120) as http:
            for _ in range(4):
                answer = await http.post("/rpc", json={"method": "listRuns", "params": {"limit": 100}})
                assert answer.status_code == 200, answer.text
            closes_before = await metric(http, SLOW_CLOSES)
            before = settled_rss(child.pid)
            reset_peak(child.pid)
            port = int(child.base.rsplit(":", 1)[1])
            clients = await asyncio.gather(*(open_one(port) for _ in range(args.clients)))
            writers = [writer for _, writer in clients]
            flood = Flood(child.pid, args.seconds, args.rss_cap_mib * MIB, writers)
            watcher = asyncio.create_task(flood.watch())
            started = time.monotonic()
            count = DEFAULT_MAX_BUFFERED_BYTES // len(answer.content) - 1 if under_budget else None
            await asyncio.gather(*(flood.run(writer, message, count) for writer in writers))
            writing = time.monotonic() - started
            busy = await until_idle(child.pid, max(2.0, args.seconds - writing))
            flood.watching = False
            await watcher
            peak = status_kib(child.pid, "VmHWM") * 1024
            states = Counter("dropped at the cap" if flood.capped else tcp_state(writer) for writer in writers)
            closes = await metric(http, SLOW_CLOSES) - closes_before
            for writer in writers:
                writer.transport.abort()
            await asyncio.sleep(1)
            gone = await until_idle(child.pid, 120)
            await asyncio.sleep(2)
            after = settled_rss(child.pid)
            collected = await in_child(child, "gc")
            after_gc = settled_rss(child.pid)
            trimmed = await in_child(child, "trim")
            after_trim = settled_rss(child.pid)

    def counts(counter: Counter[str]) -> str:
        return ", ".join(f"{n} {name}" for name, n in counter.most_common())

    print(f"{label}: {args.clients} clients that read nothing; one listRuns answer is {len(answer.content):,} bytes")
    if count is not None:
        print(f"  each client sent {count} requests: {mib(count * len(answer.content))} of answers")
    print(f"  gateway RSS before:             {mib(before)}")
    print(f"  peak (VmHWM) during:            {mib(peak)} (+{mib(peak - before)})")
    print(f"  the clients wrote for:          {writing:.1f} s; then the gateway was {busy}")
    print(f"  how the clients' writing ended: {counts(flood.writes)}")
    print(f"  their connections then:         {counts(states)}")
    print(f"  closed as slow consumers:       {closes:.0f} (metric {SLOW_CLOSES})")
    print(f"  RSS once they are gone:         {mib(after)} (+{mib(after - before)}; the gateway was {gone})")
    print(f"  after a gc.collect() in it:     {mib(after_gc)} (+{mib(after_gc - before)}, {collected:,} objects freed)")
    if trimmed >= 0:
        print(f"  then after malloc_trim(0):      {mib(after_trim)} (+{mib(after_trim - before)})")
    if flood.capped:
        print(
            f"  !! every client connection was dropped when the gateway's RSS passed --rss-cap-mib {args.rss_cap_mib}"
        )


async def metric(http: httpx.AsyncClient, name: str) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def http_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await small_connection(port)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    return reader, writer


async def main(args: argparse.Namespace) -> None:
    if args.only in (None, "ws"):
        message = client_frame(
            json.dumps({"type": "req", "id": "x", "method": "listRuns", "params": {"limit": 100}}).encode()
        )
        await phase("WebSocket, requests as fast as the gateway reads them", args, ws_client, message)
        await phase("WebSocket, requests for just under 8 MiB of answers", args, ws_client, message, True)
    if args.only in (None, "http"):
        body = json.dumps({"method": "listRuns", "params": {"limit": 100}}).encode()
        message = (
            f"POST /rpc HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        await phase("HTTP keep-alive, pipelined", args, http_client, message)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--pad", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0, help="longest the clients flood the gateway")
    parser.add_argument("--rss-cap-mib", type=int, default=2048, help="stop every client past this gateway RSS")
    parser.add_argument("--only", choices=("ws", "http"))
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.db)
    else:
        asyncio.run(main(options))
