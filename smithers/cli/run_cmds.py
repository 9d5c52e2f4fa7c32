"""Commands that run and act on workflows: run, resume, ps, inspect, events, approve, deny, signal, cancel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from smithers.api import run_async
from smithers.cli.app import (
    EXIT_CANCELLED,
    EXIT_OK,
    DbOption,
    JsonFlag,
    app,
    execute,
    fail,
    guarded,
    open_store,
    parse_json,
    report,
    require_run,
)
from smithers.cli.output import format_event, print_inspect, print_runs
from smithers.engine import control
from smithers.engine.loader import load_workflow
from smithers.engine.runner import RunResult
from smithers.engine.signal_check import check_signal
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    TERMINAL_RUN_STATUSES,
    WAITING_RUN_STATUSES,
    statuses_matching,
)
from smithers.engine.workflow import Workflow
from smithers.errors import SmithersError
from smithers.store.store import Store


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="FILE.py or FILE.py:WORKFLOW")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="Workflow input as a JSON object.")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", "-r", help="Run id (default: a new UUID).")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", "-c", min=1)] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    db: DbOption = None,
) -> None:
    """Run a workflow to the end (or until it waits for a person or an event)."""
    data = parse_json(input, "--input")
    if data is not None and not isinstance(data, dict):
        fail("--input must be a JSON object")
    workflow = guarded(lambda: load_workflow(target))
    store = open_store(db)
    result = execute(
        store,
        lambda **kw: run_async(workflow, data or {}, db=store, run_id=run_id, max_concurrency=max_concurrency, **kw),
        quiet,
    )
    if not quiet:
        typer.echo(f"run {result.run_id}: {result.status}", err=True)
    report(result)


@app.command()
def resume(
    run_id: str,
    force: Annotated[bool, typer.Option("--force", help="Take over a run whose owner still looks alive.")] = False,
    retry: Annotated[
        bool, typer.Option("--retry", help="Run the failed or cancelled nodes of a failed or cancelled run again.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    db: DbOption = None,
) -> None:
    """Continue a run: after a crash, an approval, a signal or a due timer.

    A run that has ended is left as it is (nothing is written), unless --retry asks to run the
    failed or cancelled nodes of a failed or cancelled run again.
    """
    store = open_store(db)
    report_resumed(resume_run(store, run_id, force, quiet, retry=retry))


def report_resumed(result: RunResult) -> None:
    """Report a resume; one that found the run ended says it did nothing (exit 0)."""
    if result.unchanged:
        hint = (
            " (use --retry to run its failed or cancelled nodes again)" if result.status in (FAILED, CANCELLED) else ""
        )
        typer.echo(f"run {result.run_id} is already {result.status}; nothing to do{hint}", err=True)
        raise typer.Exit(EXIT_OK)
    report(result)


def stored_workflow(store: Store, run_id: str) -> Workflow | None:
    """The workflow a stored run was started from, when its file can still be loaded."""
    row = store.get_run(run_id)
    if row is None or not row["workflow_path"]:
        return None
    config = json.loads(row["config_json"] or "{}")
    try:
        return load_workflow(row["workflow_path"], config.get("workflowKey") or row["workflow_name"])
    except SmithersError:
        return None


def resume_run(store: Store, run_id: str, force: bool, quiet: bool, *, retry: bool = False) -> RunResult:
    row = store.get_run(run_id)
    if row is None:
        fail(f"Run not found: {run_id} [RUN_NOT_FOUND]")
    config = json.loads(row["config_json"] or "{}")
    if not row["workflow_path"]:
        fail(f"run {run_id} has no recorded workflow file to resume from")
    workflow = guarded(lambda: load_workflow(row["workflow_path"], config.get("workflowKey") or row["workflow_name"]))
    return execute(
        store,
        lambda **kw: run_async(
            workflow,
            None,
            db=store,
            run_id=run_id,
            resume=True,
            force=force,
            retry=retry,
            max_concurrency=int(config.get("maxConcurrency", 4)),
            **kw,
        ),
        quiet,
    )


@app.command()
def ps(
    status: Annotated[str | None, typer.Option("--status", "-s", help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 20,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """List runs, newest first."""
    store = open_store(db)
    with store.read() as tx:
        rows = tx.list_runs_in(statuses_matching(status), limit) if status else tx.list_runs(limit)
    print_runs(rows, as_json)


@app.command()
def inspect(run_id: str, as_json: JsonFlag = False, db: DbOption = None) -> None:
    """Show a run: its nodes, their states, attempts and outputs."""
    store = open_store(db)
    with store.read() as tx:
        row = tx.get_run(run_id)
        if row is None:
            fail(f"Run not found: {run_id} [RUN_NOT_FOUND]")
        nodes, attempts, outputs = tx.list_nodes(run_id), tx.list_attempts(run_id), tx.list_outputs(run_id)
    print_inspect(row, nodes, attempts, outputs, as_json)


@app.command()
def events(
    run_id: str,
    since: Annotated[int, typer.Option("--since", help="Only events after this seq.")] = -1,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the run ends.")
    ] = False,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Print a run's events in order (optionally following it live)."""
    store = open_store(db)
    require_run(store, run_id)
    after = since
    told: str | None = None
    try:
        while True:
            with store.read() as tx:
                batch = tx.list_events(run_id, after_seq=after, limit=1000)
                row = tx.get_run(run_id)
            for event in batch:
                typer.echo(json.dumps(event.payload | {"seq": event.seq}) if as_json else format_event(event))
                after = event.seq
            if not follow:
                return
            status = row["status"] if row is not None else None
            if not batch and (status is None or status in TERMINAL_RUN_STATUSES):
                return  # every event of an ended run is printed
            if status in WAITING_RUN_STATUSES and status != told:
                told = status
                typer.echo(f"run {run_id} is {status}; following until it ends (Ctrl-C to stop)", err=True)
            if not batch:
                time.sleep(0.2)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _decide(
    approved: bool,
    run_id: str,
    node: str | None,
    iteration: int | None,
    note: str | None,
    by: str | None,
    then_resume: bool,
    db: str | None,
) -> None:
    store = open_store(db)

    def act() -> dict[str, Any]:
        node_id, it = control.pending_approval_node(store, run_id, node)
        decide = control.approve_node if approved else control.deny_node
        return decide(store, run_id, node_id, it if iteration is None else iteration, note=note, decided_by=by)

    result = guarded(act)
    typer.echo(f"{'approved' if approved else 'denied'} {result['nodeId']} of run {run_id}")
    if then_resume:
        report_resumed(resume_run(store, run_id, force=False, quiet=False))


NodeOpt = Annotated[str | None, typer.Option("--node", "-n", help="Node to decide (needed if several wait).")]
IterOpt = Annotated[int | None, typer.Option("--iteration")]
NoteOpt = Annotated[str | None, typer.Option("--note")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who decided (recorded).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Resume the run right away in this process.")]


def _decision_command(approved: bool, summary: str) -> Callable[..., None]:
    """``smithers approve`` and ``smithers deny``: one command body, two verbs."""

    def command(
        run_id: str,
        node: NodeOpt = None,
        iteration: IterOpt = None,
        note: NoteOpt = None,
        by: ByOpt = None,
        then_resume: ResumeOpt = False,
        db: DbOption = None,
    ) -> None:
        _decide(approved, run_id, node, iteration, note, by, then_resume, db)

    command.__doc__ = summary
    return command


app.command("approve")(_decision_command(True, "Approve a pending approval of a run."))
app.command("deny")(_decision_command(False, "Deny a pending approval of a run (the node's on_deny policy applies)."))


@app.command()
def signal(
    run_id: str,
    name: str,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Signal payload as JSON.")] = None,
    correlation: Annotated[str | None, typer.Option("--correlation")] = None,
    by: ByOpt = None,
    then_resume: ResumeOpt = False,
    db: DbOption = None,
) -> None:
    """Send a signal (an external event) to a run."""
    payload = parse_json(data, "--data")
    store = open_store(db)
    workflow = stored_workflow(store, run_id)
    if workflow is not None:  # refuse a payload the waiting node's model refuses; the run keeps waiting
        guarded(lambda: check_signal(store, workflow, run_id, name, correlation, payload))
    result = guarded(
        lambda: control.signal_run(store, run_id, name, payload, correlation_id=correlation, received_by=by)
    )
    typer.echo(f"signal {result['signalName']} stored for run {run_id} (seq {result['seq']})")
    if then_resume:
        report_resumed(resume_run(store, run_id, force=False, quiet=False))


@app.command()
def cancel(run_id: str, db: DbOption = None) -> None:
    """Cancel a run (a live owner stops within a quarter of a second)."""
    store = open_store(db)
    result = guarded(lambda: control.cancel_run(store, run_id))
    typer.echo(f"run {run_id}: {result['status']}")
    raise typer.Exit(EXIT_CANCELLED)
