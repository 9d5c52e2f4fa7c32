"""Token usage of a run: the sum of what its agent attempts recorded, and its token budget
(docs/engine.md#cost-and-limits)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

from smithers.errors import InvalidInputError, TokenBudgetExceededError

_FIELDS = ("inputTokens", "outputTokens", "cacheReadTokens", "cacheWriteTokens", "reasoningTokens", "costUsd")


def _add(into: dict[str, Any], usage: Mapping[str, Any]) -> None:
    for field in _FIELDS:
        value = usage.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            into[field] = into.get(field, 0) + value


def run_usage(attempts: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``{inputTokens, outputTokens, cacheReadTokens?, …, costUsd?, attempts, byAgent}`` summed over
    the attempts whose ``meta_json`` records ``usage`` (an attempt cut off by a crash records none;
    its ``TokenUsageReported`` events remain in the log). None when no attempt used an agent."""
    total: dict[str, Any] = {"inputTokens": 0, "outputTokens": 0}
    by_agent: dict[str, dict[str, Any]] = {}
    counted = 0
    for attempt in attempts:
        try:
            meta = json.loads(attempt.get("meta_json") or "{}") or {}
        except ValueError:
            continue
        usage = meta.get("usage") if isinstance(meta, dict) else None
        if not isinstance(usage, dict):
            continue
        counted += 1
        _add(total, usage)
        agent_id = meta.get("agentId")
        agent = agent_id if isinstance(agent_id, str) else "unknown"
        _add(by_agent.setdefault(agent, {"inputTokens": 0, "outputTokens": 0}), usage)
    if not counted:
        return None
    if "costUsd" in total:
        total["costUsd"] = round(total["costUsd"], 6)
    return {**total, "attempts": counted, "byAgent": by_agent}


def attempt_tokens(meta_json: str | None) -> int:
    """Input plus output tokens an attempt's ``meta_json`` records (0 when it records none)."""
    try:
        meta = json.loads(meta_json or "{}") or {}
    except ValueError:
        return 0
    usage = meta.get("usage") if isinstance(meta, dict) else None
    if not isinstance(usage, dict):
        return 0
    total = 0
    for field in ("inputTokens", "outputTokens"):
        value = usage.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += int(value)
    return total


def check_budget(value: Any) -> int | None:
    """A token budget as given (``token_budget=``, ``tokenBudget``): a positive int, or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"the token budget must be a positive integer, not {value!r}")
    return value


class TokenBudget:
    """The tokens (input + output) a run's agent attempts have used, against its optional budget.

    Loaded from the attempts stored when a run resumes (an attempt cut off by a crash counts what
    it had recorded) and shared by the run's agent attempts: once the budget is passed, every agent
    call of the run in flight is stopped with ``TOKEN_BUDGET_EXCEEDED``; once it is used up, no
    call starts."""

    def __init__(self, limit: int | None = None, used: int = 0):
        self.limit = limit
        self.used = used
        self.exceeded = asyncio.Event()
        """Set once more than the budget is used."""
        if limit is not None and used > limit:
            self.exceeded.set()

    def add(self, tokens: int) -> None:
        self.used += tokens
        if self.limit is not None and self.used > self.limit:
            self.exceeded.set()

    def check(self, agent_id: str | None = None, starting: bool = False) -> None:
        """Raise ``TOKEN_BUDGET_EXCEEDED`` when more than the budget is used (``starting`` a call:
        when none of it is left)."""
        if self.limit is not None and (self.used > self.limit or (starting and self.used >= self.limit)):
            raise TokenBudgetExceededError(
                f"the run used {self.used} tokens of its budget of {self.limit}",
                details={"tokenBudget": self.limit, "tokensUsed": self.used, "agentId": agent_id},
            )


def token_summary(usage_metas: Iterable[str], config_json: str | None) -> dict[str, Any] | None:
    """``getRun``'s ``tokenUsage``: :func:`run_usage` of the attempts' ``meta_json`` plus the run's
    ``tokenBudget`` (None when it has neither)."""
    usage = run_usage({"meta_json": meta} for meta in usage_metas)
    try:
        config = json.loads(config_json or "{}") or {}
    except ValueError:
        config = {}
    budget = config.get("tokenBudget") if isinstance(config, dict) else None
    if usage is None and budget is None:
        return None
    out = usage or {"inputTokens": 0, "outputTokens": 0, "attempts": 0, "byAgent": {}}
    if budget is not None:
        out["tokenBudget"] = budget
    return out
