"""Time, injected: the service asks a clock rather than the system, so tests move time at will."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, aware UTC."""
    return datetime.now(UTC)


def to_second(value: datetime) -> datetime:
    """Aware UTC, to the second: the precision the API speaks."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


_ZERO = timedelta(0)


def iso(value: datetime | None) -> str | None:
    """The API's time format: UTC to the second, `YYYY-MM-DDTHH:MM:SSZ` (naive means UTC)."""
    if value is None:
        return None
    offset = value.utcoffset()
    if offset is not None and offset != _ZERO:
        value = value.astimezone(UTC)
    # isoformat, unlike strftime("%Y"), pads years before 1000 to four digits.
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
