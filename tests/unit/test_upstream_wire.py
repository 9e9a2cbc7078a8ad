"""The tolerant payload helpers in app.upstream.wire, and the backoff arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.normalize import raw_json, storable
from app.upstream import RetryPolicy, UpstreamMalformed
from app.upstream.client import backoff_delay, jobs_filter, usable_page_size
from app.upstream.wire import (
    count_or_none,
    customer_of,
    parse_page,
    request_id_of,
    retry_after_of,
    unique_jobs,
)

NOW = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        ("12", 12),
        (" 7 ", 7),
        (3.0, 3),
        ("N/A", None),
        ("", None),
        (None, None),
        (-1, None),
        ("-1", None),
        (True, None),
        (2.5, None),
        ("1e3", None),
        ("٣", None),  # a non-ASCII digit
        ("9" * 5000, None),
    ],
)
def test_count_or_none(value: Any, expected: int | None) -> None:
    assert count_or_none(value) == expected


@given(json_values)
def test_count_or_none_never_raises(value: Any) -> None:
    result = count_or_none(value)
    assert result is None or (isinstance(result, int) and result >= 0)


@given(st.integers(min_value=0, max_value=10**15))
def test_count_or_none_reads_numbers_and_digit_strings(n: int) -> None:
    assert count_or_none(n) == count_or_none(str(n)) == n


@given(json_values)
def test_parse_page_either_parses_or_is_malformed(value: Any) -> None:
    content = json.dumps({"data": value, "metadata": value}).encode()
    if value is None:
        assert parse_page(content).data == []
    elif isinstance(value, list) and all(isinstance(row, dict) for row in value):
        # Compared as JSON: NaN, which JSON round-trips, is never equal to itself.
        assert json.dumps(parse_page(content).data) == json.dumps(value)
    else:
        with pytest.raises(UpstreamMalformed) as caught:
            parse_page(content, customer_id="c1", page=1)
        assert caught.value.customer_id == "c1"


def test_parse_page_reads_the_envelope_and_ignores_the_unknown() -> None:
    content = json.dumps(
        {
            "data": [{"jobId": "J1", "new": {"x": 1}}],
            "metadata": {"pageIndex": "2", "pageSize": 100, "totalCount": "N/A", "more": 1},
            "extra": True,
        }
    ).encode()

    page = parse_page(content)

    assert page.data == [{"jobId": "J1", "new": {"x": 1}}]
    assert page.metadata.page_index == 2
    assert page.metadata.page_size == 100
    assert page.metadata.total_count is None


@pytest.mark.parametrize("metadata", [None, "oops", [], {}])
def test_parse_page_without_usable_metadata(metadata: Any) -> None:
    page = parse_page(json.dumps({"data": [], "metadata": metadata}).encode())

    assert page.metadata.total_count is None
    assert page.metadata.page_size is None


def test_null_data_is_an_empty_page_and_missing_data_is_malformed() -> None:
    assert parse_page(b'{"data": null, "metadata": {"totalCount": 0}}').data == []
    with pytest.raises(UpstreamMalformed):
        parse_page(b'{"message": "Internal error"}')


def test_deeply_nested_body_is_malformed_not_a_crash() -> None:
    with pytest.raises(UpstreamMalformed):
        parse_page(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"id": "c1", "organization": "Contoso", "tenants": []}, ("c1", "Contoso")),
        ({"id": " c1 ", "organization": "N/A"}, ("c1", None)),
        ({"id": "c1"}, ("c1", None)),
        ({"id": 42, "organization": ""}, ("42", None)),
    ],
)
def test_customer_of(row: dict[str, Any], expected: tuple[str, str | None]) -> None:
    customer = customer_of(row)

    assert customer is not None
    assert (customer.id, customer.organization) == expected


@pytest.mark.parametrize("row", [{}, {"id": None}, {"id": "N/A"}, {"id": True}, {"id": ""}])
def test_customer_without_id(row: dict[str, Any]) -> None:
    assert customer_of(row) is None


@given(
    st.lists(
        st.fixed_dictionaries(
            {}, optional={"jobId": st.sampled_from(["J1", "J2", "J3", "N/A", "", " J1 "])}
        ),
        max_size=20,
    )
)
def test_unique_jobs(rows: list[dict[str, Any]]) -> None:
    unique = unique_jobs(rows)

    ids = [
        str(row["jobId"]).strip()
        for row in unique
        if row.get("jobId", "").strip() not in ("", "N/A")
    ]
    assert len(ids) == len(set(ids))
    assert set(ids) == {
        row["jobId"].strip() for row in rows if row.get("jobId", "").strip() not in ("", "N/A")
    }
    without_id = [row for row in rows if row.get("jobId", "").strip() in ("", "N/A")]
    assert len(unique) == len(set(ids)) + len(without_id)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"request-id": "a"}, "a"),
        ({"X-Request-Id": "b"}, "b"),
        ({"x-correlation-id": " c "}, "c"),
        ({"request-id": "", "x-request-id": "d"}, "d"),
        ({"request-id": "x" * 500}, "x" * 128),
        ({"other": "e"}, None),
    ],
)
def test_request_id_of(headers: dict[str, str], expected: str | None) -> None:
    assert request_id_of(httpx.Headers(headers)) == expected


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert retry_after_of(httpx.Headers({"retry-after": str(seconds)}), now=NOW) == seconds


@given(st.integers(min_value=-10_000, max_value=10**6))
def test_retry_after_http_date(seconds: int) -> None:
    when = format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)

    assert retry_after_of(httpx.Headers({"retry-after": when}), now=NOW) == max(seconds, 0)


@pytest.mark.parametrize("value", ["soon", "-5", "1e9", "", "Mon, 99 Foo 2026"])
def test_unreadable_retry_after_is_ignored(value: str) -> None:
    assert retry_after_of(httpx.Headers({"retry-after": value}), now=NOW) is None


@given(
    attempt=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0, max_value=100),
    cap=st.floats(min_value=0, max_value=1_000),
    fraction=st.floats(min_value=0, max_value=1),
)
def test_backoff_stays_within_the_full_jitter_range(
    attempt: int, base: float, cap: float, fraction: float
) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)

    delay = backoff_delay(policy, attempt, lambda low, high: low + (high - low) * fraction)

    assert 0 <= delay <= min(cap, base * 2 ** min(attempt - 1, 62))


def test_jobs_filter_and_page_size() -> None:
    assert jobs_filter(None, None) == {}
    assert jobs_filter(0, None) == {"jobType": 0}
    assert usable_page_size(None, 100) == 100
    assert usable_page_size(50, 100) == 50
    assert usable_page_size(500, 100) == 100
    assert usable_page_size(0, 100) == 100


def test_parse_page_keeps_each_row_s_own_bytes() -> None:
    content = (
        b'{"data": [{"jobId": "J1", "name": "x"},  {"jobId":"J2","n":[1, 2.5]}], '
        b'"metadata": {"totalCount": 2}}'
    )
    page = parse_page(content)
    assert page.data == [{"jobId": "J1", "name": "x"}, {"jobId": "J2", "n": [1, 2.5]}]
    assert page.raw == [b'{"jobId": "J1", "name": "x"}', b'{"jobId":"J2","n":[1, 2.5]}']
    assert page.metadata.total_count == 2
    assert parse_page(b'{"data": null}').raw == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"data": [{"jobId": "J1", "x": NaN}]}',
        b'{"data": [{"jobId": "J1", "x": 1e400}]}',
        b'{"data": [{"jobId": "J\\ud800"}]}',
    ],
)
def test_what_the_fast_decoder_refuses_is_read_as_before_without_raw_bytes(content: bytes) -> None:
    page = parse_page(content)
    assert page.raw is None
    assert json.dumps(page.data) == json.dumps(json.loads(content)["data"])


@given(st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=4), max_size=3))
def test_raw_json_of_a_page_s_rows_is_the_row_made_storable(rows: list[dict[str, Any]]) -> None:
    content = json.dumps({"data": rows}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    page = parse_page(content)
    for n, row in enumerate(page.data):
        received = page.raw[n] if page.raw is not None else None
        document = raw_json(row, received)
        expected = json.dumps(storable(row), allow_nan=False)
        assert json.loads(document) == json.loads(expected)
        document.encode("utf-8")  # no lone surrogate
        assert "\\u0000" not in document and "\x00" not in document


def test_metadata_reads_the_upstream_s_names_and_the_field_names() -> None:
    page = parse_page(b'{"data": [], "metadata": {"total_count": "7", "pageSize": 50}}')
    assert (page.metadata.total_count, page.metadata.page_size) == (7, 50)
