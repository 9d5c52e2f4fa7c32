"""JavaScript value semantics and JSON text as the reference gateway sees them.

Trimming, UTF-16 lengths, ``Number()``/``String()`` conversions, strict JSON parsing and
``JSON.stringify``-compatible encoding and sizes: what the wire rules of the protocol are defined in.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

from smithers.store.rows import SURROGATE, escape_surrogates

# -- JavaScript value semantics ----------------------------------------------------------------
JS_WHITESPACE: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
"""Characters ``String.prototype.trim`` and regex ``\\s`` treat as white space."""

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_RADIX_DIGITS: Final = {
    "0x": (16, re.compile(r"[0-9a-fA-F]+")),
    "0o": (8, re.compile(r"[0-7]+")),
    "0b": (2, re.compile(r"[01]+")),
}


def js_trim(text: str) -> str:
    """``text.trim()`` with JavaScript's white-space set."""
    return text.strip(JS_WHITESPACE)


def utf16_length(text: str) -> int:
    """``text.length`` in JavaScript: UTF-16 code units."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value."""
    if value is None or value is False or value == "":
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return bool(value) and not math.isnan(value)
    return True


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _string_to_number(text: str) -> float:
    text = js_trim(text)
    if not text:
        return 0.0
    if text in ("Infinity", "+Infinity", "-Infinity"):
        return -math.inf if text[0] == "-" else math.inf
    radix = _RADIX_DIGITS.get(text[:2].lower())
    if radix is not None:
        base, digits = radix
        return _int_to_float(int(text[2:], base)) if digits.fullmatch(text[2:]) else math.nan
    return float(text) if _DECIMAL.fullmatch(text) else math.nan


def js_to_number(value: Any) -> float:
    """``Number(value)`` for a JSON value (``None`` is JSON ``null``, i.e. 0)."""
    while isinstance(value, list | tuple):  # Number([x]) is Number(String(x)); "," never parses
        if len(value) != 1:
            return 0.0 if not value else math.nan
        value = value[0]
        if value is None:
            return 0.0
        if isinstance(value, bool):
            return math.nan  # String(true) is "true"
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int):
        return _int_to_float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return _string_to_number(value)
    return math.nan


def js_number_string(value: float) -> str:
    """``String(value)`` for a number, e.g. ``1e+21``, ``0.000001``, ``1.5e-7``, ``5``."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return str(value)
    x = _int_to_float(value) if isinstance(value, int) else float(value)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        body = digits + "0" * (point - count)
    elif 0 < point <= 21:
        body = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        body = "0." + "0" * -point + digits
    else:
        exp = point - 1
        body = digits[0] + (f".{digits[1:]}" if count > 1 else "") + f"e{'+' if exp >= 0 else '-'}{abs(exp)}"
    return ("-" if x < 0 else "") + body


# -- JSON text ---------------------------------------------------------------------------------
class JsonNestingError(ValueError):
    """The JSON text nests deeper than the parser can follow."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(text: str) -> int | float:
    # JavaScript reads every number as a double: integers too long for one become Infinity.
    return int(text) if len(text) <= 300 else float(text)


def loads_strict(text: str | bytes) -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity`` literals); raises ``ValueError``.

    orjson parses what it can (fast; an integer beyond 64 bits becomes a double, as in JavaScript);
    the standard library takes the rest, which is either invalid or needs its leniency: lone
    surrogate escapes, numbers that overflow a double, nesting deeper than orjson follows.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except RecursionError as exc:
        raise JsonNestingError("JSON nesting is too deep") from exc


_SHORT_ESCAPE = re.compile(r'["\\\x08\x0c\n\r\t]')
_CONTROL_ESCAPE = re.compile(r"[\x00-\x07\x0b\x0e-\x1f]")
_ANY_ESCAPE = re.compile('["\\\\\x00-\x1f\ud800-\udfff]')


def encode_json(value: Any) -> str:
    """Compact JSON text as ``JSON.stringify`` writes it (non-ASCII kept, lone surrogates escaped).

    orjson writes it directly (NaN and infinities become ``null``, as in JavaScript); what it
    refuses (lone surrogates, integers beyond 64 bits, non-string keys) goes the slow way.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        pass
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return escape_surrogates(text)


def _string_json_bytes(text: str) -> int:
    size = len(text.encode("utf-8", "surrogatepass")) + 2
    if _ANY_ESCAPE.search(text) is not None:
        size += len(_SHORT_ESCAPE.findall(text))  # one byte becomes two
        size += 5 * len(_CONTROL_ESCAPE.findall(text))  # one byte becomes \u00XX
        size += 3 * len(SURROGATE.findall(text))  # three bytes become \uXXXX
    return size


def json_byte_length(value: Any) -> int:
    """UTF-8 byte length of ``JSON.stringify(value)``, computed without recursion."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += _string_json_bytes(item)
        elif item is None or isinstance(item, bool):
            total += 4 if item is not False else 5
        elif isinstance(item, int | float):
            total += len(js_number_string(item)) if math.isfinite(to_float(item)) else 4
        elif isinstance(item, dict):
            total += 2 + max(len(item) - 1, 0) + len(item)  # braces, commas, colons
            for key, child in item.items():
                total += _string_json_bytes(str(key))
                stack.append(child)
        elif isinstance(item, list | tuple):
            total += 2 + max(len(item) - 1, 0)
            stack.extend(item)
        else:
            raise TypeError(f"not a JSON value: {type(item).__name__}")
    return total


def to_float(value: float) -> float:
    return _int_to_float(value) if isinstance(value, int) else value
