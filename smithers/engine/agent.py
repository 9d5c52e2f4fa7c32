"""Agent tasks: the interface the engine calls agents through, and one agent attempt.

An agent is any object with an ``id`` and an ``async run(call) -> AgentReply``
(:class:`Agent`); ``smithers.agents`` holds the implementations (model APIs, CLI coding agents).
The engine never imports them. One attempt (docs/engine.md#agent-tasks):

1. picks the agent: ``agents[min(attempt - 1, len - 1)]`` of the agents not disabled by the auth
   circuit breaker (:func:`choose_agent`);
2. renders the prompt (a string, or a callable of ``ctx``) and appends the output model's JSON
   Schema;
3. calls the agent, streaming its output, tool calls and token usage to the run's events;
4. takes the JSON of the answer and validates it; a refused answer is sent back to the agent in the
   same conversation, up to :data:`MAX_SCHEMA_RETRIES` times, without using up the task's retries.

Around each call: the run's token budget is checked before it and watched during it
(:class:`~smithers.engine.usage.TokenBudget`); a provider's 429 is waited out and the call made
again, up to :data:`RATE_LIMIT_TRIES` times, before the attempt fails and the chain moves on; each
call is an ``AgentEvent`` ``started`` … ``completed`` pair with the turn's prompt and answer (the
transcript, docs/engine.md#transcripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from smithers.engine.agent_json import correction_prompt, parse_answer, schema_instructions
from smithers.engine.context import Ctx
from smithers.engine.dsl import Task
from smithers.engine.procgroups import process_record
from smithers.engine.usage import TokenBudget
from smithers.errors import (
    AGENT_AUTH_FAILED,
    AgentAuthError,
    AgentConfigError,
    AgentError,
    AgentRateLimitError,
    InvalidOutputError,
    SmithersError,
    TaskTimeoutError,
    TokenBudgetExceededError,
    format_stack,
)

MAX_SCHEMA_RETRIES = 3
"""Refused answers sent back to the agent within one attempt before the attempt fails."""
DEFAULT_AGENT_HEARTBEAT_MS = 600_000
HEARTBEAT_ENV = "SMITHERS_TASK_HEARTBEAT_MS"

RATE_LIMIT_TRIES = 4
"""Calls of one turn refused with 429 before the attempt fails with ``AGENT_RATE_LIMITED``."""
RATE_LIMIT_BACKOFF_MS = 1000
"""The first wait after a 429 that names none (doubled at each try)."""
MAX_RATE_LIMIT_WAIT_MS = 120_000
"""The longest wait taken for one 429: a provider asking for more fails the attempt at once."""
TRANSCRIPT_TEXT_LIMIT = 65_536
"""The longest prompt or answer an ``AgentEvent`` carries (the answer is whole in ``response_text``)."""

OutputStream = Literal["stdout", "stderr"]
ToolsPolicy = Literal["all", "explicit-only"]
"""``cliAgentTools``: a CLI agent may use every tool unattended, or only those it was given."""
TOOLS_POLICIES: tuple[ToolsPolicy, ...] = ("all", "explicit-only")


@dataclass
class AgentUsage:
    """Tokens (and cost, when the provider reports or prices it) of one agent call or of an attempt."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    model: str | None = None

    def add(self, other: AgentUsage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd"):
            theirs = getattr(other, name)
            if theirs is not None:
                setattr(self, name, (getattr(self, name) or 0) + theirs)
        self.model = other.model or self.model

    def to_json(self) -> dict[str, Any]:
        """The camelCase fields of ``TokenUsageReported`` and of the attempt's ``meta_json.usage``."""
        out: dict[str, Any] = {"inputTokens": self.input_tokens, "outputTokens": self.output_tokens}
        for key, value in (
            ("cacheReadTokens", self.cache_read_tokens),
            ("cacheWriteTokens", self.cache_write_tokens),
            ("reasoningTokens", self.reasoning_tokens),
            ("costUsd", self.cost_usd),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclass
class ToolCall:
    """A tool the agent started (``status="started"``) or finished (``"success"``/``"error"``)."""

    name: str
    status: Literal["started", "success", "error"]
    call_id: str | None = None
    """Pairs a finish with its start; without it, a finish closes the latest open call of that name."""
    input: Any = None
    output: Any = None
    error: str | None = None


@dataclass
class AgentReply:
    """What an agent answered to one call."""

    text: str
    usage: AgentUsage | None = None
    """Used when the agent did not report usage through ``call.on_usage`` during the call."""
    session_id: str | None = None
    """The agent's own session (a CLI's), kept in the attempt so a later call can continue it."""
    conversation: Any = None
    """Opaque state handed back in the next call of the attempt (``call.conversation``) to continue it."""


@dataclass
class AgentCall:
    """One call of an agent: what to answer, where, for how long, and where to stream."""

    prompt: str
    """The message of this turn: the task's prompt (schema appended) first, then a correction."""
    schema: dict[str, Any] | None
    """The output model's JSON Schema (already in the first prompt), or None without a model."""
    cwd: str
    """The directory the agent works in: the workflow's ``workdir``, else the process's."""
    timeout_ms: int | None
    """What is left of the task's ``timeout_ms`` (the engine also enforces it)."""
    abort: asyncio.Event
    """Set when the attempt ends (finished, failed, timed out, cancelled): stop any work left."""
    on_output: Callable[[str, OutputStream], None]
    """Stream text as it comes (``NodeOutput`` events, batched by the engine)."""
    on_tool_call: Callable[[ToolCall], None]
    on_usage: Callable[[AgentUsage], None]
    """Report usage increments during the call (``TokenUsageReported``); else return it in the reply."""
    conversation: Any = None
    session_id: str | None = None
    """The agent's session to continue (a schema retry, or a resume after a crash), else None."""
    turn: int = 0
    """0 for the first call of the attempt, n for the n-th schema retry."""
    tools_default: ToolsPolicy = "all"
    """The run's ``cliAgentTools`` default, for a CLI agent not told its own."""
    on_session: Callable[[str], None] = lambda _session: None
    """Report the agent's session id as soon as it is known (kept in the attempt for a resume)."""
    on_process: Callable[[int | None], None] = lambda _group: None
    """Report the process group a subprocess agent started (None when it is gone)."""


@runtime_checkable
class Agent(Protocol):
    """What the engine calls: any object with an ``id`` and an async ``run``.

    Raise :class:`~smithers.errors.AgentAuthError` for refused or missing credentials (the auth
    circuit breaker then skips the agent for the rest of the run) and
    :class:`~smithers.errors.AgentError` for other failures; any other exception is wrapped, as an
    auth error when its text looks like one. Cancellation (``asyncio.CancelledError``) must propagate.
    """

    id: str

    async def run(self, call: AgentCall) -> AgentReply: ...


class AgentSink(Protocol):
    """Where an attempt's stream goes: the run's events (``engine/agent_stream.py``)."""

    def output(self, text: str, stream: OutputStream) -> None: ...
    def tool_call(self, call: ToolCall) -> None: ...
    def usage(self, usage: AgentUsage, agent_id: str) -> None: ...
    def agent_event(self, engine: str, event: dict[str, Any]) -> None: ...
    def changed(self, now: bool = False) -> None: ...
    def hold(self) -> None: ...
    def flush(self) -> None: ...


def agent_id(agent: Any) -> str:
    """An agent's stable name (recorded on attempts, used by the auth circuit breaker)."""
    value = getattr(agent, "id", None)
    return value if isinstance(value, str) and value else type(agent).__name__


def agent_engine(agent: Any) -> str:
    """What kind of agent it is (``AgentEvent.engine``): ``claude-code``, ``model``, … else its class."""
    value = getattr(agent, "engine", None)
    return value if isinstance(value, str) and value else type(agent).__name__


def side_effect_tools(agent: Any) -> frozenset[str] | None:
    """The tools of ``agent`` whose effects a new attempt may find already done (its
    ``side_effect_tools``); None when the agent does not say, and every tool it ran counts."""
    value = getattr(agent, "side_effect_tools", None)
    return None if value is None else frozenset(value)


def choose_agent(agents: Sequence[Any], attempt: int, disabled: set[str]) -> Any | None:
    """The agent of attempt ``attempt`` (from 1): ``usable[min(attempt - 1, len - 1)]``, where
    ``usable`` are the agents the auth circuit breaker has not disabled; None when none is left."""
    usable = [a for a in agents if agent_id(a) not in disabled]
    if not usable:
        return None
    return usable[min(attempt - 1, len(usable) - 1)]


_AUTH_TEXT = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|authenticat\w*\s+(failed|failure|error|required)|"
    r"invalid[ _-]?(api[ _-]?key|x-api-key|token|credentials|auth)|incorrect api key|"
    r"api[ _-]?key\b.{0,40}\b(missing|not set|not valid|invalid|not found|required)|"
    r"(missing|no) (api[ _-]?key|credentials)|not logged in|please (log|sign) ?in|log ?in required|"
    r"(token|credentials) (has )?expired|access denied",
    re.IGNORECASE,
)


def looks_like_auth_error(text: str) -> bool:
    """Whether an agent's failure text reads like refused or missing credentials."""
    return bool(_AUTH_TEXT.search(text))


def agent_heartbeat_ms() -> int:
    """The default heartbeat timeout of agent tasks: ``$SMITHERS_TASK_HEARTBEAT_MS``, else 600,000."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_AGENT_HEARTBEAT_MS
    except ValueError:
        return DEFAULT_AGENT_HEARTBEAT_MS
    return value if value > 0 else DEFAULT_AGENT_HEARTBEAT_MS


@dataclass
class AgentAttempt:
    """One agent attempt: the agent chosen for it, where it streams, and what it answered."""

    agent: Any | None
    sink: AgentSink
    cwd: str
    unavailable: SmithersError | None = None
    """Why no agent could be chosen (every agent of the chain disabled by the auth breaker)."""
    budget: TokenBudget = field(default_factory=TokenBudget)
    """The run's token budget, shared by its agent attempts."""
    tools_default: ToolsPolicy = "all"
    preface: str | None = None
    """Put before the first prompt: what earlier attempts of the node already did (the tool replay
    warning), or that this one continues an interrupted conversation."""
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    prompt: str | None = None
    response_text: str | None = None
    session_id: str | None = None
    usage: AgentUsage = field(default_factory=AgentUsage)
    usage_reported: bool = False
    schema_retries: int = 0
    turns: int = 0
    rate_limit_waits: int = 0
    process: dict[str, Any] | None = None
    """The process group of the agent's running subprocess (``procgroups.process_record``)."""

    @property
    def agent_id(self) -> str | None:
        return agent_id(self.agent) if self.agent is not None else None

    def meta(self) -> dict[str, Any]:
        """What the attempt's ``meta_json`` records of the agent (merged into the task's meta)."""
        out: dict[str, Any] = {"agentId": self.agent_id, "turns": self.turns, "schemaRetries": self.schema_retries}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.session_id is not None:
            out["sessionId"] = self.session_id
        if self.rate_limit_waits:
            out["rateLimitWaits"] = self.rate_limit_waits
        if self.process is not None:
            out["process"] = self.process
        if self.usage_reported:
            out["usage"] = self.usage.to_json()
            if self.usage.model:
                out["agentModel"] = self.usage.model
        return out

    def report_usage(self, usage: AgentUsage) -> None:
        self.usage.add(usage)
        self.usage_reported = True
        self.budget.add(usage.input_tokens + usage.output_tokens)
        self.sink.usage(usage, self.agent_id or "")
        self.sink.changed()

    def report_session(self, session_id: str) -> None:
        if session_id and session_id != self.session_id:
            self.session_id = session_id
            self.event("action", action="session", sessionId=session_id)
            self.sink.changed()

    def report_process(self, group: int | None) -> None:
        self.process = None if group is None else process_record(group)
        self.sink.changed(now=group is not None)  # stored at once: a crash right after must find it

    def event(self, kind: str, **fields: Any) -> None:
        """An ``AgentEvent`` of this attempt (``started``, ``action`` or ``completed``)."""
        self.sink.agent_event(
            agent_engine(self.agent) if self.agent is not None else "none",
            {"type": kind, "agentId": self.agent_id, **fields},
        )


def render_prompt(task: Task, ctx: Ctx) -> str:
    prompt = task.prompt
    if callable(prompt):
        try:
            takes_ctx = bool(inspect.signature(prompt).parameters)
        except (TypeError, ValueError):
            takes_ctx = True
        prompt = prompt(ctx) if takes_ctx else prompt()
    if prompt is None:
        raise AgentConfigError(f"Task {task.id!r}: its prompt rendered to None")
    return prompt if isinstance(prompt, str) else str(prompt)


async def run_agent(task: Task, ctx: Ctx, state: AgentAttempt, touch: Callable[[], None]) -> Any:
    """Run one agent attempt of ``task`` and return its validated JSON output (the answer's text
    when the task has no output model). ``touch`` resets the heartbeat watchdog: every streamed
    piece of output, tool call or usage report counts as a sign of life."""
    try:
        return await _converse(task, ctx, state, touch)
    finally:
        state.abort.set()
        state.sink.hold()  # what is left is written with the attempt's outcome, in its transaction


@dataclass(frozen=True)
class Turn:
    """One message of an attempt's conversation and what goes with it."""

    message: str
    schema: dict[str, Any] | None
    conversation: Any
    turn: int
    deadline: float | None
    """``time.monotonic()`` by which the task's ``timeout_ms`` runs out (None without one)."""


async def _converse(task: Task, ctx: Ctx, state: AgentAttempt, touch: Callable[[], None]) -> Any:
    if state.unavailable is not None:
        raise state.unavailable
    agent = state.agent
    assert agent is not None
    schema = task.output.model_json_schema() if task.output is not None else None
    first = render_prompt(task, ctx) + (schema_instructions(schema) if schema is not None else "")
    if state.preface:
        first = f"{state.preface}\n\n{first}"
    state.prompt = first
    state.sink.changed()
    deadline = time.monotonic() + task.timeout_ms / 1000 if task.timeout_ms else None
    message, conversation = first, None
    for turn in range(MAX_SCHEMA_RETRIES + 1):
        touch()
        reply = await _call(agent, state, touch, Turn(message, schema, conversation, turn, deadline))
        if task.output is None:
            return reply.text
        try:
            return parse_answer(reply.text, task.output)
        except InvalidOutputError as exc:
            if turn == MAX_SCHEMA_RETRIES:
                raise InvalidOutputError(
                    f"the agent's answer was refused {MAX_SCHEMA_RETRIES + 1} times; the last: {exc.message}",
                    details={**(exc.details or {}), "agentId": state.agent_id, "schemaRetries": MAX_SCHEMA_RETRIES},
                ) from exc
            state.schema_retries += 1
            conversation = reply.conversation
            can_continue = conversation is not None or reply.session_id is not None
            message = correction_prompt(exc.message, reply.text, None if can_continue else first)
    raise AssertionError("unreachable")  # pragma: no cover


async def _call(agent: Any, state: AgentAttempt, touch: Callable[[], None], ask: Turn) -> AgentReply:
    """One turn: the agent called (again after each 429, up to :data:`RATE_LIMIT_TRIES` times),
    framed by ``AgentEvent`` ``started``/``completed``."""
    state.budget.check(state.agent_id, starting=True)
    state.turns += 1
    # the first turn's prompt is the attempt's meta_json.prompt: not stored twice
    turn = ask.turn
    started: dict[str, Any] = {"turn": turn}
    if turn > 0:
        started["prompt"] = ask.message[:TRANSCRIPT_TEXT_LIMIT]
    if state.session_id is not None:
        started["sessionId"] = state.session_id
    state.event("started", **started)
    try:
        for tries in range(1, RATE_LIMIT_TRIES + 1):
            try:
                reply = await _call_once(agent, state, touch, ask)
                break
            except AgentRateLimitError as exc:
                wait_ms = _rate_limit_wait(exc, tries, ask.deadline)
                if wait_ms is None:
                    raise
                state.rate_limit_waits += 1
                state.event("action", action="rate-limited", turn=turn, retryAfterMs=wait_ms, tries=tries)
                await _wait_touching(wait_ms, touch)
                state.budget.check(state.agent_id, starting=True)
        else:  # pragma: no cover (the last try raises)
            raise AssertionError("unreachable")
    except BaseException as exc:
        error = exc.to_dict() if isinstance(exc, SmithersError) else {"name": type(exc).__name__}
        state.event("completed", turn=turn, ok=False, error=error)
        raise
    completed: dict[str, Any] = {"turn": turn, "ok": True, "text": reply.text[:TRANSCRIPT_TEXT_LIMIT]}
    if state.session_id is not None:
        completed["sessionId"] = state.session_id
    state.event("completed", **completed)
    return reply


def _rate_limit_wait(exc: AgentRateLimitError, tries: int, deadline: float | None) -> int | None:
    """How long to wait before calling again after the ``tries``-th 429; None to give up now."""
    if tries >= RATE_LIMIT_TRIES:
        return None
    asked = exc.retry_after_ms
    wait = asked if asked is not None and asked >= 0 else RATE_LIMIT_BACKOFF_MS * 2 ** (tries - 1)
    if wait > MAX_RATE_LIMIT_WAIT_MS:
        return None
    if deadline is not None and time.monotonic() + wait / 1000 >= deadline:
        return None  # the task's time would run out while waiting
    return wait


async def _wait_touching(wait_ms: int, touch: Callable[[], None]) -> None:
    """Sleep through a rate-limit wait, telling the heartbeat watchdog the attempt is alive."""
    end = time.monotonic() + wait_ms / 1000
    while (left := end - time.monotonic()) > 0:
        touch()
        await asyncio.sleep(min(left, 5.0))


async def _call_once(agent: Any, state: AgentAttempt, touch: Callable[[], None], ask: Turn) -> AgentReply:
    reported = {"during": False}

    def on_output(text: str, stream: OutputStream = "stdout") -> None:
        touch()
        state.sink.output(text, stream)

    def on_tool_call(call: ToolCall) -> None:
        touch()
        state.sink.tool_call(call)

    def on_usage(usage: AgentUsage) -> None:
        touch()
        reported["during"] = True
        state.report_usage(usage)

    deadline = ask.deadline
    remaining = None if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
    call = AgentCall(
        prompt=ask.message,
        schema=ask.schema,
        cwd=state.cwd,
        timeout_ms=remaining,
        abort=state.abort,
        on_output=on_output,
        on_tool_call=on_tool_call,
        on_usage=on_usage,
        conversation=ask.conversation,
        session_id=state.session_id,
        turn=ask.turn,
        tools_default=state.tools_default,
        on_session=state.report_session,
        on_process=state.report_process,
    )
    name = agent_id(agent)
    try:
        reply = await _within_budget(agent.run(call), state.budget, name)
    except (AgentError, AgentConfigError, TaskTimeoutError, TokenBudgetExceededError) as exc:
        exc.details = {**(exc.details or {}), "agentId": name}
        raise
    except SmithersError as exc:
        raise _classified(name, exc.message, exc) from exc
    except TimeoutError as exc:
        raise TaskTimeoutError(f"agent {name} timed out: {exc}", details={"agentId": name}) from exc
    except Exception as exc:
        raise _classified(name, str(exc) or type(exc).__name__, exc) from exc
    if not isinstance(reply, AgentReply):
        raise AgentError(f"agent {name} returned {type(reply).__name__}, not an AgentReply", details={"agentId": name})
    state.response_text = reply.text
    if reply.session_id is not None:
        state.report_session(reply.session_id)
    if reply.usage is not None and not reported["during"]:
        state.report_usage(reply.usage)
    state.budget.check(name)  # usage reported with the answer may have passed the budget
    return reply


async def _within_budget(call: Awaitable[AgentReply], budget: TokenBudget, name: str) -> AgentReply:
    """Await the agent's call, stopping it when the run's token budget is used up meanwhile (by
    this call's own reports or by another agent task of the run)."""
    if budget.limit is None:
        return await call
    running = asyncio.ensure_future(call)
    exceeded = asyncio.ensure_future(budget.exceeded.wait())
    try:
        await asyncio.wait({running, exceeded}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exceeded.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
    if running.cancelled() or not running.done():
        budget.check(name)
        raise AssertionError("unreachable")  # pragma: no cover (check raises once exceeded is set)
    return running.result()


def _classified(name: str, text: str, exc: BaseException) -> AgentError:
    """An agent's failure as AgentError, or AgentAuthError when its text reads like an auth failure."""
    klass = AgentAuthError if looks_like_auth_error(text) else AgentError
    error = klass(f"agent {name} failed: {text}", details={"agentId": name, "exception": type(exc).__name__})
    error.stack = format_stack(exc)
    return error


def is_auth_failure(error: SmithersError) -> bool:
    return error.code == AGENT_AUTH_FAILED
