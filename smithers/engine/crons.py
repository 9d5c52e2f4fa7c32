"""Cron patterns: validation and next fire times (5-field patterns, UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import CroniterBadCronError, croniter

from smithers.errors import InvalidInputError


def validate_pattern(pattern: object) -> str:
    """The pattern, trimmed, if it is a valid 5-field cron expression; INVALID_INPUT otherwise."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidInputError("cron pattern must be a non-empty string")
    text = " ".join(pattern.split())
    if len(text.split(" ")) != 5 or not croniter.is_valid(text):
        raise InvalidInputError(
            f"invalid cron pattern: {pattern!r} (expected 5 fields, e.g. '0 8 * * 1-5')", details={"pattern": pattern}
        )
    return text


def next_fire_ms(pattern: str, after_ms: int) -> int:
    """The first fire time strictly after ``after_ms``."""
    try:
        it = croniter(pattern, datetime.fromtimestamp(after_ms / 1000, UTC))
    except (CroniterBadCronError, ValueError) as exc:
        raise InvalidInputError(f"invalid cron pattern: {pattern!r}") from exc
    return int(it.get_next(float) * 1000)
