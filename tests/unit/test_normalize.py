"""Normalization: one upstream row -> typed fields; nothing the upstream sends raises."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import normalize
from app.normalize import (
    JOB_VALUES,
    NormalizedJob,
    job_values,
    normalize_row,
    parse_code,
    parse_count,
    parse_duration,
    parse_size,
    parse_timestamp,
    raw_json,
    storable,
    text,
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
        ("007", 7),
        ("2147483647", 2147483647),
        ("2147483648", None),
        ("0000000000001", None),
        (1e400, None),
        (float("nan"), None),
        (12.0, 12),
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
        (" 2025-09-11T03:21:16Z ", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11t03:21:16z", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11T03:21:16\x00Z", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-09-11T03:21:16.5Z", datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)),
        ("2025-02-30T03:21:16Z", None),
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


# Text as json.loads can give it: any code point, lone surrogates (category Cs, which
# st.text() leaves out and which are rare among all code points) and NUL included.
ANY_CHARACTER = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\U0001f4be", "\u05e9", "\u0627", "\u202e", "\ufeff", " ", "N", "/"]),
)
# Not st.text(ANY_CHARACTER): it merges the alphabets into one, and then draws a surrogate or
# NUL about once in a hundred examples.
ANY_TEXT = st.lists(ANY_CHARACTER, max_size=40).map("".join)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a value: dataclass fields, dict keys and values, list items."""
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from strings_in(getattr(value, field.name))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def assert_storable(value: Any) -> None:
    for s in strings_in(value):
        s.encode("utf-8")  # raises on a lone surrogate
        assert "\x00" not in s


@given(st.one_of(st.text(), ANY_TEXT, st.integers(), st.floats(), st.none(), st.booleans()))
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


@given(st.dictionaries(st.one_of(st.sampled_from(list(PAGE_SAMPLE)), ANY_TEXT), JSON_VALUES))
def test_every_string_a_row_keeps_is_storable(row: dict[str, Any]) -> None:
    job = normalize_row("c", row)
    if job is None:  # skipped only for want of a jobId: check the rest all the same
        assert text(row.get("jobId")) is None
        job = normalize_row("c", {**row, "jobId": "J1"})
        assert job is not None
    assert_storable(job)
    assert json.loads(json.dumps(job.raw, allow_nan=False)) is not None  # no inf, no NaN


@given(JSON_VALUES)
def test_storable_values_encode(value: Any) -> None:
    assert_storable(storable(value))
    json.dumps(storable(value), allow_nan=False)


@given(ANY_TEXT)
def test_text_is_storable_or_none(value: str) -> None:
    result = text(value)
    if result is not None:
        assert_storable(result)
        assert result == result.strip()


ODD_ROWS = {
    "lone high surrogate": r'{"jobId": "J\ud800", "name": "a\ud800b", "k\ud800": "\ud800"}',
    "lone low surrogate": r'{"jobId": "J1", "name": "\udc00", "backupSize": "1 GB\udfff"}',
    "reversed pair": r'{"jobId": "J1", "name": "\ude00\ud83d", "jobDuration": "\ud800"}',
    "NUL": r'{"jobId": "J\u00001", "name": "\u0000", "startTime": "\u0000"}',
    "emoji": r'{"jobId": "J1", "name": "Backup \ud83d\udcbe done \u2705"}',
    "right to left": r'{"jobId": "J1", "name": "\u05d2\u05d9\u05d1\u05d5\u05d9 \u202eabc"}',
    "1e400": '{"jobId": "J1", "totalCount": 1e400, "jobDuration": 1e400, "extra": [-1e400]}',
}


@pytest.mark.parametrize("document", ODD_ROWS.values(), ids=ODD_ROWS.keys())
def test_odd_rows_normalize_without_raising(document: str) -> None:
    job = normalize_row("c", json.loads(document))
    assert job is not None
    assert_storable(job)
    json.dumps(job.raw, allow_nan=False)


def test_lone_surrogates_become_the_replacement_character() -> None:
    job = normalize_row("c", json.loads(ODD_ROWS["lone high surrogate"]))
    assert job is not None
    assert job.job_id == "J\ufffd"
    assert job.name == "a\ufffdb"
    assert job.raw == {"jobId": "J\ufffd", "name": "a\ufffdb", "k\ufffd": "\ufffd"}
    assert text("\udc00\ud800") == "\ufffd\ufffd"
    assert storable(["x\udfff", {"\ud800": "\x00"}]) == ["x\ufffd", {"\ufffd": ""}]


def test_a_surrogate_pair_in_a_string_becomes_its_character() -> None:
    assert text("\ud83d\udcbe") == "\U0001f4be"


@pytest.mark.parametrize(
    "value",
    [
        "Backup \U0001f4be done \u2705",
        "\u05d2\u05d9\u05d1\u05d5\u05d9",
        "\u0646\u0633\u062e",
        "\u202eabc",
        "Z\u00fcrich",
    ],
)
def test_emoji_and_right_to_left_text_pass_unchanged(value: str) -> None:
    job = normalize_row("c", {"jobId": value, "name": value, value: value})
    assert job is not None
    assert (job.job_id, job.name) == (value, value)
    assert job.raw == {"jobId": value, "name": value, value: value}
    assert storable(value) is value


def test_a_count_json_reads_as_infinity_is_null() -> None:
    row = json.loads('{"jobId": "J1", "totalCount": 1e400, "failedCount": -1e400}')
    assert row["totalCount"] == float("inf")
    job = normalize_row("c", row)
    assert job is not None
    assert (job.total_count, job.failed_count) == (None, None)
    assert job.raw == {"jobId": "J1", "totalCount": None, "failedCount": None}


def test_repeated_and_long_values_parse_the_same() -> None:
    # Durations and sizes are cached by their text; long ones are not cached.
    for _ in range(2):
        assert parse_duration("17m39s") == 1059
        assert parse_size("0.84 GB") == round(0.84 * 1024**3)
        assert parse_duration(" " * 40 + "17m39s") == 1059
        assert parse_size(" " * 40 + "3 KB") == 3072
        assert parse_duration("N/A") is None


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


# -- The fast paths give what the general paths give ------------------------------------------

SHAPED_DURATIONS = st.builds(
    lambda h, m, s, parts: "".join(
        f"{n}{u}"
        for n, u, keep in ((h, "h", parts[0]), (m, "m", parts[1]), (s, "s", parts[2]))
        if keep
    ),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
SHAPED_SIZES = st.builds(
    lambda n, frac, unit: f"{n}{frac} {unit}",
    st.integers(0, 10**15),
    st.one_of(st.just(""), st.integers(0, 10**6).map(lambda f: f".{f}")),
    st.sampled_from(["B", "KB", "MB", "GB", "TB", "PB", "XB", "kB", "GiB"]),
)


@given(st.one_of(SHAPED_DURATIONS, ANY_TEXT, st.text(alphabet="0123456789hms. HMSd", max_size=12)))
def test_the_duration_fast_path_reads_as_the_general_path(value: str) -> None:
    # Past the cache's length bound, the general path reads the text without its fast path.
    assert parse_duration(value) == parse_duration(" " * 40 + value + " ") or not value.strip()
    assert parse_duration(value) == normalize._duration_of_text(text(value))


@given(st.one_of(SHAPED_SIZES, ANY_TEXT, st.text(alphabet="0123456789. KMGTPiBb", max_size=14)))
def test_the_size_fast_path_reads_as_the_general_path(value: str) -> None:
    assert parse_size(value) == normalize._size_of_text(text(value))


def general_normalize_row(customer_id: str, row: dict[str, Any]) -> NormalizedJob | None:
    """`normalize_row` spelled with the public parsers only: what the fast one must equal."""
    job_id = text(row.get("jobId"))
    if job_id is None:
        return None
    return NormalizedJob(
        customer_id=customer_id,
        job_id=job_id,
        name=text(row.get("name")),
        job_type_code=parse_code(row.get("jobType")),
        module_code=parse_code(row.get("jobModule")),
        status_code=parse_code(row.get("status")),
        total_count=parse_count(row.get("totalCount")),
        failed_count=parse_count(row.get("failedCount")),
        successful_count=parse_count(row.get("successfulCount")),
        skipped_count=parse_count(row.get("skippedCount")),
        warning_count=parse_count(row.get("warningCount")),
        backup_size_bytes=parse_size(row.get("backupSize")),
        start_time=parse_timestamp(row.get("startTime")),
        end_time=parse_timestamp(row.get("endTime")),
        duration_seconds=parse_duration(row.get("jobDuration")),
        last_modified=parse_timestamp(row.get("lastModifyTime")),
        raw=storable(row),
    )


ROW_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(),
    ANY_TEXT,
    st.integers(0, 10**12).map(str),
    SHAPED_DURATIONS,
    SHAPED_SIZES,
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.sampled_from(["N/A", "", " 7 ", "1,234", "0 S", "0.84 GB", "2025-02-30T03:21:16Z"]),
)


@given(st.dictionaries(st.sampled_from(list(PAGE_SAMPLE)), ROW_VALUES))
def test_normalize_row_and_job_values_agree_with_the_general_parsers(row: dict[str, Any]) -> None:
    expected = general_normalize_row("c", row)
    assert normalize_row("c", row) == expected
    values = job_values(row)
    if expected is None:
        assert values is None
        return
    assert values is not None
    by_name = dict(zip(JOB_VALUES, values, strict=True))
    for name in JOB_VALUES:
        assert by_name[name] == getattr(expected, name), name


def test_job_values_are_in_the_store_s_column_order() -> None:
    values = job_values(PAGE_SAMPLE)
    assert values is not None
    assert dict(zip(JOB_VALUES, values, strict=True)) == {
        "job_id": "FB20250911032116214502",
        "name": None,
        "job_type_code": 7,
        "module_code": 304,
        "status_code": 3,
        "job_type": "microsoft_365",
        "module": "microsoft_365_groups",
        "status": "failed",
        "total_count": 2323,
        "failed_count": 0,
        "successful_count": 2323,
        "skipped_count": 0,
        "warning_count": 0,
        "backup_size_bytes": 0,
        "start_time": datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC),
        "end_time": datetime(2025, 9, 11, 3, 38, 56, tzinfo=UTC),
        "last_modified": datetime(2025, 9, 11, 3, 38, 57, tzinfo=UTC),
        "duration_seconds": 1059,
    }
    assert job_values({"jobId": "N/A"}) is None


def test_raw_json_keeps_the_bytes_received_when_they_can_be_stored_as_they_are() -> None:
    received = b'{"jobId": "J1",  "name":"Z\xc3\xbcrich", "n": 1.50}'
    row = json.loads(received)
    assert raw_json(row, received) == received.decode()
    # Without the bytes, or with escapes in them, the row is encoded again, made storable.
    assert raw_json(row) == '{"jobId":"J1","name":"Zürich","n":1.5}'
    escaped = rb'{"jobId": "J\u00001", "name": "a\ud800b", "ok": "tab\t"}'
    assert (
        raw_json(json.loads(escaped), escaped) == '{"jobId":"J1","name":"a\ufffdb","ok":"tab\\t"}'
    )
    assert raw_json({"x": 1}, b"\xff") == '{"x":1}'
