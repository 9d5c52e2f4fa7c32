"""Error codes, the HTTP status table (§3.6 + §23 D1) and exception translation (§3.5)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smithers.gateway import errors
from smithers.gateway.errors import (
    ALL_CODES,
    SERVER_FAILURE_MESSAGE,
    WS_INVALID_ID,
    WS_SERVER_ID,
    GatewayError,
    coded_error,
    http_error_for,
    http_status_for,
    ws_error_for,
)

# Every code the protocol document names, with the status §3.6 gives it (RUN_NOT_ACTIVE per D1).
SPEC_STATUS = {
    "UNAUTHORIZED": 401,
    "Unauthorized": 401,
    "FORBIDDEN": 403,
    "Forbidden": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_FOUND": 404,
    "RunNotFound": 404,
    "NodeNotFound": 404,
    "AttemptNotFound": 404,
    "IterationNotFound": 404,
    "NodeHasNoOutput": 404,
    "INVALID_REQUEST": 400,
    "InvalidRequest": 400,
    "INVALID_FRAME": 400,
    "INVALID_INPUT": 400,
    "InvalidInput": 400,
    "INVALID_JSON": 400,
    "PROTOCOL_UNSUPPORTED": 400,
    "InvalidRunId": 400,
    "InvalidNodeId": 400,
    "InvalidIteration": 400,
    "InvalidDelta": 400,
    "InvalidFrameNo": 400,
    "ConfirmationRequired": 400,
    "FrameOutOfRange": 400,
    "SeqOutOfRange": 400,
    "AttemptNotFinished": 409,
    "Busy": 409,
    "AlreadyDecided": 409,
    "RUN_NOT_ACTIVE": 409,
    "DiffTooLarge": 413,
    "PayloadTooLarge": 413,
    "PAYLOAD_TOO_LARGE": 413,
    "RateLimited": 429,
    "BackpressureDisconnect": 429,
    "UnsupportedSandbox": 501,
    "VcsError": 500,
    "RewindFailed": 500,
    "SERVER_ERROR": 500,
    "CronNotFound": 500,
    "WorkingTreeDirty": 500,
    "MalformedOutputRow": 500,
    "SchemaConversionError": 500,
    "Internal": 500,
    "TicketNotFound": 500,
}


def test_every_spec_code_is_a_constant_named_after_itself() -> None:
    for code in SPEC_STATUS:
        assert getattr(errors, code) == code
    assert set(SPEC_STATUS) == ALL_CODES


@pytest.mark.parametrize(("code", "status"), sorted(SPEC_STATUS.items()))
def test_http_status_table(code: str, status: int) -> None:
    assert http_status_for(code) == status
    assert GatewayError(code, "m").http_status == status


def test_run_not_active_is_a_conflict_not_a_server_fault() -> None:
    assert http_status_for(errors.RUN_NOT_ACTIVE) == 409


@pytest.mark.parametrize("code", ["", "SQLITE_BUSY", "23505", "whatever", "unauthorized", "forbidden"])
def test_unknown_codes_are_500(code: str) -> None:
    assert http_status_for(code) == 500


@given(st.text())
def test_status_is_always_a_known_status(code: str) -> None:
    assert http_status_for(code) in {400, 401, 403, 404, 409, 413, 429, 500, 501}


def test_gateway_error_carries_code_message_details() -> None:
    error = GatewayError(errors.AlreadyDecided, "Approval for n has already been decided", {"runId": "r"})
    assert isinstance(error, Exception)
    assert error.code == "AlreadyDecided"
    assert error.message == "Approval for n has already been decided"
    assert error.details == {"runId": "r"}
    assert error.http_status == 409
    assert str(error) == "Approval for n has already been decided"
    assert "AlreadyDecided" in repr(error)


def test_gateway_error_without_message() -> None:
    error = GatewayError(errors.SERVER_ERROR)
    assert error.message is None
    assert error.details is None
    assert str(error) == "SERVER_ERROR"


class _CodedError(Exception):
    def __init__(self, code: Any, message: str, summary: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if summary is not None:
            self.summary = summary


def test_coded_error_passes_gateway_errors_through() -> None:
    error = GatewayError(errors.RunNotFound, "Run not found: r1")
    assert coded_error(error) is error


def test_coded_error_strips_the_docs_suffix() -> None:
    exc = _CodedError("RUN_NOT_FOUND", "Run r is gone. See https://smithers.sh/reference/errors")
    coded = coded_error(exc)
    assert coded is not None
    assert (coded.code, coded.message) == ("RUN_NOT_FOUND", "Run r is gone.")


def test_coded_error_prefers_the_summary() -> None:
    coded = coded_error(_CodedError("X", "long message", summary="short"))
    assert coded is not None
    assert coded.message == "short"


def test_coded_error_without_message_has_absent_message() -> None:
    exc = Exception("driver failure")
    exc.code = "SQLITE_CONSTRAINT"  # type: ignore[attr-defined]
    coded = coded_error(exc)
    assert coded is not None
    assert coded.code == "SQLITE_CONSTRAINT"
    assert coded.message is None


@pytest.mark.parametrize("code", [None, 5, "", b"X"])
def test_non_string_codes_are_uncoded(code: Any) -> None:
    assert coded_error(_CodedError(code, "m")) is None


def test_plain_exceptions_are_uncoded() -> None:
    assert coded_error(ValueError("boom")) is None
    assert coded_error(KeyError("k")) is None


def test_http_translation_keeps_coded_errors() -> None:
    error = GatewayError(errors.INVALID_INPUT, "limit must be a finite number greater than 0.")
    assert http_error_for(error) is error
    translated = http_error_for(_CodedError("RateLimited", "slow down"))
    assert (translated.code, translated.message, translated.http_status) == ("RateLimited", "slow down", 429)


@pytest.mark.parametrize(
    ("message", "code", "status"),
    [
        ("Gateway RPC payload must be valid JSON.", "INVALID_JSON", 400),
        ("input exceeds the limit", "PAYLOAD_TOO_LARGE", 413),
        ("not valid JSON and exceeds", "INVALID_JSON", 400),
        ("Unknown workflow: deploy", "SERVER_ERROR", 500),
        ("Valid json", "SERVER_ERROR", 500),
    ],
)
def test_http_translation_of_uncoded_errors(message: str, code: str, status: int) -> None:
    error = http_error_for(RuntimeError(message))
    assert (error.code, error.message, error.http_status) == (code, message, status)


def test_uncoded_error_without_message_uses_the_fallback() -> None:
    assert http_error_for(RuntimeError()).message == SERVER_FAILURE_MESSAGE
    assert ws_error_for(RuntimeError())[1].message == "Gateway request failed"


def test_ws_translation() -> None:
    frame_id, error = ws_error_for(GatewayError(errors.INVALID_INPUT, "Signal name must be a non-empty string."))
    assert frame_id == WS_INVALID_ID == "invalid"
    assert error.code == "INVALID_INPUT"
    message = "Node n is not waiting for approval. See https://smithers.sh/reference/errors"
    frame_id, error = ws_error_for(RuntimeError(message))
    assert frame_id == WS_SERVER_ID == "server"
    assert (error.code, error.message) == ("SERVER_ERROR", message)


def test_ws_translation_of_coded_foreign_error() -> None:
    frame_id, error = ws_error_for(_CodedError("INVALID_INPUT", "bad. See https://smithers.sh/reference/errors"))
    assert frame_id == "invalid"
    assert (error.code, error.message) == ("INVALID_INPUT", "bad.")


@given(st.text(), st.one_of(st.none(), st.text(), st.integers()))
def test_translation_never_fails(message: str, code: Any) -> None:
    exc = _CodedError(code, message)
    assert isinstance(http_error_for(exc), GatewayError)
    frame_id, error = ws_error_for(exc)
    assert frame_id in {"invalid", "server"}
    assert isinstance(error.code, str)
