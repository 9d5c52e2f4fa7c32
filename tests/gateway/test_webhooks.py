"""Webhooks end to end: signatures, limits, correlation paths, run starts and signals."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.gateway.support import HUMAN_AUTH, WEBHOOK_SECRET, Live, sign, wait_for, webhook_post

OP = "op-token"
Start = Callable[..., Live]


def run_count(live: Live) -> int:
    with live.gateway.store.read() as tx:
        return len(tx.list_runs(limit=10_000))


def signal_count(live: Live, run_ids: list[str]) -> int:
    with live.gateway.store.read() as tx:
        return sum(len(tx.list_signals(r)) for r in run_ids)


def waiting(live: Live, workflow: str, **input: Any) -> str:
    run_id = str(live.ok("launchRun", {"workflow": workflow, "input": input}, token=OP)["runId"])
    live.wait_status(run_id, {"waiting-event"})
    return run_id


def output(live: Live, run_id: str, node_id: str) -> Any:
    with live.gateway.store.read() as tx:
        row = tx.get_output(run_id, node_id, 0)
    assert row is not None
    return json.loads(row["payload_json"])["value"]


def refused(response: Any, status: int, code: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"ok": False, "error": {"code": code, "message": message}}
    assert response.headers["x-smithers-api-version"] == "v1"
    assert response.headers["content-type"].startswith("application/json")


def test_a_signed_delivery_starts_a_run(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)  # no bearer token needed on the webhook route
    response = webhook_post(live, "hook_run", {"data": {"name": "ada", "n": 1}, "other": True})
    assert response.status_code == 200, response.text
    assert response.headers["x-smithers-api-version"] == "v1"
    body = response.json()
    started = body["started"]
    assert body == {
        "ok": True,
        "workflow": "hook_run",
        "verified": True,
        "delivered": [],
        "matchedRunIds": [],
        "started": {"runId": started["runId"], "workflow": "hook_run"},
    }
    row = live.wait_status(started["runId"], {"finished"})
    assert output(live, started["runId"], "echo") == {"name": "ada", "n": 1}  # inputPath "data"
    config = json.loads(row["config_json"])
    assert config["gatewayWorkflowKey"] == "hook_run" and config["gatewayTriggeredBy"] == "webhook:hook_run"
    auth = config["auth"]
    assert {k: auth[k] for k in ("triggeredBy", "role", "scopes", "tokenId")} == {
        "triggeredBy": "webhook:hook_run",
        "role": "system",
        "scopes": ["*"],
        "tokenId": None,
    }
    metrics = live.http.get("/metrics").text
    assert 'smithers_gateway_webhooks_verified_total{workflow="hook_run"} 1.0' in metrics


def test_non_object_input_is_wrapped(start_humans: Start) -> None:
    live = start_humans()
    cases = [({"data": 5}, {"payload": 5}), ({"data": [1, "a"]}, {"payload": [1, "a"]}), ({"x": 1}, {"payload": None})]
    for payload, expected in cases:
        response = webhook_post(live, "hook_run", payload)
        assert response.status_code == 200, response.text
        run_id = response.json()["started"]["runId"]
        live.wait_status(run_id, {"finished"})
        assert output(live, run_id, "echo") == expected
    empty = webhook_post(live, "hook_run", raw=b"")  # an empty body is {}
    assert empty.status_code == 200, empty.text
    run_id = empty.json()["started"]["runId"]
    live.wait_status(run_id, {"finished"})
    assert output(live, run_id, "echo") == {"payload": None}


def test_bad_signatures_are_refused_without_side_effects(start_humans: Start) -> None:
    live = start_humans()
    body = json.dumps({"data": {"name": "x"}}).encode()
    good = sign(body)
    message = "Webhook signature verification failed"
    attempts: list[dict[str, Any]] = [
        {"signature": sign(body, secret="wrong")},
        {"signature": sign(body, secret=f"  {WEBHOOK_SECRET}  ")},  # the secret is trimmed before use
        {"signature": good.upper().replace("SHA256=", "sha256=")},  # hex is compared case-sensitively
        {"signature": good[len("sha256=") :]},  # prefix missing
        {"signature": "sha1=" + good[len("sha256=") :]},
        {"signature": good + "0"},
        {"signature": good[:-1]},
        {"signature": ""},
        {"signature": sign(b'{"data": {"name": "y"}}')},  # signed a different body
        {"signature": good, "header": "x-signature"},  # the wrong header
    ]
    for attempt in attempts:
        refused(webhook_post(live, "hook_run", raw=body, **attempt), 401, "UNAUTHORIZED", message)
    unsigned = live.http.post("/webhooks/hook_run", content=body, headers={"content-type": "application/json"})
    refused(unsigned, 401, "UNAUTHORIZED", message)
    assert run_count(live) == 0
    metrics = live.http.get("/metrics").text
    assert (
        f'smithers_gateway_webhooks_rejected_total{{reason="invalid_signature",workflow="hook_run"}} '
        f"{len(attempts) + 1}.0" in metrics
    )
    assert webhook_post(live, "hook_run", raw=body, signature=good).status_code == 200
    wait_for(lambda: run_count(live) == 1, "the run of the good delivery")


def test_custom_header_and_empty_prefix(start_humans: Start) -> None:
    live = start_humans()
    run_id = waiting(live, "hook_pay", order="A-1")
    payload = {"order": {"id": "A-1"}, "payment": {"amount": 10}}
    body = json.dumps(payload).encode()
    # hook_pay verifies "X-Signature" (trimmed, lower-cased) with no prefix
    refused(webhook_post(live, "hook_pay", raw=body), 401, "UNAUTHORIZED", "Webhook signature verification failed")
    refused(
        webhook_post(live, "hook_pay", raw=body, header="X-Signature"),
        401,
        "UNAUTHORIZED",
        "Webhook signature verification failed",
    )
    assert signal_count(live, [run_id]) == 0
    response = webhook_post(live, "hook_pay", raw=body, header="X-Signature", prefix="")
    assert response.status_code == 200, response.text
    assert response.json()["matchedRunIds"] == [run_id]


def test_body_limit_and_malformed_json(start_humans: Start) -> None:
    live = start_humans(max_body_bytes=2048)
    waiter = waiting(live, "hook_pay", order="A-1")
    big = json.dumps({"order": {"id": "A-1"}, "payment": {"pad": "x" * 3000}}).encode()
    too_large = "Gateway request payload exceeds 2048 bytes."
    refused(webhook_post(live, "hook_run", raw=big), 413, "PayloadTooLarge", too_large)
    refused(webhook_post(live, "hook_pay", raw=big, header="x-signature", prefix=""), 413, "PayloadTooLarge", too_large)
    malformed = "Webhook payload must be valid JSON."
    for raw in (b"{not json", b'{"a": 1', b"[1, 2,]", b"'single'", b"\xff\xfe"):
        refused(webhook_post(live, "hook_run", raw=raw), 400, "INVALID_INPUT", malformed)
        refused(
            webhook_post(live, "hook_pay", raw=raw, header="x-signature", prefix=""), 400, "INVALID_INPUT", malformed
        )
    assert run_count(live) == 1  # only the waiter launched above
    assert signal_count(live, [waiter]) == 0
    assert live.gateway.store.get_run(waiter)["status"] == "waiting-event"
    metrics = live.http.get("/metrics").text
    assert 'smithers_gateway_webhooks_rejected_total{reason="invalid_payload",workflow="hook_run"} 6.0' in metrics


def test_non_standard_json_literals_are_malformed(start_humans: Start) -> None:
    """NaN and Infinity are not JSON (JSON.parse refuses them; so does the RPC body parser)."""
    live = start_humans()
    waiter = waiting(live, "hook_pay", order="A-1")
    malformed = "Webhook payload must be valid JSON."
    for raw in (b"NaN", b'{"data": {"x": Infinity}}', b'{"order": {"id": "A-1"}, "payment": -Infinity}'):
        refused(webhook_post(live, "hook_run", raw=raw), 400, "INVALID_INPUT", malformed)
        refused(
            webhook_post(live, "hook_pay", raw=raw, header="x-signature", prefix=""), 400, "INVALID_INPUT", malformed
        )
    assert run_count(live) == 1
    assert signal_count(live, [waiter]) == 0


def test_configuration_errors(start_humans: Start) -> None:
    live = start_humans()
    refused(webhook_post(live, "nope", {}), 404, "NOT_FOUND", "Unknown workflow: nope")
    refused(webhook_post(live, "hook_none", {}), 404, "NOT_FOUND", "Webhook not configured for workflow: hook_none")
    refused(webhook_post(live, "hook_blank", {}), 500, "SERVER_ERROR", "Webhook secret is not configured")
    refused(
        webhook_post(live, "hook_off", {}),
        400,
        "INVALID_REQUEST",
        "Webhook config must enable signal delivery or run creation",
    )
    # the key is percent-decoded
    response = live.http.post("/webhooks/hook%5Frun", content=b"{}", headers={"x-hub-signature-256": sign(b"{}")})
    assert response.status_code == 200 and response.json()["workflow"] == "hook_run"
    wait_for(lambda: run_count(live) == 1, "the run of the delivery")


def test_signal_delivery_by_correlation(start_humans: Start) -> None:
    live = start_humans()
    a1 = waiting(live, "hook_pay", order="A-1")
    b2 = waiting(live, "hook_pay", order="B-2")
    n42 = waiting(live, "hook_pay", order="42")
    body = json.dumps({"order": {"id": " A-1 "}, "payment": {"amount": 10}}).encode()
    response = webhook_post(live, "hook_pay", raw=body, header="x-signature", prefix="")
    assert response.status_code == 200, response.text
    result = response.json()
    [delivered] = result["delivered"]
    assert isinstance(delivered["receivedAtMs"], int) and isinstance(delivered["seq"], int)
    assert result == {
        "ok": True,
        "workflow": "hook_pay",
        "verified": True,
        "delivered": [
            {
                "runId": a1,
                "seq": delivered["seq"],
                "signalName": "payment.received",
                "correlationId": "A-1",
                "receivedAtMs": delivered["receivedAtMs"],
            }
        ],
        "matchedRunIds": [a1],
        "started": None,  # run creation is disabled for hook_pay
    }
    live.wait_status(a1, {"finished"})
    assert output(live, a1, "after") == {"amount": 10}  # payloadPath "payment"
    with live.gateway.store.read() as tx:
        [row] = tx.list_signals(a1)
    assert row["received_by"] == "webhook:hook_pay" and row["correlation_id"] == "A-1"
    # a number at the correlation path is matched as its decimal text
    body = json.dumps({"order": {"id": 42}, "payment": {"amount": 42}}).encode()
    response = webhook_post(live, "hook_pay", raw=body, header="x-signature", prefix="")
    assert response.json()["matchedRunIds"] == [n42] and response.json()["delivered"][0]["correlationId"] == "42"
    live.wait_status(n42, {"finished"})
    # nothing waits for C-3, and runs are disabled: nothing happens
    before = run_count(live)
    body = json.dumps({"order": {"id": "C-3"}, "payment": {}}).encode()
    response = webhook_post(live, "hook_pay", raw=body, header="x-signature", prefix="")
    assert response.status_code == 200
    assert response.json()["delivered"] == [] and response.json()["matchedRunIds"] == []
    assert response.json()["started"] is None
    assert run_count(live) == before
    assert live.gateway.store.get_run(b2)["status"] == "waiting-event"
    assert signal_count(live, [b2]) == 0


def test_signal_delivery_by_run_id_path(start_humans: Start) -> None:
    live = start_humans()
    first = waiting(live, "hook_any")
    second = waiting(live, "hook_any")
    response = webhook_post(live, "hook_any", {"target": [{"run": second}], "body": {"k": "v"}})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["matchedRunIds"] == [second] and result["started"] is None
    assert [d["runId"] for d in result["delivered"]] == [second]
    live.wait_status(second, {"finished"})
    assert output(live, second, "after") == {"k": "v"}
    assert live.gateway.store.get_run(first)["status"] == "waiting-event"
    # an explicit run id that no longer waits: nothing is delivered, so a run is started (run enabled)
    payload = {"target": [{"run": second}], "body": {"k": "late"}}
    response = webhook_post(live, "hook_any", payload)
    result = response.json()
    assert result["delivered"] == [] and result["matchedRunIds"] == []
    started = result["started"]["runId"]
    assert started not in (first, second)
    live.wait_status(started, {"waiting-event"})
    with live.gateway.store.read() as tx:
        assert json.loads(tx.get_input_json(started)) == payload  # no inputPath: the whole payload
    # with no run id in the payload every run waiting for the signal is matched
    response = webhook_post(live, "hook_any", {"body": {"k": "all"}})
    result = response.json()
    assert sorted(result["matchedRunIds"]) == sorted([first, started]) and result["started"] is None
    for run_id in (first, started):
        live.wait_status(run_id, {"finished"})
        assert output(live, run_id, "after") == {"k": "all"}


def test_a_webhook_signals_only_runs_of_its_own_workflow(start_humans: Start) -> None:
    """hook_any and waiter both wait for "go": a delivery to /webhooks/hook_any must not touch waiter runs."""
    live = start_humans()
    mine = waiting(live, "hook_any")
    other = waiting(live, "waiter")
    result = webhook_post(live, "hook_any", {"body": {"k": 1}}).json()
    assert result["matchedRunIds"] == [mine]
    live.wait_status(mine, {"finished"})
    # naming the other workflow's run explicitly does not reach it either
    result = webhook_post(live, "hook_any", {"target": [{"run": other}], "body": {"k": 2}}).json()
    assert result["matchedRunIds"] == [] and result["delivered"] == []
    assert live.gateway.store.get_run(other)["status"] == "waiting-event"
    assert signal_count(live, [other]) == 0


def test_posts_to_unknown_keys_share_one_metric_series(start_humans: Start) -> None:
    live = start_humans()
    for index in range(200):
        assert webhook_post(live, f"random-{index}", {}).status_code == 404
    webhook_post(live, "hook_none", {})
    metrics = live.http.get("/metrics").text
    assert 'smithers_gateway_webhooks_received_total{workflow="unknown"} 200.0' in metrics
    assert 'smithers_gateway_webhooks_rejected_total{reason="workflow_not_found",workflow="unknown"} 200.0' in metrics
    assert 'smithers_gateway_webhooks_received_total{workflow="hook_none"} 1.0' in metrics
    assert "random-" not in metrics


def test_a_webhook_payload_the_waiting_model_refuses_is_refused_with_nothing_stored(start_humans: Start) -> None:
    live = start_humans()
    run_id = waiting(live, "typed_pay")
    refused(
        webhook_post(live, "typed_pay", {"payment": {"amount": "lots"}}),
        400,
        "INVALID_INPUT",
        "signal 'payment.received' payload does not match Amount expected by paid: amount: "
        "Input should be a valid integer, unable to parse string as an integer",
    )
    assert signal_count(live, [run_id]) == 0 and run_count(live) == 1
    assert live.gateway.store.get_run(run_id)["status"] == "waiting-event"
    accepted = webhook_post(live, "typed_pay", {"payment": {"amount": 7}})
    assert accepted.status_code == 200 and accepted.json()["matchedRunIds"] == [run_id]
    live.wait_status(run_id, {"finished"})
