"""Write transactions on SQLite and PostgreSQL, pipelined or not (docs/engine.md#events,
docs/engine.md#durability-and-ownership): errors surface before anything commits and leave the
connection usable, row counts are exact, a lost lease writes nothing, and events of one run written
from several connections at once get one seq each, contiguous, in each writer's order."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import psycopg
import pytest

from smithers import Store
from smithers.store import schema as t
from smithers.store.events_bus import StoredEvent
from smithers.store.store import Tx

DUPLICATE = (sqlite3.IntegrityError, psycopg.IntegrityError)


class LeaseLost(Exception):
    pass


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    yield opened
    opened.close()


def put(tx: Tx, run_id: str) -> None:
    """Store an input row (the table has one row per run id: a second one is a duplicate key)."""
    tx.insert(t.run_input, {"run_id": run_id, "payload_json": "{}"})


def inputs(store: Store) -> dict[str, str | None]:
    with store.read() as tx:
        return {run_id: tx.get_input_json(run_id) for run_id in ("a", "b", "c")}


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_failed_statement_commits_nothing_and_the_connection_goes_on(store: Store, pipelined: bool) -> None:
    with store.write() as tx:
        put(tx, "a")
    # the duplicate key, raised by the call (or, pipelined, at commit)
    with pytest.raises(DUPLICATE), store.write(pipelined=pipelined) as tx:
        put(tx, "b")
        put(tx, "a")
    assert inputs(store) == {"a": "{}", "b": None, "c": None}
    with store.write(pipelined=pipelined) as tx:
        put(tx, "c")
    assert inputs(store) == {"a": "{}", "b": None, "c": "{}"}


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_body_that_raises_over_a_failed_statement_leaves_the_connection_usable(store: Store, pipelined: bool) -> None:
    with store.write() as tx:
        put(tx, "a")
    # the body's error, or (not pipelined) the duplicate key before it
    with pytest.raises((ValueError, *DUPLICATE)), store.write(pipelined=pipelined) as tx:
        put(tx, "a")  # fails (maybe not yet raised)
        raise ValueError("the body failed")
    for later in (store.write(pipelined=True), store.write(), store.read()):
        with later as tx:
            tx.get_input_json("a")
    with store.write(pipelined=pipelined) as tx:
        put(tx, "c")
    assert inputs(store) == {"a": "{}", "b": None, "c": "{}"}


@pytest.mark.parametrize("pipelined", [False, True])
def test_row_counts_and_lease_checks(store: Store, pipelined: bool) -> None:
    with store.write() as tx:
        tx.insert_run(run_id="r", workflow_name="w", status="running", created_at_ms=1, runtime_owner_id="me")
    with store.write(pipelined=pipelined) as tx:
        assert tx.update(t.runs, {"run_id": "r"}, {"heartbeat_at_ms": 5}) == 1
        assert tx.update(t.runs, {"run_id": "nobody"}, {"heartbeat_at_ms": 5}) == 0
        tx.fence_run("r", "me", 7, LeaseLost)
    with pytest.raises(LeaseLost), store.write(pipelined=pipelined) as tx:
        tx.fence_run("r", "someone-else", 9, LeaseLost)
        tx.update_run("r", status="finished")
        tx.emit("r", "RunFinished")
    row = store.get_run("r")
    assert row is not None and (row["status"], row["heartbeat_at_ms"]) == ("running", 7)  # nothing written
    with store.read() as tx:
        assert tx.list_events("r") == []


@pytest.mark.parametrize("pipelined", [False, True])
def test_events_of_one_run_from_several_connections_get_contiguous_seqs(db_url: str, pipelined: bool) -> None:
    writers, transactions, per_transaction = 3, 30, 3
    published: list[StoredEvent] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(index: int) -> None:
        store = Store(db_url)
        store.bus.subscribe(published.append)
        try:
            barrier.wait()
            for n in range(transactions):
                with store.write(pipelined=pipelined) as tx:
                    for k in range(per_transaction):
                        tx.emit("shared", "NodeOutput", {"writer": index, "n": n, "k": k})
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    store = Store(db_url)
    try:
        with store.read() as tx:
            stored = tx.list_events("shared", limit=None)
    finally:
        store.close()
    total = writers * transactions * per_transaction
    assert [e.seq for e in stored] == list(range(total))
    assert sorted((e.seq, e.payload["writer"]) for e in published) == [(e.seq, e.payload["writer"]) for e in stored]
    for index in range(writers):  # each writer's events in its own order, each transaction's together
        mine = [(e.payload["n"], e.payload["k"]) for e in stored if e.payload["writer"] == index]
        assert mine == [(n, k) for n in range(transactions) for k in range(per_transaction)]
        for n in range(transactions):
            seqs = [e.seq for e in stored if (e.payload["writer"], e.payload["n"]) == (index, n)]
            assert seqs == list(range(seqs[0], seqs[0] + per_transaction))


def test_pipelined_writes_go_on_after_rollbacks_drop_prepared_statements(store: Store) -> None:
    """A rollback (whole, or to a savepoint) makes the driver drop every prepared statement; the
    pipelined writes that follow prepare theirs again."""
    for round_ in range(3):
        for _ in range(6):  # reads the driver prepares for itself
            with store.read() as tx:
                tx.get_input_json("a")
        with store.write(pipelined=True) as tx:
            put(tx, f"p{round_}")
        with pytest.raises(DUPLICATE), store.write() as tx:  # a whole rollback
            put(tx, f"p{round_}")
        with store.write(pipelined=True) as tx:
            put(tx, f"q{round_}")
        with store.write() as tx:  # a rollback to a savepoint
            with pytest.raises(DUPLICATE), tx.savepoint():
                put(tx, f"q{round_}")
            put(tx, f"r{round_}")
        with store.write(pipelined=True) as tx:
            put(tx, f"s{round_}")
    with store.read() as tx:
        stored = {run_id for run_id in (f"{p}{r}" for p in "pqrs" for r in range(3)) if tx.get_input_json(run_id)}
    assert len(stored) == 12


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_transaction_reads_the_events_it_appended(store: Store, pipelined: bool) -> None:
    with store.write(pipelined=pipelined) as tx:
        tx.emit("own", "NodeOutput", {"n": 1})
        tx.emit("own", "NodeOutput", {"n": 2})
        seen = [(e.seq, e.payload["n"]) for e in tx.list_events("own")]
        tx.emit("own", "NodeOutput", {"n": 3})
    assert seen == [(0, 1), (1, 2)]
    with store.read() as tx:
        assert [(e.seq, e.payload["n"]) for e in tx.list_events("own")] == [(0, 1), (1, 2), (2, 3)]
