"""Crash probe: SIGKILL a real ``smithers serve`` at random moments under load, then check nothing was lost.

    .venv/bin/python bench/probe_crash.py [--kills 8] [--launches 400] [--clients 8] [--seed N]
                                          [--uptime 0.3 3.0] [--downtime 0.0 0.5] [--early-kills 0.25]
                                          [--settle 90] [--keep]

The gateway serves ``tests/fixtures/gw_crash.py`` (plain tasks, an approval, a signal wait, an async
sleep) on a fresh SQLite database in a temporary directory. ``--clients`` concurrent clients (half
HTTP, half WebSocket) launch ``--launches`` runs, decide the approvals they ask for and send the
signals they wait for, while the gateway is SIGKILLed ``--kills`` times, each after a random uptime
(``--uptime`` seconds after it listens; a share ``--early-kills`` of them while it is still starting
and resuming the runs it found interrupted), and started again on the same database. Answers lost in a
crash are retried (a launch with the same run id). Once every run has settled (or ``--settle``
seconds after the last start) the last gateway is stopped and the database is compared with what
was acknowledged and with the tasks' side-effect file.

Prints the counts (acknowledged runs, runs lost after SIGKILL, runs finished more than once, task
side effects repeated after being recorded finished, decisions and signals lost) and every problem
found. Exits 1 on any problem (or when the runs did not settle), 0 otherwise. The workload is drawn
from ``--seed`` (printed; random by default), the crash moments depend on timing as well. With
``--keep`` the work directory (database, side-effect file, gateway logs) is kept and printed.

The harness is the one of ``tests/gateway/test_crash_recovery.py`` (which runs it small).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway.test_crash_recovery import Scenario, run_scenario  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs (each followed by a restart)")
    parser.add_argument("--launches", type=int, default=400, help="runs to launch (distinct run ids)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, half HTTP, half WebSocket")
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default: random, printed)")
    parser.add_argument("--uptime", type=float, nargs=2, default=(0.3, 3.0), metavar=("MIN", "MAX"))
    parser.add_argument("--downtime", type=float, nargs=2, default=(0.0, 0.5), metavar=("MIN", "MAX"))
    parser.add_argument(
        "--early-kills", type=float, default=0.25, help="share of SIGKILLs sent while the gateway starts"
    )
    parser.add_argument("--settle", type=float, default=90.0, help="seconds allowed after the last start")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    scenario = Scenario(
        kills=args.kills,
        launches=args.launches,
        clients=args.clients,
        uptime_s=tuple(args.uptime),
        downtime_s=tuple(args.downtime),
        early_kills=args.early_kills,
        settle_s=args.settle,
        seed=seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="smithers-crash-"))
    try:
        print(
            f"crash probe: seed {seed}, {args.kills} SIGKILLs, {args.launches} launches, {args.clients} clients",
            flush=True,
        )
        report = asyncio.run(run_scenario(scenario, workdir, str(workdir / "crash.db")))
        print(report.summary())
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = bool(report.problems()) or not report.settled
    print("FAIL" if failed else "OK: nothing lost, nothing finished twice, no finished task ran again")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
