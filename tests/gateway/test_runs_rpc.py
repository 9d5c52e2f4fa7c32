"""Run RPCs: listing, launch, get, cancel (D1), resume, rerun, hijack."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from smithers.engine.control import signal_run
from smithers.store import schema
from smithers.store.rows import now_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import Live


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert body["ok"] is False, body
    return dict(body["error"])


def test_health_rpc(live: Live) -> None:
    payload = live.ok("health")
    assert payload["protocol"] == 1 and payload["features"] == ["streaming", "runs"]
    assert payload["stateVersion"] == 0 and isinstance(payload["uptimeMs"], int)


def test_launch_and_get_run(live: Live) -> None:
    launched = live.ok("launchRun", {"workflow": "hello", "input": {"name": "ada"}})
    run_id = launched["runId"]
    assert launched == {"runId": run_id, "workflow": "hello"}
    live.wait_status(run_id, {"finished"})
    record = live.ok("getRun", {"runId": run_id})
    assert record["runId"] == run_id and record["status"] == "finished"
    assert record["workflowKey"] == "hello" and record["summary"] == {"finished": 1}
    assert record["runState"]["state"] == "succeeded" and record["runState"]["runId"] == run_id
    assert record["runState"]["computedAt"].endswith("Z")
    config = json.loads(record["configJson"])
    assert config["gatewayWorkflowKey"] == "hello" and config["gatewayTriggeredBy"] == "gateway"
    assert config["auth"]["triggeredBy"] == "gateway" and config["auth"]["scopes"] == ["*"]
    assert config["auth"]["role"] == "operator" and config["auth"]["tokenId"] is None
    assert live.ok("runs.get", {"runId": run_id})["runId"] == run_id


def test_launch_records_the_caller(token_live: Live) -> None:
    run_id = token_live.ok("runs.create", {"workflow": "hello"}, token="operator-token")["runId"]
    token_live.wait_status(run_id, {"finished"})
    auth = json.loads(token_live.gateway.store.get_run(run_id)["config_json"])["auth"]
    assert auth["triggeredBy"] == "user:op" and auth["tokenId"] == "0850123315d21ab9"
    metrics = token_live.http.get("/metrics").text
    assert 'smithers_gateway_runs_started_total{resume="false",source="user",workflow="hello"} 1.0' in metrics


def test_launch_run_id_options(live: Live) -> None:
    assert live.ok("launchRun", {"workflow": "hello", "runId": "top", "options": {"runId": "inner"}})["runId"] == "top"
    assert live.ok("launchRun", {"workflow": "hello", "options": {"runId": "inner"}})["runId"] == "inner"
    assert live.ok("launchRun", {"workflow": "hello", "runId": 5, "options": {"runId": "typed"}})["runId"] == "typed"
    live.wait_status("top", {"finished"})
    duplicate = live.rpc("launchRun", {"workflow": "hello", "runId": "top"})
    assert duplicate.status_code == 400
    assert error_of(duplicate) == {"version": "v1", "code": "INVALID_REQUEST", "message": "Run already exists: top"}
    too_long = live.rpc("launchRun", {"workflow": "hello", "runId": "r" * 300})
    assert too_long.status_code == 400 and error_of(too_long)["code"] == "INVALID_INPUT"


def test_a_run_whose_tree_cannot_be_made_from_its_input_is_refused_as_bad_input(live: Live) -> None:
    """The first frame is rendered before the answer: a render that fails, or a tree the engine
    refuses, comes back as 400 INVALID_INPUT with the engine's code, and no run exists."""
    missing = live.rpc("launchRun", {"workflow": "picky", "runId": "p1", "input": {}})
    assert missing.status_code == 400
    error = error_of(missing)
    assert error["code"] == "INVALID_INPUT" and error["engineCode"] == "RENDER_FAILED"
    assert error["message"].startswith("Workflow picky cannot start: render failed: KeyError")
    repeated = live.rpc("launchRun", {"workflow": "picky", "runId": "p2", "input": {"items": [1, 1]}})
    assert repeated.status_code == 400 and error_of(repeated)["engineCode"] == "DUPLICATE_ID"
    ws = live.ws(connect_now=True)
    try:
        params = {"workflow": "picky", "runId": "p3", "input": {"items": None}}
        answer = ws.request("launchRun", params, frame_id="mine")
        assert answer["id"] == "mine" and answer["ok"] is False and answer["error"]["code"] == "INVALID_INPUT"
    finally:
        ws.close()
    assert [live.gateway.store.get_run(r) for r in ("p1", "p2", "p3")] == [None, None, None]
    assert live.ok("launchRun", {"workflow": "picky", "runId": "p4", "input": {"items": [1, 2]}})["runId"] == "p4"
    assert live.wait_status("p4", {"finished"})["status"] == "finished"


def test_launch_with_the_id_of_an_active_run_is_a_conflict(live: Live) -> None:
    live.ok("launchRun", {"workflow": "slow", "runId": "busy"})
    live.wait_status("busy", {"running"})
    before = live.gateway.store.get_run("busy")
    for params in ({"workflow": "slow", "runId": "busy"}, {"workflow": "hello", "options": {"runId": "busy"}}):
        response = live.rpc("launchRun", params)
        assert response.status_code == 409
        assert error_of(response) == {"version": "v1", "code": "CONFLICT", "message": "Run busy is already active"}
    ws = live.ws(connect_now=True)
    try:
        frame = ws.request("runs.create", {"workflow": "hello", "runId": "busy"})
        assert frame["ok"] is False and frame["error"]["code"] == "CONFLICT"
    finally:
        ws.close()
    after = live.gateway.store.get_run("busy")
    assert after == before  # the running run is untouched
    assert live.gateway.is_executing("busy")
    live.ok("cancelRun", {"runId": "busy"})
    live.wait_status("busy", {"cancelled"})


@pytest.mark.parametrize(
    ("params", "status", "code", "message"),
    [
        ({}, 400, "INVALID_REQUEST", "workflow is required"),
        ({"workflow": ""}, 400, "INVALID_REQUEST", "workflow is required"),
        ({"workflow": 5}, 400, "INVALID_REQUEST", "workflow is required"),
        ({"workflow": "ghost"}, 404, "NOT_FOUND", "Unknown workflow: ghost"),
        ({"workflow": "typed", "input": {"nom": 1}}, 400, "INVALID_INPUT", None),
    ],
)
def test_launch_errors(live: Live, params: dict[str, Any], status: int, code: str, message: str | None) -> None:
    response = live.rpc("launchRun", params)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message
    assert live.gateway.store.get_run("ghost") is None


def test_non_object_input_becomes_empty(live: Live) -> None:
    run_id = live.ok("launchRun", {"workflow": "hello", "input": [1, 2]})["runId"]
    live.wait_status(run_id, {"finished"})
    with live.gateway.store.read() as tx:
        assert tx.get_input_json(run_id) == "{}"


def test_input_size_limit(live: Live) -> None:
    # The frame bounds (string <= 16384, array <= 256) stop most; many keys still reach the input check.
    big = {f"k{i}": "x" * 16000 for i in range(70)}
    response = live.rpc("launchRun", {"workflow": "hello", "input": big})
    assert response.status_code in (400, 413)
    assert error_of(response)["code"] in ("INVALID_INPUT", "PayloadTooLarge")


def test_list_runs_and_filters(live: Live) -> None:
    ids = []
    for name in ("a", "b", "c"):
        ids.append(live.ok("launchRun", {"workflow": "hello", "input": {"name": name}})["runId"])
        live.wait_status(ids[-1], {"finished"})
        time.sleep(0.002)
    waiting = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(waiting, {"waiting-approval"})
    rows = live.ok("listRuns")
    assert [r["runId"] for r in rows] == [waiting, *reversed(ids)]
    assert all(r["workflowKey"] in ("hello", "gate") for r in rows)
    assert [r["runId"] for r in live.ok("runs.list", {"limit": 2})] == [waiting, ids[2]]
    assert [r["runId"] for r in live.ok("listRuns", {"filter": {"limit": "1"}})] == [waiting]
    assert [r["runId"] for r in live.ok("listRuns", {"status": "waiting-approval"})] == [waiting]
    assert [r["runId"] for r in live.ok("listRuns", {"filter": {"status": "waiting-approval"}})] == [waiting]
    assert len(live.ok("listRuns", {"status": 5, "filter": {"status": "finished"}})) == 3
    bad = live.rpc("listRuns", {"limit": 0})
    assert bad.status_code == 400 and error_of(bad)["message"] == "limit must be a finite number greater than 0."
    assert error_of(live.rpc("listRuns", {"limit": 1.5}))["message"] == "limit must be an integer greater than 0."
    assert live.rpc("listRuns", {"limit": "x", "filter": {"limit": 5}}).status_code == 400


def test_list_runs_pages_through_many_runs_by_workflow_status_and_id(live: Live) -> None:
    """Our paging params: ``after`` (the previous page's last row), ``workflow``, ``search`` (part of
    the run id) and ``withRunState``; pages never repeat or skip a run, ties on the time included."""
    t0 = now_ms()
    expected = []
    with live.gateway.store.write() as tx:
        for i in range(130):
            created = t0 - (i // 3) * 10  # three runs share each timestamp
            status = "failed" if i % 5 == 0 else "finished"
            workflow = "alpha" if i % 2 else "beta"
            run_id = f"run-{i:03d}" + ("-x_y%" if i == 77 else "")
            tx.insert_run(run_id=run_id, workflow_name=workflow, status=status, created_at_ms=created)
            expected.append((-created, run_id, status, workflow))
    expected.sort()

    def pages(**params: Any) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = live.ok("listRuns", {"limit": 7, **params, **({"after": after} if after else {})})
            if not page:
                return seen
            seen += [r["runId"] for r in page]
            after = {"createdAtMs": page[-1]["createdAtMs"], "runId": page[-1]["runId"]}

    assert pages() == [e[1] for e in expected]
    assert pages(status="failed") == [e[1] for e in expected if e[2] == "failed"]
    assert pages(workflow="alpha") == [e[1] for e in expected if e[3] == "alpha"]
    assert pages(filter={"workflow": "beta", "status": "finished"}) == [
        e[1] for e in expected if e[3] == "beta" and e[2] == "finished"
    ]
    assert pages(search="12") == [e[1] for e in expected if "12" in e[1]]
    # LIKE's wildcards in the search are literal characters
    assert [r["runId"] for r in live.ok("listRuns", {"search": "_y%"})] == ["run-077-x_y%"]
    assert live.ok("listRuns", {"search": "x%z"}) == []
    # the state of a waiting run says what it waits on
    waiting = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(waiting, {"waiting-approval"})
    [row] = live.ok("listRuns", {"search": waiting, "withRunState": True})
    assert row["runState"]["state"] == "waiting-approval" and row["runState"]["blocked"]["nodeId"]
    assert "runState" not in live.ok("listRuns", {"search": waiting})[0]
    bad = live.rpc("listRuns", {"after": {"createdAtMs": "x", "runId": "r"}})
    assert bad.status_code == 400 and error_of(bad)["code"] == "INVALID_INPUT"


def test_list_workflows(live: Live) -> None:
    listed = live.ok("listWorkflows")
    keys = [w["key"] for w in listed]
    assert keys == sorted(keys, key=lambda k: (k.casefold(), k.swapcase()))
    hello = next(w for w in listed if w["key"] == "hello")
    assert hello == {
        "key": "hello",
        "readableName": "Hello",
        "description": "Says hello",
        "hasUi": False,
        "uiPath": None,
    }
    typed = next(w for w in listed if w["key"] == "typed")
    assert "readableName" not in typed and "description" not in typed
    assert live.ok("workflows.list", {"hasUi": True}) == []
    assert len(live.ok("workflows.list", {"filter": {"hasUi": False}})) == len(listed)


def test_cancel_run(live: Live) -> None:
    missing = live.rpc("cancelRun", {})
    assert missing.status_code == 400 and error_of(missing)["message"] == "runId is required"
    idle = live.rpc("runs.cancel", {"runId": "nope"})
    assert idle.status_code == 409  # docs/protocol.md#departures-from-0180
    assert error_of(idle) == {"version": "v1", "code": "RUN_NOT_ACTIVE", "message": "Run is not currently active"}
    run_id = live.ok("launchRun", {"workflow": "slow"})["runId"]
    live.wait_status(run_id, {"running"})
    assert live.ok("cancelRun", {"runId": run_id}) == {"runId": run_id, "status": "cancelling"}
    live.wait_status(run_id, {"cancelled"})
    assert live.rpc("cancelRun", {"runId": run_id}).status_code == 409


def test_cancel_a_waiting_run(live: Live) -> None:
    """A run waiting for an approval executes nowhere: it is cancelled through the store at once,
    its pending approval with it, and clients hear run.completed (P64)."""
    run_id = live.ok("launchRun", {"workflow": "gate"})["runId"]
    live.wait_status(run_id, {"waiting-approval"})
    ws = live.ws(connect_now=True)
    try:
        assert live.ok("cancelRun", {"runId": run_id}) == {"runId": run_id, "status": "cancelled"}
        done = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
        assert done["payload"]["status"] == "cancelled"
    finally:
        ws.close()
    assert live.gateway.store.get_run(run_id)["status"] == "cancelled"
    assert [a for a in live.ok("listApprovals") if a["runId"] == run_id] == []
    assert live.rpc("cancelRun", {"runId": run_id}).status_code == 409


def test_get_run_errors(live: Live) -> None:
    assert error_of(live.rpc("getRun", {})) == {
        "version": "v1",
        "code": "INVALID_REQUEST",
        "message": "runId is required",
    }
    missing = live.rpc("getRun", {"runId": "nope"})
    assert missing.status_code == 404
    assert error_of(missing) == {"version": "v1", "code": "NOT_FOUND", "message": "Run not found: nope"}


def test_rerun(live: Live) -> None:
    first = live.ok("launchRun", {"workflow": "hello", "input": {"name": "again"}})["runId"]
    live.wait_status(first, {"finished"})
    rerun = live.ok("runs.rerun", {"runId": first, "newRunId": "second"})
    assert rerun == {"runId": "second", "workflow": "hello"}
    live.wait_status("second", {"finished"})
    with live.gateway.store.read() as tx:
        assert json.loads(tx.get_input_json("second")) == {"name": "again"}
    assert error_of(live.rpc("runs.rerun", {"runId": "nope"}))["code"] == "NOT_FOUND"


def test_resume_run(live: Live) -> None:
    assert error_of(live.rpc("resumeRun", {}))["message"] == "runId is required"
    assert error_of(live.rpc("resumeRun", {"runId": "nope"})) == {
        "version": "v1",
        "code": "NOT_FOUND",
        "message": "Run not found: nope",
    }
    done = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(done, {"finished"})
    assert live.ok("resumeRun", {"runId": done}) == {"runId": done, "status": "already_terminal"}
    waiting = live.ok("launchRun", {"workflow": "waiter"})["runId"]
    live.wait_status(waiting, {"waiting-event"})
    signal_run(live.gateway.store, waiting, "go", {"ok": True})
    assert live.ok("resumeRun", {"runId": waiting, "options": {"force": True}}) == {
        "runId": waiting,
        "status": "resume_requested",
    }
    live.wait_status(waiting, {"finished"})


def test_resume_over_ws_auto_subscribes(live: Live) -> None:
    waiting = live.ok("launchRun", {"workflow": "waiter"})["runId"]
    live.wait_status(waiting, {"waiting-event"})
    client = live.ws(connect_now=True, subscribe=["other"])
    signal_run(live.gateway.store, waiting, "go", None)
    assert client.request("resumeRun", {"runId": waiting})["payload"]["status"] == "resume_requested"
    completed = client.event("run.completed", where=lambda f: f["payload"]["runId"] == waiting)
    assert completed["payload"]["status"] == "finished"
    client.close()


def test_hijack_run(live: Live) -> None:
    run_id = live.ok("launchRun", {"workflow": "hello"})["runId"]
    live.wait_status(run_id, {"finished"})
    before = live.gateway.store.get_run(run_id)
    payload = live.ok("hijackRun", {"runId": run_id, "options": {"x": 1}})
    assert payload["runId"] == run_id and payload["status"] == "hijack-ready" and len(payload["sessionId"]) == 36
    assert live.gateway.store.get_run(run_id) == before
    assert error_of(live.rpc("hijackRun", {}))["code"] == "InvalidRunId"
    missing = live.rpc("hijackRun", {"runId": "nope"})
    assert missing.status_code == 404 and error_of(missing)["code"] == "RunNotFound"


def test_timers_are_woken_by_the_gateway(live: Live) -> None:
    run_id = live.ok("launchRun", {"workflow": "sleeper"})["runId"]
    live.wait_status(run_id, {"waiting-timer"})
    live.wait_status(run_id, {"finished"}, timeout=10)


def test_startup_resumes_runs_whose_owner_is_gone(start_gateway: Any, databases: Databases) -> None:
    db = databases.new("shared")
    store = Store(db)
    now = now_ms()
    host = socket.gethostname()
    rows = {
        "orphan": (f"pid:999999999:dead@{host}", now - 60_000, "hello"),
        "alive": (f"pid:{os.getpid()}:x@{host}", now, "hello"),
        "foreign": (f"pid:999999999:dead@{host}", now - 60_000, "unregistered"),
    }
    with store.write() as tx:
        for run_id, (owner, beat, key) in rows.items():
            tx.insert_run(
                run_id=run_id,
                workflow_name=key,
                status="running",
                created_at_ms=now,
                started_at_ms=now,
                heartbeat_at_ms=beat,
                runtime_owner_id=owner,
                config_json=json.dumps({"gatewayWorkflowKey": key}),
            )
            tx.insert_input(run_id, {"name": "restart"})
    store.close()
    live = start_gateway(db=db)
    live.wait_status("orphan", {"finished"})
    assert live.gateway.store.get_run("alive")["status"] == "running"
    assert live.gateway.store.get_run("foreign")["status"] == "running"


def test_options_are_validated_and_accept_javascript_names(tmp_path: Path) -> None:
    from smithers.errors import GatewayError
    from smithers.gateway.options import GatewayOptions
    from smithers.gateway.server import Gateway

    assert GatewayOptions.build(heartbeatMs=5, maxBodyBytes="10").max_body_bytes == 10
    with pytest.raises(GatewayError, match=r"^maxPayload must be a finite number greater than 0\.$"):
        GatewayOptions.build(max_payload=0)
    with pytest.raises(GatewayError, match=r"^eventWindowSize must be an integer greater than 0\.$"):
        GatewayOptions.build(eventWindowSize=2.5)
    with pytest.raises(TypeError):
        GatewayOptions.build(nonsense=1)
    gateway = Gateway.from_options(str(tmp_path / "o.db"), {"heartbeatMs": 1000, "maxConnections": 7})
    assert gateway.options.heartbeat_ms == 1000 and gateway.options.max_connections == 7
    gateway.store.close()


def test_ui_registration_and_list_workflows(tmp_path: Path) -> None:

    from smithers import Task, workflow
    from smithers.errors import InvalidInputError
    from smithers.gateway.dispatch import Call
    from smithers.gateway.runs import list_workflows
    from smithers.gateway.server import Gateway

    flow = workflow("deploy")(lambda ctx: Task("t", value={"ok": True}))
    gateway = Gateway(str(tmp_path / "ui.db"))
    gateway.register("deploy", flow, ui={"entry": "ui/app.tsx"})
    gateway.register("Beta", flow, ui={"entry": "x.tsx", "path": " custom/ "})
    gateway.register("alpha", flow)
    for bad in ({"entry": "  "}, {"path": "/x"}, {"entry": "e", "path": "/a b"}):
        with pytest.raises(InvalidInputError):
            gateway.register("bad", flow, ui=bad)
    with pytest.raises(InvalidInputError, match="Gateway UI path is invalid"):
        gateway.register("has space", flow, ui={"entry": "e"})
    call = Call(gateway, "http", None, "listWorkflows", "id")  # type: ignore[arg-type]
    listed = list_workflows(call, {})
    assert [w["key"] for w in listed] == ["alpha", "Beta", "deploy"]
    assert listed[1]["uiPath"] == "/custom" and listed[2]["uiPath"] == "/workflows/deploy"
    assert [w["key"] for w in list_workflows(call, {"hasUi": True})] == ["Beta", "deploy"]
    gateway.store.close()


def test_an_acknowledged_run_is_already_stored(live: Live) -> None:
    """launchRun answers once the run row is committed: a getRun right after never misses it."""
    from concurrent.futures import ThreadPoolExecutor

    def launch_then_get(index: int) -> tuple[int, int]:
        with httpx.Client(base_url=live.url, timeout=10) as http:
            launched = http.post("/v1/rpc/launchRun", json={"workflow": "slow", "runId": f"ack-{index}"})
            got = http.post("/v1/rpc/getRun", json={"runId": f"ack-{index}"})
        return launched.status_code, got.status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(launch_then_get, range(40)))
    assert answers == [(200, 200)] * 40
    stored = {r["runId"] for r in live.ok("listRuns", {"limit": 100})}
    assert {f"ack-{i}" for i in range(40)} <= stored
    for index in range(40):
        live.ok("cancelRun", {"runId": f"ack-{index}"})


def test_input_with_a_lone_surrogate_is_stored_and_runs(live: Live) -> None:
    body = b'{"workflow":"hello","runId":"sur-1","input":{"name":"\\ud800"}}'
    response = live.http.post("/v1/rpc/launchRun", content=body)
    assert response.status_code == 200, response.text
    assert live.rpc("getRun", {"runId": "sur-1"}).status_code == 200
    row = live.wait_status("sur-1", {"finished"})
    with live.gateway.store.read() as tx:
        assert json.loads(tx.get_input_json("sur-1")) == {"name": "\ud800"}
        assert json.loads(tx.get_output("sur-1", "greet", 0)["payload_json"]) == {"message": "hello \ud800"}
    assert row["status"] == "finished"


def test_no_answer_before_the_run_row_can_be_committed(live: Live) -> None:
    """While another process holds a lock that keeps new runs out, launchRun cannot commit, so it does
    not answer: SQLite's write lock (``BEGIN IMMEDIATE``), or on PostgreSQL a lock on the runs table
    that lets readers in but no writer."""
    from concurrent.futures import ThreadPoolExecutor

    blocker = Store(live.db_url, migrate_schema=False)
    conn = blocker.engine.connect()
    try:
        if blocker.is_postgres:
            conn.exec_driver_sql(f"LOCK TABLE {schema.runs.name} IN EXCLUSIVE MODE")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(live.rpc, "launchRun", {"workflow": "hello", "runId": "locked"})
            time.sleep(0.5)
            assert not pending.done(), "answered while the run row could not be committed"
            if blocker.is_postgres:
                conn.commit()
            else:
                conn.exec_driver_sql("COMMIT")
            response = pending.result(timeout=10)
        assert response.status_code == 200, response.text
        assert live.rpc("getRun", {"runId": "locked"}).status_code == 200
    finally:
        conn.close()
        blocker.close()
    live.wait_status("locked", {"finished"})
