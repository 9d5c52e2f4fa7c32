"""Gateway settings, workflow registrations and UI mount config (docs/protocol.md#quick-reference)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from smithers.engine.agent import TOOLS_POLICIES
from smithers.engine.runner import DEFAULT_MAX_CONCURRENCY
from smithers.engine.workflow import Workflow
from smithers.errors import InvalidInputError
from smithers.gateway.jsvalues import js_trim
from smithers.gateway.protocol import (
    DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_EVENT_WINDOW_SIZE,
    DEFAULT_FEATURES,
    DEFAULT_HEADERS_TIMEOUT_MS,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PROTOCOL,
    DEFAULT_REQUEST_TIMEOUT_MS,
    positive_int,
)

JS_NAMES: Final[Mapping[str, str]] = {
    "protocol": "protocol",
    "features": "features",
    "heartbeatMs": "heartbeat_ms",
    "auth": "auth",
    "defaults": "defaults",
    "maxBodyBytes": "max_body_bytes",
    "maxPayload": "max_payload",
    "maxConnections": "max_connections",
    "eventWindowSize": "event_window_size",
    "headersTimeout": "headers_timeout",
    "requestTimeout": "request_timeout",
    "ui": "ui",
    "maxConcurrency": "max_concurrency",
    "connectTimeoutMs": "connect_timeout_ms",
    "maxBufferedBytes": "max_buffered_bytes",
}
"""JavaScript option name → keyword of :class:`GatewayOptions`."""

_POSITIVE: Final = (
    "max_body_bytes",
    "max_payload",
    "max_connections",
    "event_window_size",
    "headers_timeout",
    "request_timeout",
    "max_concurrency",
    "connect_timeout_ms",
    "max_buffered_bytes",
)
_UI_PATH: Final = re.compile(r"/[A-Za-z0-9/_:.\-]*")

CONSOLE_PATH: Final = "/console"
"""Mount path of the built-in console (``ui=True``; docs/protocol.md#ui-mounts)."""
CONSOLE_TITLE: Final = "Smithers console"
CONSOLE_ENTRY: Final = "app.js"
"""The console's browser entry, a file of its directory."""
CONSOLE_DIR_ENV: Final = "SMITHERS_CONSOLE_DIR"
"""Development aid: serve the console from this directory instead of the one shipped in the package."""


@dataclass(frozen=True)
class GatewayOptions:
    """Every gateway option and its default (times in milliseconds)."""

    protocol: int = DEFAULT_PROTOCOL
    """Advertised in hello and /health, and negotiated on connect."""
    features: tuple[str, ...] = DEFAULT_FEATURES
    """Advertised only."""
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    """Interval of ``tick`` events on authenticated WebSockets (not validated; <= 0 sends none)."""
    auth: Mapping[str, Any] | None = None
    """``None`` (open), or ``{"mode": "token"|"jwt"|"trusted-proxy", ...}`` (docs/protocol.md#authentication)."""
    defaults: Mapping[str, Any] | None = None
    """``{"cliAgentTools": "all"|"explicit-only"}``: the default of the runs' CLI agents that do not
    name their own tools policy (``config_json.cliAgentToolsDefault``)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_payload: int = DEFAULT_MAX_PAYLOAD
    """Largest WebSocket message; a larger one closes the socket with 1009."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    event_window_size: int = DEFAULT_EVENT_WINDOW_SIZE
    """Run events kept per run for ``streamRunEvents`` replay."""
    headers_timeout: int = DEFAULT_HEADERS_TIMEOUT_MS
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT_MS
    ui: Mapping[str, Any] | bool | None = None
    """Gateway-level UI mount: a UI config, or ``True`` for the built-in console at ``/console``."""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Tasks one run executes at once (ours; not a 0.18.0 option)."""
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    """A WebSocket that has not completed ``connect`` by then is closed (1008)."""
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    """Bytes one WebSocket client may leave unread; past it the socket is closed (1013 slow consumer)."""

    @classmethod
    def build(cls, **options: Any) -> GatewayOptions:
        """Options from keywords (snake_case or the JavaScript names), validated."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            key = JS_NAMES.get(name, name)
            if key not in known:
                raise TypeError(f"unknown gateway option: {name}")
            if value is not None:
                values[key] = value
        js_name = {snake: js for js, snake in JS_NAMES.items()}
        for key in _POSITIVE:
            if key in values:
                value = values[key]
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise InvalidInputError(f"{js_name[key]} must be a finite number greater than 0.")
                values[key] = positive_int(value, js_name[key])
        if "features" in values:
            values["features"] = tuple(str(f) for f in values["features"])
        tools = (values.get("defaults") or {}).get("cliAgentTools")
        if tools is not None and tools not in TOOLS_POLICIES:
            raise InvalidInputError(f"defaults.cliAgentTools must be 'all' or 'explicit-only', not {tools!r}")
        heartbeat = values.get("heartbeat_ms")
        if heartbeat is not None and (isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float)):
            values.pop("heartbeat_ms")
        return cls(**values)

    @staticmethod
    def from_js(options: Mapping[str, Any]) -> dict[str, Any]:
        """JavaScript-style options as keywords for :meth:`build`."""
        return {JS_NAMES.get(name, name): value for name, value in options.items()}


@dataclass(frozen=True)
class UiMount:
    """A resolved UI config: absolute entry, normalised mount path, optional title and props."""

    entry: str
    path: str
    title: str | None = None
    props: Mapping[str, Any] = field(default_factory=dict)
    files: str | None = None
    """A directory whose files are served under the asset base (the built-in console's only)."""


def resolve_ui(config: Mapping[str, Any] | None, default_path: str) -> UiMount | None:
    """Validate and normalise a UI config; invalid configs raise ``INVALID_INPUT``."""
    if config is None:
        return None
    entry = config.get("entry") if isinstance(config, Mapping) else None
    if not isinstance(entry, str) or not js_trim(entry):
        raise InvalidInputError("Gateway UI config requires a non-empty entry path.")
    raw_path = config.get("path")
    candidate = js_trim(raw_path) if isinstance(raw_path, str) and js_trim(raw_path) else default_path
    if not candidate.startswith("/"):
        candidate = "/" + candidate
    if len(candidate) > 1:
        candidate = candidate.rstrip("/")
    if _UI_PATH.fullmatch(candidate) is None:
        raise InvalidInputError(f"Gateway UI path is invalid: {candidate}")
    title = config.get("title")
    props = config.get("props")
    return UiMount(
        os.path.abspath(entry),
        candidate,
        title if isinstance(title, str) else None,
        props if isinstance(props, dict) else {},
    )


def console_dir() -> str:
    """The console's directory: ``$SMITHERS_CONSOLE_DIR``, else ``smithers/console`` of the package."""
    configured = os.environ.get(CONSOLE_DIR_ENV)
    return os.path.abspath(configured) if configured else str(Path(__file__).resolve().parent.parent / "console")


def resolve_gateway_ui(config: Mapping[str, Any] | bool | None) -> UiMount | None:
    """The gateway-level UI: ``True`` mounts the built-in console at ``/console`` (docs/protocol.md#ui-mounts);
    ``None``/``False`` none; a config is resolved as :func:`resolve_ui` does, at ``/`` by default."""
    if config is True:
        directory = console_dir()
        return UiMount(os.path.join(directory, CONSOLE_ENTRY), CONSOLE_PATH, CONSOLE_TITLE, {}, directory)
    if config is None or config is False:
        return None
    return resolve_ui(config, "/")


@dataclass(frozen=True)
class Registration:
    """A registered workflow with its schedule, webhook and UI (kept for their modules)."""

    key: str
    workflow: Workflow
    schedule: str | None = None
    """A cron pattern (validated when the gateway listens)."""
    timezone: str | None = None
    """The schedule's IANA time zone; None: the server's local time zone."""
    webhook: Mapping[str, Any] | None = None
    ui: UiMount | None = None

    @property
    def ui_path(self) -> str | None:
        return None if self.ui is None else self.ui.path

    @staticmethod
    def default_ui_path(key: str) -> str:
        """``/workflows/<encodeURIComponent(key)>``."""
        return "/workflows/" + quote(key, safe="-_.!~*'()")
