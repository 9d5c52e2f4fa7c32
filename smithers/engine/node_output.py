"""What one node produced: its output row, or why there is none, and the shape of its output model
(docs/protocol.md#getnodeoutput--devtoolsgetnodeoutput).

The output model lives in the workflow's code, so the run's tree is rendered from its stored state
(read only) to find the node and its model. A node without a model (E29 in docs/engine.md) has any
JSON value as its output and a schema with no fields.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from pydantic import BaseModel

from smithers.engine.dsl import Approval, Task, WaitForEvent
from smithers.engine.runner import view_stored
from smithers.engine.states import FAILED
from smithers.engine.transcript import agent_transcript
from smithers.engine.workflow import Workflow
from smithers.errors import (
    IterationNotFound,
    MalformedOutputRow,
    NodeHasNoOutput,
    NodeNotFound,
    PayloadTooLarge,
    SmithersError,
)
from smithers.store.rows import loads
from smithers.store.store import Row, Store

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES: Final = 100 * 1024 * 1024
PRODUCED: Final = "produced"
PENDING_OUTPUT: Final = "pending"
FAILED_OUTPUT: Final = "failed"
RECORD_DESCRIPTION: Final = "A record: any string keys, each with a value of the described type."
_JSON_TYPES: Final = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "array": "array",
    "object": "object",
    "null": "null",
}


class ApprovalDecision(BaseModel):
    """The output of an ``Approval`` node (docs/engine.md#approvals-waits-and-timers)."""

    approved: bool
    note: str | None = None
    decidedBy: str | None = None
    decidedAt: str | None = None


def node_output(
    store: Store, workflow: Workflow | None, run_id: str, node_id: str, iteration: int | None
) -> dict[str, Any]:
    """``NodeOutputResponse`` of ``node_id`` at ``iteration`` (its latest iteration when None).

    Raises ``NodeNotFound``, ``IterationNotFound``, ``NodeHasNoOutput``, ``MalformedOutputRow`` or
    ``PayloadTooLarge`` as coded :class:`SmithersError` s. The run must exist.
    """
    with store.read() as tx:
        rows = [n for n in tx.list_nodes(run_id) if n["node_id"] == node_id]
        if not rows:
            raise SmithersError(f"Node not found: {node_id}", code=NodeNotFound)
        if iteration is None:
            iteration = max(int(n["iteration"]) for n in rows)
        node = next((n for n in rows if int(n["iteration"]) == iteration), None)
        if node is None:
            raise SmithersError(f"Iteration not found: {iteration}", code=IterationNotFound)
        output = tx.get_output(run_id, node_id, iteration)
        attempts = tx.list_attempts(run_id, node_id, iteration)
        # an agent task's attempts, as ``transcript`` (docs/protocol.md#getnodeoutput--devtoolsgetnodeoutput)
        transcript = agent_transcript(tx, run_id, node_id, iteration)
    table = (node["output_table"] or "").strip()
    if not table:
        raise SmithersError(f"Node {node_id} has no output table.", code=NodeHasNoOutput)
    schema = schema_of(_model_of(store, workflow, run_id, node_id, table))
    answer = _answer(node, output, attempts, schema)
    if transcript:
        answer["transcript"] = transcript
    return answer


def _answer(node: Row, output: Row | None, attempts: list[Row], schema: dict[str, Any]) -> dict[str, Any]:
    if output is not None:
        return {"status": PRODUCED, "row": _row(output["payload_json"]), "schema": schema}
    latest = max(attempts, key=lambda a: int(a["attempt"])) if attempts else None
    failed = node["state"] == FAILED or (latest is not None and (latest["state"] == FAILED or latest["error_json"]))
    if failed:
        beat = latest["heartbeat_data_json"] if latest is not None else None
        partial = loads(beat) if beat else None
        return {
            "status": FAILED_OUTPUT,
            "row": None,
            "schema": schema,
            "partial": partial if isinstance(partial, dict) else None,
        }
    return {"status": PENDING_OUTPUT, "row": None, "schema": schema}


def _row(payload_json: str) -> Any:
    if len(payload_json.encode()) > MAX_OUTPUT_BYTES:
        raise SmithersError(f"Output payload exceeds {MAX_OUTPUT_BYTES} bytes.", code=PayloadTooLarge)
    try:
        return json.loads(payload_json)
    except ValueError as exc:
        raise SmithersError("Output row is not valid JSON.", code=MalformedOutputRow) from exc


def _model_of(store: Store, workflow: Workflow | None, run_id: str, node_id: str, table: str) -> type[BaseModel] | None:
    """The output model of ``node_id``, found in the run's tree rendered from its stored state.

    None for a node without one. A node the tree does not mount any more takes the model of a
    mounted node writing the same table. A table no mounted node writes, or a workflow that is not
    available here, is not registered (``NodeHasNoOutput``), as the reference answers for a table
    its schema registry lacks.
    """
    graph = None
    if workflow is not None:
        try:
            _, graph = view_stored(store, workflow, run_id)
        except Exception:
            log.debug("cannot render run %s to find the model of %s", run_id, node_id, exc_info=True)
    descriptors = graph.descriptors if graph is not None else ()
    by_node = [d for d in descriptors if d.node_id == node_id]
    by_table = [d for d in descriptors if d.output_table == table]
    for d in (*by_node, *by_table):
        if isinstance(d.node, Approval):
            return ApprovalDecision
        if isinstance(d.node, Task | WaitForEvent):
            return d.node.output
    raise SmithersError(f"Output table {table} is not registered.", code=NodeHasNoOutput)


def schema_of(model: type[BaseModel] | None) -> dict[str, Any]:
    """The ``schema`` descriptor of an output model: its fields, from its JSON schema."""
    if model is None:
        return {"fields": []}
    document = model.model_json_schema()
    definitions = document.get("$defs", {})
    required = set(document.get("required", []))
    fields = []
    for name, spec in document.get("properties", {}).items():
        fields.append(_field(name, spec, name in required, definitions))
    return {"fields": fields}


def _field(name: str, spec: dict[str, Any], required: bool, definitions: dict[str, Any]) -> dict[str, Any]:
    variants = spec.get("anyOf") or spec.get("oneOf") or [spec]
    nullable = any(v.get("type") == "null" for v in variants)
    concrete = [v for v in variants if v.get("type") != "null"] or variants
    first = _resolve(concrete[0], definitions)
    out: dict[str, Any] = {
        "name": name,
        "type": _type_of(first) if len(concrete) == 1 else "unknown",
        "optional": not required,
        "nullable": nullable,
    }
    description = spec.get("description") or first.get("description")
    if first.get("type") == "object" and "properties" not in first and "additionalProperties" in first:
        description = description or RECORD_DESCRIPTION
    if description:
        out["description"] = description
    if "enum" in first:
        out["enum"] = list(first["enum"])
    elif "const" in first:
        out["enum"] = [first["const"]]
    return out


def _resolve(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    reference = spec.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        resolved = definitions.get(reference.removeprefix("#/$defs/"), {})
        return resolved if isinstance(resolved, dict) else {}
    return spec


def _type_of(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if isinstance(kind, str):
        return _JSON_TYPES.get(kind, "unknown")
    if "enum" in spec or "const" in spec:
        values = spec.get("enum") or [spec.get("const")]
        kinds = {type(v) for v in values}
        if kinds <= {str}:
            return "string"
        if kinds <= {int, float}:
            return "number"
        if kinds <= {bool}:
            return "boolean"
    if "properties" in spec:
        return "object"
    return "unknown"
