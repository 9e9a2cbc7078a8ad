"""Reads and writes of the store: snapshots in, jobs, history, counts and states out.

Every function takes an `AsyncSession`. The caller owns the transaction, except
`record_success` and `record_failure`: each records one refresh attempt as one unit and
commits it (rolling back and re-raising on error).

Rows come back as frozen dataclasses (`JobRow`, `HistoryRow`, ...), never ORM objects, so they
can cross sessions and tasks freely. Every datetime is timezone-aware UTC.

Jobs are listed with keyset pagination: each sort orders by a non-null sort key, then
(customer_id, job_id) in the same direction, and a page starts strictly after the position
(`keyset_of`) of the last row served. Missing times and durations sort lowest: first when
ascending, last when descending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Result, RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from app import catalog
from app.normalize import NormalizedJob
from app.store.jobs import StatusChange
from app.store.merge import IngestResult, open_ingest
from app.store.plans import chunks, insert_for, run_async
from app.store.snapshots import Outcome, SnapshotRecord, snapshot_values
from app.store.tables import (
    SORT_MIN_DURATION,
    SORT_MIN_TIME,
    Job,
    JobStatusHistory,
    Snapshot,
    UTCDateTime,
)
from app.store.versions import CUSTOMERS, ensure_customer

JOBS = cast(Table, Job.__table__)
HISTORY = cast(Table, JobStatusHistory.__table__)
SNAPSHOTS = cast(Table, Snapshot.__table__)

JobSort = Literal[
    "start_time", "-start_time", "last_modified", "-last_modified", "duration", "-duration"
]
SORTS: tuple[str, ...] = get_args(JobSort)
DEFAULT_SORT: JobSort = "-start_time"
CountGroup = Literal["customer", "job_type", "module"]

Keyset = tuple[str | int | datetime, str, str]
"""A row's position in a sort: (sort key, customer_id, job_id). `keyset_of` gives the sort key
as an ISO 8601 string (times) or an int (durations); `query_jobs` also takes datetimes."""


class InvalidCursor(ValueError):
    """`JobQuery.after` does not describe a position in the requested sort."""


@dataclass(frozen=True, slots=True)
class CustomerState:
    """How current one customer's data is.

    `last_success_at` / `last_attempt_at` are the `finished_at` of the newest successful /
    any snapshot. `last_error` is the newest attempt when it failed (so it came after the last
    success), else None.
    """

    customer_id: str
    customer_name: str | None
    last_success_at: datetime | None
    last_attempt_at: datetime | None
    last_error: SnapshotRecord | None
    job_count: int
    data_version: int = 0


@dataclass(frozen=True, slots=True)
class JobRow:
    """One stored job with its customer's name: every column of `jobs` but the sort keys."""

    customer_id: str
    job_id: str
    customer_name: str | None
    name: str | None
    job_type_code: int | None
    module_code: int | None
    status_code: int | None
    job_type: str
    module: str
    status: str
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
    first_seen_at: datetime
    last_seen_at: datetime
    # The upstream's row as received; listings leave it out (None), it is only read one by one.
    raw: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """The API's job id: `customer_id:job_id`."""
        return f"{self.customer_id}:{self.job_id}"

    @property
    def fetched_at(self) -> datetime:
        """When the upstream last reported this job (the newest snapshot that had it)."""
        return self.last_seen_at


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One status of a job: when first seen (`previous_status_code` None) or changed."""

    id: int
    customer_id: str
    job_id: str
    status_code: int | None
    status: str
    previous_status_code: int | None
    changed_at: datetime

    @property
    def previous_status(self) -> str | None:
        return (
            None
            if self.previous_status_code is None
            else catalog.STATUS.name(self.previous_status_code)
        )


@dataclass
class JobQuery:
    """The filters, order and page of a job listing.

    A filter that is None does not filter; an empty sequence matches nothing. Names are
    catalog names (aliases and `unknown` included). `start_after` and `start_before` are
    exclusive (strictly after, strictly before), `modified_since` inclusive; a job without
    the time never matches them. `q` is a case-insensitive substring of the name (`%` and `_`
    match themselves; empty means no filter). `after` is the `keyset_of` the last row of the
    previous page.
    """

    customer_ids: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    job_types: Sequence[str] | None = None
    modules: Sequence[str] | None = None
    start_after: datetime | None = None
    start_before: datetime | None = None
    modified_since: datetime | None = None
    q: str | None = None
    sort: JobSort = DEFAULT_SORT
    limit: int = 100
    after: Keyset | None = None


# -- writes ----------------------------------------------------------------------------------


def _insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    return insert_for(session.get_bind().dialect.name, table)


async def upsert_customers(
    session: AsyncSession,
    customers: Sequence[tuple[str, str | None]],
    *,
    now: datetime | None = None,
) -> None:
    """Add customers (id, name) and rename known ones. A None name never erases a known one."""
    if not customers:
        return
    at = now or datetime.now(UTC)
    names: dict[str, str | None] = {}
    for customer_id, name in customers:
        names[customer_id] = name
    rows = [
        {"id": cid, "name": name, "created_at": at, "updated_at": at} for cid, name in names.items()
    ]
    stmt = _insert(session, CUSTOMERS)
    stmt = stmt.on_conflict_do_update(
        index_elements=[CUSTOMERS.c.id],
        set_={"name": stmt.excluded.name, "updated_at": stmt.excluded.updated_at},
        where=and_(
            stmt.excluded.name.is_not(None),
            CUSTOMERS.c.name.is_distinct_from(stmt.excluded.name),
        ),
    )
    for chunk in chunks(rows, 4):
        await session.execute(stmt, list(chunk))


async def record_success(
    session: AsyncSession, snapshot: SnapshotRecord, jobs: Sequence[NormalizedJob]
) -> list[StatusChange]:
    """Store a successful refresh of one customer from jobs in hand, in one transaction, and
    commit (the refresher streams pages through `app.store.merge` instead; this is the same merge).

    Writes the jobs that are new or changed (a job id seen twice counts once, the last
    wins), a history row for each new job and each changed status code, and the snapshot.
    Jobs the snapshot does not mention, and jobs that did not change, are left as they were.
    Returns the changes, new jobs included (`created=True`).
    """
    if snapshot.outcome != "success":
        raise ValueError(f"record_success needs outcome 'success', got {snapshot.outcome!r}")
    try:
        ingest = await open_ingest(session, snapshot.customer_id)
        ingest.add_jobs(jobs)
        conn = await session.connection()
        result = await run_async(conn, ingest.merge(conn.dialect.name, snapshot))
        await session.commit()
    except Exception:
        await session.rollback()
        raise
    return result.changes


async def record_failure(session: AsyncSession, snapshot: SnapshotRecord) -> None:
    """Store a failed refresh: only the snapshot row (and the customer, if new).

    No job is touched, so the last good snapshot keeps being served. Commits.
    """
    if snapshot.outcome != "error":
        raise ValueError(f"record_failure needs outcome 'error', got {snapshot.outcome!r}")
    try:
        await add_failure(session, snapshot)
        await session.commit()
    except Exception:
        await session.rollback()
        raise


async def add_failure(session: AsyncSession, snapshot: SnapshotRecord) -> None:
    """`record_failure` inside a transaction the caller holds."""
    dialect = session.get_bind().dialect.name
    await ensure_customer(session, dialect, snapshot.customer_id, snapshot.finished_at)
    await session.execute(SNAPSHOTS.insert().values(snapshot_values(snapshot)))


# -- reads -----------------------------------------------------------------------------------


def _snapshot_record(row: RowMapping) -> SnapshotRecord:
    return SnapshotRecord(
        customer_id=row["customer_id"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=cast(Outcome, row["outcome"]),
        pages=row["pages"],
        jobs_seen=row["jobs_seen"],
        rows_skipped=row["rows_skipped"],
        error_kind=row["error_kind"],
        error_message=row["error_message"],
        upstream_status=row["upstream_status"],
        request_id=row["request_id"],
    )


async def known_customer_ids(session: AsyncSession) -> set[str]:
    """The ids of every customer the store has heard of."""
    return set((await session.scalars(select(CUSTOMERS.c.id))).all())


async def customer_states(
    session: AsyncSession, customer_ids: Sequence[str] | None = None
) -> dict[str, CustomerState]:
    """The state of the given customers (None: every known customer), keyed by id.

    A requested id the store has never seen gets a state with no name, no snapshot and no job.
    """
    s, c = SNAPSHOTS, CUSTOMERS
    # Correlated subqueries, one index probe each per customer, however long the snapshot
    # history grows.
    last_id = (
        select(s.c.id)
        .where(s.c.customer_id == c.c.id)
        .order_by(s.c.finished_at.desc(), s.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    last_success = (
        select(func.max(s.c.finished_at))
        .where(s.c.customer_id == c.c.id, s.c.outcome == "success")
        .scalar_subquery()
    )
    stmt = select(
        c.c.id,
        c.c.name,
        last_id.label("last_id"),
        last_success.label("last_success_at"),
        c.c.job_count,
        c.c.data_version,
    ).order_by(c.c.id)
    if customer_ids is not None:
        stmt = stmt.where(c.c.id.in_(list(customer_ids)))
    rows = (await session.execute(stmt)).mappings().all()

    snapshot_ids = [row["last_id"] for row in rows if row["last_id"] is not None]
    latest: dict[int, RowMapping] = {}
    if snapshot_ids:
        found = await session.execute(select(s).where(s.c.id.in_(snapshot_ids)))
        latest = {row["id"]: row for row in found.mappings().all()}

    states: dict[str, CustomerState] = {}
    for row in rows:
        last = latest.get(row["last_id"]) if row["last_id"] is not None else None
        states[row["id"]] = CustomerState(
            customer_id=row["id"],
            customer_name=row["name"],
            last_success_at=row["last_success_at"],
            last_attempt_at=last["finished_at"] if last is not None else None,
            last_error=(
                _snapshot_record(last) if last is not None and last["outcome"] == "error" else None
            ),
            job_count=row["job_count"],
            data_version=row["data_version"],
        )
    for customer_id in customer_ids or ():
        states.setdefault(customer_id, CustomerState(customer_id, None, None, None, None, 0))
    return states


_JOB_ROW_COLUMNS = [JOBS.c[name] for name in JobRow.__dataclass_fields__ if name in JOBS.c]


def _job_select(*, raw: bool) -> Select[Any]:
    columns = [c for c in _JOB_ROW_COLUMNS if raw or c.name != "raw"]
    return select(*columns, CUSTOMERS.c.name.label("customer_name")).join_from(
        JOBS, CUSTOMERS, CUSTOMERS.c.id == JOBS.c.customer_id
    )


def _job_rows(result: Result[Any]) -> list[JobRow]:
    """The result's rows as JobRows; the selected columns are matched to fields once."""
    names = list(result.keys())
    return [JobRow(**dict(zip(names, row, strict=True))) for row in result.all()]


def _names_filter(
    cat: catalog.Catalog,
    names: Sequence[str],
    name_col: ColumnElement[Any],
    code_col: ColumnElement[Any],
) -> ColumnElement[bool]:
    """Catalog names -> a condition. Primary names match the stored name; an alias (a name
    that is not some entry's primary name) matches its codes only."""
    primary = {e.name for e in cat.entries} | {catalog.UNKNOWN}
    by_name = [n for n in names if n in primary or not cat.codes(n)]
    by_code = sorted({code for n in names if n not in primary for code in cat.codes(n)})
    conditions: list[ColumnElement[bool]] = []
    if by_name:
        conditions.append(name_col.in_(by_name))
    if by_code:
        conditions.append(code_col.in_(by_code))
    return or_(*conditions) if conditions else false()


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


_SORT_COLUMNS = {
    "start_time": JOBS.c.sort_start,
    "last_modified": JOBS.c.sort_modified,
    "duration": JOBS.c.sort_duration,
}


def _sort_field(sort: str) -> tuple[str, bool]:
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
    return sort.lstrip("-"), sort.startswith("-")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _after_key(after: object, field: str) -> tuple[datetime | int, str, str]:
    if not isinstance(after, tuple | list) or len(after) != 3:
        raise InvalidCursor("a position is (sort key, customer_id, job_id)")
    key, customer_id, job_id = after
    if not isinstance(customer_id, str) or not isinstance(job_id, str):
        raise InvalidCursor("customer_id and job_id of a position are strings")
    if field == "duration":
        if isinstance(key, bool) or not isinstance(key, int):
            raise InvalidCursor("a duration position needs an integer key")
        return key, customer_id, job_id
    if isinstance(key, str):
        try:
            key = datetime.fromisoformat(key)
        except ValueError as exc:
            raise InvalidCursor(f"not an ISO 8601 time: {key!r}") from exc
    if not isinstance(key, datetime) or key.tzinfo is None or key.utcoffset() is None:
        raise InvalidCursor("a time position needs an aware ISO 8601 time")
    try:
        return key.astimezone(UTC), customer_id, job_id
    except OverflowError as exc:
        raise InvalidCursor("a time position out of range") from exc


def job_conditions(q: JobQuery) -> list[ColumnElement[bool]]:
    """The WHERE conditions of `q`'s filters (not of its page)."""
    j = JOBS
    conditions: list[ColumnElement[bool]] = []
    if q.customer_ids is not None:
        conditions.append(j.c.customer_id.in_(list(q.customer_ids)))
    if q.statuses is not None:
        conditions.append(_names_filter(catalog.STATUS, q.statuses, j.c.status, j.c.status_code))
    if q.job_types is not None:
        conditions.append(
            _names_filter(catalog.JOB_TYPE, q.job_types, j.c.job_type, j.c.job_type_code)
        )
    if q.modules is not None:
        conditions.append(_names_filter(catalog.MODULE, q.modules, j.c.module, j.c.module_code))
    # Range filters go through the sort keys, which the indexes cover; the IS NOT NULL keeps
    # jobs without the time out even for a bound at the sort minimum.
    if q.start_after is not None:
        conditions += [
            j.c.sort_start > _aware(q.start_after, "start_after"),
            j.c.start_time.is_not(None),
        ]
    if q.start_before is not None:
        conditions += [
            j.c.sort_start < _aware(q.start_before, "start_before"),
            j.c.start_time.is_not(None),
        ]
    if q.modified_since is not None:
        conditions += [
            j.c.sort_modified >= _aware(q.modified_since, "modified_since"),
            j.c.last_modified.is_not(None),
        ]
    if q.q:
        conditions.append(j.c.name.icontains(q.q, autoescape=True))
    return conditions


async def query_jobs(session: AsyncSession, q: JobQuery) -> list[JobRow]:
    """Up to `q.limit + 1` jobs in `q.sort` order after `q.after`; a row beyond `q.limit`
    means there is a next page. Raises ValueError (`InvalidCursor` for `after`) on a bad
    query."""
    if isinstance(q.limit, bool) or not isinstance(q.limit, int) or q.limit < 1:
        raise ValueError(f"limit must be a positive integer; got {q.limit!r}")
    field, descending = _sort_field(q.sort)
    j = JOBS
    conditions = job_conditions(q)

    key_col = _SORT_COLUMNS[field]
    if q.after is not None:
        key, customer_id, job_id = _after_key(q.after, field)
        key_type = UTCDateTime() if field != "duration" else key_col.type
        position = tuple_(literal(key, key_type), literal(customer_id), literal(job_id))
        row_value = tuple_(key_col, j.c.customer_id, j.c.job_id)
        # The plain comparison on the sort key gives the planner an index range; the
        # row-value comparison is the exact keyset condition.
        if descending:
            conditions += [key_col <= literal(key, key_type), row_value < position]
        else:
            conditions += [key_col >= literal(key, key_type), row_value > position]

    order = [key_col, j.c.customer_id, j.c.job_id]
    stmt = (
        _job_select(raw=False)
        .where(*conditions)
        .order_by(*(col.desc() if descending else col.asc() for col in order))
        .limit(q.limit + 1)
    )
    return _job_rows(await session.execute(stmt))


def keyset_of(row: JobRow, sort: str) -> tuple[str | int, str, str]:
    """The position of `row` in `sort`, JSON-serializable: (ISO time or int, customer, job)."""
    field, _ = _sort_field(sort)
    key: str | int
    if field == "start_time":
        key = _iso(row.start_time or SORT_MIN_TIME)
    elif field == "last_modified":
        key = _iso(row.last_modified or SORT_MIN_TIME)
    else:
        key = SORT_MIN_DURATION if row.duration_seconds is None else row.duration_seconds
    return key, row.customer_id, row.job_id


async def get_job(session: AsyncSession, customer_id: str, job_id: str) -> JobRow | None:
    stmt = _job_select(raw=True).where(JOBS.c.customer_id == customer_id, JOBS.c.job_id == job_id)
    rows = _job_rows(await session.execute(stmt))
    return rows[0] if rows else None


async def job_history(session: AsyncSession, customer_id: str, job_id: str) -> list[HistoryRow]:
    """The job's statuses, oldest first (empty for an unknown job)."""
    h = HISTORY
    stmt = (
        select(h)
        .where(h.c.customer_id == customer_id, h.c.job_id == job_id)
        .order_by(h.c.changed_at, h.c.id)
    )
    rows = (await session.execute(stmt)).mappings().all()
    return [
        HistoryRow(**{name: row[name] for name in HistoryRow.__dataclass_fields__}) for row in rows
    ]


async def status_counts(
    session: AsyncSession,
    customer_ids: Sequence[str] | None = None,
    *,
    group_by: CountGroup = "customer",
) -> dict[str, dict[str, int]]:
    """Job counts by status name within each group: customer (default), job type or module.

    Grouped by customer, every requested (or, for None, every known) customer has an entry,
    empty when it has no job.
    """
    j = JOBS
    group_col = {"customer": j.c.customer_id, "job_type": j.c.job_type, "module": j.c.module}[
        group_by
    ]
    stmt = select(group_col, j.c.status, func.count()).group_by(group_col, j.c.status)
    if customer_ids is not None:
        stmt = stmt.where(j.c.customer_id.in_(list(customer_ids)))
    counts: dict[str, dict[str, int]] = {}
    if group_by == "customer":
        if customer_ids is None:
            known = await session.execute(select(CUSTOMERS.c.id).order_by(CUSTOMERS.c.id))
            customer_ids = list(known.scalars().all())
        counts = {customer_id: {} for customer_id in customer_ids}
    for group, status, n in (await session.execute(stmt)).all():
        counts.setdefault(group, {})[status] = n
    return counts


SummaryGroup = Literal["customer", "status", "job_type", "module"]


@dataclass
class GroupStats:
    """One group of `/summary`: jobs by status, the last success, and the 7-day outcomes."""

    counts: dict[str, int]
    last_success_at: datetime | None = None
    outcomes_7d: int = 0  # finished jobs (a success or a failure) that started since
    successes_7d: int = 0


async def summarize(
    session: AsyncSession,
    q: JobQuery,
    group_by: SummaryGroup,
    *,
    since: datetime,
    failures: Sequence[str],
) -> dict[str, GroupStats]:
    """The jobs `q` filters, grouped: counts by status, the start of the last `finished`
    job, and, of the jobs that started at or after `since`, how many finished (`finished`
    or one of `failures`) and how many of those were `finished`."""
    j = JOBS
    group_col = {
        "customer": j.c.customer_id,
        "status": j.c.status,
        "job_type": j.c.job_type,
        "module": j.c.module,
    }[group_by]
    finished = j.c.status == "finished"
    recent = and_(j.c.start_time.is_not(None), j.c.sort_start >= _aware(since, "since"))
    outcome = and_(recent, j.c.status.in_(["finished", *failures]))
    stmt = (
        select(
            group_col,
            j.c.status,
            func.count(),
            type_coerce(func.max(case((finished, j.c.start_time))), UTCDateTime()),
            func.sum(case((outcome, 1), else_=0)),
            func.sum(case((and_(recent, finished), 1), else_=0)),
        )
        .where(*job_conditions(q))
        .group_by(group_col, j.c.status)
    )
    groups: dict[str, GroupStats] = {}
    for key, status, count, last_ok, outcomes, successes in (await session.execute(stmt)).all():
        g = groups.setdefault(key, GroupStats({}))
        g.counts[status] = int(count)
        if last_ok is not None:
            g.last_success_at = last_ok
        g.outcomes_7d += int(outcomes or 0)
        g.successes_7d += int(successes or 0)
    return groups


__all__ = [
    "DEFAULT_SORT",
    "SORTS",
    "CountGroup",
    "CustomerState",
    "HistoryRow",
    "IngestResult",
    "InvalidCursor",
    "JobQuery",
    "JobRow",
    "JobSort",
    "Keyset",
    "Outcome",
    "SnapshotRecord",
    "StatusChange",
    "add_failure",
    "customer_states",
    "get_job",
    "job_history",
    "keyset_of",
    "query_jobs",
    "record_failure",
    "record_success",
    "status_counts",
    "summarize",
    "upsert_customers",
]
