#!/usr/bin/env python3
"""A fake ``codex exec --json`` (see fakecli.py for the scenario)."""

import sys

from fakecli import emit, side_effects, turn

step, index = turn()
args = sys.argv[1:]
thread = args[args.index("resume") + 1] if "resume" in args else f"codex-thread-{index}"
emit({"type": "thread.started", "thread_id": thread})
emit({"type": "turn.started"})
emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "thinking it over"}})
for n, tool in enumerate(step.get("tools", [])):
    item = {
        "id": f"item_{n + 1}",
        "type": "command_execution",
        "command": tool.get("input", {}).get("command", "ls"),
        "aggregated_output": "",
        "status": "in_progress",
    }
    emit({"type": "item.started", "item": item})
    ok = tool.get("ok", True)
    emit(
        {
            "type": "item.completed",
            "item": {
                **item,
                "aggregated_output": "done\n",
                "exit_code": 0 if ok else 2,
                "status": "completed" if ok else "failed",
            },
        }
    )
if step.get("text"):
    emit({"type": "item.completed", "item": {"id": "item_99", "type": "agent_message", "text": step["text"]}})
side_effects(step)
if step.get("error"):
    emit({"type": "turn.failed", "error": {"message": step["error"]}})
    raise SystemExit(step.get("exit", 1))
usage = step.get("usage", {"in": 10, "out": 5})
emit(
    {
        "type": "turn.completed",
        "usage": {"input_tokens": usage["in"], "cached_input_tokens": 4, "output_tokens": usage["out"]},
    }
)
raise SystemExit(step.get("exit", 0))
