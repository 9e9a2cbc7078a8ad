"""Pure functions that turn one upstream job row into one job's typed fields.

The upstream sends every field but the three codes as a string, any of which may be
`"N/A"`, empty or something never seen before. Nothing here raises on a bad value: a value
that cannot be read becomes `None`, and only a row without a usable `jobId` is dropped
(`normalize_row` returns `None`, and the caller counts it). Every string kept (typed fields
and the raw row, keys included) is one a database can store: no NUL, and no lone surrogate
(`json.loads` makes one of `"\\ud800"`; UTF-8 cannot encode it), which becomes U+FFFD.

This runs for every field of every row of every refresh, so the common values take fast
paths (plain digits, ISO `...Z` times, `17m39s` durations, `0.84 GB` sizes), each of which
gives exactly what the general path would (tests compare the two on generated values).

Two shapes of the result:
- `job_values(row)`: the typed fields as a plain tuple in `JOB_VALUES` order, the order of
  the store's job columns, names included: what a writer binds, with nothing in between;
- `normalize_row(customer_id, row)`: the same as a `NormalizedJob`, with the raw row made
  storable (`storable`), for callers that want objects.

`raw_json(row, received)` gives the raw row's JSON text for the store: the bytes the
upstream sent when they can be stored as they are, so a refresh need not encode it again.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import catalog

# Values past these are garbage, not data; they must not overflow a database column either.
MAX_COUNT = 2**31 - 1
MAX_DURATION_SECONDS = 10 * 366 * 86400
MAX_SIZE_BYTES = 2**63 - 1

_MISSING = frozenset({"", "n/a", "na", "none", "null", "-", "--"})
# Lower-casing never shortens a string, so anything longer cannot be a missing marker.
_MISSING_MAX_LEN = max(map(len, _MISSING))

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_DURATION_WHOLE = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[dhms]\s*)+", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_SIZE_POWER = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}

_CODE = re.compile(r"-?\d{1,12}")
_GROUPED_COUNT = re.compile(r"\d{1,3}(,\d{3})+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Parsed durations and sizes are cached by their text: a few hundred values repeat across
# 100k rows. Long strings are not cached, so the cache stays small whatever is sent.
_CACHE_SIZE = 4096
_CACHED_MAX_LEN = 32

# The shapes the upstream sends, read without the general path: `17m39s`, `1h02m03s`, `38s`
# (lower-case units, no spaces, whole numbers) and `0.84 GB`, `512 MB`, `0 B`. Anything else
# (upper-case units, spaces, days, `GiB`, ...) takes the general path.
_DURATION_FAST = re.compile(r"(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,7})s)?")
_SIZE_FAST = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,15})?) ([KMGTP]?B)")
_SIZE_FAST_FACTOR = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}


@dataclass(frozen=True, slots=True)
class NormalizedJob:
    """One job as the store keeps it and the API serves it (names derive from codes)."""

    customer_id: str
    job_id: str
    name: str | None
    job_type_code: int | None
    module_code: int | None
    status_code: int | None
    total_count: int | None
    failed_count: int | None
    successful_count: int | None
    skipped_count: int | None
    warning_count: int | None
    backup_size_bytes: int | None
    start_time: datetime | None
    end_time: datetime | None
    duration_seconds: int | None
    last_modified: datetime | None
    raw: dict[str, Any]

    @property
    def job_type(self) -> str:
        return catalog.JOB_TYPE.name(self.job_type_code)

    @property
    def module(self) -> str:
        return catalog.MODULE.name(self.module_code)

    @property
    def status(self) -> str:
        return catalog.STATUS.name(self.status_code)


def clean(value: str) -> str:
    """`value` as a database stores it: NUL removed, lone surrogates -> U+FFFD.

    A high + low surrogate pair becomes the character it encodes. Plain text (ASCII, or any
    text UTF-8 can encode) comes back as it is, cheaply.
    """
    if value.isascii():
        return value.replace("\x00", "") if "\x00" in value else value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Only surrogates fail: UTF-16 pairs them up where it can and replaces the rest.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value.replace("\x00", "") if "\x00" in value else value


def _text_of_str(value: str) -> str | None:
    stripped = clean(value).strip()
    if len(stripped) <= _MISSING_MAX_LEN and stripped.lower() in _MISSING:
        return None
    return stripped


def text(value: Any) -> str | None:
    """A string field, or None for N/A, empty and non-strings."""
    if isinstance(value, str):
        return _text_of_str(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _text_of_str(str(value))
    return None


def _integer(value: Any, grouped: bool) -> int | None:
    """An int, an integral float, or a string of digits (`1,234` too when `grouped`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    s = text(value)
    if s is None:
        return None
    if _CODE.fullmatch(s):
        return int(s)
    if grouped and _GROUPED_COUNT.fullmatch(s):
        return int(s.replace(",", ""))
    return None


def parse_code(value: Any) -> int | None:
    """An enum code: an int, or a string of digits; anything else (or out of range) None."""
    if type(value) is int:
        return value if -MAX_COUNT <= value <= MAX_COUNT else None
    code = _integer(value, grouped=False)
    return code if code is not None and -MAX_COUNT <= code <= MAX_COUNT else None


def parse_count(value: Any) -> int | None:
    """`"2323"` -> 2323; `"N/A"`, `""`, negatives and garbage -> None."""
    if type(value) is str and len(value) <= 12 and value.isascii() and value.isdigit():
        code: int | None = int(value)  # the common case: plain ASCII digits
    else:
        code = _integer(value, grouped=True)
    return code if code is not None and 0 <= code <= MAX_COUNT else None


def _bounded(value: float, limit: int) -> int | None:
    return round(value) if math.isfinite(value) and 0 <= value <= limit else None


def parse_duration(value: Any) -> int | None:
    """`"17m39s"` -> 1059, `"0 S"` -> 0, `"2d3h"` -> 183600; N/A and garbage -> None.

    Units d, h, m, s in any case, with optional spaces; a bare number is seconds.
    """
    if type(value) is str:
        fast = _duration_fast(value)
        if fast is not None:
            return fast
        if len(value) <= _CACHED_MAX_LEN:
            return _duration_of_str(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return _bounded(value, MAX_DURATION_SECONDS)
    return _duration_of_text(text(value))


def _duration_fast(value: str) -> int | None:
    """`17m39s` and the like as the general path reads them; None: not this shape (ask the
    general path, which may still read it)."""
    m = _DURATION_FAST.fullmatch(value)
    if m is None or not value:
        return None
    h, mi, se = m.groups()
    seconds = (int(h) * 3600 if h else 0) + (int(mi) * 60 if mi else 0) + (int(se) if se else 0)
    return seconds if seconds <= MAX_DURATION_SECONDS else None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _duration_of_str(value: str) -> int | None:
    return _duration_of_text(_text_of_str(value))


def _duration_of_text(s: str | None) -> int | None:
    if s is None:
        return None
    if _PLAIN_NUMBER.fullmatch(s):
        return _bounded(float(s), MAX_DURATION_SECONDS)
    if not _DURATION_WHOLE.fullmatch(s):
        return None
    total = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(s))
    return _bounded(total, MAX_DURATION_SECONDS)


def parse_size(value: Any) -> int | None:
    """`"0.84 GB"` -> 901943132 bytes (1 KB = 1024 B); N/A and garbage -> None."""
    if type(value) is str:
        m = _SIZE_FAST.fullmatch(value)
        if m is not None:
            # The general path's arithmetic (`_bounded` of float x 1024**power), so that both
            # round alike; the number is finite and not negative by its shape.
            number, unit = m.groups()
            size = float(number) * _SIZE_FAST_FACTOR[unit]
            return round(size) if size <= MAX_SIZE_BYTES else None
        if len(value) <= _CACHED_MAX_LEN:
            return _size_of_str(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_SIZE_BYTES else None
    return _size_of_text(text(value))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _size_of_str(value: str) -> int | None:
    return _size_of_text(_text_of_str(value))


def _size_of_text(s: str | None) -> int | None:
    if s is None:
        return None
    m = _SIZE.fullmatch(s)
    if m is None:
        return None
    unit = (m.group(2) or "").lower()
    power = _SIZE_POWER.get(unit[:1] if unit else "")
    if power is None or (unit and unit not in {"b", unit[:1], unit[:1] + "b", unit[:1] + "ib"}):
        return None
    return _bounded(float(m.group(1)) * 1024**power, MAX_SIZE_BYTES)


_TIME_FORMATS = (
    "%m-%d-%YT%H:%M:%SZ",
    "%m-%d-%YT%H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %I:%M:%S %p",
    "%Y/%m/%d %H:%M:%S",
)


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 (naive means UTC) or the other shapes seen upstream -> aware UTC, to the second."""
    if type(value) is str and len(value) == 20 and value[10] == "T" and value[19] == "Z":
        fast = _plain_utc(value)
        if fast is not None:
            return fast
    s = text(value)
    if s is None:
        return None
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        for fmt in _TIME_FORMATS:
            try:
                parsed = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC).replace(microsecond=0)
    except (OverflowError, ValueError):
        return None


def _plain_utc(value: str) -> datetime | None:
    """The upstream's own shape, `2025-09-11T03:21:16Z`, is UTC to the second already. A
    string of this shape that parses has no NUL, no outer space and no `z` to fix, so the
    general path would give the same; anything else is left to it (None)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is UTC and not parsed.microsecond else None


def storable(value: Any) -> Any:
    """A JSON value every database keeps: strings (keys too) as `clean` gives them (no NUL,
    which PostgreSQL refuses, no lone surrogate, which UTF-8 cannot encode) and no infinite
    number; one bad upstream value must not fail a customer's refresh."""
    kind = type(value)
    if kind is str:
        return clean(value)
    if kind is int or value is None or kind is bool:
        return value
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return _storable_items(value)
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no Infinity or NaN; Python reads 1e400 as inf
    return value


def _storable_items(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """`storable` of a mapping, as a new dict. Most rows are ASCII strings and integers
    only: those are checked in one pass and copied as they are."""
    copy = dict(mapping)
    try:
        keys = "".join(copy)
    except TypeError:  # a key that is no string
        return _storable_dict(copy)
    if not keys.isascii() or "\x00" in keys:
        return _storable_dict(copy)
    for value in copy.values():
        kind = type(value)
        if kind is str:
            if not value.isascii() or "\x00" in value:
                return _storable_dict(copy)
        elif kind is not int and value is not None:
            return _storable_dict(copy)
    return copy


def _storable_dict(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    return {storable(k): storable(v) for k, v in mapping.items()}


def job_id_of(row: Mapping[str, Any]) -> str | None:
    """The row's usable job id, or None (missing, `"N/A"`, not a string)."""
    return text(row.get("jobId"))


JOB_VALUES = (
    "job_id",
    "name",
    "job_type_code",
    "module_code",
    "status_code",
    "job_type",
    "module",
    "status",
    "total_count",
    "failed_count",
    "successful_count",
    "skipped_count",
    "warning_count",
    "backup_size_bytes",
    "start_time",
    "end_time",
    "last_modified",
    "duration_seconds",
)
"""The fields `job_values` gives, in its order: the store's job columns after
`customer_id` (names derived from codes by the catalog; `unknown` for a code it does not
know)."""

_JOB_TYPE_NAMES = catalog.JOB_TYPE.names_by_code
_MODULE_NAMES = catalog.MODULE.names_by_code
_STATUS_NAMES = catalog.STATUS.names_by_code
_UNKNOWN = catalog.UNKNOWN


def _count(value: Any) -> int | None:
    # `parse_count`'s fast path, inlined where it runs five times a row.
    if type(value) is str and len(value) <= 9 and value.isascii() and value.isdigit():
        return int(value)  # nine digits: always within MAX_COUNT
    return parse_count(value)


def _code(value: Any) -> int | None:
    if type(value) is int and -MAX_COUNT <= value <= MAX_COUNT:
        return value
    return parse_code(value)


def _time(value: Any) -> datetime | None:
    # `parse_timestamp`'s fast path: the upstream's own `2025-09-11T03:21:16Z`.
    if type(value) is str and len(value) == 20 and value[19] == "Z" and value[10] == "T":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return parse_timestamp(value)
        if parsed.tzinfo is UTC and not parsed.microsecond:
            return parsed
    return parse_timestamp(value)


def job_values(row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """One upstream row -> its typed fields in `JOB_VALUES` order; None without a usable
    jobId. The same values `normalize_row` gives, with the names, and no object between."""
    get = row.get
    job_id = text(get("jobId"))
    if job_id is None:
        return None
    job_type = _code(get("jobType"))
    module = _code(get("jobModule"))
    status = _code(get("status"))
    return (
        job_id,
        text(get("name")),
        job_type,
        module,
        status,
        _JOB_TYPE_NAMES.get(job_type, _UNKNOWN),
        _MODULE_NAMES.get(module, _UNKNOWN),
        _STATUS_NAMES.get(status, _UNKNOWN),
        _count(get("totalCount")),
        _count(get("failedCount")),
        _count(get("successfulCount")),
        _count(get("skippedCount")),
        _count(get("warningCount")),
        parse_size(get("backupSize")),
        _time(get("startTime")),
        _time(get("endTime")),
        _time(get("lastModifyTime")),
        parse_duration(get("jobDuration")),
    )


def normalize_row(customer_id: str, row: Mapping[str, Any]) -> NormalizedJob | None:
    """One upstream row -> a NormalizedJob; None when the row has no usable jobId."""
    v = job_values(row)
    if v is None:
        return None
    return NormalizedJob(
        customer_id,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[8],
        v[9],
        v[10],
        v[11],
        v[12],
        v[13],
        v[14],
        v[15],
        v[17],
        v[16],
        _storable_items(row),
    )


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def raw_json(row: Mapping[str, Any], received: bytes | None = None) -> str:
    """The raw row's JSON text as the store keeps it: `received`, the row's own bytes as the
    upstream sent them (`app.upstream.wire`), when they can be stored as they are; else the
    compact JSON of `storable(row)`.

    Bytes that hold no backslash have no escape, so no NUL and no lone surrogate; they are
    valid UTF-8 JSON (the page decoder checked), and a number JSON cannot hold would have
    failed that decoder. Anything else is encoded again from the row.
    """
    if received is not None and b"\\" not in received:
        try:
            return received.decode()
        except UnicodeDecodeError:
            pass
    return _JSON.encode(_storable_items(row))
