"""``smithers serve``, ``smithers token …`` and ``smithers cron …``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal as signals
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from smithers.cli.app import DbOption, JsonFlag, app, fail, guarded, open_store
from smithers.cli.workers import run_workers
from smithers.engine.crons import next_fire_ms, validate_pattern, validate_timezone
from smithers.engine.loader import load_module, split_target, workflows_in
from smithers.store.rows import now_ms, to_wire

token_app = typer.Typer(
    help="Issue, list and revoke gateway tokens (stored hashed in the database).", no_args_is_help=True
)
cron_app = typer.Typer(help="Scheduled runs of gateway workflows.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(cron_app, name="cron")

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """``90s``, ``15m``, ``12h``, ``30d`` (a bare number is milliseconds)."""
    found = _DURATION.match(text.strip())
    if not found or int(found.group(1)) <= 0:
        fail(f"invalid duration {text!r}: use a positive number with ms, s, m, h or d (e.g. 30d)")
    return int(found.group(1)) * _UNIT_MS[found.group(2) or "ms"]


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner where it is installed (it comes with uvicorn[standard]), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


@app.command()
def serve(
    target: Annotated[
        str,
        typer.Argument(
            help="FILE.py[:ATTR]: a Gateway (ATTR, default 'gateway'), or a module whose @workflows are served"
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 7331,
    db: DbOption = None,
    console: Annotated[
        bool, typer.Option("--console", help="Serve the built-in operator console at /console (ui=True).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option("--workers", "-w", min=1, help="Gateway processes sharing the port and the database."),
    ] = 1,
    reuse_port: Annotated[bool, typer.Option("--reuse-port", hidden=True)] = False,
) -> None:
    """Serve workflows over HTTP and WebSocket (the Smithers gateway protocol v1)."""
    from smithers.gateway.server import Gateway

    if workers > 1:
        if port == 0:
            fail("--workers needs a port to share (not --port 0)")
        open_store(db).close()  # migrated once, before the workers start
        raise typer.Exit(run_workers(workers, target, host, port, db, console))

    path, attr = split_target(target)
    if db:
        os.environ["SMITHERS_DB"] = db  # a Gateway built by the module reads it as its database
    module = guarded(lambda: load_module(path))
    value: Any = getattr(module, attr or "gateway", None)
    if attr and value is None:
        fail(f"{path} has no attribute {attr!r}")
    if isinstance(value, Gateway):
        gateway = value
    else:
        found = workflows_in(module)
        if not found:
            fail(f"{path} defines no Gateway and no @workflow")
        gateway = guarded(lambda: Gateway.for_workflows(found, db=open_store(db)))
    if console:
        gateway.mount_console()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = asyncio.create_task(gateway.serve(host, port, reuse_port=reuse_port))
        done, _ = await asyncio.wait([server, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            server.result()
            return
        # Runs still executing stay 'running' and are resumed by the next start; nothing is cancelled.
        await gateway.close(abort_runs=False)
        server.cancel()

    try:
        event_loop_runner()(main())
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@token_app.command("issue")
def token_issue(
    role: Annotated[str, typer.Option("--role", help="Role recorded on runs (e.g. operator, admin).")] = "operator",
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="A scope; repeat for several.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="User id the token acts as.")] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Lifetime, e.g. 12h or 30d (default: no expiry).")] = None,
    label: Annotated[str | None, typer.Option("--label")] = None,
    db: DbOption = None,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    from smithers.gateway.tokens import issue_token

    ttl_ms = parse_duration_ms(ttl) if ttl else None
    store = open_store(db)
    issued = guarded(
        lambda: issue_token(store, scopes=scope or [], role=role, user_id=user, label=label, ttl_ms=ttl_ms)
    )
    typer.echo(issued.token)
    expiry = "never" if issued.expires_at_ms is None else f"at {issued.expires_at_ms} (epoch ms)"
    typer.echo(
        f"token id {issued.token_id}, role {issued.role}, scopes {', '.join(issued.scopes)}, "
        f"expires {expiry}. It is shown only once.",
        err=True,
    )


@token_app.command("list")
def token_list(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """List issued tokens (never their secrets)."""
    from smithers.gateway.tokens import list_tokens

    rows = list_tokens(open_store(db))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    now = now_ms()
    for r in rows:
        state = (
            "revoked"
            if r["revokedAtMs"]
            else "expired"
            if r["expiresAtMs"] is not None and r["expiresAtMs"] <= now
            else "active"
        )
        typer.echo(
            f"{r['tokenId']}  {state:8} role={r['role']} scopes={','.join(r['scopes'])} "
            f"user={r['userId'] or '-'} label={r['label'] or '-'}"
        )


@token_app.command("revoke")
def token_revoke(token_id: str, db: DbOption = None) -> None:
    """Revoke a token: refused on the next request or connect."""
    from smithers.gateway.tokens import revoke_token

    if not revoke_token(open_store(db), token_id):
        fail(f"no token with id {token_id}")
    typer.echo(f"revoked {token_id}")


@cron_app.command("list")
def cron_list(as_json: JsonFlag = False, db: DbOption = None) -> None:
    """List schedules."""
    store = open_store(db)
    with store.read() as tx:
        rows = [to_wire(r) for r in tx.list_crons()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "enabled" if r["enabled"] in (True, None) else "disabled"
        typer.echo(
            f"{r['cronId']}  {r['pattern']:15} {r['timezone'] or 'local':15} {r['workflowPath']}  {state}"
            f"  next={r['nextRunAtMs']}" + (f"  error={r['errorJson']}" if r["errorJson"] else "")
        )


@cron_app.command("add")
def cron_add(
    pattern: Annotated[
        str,
        typer.Argument(help="Cron pattern: 5 fields ('0 8 * * 1-5'), 6 with leading seconds, or @hourly, @daily, …"),
    ],
    workflow: Annotated[str, typer.Argument(help="Key of a workflow served by the gateway.")],
    cron_id: Annotated[str | None, typer.Option("--id", help="Cron id (default: a new UUID).")] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone, e.g. Europe/Paris (default: the server's).")
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled")] = False,
    db: DbOption = None,
) -> None:
    """Schedule a gateway workflow; the running gateway fires it when due."""
    import uuid

    valid = guarded(lambda: validate_pattern(pattern))
    zone = guarded(lambda: validate_timezone(timezone))
    new_id = cron_id or str(uuid.uuid4())
    store = open_store(db)
    with store.write() as tx:
        tx.upsert_cron(new_id, valid, f"gateway:{workflow}", not disabled, next_fire_ms(valid, now_ms(), zone), zone)
    typer.echo(new_id)


@cron_app.command("remove")
def cron_remove(cron_id: str, db: DbOption = None) -> None:
    """Delete a schedule."""
    store = open_store(db)
    with store.write() as tx:
        removed = tx.delete_cron(cron_id)
    if not removed:
        fail(f"Cron not found: {cron_id}")
    typer.echo(f"removed {cron_id}")


@cron_app.command("trigger")
def cron_trigger(cron_id: str, db: DbOption = None) -> None:
    """Make a schedule due now: the running gateway starts it on its next poll (within 15 s)."""
    store = open_store(db)
    with store.write() as tx:
        row = tx.get_cron(cron_id)
        if row is None:
            fail(f"Cron not found: {cron_id}")
        tx.update_cron_fields(cron_id, next_run_at_ms=now_ms())
    typer.echo(f"{cron_id} is due now")
