#!/usr/bin/env python3
"""A fake ``claude -p --output-format stream-json --verbose`` (see fakecli.py for the scenario)."""

from fakecli import arg, emit, side_effects, turn

step, index = turn()
session = arg("--resume") or f"claude-session-{index}"
emit({"type": "system", "subtype": "init", "session_id": session, "model": "claude-fake", "tools": ["Bash"]})
for n, tool in enumerate(step.get("tools", [])):
    call_id = f"toolu_{index}_{n}"
    emit(
        {
            "type": "assistant",
            "session_id": session,
            "message": {
                "model": "claude-fake",
                "content": [{"type": "tool_use", "id": call_id, "name": tool["name"], "input": tool.get("input", {})}],
            },
        }
    )
    emit(
        {
            "type": "user",
            "session_id": session,
            "message": {
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call_id,
                        "content": "ok",
                        "is_error": not tool.get("ok", True),
                    }
                ]
            },
        }
    )
if step.get("text"):
    emit(
        {
            "type": "assistant",
            "session_id": session,
            "message": {"model": "claude-fake", "content": [{"type": "text", "text": step["text"]}]},
        }
    )
side_effects(step)
usage = step.get("usage", {"in": 10, "out": 5})
if step.get("error"):
    emit({"type": "result", "subtype": "success", "is_error": True, "result": step["error"], "session_id": session})
    raise SystemExit(step.get("exit", 1))
emit(
    {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": step.get("text", ""),
        "session_id": session,
        "total_cost_usd": 0.0125,
        "usage": {
            "input_tokens": usage["in"],
            "output_tokens": usage["out"],
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2,
        },
    }
)
raise SystemExit(step.get("exit", 0))
