"""What the CLI prints: live progress, run lists, run details, event lines."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from smithers.engine import events as ev
from smithers.engine.usage import token_summary
from smithers.store.events_bus import StoredEvent
from smithers.store.rows import to_wire

STATE_STYLE = {
    "finished": "green",
    "failed": "red",
    "in-progress": "cyan",
    "pending": "dim",
    "cancelled": "yellow",
    "skipped": "dim",
    "waiting-approval": "magenta",
    "waiting-event": "magenta",
    "waiting-timer": "magenta",
}
NODE_EVENT_STATE = {
    ev.NODE_PENDING: "pending",
    ev.NODE_STARTED: "in-progress",
    ev.NODE_FINISHED: "finished",
    ev.NODE_FAILED: "failed",
    ev.NODE_CANCELLED: "cancelled",
    ev.NODE_SKIPPED: "skipped",
    ev.NODE_RETRYING: "pending",
    ev.NODE_WAITING_APPROVAL: "waiting-approval",
    ev.NODE_WAITING_EVENT: "waiting-event",
    ev.NODE_WAITING_TIMER: "waiting-timer",
}
QUIET_EVENTS = frozenset({ev.FRAME_COMMITTED, ev.SNAPSHOT_CAPTURED, ev.NODE_PENDING})


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def format_event(event: StoredEvent) -> str:
    """One readable line for an event."""
    p = event.payload
    where = ""
    if "nodeId" in p:
        where = f" {p['nodeId']}" + (f"[{p['iteration']}]" if p.get("iteration") else "")
        if p.get("attempt"):
            where += f" attempt {p['attempt']}"
    extra = ""
    if "error" in p and isinstance(p["error"], dict):
        extra = f": {p['error'].get('message')}"
    elif "status" in p:
        extra = f": {p['status']}"
    elif event.type == ev.FRAME_COMMITTED:
        extra = f" #{p.get('frameNo')}"
    return f"{_clock(event.timestamp_ms)} {event.seq:>5} {event.type}{where}{extra}"


class Progress:
    """Live node table on a terminal; one plain line per meaningful event when piped."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True)
        self.nodes: dict[str, dict[str, Any]] = {}
        self.live: Live | None = None

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(exc_type, exc, tb)

    def on_event(self, event: StoredEvent) -> None:
        if not self.enabled:
            return
        state = NODE_EVENT_STATE.get(event.type)
        if state is not None:
            key = f"{event.payload.get('nodeId')}::{event.payload.get('iteration', 0)}"
            node = self.nodes.setdefault(key, {"attempt": 0, "started": None, "ms": None})
            node["state"] = state
            if event.type == ev.NODE_STARTED:
                node["attempt"], node["started"] = event.payload.get("attempt", 1), event.timestamp_ms
            elif event.type == ev.NODE_FINISHED and node["started"]:
                node["ms"] = event.timestamp_ms - node["started"]
        if self.live is not None:
            self.live.update(self._table())
        elif event.type not in QUIET_EVENTS:
            print(format_event(event), file=sys.stderr, flush=True)

    def _table(self) -> Table:
        done = sum(1 for n in self.nodes.values() if n["state"] in ("finished", "skipped"))
        table = Table(title=f"{done}/{len(self.nodes)} nodes done", title_justify="left", expand=False)
        for col in ("node", "iteration", "state", "attempt", "time"):
            table.add_column(col)
        for key, n in self.nodes.items():
            node_id, _, iteration = key.rpartition("::")
            style = STATE_STYLE.get(n["state"], "")
            table.add_row(
                node_id,
                iteration,
                f"[{style}]{n['state']}[/]",
                str(n["attempt"] or ""),
                f"{n['ms']} ms" if n["ms"] is not None else "",
            )
        return table


def print_runs(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([to_wire(r) for r in rows], indent=2))
        return
    table = Table()
    table.add_column("run id", no_wrap=True, min_width=36)
    for col in ("workflow", "status", "created", "finished"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["run_id"],
            r["workflow_name"],
            r["status"],
            _clock(r["created_at_ms"]),
            _clock(r["finished_at_ms"]) if r["finished_at_ms"] else "",
        )
    _console().print(table)


def _console() -> Console:
    """Full-width output when piped, so ids are never cut."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def print_inspect(
    run: dict[str, Any],
    nodes: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    as_json: bool,
) -> None:
    out_by_key = {(o["node_id"], o["iteration"]): json.loads(o["payload_json"]) for o in outputs}
    usage = token_summary((a["meta_json"] for a in attempts), run["config_json"])
    if as_json:
        print(
            json.dumps(
                {
                    "run": to_wire(run),
                    "nodes": [to_wire(n) | {"output": out_by_key.get((n["node_id"], n["iteration"]))} for n in nodes],
                    "attempts": [to_wire(a) for a in attempts],
                    "usage": usage,
                },
                indent=2,
            )
        )
        return
    console = _console()
    console.print(f"run {run['run_id']}  workflow {run['workflow_name']}  status [bold]{run['status']}[/]")
    if run["error_json"]:
        err = json.loads(run["error_json"])
        console.print(f"[red]error:[/] {err.get('message')} [{err.get('code')}]")
    if usage is not None:
        cost = f", ${usage['costUsd']:.4f}" if "costUsd" in usage else ""
        budget = usage.get("tokenBudget")
        used = usage["inputTokens"] + usage["outputTokens"]
        of_budget = f", budget {budget:,} ({used * 100 // budget}% used)" if budget else ""
        console.print(
            f"tokens: {usage['inputTokens']:,} in, {usage['outputTokens']:,} out{cost}{of_budget} "
            f"({usage['attempts']} agent attempts)"
        )
    table = Table()
    for col in ("node", "iter", "state", "attempts", "output"):
        table.add_column(col)
    tries: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for a in attempts:
        tries.setdefault((a["node_id"], a["iteration"]), []).append(a)
    for n in nodes:
        key = (n["node_id"], n["iteration"])
        history = ", ".join(f"#{a['attempt']} {a['state']}" for a in tries.get(key, []))
        output = json.dumps(out_by_key[key]) if key in out_by_key else ""
        table.add_row(
            n["node_id"],
            str(n["iteration"]),
            f"[{STATE_STYLE.get(n['state'], '')}]{n['state']}[/]",
            history,
            output[:80],
        )
    console.print(table)
