"""Cost and limits of agent tasks, through the real engine on SQLite and PostgreSQL
(docs/engine.md#cost-and-limits): the run's token budget, 429s waited out with the provider's
Retry-After before the fallback chain moves on, the ``AgentEvent`` transcript of each call, the
tool replay warning, and the run's ``cliAgentTools`` default."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import ModelHTTPError

import smithers
from smithers import Approval, Parallel, RetryPolicy, Sequence, Task, workflow
from smithers.agents import AgentCall, AgentReply, AgentUsage, ClaudeCode
from smithers.engine import events as ev
from smithers.engine.timetravel import Rewinder
from smithers.engine.transcript import agent_transcript
from smithers.store.store import Store
from tests.agents.scripted import Counting, Script, attempts, events
from tests.agents.test_cli_agents import GOOD as FIX
from tests.agents.test_cli_agents import Fake, fix_flow

NO_WAIT = RetryPolicy(initial_delay_ms=0)


class Num(BaseModel):
    n: int


def error_of(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["error_json"])


def agent_steps(agent: Any, count: int, key: str = "steps", **options: Any) -> smithers.Workflow:
    @workflow(key, **options)
    def steps(ctx: smithers.Ctx) -> Any:
        return Sequence(*[Task(f"s{i}", output=Num, agent=agent, prompt=f"step {i}") for i in range(count)])

    return steps


# ---- the token budget ----------------------------------------------------------------------------
def test_a_run_stops_calling_agents_once_its_token_budget_is_used_up(store: Store) -> None:
    agent = Counting("counter")  # 3 in + 2 out per call
    result = smithers.run(agent_steps(agent, 6, token_budget=20), db=store)

    assert result.status == "failed"
    assert result.error is not None and result.error["code"] == "TOKEN_BUDGET_EXCEEDED"
    assert len(agent.calls) == 4  # 4 calls use the 20 tokens; the fifth is never made
    [refused] = [r for r in attempts(store, result.run_id) if r["state"] == "failed"]
    assert refused["node_id"] == "s4"
    assert error_of(refused)["details"] == {"tokenBudget": 20, "tokensUsed": 20, "agentId": "counter"}
    assert len(attempts(store, result.run_id, "s4")) == 1  # not retryable: more attempts cannot help
    with store.read() as tx:
        config = json.loads(tx.get_run(result.run_id)["config_json"])
    assert config["tokenBudget"] == 20


class Spender:
    """Reports ``tokens`` of usage at once, then works for ``seconds`` before answering."""

    def __init__(self, id: str, tokens: int, seconds: float):
        self.id, self.tokens, self.seconds = id, tokens, seconds
        self.stopped = False

    async def run(self, call: AgentCall) -> AgentReply:
        call.on_usage(AgentUsage(input_tokens=self.tokens, output_tokens=0))
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.stopped = True
            raise
        return AgentReply('{"n": 1}')


def test_passing_the_budget_stops_every_agent_call_of_the_run_in_flight(store: Store) -> None:
    slow = Spender("slow", tokens=10, seconds=60)
    greedy = Spender("greedy", tokens=500, seconds=0.3)

    @workflow("two-agents", token_budget=100)
    def two(ctx: smithers.Ctx) -> Any:
        return Parallel(
            Task("slow", output=Num, agent=slow, prompt="take your time"),
            Task("greedy", output=Num, agent=greedy, prompt="spend"),
        )

    started = time.monotonic()
    result = smithers.run(two, db=store)

    assert time.monotonic() - started < 30  # not the slow agent's 60 s
    assert result.status == "failed" and result.error is not None
    assert result.error["code"] == "TOKEN_BUDGET_EXCEEDED"
    assert slow.stopped and greedy.stopped
    codes = {r["node_id"]: error_of(r)["code"] for r in attempts(store, result.run_id) if r["error_json"]}
    assert codes["greedy"] == "TOKEN_BUDGET_EXCEEDED"


def test_a_resumed_run_counts_the_tokens_its_earlier_attempts_used(store: Store) -> None:
    agent = Counting("counter")

    @workflow("budget-across-resume", token_budget=12)
    def flow(ctx: smithers.Ctx) -> Any:
        return Sequence(
            Task("a", output=Num, agent=agent, prompt="a"),
            Approval("gate"),
            Task("b", output=Num, agent=agent, prompt="b"),
            Task("c", output=Num, agent=agent, prompt="c"),
        )

    first = smithers.run(flow, db=store)
    assert first.status == "waiting-approval"
    smithers.approve_node(store, first.run_id, "gate")
    again = smithers.run(flow, run_id=first.run_id, resume=True, db=store)

    assert again.status == "failed" and again.error is not None
    assert again.error["code"] == "TOKEN_BUDGET_EXCEEDED"  # 5 before the approval + 5 + 5 > 12
    [failed] = [r for r in attempts(store, first.run_id) if r["state"] == "failed"]
    assert failed["node_id"] == "c"
    assert error_of(failed)["details"]["tokensUsed"] == 15


def test_a_bad_token_budget_is_refused() -> None:
    with pytest.raises(smithers.SmithersError, match="positive integer"):
        agent_steps(Counting("c"), 1, key="bad", token_budget=0)


# ---- rate limits -----------------------------------------------------------------------------------
def too_many(retry_after: str | None) -> ModelHTTPError:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return ModelHTTPError(429, "scripted", {"error": "rate limited"}, headers=headers)


def test_a_429_is_waited_out_with_retry_after_inside_the_attempt(store: Store) -> None:
    script = Script([too_many("0.2"), too_many("0.2"), '{"n": 7}'])
    started = time.monotonic()
    result = smithers.run(agent_steps(script.agent(id="limited"), 1), db=store)

    assert result.status == "finished", result.error
    assert result.output == {"n": 7}
    assert time.monotonic() - started >= 0.4  # waited what the provider asked, twice
    [row] = attempts(store, result.run_id)
    assert json.loads(row["meta_json"])["rateLimitWaits"] == 2
    waits = [e["event"] for e in events(store, result.run_id, ev.AGENT_EVENT) if e["event"]["type"] == "action"]
    assert [(w["action"], w["retryAfterMs"], w["tries"]) for w in waits] == [
        ("rate-limited", 200, 1),
        ("rate-limited", 200, 2),
    ]


def test_after_its_last_429_the_attempt_fails_and_the_chain_moves_on(store: Store) -> None:
    limited = Script([too_many("0.05")])
    backup = Counting("backup", text='{"n": 2}')

    @workflow("chain")
    def chain(ctx: smithers.Ctx) -> Any:
        agents = [limited.agent(id="limited"), backup]
        return Task("s", output=Num, agent=agents, prompt="go", retries=1, retry_policy=NO_WAIT)

    result = smithers.run(chain, db=store)

    assert result.status == "finished", result.error
    assert result.output == {"n": 2}
    assert limited.calls == 4  # the call and three more after waiting
    first, second = attempts(store, result.run_id)
    assert error_of(first)["code"] == "AGENT_RATE_LIMITED"
    assert error_of(first)["details"]["retryAfterMs"] == 50
    assert json.loads(second["meta_json"])["agentId"] == "backup"


def test_a_cli_rate_limit_message_is_waited_out_too(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    fake = Fake(
        tmp_path, "claude", [{"error": "API Error: 429 rate_limit_error. Please try again in 150ms"}, {"text": FIX}]
    )
    result = smithers.run(fix_flow(fake.agent, work, retries=0), {"issue": 1}, db=store)

    assert result.status == "finished", result.error
    assert len(fake.calls()) == 2
    [row] = attempts(store, result.run_id)
    assert json.loads(row["meta_json"])["rateLimitWaits"] == 1


# ---- transcripts -------------------------------------------------------------------------------------
def test_every_turn_is_an_agent_event_pair_and_the_transcript_reads_them(store: Store) -> None:
    script = Script(['{"nope": 1}', '{"n": 3}'])

    @workflow("talk")
    def talk(ctx: smithers.Ctx) -> Any:
        return Task("t", output=Num, agent=script.agent(id="talker"), prompt="count to three")

    result = smithers.run(talk, db=store)
    assert result.status == "finished", result.error

    agent_events = [e for e in events(store, result.run_id, ev.AGENT_EVENT)]
    kinds = [(e["event"]["type"], e["event"].get("turn")) for e in agent_events]
    assert kinds == [("started", 0), ("completed", 0), ("started", 1), ("completed", 1)]
    assert all(e["engine"] == "model" and e["attempt"] == 1 and e["nodeId"] == "t" for e in agent_events)
    assert "prompt" not in agent_events[0]["event"]  # the first turn's is the attempt's meta_json.prompt
    assert agent_events[1]["event"] == {
        "type": "completed",
        "agentId": "talker",
        "turn": 0,
        "ok": True,
        "text": '{"nope": 1}',
    }
    assert agent_events[2]["event"]["prompt"].startswith("Your answer could not be used")

    with store.read() as tx:
        [entry] = agent_transcript(tx, result.run_id, "t")
    assert entry["agentId"] == "talker" and entry["state"] == "finished" and entry["schemaRetries"] == 1
    assert [t["answer"] for t in entry["turns"]] == ['{"nope": 1}', '{"n": 3}']
    assert entry["prompt"].startswith("count to three") and entry["turns"][0]["prompt"] == entry["prompt"]
    assert "".join(p["text"] for p in entry["output"]) == '{"nope": 1}{"n": 3}'
    assert entry["response"] == '{"n": 3}'


# ---- the tool replay warning ----------------------------------------------------------------------------
def test_a_retry_is_warned_of_the_tools_with_side_effects_earlier_attempts_ran(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    tools = [
        {"name": "Read", "input": {"file_path": "app.py"}},
        {"name": "Bash", "input": {"command": "rm -rf build && make deploy"}},
        {"name": "Edit", "input": {"file_path": "app.py"}, "ok": False},
    ]
    fake = Fake(tmp_path, "claude", [{"tools": tools, "error": "the model crashed"}, {"text": FIX}])
    result = smithers.run(fix_flow(fake.agent, work, retries=1, retry_policy=NO_WAIT), {"issue": 5}, db=store)

    assert result.status == "finished", result.error
    first, second = (call["argv"][call["argv"].index("-p") + 1] for call in fake.calls())
    assert not first.startswith("Warning")
    assert second.startswith("Warning: earlier attempts of this task already ran these tools")
    assert 'Bash {"command":"rm -rf build && make deploy"} (finished)' in second
    assert "Read" not in second.split("Fix issue 5")[0]  # reading changes nothing
    assert "Edit" not in second.split("Fix issue 5")[0]  # it failed
    assert "Fix issue 5" in second


# ---- cliAgentTools -----------------------------------------------------------------------------------
def test_the_runs_cli_agent_tools_default_applies_to_clis_without_their_own(store: Store, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    default = Fake(tmp_path / "a", "claude", [{"text": FIX}])
    own = Fake(tmp_path / "b", "claude", [{"text": FIX}], tools="all")
    for fake in (default, own):
        result = smithers.run(
            fix_flow(fake.agent, work), {"issue": 1}, db=store, config={"cliAgentToolsDefault": "explicit-only"}
        )
        assert result.status == "finished", result.error
    assert "--dangerously-skip-permissions" not in default.calls()[0]["argv"]
    assert "--dangerously-skip-permissions" in own.calls()[0]["argv"]
    unattended = Fake(tmp_path / "c", "claude", [{"text": FIX}])
    assert smithers.run(fix_flow(unattended.agent, work), {"issue": 1}, db=store).status == "finished"
    assert "--dangerously-skip-permissions" in unattended.calls()[0]["argv"]  # "all" unless told otherwise


def test_a_bad_cli_agent_tools_default_is_refused(store: Store) -> None:
    with pytest.raises(smithers.SmithersError, match="cliAgentTools must be"):
        smithers.run(agent_steps(Counting("c"), 1), db=store, config={"cliAgentToolsDefault": "some"})
    assert ClaudeCode().tools is None


# ---- rewind ------------------------------------------------------------------------------------------
def test_a_rewind_calls_again_only_the_agent_tasks_after_its_frame(store: Store) -> None:
    agents = {name: Counting(name) for name in "abc"}

    @workflow("three-agents")
    def three(ctx: smithers.Ctx) -> Any:
        return Sequence(*[Task(name, output=Num, agent=agent, prompt=name) for name, agent in agents.items()])

    result = smithers.run(three, db=store)
    assert result.status == "finished", result.error
    [b_attempt] = attempts(store, result.run_id, "b")
    frame = json.loads(b_attempt["meta_json"])["frameNo"]  # the frame b started after: a had finished

    jumped = asyncio.run(Rewinder(store).jump(result.run_id, frame, True, "test"))
    assert jumped.new_frame_no == frame and jumped.deleted_attempts == 2
    again = smithers.run(three, run_id=result.run_id, resume=True, db=store)

    assert again.status == "finished", again.error
    assert [len(agents[name].calls) for name in "abc"] == [1, 2, 2]  # a's answer is kept, never asked again
    assert [len(attempts(store, result.run_id, name)) for name in "abc"] == [1, 1, 1]
    with store.read() as tx:
        run = tx.get_run(result.run_id)
    assert run is not None and run["status"] == "finished"
