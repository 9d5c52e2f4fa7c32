"""``smithers serve --workers N``: N gateway processes on one port and one database.

The parent starts N ``smithers serve`` children that each bind the port with ``SO_REUSEPORT`` (the
kernel spreads connections over them) and serve every run of the database: each executes the runs
it starts or takes over, and forwards the events of all (docs/protocol.md#several-gateways-on-one-database).
It passes ``SIGINT``/``SIGTERM`` on to them, starts again a child that dies, and exits when they
have all stopped.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

RESTART_DELAY_S = 1.0
STOP_GRACE_S = 30.0


def _command(target: str, host: str, port: int, db: str | None, console: bool) -> list[str]:
    argv = [sys.executable, "-m", "smithers.cli.main", "serve", target, "--host", host, "--port", str(port)]
    argv.append("--reuse-port")
    if db:
        argv += ["--db", db]
    if console:
        argv.append("--console")
    return argv


def run_workers(count: int, target: str, host: str, port: int, db: str | None, console: bool) -> int:
    """Supervise ``count`` workers until a signal stops them; returns the exit status."""
    argv = _command(target, host, port, db, console)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = [subprocess.Popen(argv) for _ in range(count)]
    print(f"smithers gateway: {count} workers on http://{host}:{port} (pids {', '.join(str(c.pid) for c in children)})",
          file=sys.stderr, flush=True)  # fmt: skip
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(f"smithers gateway: worker {child.pid} exited with {child.returncode}; starting another",
                      file=sys.stderr, flush=True)  # fmt: skip
                time.sleep(RESTART_DELAY_S)
                children[index] = subprocess.Popen(argv)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0
