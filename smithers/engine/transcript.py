"""An agent task's transcript: what each attempt was asked, streamed, ran and answered
(docs/engine.md#transcripts).

Read from what the attempt stored as it went (its ``meta_json``, its ``_smithers_tool_calls``
rows, its ``AgentEvent`` and ``NodeOutput`` events), so an attempt a crash cut off still has one.
``smithers chat`` prints it; the gateway's ``getNodeOutput`` answers it as ``transcript``.
"""

from __future__ import annotations

import json
from typing import Any

from smithers.engine import events as ev
from smithers.store.store import Row, Tx

MAX_OUTPUT_CHARS = 1_048_576
"""Streamed output kept per attempt in a transcript (the events keep all of it)."""


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def agent_transcript(
    tx: Tx, run_id: str, node_id: str | None = None, iteration: int | None = None
) -> list[dict[str, Any]]:
    """The agent attempts of a run (of one node, of one iteration), oldest first, each with its
    turns (prompt and answer), streamed output, tool calls, usage and outcome."""
    attempts = [a for a in tx.list_attempts(run_id, node_id, iteration) if _is_agent_attempt(a)]
    if not attempts:
        return []
    entries = {(a["node_id"], a["iteration"], a["attempt"]): _entry(a) for a in attempts}
    for call in tx.list_tool_calls(run_id, node_id):
        entry = entries.get((call["node_id"], call["iteration"], call["attempt"]))
        if entry is not None:
            entry["toolCalls"].append(_tool_call(call))
    for event in tx.list_events_of_types(run_id, (ev.AGENT_EVENT, ev.NODE_OUTPUT)):
        p = event.payload
        entry = entries.get((p.get("nodeId"), p.get("iteration"), p.get("attempt")))
        if entry is None:
            continue
        if event.type == ev.NODE_OUTPUT:
            _add_output(entry, str(p.get("text", "")), p.get("stream") or "stdout")
        else:
            _add_agent_event(entry, p.get("event") or {}, event.timestamp_ms)
    return list(entries.values())


def _is_agent_attempt(attempt: Row) -> bool:
    meta = _loads(attempt["meta_json"])
    return isinstance(meta, dict) and "agentId" in meta


def _entry(attempt: Row) -> dict[str, Any]:
    meta = _loads(attempt["meta_json"]) or {}
    return {
        "nodeId": attempt["node_id"],
        "iteration": attempt["iteration"],
        "attempt": attempt["attempt"],
        "state": attempt["state"],
        "agentId": meta.get("agentId"),
        "model": meta.get("agentModel"),
        "sessionId": meta.get("sessionId"),
        "startedAtMs": attempt["started_at_ms"],
        "finishedAtMs": attempt["finished_at_ms"],
        "prompt": meta.get("prompt"),
        "turns": [],
        "output": [],
        "outputTruncated": False,
        "toolCalls": [],
        "response": attempt["response_text"],
        "usage": meta.get("usage"),
        "schemaRetries": meta.get("schemaRetries", 0),
        "rateLimitWaits": meta.get("rateLimitWaits", 0),
        "error": _loads(attempt["error_json"]),
    }


def _tool_call(row: Row) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "toolName": row["tool_name"],
        "status": row["status"] or "started",
        "input": _loads(row["input_json"]),
        "output": _loads(row["output_json"]),
        "error": _loads(row["error_json"]),
        "startedAtMs": row["started_at_ms"],
        "finishedAtMs": row["finished_at_ms"],
    }


def _add_output(entry: dict[str, Any], text: str, stream: str) -> None:
    kept = sum(len(piece["text"]) for piece in entry["output"])
    room = MAX_OUTPUT_CHARS - kept
    if room <= 0:
        entry["outputTruncated"] = True
        return
    if len(text) > room:
        text, entry["outputTruncated"] = text[:room], True
    pieces = entry["output"]
    if pieces and pieces[-1]["stream"] == stream:
        pieces[-1]["text"] += text
    else:
        pieces.append({"stream": stream, "text": text})


def _add_agent_event(entry: dict[str, Any], event: dict[str, Any], at_ms: int) -> None:
    kind = event.get("type")
    turn = event.get("turn")
    if kind == "started":
        prompt = event.get("prompt", entry["prompt"] if turn == 0 else None)  # turn 0's is the attempt's
        entry["turns"].append({"turn": turn, "prompt": prompt, "startedAtMs": at_ms})
        return
    current = entry["turns"][-1] if entry["turns"] and entry["turns"][-1].get("turn") == turn else None
    if kind == "completed" and current is not None:
        current["ok"] = bool(event.get("ok"))
        current["finishedAtMs"] = at_ms
        if "text" in event:
            current["answer"] = event["text"]
        if event.get("error") is not None:
            current["error"] = event["error"]
    elif kind == "action" and event.get("action") == "rate-limited" and current is not None:
        current.setdefault("rateLimitWaitsMs", []).append(event.get("retryAfterMs"))
