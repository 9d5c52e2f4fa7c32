"""Cron patterns: validation and next fire times (docs/protocol.md#cron).

A pattern has 5 fields (minute hour day-of-month month day-of-week), or 6 with a leading seconds
field, or is one of the aliases ``@yearly @monthly @weekly @daily @hourly``. Fire times are
computed in the schedule's IANA time zone, or in the server's local time zone when it has none.
"""

from __future__ import annotations

import os
from datetime import datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from smithers.errors import InvalidInputError

ALIASES: Final = frozenset({"@yearly", "@monthly", "@weekly", "@daily", "@hourly"})
LOCALTIME_FILE: Final = "/etc/localtime"


def _invalid(pattern: object) -> InvalidInputError:
    return InvalidInputError(
        f"invalid cron pattern: {pattern!r} (expected 5 fields such as '0 8 * * 1-5', 6 with a leading "
        "seconds field, or one of @yearly @monthly @weekly @daily @hourly)",
        details={"pattern": pattern},
    )


def validate_pattern(pattern: object) -> str:
    """The pattern with its white space normalised, or ``INVALID_INPUT`` naming it."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidInputError("cron pattern must be a non-empty string")
    text = " ".join(pattern.split())
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise _invalid(pattern)
        return text.lower()
    fields = text.split(" ")
    if len(fields) not in (5, 6) or not croniter.is_valid(text, second_at_beginning=len(fields) == 6):
        raise _invalid(pattern)
    return text


def validate_timezone(name: object) -> str | None:
    """An IANA time-zone name (``None`` means the server's local zone), or ``INVALID_INPUT``."""
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("timezone must be an IANA time-zone name such as 'Europe/Paris'")
    try:
        ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: "America" is a directory
        raise InvalidInputError(f"unknown time zone: {name!r}", details={"timezone": name}) from exc
    return name.strip()


def local_zone() -> tzinfo:
    """The server's local time zone: ``$TZ`` if it names a zone, else ``/etc/localtime``, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open(LOCALTIME_FILE, "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


def next_fire_ms(pattern: str, after_ms: int, timezone: str | None = None) -> int:
    """The first fire time strictly after ``after_ms`` (epoch ms)."""
    zone = ZoneInfo(timezone) if timezone else local_zone()
    start = datetime.fromtimestamp(after_ms / 1000, zone)
    try:
        it = croniter(pattern, start, second_at_beginning=len(pattern.split()) == 6)
        return int(it.get_next(float) * 1000)
    except (CroniterBadCronError, CroniterBadDateError, ValueError) as exc:
        raise _invalid(pattern) from exc
