"""``ctx``: what a render function and a compute task see of their run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from smithers.errors import MISSING_OUTPUT, SmithersError

M = TypeVar("M", bound=BaseModel)


@dataclass
class StoredOutput:
    """One persisted output row as the render sees it."""

    node_id: str
    iteration: int
    table: str
    payload: Any


@dataclass
class ReadLog:
    """What a render read of the run's outputs: a later output it did not read cannot change the tree."""

    node_ids: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)

    def depends_on(self, node_id: str, table: str) -> bool:
        return node_id in self.node_ids or table in self.tables


@dataclass
class Ctx:
    """Durable state of a run, handed to the render function on every frame and to compute tasks.

    ``output``/``output_maybe`` default to the current iteration of the node's own loop for nodes
    inside a loop and to iteration 0 for nodes outside any loop, so a loop body can read a node
    that ran before it, and an inner loop a node of its outer loop.
    """

    input: dict[str, Any]
    run_id: str
    iteration: int = 0
    iterations: dict[str, int] = field(default_factory=dict)
    auth: dict[str, Any] | None = None
    outputs_by_key: Mapping[tuple[str, int], StoredOutput] = field(default_factory=dict)
    loop_of: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0
    last_heartbeat: Any = None
    reads: ReadLog | None = None

    def _resolve(self, model_or_node: type[BaseModel] | str, node_id: str | None) -> tuple[type[BaseModel] | None, str]:
        if isinstance(model_or_node, str):
            if node_id is not None:  # ("table", "node") form: the table name is informational
                return None, node_id
            return None, model_or_node
        if node_id is None:
            raise TypeError("ctx.output(Model, node_id): node_id is required with a model")
        return model_or_node, node_id

    def _find(self, node_id: str, iteration: int | None) -> StoredOutput | None:
        if self.reads is not None:
            self.reads.node_ids.add(node_id)
        if iteration is None:
            ralph_id = self.loop_of.get(node_id)
            iteration = 0 if ralph_id is None else self.iterations.get(ralph_id, self.iteration)
        return self.outputs_by_key.get((node_id, iteration))

    @overload
    def output_maybe(self, model_or_node: type[M], node_id: str, iteration: int | None = None) -> M | None: ...
    @overload
    def output_maybe(self, model_or_node: str, node_id: str | None = None, iteration: int | None = None) -> Any: ...

    def output_maybe(self, model_or_node: Any, node_id: str | None = None, iteration: int | None = None) -> Any:
        """The output of ``node_id`` (as ``Model`` when given one), or None if it has none yet."""
        model, nid = self._resolve(model_or_node, node_id)
        row = self._find(nid, iteration)
        if row is None or row.payload is None:  # None: a task that returned nothing, a wait that timed out
            return None
        return model.model_validate(row.payload) if model is not None else row.payload

    @overload
    def output(self, model_or_node: type[M], node_id: str, iteration: int | None = None) -> M: ...
    @overload
    def output(self, model_or_node: str, node_id: str | None = None, iteration: int | None = None) -> Any: ...

    def output(self, model_or_node: Any, node_id: str | None = None, iteration: int | None = None) -> Any:
        """The output of ``node_id``; raises ``MISSING_OUTPUT`` if it has none (yet, or at all: a task
        that returned None, a wait that timed out with ``on_timeout="continue"``)."""
        value = self.output_maybe(model_or_node, node_id, iteration)
        if value is None:
            _, nid = self._resolve(model_or_node, node_id)
            raise SmithersError(f"No output for node {nid!r} yet", code=MISSING_OUTPUT, details={"nodeId": nid})
        return value

    def latest(self, model_or_node: Any, node_id: str | None = None) -> Any:
        """The output of the highest iteration of ``node_id``, or None."""
        model, nid = self._resolve(model_or_node, node_id)
        if self.reads is not None:
            self.reads.node_ids.add(nid)
        rows = [row for (n, _), row in self.outputs_by_key.items() if n == nid]
        if not rows:
            return None
        row = max(rows, key=lambda r: r.iteration)
        if row.payload is None:
            return None
        return model.model_validate(row.payload) if model is not None else row.payload

    def iteration_count(self, model_or_node: Any, node_id: str | None = None) -> int:
        """How many iterations of ``node_id`` have an output."""
        _, nid = self._resolve(model_or_node, node_id)
        if self.reads is not None:
            self.reads.node_ids.add(nid)
        return len({it for (n, it) in self.outputs_by_key if n == nid})

    def outputs(self, table: str) -> list[Any]:
        """Every output payload of a table (the output model's snake_case name) for this run."""
        if self.reads is not None:
            self.reads.tables.add(table)
        rows = sorted(self.outputs_by_key.values(), key=lambda r: (r.node_id, r.iteration))
        return [r.payload for r in rows if r.table == table]
