"""Agents for agent tasks: ``Task(id, output=Model, agent=..., prompt=...)`` (docs/engine.md#agent-tasks).

* :class:`Model` — a model API through pydantic-ai (OpenAI, Anthropic, OpenAI-compatible servers
  such as vLLM or Ollama through ``base_url``, …); needs the optional extra
  ``smithers-orchestrator[agents]``.
* :class:`ClaudeCode`, :class:`Codex`, :class:`Gemini` — CLI coding agents run as subprocesses in
  the task's working directory, their stream-JSON output streamed as events.

Any object with an ``id`` and an ``async run(call: AgentCall) -> AgentReply`` is an agent too
(:class:`Agent`); the engine calls agents only through that interface.
"""

from smithers.agents.cli import CliAgent
from smithers.agents.coding import ClaudeCode, Codex, Gemini
from smithers.agents.model import Model
from smithers.engine.agent import Agent, AgentCall, AgentReply, AgentUsage, ToolCall

__all__ = [
    "Agent",
    "AgentCall",
    "AgentReply",
    "AgentUsage",
    "ClaudeCode",
    "CliAgent",
    "Codex",
    "Gemini",
    "Model",
    "ToolCall",
]
