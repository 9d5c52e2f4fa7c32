"""Agent tasks launched over the gateway (a real server on loopback, SQLite and PostgreSQL): streamed output reaches
a WebSocket client as ``task.output`` events, in order, before ``run.completed``; ``getRun`` sums
tokens against the budget; ``getNodeOutput`` answers the transcript; the gateway's
``defaults.cliAgentTools`` reaches the runs' CLI agents."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from smithers import Sequence, SmithersError, Task, workflow
from smithers.agents import AgentCall, AgentReply, AgentUsage, ClaudeCode
from smithers.gateway.server import Gateway
from tests.gateway.support import Live

FAKES = Path(__file__).resolve().parent / "fakes"

PIECES = 400


class Done(BaseModel):
    pieces: int


class Streamer:
    """Streams ``PIECES`` numbered pieces over about a second, then answers."""

    id = "streamer"

    async def run(self, call: AgentCall) -> AgentReply:
        for index in range(PIECES):
            call.on_output(f"[{index:04d}]", "stderr" if index % 100 == 99 else "stdout")
            if index % 20 == 19:
                await asyncio.sleep(0.05)
        return AgentReply(f'{{"pieces": {PIECES}}}')


@workflow("agent-stream")
def agent_stream(ctx: Any) -> Any:
    return Task("talk", output=Done, agent=Streamer(), prompt="talk a lot")


def test_streamed_output_reaches_a_websocket_client_in_order(db_url: str) -> None:
    live = Live(Gateway.for_workflows([agent_stream], db=db_url))
    try:
        client = live.ws(connect_now=True)
        run_id = client.request("launchRun", {"workflow": "agent-stream"})["payload"]["runId"]
        outputs: list[dict[str, Any]] = []
        while True:
            frame = client.recv(30)
            if frame.get("type") != "event":
                continue
            if frame["event"] == "task.output":
                outputs.append(frame["payload"])
            if frame["event"] == "run.completed":
                assert frame["payload"]["status"] == "finished", frame
                break
        assert all(o["runId"] == run_id and o["nodeId"] == "talk" for o in outputs)
        text = "".join(o["output"] for o in outputs)
        assert text == "".join(f"[{i:04d}]" for i in range(PIECES))  # every piece, once, in order
        assert 4 <= len(outputs) < PIECES // 4  # batched (about every 200 ms), not one event per piece
        stderr = [o["output"] for o in outputs if o["stream"] == "stderr"]
        assert stderr == ["[0099]", "[0199]", "[0299]", "[0399]"]
        client.close()
    finally:
        live.stop()


# ---- cost, limits and transcripts over the gateway ------------------------------------------------
class Num(BaseModel):
    n: int


class Paid:
    """Answers after reporting 40 + 10 tokens and a cent."""

    id = "paid"

    async def run(self, call: AgentCall) -> AgentReply:
        call.on_output("thinking...", "stdout")
        return AgentReply('{"n": 1}', usage=AgentUsage(input_tokens=40, output_tokens=10, cost_usd=0.01))


@workflow("agent-budget", token_budget=120)
def agent_budget(ctx: Any) -> Any:
    return Sequence(*[Task(f"s{i}", output=Num, agent=Paid(), prompt=f"step {i}") for i in range(3)])


def test_get_run_sums_tokens_and_get_node_output_has_the_transcript(db_url: str) -> None:
    live = Live(Gateway.for_workflows([agent_budget, agent_stream], db=db_url))
    try:
        run_id = live.ok("launchRun", {"workflow": "agent-budget"})["runId"]
        row = live.wait_status(run_id, {"failed"})
        assert json.loads(row["error_json"])["code"] == "TOKEN_BUDGET_EXCEEDED"  # 3 × 50 > 120

        run = live.ok("getRun", {"runId": run_id})
        assert run["tokenUsage"] == {
            "inputTokens": 120,
            "outputTokens": 30,
            "costUsd": 0.03,
            "attempts": 3,
            "byAgent": {"paid": {"inputTokens": 120, "outputTokens": 30, "costUsd": 0.03}},
            "tokenBudget": 120,
        }
        answer = live.ok("getNodeOutput", {"runId": run_id, "nodeId": "s0"})
        assert answer["status"] == "produced" and answer["row"] == {"n": 1}
        [entry] = answer["transcript"]
        assert (entry["attempt"], entry["agentId"], entry["state"]) == (1, "paid", "finished")
        assert entry["turns"][0]["prompt"].startswith("step 0") and entry["turns"][0]["answer"] == '{"n": 1}'
        assert entry["output"] == [{"stream": "stdout", "text": "thinking..."}]
        failed = live.ok("getNodeOutput", {"runId": run_id, "nodeId": "s2"})
        assert failed["status"] == "failed"
        assert failed["transcript"][0]["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"

        listed = live.ok("events.list", {"runId": run_id, "limit": 1000})["events"]
        kinds = [(e["payload"]["nodeId"], e["payload"]["event"]["type"]) for e in listed if e["type"] == "AgentEvent"]
        assert kinds == [(f"s{i}", kind) for i in range(3) for kind in ("started", "completed")]
        plain = live.ok("getRun", {"runId": live.ok("launchRun", {"workflow": "agent-stream"})["runId"]})
        assert "tokenUsage" not in plain  # no agent reported usage, and no budget
    finally:
        live.stop()


def test_the_gateways_cli_agent_tools_default_reaches_its_runs(tmp_path: Path, db_url: str) -> None:
    scenario = tmp_path / "scenario.json"
    log = tmp_path / "calls.jsonl"
    scenario.write_text(json.dumps({"log": str(log), "turns": [{"text": '{"n": 5}'}]}))
    claude = ClaudeCode(command=[sys.executable, str(FAKES / "claude.py")], env={"FAKE_AGENT_SCENARIO": str(scenario)})

    @workflow("agent-cli")
    def agent_cli(ctx: Any) -> Any:
        return Task("fix", output=Num, agent=claude, prompt="fix it")

    gateway = Gateway.for_workflows([agent_cli], db=db_url, defaults={"cliAgentTools": "explicit-only"})
    live = Live(gateway)
    try:
        run_id = live.ok("launchRun", {"workflow": "agent-cli"})["runId"]
        live.wait_status(run_id, {"finished"})
        [call] = [json.loads(line) for line in log.read_text().splitlines()]
        assert "--dangerously-skip-permissions" not in call["argv"]
        row = live.gateway.store.get_run(run_id)
        assert row is not None
        config = json.loads(row["config_json"])
        assert config["cliAgentToolsDefault"] == "explicit-only"
    finally:
        live.stop()
    with pytest.raises(SmithersError, match="cliAgentTools must be"):
        Gateway.for_workflows([agent_cli], db=str(tmp_path / "h.db"), defaults={"cliAgentTools": "any"})
