"""Scopes and authorization (docs/protocol.md#scopes): vocabulary, method table and the grant check."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Final

from smithers.errors import FORBIDDEN, GatewayError
from smithers.gateway.jsvalues import js_trim

__all__ = [
    "ALL_SCOPES",
    "APPROVAL_SUBMIT",
    "APPROVE_PSEUDO_METHOD",
    "CONFIG_METHOD_PREFIX",
    "CRON_READ",
    "CRON_WRITE",
    "LEGACY_ADMIN",
    "LEGACY_APPROVE",
    "LEGACY_EXECUTE",
    "LEGACY_LEVELS",
    "LEGACY_READ",
    "METHOD_SCOPES",
    "OBSERVABILITY_READ",
    "RUN_ADMIN",
    "RUN_READ",
    "RUN_WRITE",
    "SIGNAL_SUBMIT",
    "WILDCARD",
    "authorize",
    "forbidden",
    "has_scope",
    "required_scope_for_method",
    "scope_implies",
]

RUN_READ: Final = "run:read"
RUN_WRITE: Final = "run:write"
RUN_ADMIN: Final = "run:admin"
APPROVAL_SUBMIT: Final = "approval:submit"
SIGNAL_SUBMIT: Final = "signal:submit"
CRON_READ: Final = "cron:read"
CRON_WRITE: Final = "cron:write"
OBSERVABILITY_READ: Final = "observability:read"
ALL_SCOPES: Final[tuple[str, ...]] = (
    RUN_READ,
    RUN_WRITE,
    RUN_ADMIN,
    APPROVAL_SUBMIT,
    SIGNAL_SUBMIT,
    CRON_READ,
    CRON_WRITE,
    OBSERVABILITY_READ,
)

WILDCARD: Final = "*"
LEGACY_READ: Final = "read"
LEGACY_EXECUTE: Final = "execute"
LEGACY_APPROVE: Final = "approve"
LEGACY_ADMIN: Final = "admin"
APPROVE_PSEUDO_METHOD: Final = "approve"
"""Pseudo method name an approval's ``allowedScopes`` may list; requires ``approval:submit``."""
CONFIG_METHOD_PREFIX: Final = "config."

_IMPLIED: Final[Mapping[str, frozenset[str]]] = {
    RUN_ADMIN: frozenset({RUN_ADMIN, RUN_WRITE, RUN_READ}),
    RUN_WRITE: frozenset({RUN_WRITE, RUN_READ}),
    CRON_WRITE: frozenset({CRON_WRITE, CRON_READ}),
    **{scope: frozenset({scope}) for scope in (RUN_READ, APPROVAL_SUBMIT, SIGNAL_SUBMIT, CRON_READ)},
    OBSERVABILITY_READ: frozenset({OBSERVABILITY_READ}),
}

_EXECUTE: Final = frozenset({RUN_READ, RUN_WRITE, SIGNAL_SUBMIT, CRON_READ, CRON_WRITE})
LEGACY_LEVELS: Final[Mapping[str, frozenset[str]]] = {
    LEGACY_READ: frozenset({RUN_READ, CRON_READ, OBSERVABILITY_READ}),
    LEGACY_EXECUTE: _EXECUTE,
    LEGACY_APPROVE: _EXECUTE | {APPROVAL_SUBMIT},
    LEGACY_ADMIN: frozenset(ALL_SCOPES),
}
"""Required scopes each 0.16.9 level satisfies (docs/protocol.md#how-grants-match)."""

METHOD_SCOPES: Final[Mapping[str, str]] = {
    **dict.fromkeys(
        (
            "health",
            "runs.list",
            "listRuns",
            "workflows.list",
            "listWorkflows",
            "runs.get",
            "getRun",
            "runs.diff",
            "frames.list",
            "events.list",
            "frames.get",
            "attempts.list",
            "attempts.get",
            "approvals.list",
            "listApprovals",
            "streamRunEvents",
            "getNodeOutput",
            "devtools.getNodeOutput",
            "getNodeDiff",
            "devtools.getNodeDiff",
            "connect",
        ),
        RUN_READ,
    ),
    **dict.fromkeys(
        ("runs.create", "launchRun", "resumeRun", "runs.cancel", "cancelRun", "runs.rerun", "runs.fork"), RUN_WRITE
    ),
    **dict.fromkeys(("jumpToFrame", "devtools.jumpToFrame", "rewindRun", "hijackRun"), RUN_ADMIN),
    **dict.fromkeys(("approvals.decide", "submitApproval", APPROVE_PSEUDO_METHOD), APPROVAL_SUBMIT),
    **dict.fromkeys(("signals.send", "submitSignal"), SIGNAL_SUBMIT),
    **dict.fromkeys(("cron.list", "cronList"), CRON_READ),
    **dict.fromkeys(("cron.add", "cronCreate", "cron.remove", "cronDelete", "cron.trigger", "cronRun"), CRON_WRITE),
    **dict.fromkeys(("getDevToolsSnapshot", "streamDevTools"), OBSERVABILITY_READ),
}
"""Required scope of every known method name, legacy and stable (docs/protocol.md#required-scope-per-method)."""


def required_scope_for_method(method: str) -> str:
    """The scope a method needs (docs/protocol.md#required-scope-per-method); unknown methods need ``run:read``."""
    if method in _IMPLIED:
        return method
    if method.startswith(CONFIG_METHOD_PREFIX):
        return RUN_ADMIN
    return METHOD_SCOPES.get(method, RUN_READ)


def scope_implies(granted: str, required: str) -> bool:
    """Whether one granted entry (scope, legacy level or ``*``) satisfies ``required``."""
    if granted in (WILDCARD, LEGACY_ADMIN):
        return True
    implied = _IMPLIED.get(granted)
    if implied is None:
        implied = LEGACY_LEVELS.get(granted, frozenset())
    return required in implied


def _grants_method(entry: str, method: str) -> bool:
    if entry == method:
        return True
    # "prefix.*" grants every method under the prefix; a bare ".*" has no prefix and grants nothing.
    return len(entry) > 2 and entry.endswith(".*") and method.startswith(entry[:-1])


def has_scope(granted: Iterable[Any], required: str, method: str) -> bool:
    """hasGatewayScope: any granted entry satisfies ``required`` or names ``method`` (docs/protocol.md#scopes).

    Entries are trimmed and empty or non-string entries are ignored. Method-name and
    ``prefix.*`` grants count unconditionally (the 0.18.0 rule, not the later anti-escalation one).
    """
    for raw in granted:
        if not isinstance(raw, str):
            continue
        entry = js_trim(raw)
        if entry and (scope_implies(entry, required) or _grants_method(entry, method)):
            return True
    return False


def forbidden(required: str, method: str) -> GatewayError:
    """The scope failure (docs/protocol.md#failure-shape): ``FORBIDDEN`` with ``requiredScope`` (HTTP 403)."""
    return GatewayError(FORBIDDEN, f"Missing required scope {required} for {method}", {"requiredScope": required})


@functools.lru_cache(maxsize=4096)
def _allowed(granted: tuple[Any, ...], method: str) -> bool:
    return has_scope(granted, required_scope_for_method(method), method)


def authorize(granted: Iterable[Any], method: str) -> None:
    """Raise :func:`forbidden` unless ``granted`` may call ``method`` (decisions cached per scope set)."""
    scopes = granted if isinstance(granted, tuple) else tuple(granted)
    try:
        allowed = _allowed(scopes, method)
    except TypeError:  # an unhashable entry: decide without the cache
        allowed = has_scope(scopes, required_scope_for_method(method), method)
    if not allowed:
        raise forbidden(required_scope_for_method(method), method)
