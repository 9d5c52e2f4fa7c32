"""Token usage of a run: the sum of what its agent attempts recorded (docs/engine.md#agent-tasks)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

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
