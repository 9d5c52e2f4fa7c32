"""Broadcast delivery: filters, auto-subscription, event shapes."""

from __future__ import annotations

from typing import Any

from tests.gateway.support import Live


def run_events(client: Any, run_id: str, seconds: float) -> list[dict[str, Any]]:
    frames = client.events + client.drain(seconds)
    client.events = []
    return [f for f in frames if f.get("type") == "event" and f["payload"].get("runId") == run_id]


def test_run_events_and_a_single_run_completed(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "hello", "input": {"name": "x"}})["payload"]["runId"]
    live.wait_status(run_id, {"finished"})
    frames = run_events(client, run_id, 0.5)
    assert [f["event"] for f in frames] == ["node.started", "node.finished", "run.completed"]
    assert frames[0]["payload"] == {"runId": run_id, "nodeId": "greet", "state": "in-progress"}
    assert frames[1]["payload"] == {"runId": run_id, "nodeId": "greet", "state": "finished"}
    assert frames[2]["payload"] == {"runId": run_id, "status": "finished"}
    versions = [f["stateVersion"] for f in frames]
    assert versions == list(range(versions[0], versions[0] + 3))
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    client.close()


def test_failed_run_reports_its_error_once(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "failing"})["payload"]["runId"]
    live.wait_status(run_id, {"failed"})
    frames = run_events(client, run_id, 0.5)
    completed = [f for f in frames if f["event"] == "run.completed"]
    assert len(completed) == 1
    assert completed[0]["payload"]["status"] == "failed"
    error = completed[0]["payload"]["error"]
    assert "boom" in error["message"]
    assert "RuntimeError: boom" in error["stack"] and "in _boom" in error["stack"]  # the run keeps the stack
    failed = [f for f in frames if f["event"] == "node.failed"]
    assert failed and failed[0]["payload"]["state"] == "failed" and failed[0]["payload"]["error"]
    client.close()


def test_cancelled_run_reports_cancelled_once(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "slow"})["payload"]["runId"]
    client.event("node.started")
    assert client.request("cancelRun", {"runId": run_id})["payload"] == {"runId": run_id, "status": "cancelling"}
    live.wait_status(run_id, {"cancelled"})
    completed = [f for f in run_events(client, run_id, 0.5) if f["event"] == "run.completed"]
    assert [f["payload"] for f in completed] == [{"runId": run_id, "status": "cancelled"}]
    client.close()


def test_subscription_filter(live: Live) -> None:
    first = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(first, {"finished"})
    watcher = live.ws(connect_now=True, subscribe=["someone-else"])
    everyone = live.ws(connect_now=True)
    empty = live.ws(connect_now=True, subscribe=[])
    run_id = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(run_id, {"finished"})
    assert run_events(watcher, run_id, 0.4) == []
    assert len(run_events(everyone, run_id, 0.4)) == 3
    assert len(run_events(empty, run_id, 0.4)) == 3
    for client in (watcher, everyone, empty):
        client.close()


def test_auto_subscription_after_launch(live: Live) -> None:
    client = live.ws(connect_now=True)
    own = client.request("launchRun", {"workflow": "hello"})["payload"]["runId"]
    live.wait_status(own, {"finished"})
    other = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(other, {"finished"})
    assert len(run_events(client, own, 0.4)) == 3
    assert run_events(client, other, 0.2) == []  # now filtered to the runs it started
    client.close()


def test_unauthenticated_connections_get_no_broadcasts(live: Live) -> None:
    client = live.ws()
    run_id = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(run_id, {"finished"})
    assert client.drain(0.3) == []
    client.close()


def test_state_version_is_global_and_health_reports_it(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "chatty", "input": {"tasks": 3}})["payload"]["runId"]
    live.wait_status(run_id, {"finished"})
    frames = run_events(client, run_id, 0.5)
    assert len(frames) == 7
    assert live.http.get("/health").json()["stateVersion"] == frames[-1]["stateVersion"] == 7
    client.close()


def test_approval_events(live: Live) -> None:
    client = live.ws(connect_now=True)
    run_id = client.request("launchRun", {"workflow": "gate"})["payload"]["runId"]
    requested = client.event("approval.requested")
    assert requested["payload"] == {"runId": run_id, "nodeId": "ok", "iteration": 0}
    live.wait_status(run_id, {"waiting-approval"})
    client.close()
