"""``POST /webhooks/{workflowKey}``: signed deliveries that signal waiting runs or start new ones (spec §15.2–§15.3).

Verification happens before anything is parsed or stored: a bad signature, a body over the limit
or malformed JSON is refused with no side effect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from smithers.engine import control
from smithers.engine.runner import auth_context
from smithers.engine.states import TERMINAL_RUN_STATUSES, WAITING_EVENT
from smithers.gateway.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    SERVER_ERROR,
    UNAUTHORIZED,
    GatewayError,
)
from smithers.gateway.protocol import payload_too_large, validate_run_input
from smithers.store.store import Store

DEFAULT_SIGNATURE_HEADER = "x-hub-signature-256"
DEFAULT_SIGNATURE_PREFIX = "sha256="
MAX_MATCHED_RUNS = 1000


@dataclass(frozen=True)
class WebhookConfig:
    """A workflow's webhook settings (the ``webhook=`` of ``Gateway.register``)."""

    secret: str
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    signature_prefix: str = DEFAULT_SIGNATURE_PREFIX
    signal_name: str | None = None
    correlation_id_path: str | None = None
    run_id_path: str | None = None
    payload_path: str | None = None
    run_enabled: bool = True
    input_path: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> WebhookConfig:
        """Read the JavaScript-shaped config: ``{secret, signatureHeader, signaturePrefix, signal:{…}, run:{…}}``."""
        signal = raw.get("signal") or {}
        run = raw.get("run")
        header = raw.get("signatureHeader") or raw.get("signature_header") or DEFAULT_SIGNATURE_HEADER
        prefix = raw.get("signaturePrefix", raw.get("signature_prefix", DEFAULT_SIGNATURE_PREFIX))
        return cls(
            secret=str(raw.get("secret") or "").strip(),
            signature_header=str(header).strip().lower(),
            signature_prefix="" if prefix is None else str(prefix),
            signal_name=(str(signal.get("name")).strip() or None) if signal.get("name") else None,
            correlation_id_path=signal.get("correlationIdPath"),
            run_id_path=signal.get("runIdPath"),
            payload_path=signal.get("payloadPath"),
            run_enabled=True if run is None else run.get("enabled", True) is not False,
            input_path=(run or {}).get("inputPath"),
        )


class WebhookHost(Protocol):
    """What the webhook handler needs from the gateway."""

    store: Store
    max_body_bytes: int

    def webhook_config(self, key: str) -> WebhookConfig | bool | None:
        """False: unknown workflow; None: registered without a webhook."""

    def start_run(self, key: str, input: dict[str, Any], auth: dict[str, Any]) -> Awaitable[str]:
        """Start a run of ``key``; returns its id."""

    def resume_run_if_needed(self, run_id: str, auth: dict[str, Any]) -> Awaitable[None]:
        """Resume a run after a signal (spec §10.3)."""


def select_path(payload: Any, path: str | None) -> Any:
    """Dotted path into JSON (array segments are indices). A missing or blank path selects everything."""
    if path is None or not str(path).strip():
        return payload
    current = payload
    for segment in (s for s in str(path).split(".") if s):
        if isinstance(current, list):
            if not segment.isdigit() or int(segment) >= len(current):
                return None
            current = current[int(segment)]
        elif isinstance(current, dict):
            if segment not in current:
                return None
            current = current[segment]
        else:
            return None
    return current


def as_id(value: Any) -> str | None:
    """An id extracted from JSON: trimmed non-empty strings, finite numbers, booleans; else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and math.isfinite(value):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return None


def verify_signature(config: WebhookConfig, headers: Mapping[str, str], body: bytes) -> None:
    """HMAC-SHA256 of the raw body, compared in constant time with the signature header."""
    given = headers.get(config.signature_header, "")
    digest = hmac.new(config.secret.encode(), body, hashlib.sha256).hexdigest()
    expected = config.signature_prefix + digest
    if len(given) != len(expected) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise GatewayError(UNAUTHORIZED, "Webhook signature verification failed")


def waits_for(store: Store, run_id: str, signal_name: str, correlation_id: str | None) -> bool:
    """A run waits for the signal when one of its waiting-event nodes' wait matches it.

    As for ``submitSignal`` (spec §23 D3), a wait with no correlation id accepts the signal whatever
    its correlation id; a wait with one needs an equal one.
    """
    with store.read() as tx:
        nodes = [n for n in tx.list_nodes(run_id) if n["state"] == WAITING_EVENT]
        for node in nodes:
            attempts = tx.list_attempts(run_id, node["node_id"], node["iteration"])
            waiting = [a for a in attempts if a["state"] == WAITING_EVENT] or attempts[-1:]
            if not waiting:
                continue
            meta = json.loads(waiting[-1]["meta_json"] or "{}").get("waitForEvent") or {}
            name = str(meta.get("signalName") or "").strip()
            corr = str(meta.get("correlationId") or "").strip() or None
            if name == signal_name and (corr is None or corr == correlation_id):
                return True
    return False


async def handle_webhook(host: WebhookHost, key: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Process one delivery; returns the 200 payload or raises GatewayError (with the spec's status)."""
    config = host.webhook_config(key)
    if config is False:
        raise GatewayError(NOT_FOUND, f"Unknown workflow: {key}")
    if config is None or config is True:
        raise GatewayError(NOT_FOUND, f"Webhook not configured for workflow: {key}")
    if not config.secret:
        raise GatewayError(SERVER_ERROR, "Webhook secret is not configured")
    if not config.signal_name and not config.run_enabled:
        raise GatewayError(INVALID_REQUEST, "Webhook config must enable signal delivery or run creation")
    if len(body) > host.max_body_bytes:
        raise payload_too_large(host.max_body_bytes)
    verify_signature(config, headers, body)
    try:
        payload = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(INVALID_INPUT, "Webhook payload must be valid JSON.") from exc

    auth = auth_context(f"webhook:{key}", ["*"], "system")
    delivered: list[dict[str, Any]] = []
    matched: list[str] = []
    if config.signal_name:
        correlation = as_id(select_path(payload, config.correlation_id_path))
        explicit = as_id(select_path(payload, config.run_id_path)) if config.run_id_path else None
        signal_payload = select_path(payload, config.payload_path)
        for run_id in _candidate_runs(host.store, explicit):
            if waits_for(host.store, run_id, config.signal_name, correlation):
                matched.append(run_id)
        for run_id in matched:
            record = control.signal_run(
                host.store,
                run_id,
                config.signal_name,
                signal_payload,
                correlation_id=correlation,
                received_by=auth["triggeredBy"],
            )
            delivered.append(record)
            await host.resume_run_if_needed(run_id, auth)
    started = None
    if not delivered and config.run_enabled:
        raw_input = select_path(payload, config.input_path)
        run_input = raw_input if isinstance(raw_input, dict) else {"payload": raw_input}
        run_input = validate_run_input(run_input)
        run_id = await host.start_run(key, run_input, auth)
        started = {"runId": run_id, "workflow": key}
    return {
        "ok": True,
        "workflow": key,
        "verified": True,
        "delivered": delivered,
        "matchedRunIds": matched,
        "started": started,
    }


def _candidate_runs(store: Store, explicit: str | None) -> list[str]:
    with store.read() as tx:
        if explicit is not None:
            row = tx.get_run(explicit)
            return [] if row is None or row["status"] in TERMINAL_RUN_STATUSES else [explicit]
        return [r["run_id"] for r in tx.list_runs(limit=MAX_MATCHED_RUNS, status=WAITING_EVENT)]
