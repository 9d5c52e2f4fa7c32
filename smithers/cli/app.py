"""The ``smithers`` command-line application and what its commands share: options, errors, exit codes.

Exit codes: 0 finished, 1 failed, 2 cancelled, 3 waiting (approval, event or timer), 4 bad input
or a user-correctable error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from smithers.cli.output import Progress
from smithers.engine.runner import RunResult
from smithers.engine.states import CANCELLED, FAILED, FINISHED, WAITING_RUN_STATUSES
from smithers.errors import SmithersError
from smithers.store.store import Store

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_WAITING, EXIT_BAD_INPUT = 0, 1, 2, 3, 4

app = typer.Typer(
    name="smithers",
    help="Durable, observable, human-in-the-loop workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Database path or URL (sqlite:///x.db, postgresql://…). Default: $SMITHERS_DB or ./smithers.db"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body, turning engine errors into one clear line and exit code 4."""
    try:
        return fn()
    except SmithersError as exc:
        fail(f"{exc.message} [{exc.code}]")


def open_store(db: str | None) -> Store:
    return guarded(lambda: Store(db))  # type: ignore[no-any-return]


def require_run(store: Store, run_id: str) -> None:
    """Exit 4 with ``Run not found`` unless the run is stored."""
    if store.get_run(run_id) is None:
        fail(f"Run not found: {run_id} [RUN_NOT_FOUND]")


def parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


def exit_code(status: str) -> int:
    if status == FINISHED:
        return EXIT_OK
    if status == CANCELLED:
        return EXIT_CANCELLED
    if status in WAITING_RUN_STATUSES:
        return EXIT_WAITING
    return EXIT_FAILED


def execute(store: Store, run: Callable[..., Any], quiet: bool) -> RunResult:
    """Run the engine with live progress, translating Ctrl-C into a clean cancel."""
    progress = Progress(enabled=not quiet)
    cancel = asyncio.Event()

    async def main() -> RunResult:
        loop = asyncio.get_running_loop()
        import signal as _signal

        for sig in (_signal.SIGINT, _signal.SIGTERM):
            loop.add_signal_handler(sig, cancel.set)
        with progress:
            return await run(cancel=cancel, on_event=progress.on_event)  # type: ignore[no-any-return]

    result: RunResult = guarded(lambda: asyncio.run(main()))
    return result


def report(result: RunResult) -> NoReturn:
    if result.status == FINISHED:
        typer.echo(json.dumps(result.output, indent=2))
    elif result.status == FAILED and result.error:
        typer.echo(
            f"error: run {result.run_id} failed: {result.error.get('message')} [{result.error.get('code')}]", err=True
        )
    elif result.status in WAITING_RUN_STATUSES:
        typer.echo(
            f"run {result.run_id} is {result.status}; continue it with: smithers resume {result.run_id}", err=True
        )
    else:
        typer.echo(f"run {result.run_id} {result.status}", err=True)
    raise typer.Exit(exit_code(result.status))
