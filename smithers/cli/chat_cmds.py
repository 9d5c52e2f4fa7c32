"""``smithers chat``: an agent task's transcript in the terminal (docs/engine.md#transcripts)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from smithers.cli.app import DbOption, JsonFlag, app, fail, open_store, require_run
from smithers.engine.transcript import agent_transcript
from smithers.store.rows import iso_ms

TOOL_TEXT_CHARS = 400
"""Characters of a tool call's input or output shown (``--json`` shows all that is stored)."""


@app.command()
def chat(
    run_id: str,
    node: Annotated[str | None, typer.Argument(help="Only this node's attempts (default: every agent task).")] = None,
    iteration: Annotated[int | None, typer.Option("--iteration", "-i", min=0, help="Only this iteration.")] = None,
    as_json: JsonFlag = False,
    db: DbOption = None,
) -> None:
    """Print what agent tasks were asked, streamed, ran and answered, attempt by attempt."""
    store = open_store(db)
    require_run(store, run_id)
    with store.read() as tx:
        if node is not None and not any(n["node_id"] == node for n in tx.list_nodes(run_id)):
            fail(f"Node not found: {node} [NodeNotFound]")
        attempts = agent_transcript(tx, run_id, node, iteration)
    if as_json:
        typer.echo(json.dumps(attempts, indent=2))
        return
    if not attempts:
        where = f"node {node} of run {run_id}" if node else f"run {run_id}"
        typer.echo(f"{where} has no agent attempts", err=True)
        raise typer.Exit(3)
    console = Console(highlight=False) if sys.stdout.isatty() else Console(width=200, highlight=False)
    for entry in attempts:
        _print_attempt(console, entry)


def _print_attempt(console: Console, entry: dict[str, Any]) -> None:
    usage = entry.get("usage") or {}
    tokens = f" · {usage.get('inputTokens', 0):,} in / {usage.get('outputTokens', 0):,} out" if usage else ""
    when = iso_ms(entry["startedAtMs"]) if entry.get("startedAtMs") else ""
    console.rule(
        f"[bold]{escape(entry['nodeId'])}[/] iteration {entry['iteration']} · attempt {entry['attempt']} · "
        f"{escape(str(entry.get('agentId')))} · {entry['state']}{tokens} · {when}",
        align="left",
    )
    if entry.get("sessionId"):
        console.print(f"[dim]session {escape(entry['sessionId'])}[/]")
    turns = entry["turns"] or [{"turn": 0, "prompt": entry.get("prompt")}]
    for turn in turns:
        console.print(f"[bold cyan]prompt[/] (turn {turn.get('turn', 0)})")
        console.print(escape(str(turn.get("prompt") or "")).rstrip())
        for wait in turn.get("rateLimitWaitsMs") or []:
            console.print(f"[yellow]rate limited: waited {wait} ms[/]")
        if "answer" in turn:
            console.print(f"[bold green]answer[/] (turn {turn.get('turn', 0)})")
            console.print(escape(str(turn["answer"])).rstrip())
        elif turn.get("error"):
            console.print(f"[bold red]failed[/] {escape(str(turn['error'].get('message', turn['error'])))}")
    if entry["toolCalls"]:
        console.print("[bold magenta]tools[/]")
        for call in entry["toolCalls"]:
            detail = _short(call.get("input"))
            status = call["status"]
            style = "red" if status == "error" else "green" if status == "success" else "yellow"
            console.print(f"  #{call['seq']} {escape(call['toolName'])} {escape(detail)} [{style}]{status}[/]")
            if call.get("error"):
                console.print(f"     [red]{escape(_short(call['error']))}[/]")
    streamed = "".join(p["text"] for p in entry["output"] if p["stream"] == "stderr").strip()
    if streamed:
        console.print("[bold]stderr[/]")
        console.print(f"[dim]{escape(streamed[-4000:])}[/]")
    if entry.get("error"):
        error = entry["error"]
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        console.print(f"[bold red]error[/] {escape(str(message))}" + (f" [{escape(str(code))}]" if code else ""))
    console.print()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= TOOL_TEXT_CHARS else text[:TOOL_TEXT_CHARS] + "…"
