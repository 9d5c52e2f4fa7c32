"""Protocol constants, JSON rules, frame validation and envelopes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smithers.errors import GatewayError
from smithers.gateway import jsvalues as jsv
from smithers.gateway import protocol as p

DEPTH = "gateway frame exceeds the maximum JSON depth of 32."
LONG_STRING = "gateway frame contains a string exceeding 16384 characters."
NON_FINITE = "gateway frame must contain only finite numbers."
LONG_ARRAY = "gateway frame contains an array exceeding 256 items."
BAD_JSON = "Gateway RPC payload must be valid JSON."
NOT_REQUEST = "Gateway frame must be a request object."
ID_NOT_STRING = "Gateway frame id must be a string."
ID_TOO_LONG = "id exceeds the maximum length of 128 characters."
METHOD_NOT_STRING = "Gateway method name must be a string."
METHOD_TOO_LONG = "method exceeds the maximum length of 64 characters."
METHOD_INVALID = "Gateway method name is invalid."
INPUT_TOO_BIG = "Gateway RPC input exceeds 1048576 bytes."
INPUT_TOO_DEEP = "Gateway RPC input exceeds the maximum nesting depth of 32."
FRAME_MESSAGES = {DEPTH, LONG_STRING, NON_FINITE, LONG_ARRAY}


def check(error: pytest.ExceptionInfo[GatewayError], code: str, message: str) -> None:
    assert (error.value.code, error.value.message, error.value.details) == (code, message, None)


@contextmanager
def raises(code: str, message: str) -> Iterator[pytest.ExceptionInfo[GatewayError]]:
    """Expect a ``GatewayError`` with exactly this code and message (and no details)."""
    with pytest.raises(GatewayError) as info:
        yield info
    check(info, code, message)


def nest_arrays(levels: int, leaf: Any) -> Any:
    """``levels`` arrays around ``leaf``: the leaf sits at depth ``levels + 1``."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def nest_objects(levels: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"child": value}
    return value


# -- --------------------------------------------------------------------------------------
def test_quick_reference_constants() -> None:
    assert p.API_VERSION == "v1"
    assert p.DEFAULT_PROTOCOL == 1
    assert p.DEFAULT_PORT == 7331
    assert p.DEFAULT_FEATURES == ("streaming", "runs")
    assert p.DEFAULT_HEARTBEAT_MS == 15_000
    assert p.RUN_EVENT_HEARTBEAT_MS == 1_000
    assert p.DEFAULT_EVENT_WINDOW_SIZE == 10_000
    assert p.DEFAULT_MAX_BODY_BYTES == p.DEFAULT_MAX_PAYLOAD == 1_048_576
    assert p.DEFAULT_MAX_CONNECTIONS == 1_000
    assert (p.DEFAULT_HEADERS_TIMEOUT_MS, p.DEFAULT_REQUEST_TIMEOUT_MS) == (30_000, 60_000)
    assert (p.MAX_FRAME_DEPTH, p.MAX_FRAME_ARRAY_LENGTH, p.MAX_FRAME_STRING_LENGTH) == (32, 256, 16_384)
    assert (p.MAX_METHOD_LENGTH, p.MAX_FRAME_ID_LENGTH) == (64, 128)
    assert (p.MAX_RUN_INPUT_BYTES, p.MAX_RUN_INPUT_DEPTH) == (1_048_576, 32)
    assert dict(p.COMMON_HEADERS) == {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Smithers-API-Version": "v1",
    }


@pytest.mark.parametrize(("heartbeat", "poll"), [(15_000, 15_000), (60_000, 15_000), (5_000, 5_000), (10, 1_000)])
def test_poll_interval(heartbeat: int, poll: int) -> None:
    assert p.poll_interval_ms(heartbeat) == poll


# -- JavaScript semantics ----------------------------------------------------------------------
@pytest.mark.parametrize(("text", "length"), [("", 0), ("abc", 3), ("é", 1), ("😀", 2), ("a😀b", 4), ("\ud800", 1)])
def test_utf16_length(text: str, length: int) -> None:
    assert jsv.utf16_length(text) == length


def test_js_trim_uses_javascript_white_space() -> None:
    assert jsv.js_trim("\ufeff\u00a0 \t run:read \u3000\n") == "run:read"
    assert jsv.js_trim("\x1crun\x1c") == "\x1crun\x1c"  # not JS white space


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        (0, False),
        (0.0, False),
        (math.nan, False),
        ("", False),
        (True, True),
        (1, True),
        (-1.5, True),
        ("0", True),
        ({}, True),
        ([], True),
    ],
)
def test_js_truthy(value: Any, truthy: bool) -> None:
    assert jsv.js_truthy(value) is truthy


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (None, 0.0),
        (True, 1.0),
        (False, 0.0),
        (5, 5.0),
        (2.5, 2.5),
        ("5", 5.0),
        (" 5 \n", 5.0),
        ("", 0.0),
        ("   ", 0.0),
        ("0x10", 16.0),
        ("0X1f", 31.0),
        ("0o17", 15.0),
        ("0b101", 5.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("+7", 7.0),
        ("-0", -0.0),
        ("Infinity", math.inf),
        ("-Infinity", -math.inf),
        ([], 0.0),
        ([7], 7.0),
        (["8"], 8.0),
        ([[9]], 9.0),
        ([None], 0.0),
        ([[]], 0.0),
        (10**400, math.inf),
        (-(10**400), -math.inf),
    ],
)
def test_js_to_number(value: Any, number: float) -> None:
    assert jsv.js_to_number(value) == number


@pytest.mark.parametrize(
    "value",
    ["abc", "1_000", "inf", "nan", "0x", "+0x5", "-0x5", "0xg", "1e", "5a", [1, 2], [True], {}, {"a": 1}],
)
def test_js_to_number_nan(value: Any) -> None:
    assert math.isnan(jsv.js_to_number(value))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (5, "5"),
        (5.0, "5"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1 / 3, "0.3333333333333333"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1e16, "10000000000000000"),
        (2**53 + 1, "9007199254740992"),
        (123456789012345680000.0, "123456789012345680000"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
    ],
)
def test_js_number_string(value: float, text: str) -> None:
    assert jsv.js_number_string(value) == text


# -- JSON text ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "{", "", "'a'", "[1,]", "\ufeff{}"])
def test_loads_strict_rejects_non_json(text: str) -> None:
    with pytest.raises(ValueError):
        jsv.loads_strict(text)


def test_loads_strict_reads_huge_integers_as_javascript_does() -> None:
    assert jsv.loads_strict("1" + "0" * 400) == math.inf
    assert jsv.loads_strict("12345") == 12345
    assert jsv.loads_strict("1e999") == math.inf


def test_loads_strict_reports_unparseable_nesting() -> None:
    with pytest.raises(jsv.JsonNestingError):
        jsv.loads_strict("[" * 100_000 + "]" * 100_000)


def test_encode_json_is_compact_and_keeps_unicode() -> None:
    assert jsv.encode_json({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'
    assert jsv.encode_json({"s": "x\ud800y"}) == '{"s":"x\\ud800y"}'
    assert json.loads(jsv.encode_json({"s": "x\ud800y"})) == {"s": "x\ud800y"}
    # as JSON.stringify: NaN and infinities are written as null
    assert jsv.encode_json({"n": math.nan, "i": math.inf}) == '{"n":null,"i":null}'


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({}, 2),
        ([], 2),
        ({"a": 1}, 7),
        ({"a": 5.0}, 7),  # JavaScript writes 5, not 5.0
        ({"a": 1e21}, 11),
        ([None, True, False], 17),
        (["é"], 6),
        (["\n"], 6),
        (['"'], 6),
        (["\x01"], 10),
        (["\x7f"], 5),
        (["\ud800"], 10),
        (["😀"], 8),
        ({"é": [1.5, -0.0]}, 14),
        ((1, 2), 5),
        ([math.inf, math.nan], 11),
    ],
)
def test_json_byte_length(value: Any, size: int) -> None:
    assert jsv.json_byte_length(value) == size


def test_json_byte_length_rejects_non_json() -> None:
    with pytest.raises(TypeError):
        jsv.json_byte_length({"a": object()})


def test_json_byte_length_has_no_recursion_limit() -> None:
    assert jsv.json_byte_length(nest_arrays(100_000, 1)) == 200_001


# -- frame bounds -------------------------------------------------------------------------
@pytest.mark.parametrize("nest", [nest_arrays, nest_objects])
def test_depth_boundary(nest: Any) -> None:
    p.check_frame_bounds(nest(31, 1))  # leaf at depth 32
    p.check_frame_bounds(nest(31, []))  # an empty container at depth 32
    with raises("INVALID_INPUT", DEPTH):
        p.check_frame_bounds(nest(32, 1))  # a primitive at depth 33 counts
    with raises("INVALID_INPUT", DEPTH):
        p.check_frame_bounds(nest(32, {}))  # so does an empty container


def test_depth_of_the_root_is_one() -> None:
    p.check_frame_bounds(1)
    p.check_frame_bounds("x")
    p.check_frame_bounds(None)


def test_depth_is_checked_before_every_other_rule() -> None:
    value = ["x" * 20_000, [0] * 300, math.inf, nest_arrays(40, 1)]
    with raises("INVALID_INPUT", DEPTH):
        p.check_frame_bounds(value)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("x" * 16_384, "x" * 16_385),
        ("😀" * 8_192, "😀" * 8_192 + "x"),
        ("é" * 16_384, "é" * 16_385),
    ],
)
def test_string_length_in_utf16_units(good: str, bad: str) -> None:
    p.check_frame_bounds({"s": good})
    with raises("INVALID_INPUT", LONG_STRING) as error:
        p.check_frame_bounds({"s": bad})
    check(error, "INVALID_INPUT", LONG_STRING)


def test_object_keys_are_not_length_checked() -> None:
    p.check_frame_bounds({"k" * 50_000: 1})


def test_array_length() -> None:
    p.check_frame_bounds({"a": [0] * 256})
    with raises("INVALID_INPUT", LONG_ARRAY) as error:
        p.check_frame_bounds({"a": [0] * 257})
    check(error, "INVALID_INPUT", LONG_ARRAY)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers(number: float) -> None:
    with raises("INVALID_INPUT", NON_FINITE):
        p.check_frame_bounds({"a": [1, number]})


def test_big_integers_and_booleans_are_finite() -> None:
    p.check_frame_bounds([10**200, True, False, 0.5, -3])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["x" * 20_000, [0] * 300], LONG_STRING),
        ([[0] * 300, "x" * 20_000], LONG_ARRAY),
        ({"a": math.inf, "b": "x" * 20_000}, NON_FINITE),
        ({"b": "x" * 20_000, "a": math.inf}, LONG_STRING),
        ([[0] * 257 + ["x" * 20_000]], LONG_ARRAY),  # an array is checked before its items
        ([["x" * 20_000], [0] * 300], LONG_STRING),
    ],
)
def test_first_violation_in_document_order_wins(value: Any, message: str) -> None:
    with raises("INVALID_INPUT", message):
        p.check_frame_bounds(value)


def test_field_name_is_part_of_the_message() -> None:
    with raises("INVALID_INPUT", "run input contains an array exceeding 256 items."):
        p.check_frame_bounds([0] * 257, "run input")


# -- method names and frame ids -----------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    ["health", "runs.get", "getDevToolsSnapshot", "devtools.getNodeOutput", "a", "a.b.c", "x1.y2Z", "m" * 64],
)
def test_valid_methods(method: str) -> None:
    assert p.validate_method(method) == method


@pytest.mark.parametrize(
    "method",
    [
        "",
        "Runs.get",
        "runs.",
        ".runs",
        "runs..get",
        "run:read",
        "runs.get\n",
        "1abc",
        "runs.Get",
        "runs-get",
        "runs get",
        "runs.*",
        "rüns",
        "runs.1",
    ],
)
def test_invalid_methods(method: str) -> None:
    with raises("INVALID_INPUT", METHOD_INVALID) as error:
        p.validate_method(method)
    check(error, "INVALID_INPUT", METHOD_INVALID)


@pytest.mark.parametrize("method", [None, 5, True, ["health"], {"name": "health"}])
def test_non_string_methods(method: Any) -> None:
    with raises("INVALID_INPUT", METHOD_NOT_STRING):
        p.validate_method(method)


def test_method_length_is_checked_before_the_pattern() -> None:
    with raises("INVALID_INPUT", METHOD_TOO_LONG):
        p.validate_method("m" * 65)
    with raises("INVALID_INPUT", METHOD_TOO_LONG):
        p.validate_method("Ü" * 65)
    with raises("INVALID_INPUT", METHOD_TOO_LONG):
        p.validate_method("😀" * 33)  # 66 UTF-16 units


def test_frame_ids() -> None:
    assert p.validate_frame_id("") == ""
    assert p.validate_frame_id("i" * 128) == "i" * 128
    with raises("INVALID_INPUT", ID_TOO_LONG):
        p.validate_frame_id("i" * 129)
    with raises("INVALID_INPUT", ID_TOO_LONG):
        p.validate_frame_id("😀" * 65)
    for bad in (5, None, 1.5, ["c1"], {"id": "c1"}, True):
        with raises("INVALID_INPUT", ID_NOT_STRING):
            p.validate_frame_id(bad)


# -- WebSocket frames ---------------------------------------------------------------------
def test_conformance_numeric_frame_id() -> None:
    with raises("INVALID_INPUT", ID_NOT_STRING) as error:
        p.parse_ws_frame('{"type":"req","id":5,"method":"health"}')
    check(error, "INVALID_INPUT", ID_NOT_STRING)


def test_valid_ws_frame() -> None:
    frame = p.parse_ws_frame('{"type":"req","id":"c1","method":"runs.get","params":{"runId":"r1"}}')
    assert frame == p.RequestFrame("c1", "runs.get", {"runId": "r1"})
    assert p.parse_ws_frame(b'{"type":"req","id":"c2","method":"health"}') == p.RequestFrame("c2", "health")


def test_binary_frames_decode_invalid_utf8_as_replacement() -> None:
    frame = p.parse_ws_frame(b'{"type":"req","id":"\xff","method":"health"}')
    assert frame.id == "\ufffd"


def test_ws_payload_size_in_utf8_bytes() -> None:
    message = '{"type":"req","id":"é","method":"health"}'
    size = len(message.encode("utf-8"))
    assert p.parse_ws_frame(message, max_payload=size).id == "é"
    with raises("INVALID_INPUT", f"Gateway RPC payload exceeds {size - 1} bytes."):
        p.parse_ws_frame(message, max_payload=size - 1)
    with raises("INVALID_INPUT", f"Gateway RPC payload exceeds {size - 1} bytes."):
        p.parse_ws_frame(message.encode(), max_payload=size - 1)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("", BAD_JSON),
        ("{", BAD_JSON),
        ('{"type":"req","id":"c","method":"health","n":NaN}', BAD_JSON),
        ('{"type":"req","id":"c","method":"health","n":1e999}', NON_FINITE),
        ('{"type":"req","id":"c","method":"health","n":' + "9" * 400 + "}", NON_FINITE),
        ("[" * 40 + "]" * 40, DEPTH),
        ("[" * 50_000 + "]" * 50_000, DEPTH),
        ('{"type":"nope","a":[' + ",".join(["0"] * 257) + "]}", LONG_ARRAY),
        ("[]", NOT_REQUEST),
        ("null", NOT_REQUEST),
        ('"req"', NOT_REQUEST),
        ("{}", NOT_REQUEST),
        ('{"type":"res","id":"c","method":"health"}', NOT_REQUEST),
        ('{"type":"REQ","id":"c","method":"health"}', NOT_REQUEST),
        ('{"type":"req","method":"health"}', ID_NOT_STRING),
        ('{"type":"req","id":null,"method":"health"}', ID_NOT_STRING),
        ('{"type":"req","id":"' + "i" * 129 + '","method":"health"}', ID_TOO_LONG),
        ('{"type":"req","id":"c"}', METHOD_NOT_STRING),
        ('{"type":"req","id":"c","method":"' + "m" * 65 + '"}', METHOD_TOO_LONG),
        ('{"type":"req","id":"c","method":"run:read"}', METHOD_INVALID),
        ('{"type":"req","id":' + "1" * 200 + ',"method":"x:y"}', ID_NOT_STRING),
    ],
)
def test_ws_validation_order_and_messages(message: str, error: str) -> None:
    with raises("INVALID_INPUT", error) as info:
        p.parse_ws_frame(message)
    check(info, "INVALID_INPUT", error)


def test_ws_params_are_passed_raw() -> None:
    assert p.parse_ws_frame('{"type":"req","id":"c","method":"health","params":[1]}').params == [1]
    assert p.parse_ws_frame('{"type":"req","id":"c","method":"health","params":null}').params is None


# -- HTTP bodies -------------------------------------------------------------------
def test_empty_http_body_is_an_empty_object() -> None:
    assert p.parse_http_body(b"") == {}


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (b" ", "INVALID_INPUT", BAD_JSON),
        (b"{", "INVALID_INPUT", BAD_JSON),
        (b'{"a":Infinity}', "INVALID_INPUT", BAD_JSON),
        ("\ufeff{}".encode(), "INVALID_INPUT", BAD_JSON),
        (b"[]", "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"null", "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"5", "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"[" + b",".join([b"0"] * 300) + b"]", "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b"[" * 50_000 + b"]" * 50_000, "INVALID_REQUEST", "RPC body must be a JSON object"),
        (b' {"a":' * 50_000 + b"1" + b"}" * 50_000, "INVALID_INPUT", DEPTH),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "INVALID_INPUT", DEPTH),
        (b'{"a":[' + b",".join([b"0"] * 257) + b"]}", "INVALID_INPUT", LONG_ARRAY),
        (b'{"a":1e400}', "INVALID_INPUT", NON_FINITE),
    ],
)
def test_http_body_errors(raw: bytes, code: str, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        p.parse_http_body(raw)
    check(info, code, message)


def test_http_body_decodes_invalid_utf8_as_replacement() -> None:
    assert p.parse_http_body(b'{"a":"\xff"}') == {"a": "\ufffd"}


def test_rpc_request_from_body() -> None:
    body = {"id": "x1", "method": "runs.get", "params": {"runId": "r"}}
    assert p.http_rpc_request(body, "req-1") == p.RequestFrame("x1", "runs.get", {"runId": "r"})


@pytest.mark.parametrize("body_id", [None, 5, ["x"], {"a": 1}, True])
def test_non_string_ids_become_the_request_id(body_id: Any) -> None:
    assert p.http_rpc_request({"id": body_id, "method": "health"}, "req-1").id == "req-1"
    assert p.http_rpc_request({"method": "health"}, "req-1").id == "req-1"


def test_long_http_id_is_refused_after_the_method() -> None:
    with raises("INVALID_INPUT", ID_TOO_LONG):
        p.http_rpc_request({"id": "i" * 129, "method": "health"}, "req-1")
    with raises("INVALID_INPUT", METHOD_INVALID):
        p.http_rpc_request({"id": "i" * 129, "method": "Bad"}, "req-1")


def test_http_method_is_validated() -> None:
    with raises("INVALID_INPUT", METHOD_NOT_STRING):
        p.http_rpc_request({}, "req-1")
    with raises("INVALID_INPUT", METHOD_INVALID):
        p.http_rpc_request({"method": "run:read"}, "req-1")


def test_path_method_wins_and_body_becomes_params() -> None:
    frame = p.http_rpc_request({"workflow": "deploy", "input": {"value": 5}}, "req-1", "launchRun")
    assert frame == p.RequestFrame("req-1", "launchRun", {"workflow": "deploy", "input": {"value": 5}})
    body = {"id": "x", "method": "launchRun", "params": {"workflow": "deploy"}}
    assert p.http_rpc_request(body, "req-1", "launchRun") == p.RequestFrame("x", "launchRun", {"workflow": "deploy"})
    other = {"method": "Not A Method", "params": {"w": 1}}
    assert p.http_rpc_request(other, "req-1", "getRun") == p.RequestFrame("req-1", "getRun", {"w": 1})


def test_path_body_id_is_both_frame_id_and_param() -> None:
    frame = p.http_rpc_request({"id": "abc", "runId": "r"}, "req-1", "getRun")
    assert frame == p.RequestFrame("abc", "getRun", {"id": "abc", "runId": "r"})
    assert p.http_rpc_request({}, "req-1", "health").params == {}


def test_path_method_is_validated() -> None:
    with raises("INVALID_INPUT", METHOD_INVALID):
        p.http_rpc_request({"method": "health"}, "req-1", "run:read")


def test_payload_too_large() -> None:
    error = p.payload_too_large(1_048_576)
    assert (error.code, error.message, error.http_status) == (
        "PayloadTooLarge",
        "Gateway request payload exceeds 1048576 bytes.",
        413,
    )


# -- connect ------------------------------------------------------------------------------
CLIENT = {"id": "cli", "version": "1", "platform": "test"}


def test_connect_ok() -> None:
    request = p.parse_connect_request(
        {"minProtocol": 1, "maxProtocol": 3, "client": CLIENT, "subscribe": ["r1", 5, "r2", None]}
    )
    assert request == p.ConnectRequest(1, 3, CLIENT, frozenset({"r1", "r2"}))


@pytest.mark.parametrize(("subscribe", "runs"), [(None, None), ("r1", None), ({}, None), ([], frozenset())])
def test_connect_subscribe(subscribe: Any, runs: frozenset[str] | None) -> None:
    params = {"minProtocol": 1, "maxProtocol": 1, "client": CLIENT, "subscribe": subscribe}
    assert p.parse_connect_request(params).subscribe == runs
    del params["subscribe"]
    assert p.parse_connect_request(params).subscribe is None


@pytest.mark.parametrize("params", [None, [], "x", 5])
def test_connect_params_must_be_an_object(params: Any) -> None:
    with pytest.raises(GatewayError) as info:
        p.parse_connect_request(params)
    check(info, "INVALID_REQUEST", "Connect params must be an object")


MISSING = "Connect request is missing protocol negotiation fields"


@pytest.mark.parametrize(
    "params",
    [
        {"minProtocol": 1, "maxProtocol": 1},  # conformance: connect without client
        {"minProtocol": 1, "maxProtocol": 1, "client": None},
        {"minProtocol": 1, "maxProtocol": 1, "client": ""},
        {"minProtocol": 1, "maxProtocol": 1, "client": 0},
        {"minProtocol": 1, "maxProtocol": 1, "client": False},
        {"maxProtocol": 1, "client": CLIENT},
        {"minProtocol": 1, "client": CLIENT},
        {"minProtocol": "1", "maxProtocol": 1, "client": CLIENT},
        {"minProtocol": 1, "maxProtocol": True, "client": CLIENT},
        {"minProtocol": None, "maxProtocol": 1, "client": CLIENT},
    ],
)
def test_connect_missing_fields(params: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as info:
        p.parse_connect_request(params)
    check(info, "INVALID_REQUEST", MISSING)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (0, 1, "minProtocol must be a finite number greater than 0."),
        (-1, 1, "minProtocol must be a finite number greater than 0."),
        (1.5, 2, "minProtocol must be an integer greater than 0."),
        (math.inf, 1, "minProtocol must be a finite number greater than 0."),
        (1, 0, "maxProtocol must be a finite number greater than 0."),
        (1, 1.5, "maxProtocol must be an integer greater than 0."),
        (0, 0.5, "minProtocol must be a finite number greater than 0."),
    ],
)
def test_connect_protocol_numbers(low: float, high: float, message: str) -> None:
    with pytest.raises(GatewayError) as info:
        p.parse_connect_request({"minProtocol": low, "maxProtocol": high, "client": "x"})
    check(info, "INVALID_INPUT", message)


@pytest.mark.parametrize(("low", "high", "protocol"), [(2, 2, 1), (2, 5, 1), (1, 1, 2), (3, 4, 2)])
def test_connect_protocol_unsupported(low: int, high: int, protocol: int) -> None:
    with pytest.raises(GatewayError) as info:
        p.parse_connect_request({"minProtocol": low, "maxProtocol": high, "client": CLIENT}, protocol)
    check(info, "PROTOCOL_UNSUPPORTED", f"Gateway protocol {protocol} is not supported by the client")
    assert info.value.http_status == 400


def test_connect_accepts_integral_floats_and_other_protocols() -> None:
    assert p.parse_connect_request({"minProtocol": 1.0, "maxProtocol": 2.0, "client": 1}, 2).max_protocol == 2


# -- coercion -----------------------------------------------------------------------------
def test_simple_coercions() -> None:
    assert p.as_object({"a": 1}) == {"a": 1}
    assert p.as_object([1]) is None
    assert p.as_object(None) is None
    assert p.as_params("x") == {}
    assert p.as_params(None) == {}
    assert p.as_params({"a": 1}) == {"a": 1}
    assert p.as_string("") == ""
    assert p.as_string(5) is None
    assert p.as_number(2.5) == 2.5
    assert p.as_number(7) == 7
    assert p.as_number(True) is None
    assert p.as_number("5") is None
    assert p.as_number(math.inf) is None
    assert p.as_number(math.nan) is None
    assert p.as_number(10**400) is None
    assert p.as_boolean(False) is False
    assert p.as_boolean("false") is None
    assert p.as_boolean(0) is None


@pytest.mark.parametrize(
    ("value", "result"),
    [(5, 5), ("5", 5), (" 7 ", 7), ("0x10", 16), ("1e3", 1000), (3.0, 3), (True, 1), ([4], 4)],
)
def test_positive_int_accepts(value: Any, result: int) -> None:
    assert p.positive_int(value, "limit") == result


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (0, "finite"),
        (-3, "finite"),
        ("0", "finite"),
        ("", "finite"),
        ("abc", "finite"),
        (False, "finite"),
        ([], "finite"),
        ({}, "finite"),
        (math.inf, "finite"),
        ("Infinity", "finite"),
        (math.nan, "finite"),
        (0.5, "integer"),
        ("2.5", "integer"),
        (1e-9, "integer"),
    ],
)
def test_positive_int_refuses(value: Any, kind: str) -> None:
    message = {
        "finite": "frameNo must be a finite number greater than 0.",
        "integer": "frameNo must be an integer greater than 0.",
    }[kind]
    with pytest.raises(GatewayError) as info:
        p.positive_int(value, "frameNo")
    check(info, "INVALID_INPUT", message)


def test_optional_positive_int() -> None:
    assert p.optional_positive_int(None, "limit") is None
    assert p.optional_positive_int("9", "limit") == 9
    with raises("INVALID_INPUT", "afterFrameNo must be a finite number greater than 0."):
        p.optional_positive_int(0, "afterFrameNo")


def test_typed_alias_falls_through_wrong_types() -> None:
    params = {"runId": 5, "filter": {"runId": "r"}, "options": {"runId": "o"}}
    assert p.read_alias(params, "runId", p.as_string, "filter", "options") == "r"
    assert p.read_alias({"runId": "top", "filter": {"runId": "r"}}, "runId", p.as_string, "filter") == "top"
    assert p.read_alias({"filter": [1], "options": {"runId": "o"}}, "runId", p.as_string, "filter", "options") == "o"
    assert (
        p.read_alias({"approved": "true", "decision": {"approved": False}}, "approved", p.as_boolean, "decision")
        is False
    )
    assert p.read_alias({}, "runId", p.as_string, "filter") is None


def test_limit_picks_the_raw_value_first() -> None:
    assert p.read_limit({}) == 50
    assert p.read_limit({}, default=1000) == 1000
    assert p.read_limit({"limit": 5}) == 5
    assert p.read_limit({"limit": "7"}) == 7
    assert p.read_limit({"limit": None, "filter": {"limit": 3}}) == 3
    assert p.read_limit({"limit": 2, "filter": {"limit": 3}}) == 2
    assert p.read_limit({"filter": "x"}) == 50
    with raises("INVALID_INPUT", "limit must be a finite number greater than 0."):
        p.read_limit({"limit": "x", "filter": {"limit": 5}})
    with raises("INVALID_INPUT", "limit must be an integer greater than 0."):
        p.read_limit({"filter": {"limit": 1.5}})


# -- run input ----------------------------------------------------------------------------
def test_conformance_input_depth() -> None:
    assert p.input_depth({"items": [{"child": {"leaf": True}}]}) == 4


@pytest.mark.parametrize(("value", "depth"), [(1, 0), ("x", 0), (None, 0), ({}, 1), ([], 1), ({"a": [1, {}]}, 3)])
def test_input_depth(value: Any, depth: int) -> None:
    assert p.input_depth(value) == depth


@pytest.mark.parametrize("value", [None, [], [1], "x", 5, True])
def test_non_object_input_becomes_empty(value: Any) -> None:
    assert p.validate_run_input(value) == {}


def test_conformance_webhook_input_depth() -> None:
    accepted = nest_objects(31, {"leaf": True})
    assert p.validate_run_input(accepted) is accepted
    with pytest.raises(GatewayError) as info:
        p.validate_run_input(nest_objects(32, {"leaf": True}))
    check(info, "INVALID_INPUT", INPUT_TOO_DEEP)


def test_input_size_boundary_counts_utf8_bytes() -> None:
    overhead = len('{"s":""}')
    fits = {"s": "x" * (1_048_576 - overhead)}
    assert p.validate_run_input(fits) is fits
    with pytest.raises(GatewayError) as info:
        p.validate_run_input({"s": "x" * (1_048_576 - overhead + 1)})
    check(info, "INVALID_INPUT", INPUT_TOO_BIG)
    with raises("INVALID_INPUT", INPUT_TOO_BIG):
        p.validate_run_input({"s": "é" * ((1_048_576 - overhead) // 2 + 1)})


def test_input_size_is_checked_before_depth() -> None:
    with raises("INVALID_INPUT", INPUT_TOO_BIG):
        p.validate_run_input({"big": "x" * 1_048_576, "deep": nest_objects(40, 1)})
    with raises("INVALID_INPUT", INPUT_TOO_DEEP):
        p.validate_run_input(nest_objects(100_000, 1))


# -- envelopes ----------------------------------------------------------------------------
def test_response_frame() -> None:
    frame = p.response_frame("c1", {"runId": "r"})
    assert jsv.encode_json(frame) == '{"type":"res","id":"c1","ok":true,"apiVersion":"v1","payload":{"runId":"r"}}'


def test_error_frame_matches_the_spec_example() -> None:
    frame = p.error_frame("c1", GatewayError("RunNotFound", "Run not found: r1"))
    assert frame == json.loads(
        '{"type": "res", "id": "c1", "ok": false, "apiVersion": "v1",'
        ' "error": {"version": "v1", "code": "RunNotFound", "message": "Run not found: r1"}}'
    )
    assert list(frame) == ["type", "id", "ok", "apiVersion", "error"]


def test_error_details_are_merged_after_the_fixed_keys() -> None:
    details = {
        "runId": "r",
        "nodeId": "n",
        "iteration": 0,
        "status": "approved",
        "code": "X",
        "version": "v9",
    }
    body = p.error_object(GatewayError("AlreadyDecided", "Approval for n has already been decided", details))
    assert list(body) == ["version", "code", "message", "runId", "nodeId", "iteration", "status"]
    assert (body["version"], body["code"]) == ("v1", "AlreadyDecided")


def test_unversioned_error_object() -> None:
    assert p.error_object(GatewayError("X", "m"), versioned=False) == {"code": "X", "message": "m"}


def test_event_frame() -> None:
    frame = p.event_frame("connect.challenge", {"nonce": "n", "ts": 1}, seq=1, state_version=0)
    assert jsv.encode_json(frame) == (
        '{"type":"event","event":"connect.challenge","payload":{"nonce":"n","ts":1},'
        '"seq":1,"stateVersion":0,"apiVersion":"v1"}'
    )


def test_route_not_found_and_webhook_bodies() -> None:
    assert jsv.encode_json(p.route_not_found_body()) == '{"error":{"code":"NOT_FOUND","message":"Route not found"}}'
    body = p.webhook_error_body(GatewayError("UNAUTHORIZED", "Webhook signature verification failed"))
    assert body == {
        "ok": False,
        "error": {"code": "UNAUTHORIZED", "message": "Webhook signature verification failed"},
    }


# -- properties --------------------------------------------------------------------------------
SPECIAL_LEAVES = st.sampled_from(
    ["x" * 16_385, "😀" * 8_193, "x" * 16_384, math.inf, -math.inf, math.nan, [0] * 257, [0] * 256, 10**30]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    SPECIAL_LEAVES,
)


def _deepen(value: Any, levels: int, as_object: bool) -> Any:
    return nest_objects(levels, value) if as_object else nest_arrays(levels, value)


JSONISH = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=5), children, max_size=5),
        st.builds(_deepen, children, st.integers(0, 36), st.booleans()),
    ),
    max_leaves=12,
)


def oracle_bounds(value: Any) -> str | None:
    """The frame bounds transcribed literally (recursive; fine for the sizes generated here)."""

    def too_deep(item: Any, depth: int) -> bool:
        if depth > 32:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else []
        return any(too_deep(child, depth + 1) for child in children)

    def walk(item: Any) -> str | None:
        if isinstance(item, str) and len(item.encode("utf-16-le", "surrogatepass")) // 2 > 16_384:
            return LONG_STRING
        if isinstance(item, float) and not math.isfinite(item):
            return NON_FINITE
        if isinstance(item, list):
            if len(item) > 256:
                return LONG_ARRAY
            for child in item:
                if (found := walk(child)) is not None:
                    return found
        if isinstance(item, dict):
            for child in item.values():
                if (found := walk(child)) is not None:
                    return found
        return None

    return DEPTH if too_deep(value, 1) else walk(value)


@settings(max_examples=300)
@given(JSONISH)
def test_bounds_match_the_literal_rules(value: Any) -> None:
    expected = oracle_bounds(value)
    if expected is None:
        p.check_frame_bounds(value)
    else:
        with raises("INVALID_INPUT", expected):
            p.check_frame_bounds(value)


@settings(max_examples=300)
@given(JSONISH)
def test_input_depth_matches_a_recursive_definition(value: Any) -> None:
    def depth(item: Any) -> int:
        if isinstance(item, dict):
            return 1 + max((depth(child) for child in item.values()), default=0)
        if isinstance(item, list):
            return 1 + max((depth(child) for child in item), default=0)
        return 0

    assert p.input_depth(value) == depth(value)


def _frame_outcome(message: str | bytes) -> p.RequestFrame | None:
    try:
        frame = p.parse_ws_frame(message, max_payload=4096)
    except GatewayError as error:
        assert error.code == "INVALID_INPUT"
        assert error.message is not None
        return None
    assert p.METHOD_PATTERN.fullmatch(frame.method)
    assert len(frame.method) <= 64
    assert len(frame.id) <= 128
    return frame


@given(st.text())
def test_random_text_frames_only_raise_gateway_errors(message: str) -> None:
    _frame_outcome(message)


@given(st.binary())
def test_random_binary_frames_only_raise_gateway_errors(message: bytes) -> None:
    _frame_outcome(message)


FRAMEISH = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.just("req"), LEAVES),
        "id": st.one_of(st.text(max_size=140), LEAVES),
        "method": st.one_of(st.from_regex(r"[a-z][a-zA-Z0-9]{0,70}", fullmatch=True), st.text(max_size=10), LEAVES),
        "params": JSONISH,
    },
)


@settings(max_examples=300)
@given(st.one_of(FRAMEISH, JSONISH))
def test_random_structured_frames_only_raise_gateway_errors(value: Any) -> None:
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        assume(False)
        return
    frame = _frame_outcome(text)
    if frame is not None:
        assert frame.id == value["id"]
        assert frame.method == value["method"]


@given(st.text(max_size=80))
def test_method_validation_is_total(method: str) -> None:
    try:
        assert p.validate_method(method) == method
    except GatewayError as error:
        assert error.message in {METHOD_TOO_LONG, METHOD_INVALID}
    else:
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*(\.[a-z][a-zA-Z0-9]*)*", method)


@given(st.from_regex(r"[a-z][a-zA-Z0-9]{0,9}(\.[a-z][a-zA-Z0-9]{0,9}){0,4}", fullmatch=True))
def test_well_formed_method_names_pass(method: str) -> None:
    assert p.validate_method(method) == method


@given(st.one_of(LEAVES, st.lists(LEAVES, max_size=2), st.text(alphabet="0123456789.eE+-xob \t", max_size=8)))
def test_positive_int_is_total(value: Any) -> None:
    try:
        result = p.positive_int(value, "limit")
    except GatewayError as error:
        assert error.code == "INVALID_INPUT"
        assert error.message in {
            "limit must be a finite number greater than 0.",
            "limit must be an integer greater than 0.",
            "limit must be at most 9007199254740991.",
        }
    else:
        assert isinstance(result, int)
        assert result > 0


@settings(max_examples=200)
@given(JSONISH)
def test_run_input_validation_is_total(value: Any) -> None:
    try:
        result = p.validate_run_input(value)
    except GatewayError as error:
        assert (error.code, error.message) in {
            ("INVALID_INPUT", INPUT_TOO_BIG),
            ("INVALID_INPUT", INPUT_TOO_DEEP),
        }
    else:
        assert result == (value if isinstance(value, dict) else {})


EXACT_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(EXACT_JSON)
def test_json_byte_length_matches_the_serialization(value: Any) -> None:
    # Without floats, Python and JavaScript write the same text.
    assert jsv.json_byte_length(value) == len(jsv.encode_json(value).encode("utf-8"))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_js_number_string_round_trips(number: float) -> None:
    text = jsv.js_number_string(number)
    assert float(text) == number or (number == 0 and text == "0")
    assert "e" not in text or (abs(number) >= 1e21 or abs(number) < 1e-6)
