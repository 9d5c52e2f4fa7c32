"""What an agent is asked for and how its answer becomes an output (docs/engine.md#agent-tasks).

The output model's JSON Schema is appended to the prompt; the answer's JSON is taken from a
fenced ```json block, else from the first balanced JSON object or array in the text, and validated
against the model. A refused answer is sent back with the reason (:func:`correction_prompt`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from smithers.errors import InvalidOutputError

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
MAX_SCAN_STARTS = 200
"""Candidate openings (``{`` or ``[``) tried before giving up on a long answer without JSON."""


def schema_instructions(schema: dict[str, Any]) -> str:
    """The text appended to an agent task's prompt when the task has an output model."""
    return (
        "\n\nAnswer with one JSON value that matches this JSON Schema, in a ```json fenced block:\n"
        f"```json\n{json.dumps(schema, indent=2, sort_keys=True)}\n```"
    )


def correction_prompt(reason: str, previous: str, original: str | None) -> str:
    """The message that continues a conversation whose answer was refused.

    ``original`` is the first prompt, repeated for agents that cannot continue a conversation (they
    return neither a conversation nor a session id), together with the answer that was refused.
    """
    ask = (
        f"Your answer could not be used: {reason}\n"
        "Reply again with only the corrected JSON value, matching the schema given before, in a ```json fenced block."
    )
    if original is None:
        return ask
    return f"{original}\n\nYour previous answer was:\n{previous}\n\n{ask}"


def extract_json(text: str) -> Any:
    """The JSON value of an answer: the whole text, a fenced block (``json`` ones first), or the first
    balanced object or array that parses. Raises ``ValueError`` when there is none."""
    stripped = text.strip()
    if stripped:
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    fences = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for json_first in (True, False):
        for lang, body in fences:
            if (lang == "json") == json_first:
                try:
                    return json.loads(body)
                except ValueError:
                    continue
    tried = 0
    for start, char in enumerate(text):
        if char not in "{[":
            continue
        end = _balanced_end(text, start)
        if end is not None:
            try:
                return json.loads(text[start : end + 1])
            except ValueError:
                pass
        tried += 1
        if tried >= MAX_SCAN_STARTS:
            break
    raise ValueError("the answer holds no JSON object or array")


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the bracket closing the one at ``start`` (brackets inside strings ignored), or None."""
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return index
    return None


def parse_answer(text: str, model: type[BaseModel]) -> Any:
    """The validated JSON output of an answer, or :class:`InvalidOutputError` saying what is wrong."""
    try:
        value = extract_json(text)
    except ValueError as exc:
        raise InvalidOutputError(f"{exc}; expected JSON matching {model.__name__}") from exc
    try:
        return model.model_validate(value).model_dump(mode="json")
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        described = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:10])
        raise InvalidOutputError(
            f"the JSON does not match {model.__name__}: {described}", details={"errors": errors}
        ) from exc
