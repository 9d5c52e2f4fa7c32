"""The Store: every read and write of the `_smithers_*` tables goes through here.

``Store.read()`` and ``Store.write()`` open a transaction and yield a :class:`Tx`; a write
transaction collects the events it appends and publishes them on the store's :class:`EventBus`
once it has committed, so subscribers never see an event that was rolled back. Each thread keeps
one connection; a transaction opened while another is open on the same thread joins it.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Final

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ClauseElement

from smithers.errors import DatabaseError, InvalidInputError
from smithers.store import schema as t
from smithers.store.compiled import (
    SqlCache,
    build_insert,
    build_select,
    build_update,
    eq_where,
    where_key,
    where_params,
)
from smithers.store.database import dialect_for, migrate, resolve_url
from smithers.store.events_bus import EventBus, StoredEvent
from smithers.store.pgbatch import Answer, PgBatch, Prepared, Statement
from smithers.store.rows import SURROGATE, camel, dumps, now_ms

Row = dict[str, Any]


def _run_by_id() -> ClauseElement:
    return select(t.runs).where(t.runs.c.run_id == bindparam("w_run_id"))


MAX_STORED_INT: Final = 2**63 - 1
"""Integers beyond a signed 64-bit column (PostgreSQL INTEGER columns stop at 2**31 - 1)."""


def _bad_value(value: Any) -> str | None:
    if isinstance(value, str) and SURROGATE.search(value) is not None:
        return "contains a lone UTF-16 surrogate, which cannot be stored"
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_STORED_INT - 1 <= value <= MAX_STORED_INT:
        return "is out of range"
    return None


def unstorable(params: Mapping[str, Any]) -> InvalidInputError:
    """``INVALID_INPUT`` naming the value a statement could not store or compare (as its wire field)."""
    for name, value in params.items():
        problem = _bad_value(value)
        if problem is not None:
            column = re.sub(r"_\d+$", "", name[2:] if name[:2] in ("v_", "w_") else name)
            return InvalidInputError(f"{camel(column)} {problem}.")
    return InvalidInputError("a value is out of range for the database.")


def _out_of_range(exc: Exception) -> bool:
    """A PostgreSQL data error about a value (out of range, bad encoding), not a fault of the server."""
    import psycopg

    return isinstance(exc, psycopg.errors.DataError)


_PG_CLAIM_SEQS: Final = f"""
INSERT INTO {t.run_activity.name} AS a (run_id, last_event_seq, last_event_at_ms)
VALUES (%s::text, (SELECT coalesce(max(seq), -1) FROM {t.events.name} WHERE run_id = %s::text) + %s::bigint, %s::bigint)
ON CONFLICT (run_id) DO UPDATE
SET last_event_seq = greatest(a.last_event_seq + %s::bigint, excluded.last_event_seq), last_event_at_ms = %s::bigint
RETURNING last_event_seq"""
"""Claim the next ``n`` seqs of a run (PostgreSQL): the run's activity row counts its events; the
statement locks it until commit, so two transactions appending to one run take turns, and it never
answers less than the newest stored event (a run older than the counter). Returns the last seq.
Parameters: the run id twice, the number of events, the time, the number again, the time again."""

_PG_NOTIFY: Final = "SELECT pg_notify(%s::text, '')"

_PG_RENEW_LEASE: Final = (
    "/* smithers lease check: a division by zero here means this process no longer holds the run */ "
    f"WITH renewed AS (UPDATE {t.runs.name} SET heartbeat_at_ms = %s::bigint "
    "WHERE run_id = %s::text AND runtime_owner_id = %s::text RETURNING 1) "
    "SELECT 1 / count(*)::int FROM renewed"
)
"""A pipelined step's lease check: renews the lease, or fails the transaction when it is lost (a
plain statement: no server function to install; the comment says what the error means in the
server's log). Parameters: the time, the run id, the owner id."""
LEASE_LOST_SQLSTATE: Final = "22012"
"""``division_by_zero``: what :data:`_PG_RENEW_LEASE` raises when no row matches."""

EVENTS_PER_STATEMENT: Final = 32
"""Events one statement writes at most (a longer batch takes several: fewer distinct statements to prepare)."""


@functools.cache
def _pg_insert_events(count: int) -> str:
    """Write ``count`` of a run's events just claimed by :data:`_PG_CLAIM_SEQS`, numbered on the
    server from the claim, so a pipelined transaction sends both without waiting for the first's
    answer. Parameters: the run id, the number claimed, the offset of the first of these in the
    claim, then (timestamp, type, body) per event."""
    rows = ", ".join(f"({i}, %s::bigint, %s::text, %s::text)" for i in range(1, count + 1))
    return (
        f"INSERT INTO {t.events.name} (run_id, seq, timestamp_ms, type, payload_json) "
        f"SELECT a.run_id, a.last_event_seq - %s::bigint + %s::bigint + e.ord, e.ts, e.type, e.body "
        f"FROM {t.run_activity.name} AS a, (VALUES {rows}) AS e(ord, ts, type, body) WHERE a.run_id = %s::text"
    )


@functools.cache
def _statement(sql: str) -> Statement:
    return Statement(sql)


def _update_parts(
    table: Table, where: Mapping[str, Any], values: Mapping[str, Any]
) -> tuple[Any, Callable[[], ClauseElement], dict[str, Any]]:
    """(cache key, builder, parameters) of an update of ``table``'s rows matching ``where``."""
    cols = tuple(values)
    params = {**where_params(where), **{"v_" + k: v for k, v in values.items()}}
    return ("upd", table.name, where_key(where), cols), build_update(table, where, cols), params


class _Fetched:
    """A fetched row in the shape of a libpq result (a statement run at once, not batched)."""

    def __init__(self, row: Any):
        self._row = row

    def get_value(self, row: int, column: int) -> Any:
        return self._row[column]


class Tx:
    """One open transaction. Reads work in any Tx; writes only in one from ``Store.write()``."""

    def __init__(self, store: Store, raw: Any, write: bool, batch: PgBatch | None = None):
        self.store = store
        self.raw = raw
        self.write = write
        self.cur = store._cursor()
        self.batch = batch
        """Where a pipelined transaction's writes wait to go to the server together (PostgreSQL):
        sent before anything is read, and with the commit (:mod:`smithers.store.pgbatch`)."""
        self.events: list[StoredEvent] = []
        """What this transaction appended, numbered (written); published once it commits."""
        self._unwritten: list[tuple[str, int, str, dict[str, Any]]] = []
        """Events appended and not yet written: (run id, timestamp, type, body), in order."""
        self._claims: list[tuple[str, list[tuple[int, str, dict[str, Any]]], Any]] = []
        """Events written and not yet numbered: (run id, events, last seq or how to read it)."""
        self._savepoints = 0
        self.fenced: set[str] = set()
        """Runs whose lease this transaction has checked (docs/engine.md#durability-and-ownership)."""
        self._fences: list[tuple[Answer, Callable[[], BaseException]]] = []
        """Lease checks queued in the batch and not yet read: (their answer, the error if lost)."""

    def sync(self, commit: bool = False) -> None:
        """Send the batch's queued writes and wait for them (a pipelined transaction; with
        ``commit``, the commit goes with them), raising the first error among them, or a lost
        lease's error."""
        batch = self.batch
        if batch is None or not (batch.queue or commit):
            return
        fences, self._fences = self._fences, []
        try:
            batch.send(commit)
        except (UnicodeEncodeError, OverflowError) as exc:
            raise unstorable({}) from exc
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == LEASE_LOST_SQLSTATE:
                for answer, lost in fences:
                    if answer.failed:
                        raise lost() from exc
            if _out_of_range(exc):
                raise unstorable({}) from exc
            raise

    def _queue(self, key: Any, build: Callable[[], ClauseElement], params: Mapping[str, Any]) -> None:
        """A write whose result nobody reads: queued in a pipelined transaction's batch, else run now."""
        batch = self.batch
        if batch is None:
            self.execute(key, build, params)
            return
        statement, defaults = self.store.statement(key, build)
        try:
            batch.add(statement, [params[n] if n in params else defaults.get(n) for n in statement.names or ()])
        except UnicodeEncodeError as exc:
            raise unstorable(params) from exc

    # ---- plumbing ---------------------------------------------------------------------------
    def execute(self, key: Any, build: Callable[[], ClauseElement], params: Mapping[str, Any]) -> Any:
        """Run a cached statement on this transaction's cursor now (after the batch's writes);
        returns the cursor."""
        if self.batch is not None and self.batch.queue:
            self.sync()
        cur = self.cur
        sql, order, defaults = self.store.sql.get(key, build)
        try:
            if order is not None:
                cur.execute(sql, [params[n] if n in params else defaults.get(n) for n in order])
            else:
                cur.execute(sql, {**defaults, **params} if defaults else params)
        except (UnicodeEncodeError, OverflowError) as exc:
            raise unstorable(params) from exc
        except Exception as exc:
            if self.store.is_postgres and _out_of_range(exc):
                raise unstorable(params) from exc
            raise
        return cur

    def rows(self, key: Any, build: Callable[[], ClauseElement], params: Mapping[str, Any]) -> list[Row]:
        cur = self.execute(key, build, params)
        names = self.store.sql.names.get(key)
        if names is None:
            names = self.store.sql.names[key] = tuple(d[0] for d in cur.description)
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def scalar(self, key: Any, build: Callable[[], ClauseElement], params: Mapping[str, Any]) -> Any:
        row = self.execute(key, build, params).fetchone()
        return None if row is None else row[0]

    def insert(self, table: Table, values: Mapping[str, Any]) -> None:
        cols = tuple(values)
        self._queue(("ins", table.name, cols), build_insert(table, cols), {"v_" + k: v for k, v in values.items()})

    def insert_many(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        cols = tuple(rows[0])
        if self.batch is not None:
            for row in rows:
                self.insert(table, row)
            return
        sql, order, _ = self.store.sql.get(("ins", table.name, cols), build_insert(table, cols))
        try:
            if order is not None:
                self.cur.executemany(sql, [[r[n[2:]] for n in order] for r in rows])
            else:
                self.cur.executemany(sql, [{"v_" + k: v for k, v in r.items()} for r in rows])
        except (UnicodeEncodeError, OverflowError) as exc:
            raise unstorable({"v_" + k: v for r in rows for k, v in r.items()}) from exc

    def upsert(self, table: Table, values: Mapping[str, Any]) -> None:
        """Insert, or update the row with the same primary key (one statement on both databases)."""
        cols = tuple(values)
        dialect_insert = self.store.dialect.insert

        def build() -> ClauseElement:
            stmt = dialect_insert(table).values({c: bindparam("v_" + c) for c in cols})
            keys = [c.name for c in table.primary_key.columns]
            out: ClauseElement = stmt.on_conflict_do_update(
                index_elements=keys, set_={c: stmt.excluded[c] for c in cols if c not in keys}
            )
            return out

        self._queue(("ups", table.name, cols), build, {"v_" + k: v for k, v in values.items()})

    def update(self, table: Table, where: Mapping[str, Any], values: Mapping[str, Any]) -> int:
        """Update the matching rows; returns how many changed (a pipelined transaction sends its batch first)."""
        return int(self.execute(*_update_parts(table, where, values)).rowcount)

    def change(self, table: Table, where: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        """Update the matching rows without asking how many (queued in a pipelined transaction)."""
        self._queue(*_update_parts(table, where, values))

    def select(
        self, table: Table, where: Mapping[str, Any], order_by: Sequence[str] = (), desc: bool = False
    ) -> list[Row]:
        key = ("sel", table.name, where_key(where), tuple(order_by), desc)
        return self.rows(key, build_select(table, where, order_by, desc), where_params(where))

    def first(self, table: Table, where: Mapping[str, Any]) -> Row | None:
        found = self.select(table, where)
        return found[0] if found else None

    def delete(self, table: Table, where: Mapping[str, Any]) -> int:
        def build() -> ClauseElement:
            return table.delete().where(eq_where(table, where))

        return int(self.execute(("del", table.name, where_key(where)), build, where_params(where)).rowcount)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: what the block writes is undone alone if it raises."""
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        events, unwritten = len(self.events), len(self._unwritten)
        self.sync()
        self.cur.execute(f"SAVEPOINT {name}")
        try:
            yield
            self.sync()  # a queued statement's error belongs to this block
        except BaseException:
            self.cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.store._forget_prepared(in_transaction=True)
            self.cur.execute(f"RELEASE SAVEPOINT {name}")
            del self.events[events:]
            del self._unwritten[unwritten:]
            raise
        self.cur.execute(f"RELEASE SAVEPOINT {name}")

    # ---- runs -------------------------------------------------------------------------------
    def insert_run(self, **values: Any) -> None:
        self.insert(t.runs, values)

    def get_run(self, run_id: str) -> Row | None:
        found = self.rows("run_by_id", _run_by_id, {"w_run_id": run_id})
        return found[0] if found else None

    def update_run(self, run_id: str, **values: Any) -> None:
        self.change(t.runs, {"run_id": run_id}, values)

    def fence_run(self, run_id: str, owner_id: str, now_ms: int, lost: Callable[[], BaseException]) -> None:
        """Check that ``owner_id`` still holds the run's lease, and renew it, in this transaction;
        raise ``lost()`` when it does not.

        A conditional update: it locks the run row until commit (PostgreSQL), so a claim by another
        process either committed before (no row matches) or waits and then finds the renewed
        heartbeat (its compare-and-swap fails). A pipelined transaction queues it with its other
        writes as a statement that fails when no row matches (:data:`_PG_RENEW_LEASE`): the server
        then skips the rest, ``COMMIT`` included, so the commit goes in the same round trip."""
        where = {"run_id": run_id, "runtime_owner_id": owner_id}
        if self.batch is None:
            if self.update(t.runs, where, {"heartbeat_at_ms": now_ms}) != 1:
                raise lost()
            return
        answer = Answer()
        self._queue_sql(_PG_RENEW_LEASE, [now_ms, run_id, owner_id], answer)
        self._fences.append((answer, lost))

    def hold_run(self, run_id: str, now_ms: int, stale_before_ms: int) -> bool:
        """Take a rewind's hold on the run (``pause_requested_at_ms``) unless another process holds it
        (a hold set at or after ``stale_before_ms``): one conditional update, so of two rewinds
        starting at once exactly one gets True (docs/engine.md#time-travel)."""
        c = t.runs.c

        def build() -> ClauseElement:
            free = c.pause_requested_at_ms.is_(None) | (c.pause_requested_at_ms < bindparam("stale"))
            return update(t.runs).where(c.run_id == bindparam("r"), free).values(pause_requested_at_ms=bindparam("now"))

        params = {"r": run_id, "stale": stale_before_ms, "now": now_ms}
        return int(self.execute("hold_run", build, params).rowcount) == 1

    def claim_run(self, run_id: str, expected: Mapping[str, Any], **values: Any) -> bool:
        """Compare-and-swap: update the run only if ``expected`` columns still hold those values."""
        return self.update(t.runs, {"run_id": run_id, **expected}, values) == 1

    def list_runs(self, limit: int = 50) -> list[Row]:
        """The newest runs first."""
        c = t.runs.c

        def build() -> ClauseElement:
            return select(t.runs).order_by(c.created_at_ms.desc(), c.run_id).limit(bindparam("lim"))

        return self.rows("runs_newest", build, {"lim": limit})

    def list_runs_page(
        self,
        limit: int,
        *,
        statuses: Sequence[str] = (),
        workflow: str | None = None,
        run_id_part: str | None = None,
        after: tuple[int, str] | None = None,
    ) -> list[Row]:
        """One page of runs, newest first (``created_at_ms`` descending, then ``run_id``): of any of
        ``statuses`` (all when empty), of one workflow, whose id contains a text, and following
        ``after`` (the ``(created_at_ms, run_id)`` of the previous page's last row) in that order."""
        c = t.runs.c
        count = len(statuses)
        shape = (count, workflow is not None, run_id_part is not None, after is not None)

        def build() -> ClauseElement:
            where: list[Any] = []
            if count:
                where.append(c.status.in_([bindparam(f"w_status_{i}") for i in range(count)]))
            if workflow is not None:
                where.append(c.workflow_name == bindparam("wf"))
            if run_id_part is not None:  # LIKE: case-insensitive for ASCII on SQLite, exact on PostgreSQL
                where.append(c.run_id.like(bindparam("pre"), escape="\\"))
            if after is not None:
                where.append(
                    (c.created_at_ms < bindparam("ac"))
                    | ((c.created_at_ms == bindparam("ac")) & (c.run_id > bindparam("ar")))
                )
            query = select(t.runs)
            if where:
                query = query.where(*where)
            return query.order_by(c.created_at_ms.desc(), c.run_id).limit(bindparam("lim"))

        params: dict[str, Any] = {f"w_status_{i}": status for i, status in enumerate(statuses)}
        params["lim"] = limit
        if workflow is not None:
            params["wf"] = workflow
        if run_id_part is not None:
            escaped = run_id_part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params["pre"] = "%" + escaped + "%"
        if after is not None:
            params["ac"], params["ar"] = after
        return self.rows(("runs_page", *shape), build, params)

    def list_runs_in(
        self, statuses: Sequence[str], limit: int | None = None, *, oldest_first: bool = False
    ) -> list[Row]:
        """Runs in any of ``statuses`` (one indexed query), newest first unless ``oldest_first``."""
        c = t.runs.c
        count = len(statuses)
        if not count:
            return []

        def build() -> ClauseElement:
            wanted = c.status.in_([bindparam(f"w_status_{i}") for i in range(count)])
            order = (c.created_at_ms, c.run_id) if oldest_first else (c.created_at_ms.desc(), c.run_id)
            return select(t.runs).where(wanted).order_by(*order).limit(bindparam("lim"))

        params: dict[str, Any] = {f"w_status_{i}": status for i, status in enumerate(statuses)}
        params["lim"] = limit if limit is not None else 2**62
        return self.rows(("runs_in", count, oldest_first), build, params)

    def list_silent_runs(self, status: str, heartbeat_before_ms: int) -> list[Row]:
        """Runs in ``status`` whose owner has not renewed its lease since ``heartbeat_before_ms``
        (or has none): the candidates for a takeover, checked every second by every gateway."""
        c = t.runs.c

        def build() -> ClauseElement:
            silent = (c.heartbeat_at_ms < bindparam("before")) | c.heartbeat_at_ms.is_(None)
            return (
                select(c.run_id, c.runtime_owner_id, c.heartbeat_at_ms)
                .where(c.status == bindparam("st"), silent)
                .order_by(c.created_at_ms, c.run_id)
            )

        return self.rows("silent_runs", build, {"st": status, "before": heartbeat_before_ms})

    # ---- input ------------------------------------------------------------------------------
    def insert_input(self, run_id: str, payload: Any) -> None:
        self.insert(t.run_input, {"run_id": run_id, "payload_json": dumps(payload)})

    def get_input_json(self, run_id: str) -> str | None:
        row = self.first(t.run_input, {"run_id": run_id})
        return None if row is None else str(row["payload_json"])

    # ---- nodes ------------------------------------------------------------------------------
    def insert_nodes(self, rows: list[Row]) -> None:
        self.insert_many(t.nodes, rows)

    def update_node(self, run_id: str, node_id: str, iteration: int, **values: Any) -> None:
        self.change(t.nodes, {"run_id": run_id, "node_id": node_id, "iteration": iteration}, values)

    def list_nodes(self, run_id: str) -> list[Row]:
        return self.select(t.nodes, {"run_id": run_id}, ("updated_at_ms", "node_id", "iteration"))

    def get_node(self, run_id: str, node_id: str, iteration: int) -> Row | None:
        return self.first(t.nodes, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def count_nodes_by_state(self, run_id: str) -> dict[str, int]:
        c = t.nodes.c

        def build() -> ClauseElement:
            return select(c.state, func.count()).where(c.run_id == bindparam("r")).group_by(c.state)

        return {str(s): int(n) for s, n in self.execute("count_nodes", build, {"r": run_id}).fetchall()}

    # ---- attempts ---------------------------------------------------------------------------
    def insert_attempt(self, **values: Any) -> None:
        self.insert(t.attempts, values)

    def update_attempt(self, run_id: str, node_id: str, iteration: int, attempt: int, **values: Any) -> None:
        where = {"run_id": run_id, "node_id": node_id, "iteration": iteration, "attempt": attempt}
        self.change(t.attempts, where, values)

    def list_attempts(self, run_id: str, node_id: str | None = None, iteration: int | None = None) -> list[Row]:
        where: dict[str, Any] = {"run_id": run_id}
        if node_id is not None:
            where["node_id"] = node_id
        if iteration is not None:
            where["iteration"] = iteration
        return self.select(t.attempts, where, ("started_at_ms", "node_id", "iteration", "attempt"))

    def cancel_in_progress_attempts(self, run_id: str, error_json: str, finished_at_ms: int) -> list[Row]:
        """Mark every in-progress attempt cancelled and its node pending; returns the attempts."""
        stale = self.select(t.attempts, {"run_id": run_id, "state": "in-progress"})
        for row in stale:
            self.update_attempt(
                run_id,
                row["node_id"],
                row["iteration"],
                row["attempt"],
                state="cancelled",
                error_json=error_json,
                finished_at_ms=finished_at_ms,
            )
            self.update_node(run_id, row["node_id"], row["iteration"], state="pending", updated_at_ms=finished_at_ms)
        return stale

    # ---- outputs ----------------------------------------------------------------------------
    def upsert_output(self, run_id: str, node_id: str, iteration: int, output_table: str, payload: Any) -> None:
        self.upsert(
            t.outputs,
            {
                "run_id": run_id,
                "node_id": node_id,
                "iteration": iteration,
                "output_table": output_table,
                "payload_json": dumps(payload),
                "created_at_ms": now_ms(),
            },
        )

    def list_outputs(self, run_id: str) -> list[Row]:
        return self.select(t.outputs, {"run_id": run_id}, ("node_id", "iteration"))

    def get_output(self, run_id: str, node_id: str, iteration: int) -> Row | None:
        return self.first(t.outputs, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    # ---- frames and snapshots ---------------------------------------------------------------
    def insert_frame(self, **values: Any) -> None:
        self.insert(t.frames, values)

    def last_frame_no(self, run_id: str) -> int:
        c = t.frames.c
        value = self.scalar(
            "last_frame", lambda: select(func.max(c.frame_no)).where(c.run_id == bindparam("r")), {"r": run_id}
        )
        return int(value) if value is not None else 0

    def list_frame_rows(self, run_id: str, up_to: int | None = None, since: int | None = None) -> list[Row]:
        """Stored frame rows (deltas not expanded), ascending."""
        c = t.frames.c

        def build() -> ClauseElement:
            return (
                select(t.frames)
                .where(c.run_id == bindparam("r"), c.frame_no <= bindparam("hi"), c.frame_no >= bindparam("lo"))
                .order_by(c.frame_no)
            )

        return self.rows(
            "frames_range",
            build,
            {"r": run_id, "hi": up_to if up_to is not None else 2**31 - 1, "lo": since if since is not None else 0},
        )

    def last_keyframe_no(self, run_id: str, up_to: int) -> int | None:
        c = t.frames.c

        def build() -> ClauseElement:
            return select(func.max(c.frame_no)).where(
                c.run_id == bindparam("r"), c.frame_no <= bindparam("hi"), c.encoding != "delta"
            )

        value = self.scalar("last_keyframe", build, {"r": run_id, "hi": up_to})
        return None if value is None else int(value)

    def select_snapshots(self, run_id: str) -> list[Row]:
        """Snapshot rows of a run, oldest frame first."""
        return self.select(t.snapshots, {"run_id": run_id}, ("frame_no",))

    def upsert_snapshot(self, **values: Any) -> None:
        self.upsert(t.snapshots, values)

    def delete_frames_after(self, run_id: str, frame_no: int) -> int:
        """Drop frames and snapshots past ``frame_no`` (a rewind); returns the frames dropped."""
        dropped = 0
        for table in (t.frames, t.snapshots):
            c = table.c

            def build(table: Table = table, c: Any = c) -> ClauseElement:
                return table.delete().where(c.run_id == bindparam("r"), c.frame_no > bindparam("n"))

            count = int(self.execute(("del_after", table.name), build, {"r": run_id, "n": frame_no}).rowcount)
            if table is t.frames:
                dropped = count
        return dropped

    def copy_frames(self, run_id: str, to_run_id: str, up_to: int) -> None:
        """Frames ``1..up_to`` of a run, stored again under another run (a fork)."""
        rows = self.list_frame_rows(run_id, up_to=up_to)
        self.insert_many(t.frames, [{**row, "run_id": to_run_id} for row in rows])

    # ---- tool calls of agent attempts ----------------------------------------------------------
    def insert_tool_call(self, **values: Any) -> None:
        self.insert(t.tool_calls, values)

    def finish_tool_call(self, key: Mapping[str, Any], **values: Any) -> None:
        """Record how a tool call ended (a call whose start was not seen is inserted whole)."""
        if not self.update(t.tool_calls, key, values):
            self.insert(t.tool_calls, {**key, **values, "started_at_ms": values.get("finished_at_ms")})

    def list_tool_calls(self, run_id: str, node_id: str | None = None) -> list[Row]:
        where: dict[str, Any] = {"run_id": run_id} if node_id is None else {"run_id": run_id, "node_id": node_id}
        return self.select(t.tool_calls, where, ("node_id", "iteration", "attempt", "seq"))

    # ---- time travel ------------------------------------------------------------------------
    def delete_attempt(self, run_id: str, node_id: str, iteration: int, attempt: int) -> None:
        """The attempt and its tool calls."""
        key = {"run_id": run_id, "node_id": node_id, "iteration": iteration, "attempt": attempt}
        self.delete(t.tool_calls, key)
        self.delete(t.attempts, key)

    def delete_output(self, run_id: str, node_id: str, iteration: int) -> None:
        self.delete(t.outputs, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def delete_node(self, run_id: str, node_id: str, iteration: int) -> None:
        self.delete(t.nodes, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def delete_node_diffs(self, run_id: str, node_id: str, iteration: int) -> int:
        return self.delete(t.node_diffs, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def get_node_diff(self, run_id: str, node_id: str, iteration: int, base_ref: str) -> Row | None:
        return self.first(
            t.node_diffs, {"run_id": run_id, "node_id": node_id, "iteration": iteration, "base_ref": base_ref}
        )

    def upsert_node_diff(self, **values: Any) -> None:
        self.upsert(t.node_diffs, values)

    def count_node_diffs(self) -> int:
        """Rows in the node-diff cache, every run together."""

        def build() -> ClauseElement:
            return select(func.count()).select_from(t.node_diffs)

        return int(self.scalar("count_node_diffs", build, {}) or 0)

    def list_approvals(self, run_id: str) -> list[Row]:
        return self.select(t.approvals, {"run_id": run_id}, ("node_id", "iteration"))

    def delete_approval(self, run_id: str, node_id: str, iteration: int) -> None:
        self.delete(t.approvals, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def delete_ralph(self, run_id: str) -> None:
        self.delete(t.ralph, {"run_id": run_id})

    def insert_branch(self, **values: Any) -> None:
        self.insert(t.branches, values)

    def get_branch(self, run_id: str) -> Row | None:
        return self.first(t.branches, {"run_id": run_id})

    def insert_audit(self, **values: Any) -> int:
        """Insert a time-travel audit row; returns its id."""
        cols = tuple(values)
        table = t.time_travel_audit

        def build() -> ClauseElement:
            return table.insert().values({c: bindparam("v_" + c) for c in cols}).returning(table.c.id)

        row = self.execute(("audit_insert", cols), build, {"v_" + k: v for k, v in values.items()}).fetchone()
        assert row is not None
        return int(row[0])

    def update_audit(self, audit_id: int, **values: Any) -> None:
        self.change(t.time_travel_audit, {"id": audit_id}, values)

    def count_recent_audits(self, run_id: str, caller: str, since_ms: int) -> int:
        """Rewinds by ``caller`` of ``run_id`` since ``since_ms`` that have ended (the quota)."""
        c = t.time_travel_audit.c

        def build() -> ClauseElement:
            return select(func.count()).where(
                c.run_id == bindparam("r"),
                c.caller == bindparam("c"),
                c.timestamp_ms >= bindparam("s"),
                c.result != "in_progress",
            )

        return int(self.scalar("audit_recent", build, {"r": run_id, "c": caller, "s": since_ms}) or 0)

    def list_audits(self, run_id: str | None = None, result: str | None = None) -> list[Row]:
        where: dict[str, Any] = {}
        if run_id is not None:
            where["run_id"] = run_id
        if result is not None:
            where["result"] = result
        return self.select(t.time_travel_audit, where, ("id",))

    # ---- loops ------------------------------------------------------------------------------
    def list_ralph(self, run_id: str) -> list[Row]:
        return self.select(t.ralph, {"run_id": run_id})

    def upsert_ralph(self, run_id: str, ralph_id: str, iteration: int, done: bool) -> None:
        values = {"iteration": iteration, "done": int(done), "updated_at_ms": now_ms()}
        self.upsert(t.ralph, {"run_id": run_id, "ralph_id": ralph_id, **values})

    # ---- approvals --------------------------------------------------------------------------
    def get_approval(self, run_id: str, node_id: str, iteration: int) -> Row | None:
        return self.first(t.approvals, {"run_id": run_id, "node_id": node_id, "iteration": iteration})

    def insert_approval(self, **values: Any) -> None:
        self.insert(t.approvals, values)

    def update_approval(self, run_id: str, node_id: str, iteration: int, **values: Any) -> None:
        self.change(t.approvals, {"run_id": run_id, "node_id": node_id, "iteration": iteration}, values)

    def list_pending_approvals(
        self, run_statuses: Sequence[str], node_state: str, run_id: str | None = None
    ) -> list[Row]:
        """Undecided approvals whose node is in ``node_state`` (waiting) and whose run is in
        ``run_statuses`` (active), oldest request first. An approval of an ended run, or one its tree
        no longer mounts, is no longer pending, though its row stays ``requested``."""
        a, r, n = t.approvals.c, t.runs.c, t.nodes.c
        count = len(statuses := list(run_statuses))
        one_run = run_id is not None

        def build() -> ClauseElement:
            query = (
                select(t.approvals)
                .join(t.runs, r.run_id == a.run_id)
                .join(t.nodes, (n.run_id == a.run_id) & (n.node_id == a.node_id) & (n.iteration == a.iteration))
                .where(a.status == bindparam("requested"))
                .where(n.state == bindparam("node_state"))
                .where(r.status.in_([bindparam(f"w_status_{i}") for i in range(count)]))
            )
            if one_run:
                query = query.where(a.run_id == bindparam("w_run_id"))
            return query.order_by(a.requested_at_ms, a.run_id, a.node_id)

        params: dict[str, Any] = {f"w_status_{i}": status for i, status in enumerate(statuses)}
        params["requested"] = "requested"
        params["node_state"] = node_state
        if one_run:
            params["w_run_id"] = run_id
        return self.rows(("pending_approvals", count, one_run), build, params)

    # ---- signals ----------------------------------------------------------------------------
    def insert_signal(
        self,
        run_id: str,
        signal_name: str,
        correlation_id: str | None,
        payload: Any,
        received_at_ms: int,
        received_by: str | None,
    ) -> int:
        self.store.lock_run(self, run_id)
        last = self.last_signal_seq(run_id)
        seq = 0 if last is None else last + 1
        self.insert(
            t.signals,
            {
                "run_id": run_id,
                "seq": seq,
                "signal_name": signal_name,
                "correlation_id": correlation_id,
                "payload_json": dumps(payload),
                "received_at_ms": received_at_ms,
                "received_by": received_by,
            },
        )
        return seq

    def last_signal_seq(self, run_id: str) -> int | None:
        """The seq of the run's latest signal (None: it has none)."""
        c = t.signals.c
        last = self.scalar(
            "last_signal", lambda: select(func.max(c.seq)).where(c.run_id == bindparam("r")), {"r": run_id}
        )
        return None if last is None else int(last)

    def find_signal(
        self, run_id: str, signal_name: str, correlation_id: str | None, exclude_seqs: set[int]
    ) -> Row | None:
        """The first signal of that name not already consumed by another wait of the run.

        A wait with no correlation id accepts a signal of its name whatever its correlation id
        (a deliberate departure, docs/protocol.md#departures-from-0180); a wait with one needs an equal one.
        """
        where: dict[str, Any] = {"run_id": run_id, "signal_name": signal_name}
        if correlation_id is not None:
            where["correlation_id"] = correlation_id
        for row in self.select(t.signals, where, ("seq",)):
            if row["seq"] not in exclude_seqs:
                return row
        return None

    def list_signals(self, run_id: str) -> list[Row]:
        return self.select(t.signals, {"run_id": run_id}, ("seq",))

    # ---- events -----------------------------------------------------------------------------
    def emit(
        self, run_id: str, type_: str, payload: Mapping[str, Any] | None = None, timestamp_ms: int | None = None
    ) -> None:
        """Append one event to the run; it gets the run's next seq when the transaction writes its
        events (before a read of events, and at commit) and is published after commit."""
        ts = timestamp_ms if timestamp_ms is not None else now_ms()
        body = {"type": type_, "runId": run_id, "timestampMs": ts, **(payload or {})}
        self._unwritten.append((run_id, ts, type_, body))

    def emit_many(self, run_id: str, events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Append several events of one run in order (written together with the transaction's others)."""
        ts = now_ms()
        self._unwritten.extend(
            (run_id, ts, type_, {"type": type_, "runId": run_id, "timestampMs": ts, **payload})
            for type_, payload in events
        )

    def write_events(self) -> None:
        """Number and write the events appended since the last call: per run, one statement claims
        the next seqs and one writes the rows (docs/engine.md#events)."""
        self._send_events()
        self.sync()  # (a pipelined transaction's claims are answered once sent)
        self._number_events()

    def _send_events(self) -> None:
        if not self._unwritten:
            return
        by_run: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        for run_id, ts, type_, body in self._unwritten:
            by_run.setdefault(run_id, []).append((ts, type_, body))
        self._unwritten = []
        self._claims.extend((run_id, items, self._write_run_events(run_id, items)) for run_id, items in by_run.items())

    def _number_events(self) -> None:
        """Give the written events their seqs (read from the server's answers) for publishing."""
        claims, self._claims = self._claims, []
        for run_id, items, claim in claims:
            first = (claim() if callable(claim) else claim) - len(items) + 1
            self.events.extend(
                StoredEvent(run_id=run_id, seq=first + offset, timestamp_ms=ts, type=type_, payload=body)
                for offset, (ts, type_, body) in enumerate(items)
            )

    def _write_run_events(self, run_id: str, items: list[tuple[int, str, dict[str, Any]]]) -> Any:
        """Write one run's events; return the seq of the last one, or (PostgreSQL) a function that
        reads it once the server has answered, so a pipelined commit does not wait for it first."""
        texts = [dumps(body) for _, _, body in items]
        if not self.store.is_postgres:
            first = self.last_event_seq(run_id) + 1  # one writer at a time: the newest stored is the last
            rows = [
                {"run_id": run_id, "seq": first + offset, "timestamp_ms": ts, "type": type_, "payload_json": text}
                for offset, ((ts, type_, _), text) in enumerate(zip(items, texts, strict=True))
            ]
            self.insert_many(t.events, rows)
            return first + len(items) - 1
        count = len(items)
        claim = Answer()
        try:
            now = now_ms()
            self._queue_sql(_PG_CLAIM_SEQS, [run_id, run_id, count, now, count, now], claim)
            for start in range(0, count, EVENTS_PER_STATEMENT):
                chunk = items[start : start + EVENTS_PER_STATEMENT]
                params: list[Any] = [count, start]
                for (ts, type_, _), text in zip(chunk, texts[start : start + len(chunk)], strict=True):
                    params += (ts, type_, text)
                params.append(run_id)
                self._queue_sql(_pg_insert_events(len(chunk)), params)
        except UnicodeEncodeError as exc:
            raise unstorable({"v_payload_json": "\n".join(texts)}) from exc
        return claim.first_value

    def _queue_sql(self, sql: str, params: list[Any], answer: Answer | None = None) -> None:
        """A statement of this module's own (positional ``%s``) queued like :meth:`_queue`."""
        if self.batch is not None:
            self.batch.add(_statement(sql), params, answer)
            return
        cur = self.cur if answer is None else self.store._raw().cursor()
        cur.execute(sql, params)
        if answer is not None:
            answer.result = _Fetched(cur.fetchone())

    def record_activity(self) -> None:
        """Each run's latest event of this transaction, in ``_smithers_run_activity`` (before commit;
        on PostgreSQL the statement that numbered the events did it); on PostgreSQL, with
        ``Store.notify_events``, a wake-up for the processes that follow them."""
        if not self.store.is_postgres:
            latest: dict[str, int] = {}
            for event in self.events:
                latest[event.run_id] = event.seq
            now = now_ms()
            for run_id, seq in latest.items():
                self.upsert(t.run_activity, {"run_id": run_id, "last_event_seq": seq, "last_event_at_ms": now})
        elif self.store.notify_events:
            self._queue_sql(_PG_NOTIFY, [EVENTS_CHANNEL])

    def list_active_runs(self, since_ms: int) -> list[Row]:
        """``(run_id, last_event_seq, last_event_at_ms)`` of runs with an event at or after ``since_ms``."""
        c = t.run_activity.c

        def build() -> ClauseElement:
            return select(t.run_activity).where(c.last_event_at_ms >= bindparam("since"))

        return self.rows("active_runs", build, {"since": since_ms})

    def list_events(self, run_id: str, after_seq: int = -1, limit: int | None = 1000) -> list[StoredEvent]:
        self.write_events()
        c = t.events.c

        def build() -> ClauseElement:
            return (
                select(t.events)
                .where(c.run_id == bindparam("r"), c.seq > bindparam("after"))
                .order_by(c.seq)
                .limit(bindparam("lim"))
            )

        rows = self.rows("events_after", build, {"r": run_id, "after": after_seq, "lim": limit or 2**31 - 1})
        return [
            StoredEvent(r["run_id"], r["seq"], r["timestamp_ms"], r["type"], json.loads(r["payload_json"]))
            for r in rows
        ]

    def list_events_of_types(self, run_id: str, types: Sequence[str]) -> list[StoredEvent]:
        """The run's events of the given types, in seq order (an agent's transcript reads these)."""
        self.write_events()
        c = t.events.c
        count = len(types)

        def build() -> ClauseElement:
            wanted = c.type.in_([bindparam(f"ty_{i}") for i in range(count)])
            return select(t.events).where(c.run_id == bindparam("r"), wanted).order_by(c.seq)

        params: dict[str, Any] = {"r": run_id, **{f"ty_{i}": type_ for i, type_ in enumerate(types)}}
        rows = self.rows(("events_of_types", count), build, params)
        return [
            StoredEvent(r["run_id"], r["seq"], r["timestamp_ms"], r["type"], json.loads(r["payload_json"]))
            for r in rows
        ]

    def list_usage_meta(self, run_id: str) -> list[str]:
        """``meta_json`` of the run's attempts that record token usage (``getRun``'s ``tokenUsage``)."""
        c = t.attempts.c

        def build() -> ClauseElement:
            return select(c.meta_json).where(c.run_id == bindparam("r"), c.meta_json.like('%"usage":%'))

        return [row["meta_json"] for row in self.rows("usage_meta", build, {"r": run_id})]

    def list_events_before(self, run_id: str, before_seq: int, limit: int) -> list[StoredEvent]:
        """The last ``limit`` events of the run with a seq below ``before_seq``, oldest first."""
        self.write_events()
        c = t.events.c

        def build() -> ClauseElement:
            return (
                select(t.events)
                .where(c.run_id == bindparam("r"), c.seq < bindparam("before"))
                .order_by(c.seq.desc())
                .limit(bindparam("lim"))
            )

        rows = self.rows("events_before", build, {"r": run_id, "before": before_seq, "lim": limit})
        return [
            StoredEvent(r["run_id"], r["seq"], r["timestamp_ms"], r["type"], json.loads(r["payload_json"]))
            for r in reversed(rows)
        ]

    def last_seq_of_type(self, run_id: str, type_: str) -> int:
        """The seq of the run's latest event of that type (-1 if none)."""
        self.write_events()
        c = t.events.c

        def build() -> ClauseElement:
            return select(func.max(c.seq)).where(c.run_id == bindparam("r"), c.type == bindparam("ty"))

        value = self.scalar("last_of_type", build, {"r": run_id, "ty": type_})
        return -1 if value is None else int(value)

    def last_event_seq(self, run_id: str) -> int:
        c = t.events.c
        value = self.scalar(
            "last_event", lambda: select(func.max(c.seq)).where(c.run_id == bindparam("r")), {"r": run_id}
        )
        return -1 if value is None else int(value)

    # ---- cron -------------------------------------------------------------------------------
    def list_crons(self, enabled_only: bool = False) -> list[Row]:
        rows = self.select(t.cron, {}, ("created_at_ms", "cron_id"))
        return [r for r in rows if r["enabled"] in (1, None)] if enabled_only else rows

    def get_cron(self, cron_id: str) -> Row | None:
        return self.first(t.cron, {"cron_id": cron_id})

    def upsert_cron(
        self,
        cron_id: str,
        pattern: str,
        workflow_path: str,
        enabled: bool,
        next_run_at_ms: int | None,
        timezone: str | None = None,
    ) -> None:
        """Insert a cron row, or update its pattern, path, enabled flag, time zone and next fire time."""
        values = {
            "pattern": pattern,
            "workflow_path": workflow_path,
            "enabled": int(enabled),
            "next_run_at_ms": next_run_at_ms,
            "timezone": timezone,
        }
        if self.update(t.cron, {"cron_id": cron_id}, values) == 0:
            self.insert(t.cron, {"cron_id": cron_id, **values, "created_at_ms": now_ms()})

    def delete_cron(self, cron_id: str) -> bool:
        return self.delete(t.cron, {"cron_id": cron_id}) > 0

    def claim_cron_fire(
        self, cron_id: str, expected_next: int | None, last_run_at_ms: int, next_run_at_ms: int
    ) -> bool:
        """Move a due cron to its next fire time; only one of two racing schedulers gets True."""
        return (
            self.update(
                t.cron,
                {"cron_id": cron_id, "next_run_at_ms": expected_next},
                {"last_run_at_ms": last_run_at_ms, "next_run_at_ms": next_run_at_ms},
            )
            == 1
        )

    def set_cron_error(self, cron_id: str, error: str | None) -> None:
        self.change(t.cron, {"cron_id": cron_id}, {"error_json": error})

    def update_cron_fields(self, cron_id: str, **values: Any) -> None:
        self.change(t.cron, {"cron_id": cron_id}, values)

    # ---- tokens -----------------------------------------------------------------------------
    def insert_token(self, **values: Any) -> None:
        self.insert(t.tokens, values)

    def list_tokens(self) -> list[Row]:
        """Every stored token, oldest first."""
        return self.select(t.tokens, {}, ("created_at_ms", "token_id"))

    def get_token(self, token_id: str) -> Row | None:
        return self.first(t.tokens, {"token_id": token_id})

    def find_token(self, token_hash: str) -> Row | None:
        return self.first(t.tokens, {"token_hash": token_hash})

    def revoke_token(self, token_id: str, revoked_at_ms: int) -> None:
        self.change(t.tokens, {"token_id": token_id}, {"revoked_at_ms": revoked_at_ms})


EVENTS_CHANNEL: Final = "smithers_events"
"""The PostgreSQL notification channel that says "some run has new events" (no payload is relied on)."""
LISTEN_STOP_CHECK_S: Final = 0.05
"""How often a ``LISTEN`` waiting for notifications looks at its stop flag (closing a gateway waits for it)."""


class Store:
    """A database of runs, opened from a path or URL, migrated to the newest schema on open."""

    def __init__(self, db: str | None = None, *, migrate_schema: bool = True):
        self.url = resolve_url(db)
        self.dialect = dialect_for(self.url)
        self._sqlite = self.dialect.name == "sqlite"
        self.bus = EventBus()
        self.notify_events = False
        """Wake the processes that follow other processes' events at each commit (PostgreSQL)."""
        self._local = threading.local()
        self._raws: list[Any] = []
        self._raws_lock = threading.Lock()
        try:
            self.engine = self.dialect.create_engine(self.url)
            if migrate_schema:
                migrate(self.engine)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot open database {self.display_url}: {_reason(exc)}") from exc
        self.sql = SqlCache(self.engine.dialect)
        self._statements: dict[Any, tuple[Statement, dict[str, Any]]] = {}

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for messages."""
        engine = getattr(self, "engine", None)
        return engine.url.render_as_string(hide_password=True) if engine is not None else self.url

    @property
    def is_postgres(self) -> bool:
        return self.dialect.name == "postgresql"

    def wait_for_notifications(self, stop: threading.Event, wake: Callable[[], None], timeout_s: float = 1.0) -> None:
        """Call ``wake`` whenever another connection commits events (PostgreSQL ``LISTEN``), until
        ``stop`` is set (noticed within :data:`LISTEN_STOP_CHECK_S`; ``timeout_s`` is the wait before
        listening again after an error). Blocking: run it in a thread of its own. Returns at once on
        SQLite."""
        if not self.is_postgres:
            return
        import psycopg

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, application_name="smithers-listen") as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    wake()  # what was committed while not listening
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_STOP_CHECK_S, stop_after=1):
                            wake()
            except Exception:
                if not stop.is_set():
                    stop.wait(timeout_s)  # the database went away: listen again once it is back

    def _raw(self) -> Any:
        raw = getattr(self._local, "raw", None)
        if raw is not None:
            return raw
        if raw is None:
            try:
                raw = self.engine.raw_connection()
            except SQLAlchemyError as exc:
                raise DatabaseError(f"cannot open database {self.display_url}: {_reason(exc)}") from exc
            self._local.raw = raw
            with self._raws_lock:
                self._raws.append(raw)
        return raw

    def _cursor(self) -> Any:
        """This thread's cursor (one per connection, reused by every transaction on it)."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._raw().cursor()
        return cur

    def _prepared(self) -> Prepared:
        """The statements this thread's connection has prepared for batches."""
        prepared = getattr(self._local, "prepared", None)
        if prepared is None:
            prepared = self._local.prepared = Prepared()
        return prepared

    def _forget_prepared(self, in_transaction: bool = False) -> None:
        """After a rollback, which makes psycopg deallocate every prepared statement (when it has
        some of its own): deallocate the batches' too, then forget them, so the server keeps none
        that no one uses and no batch names one it dropped."""
        prepared = getattr(self._local, "prepared", None)
        if prepared is not None and prepared.names:
            prepared.clear()
            with suppress(Exception):
                self._cursor().execute("DEALLOCATE ALL")  # (psycopg forgets its own when it sees this)
                if not in_transaction:
                    self._raw().commit()  # (the statement opened one)

    def statement(self, key: Any, build: Callable[[], ClauseElement]) -> tuple[Statement, dict[str, Any]]:
        """A cached statement in libpq's form for batches, and its default parameter values."""
        found = self._statements.get(key)
        if found is None:
            sql, _, defaults = self.sql.get(key, build)
            found = self._statements[key] = (Statement(sql), defaults)
        return found

    def lock_run(self, tx: Tx, run_id: str) -> None:
        """Serialise writers of one run's sequences (events, signals) inside ``tx``."""
        if self.is_postgres:
            tx.sync()
            tx.cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (run_id,))

    def _begin(self, write: bool, pipelined: bool = False) -> tuple[Tx, bool]:
        """The transaction to use: a new one, or the one already open on this thread (joined)."""
        local = self._local
        outer: Tx | None = getattr(local, "tx", None)
        if outer is not None:
            if write and not outer.write:
                raise RuntimeError("cannot open a write transaction inside a read transaction")
            return outer, False
        raw = self._raw()
        batch = PgBatch(raw.driver_connection, self._prepared()) if pipelined and write and not self._sqlite else None
        tx = Tx(self, raw, write, batch)
        if self._sqlite:
            tx.cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        local.tx = tx
        return tx, True

    def _finish(self, tx: Tx, ok: bool) -> None:
        """Commit (a write that went well) or end the transaction, then publish its events."""
        self._local.tx = None
        commit = ok and tx.write
        if commit and (tx.events or tx._unwritten):
            try:
                tx._send_events()
                if tx.batch is None:
                    tx._number_events()
                tx.record_activity()
            except BaseException:
                self._rollback_quietly(tx)
                raise
        try:
            if self._sqlite:
                tx.cur.execute("COMMIT" if commit else "ROLLBACK")
            elif commit:
                if tx.batch is not None and tx.batch.queue:
                    tx.sync(commit=True)  # the writes and the commit in one round trip
                else:
                    tx.raw.commit()
                tx._number_events()
            elif tx.write or not ok:
                self._rollback(tx)
            else:
                # A read ends with COMMIT: the same for a transaction that wrote nothing, and unlike
                # ROLLBACK it keeps psycopg's prepared statements (a rollback deallocates them all).
                tx.raw.commit()
        except Exception:
            if commit:
                self._rollback_quietly(tx)
                raise
        if ok and tx.events:
            self.bus.publish(tx.events)

    def _rollback_quietly(self, tx: Tx) -> None:
        with suppress(Exception):
            if self._sqlite:
                tx.cur.execute("ROLLBACK")
            else:
                self._rollback(tx)

    def _rollback(self, tx: Tx) -> None:
        """``ROLLBACK`` on PostgreSQL (what a batch queued is dropped unsent)."""
        if tx.batch is not None:
            tx.batch.queue.clear()
        tx.raw.rollback()
        self._forget_prepared()

    def read(self) -> AbstractContextManager[Tx]:
        """A read transaction (a consistent view)."""
        return _Transaction(self, write=False)

    def write(self, *, pipelined: bool = False) -> AbstractContextManager[Tx]:
        """A write transaction; its events are published once it commits.

        ``pipelined`` (PostgreSQL; ignored on SQLite): writes whose result the code does not read
        are queued and sent together (:mod:`smithers.store.pgbatch`) before the next read and with
        the commit, so a transaction of N of them waits for the server once instead of N times.
        The price: a write's error is raised when the batch is sent (a read, a row count, a
        savepoint's end, the commit), not by the call that queued it — use it for the engine's own
        steps, whose values are checked before they are written, not for writes of a client's input."""
        return _Transaction(self, write=True, pipelined=pipelined)

    def get_run(self, run_id: str) -> Row | None:
        with self.read() as tx:
            return tx.get_run(run_id)

    def close(self) -> None:
        with self._raws_lock:
            for raw in self._raws:
                with suppress(Exception):
                    raw.close()
            self._raws.clear()
        self._local = threading.local()
        self.engine.dispose()


class _Transaction(AbstractContextManager[Tx]):
    """``with store.read() as tx`` / ``with store.write() as tx`` (a class: cheaper than a generator)."""

    __slots__ = ("_owned", "_pipelined", "_store", "_tx", "_write")

    def __init__(self, store: Store, write: bool, pipelined: bool = False):
        self._store = store
        self._write = write
        self._pipelined = pipelined
        self._owned = False

    def __enter__(self) -> Tx:
        self._tx, self._owned = self._store._begin(self._write, self._pipelined)
        return self._tx

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._owned:
            self._store._finish(self._tx, ok=kind is None)


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]
