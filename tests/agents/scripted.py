"""Agents for the tests: pydantic-ai ``FunctionModel``s that answer from a script, and plain agents.

Nothing of smithers is faked: these are the agents a workflow would be given, driven by a script.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from smithers.agents import AgentCall, AgentReply, AgentUsage, Model
from smithers.store.store import Store

Answer = str | BaseException | Callable[[], Any]


class Script:
    """A FunctionModel answering ``answers`` in turn (the last one again when they run out).

    An answer is text (streamed in ``chunk``-character pieces), an exception to raise, or an async
    callable awaited first (to block, sleep, or raise) whose result, if text, is the answer.
    ``prompts`` records the last user message of each request; ``histories`` the message count.
    """

    def __init__(self, answers: Sequence[Answer], chunk: int = 4, name: str = "script"):
        self.answers = list(answers)
        self.chunk = chunk
        self.calls = 0
        self.prompts: list[str] = []
        self.histories: list[int] = []
        self.model = FunctionModel(self._respond, stream_function=self._stream, model_name=name)

    def _next(self, messages: list[ModelMessage]) -> Answer:
        self.calls += 1
        self.histories.append(len(messages))
        last = messages[-1]
        if isinstance(last, ModelRequest):
            texts = [p.content for p in last.parts if isinstance(p, UserPromptPart) and isinstance(p.content, str)]
            self.prompts.append(texts[-1] if texts else "")
        return self.answers[min(self.calls - 1, len(self.answers) - 1)]

    def _respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answer = self._next(messages)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, str)
        return ModelResponse(parts=[TextPart(answer)])

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        answer = self._next(messages)
        if callable(answer) and not isinstance(answer, BaseException):
            answer = await answer()
        if isinstance(answer, BaseException):
            raise answer
        text = str(answer)
        for start in range(0, len(text), self.chunk):
            yield text[start : start + self.chunk]

    def agent(self, id: str | None = None, **options: Any) -> Model:
        return Model(self.model, id=id, **options)


class Counting:
    """A plain agent (no pydantic-ai): answers ``text``, counts calls, or raises ``error``."""

    def __init__(self, id: str, text: str = '{"n": 1}', error: BaseException | None = None):
        self.id = id
        self.text = text
        self.error = error
        self.calls: list[AgentCall] = []

    async def run(self, call: AgentCall) -> AgentReply:
        self.calls.append(call)
        call.on_output(self.text, "stdout")
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return AgentReply(self.text, usage=AgentUsage(input_tokens=3, output_tokens=2, model="counting"))


def events(store: Store, run_id: str, *types: str) -> list[dict[str, Any]]:
    with store.read() as tx:
        return [e.payload for e in tx.list_events(run_id, limit=None) if not types or e.type in types]


def attempts(store: Store, run_id: str, node_id: str | None = None) -> list[dict[str, Any]]:
    with store.read() as tx:
        return [dict(row) for row in tx.list_attempts(run_id, node_id)]
