"""Pure functions that turn one upstream job row into one job's typed fields.

The upstream sends every field but the three codes as a string, any of which may be
`"N/A"`, empty or something never seen before. Nothing here raises on a bad value: a value
that cannot be read becomes `None`, and only a row without a usable `jobId` is dropped
(`normalize_row` returns `None`, and the caller counts it).
"""

from __future__ import annotations

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

_MISSING = {"", "n/a", "na", "none", "null", "-", "--"}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_DURATION_WHOLE = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[dhms]\s*)+", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*", re.IGNORECASE)
_SIZE_POWER = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


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


def text(value: Any) -> str | None:
    """A string field, or None for N/A, empty and non-strings."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    stripped = value.replace("\x00", "").strip()
    return None if stripped.lower() in _MISSING else stripped


def parse_code(value: Any) -> int | None:
    """An enum code: an int, or a string of digits; anything else (or out of range) None."""
    code: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        code = value
    elif isinstance(value, float) and value.is_integer():
        code = int(value)
    else:
        s = text(value)
        if s is not None and re.fullmatch(r"-?\d{1,12}", s):
            code = int(s)
    return code if code is not None and -MAX_COUNT <= code <= MAX_COUNT else None


def parse_count(value: Any) -> int | None:
    """`"2323"` -> 2323; `"N/A"`, `""`, negatives and garbage -> None."""
    code = parse_code(value)
    if code is None:
        s = text(value)
        if s is not None and re.fullmatch(r"\d{1,3}(,\d{3})+", s):
            code = int(s.replace(",", ""))
    return code if code is not None and 0 <= code <= MAX_COUNT else None


def _bounded(value: float, limit: int) -> int | None:
    return round(value) if math.isfinite(value) and 0 <= value <= limit else None


def parse_duration(value: Any) -> int | None:
    """`"17m39s"` -> 1059, `"0 S"` -> 0, `"2d3h"` -> 183600; N/A and garbage -> None.

    Units d, h, m, s in any case, with optional spaces; a bare number is seconds.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _bounded(value, MAX_DURATION_SECONDS)
    s = text(value)
    if s is None:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return _bounded(float(s), MAX_DURATION_SECONDS)
    if not _DURATION_WHOLE.fullmatch(s):
        return None
    total = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(s))
    return _bounded(total, MAX_DURATION_SECONDS)


def parse_size(value: Any) -> int | None:
    """`"0.84 GB"` -> 901943132 bytes (1 KB = 1024 B); N/A and garbage -> None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_SIZE_BYTES else None
    s = text(value)
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


def storable(value: Any) -> Any:
    """A JSON value every database keeps: no NUL character in a string (PostgreSQL refuses
    them) and no infinite number; one bad upstream value must not fail a customer's refresh."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no Infinity or NaN; Python reads 1e400 as inf
    return value


def job_id_of(row: Mapping[str, Any]) -> str | None:
    """The row's usable job id, or None (missing, `"N/A"`, not a string)."""
    return text(row.get("jobId"))


def normalize_row(customer_id: str, row: Mapping[str, Any]) -> NormalizedJob | None:
    """One upstream row -> a NormalizedJob; None when the row has no usable jobId."""
    job_id = job_id_of(row)
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
        raw=storable(dict(row)),
    )
