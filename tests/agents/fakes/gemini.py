#!/usr/bin/env python3
"""A fake ``gemini --output-format stream-json -p`` (see fakecli.py for the scenario)."""

from fakecli import arg, emit, side_effects, turn

step, index = turn()
session = arg("--resume") or f"gemini-session-{index}"
emit({"type": "init", "timestamp": "2026-01-01T00:00:00Z", "session_id": session, "model": "gemini-fake"})
emit({"type": "message", "role": "user", "content": arg("-p") or ""})
for n, tool in enumerate(step.get("tools", [])):
    tool_id = f"tool-{index}-{n}"
    emit({"type": "tool_use", "tool_name": tool["name"], "tool_id": tool_id, "parameters": tool.get("input", {})})
    ok = tool.get("ok", True)
    emit(
        {
            "type": "tool_result",
            "tool_id": tool_id,
            "status": "success" if ok else "error",
            "output": "done",
            **({} if ok else {"error": {"type": "tool_error", "message": "it broke"}}),
        }
    )
text = step.get("text", "")
half = len(text) // 2
for piece in (text[:half], text[half:]):
    if piece:
        emit({"type": "message", "role": "assistant", "content": piece, "delta": True})
side_effects(step)
if step.get("error"):
    emit({"type": "result", "status": "error", "error": {"type": "api", "message": step["error"]}})
    raise SystemExit(step.get("exit", 1))
usage = step.get("usage", {"in": 10, "out": 5})
emit(
    {
        "type": "result",
        "status": "success",
        "stats": {
            "total_tokens": usage["in"] + usage["out"],
            "input_tokens": usage["in"],
            "output_tokens": usage["out"],
            "duration_ms": 5,
            "tool_calls": 0,
        },
    }
)
raise SystemExit(step.get("exit", 0))
