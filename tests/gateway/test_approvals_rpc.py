"""Approvals end to end: listing, deciding over both transports, policies, the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smithers.engine import events as ev
from tests.gateway.support import HUMAN_AUTH, Live, cli, error_of, wait_for

OP = "op-token"
Start = Callable[..., Live]


def launch(live: Live, workflow: str, token: str | None = OP, **input: Any) -> str:
    return str(live.ok("launchRun", {"workflow": workflow, "input": input}, token=token)["runId"])


def waiting(live: Live, workflow: str, token: str | None = OP, **input: Any) -> str:
    run_id = launch(live, workflow, token, **input)
    live.wait_status(run_id, {"waiting-approval"})
    return run_id


def decide(live: Live, params: dict[str, Any], token: str | None = OP, method: str = "submitApproval") -> Any:
    return live.rpc(method, params, token=token)


def approval_row(live: Live, run_id: str, node_id: str) -> dict[str, Any]:
    with live.gateway.store.read() as tx:
        row = tx.get_approval(run_id, node_id, 0)
    assert row is not None
    return dict(row)


def output_of(live: Live, run_id: str, node_id: str) -> Any:
    with live.gateway.store.read() as tx:
        row = tx.get_output(run_id, node_id, 0)
    assert row is not None, f"no output for {node_id}"
    return row


def node_states(live: Live, run_id: str) -> dict[str, str]:
    with live.gateway.store.read() as tx:
        return {n["node_id"]: n["state"] for n in tx.list_nodes(run_id)}


def seen_value(live: Live, run_id: str, node_id: str = "after") -> Any:
    return json.loads(output_of(live, run_id, node_id)["payload_json"])


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iteration": 0,
        "requestSummary": None,
        "approvalMode": "decision",
        "options": [],
        "allowedScopes": [],
        "allowedUsers": [],
        "autoApprove": None,
    }
    return {**base, **fields}


# -- listing -------------------------------------------------------------------------
def test_pending_listing_has_every_field(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    ship = waiting(live, "ship")
    gated = waiting(live, "gated_task")
    pick = waiting(live, "pick")
    rank = waiting(live, "rank")
    alice = waiting(live, "only_alice")
    admins = waiting(live, "only_admins")
    listed = live.ok("listApprovals", token=OP)
    order = [ship, gated, pick, rank, alice, admins]  # each was requested after the previous one waited
    times = [e["requestedAtMs"] for e in listed]
    assert all(isinstance(t, int) for t in times) and times == sorted(times)  # oldest request first
    assert sorted(e["runId"] for e in listed) == sorted(order)
    by_run = {e["runId"]: {k: v for k, v in e.items() if k != "requestedAtMs"} for e in listed}
    assert [by_run[r] for r in order] == [
        entry(
            runId=ship,
            workflowKey="ship",
            nodeId="ok",
            requestTitle="Ship it?",
            requestSummary="Deploy v2 to production",
        ),
        entry(
            runId=gated, workflowKey="gated_task", nodeId="deploy", requestTitle="Deploy to prod", approvalMode="gate"
        ),
        entry(
            runId=pick,
            workflowKey="pick",
            nodeId="choice",
            requestTitle="Pick a colour",
            approvalMode="select",
            # entries without a non-empty string key and label are left out
            options=[{"key": "blue", "label": "Blue", "summary": "calm"}, {"key": "red", "label": "Red"}],
        ),
        entry(
            runId=rank,
            workflowKey="rank",
            nodeId="order",
            requestTitle="Rank them",
            approvalMode="rank",
            options=[{"key": "a", "label": "A"}, {"key": "b", "label": "B"}, {"key": "c", "label": "C"}],
        ),
        entry(runId=alice, workflowKey="only_alice", nodeId="ok", requestTitle="ok", allowedUsers=["user:alice"]),
        entry(runId=admins, workflowKey="only_admins", nodeId="ok", requestTitle="ok", allowedScopes=["run:admin"]),
    ]
    assert live.ok("approvals.list", token=OP) == listed
    # the hello snapshot carries the same listing
    ws = live.ws(connect_now=True, token=OP)
    try:
        assert ws.hello["ok"] is True and ws.hello["payload"]["snapshot"]["approvals"] == listed
    finally:
        ws.close()


def test_listing_filters_and_limit(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    first = waiting(live, "ship")
    second = waiting(live, "ship")
    pick = waiting(live, "pick")

    def ids(params: Any) -> list[str]:
        return [e["runId"] for e in live.ok("listApprovals", params, token=OP)]

    assert ids({"runId": second}) == [second]
    assert ids({"filter": {"runId": first}}) == [first]
    assert ids({"workflow": "ship"}) == [first, second]
    assert ids({"filter": {"workflow": "pick"}}) == [pick]
    assert ids({"workflow": "pick", "filter": {"workflow": "ship"}}) == [pick]  # top level wins
    assert ids({"workflow": 7, "filter": {"workflow": "pick"}}) == [pick]  # wrong type falls through
    assert ids({"workflow": "nope"}) == []
    assert ids({"limit": 2}) == [first, second]
    assert ids({"filter": {"limit": 1}}) == [first]
    assert ids({"limit": "1"}) == [first]  # numeric strings are accepted
    assert ids({"workflow": "ship", "limit": 1}) == [first]  # filters first, then the limit
    for bad, message in (("x", "finite number greater than 0"), (0, "finite number greater than 0"), (1.5, "integer")):
        response = live.rpc("approvals.list", {"limit": bad}, token=OP)
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "INVALID_INPUT" and message in error["message"], error
    response = live.rpc("listApprovals", {"limit": "x", "filter": {"limit": 5}}, token=OP)
    assert (
        response.status_code == 400 and error_of(response)["message"] == "limit must be a finite number greater than 0."
    )


# -- deciding: events and resume ---------------------------------------------
def test_ws_decision_broadcasts_and_resumes(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    dashboard = live.ws(connect_now=True, token="bob-token")  # no filter: sees every broadcast
    client = live.ws(connect_now=True, token=OP)
    try:
        launched = client.request("launchRun", {"workflow": "ship"})
        run_id = launched["payload"]["runId"]
        requested = client.event("approval.requested")
        assert requested["payload"] == {"runId": run_id, "nodeId": "ok", "iteration": 0}
        assert dashboard.event("approval.requested")["payload"] == requested["payload"]
        live.wait_status(run_id, {"waiting-approval"})

        response = client.request("submitApproval", {"runId": run_id, "nodeId": "ok", "approved": True, "note": "lgtm"})
        assert response["ok"] is True, response
        assert response["payload"] == {"runId": run_id, "nodeId": "ok", "iteration": 0, "approved": True}
        decided = {"runId": run_id, "nodeId": "ok", "iteration": 0, "approved": True, "decidedBy": "user:op"}
        # D5: broadcast when the decision commits, before the response to the decider
        assert [e["payload"] for e in client.events if e["event"] == "approval.decided"] == [decided]
        client.event("approval.decided")  # taken from the frames seen before the response
        assert client.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)["payload"] == {
            "runId": run_id,
            "status": "finished",
        }
        assert dashboard.event("approval.decided")["payload"] == decided
        dashboard.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
        # exactly one approval.decided per decision (the engine's ApprovalGranted is not mapped again)
        assert not [e for e in client.events if e["event"] == "approval.decided"]
        assert not [e for e in dashboard.events if e["event"] == "approval.decided"]
    finally:
        client.close()
        dashboard.close()
    row = approval_row(live, run_id, "ok")
    assert row["status"] == "approved" and row["note"] == "lgtm" and row["decided_by"] == "user:op"
    assert isinstance(row["decided_at_ms"], int)
    assert live.ok("getRun", {"runId": run_id}, token=OP)["status"] == "finished"
    assert node_states(live, run_id) == {"ok": "finished", "after": "finished"}
    with live.gateway.store.read() as tx:
        kinds = [e.type for e in tx.list_events(run_id, after_seq=-1, limit=1000)]
    assert kinds.count(ev.APPROVAL_GRANTED) == 1 and kinds.count(ev.APPROVAL_REQUESTED) == 1
    metrics = live.http.get("/metrics").text
    assert 'smithers_gateway_approval_decisions_total{outcome="approved"} 1.0' in metrics


def test_http_legacy_shape_decision_value(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "pick")
    response = decide(
        live,
        {"runId": run_id, "nodeId": "choice", "approved": True, "decision": {"selected": "blue"}, "note": "calm"},
        method="approvals.decide",
    )
    assert response.status_code == 200, response.text
    assert response.json()["payload"] == {"runId": run_id, "nodeId": "choice", "iteration": 0, "approved": True}
    live.wait_status(run_id, {"finished"})
    row = approval_row(live, run_id, "choice")
    assert json.loads(row["decision_json"]) == {"selected": "blue"} and row["note"] == "calm"
    value = seen_value(live, run_id)["value"]
    assert value["approved"] is True and value["selected"] == "blue" and value["note"] == "calm"
    assert value["decidedBy"] == "user:op"


def test_http_stable_shape_with_value(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "pick")
    params = {
        "runId": run_id,
        "nodeId": "choice",
        "decision": {"approved": True, "value": {"selected": "red"}, "note": "bold"},
    }
    response = decide(live, params)
    assert response.status_code == 200, response.text
    assert response.json()["payload"] == {"runId": run_id, "nodeId": "choice", "iteration": 0, "approved": True}
    live.wait_status(run_id, {"finished"})
    row = approval_row(live, run_id, "choice")
    assert json.loads(row["decision_json"]) == {"selected": "red"}
    assert row["note"] == "bold" and row["status"] == "approved"
    assert seen_value(live, run_id)["value"]["selected"] == "red"


def test_stable_shape_without_value_stores_the_decision_object(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    ship = waiting(live, "ship")
    response = decide(live, {"runId": ship, "nodeId": "ok", "decision": {"approved": True, "note": "ok"}})
    assert response.status_code == 200, response.text
    live.wait_status(ship, {"finished"})
    row = approval_row(live, ship, "ok")
    assert json.loads(row["decision_json"]) == {"approved": True, "note": "ok"} and row["note"] == "ok"
    # select validation runs against the whole decision object
    pick = waiting(live, "pick")
    response = decide(live, {"runId": pick, "nodeId": "choice", "decision": {"approved": True, "selected": "red"}})
    assert response.status_code == 200, response.text
    live.wait_status(pick, {"finished"})
    assert seen_value(live, pick)["value"]["selected"] == "red"
    # top-level approved/note win over decision.approved/note; a wrong-typed one falls through
    other = waiting(live, "ship")
    params = {
        "runId": other,
        "nodeId": "ok",
        "approved": "yes",
        "note": 3,
        "decision": {"approved": False, "note": "n"},
    }
    response = decide(live, params)
    assert response.status_code == 200, response.text
    assert response.json()["payload"]["approved"] is False
    row = approval_row(live, other, "ok")
    assert row["status"] == "denied" and row["note"] == "n"


def test_required_params_and_unknown_run(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "ship")
    required = "runId, nodeId, and approved are required"
    for params in (
        {"nodeId": "ok", "approved": True},
        {"runId": run_id, "approved": True},
        {"runId": run_id, "nodeId": "", "approved": True},
        {"runId": run_id, "nodeId": "ok"},
        {"runId": run_id, "nodeId": "ok", "approved": "false"},
        {"runId": run_id, "nodeId": "ok", "decision": {"approved": "true"}},
    ):
        response = decide(live, params)
        assert response.status_code == 400, params
        assert error_of(response) == {"version": "v1", "code": "INVALID_REQUEST", "message": required}
    response = decide(live, {"runId": "nope", "nodeId": "ok", "approved": True})
    assert response.status_code == 404
    assert error_of(response) == {"version": "v1", "code": "NOT_FOUND", "message": "Run not found: nope"}
    assert approval_row(live, run_id, "ok")["status"] == "requested"
    assert live.gateway.store.get_run(run_id)["status"] == "waiting-approval"


def test_deciding_a_node_that_is_not_waiting_is_not_found(start_humans: Start) -> None:
    """There is no pending approval to decide: 404 (the reference answers SERVER_ERROR)."""
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "ship")
    response = decide(live, {"runId": run_id, "nodeId": "after", "approved": True})
    assert response.status_code == 404, response.text
    error = error_of(response)
    assert error["code"] == "NOT_FOUND" and error["message"].startswith("Node after is not waiting for approval")
    assert approval_row(live, run_id, "ok")["status"] == "requested"


def test_second_decision_is_already_decided(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "ship")
    assert decide(live, {"runId": run_id, "nodeId": "ok", "approved": True}).status_code == 200
    expected = {
        "version": "v1",
        "code": "AlreadyDecided",
        "message": "Approval for ok has already been decided",
        "runId": run_id,
        "nodeId": "ok",
        "iteration": 0,
        "status": "approved",
    }
    for params in (
        {"runId": run_id, "nodeId": "ok", "approved": True},
        {"runId": run_id, "nodeId": "ok", "decision": {"approved": False}},
    ):
        response = decide(live, params)
        assert response.status_code == 409, response.text
        assert error_of(response) == expected
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request("approvals.decide", {"runId": run_id, "nodeId": "ok", "approved": False}, "again")
        assert frame["id"] == "again" and frame["ok"] is False and frame["error"] == expected
    finally:
        ws.close()
    live.wait_status(run_id, {"finished"})
    assert approval_row(live, run_id, "ok")["status"] == "approved"
    # a denied approval answers the same way, with its status
    denied = waiting(live, "deny_continue")
    assert decide(live, {"runId": denied, "nodeId": "ok", "approved": False}).status_code == 200
    response = decide(live, {"runId": denied, "nodeId": "ok", "approved": True})
    assert response.status_code == 409 and error_of(response)["status"] == "denied"


# -- select / rank validation ---------------------------------------------------------
def test_select_decisions_are_validated(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "pick")
    need = "select approvals require decision.selected"
    for decision, message in (
        (None, need),
        ("blue", need),
        ({"selected": ""}, need),
        ({"selected": 3}, need),
        ({"value": {"choice": "blue"}}, need),
        ({"selected": "green"}, "Unknown selection: green"),
        ({"value": {"selected": "purple"}}, "Unknown selection: purple"),
    ):
        params: dict[str, Any] = {"runId": run_id, "nodeId": "choice", "approved": True}
        if decision is not None:
            params["decision"] = decision
        response = decide(live, params)
        assert response.status_code == 400, (decision, response.text)
        assert error_of(response) == {"version": "v1", "code": "INVALID_REQUEST", "message": message}
    assert approval_row(live, run_id, "choice")["status"] == "requested"
    # denials are never validated
    response = decide(live, {"runId": run_id, "nodeId": "choice", "approved": False, "note": "none of these"})
    assert response.status_code == 200, response.text
    live.wait_status(run_id, {"finished"})
    value = seen_value(live, run_id)["value"]
    assert value["approved"] is False and value["note"] == "none of these"


def test_rank_decisions_are_validated(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "rank")
    need = "rank approvals require decision.ranked"
    for decision, message in (
        (None, need),
        ({"ranked": []}, need),
        ({"ranked": "a,b"}, need),
        ({"ranked": ["a", 2]}, need),
        ({"ranked": ["a", "z"]}, "rank approval included unknown options"),
    ):
        params: dict[str, Any] = {"runId": run_id, "nodeId": "order", "approved": True}
        if decision is not None:
            params["decision"] = decision
        response = decide(live, params)
        assert response.status_code == 400, (decision, response.text)
        assert error_of(response) == {"version": "v1", "code": "INVALID_REQUEST", "message": message}
    response = decide(live, {"runId": run_id, "nodeId": "order", "approved": True, "decision": {"ranked": ["c", "a"]}})
    assert response.status_code == 200, response.text
    live.wait_status(run_id, {"finished"})
    assert seen_value(live, run_id)["value"]["ranked"] == ["c", "a"]


# -- who may decide ---------------------------------------------------------------
FORBIDDEN_USER = {"version": "v1", "code": "FORBIDDEN", "message": "User is not allowed to decide this approval"}
FORBIDDEN_SCOPE = {"version": "v1", "code": "FORBIDDEN", "message": "Connection is missing required approval scope"}


def test_allowed_users(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "only_alice")
    for token in ("bob-token", "anonymous-token"):
        for approved in (True, False):
            response = decide(live, {"runId": run_id, "nodeId": "ok", "approved": approved}, token=token)
            assert response.status_code == 403, (token, response.text)
            assert error_of(response) == FORBIDDEN_USER
    assert approval_row(live, run_id, "ok")["status"] == "requested"
    response = decide(live, {"runId": run_id, "nodeId": "ok", "approved": True}, token="alice-token")
    assert response.status_code == 200, response.text
    live.wait_status(run_id, {"finished"})
    assert approval_row(live, run_id, "ok")["decided_by"] == "user:alice"


def test_allowed_users_on_an_open_gateway(start_humans: Start) -> None:
    """No auth: the caller has no user id, so an approval restricted to users cannot be decided."""
    live = start_humans()
    run_id = waiting(live, "only_alice", token=None)
    response = decide(live, {"runId": run_id, "nodeId": "ok", "approved": True}, token=None)
    assert response.status_code == 403 and error_of(response) == FORBIDDEN_USER


def test_allowed_scopes(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    admins = waiting(live, "only_admins")
    for token in ("submit-only-token", "alice-token"):
        response = decide(live, {"runId": admins, "nodeId": "ok", "approved": True}, token=token)
        assert response.status_code == 403, (token, response.text)
        assert error_of(response) == FORBIDDEN_SCOPE
    response = decide(live, {"runId": admins, "nodeId": "ok", "approved": True}, token="admin-approver-token")
    assert response.status_code == 200, response.text
    live.wait_status(admins, {"finished"})
    # a free-form entry requires only run:read (reference behaviour)
    free = waiting(live, "free_scope")
    response = decide(live, {"runId": free, "nodeId": "ok", "approved": False}, token="submit-only-token")
    assert response.status_code == 403 and error_of(response) == FORBIDDEN_SCOPE
    response = decide(live, {"runId": free, "nodeId": "ok", "approved": True}, token="alice-token")
    assert response.status_code == 200, response.text
    live.wait_status(free, {"finished"})


# -- gates and denial policies --------------------------------------------------------
def test_needs_approval_task_gate(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    approved = waiting(live, "gated_task")
    assert node_states(live, approved)["deploy"] == "waiting-approval"
    assert decide(live, {"runId": approved, "nodeId": "deploy", "approved": True}).status_code == 200
    live.wait_status(approved, {"finished"})
    assert node_states(live, approved) == {"deploy": "finished", "after": "finished"}
    assert seen_value(live, approved, "deploy") == {"message": "deployed"}

    denied = waiting(live, "gated_task")
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request("submitApproval", {"runId": denied, "nodeId": "deploy", "approved": False, "note": "no"})
        assert frame["ok"] is True and frame["payload"]["approved"] is False
        assert ws.event("approval.decided")["payload"] == {
            "runId": denied,
            "nodeId": "deploy",
            "iteration": 0,
            "approved": False,
            "decidedBy": "user:op",
        }
        completed = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == denied)["payload"]
        assert completed["status"] == "failed"
    finally:
        ws.close()
    assert live.gateway.store.get_run(denied)["status"] == "failed"
    assert node_states(live, denied)["deploy"] == "failed"
    assert node_states(live, denied).get("after") in (None, "pending")  # never ran

    optional = waiting(live, "gated_optional")
    assert decide(live, {"runId": optional, "nodeId": "deploy", "approved": False}).status_code == 200
    live.wait_status(optional, {"finished"})
    assert node_states(live, optional) == {"deploy": "skipped", "after": "finished"}


def test_on_deny_policies(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    runs = {key: waiting(live, key) for key in ("deny_fail", "deny_continue", "deny_skip", "deny_unset")}
    for run_id in runs.values():
        response = decide(live, {"runId": run_id, "nodeId": "ok", "approved": False, "note": "no"})
        assert response.status_code == 200, response.text
    fail = live.wait_status(runs["deny_fail"], {"failed", "finished"})
    assert fail["status"] == "failed"
    assert node_states(live, runs["deny_fail"])["ok"] == "failed"
    assert node_states(live, runs["deny_fail"]).get("after") in (None, "pending")  # never ran
    for key in ("deny_continue", "deny_unset"):
        assert live.wait_status(runs[key], {"failed", "finished"})["status"] == "finished", key
        assert node_states(live, runs[key]) == {"ok": "finished", "after": "finished"}
        value = seen_value(live, runs[key])["value"]
        assert value["approved"] is False and value["note"] == "no" and value["decidedBy"] == "user:op", key
    assert live.wait_status(runs["deny_skip"], {"failed", "finished"})["status"] == "finished"
    assert node_states(live, runs["deny_skip"]) == {"ok": "skipped", "after": "finished"}
    skipped = seen_value(live, runs["deny_skip"])["value"]  # skipped, and its decision still readable
    assert skipped["approved"] is False and skipped["note"] == "no" and skipped["decidedBy"] == "user:op"
    assert 'smithers_gateway_approval_decisions_total{outcome="denied"} 4.0' in live.http.get("/metrics").text


def test_two_approvals_in_a_row(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    run_id = waiting(live, "two_gates")
    assert [e["nodeId"] for e in live.ok("listApprovals", {"runId": run_id}, token=OP)] == ["first"]
    assert decide(live, {"runId": run_id, "nodeId": "first", "approved": True}).status_code == 200
    wait_for(
        lambda: [e["nodeId"] for e in live.ok("listApprovals", {"runId": run_id}, token=OP)] == ["second"],
        "the second approval",
    )
    live.wait_status(run_id, {"waiting-approval"})
    assert decide(live, {"runId": run_id, "nodeId": "second", "approved": True}).status_code == 200
    live.wait_status(run_id, {"finished"})
    assert live.ok("listApprovals", {"runId": run_id}, token=OP) == []


# -- the CLI on the same database while the gateway runs ---------------------------------------------
def test_cli_decisions_are_picked_up_by_the_gateway(start_humans: Start, tmp_path: Path) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    approved = waiting(live, "ship")
    denied = waiting(live, "deny_fail")
    db = live.db_url
    proc = cli("approve", approved, "--note", "from the cli", "--by", "user:cli", "--db", db, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"approved ok of run {approved}"
    proc = cli("deny", denied, "--node", "ok", "--note", "nope", "--db", db, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"denied ok of run {denied}"
    row = approval_row(live, approved, "ok")
    assert row["status"] == "approved" and row["decided_by"] == "user:cli" and row["note"] == "from the cli"
    # the gateway continues both runs by itself
    assert live.wait_status(approved, {"finished", "failed"}, timeout=20)["status"] == "finished"
    assert live.wait_status(denied, {"finished", "failed"}, timeout=20)["status"] == "failed"
    assert live.ok("listApprovals", token=OP) == []
    # a decided approval cannot be decided again through the gateway
    response = decide(live, {"runId": approved, "nodeId": "ok", "approved": False})
    assert response.status_code == 409 and error_of(response)["status"] == "approved"
