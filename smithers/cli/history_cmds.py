"""Time-travel commands: ``frames``, ``tree``, ``output``, ``rewind`` and ``fork`` (docs/engine.md#time-travel)."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from smithers.cli.app import (
    EXIT_BAD_INPUT,
    DbOption,
    JsonFlag,
    app,
    fail,
    guarded,
    open_store,
    require_run,
)
from smithers.cli.run_cmds import report_resumed, resume_run, stored_workflow
from smithers.engine import devtools
from smithers.engine.history import read_frames
from smithers.engine.node_output import node_output
from smithers.engine.timetravel import RUN_ID_PATTERN, Rewinder, caller_name, fork_run
from smithers.store.rows import iso_ms, loads

FrameOpt = Annotated[int, typer.Option("--frame", "-f", min=0, help="Frame number (see: smithers frames RUN_ID).")]


@app.command()
def frames(
    run_id: str,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="The newest N frames.")] = 50,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """List a run's frames (rendered trees), oldest first: number, time, encoding, mounted nodes."""
    store = open_store(db)
    require_run(store, run_id)
    with store.read() as tx:
        last = tx.last_frame_no(run_id)
        rows = read_frames(tx, run_id, max(1, last - limit + 1), last)
    if as_json:
        for row in rows:
            typer.echo(
                json.dumps(
                    {
                        "frameNo": row["frame_no"],
                        "createdAtMs": row["created_at_ms"],
                        "encoding": row["encoding"],
                        "mountedTaskIds": loads(row["mounted_task_ids_json"]) or [],
                    }
                )
            )
        return
    for row in rows:
        mounted = loads(row["mounted_task_ids_json"]) or []
        typer.echo(f"{row['frame_no']:>6}  {iso_ms(row['created_at_ms'])}  {row['encoding']:<8}  {len(mounted)} nodes")


@app.command()
def tree(
    run_id: str,
    frame: Annotated[
        int | None, typer.Option("--frame", "-f", min=0, help="Frame number (default: the latest).")
    ] = None,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Draw a run's tree at a frame (the DevTools tree: node types, ids, task states)."""
    store = open_store(db)
    require_run(store, run_id)
    with store.read() as tx:
        last = tx.last_frame_no(run_id)
        target = last if frame is None else frame
        if last == 0 or not 1 <= target <= last:
            fail(f"run {run_id} has {last} frames (numbered from 1); frame {target} does not exist [FrameOutOfRange]")
        [row] = read_frames(tx, run_id, target, target)
        states = {f"{n['node_id']}::{n['iteration']}": n["state"] for n in tx.list_nodes(run_id)}
    iterations = {entry["nodeId"]: entry["iteration"] for entry in loads(row["task_index_json"]) or []}
    states = {node_id: states.get(f"{node_id}::{it}", "") for node_id, it in iterations.items()}
    snap = devtools.snapshot(run_id, target, loads(row["xml_json"]))
    if as_json:
        typer.echo(json.dumps(snap, indent=2))
        return
    console = Console(highlight=False)
    title = f"[bold]{run_id}[/bold] frame {target}" + ("" if target == last else f" (latest {last})")
    drawn = Tree(title)
    _draw(drawn, snap["root"], states if target == last else {})
    console.print(drawn)


def _draw(parent: Tree, node: dict[str, Any], states: dict[str, str]) -> None:
    task = node.get("task")
    if task:
        state = states.get(task["nodeId"])
        label = f"[cyan]{task['nodeId']}[/cyan] {node['type']} ({task['kind']})" + (f" — {state}" if state else "")
    else:
        ident = node["props"].get("id")
        label = f"[bold]{node['type']}[/bold]" + (f" {ident}" if isinstance(ident, str) and ident else "")
    branch = parent.add(label)
    for child in node["children"]:
        _draw(branch, child, states)


@app.command()
def output(
    run_id: str,
    node: str,
    iteration: Annotated[int | None, typer.Option("--iteration", "-i", min=0, help="Default: the latest.")] = None,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Print a node's output (or why it has none yet) and the fields of its output model."""
    store = open_store(db)
    require_run(store, run_id)
    workflow = stored_workflow(store, run_id)
    answer = guarded(lambda: node_output(store, workflow, run_id, node, iteration))
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    if answer["status"] == "produced":
        typer.echo(json.dumps(answer["row"], indent=2))
    else:
        extra = f"; last checkpoint: {json.dumps(answer['partial'])}" if answer.get("partial") else ""
        typer.echo(f"node {node} of run {run_id} has no output: {answer['status']}{extra}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT if answer["status"] == "failed" else 3)


@app.command()
def rewind(
    run_id: str,
    frame: FrameOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask: rewinding deletes what came after.")] = False,
    then_resume: Annotated[
        bool, typer.Option("--resume", help="Run the rewound run right away in this process.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Rewind a run in place to an earlier frame: later frames, attempts and outputs are deleted (audited)."""
    store = open_store(db)
    require_run(store, run_id)
    if not yes:
        if not sys.stdin.isatty():
            fail("a rewind deletes everything after the frame; pass --yes to confirm")
        if not typer.confirm(f"Rewind run {run_id} to frame {frame}? Everything after it is deleted."):
            raise typer.Exit(EXIT_BAD_INPUT)
    caller = caller_name(getpass.getuser())
    result = guarded(lambda: asyncio.run(Rewinder(store).jump(run_id, frame, True, caller)))
    typer.echo(
        f"rewound {run_id} to frame {result.new_frame_no}: {result.deleted_frames} frames, "
        f"{result.deleted_attempts} attempts deleted, {result.reverted_sandboxes} working directories restored"
    )
    if then_resume:
        report_resumed(resume_run(store, run_id, force=False, quiet=False))
    elif result.deleted_frames:
        typer.echo(f"continue it with: smithers resume {run_id}", err=True)


@app.command()
def fork(
    run_id: str,
    frame: FrameOpt,
    new_run_id: Annotated[
        str | None, typer.Option("--run-id", "-r", help="Id of the new run (default: a UUID).")
    ] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Run the fork right away in this process.")] = True,
    db: DbOption = None,
) -> None:
    """Start a new run from a run's frame; the source run is left as it is."""
    import uuid

    if new_run_id is not None and not RUN_ID_PATTERN.fullmatch(new_run_id):
        fail(f"--run-id {new_run_id!r} must match /^[a-z0-9_-]{{1,64}}$/ [InvalidRunId]")
    store = open_store(db)
    require_run(store, run_id)
    record = guarded(lambda: fork_run(store, run_id, frame, new_run_id=new_run_id or str(uuid.uuid4())))
    if not start:
        typer.echo(record["runId"])
        return
    typer.echo(f"forked {run_id} at frame {frame} as {record['runId']}", err=True)
    report_resumed(resume_run(store, record["runId"], force=False, quiet=False))
