"""A job's row as a walk writes it: its content hash, its columns as the driver takes them,
newest wins, its history, and the jobs the upstream stopped reporting.

`WRITE_COLUMNS` is the one order of a changed job's columns: the merge (`app.store.merge`)
and the stage (`app.store.stage`) write it, and `driver_row` builds it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import catalog
from app.normalize import JOB_VALUES, NormalizedJob
from app.store.plans import (
    Plan,
    chunks,
    encode,
    marks,
    postgres_time,
    sql,
    sqlite_time,
    to_driver,
)
from app.store.tables import SORT_MIN_DURATION, SORT_MIN_TIME

NORMALIZER_VERSION = 2
"""Part of every content hash: bump it when normalizing changes, and every stored row is
rewritten by its next refresh, as if the upstream had changed it. (2: a walk's rows are
hashed from their bytes as the upstream sent them, `raw_hash`.)"""


def row_hash(row: Mapping[str, Any]) -> int:
    """A stable 64-bit hash of an upstream row (and of how it is normalized)."""
    data = f"{NORMALIZER_VERSION}:{row!r}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


_RAW_PERSON = f"raw-v{NORMALIZER_VERSION}".encode()


def raw_hash(received: bytes) -> int:
    """The content hash of a row from its bytes as the upstream sent them: the same bytes
    are the same row, so nothing needs to be decoded or printed to know a row is unchanged."""
    digest = hashlib.blake2b(received, digest_size=8, person=_RAW_PERSON).digest()
    return int.from_bytes(digest, "big", signed=True)


def job_hash(job: NormalizedJob) -> int:
    """The content hash of an already normalized job (its typed fields and its raw row)."""
    fields = tuple(getattr(job, name) for name in job.__dataclass_fields__ if name != "raw")
    data = f"{NORMALIZER_VERSION}:{fields!r}:{job.raw!r}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


WRITE_COLUMNS = [
    "customer_id",
    *JOB_VALUES,  # the typed fields, as normalize gives them (one list, not two)
    "raw",
    "sort_start",
    "sort_modified",
    "sort_duration",
    "content_hash",
    "walk_started_at",
]
# Kept from the first sighting; everything else follows the newest snapshot.
JOB_KEEP = frozenset({"customer_id", "job_id", "first_seen_at"})


@dataclass(slots=True)
class Changed:
    """A row to write, new or different from the stored one: its columns in
    `WRITE_COLUMNS` order as the driver takes them (compact: a refresh may hold thousands)."""

    row: tuple[Any, ...]
    created: bool
    previous_status_code: int | None

    @property
    def status_code(self) -> int | None:
        code: int | None = self.row[_STATUS_CODE]
        return code

    @property
    def status(self) -> str:
        name: str = self.row[_STATUS]
        return name


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A job first seen (`created`, `previous` None) or a job whose status code changed."""

    customer_id: str
    job_id: str
    previous: int | None
    current: int | None
    at: datetime
    created: bool

    @property
    def status(self) -> str:
        return catalog.STATUS.name(self.current)

    @property
    def previous_status(self) -> str | None:
        return None if self.created else catalog.STATUS.name(self.previous)


HISTORY_COLUMNS = [
    "customer_id",
    "job_id",
    "status_code",
    "status",
    "previous_status_code",
    "changed_at",
]
"""A history row's columns, in the order the merges write them."""

_STATUS_CODE = WRITE_COLUMNS.index("status_code")
_STATUS = WRITE_COLUMNS.index("status")
_JOB_TYPE = WRITE_COLUMNS.index("job_type")
_MODULE = WRITE_COLUMNS.index("module")
_NAME = WRITE_COLUMNS.index("name")
_START = WRITE_COLUMNS.index("start_time")
_HASH = WRITE_COLUMNS.index("content_hash")
_SORT_MODIFIED = WRITE_COLUMNS.index("sort_modified")
_WALK = WRITE_COLUMNS.index("walk_started_at")


def older(row: tuple[Any, ...], stored: tuple[Any, ...]) -> bool:
    """Whether a walk's row is older than the stored version of its job (newest wins): a
    lower `sort_modified` (the upstream's `lastModifyTime`, or the sort minimum without
    one), or the same one from a walk that started earlier. Times are in the driver's form
    on both sides (text that sorts in order on SQLite; aware datetimes on PostgreSQL)."""
    _, _, modified, walk = stored
    if modified is None:  # not yet written by a walk: nothing to compare with
        return False
    ours, modified = _comparable(row[_SORT_MODIFIED]), _comparable(modified)
    if ours != modified:
        return bool(ours < modified)
    ours_walk, walk = _comparable(row[_WALK]), _comparable(walk)
    return walk is not None and ours_walk is not None and bool(ours_walk < walk)


def _comparable(value: Any) -> Any:
    """A driver's time as it compares: asyncpg gives the sort minimum (year 1) naive."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def driver_row(dialect: str, job: NormalizedJob, digest: int, started: Any) -> tuple[Any, ...]:
    """A changed job's columns in `WRITE_COLUMNS` order, as the driver takes them; built
    straight from the job, as this runs for every changed row of every refresh."""
    t = sqlite_time if dialect == "sqlite" else postgres_time
    start, modified = t(job.start_time), t(job.last_modified)
    return (
        job.customer_id,
        job.job_id,
        job.name,
        job.job_type_code,
        job.module_code,
        job.status_code,
        job.job_type,
        job.module,
        job.status,
        job.total_count,
        job.failed_count,
        job.successful_count,
        job.skipped_count,
        job.warning_count,
        job.backup_size_bytes,
        start,
        t(job.end_time),
        modified,
        job.duration_seconds,
        encode(job.raw),
        # The sort keys: the times themselves, or the sort minimum when there is none.
        start if start is not None else t(SORT_MIN_TIME),
        modified if modified is not None else t(SORT_MIN_TIME),
        SORT_MIN_DURATION if job.duration_seconds is None else job.duration_seconds,
        digest,
        started,
    )


@functools.cache
def merge_sql(dialect: str) -> tuple[str, str]:
    """The upsert of changed jobs and the insert of history rows, as driver SQL."""
    columns = [*WRITE_COLUMNS, "first_seen_at", "last_seen_at"]
    history = HISTORY_COLUMNS
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in JOB_KEEP)
    # Column names are this module's constants, never input: no injection here.
    upsert = (
        f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({marks(dialect, len(columns))}) "  # noqa: S608
        f"ON CONFLICT (customer_id, job_id) DO UPDATE SET {updates}"
    )
    insert_history = (
        f"INSERT INTO job_status_history ({', '.join(history)}) "  # noqa: S608
        f"VALUES ({marks(dialect, len(history))})"
    )
    return upsert, insert_history


# -- jobs the upstream stopped reporting (`app.store.retention` purges them) --------------


def _later(walk: Any, started: Any) -> bool:
    """Whether a stored job was written by a walk that started after `started`."""
    return walk is not None and started is not None and walk > started


def note_reported(
    dialect: str,
    customer_id: str,
    known: Mapping[str, tuple[int | None, int | None, Any, Any]],
    seen: Collection[str],
    at: datetime,
    started: Any = None,
) -> Plan[tuple[int, int]]:
    """Keep `jobs.unreported_since` of one customer after a successful walk: mark, as of
    `at`, the stored jobs the walk did not see, and unmark those it saw again. Run by the
    merge, in its transaction, after it wrote the jobs; `known` and `seen` are the
    `Ingest`'s (job id -> (content hash, status code) stored when the walk began, and the
    job ids it saw). Gives the jobs marked and unmarked. A job a walk that started after this
    one wrote (`started`, the driver's form of this walk's start) is not this walk's to mark:
    it did not exist, or was not reported, when this walk looked.

    A marked job has no content hash: it is marked once, not by every refresh that misses
    it, and the walk that sees it again knows it (and rewrites it) from `known` alone. So
    while nothing disappears, this runs no statement."""
    gone = sorted(
        job_id
        for job_id, (digest, _, _, walk) in known.items()
        if digest is not None and job_id not in seen and not _later(walk, started)
    )
    back = sorted(
        job_id for job_id, (digest, *_) in known.items() if digest is None and job_id in seen
    )
    marked = unmarked = 0
    stamp = to_driver(dialect, at)
    for chunk in chunks(gone, 1):
        marked += yield (
            "exec",
            sql(
                dialect,
                "UPDATE jobs SET unreported_since = ?, content_hash = NULL "  # noqa: S608
                f"WHERE customer_id = ? AND job_id IN ({', '.join('?' * len(chunk))}) "
                "AND unreported_since IS NULL",
            ),
            (stamp, customer_id, *chunk),
        )
    for chunk in chunks(back, 1):
        unmarked += yield (
            "exec",
            sql(
                dialect,
                "UPDATE jobs SET unreported_since = NULL "  # noqa: S608
                f"WHERE customer_id = ? AND job_id IN ({', '.join('?' * len(chunk))}) "
                "AND unreported_since IS NOT NULL",
            ),
            (customer_id, *chunk),
        )
    return marked, unmarked
