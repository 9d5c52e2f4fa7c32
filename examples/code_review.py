"""Code review: a coding agent reviews a change, a person approves it, a model writes the summary.

    pip install 'smithers-orchestrator[agents]'
    smithers run examples/code_review.py --input '{"title": "Fix login", "diff": "..."}' --run-id cr-1
    smithers approve cr-1 --resume

The review is Claude Code (``claude`` on PATH, or the command line in $SMITHERS_CLAUDE), reading
the working directory with read-only tools. The summary is a model API: $SMITHERS_MODEL (default
``openai:gpt-5-mini``, its key in OPENAI_API_KEY), or any OpenAI-compatible server given by
$SMITHERS_MODEL_BASE_URL (Ollama: ``http://127.0.0.1:11434/v1``), with $SMITHERS_MODEL_API_KEY.
"""

import os
import shlex
from typing import Literal

from pydantic import BaseModel

from smithers import Approval, Sequence, Task, workflow
from smithers.agents import ClaudeCode, Model


class Change(BaseModel):
    title: str
    diff: str


class Review(BaseModel):
    verdict: Literal["approve", "request-changes"]
    risks: list[str]


class Summary(BaseModel):
    text: str


reviewer = ClaudeCode(
    command=shlex.split(os.environ.get("SMITHERS_CLAUDE", "claude")),
    tools="explicit-only",
    allowed_tools=["Read", "Grep", "Glob"],
)
writer = Model(
    os.environ.get("SMITHERS_MODEL", "openai:gpt-5-mini"),
    base_url=os.environ.get("SMITHERS_MODEL_BASE_URL"),
    api_key=os.environ.get("SMITHERS_MODEL_API_KEY"),
)


def review_prompt(ctx) -> str:
    return f"Review this change for bugs and risks.\nTitle: {ctx.input['title']}\n\n{ctx.input['diff']}"


def summary_prompt(ctx) -> str:
    review = ctx.output(Review, "review")
    return f"Write a one-sentence changelog entry for '{ctx.input['title']}'. Known risks: {review.risks}."


@workflow("code-review", input=Change)
def code_review(ctx):
    review = ctx.output_maybe(Review, "review")
    return Sequence(
        Task("review", output=Review, agent=reviewer, prompt=review_prompt, timeout_ms=900_000),
        Approval(
            "ship",
            title=f"Ship '{ctx.input['title']}'?",
            summary=f"review: {review.verdict}, risks: {', '.join(review.risks) or 'none'}" if review else None,
            on_deny="fail",
        ),
        Task("summary", output=Summary, agent=writer, prompt=summary_prompt),
    )
