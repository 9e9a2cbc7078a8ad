"""Normalization: one upstream row -> typed fields; nothing the upstream sends raises."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.normalize import (
    normalize_row,
    parse_count,
    parse_duration,
    parse_size,
    parse_timestamp,
)

PAGE_SAMPLE: dict[str, Any] = {
    "jobType": 7,
    "jobModule": 304,
    "status": 3,
    "jobId": "FB20250911032116214502",
    "name": "N/A",
    "totalCount": "2323",
    "failedCount": "0",
    "successfulCount": "2323",
    "skippedCount": "0",
    "warningCount": "0",
    "backupSize": "0 GB",
    "startTime": "2025-09-11T03:21:16Z",
    "endTime": "2025-09-11T03:38:56Z",
    "jobDuration": "17m39s",
    "lastModifyTime": "2025-09-11T03:38:57Z",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("17m39s", 1059),
        ("2m33s", 153),
        ("38s", 38),
        ("52s", 52),
        ("0 S", 0),
        ("1h2m3s", 3723),
        ("2d3h", 183600),
        ("1H 2M 3S", 3723),
        (" 4 h ", 14400),
        ("90", 90),
        ("N/A", None),
        ("n/a", None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("17x", None),
        ("m", None),
        (None, None),
        (12, 12),
        ([1], None),
    ],
)
def test_durations(text: Any, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0 GB", 0),
        ("0.84 GB", round(0.84 * 1024**3)),
        ("512 MB", 512 * 1024**2),
        ("1.5 TB", round(1.5 * 1024**4)),
        ("3 KB", 3072),
        ("12 B", 12),
        ("7gb", 7 * 1024**3),
        ("1 GiB", 1024**3),
        ("N/A", None),
        ("", None),
        ("lots", None),
        ("5 XB", None),
        ("-1 GB", None),
        (None, None),
    ],
)
def test_sizes(text: Any, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("2323", 2323),
        ("0", 0),
        (" 5 ", 5),
        (7, 7),
        ("1,234", 1234),
        ("N/A", None),
        ("", None),
        ("-3", None),
        ("3.5", None),
        ("many", None),
        (None, None),
        (True, None),
    ],
)
def test_counts(text: Any, count: int | None) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2025-09-11T03:21:16Z", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11T03:21:16.987Z", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11T05:21:16+02:00", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11T03:21:16", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("03-14-2026T12:00:00Z", datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC)),
        ("N/A", None),
        ("", None),
        ("yesterday", None),
        ("2025-13-45T99:99:99Z", None),
        (None, None),
    ],
)
def test_timestamps(text: Any, when: datetime | None) -> None:
    assert parse_timestamp(text) == when


def test_the_pages_sample_row() -> None:
    job = normalize_row("caf9", PAGE_SAMPLE)
    assert job is not None
    assert (job.job_type, job.module, job.status) == (
        "microsoft_365",
        "microsoft_365_groups",
        "failed",
    )
    assert (job.job_type_code, job.module_code, job.status_code) == (7, 304, 3)
    assert job.name is None
    assert job.total_count == 2323
    assert job.successful_count == 2323
    assert job.backup_size_bytes == 0
    assert job.duration_seconds == 1059
    assert job.start_time == datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)
    assert job.end_time == datetime(2025, 9, 11, 3, 38, 56, tzinfo=UTC)
    assert job.last_modified == datetime(2025, 9, 11, 3, 38, 57, tzinfo=UTC)
    assert job.raw == PAGE_SAMPLE


def test_the_placeholder_first_row_is_skipped() -> None:
    placeholder = {k: "N/A" for k in PAGE_SAMPLE} | {"jobType": 0, "jobModule": 0, "status": 0}
    assert normalize_row("caf9", placeholder) is None


def test_unknown_codes_and_missing_fields_never_raise() -> None:
    job = normalize_row("c", {"jobId": "J1", "jobType": 99, "jobModule": 372, "status": 42})
    assert job is not None
    assert (job.job_type, job.module, job.status) == ("unknown", "unknown", "unknown")
    assert (job.job_type_code, job.module_code, job.status_code) == (99, 372, 42)
    assert job.total_count is None and job.start_time is None and job.duration_seconds is None


@given(
    d=st.integers(0, 30),
    h=st.integers(0, 23),
    m=st.integers(0, 59),
    s=st.integers(0, 59),
    upper=st.booleans(),
    space=st.sampled_from(["", " ", "  "]),
)
def test_duration_round_trip(d: int, h: int, m: int, s: int, upper: bool, space: str) -> None:
    parts = [f"{n}{space}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n]
    text = space.join(parts) or f"0{space}s"
    if upper:
        text = text.upper()
    assert parse_duration(text) == d * 86400 + h * 3600 + m * 60 + s


@given(
    st.integers(0, 10**6), st.sampled_from([("B", 0), ("KB", 1), ("MB", 2), ("GB", 3), ("TB", 4)])
)
def test_size_round_trip(n: int, unit: tuple[str, int]) -> None:
    name, power = unit
    assert parse_size(f"{n} {name}") == n * 1024**power
    assert parse_size(f"{n}{name.lower()}") == n * 1024**power


@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans()))
def test_parsers_never_raise(value: Any) -> None:
    for parse in (parse_duration, parse_size, parse_count, parse_timestamp):
        result = parse(value)
        assert result is None or isinstance(result, int | datetime)
    if isinstance(result := parse_duration(value), int):
        assert result >= 0


@given(
    st.dictionaries(
        st.sampled_from(list(PAGE_SAMPLE)), st.one_of(st.text(), st.integers(), st.none())
    )
)
def test_any_row_normalizes_or_is_skipped(row: dict[str, Any]) -> None:
    job = normalize_row("c", row)
    if job is not None:
        assert job.job_id and job.job_id.strip() == job.job_id


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_duration, "99999999999d"),
        (parse_duration, "1" * 400),
        (parse_size, "99999999999 TB"),
        (parse_count, "99999999999"),
    ],
)
def test_absurd_values_become_null_rather_than_overflow_a_column(parse: Any, text: str) -> None:
    assert parse(text) is None


def test_nul_characters_never_reach_the_database() -> None:
    row = PAGE_SAMPLE | {"jobId": "J\x001", "name": "bad\x00name", "extra": {"k\x00": ["v\x00"]}}
    job = normalize_row("c", row)
    assert job is not None
    assert job.job_id == "J1"
    assert job.name == "badname"
    assert job.raw["extra"] == {"k": ["v"]}
    assert "\x00" not in repr(job.raw)


def test_numbers_json_cannot_hold_are_dropped_from_the_raw_row() -> None:
    row = PAGE_SAMPLE | {"extra": [float("inf"), float("nan"), 1.5], "deep": {"x": float("-inf")}}
    job = normalize_row("c", row)
    assert job is not None
    assert job.raw["extra"] == [None, None, 1.5]
    assert job.raw["deep"] == {"x": None}
