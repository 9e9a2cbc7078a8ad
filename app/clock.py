"""Time, injected: the service asks a clock rather than the system, so tests move time at will."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, aware UTC."""
    return datetime.now(UTC)


def to_second(value: datetime) -> datetime:
    """Aware UTC, to the second: the precision the API speaks."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)
