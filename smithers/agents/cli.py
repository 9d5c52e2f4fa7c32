"""CLI coding agents as subprocesses: the part every CLI shares (docs/engine.md#cli-agents).

A :class:`CliAgent` starts its command in the task's working directory, in a process group of its
own, and reads its stream-JSON output line by line through a :class:`StreamParser` (one per CLI):
text becomes ``NodeOutput``, tool use ``ToolCallStarted``/``ToolCallFinished``, usage
``TokenUsageReported``. Its standard error is streamed as ``stderr``. When the call ends in any way
(answered, failed, timed out, cancelled) whatever is left of the process group is terminated, then
killed after ``kill_grace_ms``: a coding agent's own children (a test run, a dev server) never
outlive its attempt. On Linux the CLI itself is also killed when the engine's process dies.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from smithers.engine.agent import AgentCall, AgentReply, AgentUsage, ToolsPolicy, looks_like_auth_error
from smithers.engine.procgroups import group_alive, signal_group
from smithers.errors import AgentAuthError, AgentConfigError, AgentError, AgentRateLimitError

log = logging.getLogger(__name__)

STDERR_TAIL = 4000
EXIT_POLL_S = 0.05
PIPE_GRACE_S = 1.0
"""How long output already written is read after the process exited (a child may hold the pipes)."""
LINE_LIMIT = 32 * 1024 * 1024
"""The longest stream-JSON line read (a tool result can be large)."""


_RATE_LIMIT_TEXT = re.compile(
    r"\b429\b|rate[ _-]?limit|too many requests|overloaded|quota exceeded|resource[ _-]?exhausted",
    re.IGNORECASE,
)
_RETRY_AFTER_TEXT = re.compile(
    r"(?:retry|try again)\s*(?:after|in)?\s*:?\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|seconds?|m|min|minutes?)?\b",
    re.IGNORECASE,
)


def retry_after_in(text: str) -> int | None:
    """The wait a rate-limit message asks for (``retry after 30s``, ``try again in 2 minutes``), in ms."""
    found = _RETRY_AFTER_TEXT.search(text)
    if found is None:
        return None
    value, unit = float(found.group(1)), (found.group(2) or "s").lower()
    scale = 1 if unit.startswith("ms") or unit.startswith("milli") else 60_000 if unit.startswith("m") else 1000
    return int(value * scale)


def failure(engine: str, message: str, **details: Any) -> AgentError:
    """An agent failure: an auth failure or a rate limit when its text reads like one."""
    text = f"{engine}: {message}"
    if looks_like_auth_error(message):
        return AgentAuthError(text, details={"engine": engine, **details})
    if _RATE_LIMIT_TEXT.search(message):
        wait = retry_after_in(message)
        extra = {} if wait is None else {"retryAfterMs": wait}
        return AgentRateLimitError(text, retry_after_ms=wait, details={"engine": engine, **details, **extra})
    return AgentError(text, details={"engine": engine, **details})


class StreamParser(abc.ABC):
    """Reads one CLI's stream-JSON lines for one call; subclasses handle each CLI's events."""

    engine = "cli"

    def __init__(self, call: AgentCall):
        self.call = call
        self.texts: list[str] = []
        """Assistant text seen in the stream, in order."""
        self.final: str | None = None
        """The CLI's own final answer, when it gives one (else the texts joined)."""
        self._session_id: str | None = None
        self.error: str | None = None
        self.model: str | None = None

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        """The CLI's session, reported to the engine as soon as it is seen (a crash keeps it)."""
        if value and value != self._session_id:
            self._session_id = value
            self.call.on_session(value)

    @abc.abstractmethod
    def line(self, event: dict[str, Any]) -> None:
        """Take one stream-JSON event of the CLI."""

    def text(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.call.on_output(text, "stdout")

    def usage(self, input_tokens: Any, output_tokens: Any, **extra: Any) -> None:
        def count(value: Any) -> int | None:
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        self.call.on_usage(
            AgentUsage(
                input_tokens=count(input_tokens) or 0,
                output_tokens=count(output_tokens) or 0,
                cache_read_tokens=count(extra.get("cache_read")),
                cache_write_tokens=count(extra.get("cache_write")),
                reasoning_tokens=count(extra.get("reasoning")),
                cost_usd=float(extra["cost"]) if isinstance(extra.get("cost"), int | float) else None,
                model=self.model,
            )
        )

    def reply(self, code: int, stderr: str) -> AgentReply:
        if self.error is not None:
            raise failure(self.engine, self.error, exitCode=code, sessionId=self.session_id)
        if code != 0:
            tail = stderr.strip()[-STDERR_TAIL:] or "no output on stderr"
            raise failure(self.engine, f"exited with status {code}: {tail}", exitCode=code)
        text = self.final if self.final is not None else "".join(self.texts)
        return AgentReply(text, session_id=self.session_id)


class CliAgent(abc.ABC):
    """A coding agent run as a subprocess that speaks stream-JSON (subclassed per CLI).

    ``command``: the executable and any leading arguments (default: the CLI's name, found on
    ``PATH``). ``model``: passed with the CLI's model flag. ``tools``: ``"all"`` (the CLI may use
    every tool without asking: it runs unattended) or ``"explicit-only"`` (only ``allowed_tools``);
    None (the default) takes the run's ``cliAgentTools`` default, itself ``"all"`` unless the
    gateway's ``defaults`` or the run's config say otherwise.
    ``args``: more arguments, added before the prompt. ``env``: variables added to the process's
    environment (API keys, ``HOME``). ``id``: the agent's name in the run (default: the CLI's).
    ``kill_grace_ms``: how long a terminated process group has before it is killed.
    """

    engine: ClassVar[str] = "cli"
    default_command: ClassVar[Sequence[str]] = ()

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        model: str | None = None,
        tools: ToolsPolicy | None = None,
        allowed_tools: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        id: str | None = None,
        kill_grace_ms: int = 2000,
    ):
        if tools not in (None, "all", "explicit-only"):
            raise AgentConfigError(f"{type(self).__name__}: tools must be 'all' or 'explicit-only', not {tools!r}")
        self.command = list(command) if command is not None else list(self.default_command)
        if not self.command:
            raise AgentConfigError(f"{type(self).__name__}: the command is empty")
        self.model = model
        self.tools = tools
        self.allowed_tools = list(allowed_tools)
        self.args = list(args)
        self.env = dict(env or {})
        self.id = id or self.engine
        self.kill_grace_ms = kill_grace_ms

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    side_effect_tools: ClassVar[frozenset[str] | None] = None
    """The CLI's tools that change things: a new attempt is warned of those earlier ones ran."""

    def policy(self, call: AgentCall) -> ToolsPolicy:
        """The tools policy of this call: the agent's own, else the run's default."""
        return self.tools or call.tools_default

    @abc.abstractmethod
    def argv(self, call: AgentCall) -> list[str]:
        """The command line that asks the CLI this call's prompt."""

    @abc.abstractmethod
    def parser(self, call: AgentCall) -> StreamParser:
        """A parser for the CLI's stream-JSON output of this call."""

    async def run(self, call: AgentCall) -> AgentReply:
        argv = self.argv(call)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=call.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **self.env},
                start_new_session=True,  # its own process group: killed whole when the call ends
                limit=LINE_LIMIT,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError as exc:
            raise AgentError(
                f"{self.engine}: {argv[0]!r} was not found; install it or pass {type(self).__name__}(command=[...])",
                details={"engine": self.engine, "command": argv[0]},
            ) from exc
        call.on_process(proc.pid)  # its group, recorded so a resume after a crash can end it
        parser = self.parser(call)
        stderr: list[str] = []
        readers = asyncio.ensure_future(asyncio.gather(self._stdout(proc, parser), self._stderr(proc, call, stderr)))
        try:
            # Until it exits or closes its output. A child it leaves running can hold the pipes open,
            # so its exit is watched, not the end of its output (nor proc.wait(), which waits for both).
            while proc.returncode is None and not readers.done():
                await asyncio.wait({readers}, timeout=EXIT_POLL_S)
            if not readers.done():  # it exited: what it wrote before is still in the pipes
                await asyncio.wait({readers}, timeout=PIPE_GRACE_S)
            while proc.returncode is None:  # it closed its output and goes on: its exit is the answer
                await asyncio.sleep(EXIT_POLL_S)
        finally:
            await self._end_group(proc)
            call.on_process(None)
            if not readers.done():
                await asyncio.wait({readers}, timeout=PIPE_GRACE_S)
                readers.cancel()
        if not readers.cancelled() and readers.exception() is not None:
            raise AgentError(
                f"{self.engine}: reading its output failed: {readers.exception()}"
            ) from readers.exception()
        return parser.reply(proc.returncode if proc.returncode is not None else -1, "".join(stderr))

    async def _stdout(self, proc: asyncio.subprocess.Process, parser: StreamParser) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                try:
                    parser.line(event)
                except Exception:  # an event of a shape this parser does not know: shown, not fatal
                    log.warning("%s: could not read the event %s", self.engine, line[:500], exc_info=True)
                    parser.call.on_output(line + "\n", "stdout")
            else:  # a banner or a plain message between the JSON lines
                parser.call.on_output(line + "\n", "stdout")

    async def _stderr(self, proc: asyncio.subprocess.Process, call: AgentCall, tail: list[str]) -> None:
        assert proc.stderr is not None
        size = 0
        while chunk := await proc.stderr.read(65536):
            text = chunk.decode(errors="replace")
            call.on_output(text, "stderr")
            tail.append(text)
            size += len(text)
            while size > STDERR_TAIL * 2 and len(tail) > 1:
                size -= len(tail.pop(0))

    async def _end_group(self, proc: asyncio.subprocess.Process) -> None:
        """Terminate what is left of the process group, then kill it after the grace period."""
        group = proc.pid
        if group_alive(group):
            signal_group(group, signal.SIGTERM)
            deadline = asyncio.get_running_loop().time() + self.kill_grace_ms / 1000
            while group_alive(group) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(EXIT_POLL_S)
            signal_group(group, signal.SIGKILL)
        while proc.returncode is None:  # reaped by the event loop's child watcher
            await asyncio.sleep(EXIT_POLL_S)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    """On Linux, the CLI is killed if the process running the engine dies (a crash, a SIGKILL):
    nobody is left to end its process group. Elsewhere this does nothing."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
