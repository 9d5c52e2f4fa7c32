"""Metrics: names, labels, the real active-connection count, one registry per gateway."""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from smithers.gateway.metrics import GatewayMetrics
from tests.gateway.support import Live


def samples(live: Live) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = live.http.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(live: Live, name: str, **labels: str) -> float:
    return samples(live).get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_every_metric_name_is_exported() -> None:
    text = GatewayMetrics().render().decode()
    names = {
        "smithers_gateway_rpc_calls_total",
        "smithers_gateway_rpc_duration_ms",
        "smithers_gateway_errors_total",
        "smithers_gateway_messages_received_total",
        "smithers_gateway_messages_sent_total",
        "smithers_gateway_auth_events_total",
        "smithers_gateway_connections_total",
        "smithers_gateway_connections_active",
        "smithers_gateway_connections_closed_total",
        "smithers_gateway_heartbeat_ticks_total",
        "smithers_gateway_runs_started_total",
        "smithers_gateway_runs_completed_total",
        "smithers_gateway_approval_decisions_total",
        "smithers_gateway_signals_total",
        "smithers_gateway_cron_triggers_total",
        "smithers_gateway_webhooks_received_total",
        "smithers_gateway_webhooks_verified_total",
        "smithers_gateway_webhooks_rejected_total",
        "smithers_devtools_subscribe_total",
        "smithers_devtools_active_subscribers",
        "smithers_devtools_event_total",
        "smithers_devtools_event_bytes",
        "smithers_devtools_snapshot_build_ms",
        "smithers_devtools_delta_build_ms",
        "smithers_devtools_backpressure_disconnect_total",
        "smithers_node_output_request_total",
        "smithers_node_output_bytes",
        "smithers_node_output_duration_ms",
        "smithers_node_output_schema_conversion_error_total",
        "smithers_node_diff_request_total",
        "smithers_node_diff_compute_ms",
        "smithers_node_diff_bytes",
        "smithers_node_diff_cache_total",
        "smithers_node_diff_cache_rows",
        "smithers_rewind_total",
        "smithers_rewind_rollback_total",
        "smithers_rewind_duration_ms",
        "smithers_rewind_frames_deleted",
        "smithers_rewind_sandboxes_reverted",
    }
    declared = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    exported = {n + "_total" if n + "_total" in text and n not in names else n for n in declared}
    missing = {n for n in names if n not in exported and n.removesuffix("_total") not in declared}
    assert missing == set()


def test_connections_active_is_the_real_count(live: Live) -> None:
    assert value(live, "smithers_gateway_connections_active", transport="ws") == 0
    clients = [live.ws() for _ in range(3)]
    wait_for(lambda: value(live, "smithers_gateway_connections_active", transport="ws") == 3)
    clients[0].close()
    wait_for(lambda: value(live, "smithers_gateway_connections_active", transport="ws") == 2)
    for client in clients[1:]:
        client.close()
    wait_for(lambda: value(live, "smithers_gateway_connections_active", transport="ws") == 0)
    assert value(live, "smithers_gateway_connections_total", transport="ws") == 3
    assert value(live, "smithers_gateway_connections_closed_total", transport="ws", reason="close") == 3


def test_rpc_auth_and_run_counters(token_live: Live) -> None:
    ok = token_live.http.post(
        "/rpc",
        json={"method": "launchRun", "params": {"workflow": "hello"}},
        headers={"authorization": "Bearer operator-token"},
    )
    run_id = ok.json()["payload"]["runId"]
    token_live.wait_status(run_id, {"finished"})
    token_live.http.post("/rpc", json={"method": "health"}, headers={"authorization": "Bearer wrong"})
    assert value(token_live, "smithers_gateway_rpc_calls_total", transport="http", method="launchRun") == 1
    assert (
        value(token_live, "smithers_gateway_auth_events_total", transport="http", mode="token", outcome="failure") == 1
    )
    assert (
        value(token_live, "smithers_gateway_auth_events_total", transport="http", mode="token", outcome="success") == 1
    )
    wait_for(
        lambda: value(token_live, "smithers_gateway_runs_completed_total", workflow="hello", status="finished") == 1
    )


def test_signal_and_cron_counters_use_the_protocol_labels(start_humans: Any) -> None:
    live = start_humans()
    run_id = live.ok("launchRun", {"workflow": "waiter"})["runId"]
    live.wait_status(run_id, {"waiting-event"})
    live.ok("submitSignal", {"runId": run_id, "signalName": "go", "data": {}})
    assert value(live, "smithers_gateway_signals_total", outcome="sent") == 1
    live.ok("cron.trigger", {"workflow": "adhoc"})
    assert value(live, "smithers_gateway_cron_triggers_total", source="manual") == 1
    due = live.ok("cron.list")[0]["nextRunAtMs"]
    started, _ = live.call(live.gateway.cron.tick(due))
    assert len(started) == 1
    assert value(live, "smithers_gateway_cron_triggers_total", source="scheduled") == 1


def test_each_gateway_has_its_own_registry(start_gateway: Any) -> None:
    first, second = start_gateway(), start_gateway()
    first.ok("health")
    assert value(first, "smithers_gateway_rpc_calls_total", transport="http", method="health") == 1
    assert value(second, "smithers_gateway_rpc_calls_total", transport="http", method="health") == 0
