"""Memory of a real gateway process (``smithers serve`` in a subprocess) against clients that send
and never read (docs/protocol.md#close-behaviour; option ``maxBufferedBytes``).

What is measured: the server's resident set from ``/proc/<pid>/status``. ``VmHWM`` (the peak) is
reset through ``/proc/<pid>/clear_refs`` just before each flood, so the peak of a flood is exactly
the peak of the flood; where that reset is refused, the largest ``VmRSS`` sampled while flooding
stands in for it. Clients shrink ``SO_RCVBUF`` before connecting and never read after the
handshake, so the kernel holds only a few KiB on their side; what the server cannot send stays in
the server (its kernel send buffer, at most ``net.ipv4.tcp_wmem`` max = 4 MiB, is not in its RSS).

The bound: a flood may grow the server by at most ``maxBufferedBytes`` + :data:`MARGIN`.
:data:`MARGIN` is 32 MiB. Measured on the development machine (1 MiB budget, 1 000-run
``listRuns`` answers of ~750 KB): a WebSocket flood grows the server by 0.1–3 MiB before it is cut
off, and the idle server's RSS moves by about 1 MiB between samples. The rest of the margin is
headroom for what is not under the gateway's control: CPython's allocator (its 1 MiB arenas and
glibc's heap go back to the OS only when wholly free), the transient 1 000 row dicts while an
answer is built, uvloop's 256 KiB read buffer per readable socket, and a loaded test machine.
Without a cap the same flood grows the server by ~75 MB per 100 unread answers (and 1.68 GB was
seen for 2 000 of them), so the floods below could queue ten times the bound; each stops as soon
as the bound is crossed.

"Memory returns": CPython does not always give freed memory back to the OS, so "RSS back at the
baseline" alone would be a weak (or flaky) check. Each flood therefore runs twice on one server and
checks that (1) the server forgot the socket (``connections_active`` back to 0), (2) RSS after the
client closed is within :data:`MARGIN` of the baseline, and (3) the second flood peaks no higher
than the first plus :data:`MARGIN` (a leak of what the first one queued would add up).

Pings (answered by the WebSocket library itself) and pipelined HTTP requests are bounded too; their
docstrings give what they cost before they were.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from smithers.store.rows import dumps, now_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import OP_PING, OP_PONG, SMITHERS, frame, request, wait_for

pytestmark = pytest.mark.sqlite_only(
    reason="bounds on the transports' buffers; the store only supplies padded rows, read alike on both"
)

MIB: Final = 1024 * 1024
BUDGET: Final = 1 * MIB
"""``maxBufferedBytes`` of the gateway under test (the default is 8 MiB)."""
UNAUTHENTICATED_BUDGET: Final = 256 * 1024
"""What a socket that has not sent ``connect`` may leave unread (``min(maxBufferedBytes, 256 KiB)``)."""
MARGIN: Final = 32 * MIB
CLIENT_RCVBUF: Final = 4096
RUNS: Final = 1000
RUN_PAD: Final = 300
"""1 000 runs with this much padding make a ``listRuns {"limit": 1000}`` answer of ~750 KB."""
TOKEN: Final = "memory-reader"
OPTIONS_ENV: Final = "SMITHERS_MEMORY_TEST_OPTIONS"
SLOW_CONSUMER: Final = "smithers_gateway_ws_slow_consumer_closes_total"
ACTIVE: Final = 'smithers_gateway_connections_active{transport="ws"}'
FLOOD_DEADLINE_S: Final = 20.0
IDLE_TICKS: Final = 1
"""CPU clock ticks (10 ms) an idle server may spend in the time :meth:`Served.settle` waits."""

GATEWAY_SOURCE: Final = '''"""The gateway of test_memory_bounds.py; options (JSON) from the environment."""
import json
import os

from smithers import Gateway

gateway = Gateway.from_options(os.environ.get("SMITHERS_DB"), json.loads(os.environ["{env}"]))
'''.replace("{env}", OPTIONS_ENV)


class Served:
    """``smithers serve`` in a subprocess: its address, memory and metrics."""

    def __init__(self, workdir: Path, db: str, options: dict[str, Any]):
        script = workdir / "memory_gateway.py"
        script.write_text(GATEWAY_SOURCE)
        env = dict(os.environ)
        env.pop("SMITHERS_DB", None)
        env[OPTIONS_ENV] = json.dumps(options)
        self.err = workdir / "serve.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [SMITHERS, "serve", str(script), "--port", "0", "--db", db],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        self.url: str = wait_for(self._listening, "the gateway to listen", timeout=60)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.http = httpx.Client(base_url=self.url, timeout=20)
        self.peak_resettable = True

    def _listening(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}: {self.err.read_text()}")
        for line in self.err.read_text().splitlines():
            if "listening on http://127.0.0.1:" in line:
                return line.split("listening on ", 1)[1].split()[0]
        return None

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        """Make ``VmHWM`` the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            self.peak_resettable = False

    def peak(self) -> int:
        return self._status("VmHWM")

    def cpu_ticks(self) -> int:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def settle(self, seconds: float = 0.3) -> None:
        """Wait until the server has done everything it was sent (its CPU time stops moving)."""
        deadline = time.monotonic() + 15
        before = self.cpu_ticks()
        while time.monotonic() < deadline:
            time.sleep(seconds)
            now = self.cpu_ticks()
            if now - before <= IDLE_TICKS:
                return
            before = now

    def metric(self, series: str) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def seed_runs(db: str, count: int = RUNS, pad: int = RUN_PAD) -> None:
    """Finished runs (so none is in the hello snapshot), each carrying ``pad`` bytes of config."""
    store = Store(db)
    base = now_ms()
    try:
        with store.write() as tx:
            for index in range(count):
                tx.insert_run(
                    run_id=f"mem-{index:05d}",
                    workflow_name="memory",
                    status="finished",
                    created_at_ms=base + index,
                    config_json=dumps({"workflowKey": "memory", "pad": "p" * pad}),
                )
    finally:
        store.close()


@pytest.fixture
def serve(tmp_path: Path, databases: Databases) -> Iterator[Any]:
    started: list[Served] = []

    def start(**options: Any) -> Served:
        db = databases.new("memory")
        seed_runs(db)
        workdir = tmp_path / f"serve-{len(started)}"
        workdir.mkdir()
        auth = {"mode": "token", "tokens": {TOKEN: {"role": "viewer", "scopes": ["run:read"], "userId": "u:mem"}}}
        served = Served(workdir, db, {"auth": auth, "heartbeatMs": 3_600_000, **options})
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


# -- clients that never read -----------------------------------------------------------------------
def auth_header() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def open_socket(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)  # before connect: a small window
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_message(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """The next server frame (opcode, payload); ``buf`` keeps what was read beyond it."""

    def need(n: int) -> None:
        while len(buf) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the gateway")
            buf.extend(data)

    need(2)
    size, head = buf[1] & 0x7F, 2
    if size == 126:
        need(4)
        size, head = struct.unpack("!H", buf[2:4])[0], 4
    elif size == 127:
        need(10)
        size, head = struct.unpack("!Q", buf[2:10])[0], 10
    need(head + size)
    opcode, payload = buf[0] & 0x0F, bytes(buf[head : head + size])
    del buf[: head + size]
    return opcode, payload


def non_reading_ws(port: int, token: str | None = None) -> socket.socket:
    """A WebSocket past the handshake (and ``connect`` with ``token``); nothing is read after it."""
    sock = open_socket(port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf.extend(sock.recv(4096))
        status, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        buf = bytearray(rest)
        assert json.loads(read_message(sock, buf)[1])["event"] == "connect.challenge"
        if token is not None:
            params = {"minProtocol": 1, "maxProtocol": 1, "client": {"id": "memory"}, "auth": {"token": token}}
            sock.sendall(frame(request("connect", params, "c")))
            while True:
                message = json.loads(read_message(sock, buf)[1])
                if message.get("id") == "c":
                    assert message["ok"] is True, message
                    break
        assert not buf, "nothing unread is left behind"
        return sock
    except BaseException:
        sock.close()
        raise


@dataclass
class Flood:
    closed: bool
    """The gateway reset or closed the connection."""
    stalled: bool
    """The gateway stopped reading (a send timed out) without closing."""
    messages: int
    peak_growth: int
    """Highest RSS during the flood minus the baseline taken just before it."""
    baseline: int
    seconds: float


def flood(
    served: Served,
    sock: socket.socket,
    message: bytes,
    *,
    batch: int,
    max_messages: int,
    probe: bytes | None = None,
    send_timeout: float = 10,
    bound: int = BUDGET + MARGIN,
) -> Flood:
    """Send ``message`` in batches and never read, until the gateway cuts the connection.

    Stops early once the server grew by more than ``bound`` (broken; no point in exhausting the
    machine). After ``max_messages``, sends ``probe`` (a frame the gateway
    does not answer) to notice a close, until the server has nothing left to do.
    """
    served.settle()
    baseline = served.rss()
    served.reset_peak()
    sampled = baseline
    data = message * batch
    sent = 0
    closed = stalled = False
    sock.settimeout(send_timeout)
    started = time.monotonic()
    idle_ticks, idle_since = served.cpu_ticks(), time.monotonic()
    try:
        while time.monotonic() - started < FLOOD_DEADLINE_S:
            sampled = max(sampled, served.rss())
            if sampled - baseline > bound:
                break
            if sent < max_messages:
                sock.sendall(data)
                sent += batch
                continue
            if probe is None:
                break
            sock.sendall(probe)
            time.sleep(0.02)
            ticks = served.cpu_ticks()
            if ticks - idle_ticks > IDLE_TICKS:
                idle_ticks, idle_since = ticks, time.monotonic()
            elif time.monotonic() - idle_since > 0.5:
                break  # everything sent was handled and the connection is still open
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except TimeoutError:
        stalled = True
    seconds = time.monotonic() - started
    time.sleep(0.05)
    peak = served.peak() if served.peak_resettable else 0
    return Flood(closed, stalled, sent, max(peak, sampled, served.rss()) - baseline, baseline, seconds)


def report(name: str, floods: list[Flood]) -> str:
    return f"{name}: " + "; ".join(
        f"closed={f.closed} stalled={f.stalled} after {f.messages} messages in {f.seconds:.2f} s, "
        f"peak +{f.peak_growth / MIB:.1f} MiB over {f.baseline / MIB:.1f} MiB"
        for f in floods
    )


def forgotten(served: Served) -> None:
    wait_for(lambda: served.metric(ACTIVE) == 0, "the gateway to forget the socket", timeout=20)


def flood_twice(served: Served, token: str | None, message: bytes, budget: int, **how: Any) -> None:
    """Two floods by fresh non-reading WebSockets; each is cut off within ``budget`` + MARGIN,
    and memory returns after each (see the module docstring)."""
    rounds: list[Flood] = []
    after: list[int] = []
    for _ in range(2):
        sock = non_reading_ws(served.port, token)
        try:
            run = flood(served, sock, message, probe=frame(b"", OP_PONG), bound=budget + MARGIN, **how)
        finally:
            sock.close()
        rounds.append(run)
        described = report("floods", rounds)
        assert run.peak_growth <= budget + MARGIN, f"the server grew past the bound: {described}"
        assert run.closed, f"the non-reading client was not disconnected: {described}"
        forgotten(served)
        served.settle()
        after.append(served.rss())
    described = report("floods", rounds) + f"; RSS after close {[round(a / MIB, 1) for a in after]} MiB"
    first, second = rounds
    for settled in after:
        assert settled <= first.baseline + MARGIN, f"memory did not return after the close: {described}"
    assert second.baseline + second.peak_growth <= first.baseline + first.peak_growth + MARGIN, described
    assert served.metric(SLOW_CONSUMER) == 2, described
    assert served.http.get("/health").status_code == 200


# -- WebSocket -------------------------------------------------------------------------------------
def test_an_authenticated_client_that_never_reads_is_cut_off_within_its_budget(serve: Any) -> None:
    """A ``run:read`` token floods ``listRuns {"limit": 1000}`` (~750 KB answers) and never reads.

    Before the cap, 2 000 such requests grew a server from 108 MB to 1.68 GB. Each round sends up
    to 480 requests (~360 MB of answers if nothing were dropped).
    """
    served = serve(maxBufferedBytes=BUDGET)
    answer = served.http.post("/v1/rpc/listRuns", json={"limit": 1000}, headers=auth_header())
    assert len(answer.content) > 600_000
    flood_twice(served, TOKEN, frame(request("listRuns", {"limit": 1000}, "big")), BUDGET, batch=4, max_messages=480)


def test_a_socket_that_never_connects_and_never_reads_is_cut_off_within_256_kib(serve: Any) -> None:
    """No token: one-byte messages (each answered with an error frame), never read.

    Before the cap, 60 such sockets sending 95 000 frames each added 926 MB. Each round sends up to
    3 000 000 frames (~480 MB of 160-byte error frames if nothing were dropped).
    """
    served = serve(maxBufferedBytes=BUDGET)
    flood_twice(served, None, frame(b"x"), UNAUTHENTICATED_BUDGET, batch=4096, max_messages=3_000_000)


def test_a_client_that_pings_and_never_reads_is_cut_off(serve: Any) -> None:
    """Pings (125-byte payload) are answered with pongs by the WebSocket library; a client that
    never reads makes them pile up in the server like any other frame.

    64 000 pings make ~8 MB of pongs: beyond the 4 MiB the kernel takes and the 1 MiB budget.
    Before pongs counted against the budget, nothing was closed: with the default options and
    ``heartbeatMs: 0`` a 30 s ping flood grew the server by 72 MB (77 → 149 MB).
    """
    served = serve(maxBufferedBytes=BUDGET)
    sock = non_reading_ws(served.port, TOKEN)
    try:
        run = flood(served, sock, frame(b"p" * 125, OP_PING), batch=512, max_messages=64_000, probe=frame(b"", OP_PONG))
    finally:
        sock.close()
    assert run.peak_growth <= BUDGET + MARGIN, report("ping flood", [run])
    assert run.closed, report("ping flood", [run])


# -- HTTP ------------------------------------------------------------------------------------------
def test_an_http_client_that_pipelines_and_never_reads_is_bounded(serve: Any) -> None:
    """Keep-alive ``GET /health`` requests pipelined on one connection, no response read.

    The server may stop reading (TCP back-pressure; the send then stalls) or close the connection;
    either way it must not grow by more than ``maxBufferedBytes`` + :data:`MARGIN`.
    Before requests waiting for their turn stopped the reading (and more than 32 of them dropped
    the client): +700 MB in 10 s and +1.4 GB in 30 s (550 000 requests parsed and queued, ~2 KB
    each), the connection neither closed nor stalled.
    """
    served = serve(maxBufferedBytes=BUDGET)
    sock = open_socket(served.port)
    message = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        run = flood(served, sock, message, batch=512, max_messages=2_000_000, send_timeout=2)
    finally:
        sock.close()
    assert run.peak_growth <= BUDGET + MARGIN, report("pipelined HTTP", [run])
    assert run.closed or run.stalled, report("pipelined HTTP", [run])
    served.settle()
    assert served.http.get("/health").status_code == 200


def test_an_http_client_that_sends_large_bodies_and_never_reads_is_bounded(serve: Any) -> None:
    """Keep-alive requests with large bodies, none of the answers read: one declares more than
    ``maxBodyBytes`` (answered ``413`` at once, its body discarded as it arrives), the next carries
    exactly ``maxBodyBytes`` (read whole, answered ``400``). The gateway holds at most about one
    body at a time; a few KiB of answers wait in the kernel, so the client is not cut off."""
    served = serve(maxBufferedBytes=BUDGET)
    limit = 1024 * 1024  # maxBodyBytes (default)

    def post(body: bytes) -> bytes:
        return (
            b"POST /v1/rpc/listRuns HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    sock = open_socket(served.port)
    try:
        run = flood(served, sock, post(b"x" * (limit + 1)) + post(b"x" * limit), batch=1, max_messages=32)
    finally:
        sock.close()
    assert run.peak_growth <= BUDGET + MARGIN, report("large bodies", [run])
    assert not run.stalled, report("large bodies", [run])
    served.settle()
    assert served.http.get("/health").status_code == 200
