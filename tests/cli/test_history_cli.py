"""Time travel through the ``smithers`` command line, on SQLite and PostgreSQL: ``frames``, ``tree``,
``output``, ``rewind`` and ``fork``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smithers import Store
from tests.cli.support import CliOn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Cli(CliOn):
    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ok("events", run_id, "--json").stdout.splitlines()]


@pytest.fixture
def cli(tmp_path: Path, db_url: str) -> Cli:
    return Cli(tmp_path, db_url)


def run_loop(cli: Cli, run_id: str) -> Any:
    """examples/loop.py: a loop that improves a value, then a verdict (12, 4 passes)."""
    return json.loads(cli.ok("run", str(EXAMPLES / "loop.py"), "--run-id", run_id, "-q").stdout)


def test_frames_tree_and_output(cli: Cli) -> None:
    assert run_loop(cli, "l1") == {"value": 12, "passes": 4}
    listed = [json.loads(line) for line in cli.ok("frames", "l1", "--json").stdout.splitlines()]
    numbers = [f["frameNo"] for f in listed]
    assert numbers == list(range(1, len(numbers) + 1)) and listed[0]["encoding"] == "keyframe"
    assert "keyframe" in cli.ok("frames", "l1").stdout.splitlines()[0]
    snapshot = json.loads(cli.ok("tree", "l1", "--json").stdout)
    assert snapshot["frameNo"] == numbers[-1] and snapshot["root"]["name"] == "loop"
    drawn = cli.ok("tree", "l1").stdout
    assert "improve task (compute) — finished" in drawn and "loop refine" in drawn
    first = json.loads(cli.ok("tree", "l1", "--frame", "1", "--json").stdout)
    assert first["root"]["id"] == snapshot["root"]["id"]  # ids are stable across frames
    for frame in ("999", "0"):  # frames are numbered from 1
        refused = cli("tree", "l1", "--frame", frame)
        assert refused.returncode != 0 and "FrameOutOfRange" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(cli.ok("output", "l1", "improve").stdout) == {"value": 12}
    earlier = json.loads(cli.ok("output", "l1", "improve", "--iteration", "0", "--json").stdout)
    assert earlier["status"] == "produced" and earlier["row"] == {"value": 3}
    assert earlier["schema"]["fields"][0] == {"name": "value", "type": "number", "optional": False, "nullable": False}
    missing = cli("output", "l1", "nope")
    assert missing.returncode == 4 and "NodeNotFound" in missing.stderr
    assert "Run not found" in cli("frames", "ghost").stderr


def test_a_waiting_node_has_no_output_yet(cli: Cli) -> None:
    proc = cli("run", str(EXAMPLES / "approval.py"), "--run-id", "a1", "-q")
    assert proc.returncode == 3, proc.stderr
    pending = cli("output", "a1", "ship")
    assert pending.returncode == 3 and "has no output: pending" in pending.stderr


def test_rewind_then_resume_finishes_with_the_same_outputs(cli: Cli) -> None:
    first = run_loop(cli, "l2")
    frames_before = len(cli.ok("frames", "l2", "--json").stdout.splitlines())
    refused = cli("rewind", "l2", "--frame", "3")  # no terminal to confirm on: nothing happens
    assert refused.returncode == 4 and "pass --yes to confirm" in refused.stderr
    assert len(cli.ok("frames", "l2", "--json").stdout.splitlines()) == frames_before
    rewound = cli.ok("rewind", "l2", "--frame", "3", "--yes")
    assert rewound.stdout.startswith("rewound l2 to frame 3:") and f"{frames_before - 3} frames" in rewound.stdout
    assert "continue it with: smithers resume l2" in rewound.stderr
    assert [e["type"] for e in cli.events("l2")][-1] == "TimeTravelJumped"
    again = cli.ok("resume", "l2", "-q")
    assert json.loads(again.stdout) == first
    store = Store(cli.db)
    try:
        with store.read() as tx:
            [audit] = tx.list_audits("l2")
    finally:
        store.close()
    assert audit["result"] == "success" and audit["to_frame_no"] == 3 and audit["from_frame_no"] == frames_before
    bad = cli("rewind", "l2", "--frame", "9999", "--yes")
    assert bad.returncode == 4 and "FrameOutOfRange" in bad.stderr


def test_fork_starts_a_new_run_and_leaves_the_source_alone(cli: Cli) -> None:
    first = run_loop(cli, "l3")
    events_before = cli.events("l3")
    bad_id = cli("fork", "l3", "--frame", "2", "--run-id", "Bad Id!", "--no-start")
    assert bad_id.returncode != 0 and "InvalidRunId" in bad_id.stderr
    forked = cli.ok("fork", "l3", "--frame", "2", "--run-id", "l3-copy", "--no-start")
    assert forked.stdout.strip() == "l3-copy"
    finished = cli.ok("resume", "l3-copy", "-q")
    assert json.loads(finished.stdout) == first
    assert cli.events("l3") == events_before
    started = cli.ok("fork", "l3", "--frame", "4", "--run-id", "l3-again")
    assert json.loads(started.stdout) == first and "forked l3 at frame 4 as l3-again" in started.stderr
    listed = json.loads(cli.ok("ps", "--json").stdout)
    parents = {r["runId"]: r.get("parentRunId") for r in listed}
    assert parents["l3-copy"] == parents["l3-again"] == "l3"
