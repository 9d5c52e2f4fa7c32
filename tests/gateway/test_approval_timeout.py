"""An approval nobody decides in time: the gateway wakes the run at the deadline by itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from smithers import Approval, Sequence, Task, workflow
from tests.gateway.support import Live


@workflow("late")
def late(ctx: Any) -> Any:
    return Sequence(Approval("gate", title="Quick?", timeout_ms=300, on_deny="continue"), Task("after", value=1))


def test_the_gateway_times_out_an_undecided_approval_and_finishes_the_run(start_gateway: Callable[..., Live]) -> None:
    live = start_gateway()
    live.gateway.register("late", late)
    ws = live.ws(connect_now=True)
    run_id = live.ok("launchRun", {"workflow": "late"})["runId"]
    live.wait_status(run_id, {"waiting-approval"})
    assert [a["nodeId"] for a in live.ok("listApprovals", {"runId": run_id})] == ["gate"]
    live.wait_status(run_id, {"finished"}, timeout=10)  # nobody decides: the deadline wakes it
    assert live.ok("listApprovals", {"runId": run_id}) == []
    with live.gateway.store.read() as tx:
        row = tx.get_approval(run_id, "gate", 0)
        output = tx.get_output(run_id, "gate", 0)
    assert row is not None and row["status"] == "denied" and row["decided_by"] == "smithers:timeout"
    assert output is not None and json.loads(output["payload_json"])["approved"] is False
    decided = ws.event("approval.decided", where=lambda f: f["payload"]["runId"] == run_id)
    assert decided["payload"] == {
        "runId": run_id,
        "nodeId": "gate",
        "iteration": 0,
        "approved": False,
        "decidedBy": "smithers:timeout",
    }
    completed = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
    assert completed["payload"] == {"runId": run_id, "status": "finished"}
    assert not [f for f in ws.events if f["event"] == "approval.decided"]  # announced once
    ws.close()
