"""A research loop: a model drafts an answer, a coding agent critiques it, until the critic approves.

    pip install 'smithers-orchestrator[agents]'
    smithers run examples/research.py --input '{"question": "Why is the build slow?"}'

The drafts come from a model API: $SMITHERS_MODEL (default ``openai:gpt-5-mini``, its key in
OPENAI_API_KEY) or an OpenAI-compatible server at $SMITHERS_MODEL_BASE_URL. The critic is Claude
Code (``claude``, or the command line in $SMITHERS_CLAUDE), which can read the working directory to
check the claims. At most four rounds; each draft sees the last critique.
"""

import os
import shlex

from pydantic import BaseModel

from smithers import Loop, Task, workflow
from smithers.agents import ClaudeCode, Model


class Question(BaseModel):
    question: str


class Draft(BaseModel):
    answer: str
    sources: list[str]


class Critique(BaseModel):
    approved: bool
    feedback: str


researcher = Model(
    os.environ.get("SMITHERS_MODEL", "openai:gpt-5-mini"),
    base_url=os.environ.get("SMITHERS_MODEL_BASE_URL"),
    api_key=os.environ.get("SMITHERS_MODEL_API_KEY"),
)
critic = ClaudeCode(
    command=shlex.split(os.environ.get("SMITHERS_CLAUDE", "claude")),
    tools="explicit-only",
    allowed_tools=["Read", "Grep", "Glob"],
)


def draft_prompt(ctx) -> str:
    prompt = f"Answer this question, citing your sources: {ctx.input['question']}"
    last = ctx.latest(Critique, "critique")
    return prompt if last is None else f"{prompt}\n\nA reviewer said of your last draft: {last.feedback}"


def critique_prompt(ctx) -> str:
    draft = ctx.output(Draft, "draft")
    return (
        f"Question: {ctx.input['question']}\nDraft answer: {draft.answer}\nSources: {draft.sources}\n"
        "Check the draft against the code here. Approve it only if it is correct and complete."
    )


@workflow("research", input=Question)
def research(ctx):
    last = ctx.latest(Critique, "critique")
    return Loop(
        "rounds",
        Task("draft", output=Draft, agent=researcher, prompt=draft_prompt),
        Task("critique", output=Critique, agent=critic, prompt=critique_prompt),
        until=last is not None and last.approved,
        max_iterations=4,
    )
