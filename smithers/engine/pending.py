"""What a stored run is waiting for, read from its rows (for the gateway, the CLI and the run-state view).

A wait for an event is an attempt in state ``waiting-event`` whose meta holds the wait
(``{"kind": "wait-for-event", "waitForEvent": {...}}``, written by the run loop).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smithers.engine.states import WAITING_EVENT, WAITING_TIMER
from smithers.store.store import Row, Tx


def attempt_meta(attempt: Mapping[str, Any] | None) -> dict[str, Any]:
    """An attempt's ``meta_json`` as a dict (``{}`` when missing or unreadable)."""
    if attempt is None or not attempt.get("meta_json"):
        return {}
    try:
        value = json.loads(attempt["meta_json"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class PendingWait:
    """A ``WaitForEvent`` node of a run that is waiting for its signal."""

    node_id: str
    iteration: int
    signal_name: str
    correlation_id: str | None
    timeout_ms: int | None
    started_at_ms: int | None

    def accepts(self, signal_name: str, correlation_id: str | None) -> bool:
        """Whether a signal resolves this wait.

        A wait with no correlation id accepts a signal of its name whatever its correlation id (a
        deliberate departure, docs/protocol.md#departures-from-0180); a wait with one needs an
        equal one.
        """
        return signal_name == self.signal_name and (
            self.correlation_id is None or self.correlation_id == correlation_id
        )


def _latest_attempt(tx: Tx, run_id: str, node: Row) -> Row | None:
    attempts = tx.list_attempts(run_id, node["node_id"], node["iteration"])
    waiting = [a for a in attempts if a["state"] == WAITING_EVENT]
    found = waiting or attempts
    return max(found, key=lambda a: a["attempt"]) if found else None


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def pending_waits(tx: Tx, run_id: str) -> list[PendingWait]:
    """The run's waits for events that are still open, in node order."""
    out = []
    for node in tx.list_nodes(run_id):
        if node["state"] != WAITING_EVENT:
            continue
        wait = attempt_meta(_latest_attempt(tx, run_id, node)).get("waitForEvent")
        if not isinstance(wait, dict):
            continue
        timeout = wait.get("timeoutMs")
        started = wait.get("startedAtMs")
        out.append(
            PendingWait(
                node_id=node["node_id"],
                iteration=int(node["iteration"] or 0),
                signal_name=_text(wait.get("signalName")) or "",
                correlation_id=_text(wait.get("correlationId")),
                timeout_ms=int(timeout) if isinstance(timeout, int | float) else None,
                started_at_ms=int(started) if isinstance(started, int | float) else None,
            )
        )
    return out


def timer_due_ms(tx: Tx, run_id: str) -> int | None:
    """When the earliest timer a run waits on fires (its ``waiting-timer`` attempts' ``firesAtMs``);
    None when it records none (a retry backoff, say: resume it to know)."""
    due = [
        fires
        for attempt in tx.list_attempts(run_id)
        if attempt["state"] == WAITING_TIMER
        and isinstance(fires := (attempt_meta(attempt).get("timer") or {}).get("firesAtMs"), int | float)
    ]
    return int(min(due)) if due else None
