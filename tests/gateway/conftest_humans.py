"""Workflows and a gateway for the approval, signal, webhook and cron tests (humans and the outside world).

Imported by those test modules (it is not a conftest): ``start_humans(**options)`` starts a real
:class:`~smithers.gateway.server.Gateway` over a fresh SQLite file with :data:`HUMAN_WORKFLOWS`
registered (the cron one with a schedule, the webhook ones with their webhook config) and returns
the conftest's :class:`Live` handle. ``heartbeat_ms`` defaults to 1000 so the cron scheduler polls
every second (the minimum, §16.2).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from smithers import Approval, Sequence, Task, WaitForEvent, workflow
from smithers.gateway.server import Gateway
from tests.gateway.conftest import Live, WsClient, connect_params_for
from tests.waiting import wait_for

__all__ = [
    "HUMAN_AUTH",
    "HUMAN_WORKFLOWS",
    "PICK_OPTIONS",
    "SCHEDULE",
    "SMITHERS",
    "WEBHOOK_SECRET",
    "Live",
    "WsClient",
    "build_gateway",
    "cli",
    "connect_params_for",
    "error_of",
    "sign",
    "start_humans",
    "wait_for",
    "webhook_post",
]

SMITHERS = str(Path(sys.executable).parent / "smithers")
CLI_TIMEOUT_S = 60.0

HUMAN_AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {
        "op-token": {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        "alice-token": {"role": "operator", "scopes": ["approval:submit", "run:read"], "userId": "user:alice"},
        "bob-token": {"role": "operator", "scopes": ["*"], "userId": "user:bob"},
        "submit-only-token": {"role": "operator", "scopes": ["approval:submit"], "userId": "user:carol"},
        "admin-approver-token": {"role": "admin", "scopes": ["approval:submit", "run:admin"], "userId": "user:dave"},
        "anonymous-token": {"role": "operator", "scopes": ["*"]},
        "signal-token": {"role": "operator", "scopes": ["signal:submit"], "userId": "user:sig"},
    },
}
"""Token mode: who may decide which approval (allowedUsers / allowedScopes) differs per token."""

WEBHOOK_SECRET = "s3cret-key"


class Echo(BaseModel):
    message: str


class Seen(BaseModel):
    value: Any = None


# -- approvals -------------------------------------------------------------------------------------
def _decision_echo(node_id: str) -> Callable[[Any], Seen]:
    def run(ctx: Any) -> Seen:
        return Seen(value=ctx.output(node_id))

    return run


@workflow("ship")
def ship(ctx: Any) -> Any:
    """Approve, then one task (the decision latency path)."""
    return Sequence(
        Approval("ok", title="Ship it?", summary="Deploy v2 to production"),
        Task("after", output=Echo, value=Echo(message="shipped")),
    )


@workflow("gated_task")
def gated_task(ctx: Any) -> Any:
    """A Task with needs_approval: a gate-mode approval in front of the task itself."""
    return Sequence(
        Task("deploy", output=Echo, value=Echo(message="deployed"), needs_approval=True, label="Deploy to prod"),
        Task("after", output=Echo, value=Echo(message="after deploy")),
    )


@workflow("gated_optional")
def gated_optional(ctx: Any) -> Any:
    """A gate with continue_on_fail: a denial skips the task and the run goes on."""
    return Sequence(
        Task("deploy", output=Echo, value=Echo(message="deployed"), needs_approval=True, continue_on_fail=True),
        Task("after", output=Echo, value=Echo(message="after deploy")),
    )


def _deny_policy(key: str, on_deny: Any) -> Any:
    @workflow(key)
    def render(ctx: Any) -> Any:
        return Sequence(
            Approval("ok", title="Proceed?", on_deny=on_deny),
            Task("after", output=Seen, run=_decision_echo_maybe("ok")),
        )

    return render


def _decision_echo_maybe(node_id: str) -> Callable[[Any], Seen]:
    def run(ctx: Any) -> Seen:
        return Seen(value=ctx.output_maybe(node_id))

    return run


deny_fail = _deny_policy("deny_fail", "fail")
deny_continue = _deny_policy("deny_continue", "continue")
deny_skip = _deny_policy("deny_skip", "skip")
deny_unset = _deny_policy("deny_unset", None)

PICK_OPTIONS = [
    {"key": "blue", "label": "Blue", "summary": "calm"},
    {"key": "red", "label": "Red"},
    {"key": "", "label": "Nothing"},
    {"label": "No key"},
]


@workflow("pick")
def pick(ctx: Any) -> Any:
    return Sequence(
        Approval("choice", mode="select", title="Pick a colour", options=PICK_OPTIONS),
        Task("after", output=Seen, run=_decision_echo("choice")),
    )


@workflow("rank")
def rank(ctx: Any) -> Any:
    return Sequence(
        Approval(
            "order",
            mode="rank",
            label="Rank them",
            options=[{"key": "a", "label": "A"}, {"key": "b", "label": "B"}, {"key": "c", "label": "C"}],
        ),
        Task("after", output=Seen, run=_decision_echo("order")),
    )


@workflow("only_alice")
def only_alice(ctx: Any) -> Any:
    return Sequence(Approval("ok", allowed_users=["user:alice"]), Task("after", output=Echo, value=Echo(message="a")))


@workflow("only_admins")
def only_admins(ctx: Any) -> Any:
    return Sequence(Approval("ok", allowed_scopes=["run:admin"]), Task("after", output=Echo, value=Echo(message="b")))


@workflow("free_scope")
def free_scope(ctx: Any) -> Any:
    """A free-form allowedScopes entry: it requires only run:read (reference behaviour, §13.3 step 5)."""
    return Sequence(Approval("ok", allowed_scopes=["deploy.prod"]), Task("after", output=Echo, value=Echo(message="c")))


@workflow("two_gates")
def two_gates(ctx: Any) -> Any:
    return Sequence(
        Approval("first", title="First"),
        Approval("second", title="Second"),
        Task("after", output=Echo, value=Echo(message="both")),
    )


# -- signals ---------------------------------------------------------------------------------------
@workflow("waiter")
def waiter(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Seen, run=_decision_echo("w")))


@workflow("order")
def order(ctx: Any) -> Any:
    """A correlated wait: only a signal carrying the run's order id resumes it."""
    return Sequence(
        WaitForEvent("paid", event="order.paid", correlation_id=str(ctx.input.get("order", "none"))),
        Task("after", output=Seen, run=_decision_echo("paid")),
    )


async def _hold(ctx: Any) -> Echo:
    """Keep the task running while the hold file exists (the run is then not waiting yet)."""
    path = Path(ctx.input["hold"])
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return Echo(message="prepared")


@workflow("late")
def late(ctx: Any) -> Any:
    return Sequence(
        Task("prep", output=Echo, run=_hold),
        WaitForEvent("w", event="go"),
        Task("after", output=Seen, run=_decision_echo("w")),
    )


# -- webhooks --------------------------------------------------------------------------------------
@workflow("hook_run")
def hook_run(ctx: Any) -> Any:
    return Task("echo", output=Seen, run=lambda c: Seen(value=c.input))


@workflow("hook_pay")
def hook_pay(ctx: Any) -> Any:
    return Sequence(
        WaitForEvent("paid", event="payment.received", correlation_id=ctx.input.get("order")),
        Task("after", output=Seen, run=_decision_echo("paid")),
    )


@workflow("hook_any")
def hook_any(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Seen, run=_decision_echo("w")))


@workflow("hook_none")
def hook_none(ctx: Any) -> Any:
    return Task("t", output=Echo, value=Echo(message="x"))


# -- cron ------------------------------------------------------------------------------------------
@workflow("nightly")
def nightly(ctx: Any) -> Any:
    return Task("report", output=Seen, run=lambda c: Seen(value=c.auth))


@workflow("adhoc")
def adhoc(ctx: Any) -> Any:
    return Task("job", output=Seen, run=lambda c: Seen(value=c.input))


HUMAN_WORKFLOWS = [
    ship,
    gated_task,
    gated_optional,
    deny_fail,
    deny_continue,
    deny_skip,
    deny_unset,
    pick,
    rank,
    only_alice,
    only_admins,
    free_scope,
    two_gates,
    waiter,
    order,
    late,
    hook_run,
    hook_pay,
    hook_any,
    hook_none,
    adhoc,
]
SCHEDULE = "0 8 * * 1-5"
WEBHOOKS: dict[str, dict[str, Any]] = {
    "hook_run": {"secret": f"  {WEBHOOK_SECRET}  ", "run": {"inputPath": "data"}},
    "hook_pay": {
        "secret": WEBHOOK_SECRET,
        "signatureHeader": " X-Signature ",
        "signaturePrefix": "",
        "signal": {"name": "payment.received", "correlationIdPath": "order.id", "payloadPath": "payment"},
        "run": {"enabled": False},
    },
    "hook_any": {
        "secret": WEBHOOK_SECRET,
        "signal": {"name": "go", "runIdPath": "target.0.run", "payloadPath": "body"},
    },
}


def build_gateway(db_path: Path, **options: Any) -> Gateway:
    options.setdefault("heartbeat_ms", 1000)
    gateway = Gateway(db=str(db_path), **options)
    for wf in HUMAN_WORKFLOWS:
        gateway.register(wf.key, wf, webhook=WEBHOOKS.get(wf.key))
    gateway.register("nightly", nightly, schedule=SCHEDULE)
    gateway.register("hook_blank", hook_none, webhook={"secret": "   "})
    gateway.register("hook_off", hook_none, webhook={"secret": WEBHOOK_SECRET, "run": {"enabled": False}})
    return gateway


@pytest.fixture
def start_humans(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(db_path: Path | None = None, **options: Any) -> Live:
        if db_path is None:
            db_path = tmp_path / f"humans-{len(started)}.db"
            shutil.copyfile(migrated_db, db_path)
        live = Live(build_gateway(db_path, **options), db_path)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


# -- helpers ---------------------------------------------------------------------------------------
def error_of(response: Any) -> dict[str, Any]:
    """The ``error`` of a failed RPC response (HTTP)."""
    body = response.json()
    assert body["ok"] is False, body
    return dict(body["error"])


def sign(body: bytes, secret: str = WEBHOOK_SECRET, prefix: str = "sha256=") -> str:
    return prefix + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_post(
    live: Live,
    key: str,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    header: str = "x-hub-signature-256",
    signature: str | None = None,
    prefix: str = "sha256=",
) -> Any:
    """POST a (by default correctly signed) delivery to ``/webhooks/{key}``."""
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        header: signature if signature is not None else sign(body, prefix=prefix),
    }
    return live.http.post(f"/webhooks/{key}", content=body, headers=headers)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``smithers`` command line in a subprocess."""
    env = dict(os.environ)
    env.pop("SMITHERS_DB", None)
    return subprocess.run(
        [SMITHERS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        stdin=subprocess.DEVNULL,
    )
