"""The times the API reads (`app.api.times`): a body's time is an RFC 3339 string with an
offset and nothing else; a query's is RFC 3339 and never a number."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from app.api.times import BodyTime, QueryTime

BODY = TypeAdapter(BodyTime)
QUERY = TypeAdapter(QueryTime)

offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
instants = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=offsets
)


def from_json(value: Any) -> datetime:
    return BODY.validate_json(json.dumps(value))


@given(instants)
def test_a_body_time_with_any_offset_is_read_as_the_same_instant_in_utc(when: datetime) -> None:
    read = from_json(when.isoformat())
    assert read == when and read.tzinfo is UTC
    assert from_json(when.isoformat().replace("+00:00", "Z")) == when


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
def test_a_body_time_is_never_a_json_number_or_literal(value: Any) -> None:
    with pytest.raises(ValidationError, match="RFC 3339 time as a string"):
        from_json(value)


@given(st.datetimes(min_value=datetime(1900, 1, 1)))
def test_a_body_time_without_an_offset_is_refused_rather_than_guessed(naive: datetime) -> None:
    with pytest.raises(ValidationError, match="offset or Z"):
        from_json(naive.isoformat(timespec="seconds"))
    with pytest.raises(ValidationError, match="offset or Z"):
        from_json(naive.date().isoformat())


@given(st.one_of(st.integers(), st.floats()).map(str))
def test_a_query_time_is_never_a_number(text: str) -> None:
    with pytest.raises(ValidationError, match="not a number"):
        QUERY.validate_python(text)


def test_a_query_time_without_an_offset_is_left_for_the_filters_to_take_as_utc() -> None:
    assert QUERY.validate_python("2025-09-11T03:21:16") == datetime(2025, 9, 11, 3, 21, 16)
    assert QUERY.validate_python("2025-09-11T03:21:16Z") == datetime(
        2025, 9, 11, 3, 21, 16, tzinfo=UTC
    )
