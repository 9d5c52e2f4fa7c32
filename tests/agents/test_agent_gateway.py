"""An agent task launched over the gateway (a real server on loopback, SQLite): its streamed output
reaches a WebSocket client as ``task.output`` events, in order, before ``run.completed``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from smithers import Store, Task, workflow
from smithers.agents import AgentCall, AgentReply
from smithers.gateway.server import Gateway
from tests.gateway.support import Live

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


def test_streamed_output_reaches_a_websocket_client_in_order(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    Store(str(db)).close()
    live = Live(Gateway.for_workflows([agent_stream], db=str(db)), db)
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
