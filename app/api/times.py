"""The times the API reads from clients, as pydantic types for parameters and bodies.

- `BodyTime`: a time in a request body (`POST /alerts/{alert_key}/snooze`'s `until`, and
  maintenance windows' `starts_at`, `ends_at`). A JSON string in RFC 3339 with its offset or
  `Z`, such as `2030-01-01T00:00:00Z`; given as aware UTC. A number (pydantic would read a
  Unix timestamp), a time without an offset (whose zone would be a guess), a date alone and
  anything else is a 422 naming the field. A body is written by a program, which can say
  what it means.
- `QueryTime`: a time in a query string (`start_after`, `start_before`, `modified_since`).
  RFC 3339 too, and never a number; a time without an offset is taken as UTC, which is
  what a person typing a URL means (`?start_after=2025-09-11`). The filters make it aware.

Either way the 422's detail names the field and shows a time that works.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

EXAMPLE = "2030-01-01T00:00:00Z"

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)", re.ASCII
)
"""RFC 3339's date-time (section 5.6) with its offset; the values of the other fields are
checked when the text is read."""


def _refuse(message: str) -> PydanticCustomError:
    return PydanticCustomError("rfc3339_time", message)


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, datetime):  # built in code, not read from a request
        if value.tzinfo is None or value.utcoffset() is None:
            raise _refuse(f"needs a time zone offset, e.g. {EXAMPLE}")
        return value
    if not isinstance(value, str):
        raise _refuse(f"must be an RFC 3339 time as a string, e.g. {EXAMPLE}, not {_kind(value)}")
    if not _RFC3339.fullmatch(value):
        raise _refuse(
            f"must be an RFC 3339 time with seconds and a time zone offset or Z, e.g. {EXAMPLE}"
        )
    try:
        return datetime.fromisoformat(value.upper())  # RFC 3339 allows a lower-case t and z
    except ValueError as exc:  # the shape is right, a field is not: month 13, hour 25
        raise _refuse(f"is not a valid time ({exc}), e.g. {EXAMPLE}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 has no UTC form
        raise _refuse("is out of range once in UTC") from None


BodyTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_utc),
    WithJsonSchema({"type": "string", "format": "date-time", "example": EXAMPLE}),
]
"""A time in a request body: an RFC 3339 string with an offset, as aware UTC."""


def _not_a_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            float(value)  # every form pydantic would read as a Unix timestamp: 1.5, .5, 2e-72
        except ValueError:
            return value
        raise _refuse(f"must be an RFC 3339 time such as {EXAMPLE}, not a number")
    return value


QueryTime = Annotated[
    datetime,
    BeforeValidator(_not_a_number),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A time in a query string: RFC 3339, never a number; without an offset, UTC."""
