"""Agent tasks end to end through the real engine, on SQLite and PostgreSQL, with pydantic-ai's
``FunctionModel``/``TestModel`` behind :class:`smithers.agents.Model` (docs/engine.md#agent-tasks)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelAuthenticationError
from pydantic_ai.models.test import TestModel

import smithers
from smithers import Approval, RetryPolicy, Sequence, Task, workflow
from smithers.agents import Model
from smithers.engine import events as ev
from smithers.store.store import Store
from tests.agents.scripted import Counting, Script, attempts, events


class Review(BaseModel):
    verdict: str
    score: int


class Num(BaseModel):
    n: int


GOOD = '{"verdict": "ship it", "score": 9}'
NO_WAIT = RetryPolicy(initial_delay_ms=0)


def review_flow(agent: Any, **options: Any) -> smithers.Workflow:
    @workflow("review")
    def review(ctx: smithers.Ctx) -> Any:
        return Sequence(
            Task("review", output=Review, agent=agent, prompt=lambda c: f"Review PR {c.input['pr']}", **options)
        )

    return review


def meta(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["meta_json"])


def test_schema_retry_succeeds_on_the_second_answer_in_the_same_attempt(store: Store) -> None:
    script = Script(['{"verdict": "meh"}', f"Here is my review:\n```json\n{GOOD}\n```\nThanks."])
    result = smithers.run(review_flow(script.agent(id="reviewer")), {"pr": 7}, db=store)

    assert result.status == "finished", result.error
    assert result.output == {"verdict": "ship it", "score": 9}
    assert script.calls == 2
    # the first request carries the prompt with the schema; the second continues the conversation
    assert script.prompts[0].startswith("Review PR 7\n\nAnswer with one JSON value")
    assert '"score"' in script.prompts[0] and '"verdict"' in script.prompts[0]
    assert script.prompts[1].startswith("Your answer could not be used: the JSON does not match Review: score:")
    assert script.histories == [1, 3]  # request; request, response, correction
    [row] = attempts(store, result.run_id, "review")
    assert row["state"] == "finished" and row["attempt"] == 1
    assert row["response_text"].startswith("Here is my review:")
    info = meta(row)
    assert info["kind"] == "agent" and info["agentId"] == "reviewer"
    assert info["schemaRetries"] == 1 and info["turns"] == 2
    assert info["prompt"] == script.prompts[0]
    assert info["heartbeatTimeoutMs"] == 600_000
    assert info["usage"]["inputTokens"] > 0 and info["usage"]["outputTokens"] > 0
    # streamed output, batched: the text of both answers, in order, in few events
    outputs = events(store, result.run_id, ev.NODE_OUTPUT)
    assert "".join(o["text"] for o in outputs) == '{"verdict": "meh"}' + row["response_text"]
    assert all(o["stream"] == "stdout" and o["attempt"] == 1 and o["nodeId"] == "review" for o in outputs)
    assert len(outputs) <= 4
    usage = events(store, result.run_id, ev.TOKEN_USAGE_REPORTED)
    assert len(usage) == 2 and {u["agent"] for u in usage} == {"reviewer"}
    assert sum(u["inputTokens"] for u in usage) == info["usage"]["inputTokens"]
    types = [e["type"] for e in events(store, result.run_id)]
    assert types.index(ev.NODE_STARTED) < types.index(ev.NODE_OUTPUT) < types.index(ev.NODE_FINISHED)


def test_gives_up_after_three_schema_retries_without_using_up_retries(store: Store) -> None:
    script = Script(["no JSON here", '{"verdict": 1}', "[1, 2]", '{"score": "x"}'])
    result = smithers.run(review_flow(script.agent(id="stubborn")), {"pr": 1}, db=store)

    assert result.status == "failed"
    assert script.calls == 4  # the answer and 3 schema retries, one attempt
    [row] = attempts(store, result.run_id, "review")
    error = json.loads(row["error_json"])
    assert error["code"] == "INVALID_OUTPUT"
    assert "refused 4 times" in error["message"] and "Review" in error["message"]
    assert error["details"]["schemaRetries"] == 3 and error["details"]["agentId"] == "stubborn"
    assert meta(row)["schemaRetries"] == 3 and row["response_text"] == '{"score": "x"}'
    assert result.error is not None and result.error["code"] == "INVALID_OUTPUT"


def test_a_refused_answer_may_be_retried_when_retries_allow(store: Store) -> None:
    script = Script(["nope", "nope", "nope", "nope", GOOD])
    result = smithers.run(review_flow(script.agent(), retries=1, retry_policy=NO_WAIT), {"pr": 2}, db=store)
    assert result.status == "finished" and script.calls == 5
    assert [r["state"] for r in attempts(store, result.run_id, "review")] == ["failed", "finished"]


def test_fallback_chain_moves_to_the_next_agent(store: Store) -> None:
    broken = Script([RuntimeError("upstream exploded")], name="broken")
    good = Script([GOOD], name="good")
    flow = review_flow([broken.agent(id="first"), good.agent(id="second")])
    result = smithers.run(flow, {"pr": 3}, db=store)

    assert result.status == "finished", result.error
    assert (broken.calls, good.calls) == (1, 1)
    rows = attempts(store, result.run_id, "review")
    assert [(r["state"], meta(r)["agentId"]) for r in rows] == [("failed", "first"), ("finished", "second")]
    error = json.loads(rows[0]["error_json"])
    assert error["code"] == "AGENT_FAILED" and "upstream exploded" in error["message"]
    assert meta(rows[0])["retries"] == 1  # one retry per extra agent by default
    retrying = events(store, result.run_id, ev.NODE_RETRYING)
    assert [e["attempt"] for e in retrying] == [2]


def test_attempts_past_the_chain_use_its_last_agent(store: Store) -> None:
    first = Counting("a", error=RuntimeError("boom"))
    last = Counting("b", error=RuntimeError("boom"))
    flow = review_flow([first, last], retries=3, retry_policy=NO_WAIT)
    result = smithers.run(flow, {"pr": 4}, db=store)
    assert result.status == "failed"
    assert (len(first.calls), len(last.calls)) == (1, 3)


def test_auth_breaker_skips_an_agent_for_the_rest_of_the_run(store: Store) -> None:
    locked = Script([ModelAuthenticationError("locked", "invalid x-api-key")], name="locked")
    spare = Script(['{"n": 1}'], name="spare")
    texty = Counting("texty", error=RuntimeError("Error: 401 Unauthorized - please log in"))
    chain = [locked.agent(id="locked"), spare.agent(id="spare")]

    @workflow("auth")
    def auth(ctx: smithers.Ctx) -> Any:
        return Sequence(
            Task("one", output=Num, agent=chain, prompt="first"),
            Task("two", output=Num, agent=chain, prompt="second"),
            Task("three", output=Num, agent=[texty, spare.agent(id="spare")], prompt="third"),
            Approval("pause", title="go on?"),
            Task("four", output=Num, agent=[texty, *chain], prompt="fourth"),
        )

    result = smithers.run(auth, db=store)
    assert result.status == "waiting-approval", result.error
    assert locked.calls == 1  # task two went straight to the spare
    assert len(texty.calls) == 1  # its text read like an auth failure
    one = attempts(store, result.run_id, "one")
    assert [(r["state"], meta(r)["agentId"]) for r in one] == [("failed", "locked"), ("finished", "spare")]
    assert json.loads(one[0]["error_json"])["code"] == "AGENT_AUTH_FAILED"
    assert [meta(r)["agentId"] for r in attempts(store, result.run_id, "two")] == ["spare"]
    three = attempts(store, result.run_id, "three")
    assert json.loads(three[0]["error_json"])["code"] == "AGENT_AUTH_FAILED"

    # the breaker holds across a resume: it is rebuilt from the failed attempts
    smithers.approve_node(store, result.run_id, "pause")
    resumed = smithers.run(auth, run_id=result.run_id, resume=True, db=store)
    assert resumed.status == "finished", resumed.error
    assert (locked.calls, len(texty.calls)) == (1, 1)
    assert [meta(r)["agentId"] for r in attempts(store, result.run_id, "four")] == ["spare"]


def test_no_agent_left_fails_without_retrying(store: Store) -> None:
    one = Counting("one", error=RuntimeError("invalid api key"))
    two = Counting("two", error=RuntimeError("HTTP 403 access denied"))
    result = smithers.run(review_flow([one, two], retries=5, retry_policy=NO_WAIT), {"pr": 5}, db=store)
    assert result.status == "failed"
    rows = attempts(store, result.run_id, "review")
    assert [meta(r)["agentId"] for r in rows] == ["one", "two", None]
    last = json.loads(rows[-1]["error_json"])
    assert last["code"] == "AGENT_AUTH_FAILED" and "no agent of task 'review' is left" in last["message"]
    assert meta(rows[-1])["failureRetryable"] is False


def test_a_missing_api_key_names_the_variable_and_trips_the_breaker(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spare = Counting("spare", text=GOOD)
    result = smithers.run(review_flow([Model("openai:gpt-5-mini"), spare]), {"pr": 6}, db=store)
    assert result.status == "finished", result.error
    first = attempts(store, result.run_id, "review")[0]
    error = json.loads(first["error_json"])
    assert error["code"] == "AGENT_AUTH_FAILED" and "OPENAI_API_KEY" in error["message"]
    assert meta(first)["agentId"] == "model:openai:gpt-5-mini"


def test_a_task_without_output_model_outputs_the_answer_text(store: Store) -> None:
    @workflow("plain")
    def plain(ctx: smithers.Ctx) -> Any:
        return Task("say", agent=Model(TestModel(custom_output_text="just words")), prompt="say something")

    result = smithers.run(plain, db=store)
    assert result.status == "finished" and result.output == "just words"


def test_tool_calls_are_streamed_as_events(store: Store) -> None:
    seen: list[int] = []

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        seen.append(a + b)
        return a + b

    agent = Model(TestModel(custom_output_text='{"n": 3}'), tools=[add], id="tooly")

    @workflow("tools")
    def tools(ctx: smithers.Ctx) -> Any:
        return Task("sum", output=Num, agent=agent, prompt="add 1 and 2")

    result = smithers.run(tools, db=store)
    assert result.status == "finished", result.error
    assert len(seen) == 1
    started = events(store, result.run_id, ev.TOOL_CALL_STARTED)
    finished = events(store, result.run_id, ev.TOOL_CALL_FINISHED)
    assert [(e["toolName"], e["seq"], e["attempt"]) for e in started] == [("add", 1, 1)]
    assert [(e["toolName"], e["seq"], e["status"]) for e in finished] == [("add", 1, "success")]
    with store.read() as tx:
        [row] = tx.list_tool_calls(result.run_id)
    assert (row["node_id"], row["attempt"], row["seq"], row["tool_name"], row["status"]) == (
        "sum",
        1,
        1,
        "add",
        "success",
    )
    assert set(json.loads(row["input_json"])) == {"a", "b"}


def test_chatty_output_is_batched(store: Store) -> None:
    text = "x" * 3000
    script = Script([text + f"\n```json\n{GOOD}\n```"], chunk=1)
    result = smithers.run(review_flow(script.agent()), {"pr": 8}, db=store)
    assert result.status == "finished"
    outputs = events(store, result.run_id, ev.NODE_OUTPUT)
    assert "".join(o["text"] for o in outputs).startswith(text)
    assert len(outputs) < 30  # thousands of deltas, a handful of rows


def test_timeout_stops_the_call_and_keeps_what_it_streamed(store: Store) -> None:
    stopped = asyncio.Event()

    async def hang() -> str:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()
        return GOOD

    class Talker:
        id = "talker"

        async def run(self, call: Any) -> Any:
            call.on_output("thinking...", "stderr")
            return await inner.run(call)

    inner = Script([hang]).agent()
    result = smithers.run(review_flow(Talker(), timeout_ms=400), {"pr": 9}, db=store)
    assert result.status == "failed"
    assert stopped.is_set()
    [row] = attempts(store, result.run_id, "review")
    assert json.loads(row["error_json"])["code"] == "TASK_TIMEOUT"
    outputs = events(store, result.run_id, ev.NODE_OUTPUT)
    assert [(o["text"], o["stream"]) for o in outputs] == [("thinking...", "stderr")]


def test_a_silent_agent_trips_the_heartbeat_watchdog(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMITHERS_TASK_HEARTBEAT_MS", "300")

    async def silent() -> str:
        await asyncio.sleep(30)
        return GOOD

    result = smithers.run(review_flow(Script([silent]).agent()), {"pr": 10}, db=store)
    assert result.status == "failed"
    [row] = attempts(store, result.run_id, "review")
    assert json.loads(row["error_json"])["code"] == "TASK_HEARTBEAT_TIMEOUT"
    assert meta(row)["heartbeatTimeoutMs"] == 300
    assert events(store, result.run_id, ev.TASK_HEARTBEAT_TIMEOUT)


def test_cancel_aborts_the_call_and_keeps_the_transcript(store: Store) -> None:
    started = asyncio.Event()
    stopped: list[bool] = []

    class Streaming:
        id = "streaming"

        async def run(self, call: Any) -> Any:
            call.on_output("partial answer", "stdout")
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                stopped.append(True)
            raise AssertionError("not reached")

    async def main() -> smithers.RunResult:
        cancel = asyncio.Event()
        run = asyncio.create_task(smithers.run_async(review_flow(Streaming()), {"pr": 11}, db=store, cancel=cancel))
        await asyncio.wait_for(started.wait(), 10)
        cancel.set()
        return await asyncio.wait_for(run, 10)

    result = asyncio.run(main())
    assert result.status == "cancelled"
    assert stopped == [True]
    [row] = attempts(store, result.run_id, "review")
    assert row["state"] == "cancelled"
    assert meta(row)["agentId"] == "streaming" and "Review PR 11" in meta(row)["prompt"]
    assert [o["text"] for o in events(store, result.run_id, ev.NODE_OUTPUT)] == ["partial answer"]
    types = [e["type"] for e in events(store, result.run_id)]
    assert types.index(ev.NODE_OUTPUT) < types.index(ev.NODE_CANCELLED)


def test_a_finished_agent_task_is_never_called_again(store: Store) -> None:
    agent = Counting("once", text='{"n": 41}')

    @workflow("durable")
    def durable(ctx: smithers.Ctx) -> Any:
        return Sequence(
            Task("ask", output=Num, agent=agent, prompt="a number"),
            Approval("check", title="fine?"),
            Task("use", output=Num, run=lambda c: Num(n=c.output(Num, "ask").n + 1)),
        )

    first = smithers.run(durable, db=store)
    assert first.status == "waiting-approval" and len(agent.calls) == 1
    smithers.approve_node(store, first.run_id, "check")
    second = smithers.run(durable, run_id=first.run_id, resume=True, db=store)
    assert second.status == "finished" and second.output == {"n": 42}
    assert len(agent.calls) == 1
    again = smithers.run(durable, run_id=first.run_id, resume=True, retry=True, db=store)
    assert again.unchanged and len(agent.calls) == 1


def test_the_agent_gets_the_working_directory_and_what_is_left_of_the_timeout(store: Store, tmp_path: Any) -> None:
    agent = Counting("where", text='{"n": 1}')

    @workflow("cwd", workdir=tmp_path)
    def cwd(ctx: smithers.Ctx) -> Any:
        return Task("t", output=Num, agent=agent, prompt=lambda: "no ctx needed", timeout_ms=60_000)

    result = smithers.run(cwd, db=store)
    assert result.status == "finished"
    [call] = agent.calls
    assert call.cwd == str(tmp_path) and call.prompt.startswith("no ctx needed")
    assert call.schema == Num.model_json_schema()
    assert 0 < (call.timeout_ms or 0) <= 60_000 and call.turn == 0


def test_agent_tasks_are_checked_when_built() -> None:
    with pytest.raises(smithers.SmithersError, match="needs prompt=") as info:
        Task("x", agent=Counting("a"))
    assert info.value.code == "AGENT_CONFIG_INVALID"
    with pytest.raises(smithers.SmithersError, match="is not an agent"):
        Task("x", agent=[object()], prompt="p")
    with pytest.raises(smithers.SmithersError, match="not both"):
        Task("x", agent=Counting("a"), prompt="p", run=lambda: 1)


def test_inspect_sums_the_tokens_of_a_run(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    db = f"sqlite:///{tmp_path / 'usage.db'}"
    first = Counting("first", text="no JSON, four times")
    second = Counting("second", text='{"n": 2}')

    @workflow("usage")
    def usage(ctx: smithers.Ctx) -> Any:
        return Sequence(
            Task("a", output=Num, agent=[first, second], prompt="a"),
            Task("b", output=Num, agent=second, prompt="b"),
        )

    result = smithers.run(usage, run_id="u-1", db=db)
    assert result.status == "finished", result.error
    smithers_cli = str(Path(sys.executable).parent / "smithers")
    shown = subprocess.run([smithers_cli, "inspect", "u-1", "--json", "--db", db], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    totals = json.loads(shown.stdout)["usage"]
    # 3 in, 2 out per call: the refused attempt's 4 calls count too
    assert totals == {
        "inputTokens": 18,
        "outputTokens": 12,
        "attempts": 3,
        "byAgent": {"first": {"inputTokens": 12, "outputTokens": 8}, "second": {"inputTokens": 6, "outputTokens": 4}},
    }
    text = subprocess.run([smithers_cli, "inspect", "u-1", "--db", db], capture_output=True, text=True).stdout
    assert "tokens: 18 in, 12 out (3 agent attempts)" in text
