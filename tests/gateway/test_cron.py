"""Cron end to end: registered schedules, the scheduler, the RPCs and the CLI.

Every test runs with the server's local time zone set to one with an odd offset and daylight
saving time (``TZ``), so the tests pass whatever zone the machine is in.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from smithers.errors import SmithersError
from smithers.gateway.server import Gateway
from smithers.store.rows import now_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import HUMAN_AUTH, SCHEDULE, Live, cli, error_of, wait_for
from tests.gateway.workflows import adhoc

OP = "op-token"
Start = Callable[..., Live]
HOUR_MS = 3_600_000


LOCAL_ZONE = "America/St_Johns"  # UTC-3:30, with daylight saving time


@pytest.fixture(autouse=True)
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The server's local time zone for the test (the CLI subprocesses inherit it)."""
    monkeypatch.setenv("TZ", LOCAL_ZONE)
    yield LOCAL_ZONE


def local(ms: int, zone: str | None = None) -> datetime:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(zone or os.environ["TZ"]))


def next_fire(pattern: str, after_ms: int, zone: str | None = None) -> int:
    """First fire strictly after ``after_ms``, in ``zone`` (default: the server's local time zone)."""
    seconds = len(pattern.split()) == 6
    return int(croniter(pattern, local(after_ms, zone), second_at_beginning=seconds).get_next(float) * 1000)


def cron_rows(live: Live, **params: Any) -> list[dict[str, Any]]:
    return list(live.ok("cronList", params or None, token=OP))


def cron_of(live: Live, cron_id: str) -> dict[str, Any]:
    [row] = [r for r in live.ok("cron.list", token=OP) if r["cronId"] == cron_id]
    return dict(row)


def tick(live: Live, now: int | None = None) -> list[str]:
    """One scheduler pass at ``now``: the run ids it started."""
    started, _ = live.call(live.gateway.cron.tick(now))
    return list(started)


def runs_of(live: Live, workflow: str) -> list[dict[str, Any]]:
    return [r for r in live.ok("listRuns", {"limit": 1000}, token=OP) if r["workflowKey"] == workflow]


def output(live: Live, run_id: str, node_id: str) -> Any:
    with live.gateway.store.read() as tx:
        row = tx.get_output(run_id, node_id, 0)
    assert row is not None
    return json.loads(row["payload_json"])["value"]


def assert_cron_auth(live: Live, run_id: str) -> None:
    row = live.wait_status(run_id, {"finished"})
    config = json.loads(row["config_json"])
    assert config["gatewayWorkflowKey"] == "nightly" and config["gatewayTriggeredBy"] == "cron:gateway"
    auth = config["auth"]
    assert isinstance(auth.pop("createdAt"), str)
    assert auth == {"triggeredBy": "cron:gateway", "scopes": ["*"], "role": "system", "tokenId": None}
    seen = output(live, run_id, "report")  # ctx.auth inside the run
    assert seen["triggeredBy"] == "cron:gateway" and seen["role"] == "system" and seen["scopes"] == ["*"]


def test_registered_schedule_row(start_humans: Start) -> None:
    before = now_ms()
    live = start_humans(auth=HUMAN_AUTH)
    after = now_ms()
    [row] = cron_rows(live)
    assert isinstance(row["createdAtMs"], int) and before <= row["createdAtMs"] <= after
    assert row == {
        "cronId": "gateway:nightly",
        "pattern": SCHEDULE,
        "workflowPath": "gateway:nightly",
        "enabled": True,
        "createdAtMs": row["createdAtMs"],
        "lastRunAtMs": None,
        "nextRunAtMs": row["nextRunAtMs"],
        "errorJson": None,
        "timezone": None,
        "workflow": "nightly",
    }
    assert row["nextRunAtMs"] in {next_fire(SCHEDULE, before), next_fire(SCHEDULE, after)}
    fire = local(row["nextRunAtMs"])
    assert (fire.hour, fire.minute, fire.second) == (8, 0, 0) and fire.isoweekday() <= 5
    assert live.ok("cron.list", {"filter": {"workflow": "nightly"}}, token=OP) == [row]
    assert live.ok("cron.list", {"filter": {"workflow": "adhoc"}}, token=OP) == []


def test_scheduler_fires_a_due_cron_with_the_cron_auth_context(start_humans: Start, tmp_path: Path) -> None:
    """``smithers cron trigger`` makes the row due; the running gateway's scheduler fires it."""
    live = start_humans(auth=HUMAN_AUTH)
    ws = live.ws(connect_now=True, token=OP)
    try:
        proc = cli("cron", "trigger", "gateway:nightly", "--db", live.db_url, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "gateway:nightly is due now"
        event = ws.event("cron.triggered", timeout=20)
        run_id = event["payload"]["runId"]
        assert event["payload"] == {"cronId": "gateway:nightly", "workflow": "nightly", "runId": run_id}
        completed = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
        assert completed["payload"]["status"] == "finished"
    finally:
        ws.close()
    assert_cron_auth(live, run_id)
    row = cron_of(live, "gateway:nightly")
    assert isinstance(row["lastRunAtMs"], int) and row["errorJson"] is None
    assert row["nextRunAtMs"] == next_fire(SCHEDULE, row["lastRunAtMs"])
    assert [r["runId"] for r in runs_of(live, "nightly")] == [run_id]
    metrics = live.http.get("/metrics").text
    assert 'smithers_gateway_runs_started_total{resume="false",source="cron",workflow="nightly"} 1.0' in metrics


def test_two_passes_never_start_the_same_fire_twice(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    ws = live.ws(connect_now=True, token=OP)
    try:
        due = cron_of(live, "gateway:nightly")["nextRunAtMs"]
        first = tick(live, due)
        assert len(first) == 1
        assert tick(live, due) == []  # the same fire, again
        assert tick(live, due + 1) == []
        event = ws.event("cron.triggered")
        assert event["payload"] == {"cronId": "gateway:nightly", "workflow": "nightly", "runId": first[0]}
    finally:
        ws.close()
    assert_cron_auth(live, first[0])
    row = cron_of(live, "gateway:nightly")
    assert row["lastRunAtMs"] == due and row["nextRunAtMs"] == next_fire(SCHEDULE, due)

    # two gateways on one database, ticking at the same instant: one run
    other = start_humans(db=live.db_url, auth=HUMAN_AUTH)
    # (registering the schedule again moved its next fire back to the one just fired: that fire's
    # run id is taken, so it cannot start twice)
    assert tick(other, due) == []
    due = next_fire(SCHEDULE, due)
    with live.gateway.store.write() as tx:
        tx.update_cron_fields("gateway:nightly", next_run_at_ms=due)
    barrier = threading.Barrier(2)
    results: dict[int, list[str]] = {}

    def race(index: int, gateway_live: Live) -> None:
        barrier.wait(10)
        results[index] = tick(gateway_live, due)

    threads = [threading.Thread(target=race, args=(i, g)) for i, g in enumerate((live, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(len(r) for r in results.values()) == [0, 1], results
    second = next(r[0] for r in results.values() if r)
    wait_for(lambda: live.gateway.store.get_run(second) is not None, "the raced run")
    live.wait_status(second, {"finished"})
    assert sorted(r["runId"] for r in runs_of(live, "nightly")) == sorted([first[0], second])


def test_a_cron_missed_while_down_fires_once_on_start(start_humans: Start, databases: Databases) -> None:
    db = databases.new("missed")
    store = Store(db)
    three_days_ago = now_ms() - 72 * HOUR_MS  # 72 hourly fires were missed
    try:
        with store.write() as tx:
            tx.upsert_cron("missed", "0 * * * *", "gateway:adhoc", True, three_days_ago)
    finally:
        store.close()
    live = start_humans(db=db, auth=HUMAN_AUTH)
    [started] = wait_for(lambda: runs_of(live, "adhoc"), "the missed cron to fire")
    row = wait_for(lambda: (r := cron_of(live, "missed"))["lastRunAtMs"] is not None and r, "the cron row update")
    fired_at = row["lastRunAtMs"]
    assert row["nextRunAtMs"] == next_fire("0 * * * *", fired_at) and row["errorJson"] is None
    assert tick(live, fired_at + 1) == []  # nothing left to catch up on
    live.wait_status(started["runId"], {"finished"})
    assert [r["runId"] for r in runs_of(live, "adhoc")] == [started["runId"]]
    config = json.loads(live.gateway.store.get_run(started["runId"])["config_json"])
    assert config["auth"]["triggeredBy"] == "cron:gateway" and config["auth"]["role"] == "system"


def test_registered_schedule_keeps_creation_and_last_run_across_restarts(start_humans: Start) -> None:
    live = start_humans()
    created = cron_of(live, "gateway:nightly")["createdAtMs"]
    due = cron_of(live, "gateway:nightly")["nextRunAtMs"]
    [run_id] = tick(live, due)
    live.wait_status(run_id, {"finished"})
    assert cron_of(live, "gateway:nightly")["nextRunAtMs"] == next_fire(SCHEDULE, due)
    live.stop()
    before = now_ms()
    again = start_humans(db=live.db_url)
    after = now_ms()
    row = cron_of(again, "gateway:nightly")
    assert row["createdAtMs"] == created and row["lastRunAtMs"] == due
    # the next fire is computed again from the time of listen
    assert row["nextRunAtMs"] in {next_fire(SCHEDULE, before), next_fire(SCHEDULE, after)}


def test_an_invalid_registered_schedule_makes_listen_fail(databases: Databases) -> None:
    gateway = Gateway(db=databases.new("bad"))
    gateway.register("adhoc", adhoc, schedule="every morning")

    async def main() -> None:
        try:
            with pytest.raises(SmithersError) as caught:
                await gateway.listen("127.0.0.1", 0)
            assert caught.value.code == "INVALID_INPUT" and "every morning" in caught.value.message
        finally:
            await gateway.close()

    asyncio.run(main())


def test_cron_add(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    before = now_ms()
    added = live.ok("cron.add", {"workflow": "adhoc", "pattern": "*/5 * * * *", "cronId": "c1"}, token=OP)
    assert isinstance(added["createdAtMs"], int) and added["createdAtMs"] >= before
    assert added == {
        "cronId": "c1",
        "pattern": "*/5 * * * *",
        "workflowPath": "gateway:adhoc",
        "enabled": True,
        "createdAtMs": added["createdAtMs"],
        "lastRunAtMs": None,
        "nextRunAtMs": next_fire("*/5 * * * *", added["createdAtMs"]),
        "errorJson": None,
        "timezone": None,
        "workflow": "adhoc",
    }
    disabled = live.ok("cronCreate", {"workflow": "adhoc", "pattern": "0 0 1 1 *", "enabled": False}, token=OP)
    assert disabled["enabled"] is False and len(disabled["cronId"]) == 36  # a random UUID
    listed = cron_rows(live)
    assert [r["cronId"] for r in listed] == ["gateway:nightly", "c1", disabled["cronId"]]
    assert listed[1] == {**added, "createdAtMs": listed[1]["createdAtMs"]}
    assert [r["cronId"] for r in cron_rows(live, filter={"workflow": "adhoc"})] == ["c1", disabled["cronId"]]
    assert len(cron_rows(live, workflow="adhoc")) == 3  # a top-level workflow is ignored

    required = {"version": "v1", "code": "INVALID_REQUEST", "message": "workflow and pattern are required"}
    for params in ({"workflow": "adhoc"}, {"pattern": "* * * * *"}, {"workflow": "", "pattern": "* * * * *"}):
        response = live.rpc("cron.add", params, token=OP)
        assert response.status_code == 400 and error_of(response) == required
    response = live.rpc("cron.add", {"workflow": "nope", "pattern": "* * * * *"}, token=OP)
    assert response.status_code == 404
    assert error_of(response) == {"version": "v1", "code": "NOT_FOUND", "message": "Unknown workflow: nope"}
    for pattern in ("not a cron", "61 * * * *", "* * * *", "* * * * * * *", "@often", "61 * * * * *"):
        response = live.rpc("cronCreate", {"workflow": "adhoc", "pattern": pattern}, token=OP)
        assert response.status_code == 400, (pattern, response.text)  # D2: not a server fault
        error = error_of(response)
        assert error["code"] == "INVALID_INPUT" and pattern in error["message"], error
    response = live.rpc("cron.add", {"workflow": "adhoc", "pattern": "* * * * *"}, token="alice-token")
    assert response.status_code == 403 and error_of(response)["requiredScope"] == "cron:write"
    assert len(cron_rows(live)) == 3

    # the scheduler skips disabled crons
    far = now_ms() + 400 * 24 * HOUR_MS
    started = tick(live, far)
    assert len(started) == 2  # gateway:nightly and c1
    assert cron_of(live, disabled["cronId"])["lastRunAtMs"] is None
    assert cron_of(live, "c1")["lastRunAtMs"] == far


def test_cron_remove(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    live.ok("cron.add", {"workflow": "adhoc", "pattern": "0 9 * * *", "cronId": "c1"}, token=OP)
    assert live.ok("cron.remove", {"cronId": "c1"}, token=OP) == {"cronId": "c1", "removed": True}
    assert [r["cronId"] for r in cron_rows(live)] == ["gateway:nightly"]
    response = live.rpc("cronDelete", {"cronId": "c1"}, token=OP)
    assert response.status_code == 404
    assert error_of(response) == {"version": "v1", "code": "NOT_FOUND", "message": "Cron not found: c1"}
    response = live.rpc("cronDelete", {}, token=OP)
    assert response.status_code == 400
    assert error_of(response) == {"version": "v1", "code": "INVALID_REQUEST", "message": "cronId is required"}
    assert live.ok("cronDelete", {"cronId": "gateway:nightly"}, token=OP) == {
        "cronId": "gateway:nightly",
        "removed": True,
    }
    assert cron_rows(live) == []


def test_cron_trigger(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH, max_body_bytes=4 * 1024 * 1024)  # room for an oversized input
    ws = live.ws(connect_now=True, token=OP)
    try:
        frame = ws.request("cron.trigger", {"cronId": "gateway:nightly"})
        assert frame["ok"] is True, frame
        run_id = frame["payload"]["runId"]
        assert frame["payload"] == {"runId": run_id, "workflow": "nightly"}
        # the caller is auto-subscribed and hears the run finish
        completed = ws.event("run.completed", where=lambda f: f["payload"]["runId"] == run_id)
        assert completed["payload"]["status"] == "finished"
        assert not [e for e in ws.events if e["event"] == "cron.triggered"]  # manual triggers broadcast nothing
    finally:
        ws.close()
    auth = json.loads(live.gateway.store.get_run(run_id)["config_json"])["auth"]
    assert auth["triggeredBy"] == "user:op" and auth["role"] == "operator"  # the caller, not the cron
    row = cron_of(live, "gateway:nightly")
    assert isinstance(row["lastRunAtMs"], int) and row["nextRunAtMs"] == next_fire(SCHEDULE, row["lastRunAtMs"])

    by_workflow = live.ok("cronRun", {"workflow": "adhoc", "input": {"a": 1}}, token=OP)
    assert by_workflow["workflow"] == "adhoc"
    live.wait_status(by_workflow["runId"], {"finished"})
    assert output(live, by_workflow["runId"], "job") == {"a": 1}
    as_array = live.ok("cronRun", {"workflow": "adhoc", "input": [1, 2]}, token=OP)  # not an object: {}
    live.wait_status(as_array["runId"], {"finished"})
    assert output(live, as_array["runId"], "job") == {}

    required = {"version": "v1", "code": "INVALID_REQUEST", "message": "cronId or workflow is required"}
    for params in ({}, {"cronId": "missing"}, {"input": {}}):
        response = live.rpc("cron.trigger", params, token=OP)
        assert response.status_code == 400 and error_of(response) == required
    response = live.rpc("cron.trigger", {"workflow": "nope"}, token=OP)
    assert response.status_code == 404
    assert error_of(response) == {"version": "v1", "code": "NOT_FOUND", "message": "Unknown workflow: nope"}
    big = {f"k{i}": "x" * 16_000 for i in range(70)}  # over 1 MiB serialized
    live.ok("cron.add", {"workflow": "adhoc", "pattern": "0 9 * * *", "cronId": "c1"}, token=OP)
    response = live.rpc("cron.trigger", {"cronId": "c1", "input": big}, token=OP)
    assert response.status_code == 400
    assert error_of(response) == {
        "version": "v1",
        "code": "INVALID_INPUT",
        "message": "Gateway RPC input exceeds 1048576 bytes.",
    }
    assert cron_of(live, "c1")["lastRunAtMs"] is None  # a refused trigger changes nothing (P50)
    assert runs_of(live, "adhoc") and len(runs_of(live, "adhoc")) == 2


def test_cli_cron_commands_against_the_gateway_database(start_humans: Start, tmp_path: Path) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    db, cwd = live.db_url, tmp_path
    proc = cli("cron", "add", "30 6 * * *", "adhoc", "--id", "cli-1", "--db", db, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cli-1"
    row = cron_of(live, "cli-1")
    assert row["workflow"] == "adhoc" and row["workflowPath"] == "gateway:adhoc" and row["pattern"] == "30 6 * * *"
    assert row["enabled"] is True and row["nextRunAtMs"] == next_fire("30 6 * * *", row["createdAtMs"])

    proc = cli("cron", "list", "--json", "--db", db, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    listed = {r["cronId"]: r for r in json.loads(proc.stdout)}
    assert set(listed) == {"gateway:nightly", "cli-1"}
    assert listed["cli-1"]["pattern"] == "30 6 * * *" and listed["gateway:nightly"]["pattern"] == SCHEDULE

    ws = live.ws(connect_now=True, token=OP)
    try:
        proc = cli("cron", "trigger", "cli-1", "--db", db, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        event = ws.event("cron.triggered", timeout=20, where=lambda f: f["payload"]["cronId"] == "cli-1")
        run_id = event["payload"]["runId"]
        assert event["payload"] == {"cronId": "cli-1", "workflow": "adhoc", "runId": run_id}
    finally:
        ws.close()
    live.wait_status(run_id, {"finished"})
    assert json.loads(live.gateway.store.get_run(run_id)["config_json"])["auth"]["triggeredBy"] == "cron:gateway"

    proc = cli("cron", "remove", "cli-1", "--db", db, cwd=cwd)
    assert proc.returncode == 0 and proc.stdout.strip() == "removed cli-1", proc.stderr
    assert [r["cronId"] for r in cron_rows(live)] == ["gateway:nightly"]


def test_a_registered_schedule_missed_while_down_fires_once_on_restart(start_humans: Start) -> None:
    live = start_humans()
    live.stop()
    store = Store(live.db_url)
    try:
        with store.write() as tx:  # the gateway was down across many due times
            tx.update_cron_fields("gateway:nightly", next_run_at_ms=now_ms() - 30 * 24 * HOUR_MS)
    finally:
        store.close()
    again = start_humans(db=live.db_url)
    [started] = wait_for(lambda: runs_of(again, "nightly"), "the missed schedule to fire")
    again.wait_status(started["runId"], {"finished"})
    row = cron_of(again, "gateway:nightly")
    assert row["lastRunAtMs"] is not None and row["nextRunAtMs"] == next_fire(SCHEDULE, row["lastRunAtMs"])
    assert tick(again, row["lastRunAtMs"] + 1) == []
    assert [r["runId"] for r in runs_of(again, "nightly")] == [started["runId"]]


@pytest.mark.parametrize(
    ("pattern", "stored"),
    [
        ("*/10 * * * * *", "*/10 * * * * *"),  # a leading seconds field
        ("0  30 9 * * 1-5", "0 30 9 * * 1-5"),
        ("@hourly", "@hourly"),
        ("@DAILY", "@daily"),
        ("@weekly", "@weekly"),
        ("@monthly", "@monthly"),
        ("@yearly", "@yearly"),
    ],
)
def test_six_field_patterns_and_aliases(start_humans: Start, pattern: str, stored: str) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    added = live.ok("cron.add", {"workflow": "adhoc", "pattern": pattern, "cronId": "c"}, token=OP)
    assert added["pattern"] == stored
    assert added["nextRunAtMs"] == next_fire(stored, added["createdAtMs"])
    assert cron_of(live, "c")["nextRunAtMs"] == added["nextRunAtMs"]


def test_a_schedule_with_a_time_zone_fires_at_its_local_time(start_humans: Start) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    params = {"workflow": "adhoc", "pattern": "0 8 * * *", "cronId": "tokyo", "timezone": "Asia/Tokyo"}
    added = live.ok("cron.add", params, token=OP)
    assert added["timezone"] == "Asia/Tokyo"
    fire = local(added["nextRunAtMs"], "Asia/Tokyo")
    assert (fire.hour, fire.minute) == (8, 0)
    assert added["nextRunAtMs"] == next_fire("0 8 * * *", added["createdAtMs"], "Asia/Tokyo")
    due = added["nextRunAtMs"]
    # the registered weekday schedule may be due by then too, depending on today's date: only ours counts
    [run_id] = [r for r in tick(live, due) if live.gateway.store.get_run(r)["workflow_name"] == "adhoc"]
    row = cron_of(live, "tokyo")
    assert row["timezone"] == "Asia/Tokyo" and row["nextRunAtMs"] == next_fire("0 8 * * *", due, "Asia/Tokyo")
    live.wait_status(run_id, {"finished"})
    response = live.rpc("cron.add", {**params, "timezone": "Mars/Olympus"}, token=OP)
    assert response.status_code == 400
    assert error_of(response)["code"] == "INVALID_INPUT" and "Mars/Olympus" in error_of(response)["message"]


def test_registered_schedule_with_a_time_zone(databases: Databases) -> None:
    gateway = Gateway(db=databases.new("tz"))
    gateway.register("adhoc", adhoc, schedule="0 8 * * *", timezone="Europe/Paris")

    async def main() -> dict[str, Any]:
        try:
            await gateway.listen("127.0.0.1", 0)
            with gateway.store.read() as tx:
                row = tx.get_cron("gateway:adhoc")
            assert row is not None
            return row
        finally:
            await gateway.close()

    row = asyncio.run(main())
    assert row["timezone"] == "Europe/Paris"
    fire = local(row["next_run_at_ms"], "Europe/Paris")
    assert (fire.hour, fire.minute) == (8, 0)


def test_every_second_schedule_fires_every_second(start_humans: Start) -> None:
    """``* * * * * *``: the scheduler sleeps until the next due time, not a whole poll interval."""
    live = start_humans(auth=HUMAN_AUTH, heartbeat_ms=15_000)  # polls every 15 s
    ws = live.ws(connect_now=True, token=OP)
    try:
        live.ok("cron.add", {"workflow": "adhoc", "pattern": "* * * * * *", "cronId": "sec"}, token=OP)
        fired = [ws.event("cron.triggered", timeout=20, where=lambda f: f["payload"]["cronId"] == "sec")]
        for _ in range(3):
            fired.append(ws.event("cron.triggered", timeout=5, where=lambda f: f["payload"]["cronId"] == "sec"))
    finally:
        ws.close()
    live.ok("cron.remove", {"cronId": "sec"}, token=OP)
    assert len({f["payload"]["runId"] for f in fired}) == 4
    rows = {r["runId"]: r for r in runs_of(live, "adhoc")}
    times = sorted(rows[f["payload"]["runId"]]["createdAtMs"] for f in fired)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(500 <= gap <= 2_500 for gap in gaps), gaps


def test_cli_cron_add_with_seconds_alias_and_time_zone(start_humans: Start, tmp_path: Path) -> None:
    live = start_humans(auth=HUMAN_AUTH)
    db, cwd = live.db_url, tmp_path
    proc = cli("cron", "add", "@daily", "adhoc", "--id", "d", "--timezone", "Asia/Kolkata", "--db", db, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    row = cron_of(live, "d")
    assert (row["pattern"], row["timezone"]) == ("@daily", "Asia/Kolkata")
    fire = local(row["nextRunAtMs"], "Asia/Kolkata")
    assert (fire.hour, fire.minute) == (0, 0)
    proc = cli("cron", "add", "0 0 7 * * *", "adhoc", "--id", "s", "--db", db, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert local(cron_of(live, "s")["nextRunAtMs"]).hour == 7
    proc = cli("cron", "add", "* * *", "adhoc", "--db", db, cwd=cwd)
    assert proc.returncode == 4 and "invalid cron pattern" in proc.stderr
    proc = cli("cron", "add", "@daily", "adhoc", "--timezone", "Nowhere/Else", "--db", db, cwd=cwd)
    assert proc.returncode == 4 and "unknown time zone" in proc.stderr
    for folder in ("America", "x" * 300):  # a folder of the zone database, a name too long for a file
        proc = cli("cron", "add", "@daily", "adhoc", "--timezone", folder, "--db", db, cwd=cwd)
        assert proc.returncode == 4 and "unknown time zone" in proc.stderr and "Traceback" not in proc.stderr
        refused = live.rpc("cron.add", {"workflow": "adhoc", "pattern": "@daily", "timezone": folder}, token="op-token")
        assert refused.status_code == 400 and error_of(refused)["code"] == "INVALID_INPUT"


def test_cron_trigger_checks_the_input_model(start_gateway: Start) -> None:
    live = start_gateway()
    response = live.rpc("cron.trigger", {"workflow": "typed", "input": {"nom": "x"}})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_INPUT" and "name" in error["message"]
    assert live.ok("listRuns") == []
    # a refused trigger of a stored schedule leaves the schedule as it was
    live.ok("cron.add", {"cronId": "typed-c", "workflow": "typed", "pattern": "0 0 1 1 *"})
    [before] = [c for c in live.ok("cron.list") if c["cronId"] == "typed-c"]
    assert live.rpc("cron.trigger", {"cronId": "typed-c", "input": {"nom": "x"}}).status_code == 400
    assert [c for c in live.ok("cron.list") if c["cronId"] == "typed-c"] == [before]
    triggered = live.ok("cron.trigger", {"cronId": "typed-c", "input": {"name": "ada"}})["runId"]
    live.wait_status(triggered, {"finished"})
    [after] = [c for c in live.ok("cron.list") if c["cronId"] == "typed-c"]
    assert after["lastRunAtMs"] is not None and before["lastRunAtMs"] is None
    run_id = live.ok("cronRun", {"workflow": "typed", "input": {"name": "ada"}})["runId"]
    live.wait_status(run_id, {"finished"})
