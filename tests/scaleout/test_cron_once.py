"""Cron across gateways on one database (SQLite and PostgreSQL): each due time fires exactly once,
and a fire whose gateway died between claiming it and starting its run is started by another
(docs/protocol.md#cron)."""

from __future__ import annotations

import time
from typing import Any

from smithers import Sequence, Task, workflow
from smithers.gateway.cron import cron_id_for, fire_run_id
from smithers.gateway.server import Gateway
from smithers.store.rows import now_ms
from smithers.store.store import Store
from tests.gateway.support import Live, WsClient
from tests.waiting import wait_for


@workflow("tick")
def tick(ctx: Any) -> Any:
    return Sequence(Task("t", run=lambda c: {"ok": True}))


def scheduled(db_url: str) -> Live:
    gateway = Gateway(db=db_url, heartbeat_ms=1000)
    gateway.register("tick", tick, schedule="* * * * * *")  # every second
    return Live(gateway)


def cron_runs(store: Store) -> list[dict[str, Any]]:
    with store.read() as tx:
        return [r for r in tx.list_runs(10_000) if r["run_id"].startswith("cron-")]


def test_two_gateways_fire_each_due_second_once(db_url: str) -> None:
    Store(db_url).close()
    a, b = scheduled(db_url), scheduled(db_url)
    store = Store(db_url)
    try:
        time.sleep(4.5)
        a.stop()
        b.stop()
        with store.read() as tx:
            cron = tx.get_cron(cron_id_for("tick"))
        runs = cron_runs(store)
        assert 3 <= len(runs) <= 6  # about one a second, from both gateways together
        seconds = [r["created_at_ms"] // 1000 for r in runs]
        assert len(seconds) == len(set(seconds))  # never two runs for one due second
        assert cron is not None and fire_run_id(cron["cron_id"], cron["last_run_at_ms"]) in {r["run_id"] for r in runs}
    finally:
        a.stop()
        b.stop()
        store.close()


def test_a_fire_claimed_by_a_gateway_that_died_is_started_by_another(db_url: str) -> None:
    store = Store(db_url)
    cron_id = cron_id_for("tick")
    fired = now_ms() - 15_000  # claimed 15 s ago by a gateway that died before starting its run
    with store.write() as tx:
        tx.upsert_cron(cron_id, "0 0 1 1 *", cron_id, True, now_ms() + 3_600_000, None)
        tx.update_cron_fields(cron_id, last_run_at_ms=fired)
    gateway = Gateway(db=db_url, heartbeat_ms=1000)
    gateway.register("tick", tick, schedule="0 0 1 1 *")  # not due again for months
    live = Live(gateway)
    try:
        run_id = fire_run_id(cron_id, fired)
        row = wait_for(lambda: store.get_run(run_id), "the lost fire's run to start", timeout=20)
        assert row["workflow_name"] == "tick"
        live.wait_status(run_id, {"finished"})
        time.sleep(2.5)  # later passes do not start it again
        assert [r["run_id"] for r in cron_runs(store)] == [run_id]
    finally:
        live.stop()
        store.close()


def cron_triggered(client: WsClient) -> list[dict[str, Any]]:
    """The ``cron.triggered`` payloads a client has heard so far (what it has not read yet included)."""
    frames = [*client.events, *client.drain(0.5)]
    return [f["payload"] for f in frames if f.get("type") == "event" and f.get("event") == "cron.triggered"]


def test_the_clients_of_every_gateway_hear_each_fire_once(db_url: str) -> None:
    Store(db_url).close()
    a = scheduled(db_url)
    unscheduled = Gateway(db=db_url, heartbeat_ms=1000)
    unscheduled.register("other", tick)  # not "tick": it never fires that schedule, its client hears a's fires
    b = Live(unscheduled)
    clients = [WsClient(a.ws_url, connect_now=True), WsClient(b.ws_url, connect_now=True)]
    listening_from = now_ms()
    store = Store(db_url)
    try:
        time.sleep(6)
        listened_until = now_ms()
        heard = [cron_triggered(client) for client in clients]
        a.stop()
        b.stop()
        runs = cron_runs(store)
        fired = {r["run_id"] for r in runs}
        settled = {r["run_id"] for r in runs if listening_from + 500 < r["created_at_ms"] < listened_until - 2000}
        assert len(settled) >= 2
        for payloads in heard:  # each gateway's client: every fire once, whichever gateway fired it
            ids = [p["runId"] for p in payloads]
            assert len(ids) == len(set(ids)), payloads
            assert settled <= set(ids) <= fired, (settled, ids, fired)  # (fires before it connected not heard)
            assert {(p["cronId"], p["workflow"]) for p in payloads} == {(cron_id_for("tick"), "tick")}
    finally:
        for client in clients:
            client.close()
        a.stop()
        b.stop()
        store.close()
