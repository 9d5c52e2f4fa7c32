"""The writes of one PostgreSQL transaction sent together through libpq's pipeline.

See docs/engine.md#durability-and-ownership.

psycopg spends about 50 µs of client CPU on each statement it executes, pipelined or not; a step of
the run loop writes about ten, so that was most of a step's cost. A :class:`PgBatch` queues a
transaction's writes (prepared once per connection) and sends them in one go with libpq's pipeline
(``psycopg.pq``, psycopg's documented libpq wrapper), reading all the answers at the end: a few
microseconds per statement. psycopg is idle meanwhile: the connection is handed back with every
answer read and the pipeline left, in the transaction state the batch left it (open, committed or
failed), which psycopg reads from libpq.
"""

from __future__ import annotations

import contextlib
import re
import select
from collections.abc import Sequence
from typing import Any, Final

from psycopg import errors, pq

_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)s|%s|%%")
COMMAND_OK: Final = pq.ExecStatus.COMMAND_OK
PIPELINE_SYNC: Final = pq.ExecStatus.PIPELINE_SYNC
FATAL_ERROR: Final = pq.ExecStatus.FATAL_ERROR
IDLE: Final = pq.TransactionStatus.IDLE


class Statement:
    """A statement in libpq's form (``$1``…), with the names of its parameters in order (None for
    one written with positional ``%s``)."""

    __slots__ = ("names", "sql")

    def __init__(self, sql: str):
        names: list[str] = []
        positional = 0

        def number(match: re.Match[str]) -> str:
            nonlocal positional
            token = match.group(0)
            if token == "%%":
                return "%"
            if token == "%s":
                positional += 1
                return f"${positional}"
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.sql = _PLACEHOLDER.sub(number, sql).encode()
        self.names: tuple[str, ...] | None = tuple(names) if names else None


class Prepared:
    """The statements one connection has prepared (lost when psycopg deallocates them all: after a rollback)."""

    def __init__(self) -> None:
        self.names: dict[bytes, bytes] = {}
        self._made = 0

    def next_name(self) -> bytes:
        """A name never used on this connection."""
        self._made += 1
        return b"smithers_%d" % self._made

    def clear(self) -> None:
        """Forget every name (the server dropped them: ``DEALLOCATE ALL``)."""
        self.names.clear()


def encode(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text form (every statement casts what it needs)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"1" if value else b"0"  # (an integer column's 0/1; a boolean one reads them too)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"cannot send a {type(value).__name__} to the database")


class Answer:
    """Where a queued statement's result lands once the batch is sent (``result``: a libpq result)."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: Any = None

    @property
    def failed(self) -> bool:
        """Whether the statement itself failed (not one skipped after another's failure)."""
        return self.result is not None and self.result.status == FATAL_ERROR

    def first_value(self) -> int:
        return int(self.result.get_value(0, 0))


class PgBatch:
    """Writes queued for one round trip to the server: :meth:`add`, then :meth:`send`."""

    def __init__(self, conn: Any, prepared: Prepared):
        self.pgconn = conn.pgconn
        self.prepared = prepared
        self.queue: list[tuple[Statement, list[bytes | None], Answer | None]] = []

    def add(self, statement: Statement, params: Sequence[Any], answer: Answer | None = None) -> None:
        """Queue a statement (``answer`` receives its result when the batch is sent)."""
        self.queue.append((statement, [encode(v) for v in params], answer))

    def send(self, commit: bool = False) -> None:
        """Send what is queued (after ``BEGIN`` when no transaction is open; then ``COMMIT`` when
        asked) and wait for every answer, handed to the statements' :class:`Answer`. Raises the
        first statement's error (the server skips what follows it, and the transaction stays failed
        until rolled back)."""
        queue, self.queue = self.queue, []
        pg = self.pgconn
        pg.enter_pipeline_mode()
        try:
            answers: list[Answer | None] = []
            if pg.transaction_status == IDLE:
                pg.send_query_params(b"BEGIN", None)
                answers.append(None)
            names = self.prepared.names
            made: list[tuple[bytes, int]] = []  # (statement, place of its preparation's result)
            for statement, params, answer in queue:
                name = names.get(statement.sql)
                if name is None:
                    name = names[statement.sql] = self.prepared.next_name()
                    pg.send_prepare(name, statement.sql)
                    made.append((statement.sql, len(answers)))
                    answers.append(None)
                pg.send_query_prepared(name, params)
                answers.append(answer)
            if commit:
                pg.send_query_params(b"COMMIT", None)
                answers.append(None)
            pg.pipeline_sync()
            results = self._read_all(pg)
        except BaseException:
            with contextlib.suppress(Exception):  # (a broken connection cannot leave the mode: its error stands)
                pg.exit_pipeline_mode()
            raise
        pg.exit_pipeline_mode()
        failed = None
        for result, answer in zip(results, answers, strict=True):
            if result.status == FATAL_ERROR and failed is None:
                failed = result
            if answer is not None:
                answer.result = result
        if failed is not None:
            for sql, place in made:  # a preparation skipped or refused: prepared again next time
                if results[place].status != COMMAND_OK:
                    del names[sql]
            raise errors.error_from_result(failed)

    @staticmethod
    def _read_all(pg: Any) -> list[Any]:
        """Flush what was sent, then read one result per command until the pipeline's sync point.
        (``poll``, not ``select``: a gateway's connections can take descriptors past 1024.)"""
        poller = select.poll()
        poller.register(pg.socket, select.POLLIN | select.POLLOUT)
        while pg.flush():
            poller.poll()
            pg.consume_input()
        poller.modify(pg.socket, select.POLLIN)
        results: list[Any] = []
        while True:
            while pg.is_busy():
                poller.poll()
                pg.consume_input()
            result = pg.get_result()
            if result is None:
                continue  # the end of one command's results
            if result.status == PIPELINE_SYNC:
                return results
            results.append(result)
