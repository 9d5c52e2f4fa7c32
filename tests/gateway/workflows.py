"""The workflows gateway tests run: small examples, and the human-in-the-loop set (approvals,
signals, webhooks, cron) with :func:`build_humans` to register them on a gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smithers import Approval, Parallel, Sequence, Task, Timer, WaitForEvent, workflow
from smithers.gateway.server import Gateway
from tests.gateway.support import SCHEDULE, WEBHOOK_SECRET


class Greeting(BaseModel):
    message: str


class Named(BaseModel):
    name: str


class Count(BaseModel):
    n: int


@workflow("hello", name="Hello", description="Says hello")
def hello(ctx: Any) -> Any:
    return Sequence(Task("greet", output=Greeting, run=lambda c: Greeting(message=f"hello {c.input.get('name')}")))


@workflow("typed", input=Named)
def typed(ctx: Any) -> Any:
    return Task("greet", output=Greeting, run=lambda c: Greeting(message=c.input["name"]))


async def _sleep_forever(ctx: Any) -> Greeting:
    await asyncio.sleep(3600)
    return Greeting(message="never")


@workflow("slow")
def slow(ctx: Any) -> Any:
    return Task("wait", output=Greeting, run=_sleep_forever)


def _boom(ctx: Any) -> Greeting:
    raise RuntimeError("boom")


@workflow("failing")
def failing(ctx: Any) -> Any:
    return Task("explode", output=Greeting, run=_boom)


def _chatty_task(index: int, delay_s: float) -> Callable[[Any], Coroutine[Any, Any, Count]]:
    async def run(ctx: Any) -> Count:
        await asyncio.sleep(delay_s)
        return Count(n=index)

    return run


@workflow("chatty")
def chatty(ctx: Any) -> Any:
    """``input.tasks`` tasks (default 10), each giving node.started + node.finished, ``input.delay`` apart."""
    count = int(ctx.input.get("tasks", 10))
    delay = float(ctx.input.get("delay", 0))
    return Parallel(*[Task(f"t{i}", output=Count, run=_chatty_task(i, delay)) for i in range(count)])


@workflow("gate")
def gate(ctx: Any) -> Any:
    return Sequence(Approval("ok", title="Ship it?"), Task("after", output=Greeting, value=Greeting(message="done")))


@workflow("waiter")
def waiter(ctx: Any) -> Any:
    return Sequence(WaitForEvent("w", event="go"), Task("after", output=Greeting, value=Greeting(message="go")))


@workflow("sleeper")
def sleeper(ctx: Any) -> Any:
    return Sequence(Timer("nap", duration_ms=300), Task("after", output=Greeting, value=Greeting(message="awake")))


@workflow("picky")
def picky(ctx: Any) -> Any:
    """A tree made from the input: without ``items`` it cannot render; a repeated item is a duplicate id."""
    return Sequence(*[Task(f"item-{item}", value={"item": item}) for item in ctx.input["items"]])


WORKFLOWS = [hello, typed, slow, failing, chatty, gate, waiter, sleeper, picky]


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
    """A free-form allowedScopes entry: it requires only run:read (the reference behaviour)."""
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


class Amount(BaseModel):
    amount: int


@workflow("typed_pay")
def typed_pay(ctx: Any) -> Any:
    """A wait with an output model: a payload the model refuses is refused (the run keeps waiting)."""
    return Sequence(
        WaitForEvent("paid", event="payment.received", output=Amount),
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
    typed_pay,
]
WEBHOOKS: dict[str, dict[str, Any]] = {
    "typed_pay": {"secret": WEBHOOK_SECRET, "signal": {"name": "payment.received", "payloadPath": "payment"}},
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


def build_humans(db: str, **options: Any) -> Gateway:
    options.setdefault("heartbeat_ms", 1000)
    gateway = Gateway(db=db, **options)
    for wf in HUMAN_WORKFLOWS:
        gateway.register(wf.key, wf, webhook=WEBHOOKS.get(wf.key))
    gateway.register("nightly", nightly, schedule=SCHEDULE)
    gateway.register("hook_blank", hook_none, webhook={"secret": "   "})
    gateway.register("hook_off", hook_none, webhook={"secret": WEBHOOK_SECRET, "run": {"enabled": False}})
    return gateway
