"""Checking a signal against the waits it would resolve, before it is stored.

The output model of a ``WaitForEvent`` lives in the workflow's code, not in the database, so the
run's tree is rendered from its stored state (read only: render functions are pure) to find the
open waits a signal would reach. A payload their model refuses is refused here, and the run keeps
waiting; otherwise the run would find the signal unusable later (docs/engine.md#approvals-waits-and-timers).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from smithers.engine.dsl import WaitForEvent
from smithers.engine.pending import pending_waits
from smithers.engine.runner import view_stored
from smithers.engine.states import WAITING_EVENT
from smithers.engine.workflow import Workflow
from smithers.errors import InvalidInputError
from smithers.store.store import Store

log = logging.getLogger(__name__)


def check_signal(
    store: Store, workflow: Workflow, run_id: str, signal_name: str, correlation_id: str | None, payload: Any
) -> None:
    """Raise ``INVALID_INPUT`` when an open wait this signal would resolve refuses its payload.

    Runs that wait for nothing of that name, or whose tree cannot be rendered here, are not
    checked (the run itself passes an unusable signal by and keeps waiting).
    """
    name = signal_name.strip() if isinstance(signal_name, str) else ""
    correlation = correlation_id.strip() or None if isinstance(correlation_id, str) else None
    with store.read() as tx:
        waits = [w for w in pending_waits(tx, run_id) if w.accepts(name, correlation)]
        if not waits:
            return
    try:
        loop, graph = view_stored(store, workflow, run_id)
    except Exception:
        log.debug("cannot render run %s to check a signal; the run will check it", run_id, exc_info=True)
        return
    waiting = {(w.node_id, w.iteration) for w in waits}
    for d in graph.descriptors:
        node = d.node
        if not isinstance(node, WaitForEvent) or node.output is None or (d.node_id, d.iteration) not in waiting:
            continue
        if loop.states.get(d.key) != WAITING_EVENT:
            continue
        try:
            node.output.model_validate(payload)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ())) or "payload"
            raise InvalidInputError(
                f"signal {name!r} payload does not match {node.output.__name__} expected by {d.node_id}: "
                f"{where}: {problem.get('msg', 'invalid')}",
                details={
                    "nodeId": d.node_id,
                    "errors": exc.errors(include_url=False, include_context=False, include_input=False),
                },
            ) from exc
