"""``Model``: a model API as an agent, through pydantic-ai (the optional extra ``[agents]``).

``Model("openai:gpt-5-mini")``, ``Model("anthropic:claude-sonnet-4-5")``, any model name
pydantic-ai knows (``provider:model``), an OpenAI-compatible server (vLLM, Ollama, …) with
``Model("llama3", base_url="http://127.0.0.1:11434/v1")``, or a pydantic-ai model object
(``Model(TestModel())`` in tests). The answer is plain text: the engine takes its JSON and checks
it against the task's output model, and a refused answer continues the same conversation through
pydantic-ai's message history (docs/engine.md#agent-tasks).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Sequence
from typing import Any

from smithers.engine.agent import AgentCall, AgentReply, AgentUsage, ToolCall
from smithers.errors import AgentAuthError, AgentConfigError, AgentError, AgentRateLimitError, TaskTimeoutError

EXTRA = "smithers-orchestrator[agents]"
_ENV_VAR = re.compile(r"`?([A-Z][A-Z0-9_]*(?:API_KEY|_TOKEN|_KEY))`?")


def _require_pydantic_ai() -> None:
    try:
        import pydantic_ai  # noqa: F401
    except ImportError as exc:
        raise AgentConfigError(
            f"Model agents need pydantic-ai, which is not installed: pip install '{EXTRA}'",
            details={"extra": EXTRA},
        ) from exc


class Model:
    """A model API as an agent.

    ``model``: ``"provider:name"`` (``openai:gpt-5-mini``, ``anthropic:…``, ``google-gla:…``, …), a
    bare model name with ``base_url``, or a pydantic-ai ``Model`` object. ``base_url``: an
    OpenAI-compatible endpoint (``…/v1``); ``api_key``: its key (else the provider's environment
    variable, such as ``OPENAI_API_KEY``; a local server may need none). ``instructions``: a system
    prompt. ``settings``: pydantic-ai model settings (``{"temperature": 0}``). ``tools``: functions
    the model may call (pydantic-ai tools), streamed as ``ToolCallStarted``/``ToolCallFinished``.
    ``id``: the agent's name in the run (default ``model:<model>``), which the auth circuit breaker
    and the attempt's ``meta_json.agentId`` use. ``side_effect_tools``: the names of ``tools`` that
    change things, so a new attempt of the task is warned of those an earlier one already ran.
    A 429 (too many requests) is raised with the provider's ``Retry-After`` for the engine to wait
    out (docs/engine.md#cost-and-limits).
    """

    engine = "model"

    def __init__(
        self,
        model: Any,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        instructions: str | None = None,
        settings: dict[str, Any] | None = None,
        tools: Sequence[Any] = (),
        side_effect_tools: Sequence[str] = (),
        id: str | None = None,
    ):
        _require_pydantic_ai()
        if not isinstance(model, str):
            from pydantic_ai.models import Model as PydanticModel

            if not isinstance(model, PydanticModel):
                raise AgentConfigError(f"Model(): {model!r} is neither a model name nor a pydantic-ai model")
        elif not model:
            raise AgentConfigError("Model(): the model name is empty")
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.instructions = instructions
        self.settings = settings
        self.tools = list(tools)
        self.side_effect_tools = frozenset(side_effect_tools)
        self.id = id or self._default_id()
        self._agent: Any = None

    def _default_id(self) -> str:
        if isinstance(self.model, str):
            return f"model:{self.model}" + (f"@{self.base_url}" if self.base_url else "")
        return f"model:{getattr(self.model, 'model_name', type(self.model).__name__)}"

    def __repr__(self) -> str:
        return f"Model({self.id!r})"

    # ---- building the pydantic-ai agent (on first use: a missing key fails the attempt, not the import)
    def _pydantic_model(self) -> Any:
        model = self.model
        if not isinstance(model, str):
            return model
        if self.base_url is not None:
            from pydantic_ai.models.openai import OpenAIChatModel
            from pydantic_ai.providers.openai import OpenAIProvider

            name = model.removeprefix("openai:")
            return OpenAIChatModel(name, provider=OpenAIProvider(base_url=self.base_url, api_key=self.api_key))
        if self.api_key is not None:
            provider, _, name = model.partition(":")
            if provider == "openai":
                from pydantic_ai.models.openai import OpenAIResponsesModel
                from pydantic_ai.providers.openai import OpenAIProvider

                return OpenAIResponsesModel(name, provider=OpenAIProvider(api_key=self.api_key))
            if provider == "anthropic":
                from pydantic_ai.models.anthropic import AnthropicModel
                from pydantic_ai.providers.anthropic import AnthropicProvider

                return AnthropicModel(name, provider=AnthropicProvider(api_key=self.api_key))
        from pydantic_ai.models import infer_model

        return infer_model(model)

    def _pydantic_agent(self) -> Any:
        if self._agent is None:
            from pydantic_ai import Agent as PydanticAgent
            from pydantic_ai.exceptions import UserError

            try:
                model = self._pydantic_model()
            except UserError as exc:
                raise self._user_error(exc) from exc
            self._agent = PydanticAgent(model, output_type=str, instructions=self.instructions, tools=self.tools)
        return self._agent

    def _user_error(self, exc: Exception) -> AgentAuthError | AgentConfigError:
        message = str(exc)
        var = _ENV_VAR.search(message)
        if var is not None:  # a missing key: the auth circuit breaker moves on to the next agent
            return AgentAuthError(
                f"{self.id}: the API key is missing: set {var.group(1)} (or pass Model(..., api_key=...))",
                details={"agentId": self.id, "envVar": var.group(1)},
            )
        return AgentConfigError(f"{self.id}: {message}", details={"agentId": self.id})

    # ---- one call --------------------------------------------------------------------------------
    async def run(self, call: AgentCall) -> AgentReply:
        from pydantic_ai.exceptions import (
            ModelAPIError,
            ModelAuthenticationError,
            ModelHTTPError,
            ModelRateLimitError,
            RunTimedOut,
            UnexpectedModelBehavior,
            UserError,
        )

        agent = self._pydantic_agent()
        handler = _stream_handler(call)
        try:
            result = await agent.run(
                call.prompt,
                message_history=call.conversation,
                event_stream_handler=handler,
                model_settings=self.settings,
                timeout=call.timeout_ms / 1000 if call.timeout_ms else None,
            )
        except ModelAuthenticationError as exc:
            raise AgentAuthError(f"{self.id}: credentials refused: {exc}", details=self._details(exc)) from exc
        except RunTimedOut as exc:
            raise TaskTimeoutError(f"{self.id}: no answer within {call.timeout_ms} ms") from exc
        except ModelAPIError as exc:
            if isinstance(exc, ModelRateLimitError) or getattr(exc, "status_code", None) == 429:
                details = self._details(exc)
                raise AgentRateLimitError(
                    f"{self.id}: too many requests: {exc}",
                    retry_after_ms=details.get("retryAfterMs"),
                    details={**details, "status": 429},
                ) from exc
            details = self._details(exc)
            if isinstance(exc, ModelHTTPError):
                details["status"] = exc.status_code
            raise AgentError(f"{self.id}: {exc}", details=details) from exc
        except UnexpectedModelBehavior as exc:
            raise AgentError(f"{self.id}: unexpected model behaviour: {exc}", details={"agentId": self.id}) from exc
        except UserError as exc:
            raise self._user_error(exc) from exc
        return AgentReply(text=str(result.output), usage=self._usage(result), conversation=result.all_messages())

    def _details(self, exc: Any) -> dict[str, Any]:
        details: dict[str, Any] = {"agentId": self.id}
        wait_ms = _retry_after_ms(getattr(exc, "headers", None), getattr(exc, "retry_after", None))
        if wait_ms is not None:
            details["retryAfterMs"] = wait_ms
        return details

    def _usage(self, result: Any) -> AgentUsage:
        usage = result.usage
        response = getattr(result, "response", None)
        cost = getattr(usage, "cost", None)
        reasoning = getattr(usage, "output_reasoning_tokens", None)
        return AgentUsage(
            input_tokens=int(usage.input_tokens or 0),
            output_tokens=int(usage.output_tokens or 0),
            cache_read_tokens=int(usage.cache_read_tokens) if usage.cache_read_tokens else None,
            cache_write_tokens=int(usage.cache_write_tokens) if usage.cache_write_tokens else None,
            reasoning_tokens=int(reasoning) if reasoning else None,
            cost_usd=float(cost) if cost is not None else None,
            model=getattr(response, "model_name", None) or getattr(self._agent.model, "model_name", None),
        )


def _retry_after_ms(headers: Any, parsed_s: Any) -> int | None:
    """The wait a provider asked for: ``retry-after-ms`` (OpenAI, Anthropic), else ``Retry-After``
    in seconds, fractions too (pydantic-ai reads whole seconds and dates), in ms."""
    if isinstance(headers, dict):
        for name, scale in (("retry-after-ms", 1.0), ("retry-after", 1000.0)):
            try:
                value = float(headers[name]) * scale
            except (KeyError, TypeError, ValueError):
                continue
            if value >= 0:
                return int(value)
    return int(parsed_s * 1000) if isinstance(parsed_s, int | float) and parsed_s >= 0 else None


def _stream_handler(call: AgentCall) -> Any:
    """A pydantic-ai event stream handler that forwards text and tool calls to the engine."""
    from pydantic_ai.messages import (
        FunctionToolCallEvent,
        FunctionToolResultEvent,
        PartDeltaEvent,
        PartStartEvent,
        TextPart,
        TextPartDelta,
        ToolReturnPart,
    )

    async def handle(_ctx: Any, events: AsyncIterable[Any]) -> None:
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                call.on_output(event.part.content, "stdout")
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                call.on_output(event.delta.content_delta, "stdout")
            elif isinstance(event, FunctionToolCallEvent):
                part = event.part
                try:
                    args: Any = part.args_as_dict()
                except Exception:  # arguments that are not a JSON object: kept as sent
                    args = part.args
                call.on_tool_call(ToolCall(part.tool_name, "started", call_id=part.tool_call_id, input=args))
            elif isinstance(event, FunctionToolResultEvent):
                result: Any = event.part
                ok = isinstance(result, ToolReturnPart) and getattr(result, "outcome", "success") in (None, "success")
                error = None if ok else str(getattr(result, "content", ""))[:2000]
                name = getattr(result, "tool_name", None) or "tool"
                call_id = getattr(result, "tool_call_id", None)
                call.on_tool_call(ToolCall(name, "success" if ok else "error", call_id=call_id, error=error))

    return handle
