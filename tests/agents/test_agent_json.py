"""How an answer becomes an output: JSON extraction, validation, the schema in the prompt, the
auth-text check and the fallback choice (pure functions), and the missing-extra error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from smithers.engine.agent import choose_agent, looks_like_auth_error
from smithers.engine.agent_json import correction_prompt, extract_json, parse_answer, schema_instructions
from smithers.errors import InvalidOutputError


class Point(BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"x": 1, "y": 2}', {"x": 1, "y": 2}),
        ("  [1, 2]\n", [1, 2]),
        ('"just a string"', "just a string"),
        ('Sure!\n```json\n{"x": 1}\n```\nbye', {"x": 1}),
        ('```\n{"x": 5}\n```', {"x": 5}),
        ('```python\nprint(1)\n```\n```JSON\n{"x": 2}\n```', {"x": 2}),
        ('```json\n{broken\n```\nthen {"x": 3} after', {"x": 3}),
        ('The point is {"x": 1, "y": {"z": "}"}} and more {"x": 9}', {"x": 1, "y": {"z": "}"}}),
        ('a {not json} then [1, {"a": "]"}]', [1, {"a": "]"}]),
        ('escaped {"s": "a \\" } b"} ok', {"s": 'a " } b'}),
    ],
)
def test_extract_json(text: str, value: object) -> None:
    assert extract_json(text) == value


@pytest.mark.parametrize("text", ["", "no json at all", "{unclosed", "{'single': 'quotes'}"])
def test_no_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        extract_json(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
        max_leaves=10,
    )
)
def test_any_json_object_in_prose_is_found(value: object) -> None:
    import json

    wrapped = {"v": value}
    assert extract_json(f"Here you go: {json.dumps(wrapped)} -- done") == wrapped


def test_parse_answer_validates_against_the_model() -> None:
    assert parse_answer('```json\n{"x": 1, "y": "2"}\n```', Point) == {"x": 1, "y": 2}
    with pytest.raises(InvalidOutputError, match=r"does not match Point: y: Field required") as info:
        parse_answer('{"x": 1}', Point)
    assert info.value.details is not None and info.value.details["errors"][0]["loc"] == ("y",)
    with pytest.raises(InvalidOutputError, match="no JSON object or array; expected JSON matching Point"):
        parse_answer("I refuse", Point)


def test_prompts() -> None:
    text = schema_instructions(Point.model_json_schema())
    assert "```json" in text and '"x"' in text and '"required"' in text
    assert correction_prompt("bad", "old", None).startswith("Your answer could not be used: bad\n")
    repeated = correction_prompt("bad", "old", "the task")
    assert repeated.startswith("the task\n\nYour previous answer was:\nold\n\nYour answer could not be used: bad")


@pytest.mark.parametrize(
    "text",
    [
        "Error code: 401 - {'error': {'message': 'Incorrect API key provided'}}",
        "Invalid API key. Please run /login",
        "authentication_error: invalid x-api-key",
        "Not logged in · Please run /login",
        "OPENAI_API_KEY is not set",
        "HTTP 403 Forbidden: access denied",
        "Unauthorized",
        "the token has expired",
    ],
)
def test_auth_text(text: str) -> None:
    assert looks_like_auth_error(text)


@pytest.mark.parametrize(
    "text", ["connection reset by peer", "rate limit exceeded (429)", "model overloaded", "line 4010 of file"]
)
def test_not_auth_text(text: str) -> None:
    assert not looks_like_auth_error(text)


class Named:
    def __init__(self, id: str):
        self.id = id


def test_choose_agent() -> None:
    a, b, c = Named("a"), Named("b"), Named("c")
    assert [choose_agent([a, b, c], n, set()) for n in (1, 2, 3, 4, 9)] == [a, b, c, c, c]
    assert [choose_agent([a, b, c], n, {"a"}) for n in (1, 2, 3)] == [b, c, c]
    assert choose_agent([a, b], 1, {"a", "b"}) is None


def test_model_without_the_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['pydantic_ai'] = None\n"
        "from smithers.agents import Model\n"
        "try:\n    Model('openai:gpt-5-mini')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc.code, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("AgentConfigError AGENT_CONFIG_INVALID Model agents need pydantic-ai")
    assert "pip install 'smithers-orchestrator[agents]'" in out
