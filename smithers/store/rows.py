"""Row helpers: JSON columns, camelCase wire rows, the clock."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from typing import Any

import orjson

BOOLEAN_COLUMNS = frozenset({"cached", "enabled", "auto_approved", "done"})


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(ms: int | float) -> str:
    """``new Date(ms).toISOString()``: ``2026-01-01T00:00:00.000Z`` (UTC, milliseconds)."""
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON as stored in ``*_json`` columns (orjson; the standard library for what it refuses).

    Both write the same text for JSON values: no spaces, UTF-8 kept as is. orjson refuses integers
    beyond 64 bits and non-string keys, which the standard library then writes.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


def loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


@functools.cache
def camel(name: str) -> str:
    """``created_at_ms`` → ``createdAtMs`` (cached: column names are few)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def to_wire(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row as the gateway returns it: camelCase keys, 0/1 flags as booleans."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in BOOLEAN_COLUMNS and value is not None:
            value = bool(value)
        out[camel(key)] = value
    return out
