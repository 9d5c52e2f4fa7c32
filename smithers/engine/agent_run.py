"""What a run knows of its agent tasks across attempts (docs/engine.md#agent-tasks): its token
budget, its ``cliAgentTools`` default, the sessions interrupted attempts leave to continue, and
the tool calls earlier attempts made (the replay warning)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from smithers.engine.agent import TOOLS_POLICIES, ToolsPolicy, agent_id, side_effect_tools
from smithers.engine.procgroups import end_leftover_group
from smithers.engine.usage import TokenBudget, attempt_tokens, check_budget
from smithers.errors import ATTEMPT_ABANDONED, InvalidInputError
from smithers.store.store import Row, Tx

log = logging.getLogger(__name__)

TOKEN_BUDGET_KEY = "tokenBudget"
CLI_AGENT_TOOLS_KEY = "cliAgentToolsDefault"
"""Keys of the run's ``config_json`` (docs/engine.md#cost-and-limits)."""
REPLAY_LIST_LIMIT = 20
REPLAY_INPUT_CHARS = 300
RESUMED_PREFACE = (
    "This continues your conversation on this task, which an interruption cut short. "
    "Pick up where you left off and finish it."
)


def tools_policy(value: Any) -> ToolsPolicy:
    if value not in TOOLS_POLICIES:
        raise InvalidInputError(f"cliAgentTools must be 'all' or 'explicit-only', not {value!r}")
    return value  # type: ignore[no-any-return]


class RunAgents:
    """Per-run agent state, loaded from the stored attempts when a run resumes."""

    def __init__(self) -> None:
        self.budget = TokenBudget()
        self.tools_default: ToolsPolicy = "all"
        self.sessions: dict[str, tuple[str, str]] = {}
        """Node key → (agent id, session id) an interrupted attempt leaves for the next one."""

    def configure(self, cfg: dict[str, Any], workflow_budget: int | None) -> None:
        """Take the budget and the tools default from the run's config (``cfg`` gains the
        workflow's budget when it names none, so a resume keeps the budget the run started with)."""
        if cfg.get(TOKEN_BUDGET_KEY) is None and workflow_budget is not None:
            cfg[TOKEN_BUDGET_KEY] = workflow_budget
        self.budget.limit = check_budget(cfg.get(TOKEN_BUDGET_KEY))
        self.tools_default = tools_policy(cfg.get(CLI_AGENT_TOOLS_KEY, "all"))

    def load_attempt(self, attempt: Row) -> None:
        """Count a stored attempt's tokens; for one a crash interrupted, kill what is left of its
        agent's processes and keep its session for the next attempt of the node."""
        tokens = attempt_tokens(attempt["meta_json"])
        if tokens:
            self.budget.add(tokens)
        error = attempt["error_json"]
        if not error or ATTEMPT_ABANDONED not in error:
            return
        meta = _meta(attempt)
        if end_leftover_group(meta.get("process")):
            log.warning(
                "run %s: killed the processes agent %s left running in an interrupted attempt of %s",
                attempt["run_id"],
                meta.get("agentId"),
                attempt["node_id"],
            )
        agent, session = meta.get("agentId"), meta.get("sessionId")
        if isinstance(agent, str) and isinstance(session, str) and session:
            self.sessions[f"{attempt['node_id']}::{attempt['iteration']}"] = (agent, session)

    def session_for(self, key: str, agent: Any) -> str | None:
        """The session an interrupted attempt of node ``key`` left, when the same agent runs again."""
        kept = self.sessions.pop(key, None)
        return kept[1] if kept is not None and kept[0] == agent_id(agent) else None

    def replay_warning(self, tx: Tx, run_id: str, node_id: str, iteration: int, agent: Any) -> str | None:
        """What earlier attempts of the node already ran of the tools that change things
        (``agent.side_effect_tools``; every tool when it does not say), for the next prompt."""
        watched = side_effect_tools(agent)
        calls = [
            row
            for row in tx.list_tool_calls(run_id, node_id)
            if row["iteration"] == iteration
            and row["status"] != "error"
            and (watched is None or row["tool_name"] in watched)
        ]
        if not calls:
            return None
        lines = [_describe(row) for row in calls[-REPLAY_LIST_LIMIT:]]
        more = len(calls) - len(lines)
        if more > 0:
            lines.insert(0, f"- … and {more} earlier")
        return (
            "Warning: earlier attempts of this task already ran these tools, and what they changed may "
            "still be in place. Check the current state before you run any of them again:\n" + "\n".join(lines)
        )


def _meta(attempt: Row) -> Mapping[str, Any]:
    try:
        meta = json.loads(attempt["meta_json"] or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _describe(row: Row) -> str:
    text = row["input_json"] or ""
    if len(text) > REPLAY_INPUT_CHARS:
        text = text[:REPLAY_INPUT_CHARS] + "…"
    outcome = "finished" if row["status"] == "success" else "no result recorded"
    return f"- attempt {row['attempt']}: {row['tool_name']} {text} ({outcome})".replace("  ", " ")
