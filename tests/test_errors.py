"""The one error model: codes, statuses, stored round trips, and how the gateway answers each kind."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smithers import SmithersError
from smithers import errors as e
from smithers.errors import ALL_CODES, GatewayError, ServerError, _all_subclasses, http_status_for
from smithers.gateway.dispatch import (
    INTERNAL_ERROR_MESSAGE,
    TRANSPORT_HTTP,
    TRANSPORT_WS,
    WS_INVALID_ID,
    WS_SERVER_ID,
    escaping,
    outcome_for,
    returning,
)

# The statuses of the protocol's status table for the codes this gateway answers (RUN_NOT_ACTIVE
# and CONFLICT are 409 by our choice; every other code is 500).
STATUS = {
    "INVALID_REQUEST": 400,
    "INVALID_INPUT": 400,
    "PROTOCOL_UNSUPPORTED": 400,
    "InvalidRunId": 400,
    "SeqOutOfRange": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_FOUND": 404,
    "RunNotFound": 404,
    "RUN_NOT_ACTIVE": 409,
    "CONFLICT": 409,
    "AlreadyDecided": 409,
    "PayloadTooLarge": 413,
    "SERVER_ERROR": 500,
    "Internal": 500,
    "TASK_FAILED": 500,
}


@pytest.mark.parametrize(("code", "status"), sorted(STATUS.items()))
def test_status_of_each_code(code: str, status: int) -> None:
    assert code in ALL_CODES
    assert http_status_for(code) == status
    assert GatewayError(code, "m").http_status == status


@pytest.mark.parametrize("code", ["", "SQLITE_BUSY", "23505", "unauthorized", "forbidden"])
def test_unknown_codes_are_500(code: str) -> None:
    assert http_status_for(code) == 500


def test_every_code_constant_is_named_after_its_value() -> None:
    for code in ALL_CODES:
        assert getattr(e, code) == code


def test_one_root() -> None:
    for klass in _all_subclasses(SmithersError):
        assert issubclass(klass, Exception)
    assert issubclass(GatewayError, SmithersError)
    assert issubclass(e.DatabaseError, SmithersError)
    assert not issubclass(e.RunCancelled, Exception)  # cancellation cannot be swallowed by user code


@pytest.mark.parametrize(
    ("error", "code", "wire_code", "status"),
    [
        (e.RunNotFoundError.of("r1"), "RUN_NOT_FOUND", "NOT_FOUND", 404),
        (e.RunExistsError("run r1 already exists"), "RUN_ALREADY_EXISTS", "INVALID_REQUEST", 400),
        (e.RunActiveError("Run r1 is already active"), "CONFLICT", "CONFLICT", 409),
        (e.RunNotActiveError("not active"), "RUN_NOT_ACTIVE", "RUN_NOT_ACTIVE", 409),
        (e.InvalidInputError("bad"), "INVALID_INPUT", "INVALID_INPUT", 400),
        (e.TaskTimeoutError("slow"), "TASK_TIMEOUT", "TASK_TIMEOUT", 500),
        (ServerError("Unknown workflow: x"), "SERVER_ERROR", "SERVER_ERROR", 500),
        (SmithersError("boom"), "TASK_FAILED", "TASK_FAILED", 500),
    ],
)
def test_each_class_carries_its_codes_and_status(error: SmithersError, code: str, wire_code: str, status: int) -> None:
    assert (error.code, error.wire_code, error.http_status) == (code, wire_code, status)


def _instances() -> list[SmithersError]:
    out = []
    for klass in _all_subclasses(SmithersError):
        error = SmithersError.from_dict({"name": klass.__name__, "code": "X_CODE", "message": "m"})
        out.append(error)
    return out


@pytest.mark.parametrize("klass", _all_subclasses(SmithersError), ids=lambda k: k.__name__)
def test_every_error_class_round_trips_through_storage(klass: type[SmithersError]) -> None:
    stored = {"name": klass.__name__, "code": "SOME_CODE", "message": "it broke", "details": {"nodeId": "n"}}
    restored = SmithersError.from_dict(stored)
    assert type(restored) is klass
    assert restored.to_dict() == stored
    assert SmithersError.from_dict(restored.to_dict()) == restored
    again = SmithersError.from_dict({**stored, "stack": "Traceback ..."})
    assert again.stack == "Traceback ..." and again.to_dict()["stack"] == "Traceback ..."


def test_constructed_errors_round_trip() -> None:
    for error in [e.RunNotFoundError.of("r1"), GatewayError("AlreadyDecided", "done", {"runId": "r"}), *_instances()]:
        assert SmithersError.from_dict(error.to_dict()) == error


def test_unknown_stored_names_become_the_root() -> None:
    restored = SmithersError.from_dict({"name": "SomethingOld", "code": "OLD", "message": "m"})
    assert type(restored) is SmithersError and restored.code == "OLD"


def test_user_exceptions_keep_their_stack() -> None:
    def fail() -> None:
        raise ValueError("boom")

    try:
        fail()
    except ValueError as exc:
        error = e.error_from_exception(exc)
    assert error.code == "TASK_FAILED" and error.message == "boom"
    assert error.stack is not None and "ValueError: boom" in error.stack and "in fail" in error.stack
    assert SmithersError.from_dict(error.to_dict()).stack == error.stack


# -- how dispatch answers each kind ------------------------------------------------------------
def test_refusals_are_answered_with_the_frame_id() -> None:
    refusal = GatewayError("NOT_FOUND", "Run not found: r")
    for transport in (TRANSPORT_WS, TRANSPORT_HTTP):
        outcome = outcome_for(transport, "frame-1", "req-1", refusal, "test")
        assert outcome.response_id == "frame-1"
        assert outcome.error is refusal


def test_escaping_errors_use_invalid_over_ws_and_the_request_id_over_http() -> None:
    error = e.RunNotFoundError.of("r1")
    ws = outcome_for(TRANSPORT_WS, "frame-1", "req-1", error, "test")
    http = outcome_for(TRANSPORT_HTTP, "frame-1", "req-1", error, "test")
    assert ws.response_id == WS_INVALID_ID and http.response_id == "req-1"
    assert ws.error is not None and (ws.error.code, ws.error.message) == ("NOT_FOUND", "Run not found: r1")
    assert ws.error.details == {"runId": "r1"}


def test_escaping_and_returning_switch_the_kind() -> None:
    with pytest.raises(GatewayError) as refused, escaping():
        raise GatewayError("INVALID_INPUT", "limit must be a finite number greater than 0.")
    assert outcome_for(TRANSPORT_WS, "f", "r", refused.value, "t").response_id == WS_INVALID_ID
    with pytest.raises(e.InvalidInputError) as raised, returning():
        raise e.InvalidInputError("bad input")
    assert outcome_for(TRANSPORT_WS, "f", "r", raised.value, "t").response_id == "f"


def test_server_errors_are_uncoded_with_their_message() -> None:
    outcome = outcome_for(TRANSPORT_WS, "f", "r", ServerError("Node n is not waiting for approval"), "t")
    assert outcome.response_id == WS_SERVER_ID
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.message) == ("SERVER_ERROR", "Node n is not waiting for approval")
    assert outcome.error.http_status == 500


def test_unexpected_exceptions_never_leak_their_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "password=hunter2 at /srv/app/db.py line 9"
    with caplog.at_level(logging.ERROR):
        ws = outcome_for(TRANSPORT_WS, "f", "r", RuntimeError(secret), "ws getRun")
        http = outcome_for(TRANSPORT_HTTP, "f", "r", KeyError(secret), "http getRun")
    assert ws.response_id == WS_SERVER_ID and http.response_id == "r"
    for outcome in (ws, http):
        assert outcome.error is not None
        assert outcome.error.code == "SERVER_ERROR" and outcome.error.http_status == 500
        assert secret not in outcome.error.message and INTERNAL_ERROR_MESSAGE in outcome.error.message
        reference = (outcome.error.details or {})["ref"]
        assert reference in outcome.error.message
        assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


@given(st.text(), st.one_of(st.none(), st.text(), st.integers()))
def test_answers_for_anything_raised(message: str, code: Any) -> None:
    exc: BaseException = SmithersError(message, code) if isinstance(code, str) else RuntimeError(message)
    for transport in (TRANSPORT_WS, TRANSPORT_HTTP):
        outcome = outcome_for(transport, "f", "r", exc, "t")
        assert outcome.error is not None and isinstance(outcome.error.code, str)
        assert outcome.response_id in {"f", "r", "invalid", "server"}
