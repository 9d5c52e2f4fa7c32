"""``POST /webhooks/{workflowKey}``: signed deliveries that signal waiting runs or start new ones
(docs/protocol.md#webhooks).

Verification happens before anything is parsed or stored: a bad signature, a body over the limit
or malformed JSON is refused with no side effect.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from smithers.engine import control
from smithers.engine.pending import pending_waits
from smithers.engine.runner import auth_context
from smithers.engine.signal_check import check_signal
from smithers.engine.states import TERMINAL_RUN_STATUSES, WAITING_EVENT
from smithers.errors import (
    INVALID_INPUT,
    INVALID_REQUEST,
    NOT_FOUND,
    SERVER_ERROR,
    UNAUTHORIZED,
    GatewayError,
    InvalidInputError,
    SmithersError,
)
from smithers.gateway.context import GatewayContext
from smithers.gateway.dispatch import internal_error, wire_error
from smithers.gateway.jsvalues import loads_strict
from smithers.gateway.protocol import payload_too_large, validate_run_input, webhook_error_body
from smithers.gateway.responses import BodyTooLarge, json_response, read_body
from smithers.gateway.shapes import stored_workflow_key
from smithers.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE_HEADER: Final = "x-hub-signature-256"
DEFAULT_SIGNATURE_PREFIX: Final = "sha256="
MAX_MATCHED_RUNS: Final = 1000
UNKNOWN_KEY: Final = "unknown"


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
    """Whether one of the run's open waits accepts this signal."""
    with store.read() as tx:
        return any(wait.accepts(signal_name, correlation_id) for wait in pending_waits(tx, run_id))


class WebhookRejected(Exception):
    """A refused delivery: the wire error plus the reject reason used in metrics."""

    def __init__(self, error: GatewayError, reason: str):
        super().__init__(error.message)
        self.error = error
        self.reason = reason


def _reject(code: str, message: str, reason: str) -> WebhookRejected:
    return WebhookRejected(GatewayError(code, message), reason)


async def handle_webhook(ctx: GatewayContext, key: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Process one delivery; returns the 200 payload or raises :class:`WebhookRejected`."""
    reg = ctx.workflows.get(key)
    if reg is None:
        raise _reject(NOT_FOUND, f"Unknown workflow: {key}", "workflow_not_found")
    if not reg.webhook:
        raise _reject(NOT_FOUND, f"Webhook not configured for workflow: {key}", "not_configured")
    config = WebhookConfig.parse(reg.webhook)
    if not config.secret:
        raise _reject(SERVER_ERROR, "Webhook secret is not configured", "not_configured")
    if not config.signal_name and not config.run_enabled:
        raise _reject(INVALID_REQUEST, "Webhook config must enable signal delivery or run creation", "misconfigured")
    if len(body) > ctx.options.max_body_bytes:
        raise WebhookRejected(payload_too_large(ctx.options.max_body_bytes), "invalid_payload")
    try:
        verify_signature(config, headers, body)
    except GatewayError as exc:
        raise WebhookRejected(exc, "invalid_signature") from exc
    ctx.metrics.webhooks_verified.labels(key).inc()
    try:
        payload = loads_strict(body.decode("utf-8")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise _reject(INVALID_INPUT, "Webhook payload must be valid JSON.", "invalid_payload") from exc

    auth = auth_context(f"webhook:{key}", ["*"], "system")
    delivered: list[dict[str, Any]] = []
    matched: list[str] = []
    if config.signal_name:
        correlation = as_id(select_path(payload, config.correlation_id_path))
        explicit = as_id(select_path(payload, config.run_id_path)) if config.run_id_path else None
        signal_payload = select_path(payload, config.payload_path)
        for run_id in _candidate_runs(ctx.store, key, explicit):
            if waits_for(ctx.store, run_id, config.signal_name, correlation):
                matched.append(run_id)
        for run_id in matched:  # nothing is stored unless every matched wait takes the payload
            try:
                check_signal(ctx.store, reg.workflow, run_id, config.signal_name, correlation, signal_payload)
            except InvalidInputError as exc:
                raise _reject(INVALID_INPUT, exc.message, "invalid_payload") from exc
        for run_id in matched:
            record = control.signal_run(
                ctx.store,
                run_id,
                config.signal_name,
                signal_payload,
                correlation_id=correlation,
                received_by=auth["triggeredBy"],
            )
            delivered.append(record)
            await ctx.resume_if_needed(run_id, auth)
    started = None
    if not delivered and config.run_enabled:
        raw_input = select_path(payload, config.input_path)
        run_input = raw_input if isinstance(raw_input, dict) else {"payload": raw_input}
        try:
            run_input = reg.workflow.validate_input(validate_run_input(run_input))
        except GatewayError as exc:
            raise WebhookRejected(exc, "invalid_payload") from exc
        except InvalidInputError as exc:
            raise _reject(INVALID_INPUT, exc.message, "invalid_payload") from exc
        started = await ctx.start_run(key, run_input, auth=auth)
    return {
        "ok": True,
        "workflow": key,
        "verified": True,
        "delivered": delivered,
        "matchedRunIds": matched,
        "started": started,
    }


async def handle(ctx: GatewayContext, request: Request, key: str) -> Response:
    """Serve ``POST /webhooks/{key}`` with the webhook route's own ``{ok, error}`` envelope."""
    # Anyone can post to any key: a key that names no workflow is counted as "unknown", so posts
    # cannot create metric series without bound (docs/protocol.md#departures-from-0180).
    label = key if key in ctx.workflows else UNKNOWN_KEY
    ctx.metrics.webhooks_received.labels(label).inc()
    try:
        try:
            body = await read_body(request.receive, ctx.options.max_body_bytes)
        except BodyTooLarge as exc:
            raise WebhookRejected(payload_too_large(ctx.options.max_body_bytes), "invalid_payload") from exc
        if body is None:
            return Response(status_code=400)
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in reversed(request.scope.get("headers", []))
        }  # first value wins
        result = await handle_webhook(ctx, key, headers, body)
    except WebhookRejected as exc:
        ctx.metrics.webhooks_rejected.labels(label, exc.reason).inc()
        return json_response(webhook_error_body(exc.error), exc.error.http_status)
    except SmithersError as exc:  # a run that cannot start (400), or the engine's own failure (500)
        reason = "invalid_payload" if exc.http_status < 500 else "server_error"
        ctx.metrics.webhooks_rejected.labels(label, reason).inc()
        return json_response(webhook_error_body(wire_error(exc)), exc.http_status)
    except Exception as exc:
        ctx.metrics.webhooks_rejected.labels(label, "server_error").inc()
        error = internal_error(f"webhook {key}", exc)
        return json_response(webhook_error_body(error), error.http_status)
    return json_response(result)


def _candidate_runs(store: Store, key: str, explicit: str | None) -> list[str]:
    """Active runs of workflow ``key`` a delivery may signal: the one it names, else the waiting ones.

    A webhook speaks for its own workflow only: runs of other workflows are never signalled.
    """
    with store.read() as tx:
        if explicit is not None:
            row = tx.get_run(explicit)
            if row is None or row["status"] in TERMINAL_RUN_STATUSES or stored_workflow_key(row) != key:
                return []
            return [explicit]
        rows = tx.list_runs_in([WAITING_EVENT], MAX_MATCHED_RUNS)
        return [r["run_id"] for r in rows if stored_workflow_key(r) == key]
