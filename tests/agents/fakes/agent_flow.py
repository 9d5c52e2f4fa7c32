"""A workflow with one agent task, run through the ``smithers`` CLI by the crash test.

The agent is the fake Claude Code of this folder; ``$FAKE_AGENT_SCENARIO`` (inherited by the CLI
and so by the fake) says what it answers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smithers import Sequence, Task, workflow
from smithers.agents import ClaudeCode

HERE = Path(__file__).resolve().parent


class Fix(BaseModel):
    summary: str
    files: list[str]


fixer = ClaudeCode(command=[sys.executable, str(HERE / "claude.py")])


@workflow("agent-fix")
def agent_fix(ctx: Any) -> Any:
    return Sequence(
        Task("fix", output=Fix, agent=fixer, prompt=f"Fix issue {ctx.input['issue']}", retries=0),
        Task("after", run=lambda c: {"files": len(c.output(Fix, "fix").files)}),
    )
