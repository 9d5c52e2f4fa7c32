"""What the fake CLIs share: the scenario of the test, one turn per invocation, and a call log.

``$FAKE_AGENT_SCENARIO`` names a JSON file ``{"log": PATH, "turns": [TURN, ...]}``. Invocation n
(counted by the lines of the log, where each appends its argv and working directory) plays turn
``min(n, len - 1)``. A turn: ``text`` (the answer), ``tools`` (``[{"name", "input", "ok"}]``),
``usage`` (``{"in", "out"}``), ``error`` (fail with this message), ``exit`` (the exit status),
``stderr`` (written to standard error), ``child`` (start ``sleep 600`` in the process group and
write its pid to this file), ``sleep`` (seconds to hang after streaming).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any


def turn() -> tuple[dict[str, Any], int]:
    with open(os.environ["FAKE_AGENT_SCENARIO"]) as f:
        scenario = json.load(f)
    log = scenario["log"]
    index = 0
    if os.path.exists(log):
        with open(log) as f:
            index = sum(1 for _ in f)
    with open(log, "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    turns = scenario["turns"]
    return turns[min(index, len(turns) - 1)], index


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def side_effects(step: dict[str, Any]) -> None:
    """Standard error, a child process left running, a hang: what a test asks of this turn."""
    if step.get("stderr"):
        sys.stderr.write(step["stderr"])
        sys.stderr.flush()
    if step.get("child"):
        child = subprocess.Popen(["sleep", "600"])
        with open(step["child"], "w") as f:
            f.write(str(child.pid))
    if step.get("sleep"):
        time.sleep(step["sleep"])


def arg(name: str) -> str | None:
    """The value after ``name`` in argv, if any."""
    args = sys.argv[1:]
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None
