"""Claude Code, Codex and Gemini CLI as agents: their command lines and stream-JSON events
(docs/engine.md#cli-agents).

| CLI | Command | A schema retry continues with |
|---|---|---|
| Claude Code | ``claude -p PROMPT --output-format stream-json --verbose`` | ``--resume SESSION`` |
| Codex | ``codex exec --json --skip-git-repo-check PROMPT`` | ``codex exec --json … resume THREAD PROMPT`` |
| Gemini CLI | ``gemini --output-format stream-json -p PROMPT`` | ``--resume SESSION`` |
"""

from __future__ import annotations

from typing import Any

from smithers.agents.cli import CliAgent, StreamParser
from smithers.engine.agent import AgentCall, ToolCall


def _prompt(text: str) -> str:
    """A prompt is one argument; one starting with ``-`` would read as an option."""
    return " " + text if text.startswith("-") else text


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---- Claude Code ------------------------------------------------------------------------------
class ClaudeParser(StreamParser):
    """``system``/``init`` (session, model), ``assistant`` (text and ``tool_use`` blocks), ``user``
    (``tool_result`` blocks), ``result`` (the answer, usage, cost, or the error)."""

    engine = "claude-code"

    def line(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        self.session_id = _str(event.get("session_id")) or self.session_id
        if kind == "system":
            self.model = _str(event.get("model")) or self.model
            return
        message = _dict(event.get("message"))
        blocks = _list(message.get("content"))
        if kind == "assistant":
            self.model = _str(message.get("model")) or self.model
            for block in blocks:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text":
                    text = str(block.get("text", ""))
                    self.text(text if text.endswith("\n") else text + "\n")
                elif block.get("type") == "tool_use":
                    name = str(block.get("name") or "tool")
                    self.call.on_tool_call(
                        ToolCall(name, "started", call_id=_str(block.get("id")), input=block.get("input"))
                    )
        elif kind == "user":
            for block in blocks:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    failed = bool(block.get("is_error"))
                    content = block.get("content")
                    error = str(content)[:2000] if failed else None
                    call_id = _str(block.get("tool_use_id"))
                    self.call.on_tool_call(
                        ToolCall("tool", "error" if failed else "success", call_id=call_id, error=error)
                    )
        elif kind == "result":
            usage = _dict(event.get("usage"))
            if usage or event.get("total_cost_usd") is not None:
                self.usage(
                    usage.get("input_tokens"),
                    usage.get("output_tokens"),
                    cache_read=usage.get("cache_read_input_tokens"),
                    cache_write=usage.get("cache_creation_input_tokens"),
                    cost=event.get("total_cost_usd"),
                )
            result = event.get("result")
            if event.get("is_error") or event.get("subtype") not in (None, "success"):
                self.error = str(result or event.get("subtype") or "failed")
            elif isinstance(result, str):
                self.final = result


class ClaudeCode(CliAgent):
    """Claude Code: ``claude -p`` with ``--output-format stream-json``. ``tools="all"`` adds
    ``--dangerously-skip-permissions`` (it runs unattended); ``"explicit-only"`` passes
    ``--allowedTools`` with ``allowed_tools``."""

    engine = "claude-code"
    default_command = ("claude",)
    side_effect_tools = frozenset({"Bash", "Edit", "MultiEdit", "Write", "NotebookEdit"})

    def argv(self, call: AgentCall) -> list[str]:
        argv = [*self.command, "-p", _prompt(call.prompt), "--output-format", "stream-json", "--verbose"]
        if call.session_id:
            argv += ["--resume", call.session_id]
        if self.model:
            argv += ["--model", self.model]
        if self.policy(call) == "all":
            argv.append("--dangerously-skip-permissions")
        elif self.allowed_tools:
            argv += ["--allowedTools", ",".join(self.allowed_tools)]
        return argv + self.args

    def parser(self, call: AgentCall) -> StreamParser:
        return ClaudeParser(call)


# ---- Codex --------------------------------------------------------------------------------------
_CODEX_TOOLS = {"command_execution", "file_change", "mcp_tool_call", "web_search"}


class CodexParser(StreamParser):
    """``thread.started`` (the thread id), ``item.started``/``item.completed`` (``agent_message``,
    ``command_execution``, ``file_change``, ``mcp_tool_call``, ``web_search``; ``reasoning`` is
    not streamed), ``turn.completed`` (usage), ``turn.failed`` and ``error``."""

    engine = "codex"

    def __init__(self, call: AgentCall):
        super().__init__(call)
        self.started: set[str] = set()

    def line(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("thread.started", "thread.resumed"):
            self.session_id = _str(event.get("thread_id")) or self.session_id
        elif kind in ("item.started", "item.completed"):
            item = event.get("item")
            if isinstance(item, dict):
                self._item(item, done=kind == "item.completed")
        elif kind == "turn.completed":
            usage = _dict(event.get("usage"))
            self.usage(
                usage.get("input_tokens"), usage.get("output_tokens"), cache_read=usage.get("cached_input_tokens")
            )
        elif kind == "turn.failed":
            error = event.get("error")
            self.error = str(error.get("message") if isinstance(error, dict) else error or "the turn failed")
        elif kind == "error":
            self.error = str(event.get("message") or "error")

    def _item(self, item: dict[str, Any], done: bool) -> None:
        kind = item.get("type") or item.get("item_type")
        item_id = _str(item.get("id"))
        if kind == "agent_message" and done:
            text = str(item.get("text", ""))
            self.final = text
            self.text(text if text.endswith("\n") else text + "\n")
        elif kind == "error" and done:
            self.call.on_output(str(item.get("message", "")) + "\n", "stderr")
        elif kind in _CODEX_TOOLS:
            name = self._tool_name(kind, item)
            if item_id is None or item_id not in self.started:
                if item_id is not None:
                    self.started.add(item_id)
                self.call.on_tool_call(ToolCall(name, "started", call_id=item_id, input=self._tool_input(kind, item)))
            if done:
                ok = item.get("status") in (None, "completed") and item.get("exit_code") in (None, 0)
                error = None if ok else str(item.get("aggregated_output") or item.get("error") or item.get("status"))
                self.call.on_tool_call(ToolCall(name, "success" if ok else "error", call_id=item_id, error=error))

    @staticmethod
    def _tool_name(kind: str, item: dict[str, Any]) -> str:
        if kind == "command_execution":
            return "shell"
        if kind == "mcp_tool_call":
            return f"{item.get('server', 'mcp')}.{item.get('tool', 'tool')}"
        return "apply_patch" if kind == "file_change" else kind

    @staticmethod
    def _tool_input(kind: str, item: dict[str, Any]) -> Any:
        if kind == "command_execution":
            return {"command": item.get("command")}
        if kind == "web_search":
            return {"query": item.get("query")}
        return item.get("arguments") if kind == "mcp_tool_call" else item.get("changes")


class Codex(CliAgent):
    """Codex: ``codex exec --json``. ``tools="all"`` adds
    ``--dangerously-bypass-approvals-and-sandbox`` (it runs unattended); ``"explicit-only"`` runs it
    in the read-only sandbox (``--sandbox read-only``)."""

    engine = "codex"
    default_command = ("codex",)
    side_effect_tools = frozenset({"shell", "apply_patch"})

    def argv(self, call: AgentCall) -> list[str]:
        argv = [*self.command, "exec", "--json", "--skip-git-repo-check"]
        if self.model:
            argv += ["--model", self.model]
        if self.policy(call) == "all":
            argv.append("--dangerously-bypass-approvals-and-sandbox")
        else:
            argv += ["--sandbox", "read-only"]
        argv += self.args
        if call.session_id:
            argv += ["resume", call.session_id]
        return [*argv, _prompt(call.prompt)]

    def parser(self, call: AgentCall) -> StreamParser:
        return CodexParser(call)


# ---- Gemini CLI ---------------------------------------------------------------------------------
class GeminiParser(StreamParser):
    """``init`` (session, model), ``message`` (assistant text, streamed in deltas), ``tool_use``,
    ``tool_result``, ``error`` (a warning, streamed to stderr) and ``result`` (status and stats)."""

    engine = "gemini"

    def line(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "init":
            self.session_id = _str(event.get("session_id")) or _str(event.get("sessionId")) or self.session_id
            self.model = _str(event.get("model")) or self.model
        elif kind == "message" and event.get("role") == "assistant":
            self.text(str(event.get("content", "")))
        elif kind == "tool_use":
            name = str(event.get("tool_name") or "tool")
            self.call.on_tool_call(
                ToolCall(name, "started", call_id=_str(event.get("tool_id")), input=event.get("parameters"))
            )
        elif kind == "tool_result":
            ok = event.get("status") in (None, "success")
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            call_id = _str(event.get("tool_id"))
            self.call.on_tool_call(
                ToolCall("tool", "success" if ok else "error", call_id=call_id, error=None if ok else str(message))
            )
        elif kind == "error":
            self.call.on_output(str(event.get("message", "")) + "\n", "stderr")
        elif kind == "result":
            stats = _dict(event.get("stats"))
            if stats:
                self.usage(
                    stats.get("input_tokens", stats.get("inputTokens")),
                    stats.get("output_tokens", stats.get("outputTokens")),
                    cache_read=stats.get("cached", stats.get("cached_tokens")),
                )
            if event.get("status") not in (None, "success"):
                error = event.get("error")
                self.error = str((error.get("message") if isinstance(error, dict) else error) or "failed")


class Gemini(CliAgent):
    """Gemini CLI: ``gemini --output-format stream-json -p``. ``tools="all"`` adds ``--yolo`` (it runs
    unattended); ``"explicit-only"`` passes ``--allowed-tools`` with ``allowed_tools``."""

    engine = "gemini"
    default_command = ("gemini",)
    side_effect_tools = frozenset({"run_shell_command", "write_file", "replace"})

    def argv(self, call: AgentCall) -> list[str]:
        argv = [*self.command, "--output-format", "stream-json"]
        if call.session_id:
            argv += ["--resume", call.session_id]
        if self.model:
            argv += ["--model", self.model]
        if self.policy(call) == "all":
            argv.append("--yolo")
        elif self.allowed_tools:
            argv += ["--allowed-tools", ",".join(self.allowed_tools)]
        return [*argv, *self.args, "-p", _prompt(call.prompt)]

    def parser(self, call: AgentCall) -> StreamParser:
        return GeminiParser(call)
