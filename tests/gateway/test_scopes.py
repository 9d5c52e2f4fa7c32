"""Scopes and authorization."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smithers.errors import GatewayError
from smithers.gateway import scopes as s
from smithers.gateway.jsvalues import js_trim
from smithers.gateway.protocol import (
    error_frame,
)

EIGHT = [
    "run:read",
    "run:write",
    "run:admin",
    "approval:submit",
    "signal:submit",
    "cron:read",
    "cron:write",
    "observability:read",
]

# The required scope of each method, transcribed from docs/protocol.md#required-scope-per-method.
METHOD_TABLE = {
    "health": "run:read",
    "runs.list": "run:read",
    "listRuns": "run:read",
    "workflows.list": "run:read",
    "listWorkflows": "run:read",
    "runs.get": "run:read",
    "getRun": "run:read",
    "runs.create": "run:write",
    "launchRun": "run:write",
    "resumeRun": "run:write",
    "runs.cancel": "run:write",
    "cancelRun": "run:write",
    "runs.rerun": "run:write",
    "runs.fork": "run:write",
    "events.list": "run:read",
    "runs.diff": "run:read",
    "frames.list": "run:read",
    "frames.get": "run:read",
    "attempts.list": "run:read",
    "attempts.get": "run:read",
    "approvals.list": "run:read",
    "listApprovals": "run:read",
    "approvals.decide": "approval:submit",
    "submitApproval": "approval:submit",
    "signals.send": "signal:submit",
    "submitSignal": "signal:submit",
    "cron.list": "cron:read",
    "cronList": "cron:read",
    "cron.add": "cron:write",
    "cronCreate": "cron:write",
    "cron.remove": "cron:write",
    "cronDelete": "cron:write",
    "cron.trigger": "cron:write",
    "cronRun": "cron:write",
    "getDevToolsSnapshot": "observability:read",
    "streamDevTools": "observability:read",
    "streamRunEvents": "run:read",
    "getNodeOutput": "run:read",
    "devtools.getNodeOutput": "run:read",
    "getNodeDiff": "run:read",
    "devtools.getNodeDiff": "run:read",
    "jumpToFrame": "run:admin",
    "devtools.jumpToFrame": "run:admin",
    "rewindRun": "run:admin",
    "hijackRun": "run:admin",
    "connect": "run:read",
    "approve": "approval:submit",
    "config.get": "run:admin",
    "config.set.deep": "run:admin",
    "unknownMethod": "run:read",
    "getSchemaSignature": "run:read",
    "listTickets": "run:read",
    "createTicket": "run:read",
}

# Which of the 8 scopes a granted scope satisfies.
IMPLIES = {
    "run:read": {"run:read"},
    "run:write": {"run:write", "run:read"},
    "run:admin": {"run:admin", "run:write", "run:read"},
    "approval:submit": {"approval:submit"},
    "signal:submit": {"signal:submit"},
    "cron:read": {"cron:read"},
    "cron:write": {"cron:write", "cron:read"},
    "observability:read": {"observability:read"},
}

# What each legacy level grants (docs/protocol.md#how-grants-match).
LEGACY = {
    "read": {"run:read", "cron:read", "observability:read"},
    "execute": {"run:read", "run:write", "signal:submit", "cron:read", "cron:write"},
    "approve": {"run:read", "run:write", "signal:submit", "cron:read", "cron:write", "approval:submit"},
    "admin": set(EIGHT),
}


def test_the_eight_scopes() -> None:
    assert list(s.ALL_SCOPES) == EIGHT
    assert (s.RUN_READ, s.RUN_WRITE, s.RUN_ADMIN) == ("run:read", "run:write", "run:admin")
    assert (s.APPROVAL_SUBMIT, s.SIGNAL_SUBMIT) == ("approval:submit", "signal:submit")
    assert (s.CRON_READ, s.CRON_WRITE, s.OBSERVABILITY_READ) == (
        "cron:read",
        "cron:write",
        "observability:read",
    )
    assert (s.LEGACY_READ, s.LEGACY_EXECUTE, s.LEGACY_APPROVE, s.LEGACY_ADMIN, s.WILDCARD) == (
        "read",
        "execute",
        "approve",
        "admin",
        "*",
    )


@pytest.mark.parametrize(("method", "scope"), sorted(METHOD_TABLE.items()))
def test_required_scope_for_method(method: str, scope: str) -> None:
    assert s.required_scope_for_method(method) == scope


@pytest.mark.parametrize("scope", EIGHT)
def test_scope_names_require_themselves(scope: str) -> None:
    assert s.required_scope_for_method(scope) == scope


def test_every_known_method_is_in_the_table() -> None:
    known = {m for m in METHOD_TABLE if not m.startswith("config.")} - {
        "unknownMethod",
        "getSchemaSignature",
        "listTickets",
        "createTicket",
    }
    assert set(s.METHOD_SCOPES) == known


@pytest.mark.parametrize("granted", EIGHT)
@pytest.mark.parametrize("required", EIGHT)
def test_scope_implication_matrix(granted: str, required: str) -> None:
    expected = required in IMPLIES[granted]
    assert s.scope_implies(granted, required) is expected
    assert s.has_scope([granted], required, "someMethod") is expected


@pytest.mark.parametrize("level", sorted(LEGACY))
@pytest.mark.parametrize("required", EIGHT)
def test_legacy_levels(level: str, required: str) -> None:
    assert s.has_scope([level], required, "x") is (required in LEGACY[level])


@pytest.mark.parametrize("entry", ["*", " * ", "\t*\n", "\u00a0*"])
def test_wildcard_grants_everything(entry: str) -> None:
    for required in EIGHT:
        assert s.has_scope([entry], required, "anything")


@pytest.mark.parametrize("entry", ["run:*", "runs", "RUN:READ", "Run:read", "**", "", "   ", "read ", "x"])
def test_unknown_entries_grant_nothing(entry: str) -> None:
    expected = entry.strip() == "read"
    assert s.has_scope([entry], "run:read", "runs.get") is expected
    assert not s.has_scope([entry], "run:write", "runs.create")


def test_entries_are_trimmed() -> None:
    assert s.has_scope(["  run:write  "], "run:read", "getRun")
    assert s.has_scope([" runs.get"], "run:admin", "runs.get")


def test_non_string_entries_are_ignored() -> None:
    entries: list[Any] = [None, 5, ["*"], {"*": 1}]
    assert not s.has_scope(entries, "run:read", "health")


def test_method_name_grants() -> None:
    assert s.has_scope(["runs.get"], "run:read", "runs.get")
    assert s.has_scope(["launchRun"], "run:write", "launchRun")
    assert not s.has_scope(["runs.get"], "run:read", "runs.list")
    assert s.has_scope(["config.set"], "run:admin", "config.set")  # 0.18.0: unconditional


def test_prefix_wildcard_grants() -> None:
    assert s.has_scope(["runs.*"], "run:read", "runs.get")
    assert s.has_scope(["runs.*"], "run:write", "runs.create")
    assert s.has_scope(["devtools.*"], "run:admin", "devtools.jumpToFrame")
    assert not s.has_scope(["runs.*"], "run:read", "runsx.get")
    assert not s.has_scope(["runs.*"], "run:read", "runs")
    assert not s.has_scope(["runs.*"], "run:read", "getRun")
    assert not s.has_scope([".*"], "run:read", ".x")
    assert not s.has_scope([".*"], "run:read", "health")


def test_behaviour_changes_from_0_16_9() -> None:
    jump = s.required_scope_for_method("jumpToFrame")
    assert not s.has_scope(["execute"], jump, "jumpToFrame")
    assert not s.has_scope(["approve"], jump, "jumpToFrame")
    assert s.has_scope(["admin"], jump, "jumpToFrame")
    assert s.has_scope(["execute"], s.required_scope_for_method("cron.add"), "cron.add")
    assert s.has_scope(["execute"], s.required_scope_for_method("cron.remove"), "cron.remove")
    for method in ("streamDevTools", "getDevToolsSnapshot"):
        required = s.required_scope_for_method(method)
        assert not s.has_scope(["run:read"], required, method)
        assert not s.has_scope(["run:admin"], required, method)
        assert not s.has_scope(["execute"], required, method)
        assert s.has_scope(["read"], required, method)
        assert s.has_scope(["observability:read"], required, method)


def test_approval_allowed_scopes_checks() -> None:
    # submitApproval checks each allowed entry as hasGatewayScope(caller, required(entry), entry).
    def allows(caller: list[str], entry: str) -> bool:
        return s.has_scope(caller, s.required_scope_for_method(entry), entry)

    assert allows(["approval:submit"], "approve")
    assert allows(["approve"], "approve")
    assert not allows(["execute"], "approve")
    assert allows(["cron:write"], "cron:read")
    assert not allows(["cron:read"], "cron:write")
    assert allows(["run:read"], "team:release-managers")  # free-form entries need only run:read
    assert allows(["team:release-managers"], "team:release-managers")
    assert not allows(["signal:submit"], "team:release-managers")


def test_forbidden_error() -> None:
    error = s.forbidden("run:write", "launchRun")
    assert (error.code, error.message, error.details) == (
        "FORBIDDEN",
        "Missing required scope run:write for launchRun",
        {"requiredScope": "run:write"},
    )
    assert error.http_status == 403
    assert error_frame("c7", error) == {
        "type": "res",
        "id": "c7",
        "ok": False,
        "apiVersion": "v1",
        "error": {
            "version": "v1",
            "code": "FORBIDDEN",
            "message": "Missing required scope run:write for launchRun",
            "requiredScope": "run:write",
        },
    }


def test_conformance_launch_run_with_read_scope() -> None:
    with pytest.raises(GatewayError) as info:
        s.authorize(["run:read"], "launchRun")
    assert info.value.code == "FORBIDDEN"
    assert info.value.details == {"requiredScope": "run:write"}
    assert info.value.http_status == 403


def test_authorize_passes() -> None:
    s.authorize(["run:write"], "launchRun")
    s.authorize(["*"], "config.reload")
    s.authorize(["run:read"], "unknownMethod")
    with pytest.raises(GatewayError) as info:
        s.authorize(["run:write"], "config.reload")
    assert info.value.message == "Missing required scope run:admin for config.reload"
    with pytest.raises(GatewayError) as info:
        s.authorize([], "health")
    assert info.value.message == "Missing required scope run:read for health"


ENTRIES = st.lists(
    st.one_of(
        st.sampled_from([*EIGHT, *LEGACY, "*", "runs.*", ".*", "run:*", "health", " run:read "]),
        st.text(max_size=12),
    ),
    max_size=6,
)
METHODS = st.one_of(st.sampled_from(sorted(METHOD_TABLE)), st.text(max_size=20))


@given(ENTRIES, METHODS)
def test_has_scope_is_total_and_monotonic(granted: list[str], method: str) -> None:
    required = s.required_scope_for_method(method)
    assert required in EIGHT
    allowed = s.has_scope(granted, required, method)
    assert s.has_scope([*granted, "*"], required, method)
    assert s.has_scope([*granted, "admin"], required, method)
    if method and js_trim(method) == method:
        assert s.has_scope([*granted, method], required, method)
    if allowed:
        assert s.has_scope([*granted, "extra"], required, method)
    try:
        s.authorize(granted, method)
    except GatewayError as error:
        assert not allowed
        assert error.details == {"requiredScope": required}
    else:
        assert allowed
