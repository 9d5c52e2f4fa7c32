"""Row helpers: JSON columns, camelCase wire rows, the clock."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

BOOLEAN_COLUMNS = frozenset({"cached", "enabled", "auto_approved", "done"})


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: int | float) -> str:
    """``new Date(ms).toISOString()``: ``2026-01-01T00:00:00.000Z`` (UTC, milliseconds)."""
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


SURROGATE: Final = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate code point: a Python string may hold one alone, UTF-8 text may not."""


def escape_surrogates(text: str) -> str:
    """JSON text with every surrogate code point written as a ``\\uXXXX`` escape (valid UTF-8 again)."""
    if SURROGATE.search(text) is None:
        return text
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON as stored in ``*_json`` columns (orjson; the standard library for what it refuses).

    Both write the same text for JSON values: no spaces, UTF-8 kept as is. orjson refuses integers
    beyond 64 bits, non-string keys and lone surrogates, which the standard library then writes
    (lone surrogates as ``\\uXXXX`` escapes, so any JSON value a client sends can be stored).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except TypeError:
        return escape_surrogates(json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys))


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@functools.cache
def camel(name: str) -> str:
    """``created_at_ms`` → ``createdAtMs`` (cached: column names are few)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=256)
def _wire_keys(columns: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    """The camelCase keys of a row's columns, and which of them are 0/1 flags."""
    return tuple(camel(c) for c in columns), frozenset(camel(c) for c in columns if c in BOOLEAN_COLUMNS)


def to_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row as the gateway returns it: camelCase keys, 0/1 flags as booleans."""
    keys, flags = _wire_keys(tuple(row))
    out = dict(zip(keys, row.values(), strict=True))
    for key in flags:
        if out[key] is not None:
            out[key] = bool(out[key])
    return out
