"""The write path of a refresh: rows in page by page, one short transaction at the end.

A refresh of one customer is an `Ingest`:

1. `open_ingest()` reads the customer's stored (job id -> content hash, status code) once.
2. `add_page(rows)` for each page as it arrives: rows are de-duplicated by job id (the last
   copy wins), hashed, and only those whose hash differs from the stored one are normalized
   and kept. Pure CPU bounded by one page, so the event loop is never held for long.
3. Changed rows stay in memory up to `MEMORY_ROWS`; past that `spill()` writes them to
   `job_stage` (`app.store.stage`) in short transactions, so memory follows the pages in
   flight rather than the size of the customer (only the job ids and hashes are kept for
   the whole walk).
4. `commit(snapshot)` merges in one transaction: the changed jobs, a history row for each
   new job and each changed status (`app.store.jobs`), the customer's job count and data
   version (`app.store.versions`), the events, alerts and webhook deliveries they cause
   (`app.store.telling`), and the snapshot row (`app.store.snapshots`). `discard()`
   deletes what was staged: a failed walk changes nothing readers see.

The merge locks the customer's row first (PostgreSQL) and compares its data version with the
one the walk started from: when another refresh of the customer wrote in between, the
changes are taken again against what is stored now, so no change is written, or told, twice.

Unchanged rows are not rewritten, so a job's `last_seen_at` (the API's `fetched_at`) is when
the gateway fetched the job as it is now; its customer's snapshot says how current it is.

Writes go through the `Writer` (`app.store.writer`): one at a time on SQLite (merges that
wait together commit together), side by side on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app import catalog
from app.normalize import NormalizedJob, job_id_of, job_values, normalize_row, raw_json
from app.store import leases, plans, stage, telling, versions
from app.store.jobs import (
    HISTORY_COLUMNS,
    WRITE_COLUMNS,
    Changed,
    StatusChange,
    driver_row,
    job_hash,
    merge_sql,
    note_reported,
    older,
    raw_hash,
    row_hash,
)
from app.store.plans import (
    Plan,
    chunks,
    driver_value,
    execute,
    from_driver,
    postgres_time,
    sqlite_time,
)
from app.store.snapshots import SnapshotRecord, record_snapshot
from app.store.tables import SORT_MIN_DURATION, SORT_MIN_TIME
from app.store.telling import FeedConfig, JobChange, Told
from app.store.versions import Known
from app.store.writer import Writer

MEMORY_ROWS = 2_000
"""Changed rows a refresh holds in memory before it spills them to `job_stage`."""

ROWS_PER_SLICE = 2_000
"""Rows handled between two yields to the event loop when a merge reads staged rows back."""

_STATUS = WRITE_COLUMNS.index("status")
_JOB_TYPE = WRITE_COLUMNS.index("job_type")
_MODULE = WRITE_COLUMNS.index("module")
_NAME = WRITE_COLUMNS.index("name")
_START = WRITE_COLUMNS.index("start_time")
_HASH = WRITE_COLUMNS.index("content_hash")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What a committed refresh wrote."""

    jobs: int  # distinct jobs the walk saw
    rows_skipped: int  # rows without a usable job id
    written: int  # jobs inserted or rewritten
    job_count: int  # jobs stored for the customer afterwards
    changes: list[StatusChange]  # new jobs and changed statuses
    told: Told = field(default_factory=Told)  # events, deliveries and alert transitions
    data_version: int = 0  # the customer's data version afterwards
    unreported: tuple[int, int] = (0, 0)  # jobs marked as no longer reported, and unmarked

    @property
    def changed(self) -> bool:
        return self.written > 0


@dataclass
class Ingest:
    """One customer's refresh being written (see the module docstring)."""

    customer_id: str
    dialect: str
    known: Known  # job id -> (hash, status code, sort_modified, walk_started_at)
    version: int = 0  # the customer's data version when `known` was read
    # When the walk started, by the database's clock, in the driver's form: on a tie of
    # `last_modified` with a stored version, the walk that started later wins.
    started: Any = None
    lease: tuple[str, int] | None = None  # (holder, token) the merge must still hold
    stage_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    seen: set[str] = field(default_factory=set)
    pending: dict[str, Changed] = field(default_factory=dict)
    spilled: int = 0
    rows_skipped: int = 0
    created: int = 0
    superseded: int = 0  # rows older than the stored version of their job: not written

    # -- while walking ------------------------------------------------------------------

    def add_page(
        self, rows: Sequence[Mapping[str, Any]], received: Sequence[bytes] | None = None
    ) -> None:
        """Take one page of upstream rows (pure CPU, proportional to the page). `received`,
        when given, holds each row's bytes as the upstream sent them (`JobsPage.raw`,
        aligned with `rows`): they are hashed, and kept as the raw row, as they are."""
        if received is None:
            for row in rows:
                job_id = job_id_of(row)
                if job_id is None:
                    self.rows_skipped += 1
                    continue
                self._offer(job_id, row_hash(row), row, None)
            return
        for row, raw in zip(rows, received, strict=True):
            job_id = job_id_of(row)
            if job_id is None:
                self.rows_skipped += 1
                continue
            digest = raw_hash(raw)
            stored = self.known.get(job_id)
            if job_id not in self.seen:
                self.seen.add(job_id)
                if stored is None:
                    self.created += 1
            if stored is not None and stored[0] == digest:
                self.pending.pop(job_id, None)
                continue
            values = job_values(row)
            if values is None:  # unreachable: the row has a job id
                continue
            self._take(job_id, stored, self._values_row(values, raw_json(row, raw), digest))

    def add_jobs(self, jobs: Sequence[NormalizedJob]) -> None:
        """Take jobs normalized elsewhere (tests, benchmarks, imports)."""
        for job in jobs:
            if job.customer_id != self.customer_id:
                raise ValueError(
                    f"job {job.job_id!r} belongs to {job.customer_id!r}, not {self.customer_id!r}"
                )
            self._offer(job.job_id, job_hash(job), None, job)

    def _offer(
        self,
        job_id: str,
        digest: int,
        row: Mapping[str, Any] | None,
        job: NormalizedJob | None,
    ) -> None:
        stored = self.known.get(job_id)
        if job_id not in self.seen:
            self.seen.add(job_id)
            if stored is None:
                self.created += 1
        if stored is not None and stored[0] == digest:
            # Unchanged (or a later copy on another page that matches the store again).
            self.pending.pop(job_id, None)
            return
        if job is None:
            assert row is not None
            job = normalize_row(self.customer_id, row)
            if job is None:  # unreachable: the row has a job id
                return
        self._take(job_id, stored, driver_row(self.dialect, job, digest, self.started))

    def _take(self, job_id: str, stored: tuple[Any, ...] | None, changed: tuple[Any, ...]) -> None:
        if stored is not None and older(changed, stored):
            # Newest wins: the store already holds a newer version of this job (a copy on
            # another page that is newer still stays pending).
            self.superseded += 1
            return
        self.pending[job_id] = Changed(
            changed,
            created=stored is None,
            previous_status_code=stored[1] if stored else None,
        )

    def _values_row(self, v: tuple[Any, ...], raw: str, digest: int) -> tuple[Any, ...]:
        """`driver_row` from `normalize.job_values` straight: no `NormalizedJob` between
        (this runs for every changed row of every walk)."""
        t = sqlite_time if self.dialect == "sqlite" else postgres_time
        start, modified, duration = t(v[14]), t(v[16]), v[17]
        return (
            self.customer_id,
            *v[:14],
            start,
            t(v[15]),
            modified,
            duration,
            raw,
            start if start is not None else t(SORT_MIN_TIME),
            modified if modified is not None else t(SORT_MIN_TIME),
            SORT_MIN_DURATION if duration is None else duration,
            digest,
            self.started,
        )

    @property
    def must_spill(self) -> bool:
        return len(self.pending) >= MEMORY_ROWS

    async def spill(self, writer: Writer, at: datetime) -> None:
        """Move the rows held in memory to `job_stage` (one short transaction)."""
        if self.pending:
            await writer.run_plan(lambda dialect: self._spill(dialect, at))

    def _spill(self, dialect: str, at: datetime) -> Plan[None]:
        if not self.pending:
            return
        staged_at = driver_value(dialect, at)
        rows = [
            (self.stage_id, staged_at, c.created, c.previous_status_code, *c.row)
            for c in self.pending.values()
        ]
        stage_sql = stage.stage_sql(dialect)
        for chunk in chunks(rows, len(WRITE_COLUMNS) + 4):
            yield ("many", stage_sql, list(chunk))
        self.spilled += len(rows)
        self.pending.clear()

    # -- at the end -----------------------------------------------------------------------

    def _rebase(self, known: Known) -> None:
        """Take the changes again against `known`, what another refresh stored meanwhile:
        drop what it stored as it is, and what it stored in a newer version."""
        for job_id, c in list(self.pending.items()):
            stored = known.get(job_id)
            if stored is not None and stored[0] == c.row[_HASH]:
                del self.pending[job_id]
                continue
            if stored is not None and older(c.row, stored):
                self.superseded += 1
                del self.pending[job_id]
                continue
            c.created = stored is None
            c.previous_status_code = stored[1] if stored else None
        self.known = known
        self.created = sum(1 for job_id in self.seen if job_id not in known)

    def _job_changes(self) -> list[JobChange]:
        """The changes held in memory, as the feed tells them."""
        out = []
        for job_id, c in self.pending.items():
            if c.created or c.previous_status_code != c.status_code:
                row = c.row
                out.append(
                    JobChange(
                        job_id=job_id,
                        created=c.created,
                        previous=None if c.created else catalog.STATUS.name(c.previous_status_code),
                        status=row[_STATUS],
                        job_type=row[_JOB_TYPE],
                        module=row[_MODULE],
                        name=row[_NAME],
                        start_time=from_driver(row[_START]),
                    )
                )
        return out

    def _changes(self, at: datetime) -> list[StatusChange]:
        return [
            StatusChange(
                self.customer_id,
                job_id,
                c.previous_status_code,
                c.status_code,
                at,
                created=c.created,
            )
            for job_id, c in self.pending.items()
            if c.created or c.previous_status_code != c.status_code
        ]

    async def commit(
        self, writer: Writer, snapshot: SnapshotRecord, config: FeedConfig | None = None
    ) -> IngestResult:
        """Merge the walk in one write transaction (see `merge`)."""
        return await writer.run_merge(
            lambda dialect: self.merge(dialect, snapshot, config),
            rows=len(self.pending) + self.spilled,
            restore=self._restore_point(),
        )

    def _restore_point(self) -> Callable[[], None]:
        """What puts this walk back as it is now, should its merge have to run again after
        a rollback (the merge spills, takes changes again, and counts as it goes)."""
        pending, spilled, known = dict(self.pending), self.spilled, self.known
        created, superseded = self.created, self.superseded

        def restore() -> None:
            self.pending, self.spilled, self.known = dict(pending), spilled, known
            self.created, self.superseded = created, superseded

        return restore

    def merge(
        self, dialect: str, snapshot: SnapshotRecord, config: FeedConfig | None = None
    ) -> Plan[IngestResult]:
        """The one merge of a walk, as a plan (run on the SQLite writer's own connection or
        on a SQLAlchemy one, inside the caller's transaction): lock the customer and check
        the lease; take the changes again if another walk wrote meanwhile (newest wins);
        write the changed jobs and their history, from memory or from `job_stage`; move
        the customer's version; mark what the upstream stopped reporting; with `config`,
        tell the changes (events, alerts, webhook deliveries); record the snapshot; give the
        lease back."""
        at = snapshot.finished_at
        cid = self.customer_id
        version = yield from versions.lock_customer(dialect, cid, at)
        if self.lease is not None:
            # Checked and given back at once; a rollback gives it back to the walk.
            yield from leases.check_and_give_back(dialect, cid, *self.lease)
        moved = version != self.version
        job_changes: list[JobChange]
        job_count: int | None
        if self.spilled:
            yield from self._spill(dialect, at)
            if moved:
                yield from stage.rebase_stage(dialect, self.stage_id)
            written, changes, job_changes = yield from stage.merge_stage(
                dialect, cid, self.stage_id, at
            )
            job_count = (yield from versions.count_jobs(dialect, cid)) if written else None
            if moved:
                self.known = yield from versions.read_known(dialect, cid)
        else:
            if moved:
                self._rebase((yield from versions.read_known(dialect, cid)))
            written = len(self.pending)
            changes = self._changes(at)
            job_changes = self._job_changes()
            if self.pending:
                yield from self._merge_memory(dialect, at, changes)
            job_count = len(self.known) + self.created
        if written:
            yield from versions.bump_version(dialect, cid, job_count if self.created else None)
        unreported = yield from note_reported(dialect, cid, self.known, self.seen, at, self.started)
        told = Told()
        if config is not None and job_changes:
            told = yield from telling.tell(dialect, cid, at, job_changes, config)
        yield from record_snapshot(dialect, snapshot)
        if job_count is None:
            job_count = len(self.known) + self.created
        return IngestResult(
            jobs=len(self.seen),
            rows_skipped=self.rows_skipped,
            written=written,
            job_count=job_count,
            changes=changes,
            told=told,
            data_version=version + 1 if written else version,
            unreported=unreported,
        )

    async def discard(self, writer: Writer) -> None:
        """Forget a failed walk: delete what it staged (nothing else was written)."""
        self.pending.clear()
        if self.spilled:
            await writer.run_plan(
                lambda d: execute(d, "DELETE FROM job_stage WHERE stage_id = ?", (self.stage_id,))
            )
            self.spilled = 0

    def _merge_memory(
        self, dialect: str, at: datetime, changes: Sequence[StatusChange]
    ) -> Plan[None]:
        """The changed rows and their history, by the driver's executemany: plain tuples,
        converted once here, with none of the per-value processing of bound parameters."""
        rows, history = self._merge_rows(driver_value(dialect, at), changes)
        upsert_sql, history_sql = merge_sql(dialect)
        for chunk in chunks(rows, len(WRITE_COLUMNS) + 2):
            yield ("many", upsert_sql, list(chunk))
        for chunk in chunks(history, len(HISTORY_COLUMNS)):
            yield ("many", history_sql, list(chunk))

    def _merge_rows(
        self, stamp: Any, changes: Sequence[StatusChange]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The driver's rows of the jobs held in memory, and of their history, `stamp` (the
        driver's form of the snapshot's time) as first seen, last seen and changed at."""
        rows = [(*c.row, stamp, stamp) for c in self.pending.values()]
        history = [
            (ch.customer_id, ch.job_id, ch.current, ch.status, ch.previous, stamp) for ch in changes
        ]
        return rows, history


async def open_ingest(
    session: AsyncSession,
    customer_id: str,
    *,
    started: Any = None,
    lease: tuple[str, int] | None = None,
) -> Ingest:
    """A walk of `customer_id`, knowing what the store holds for it now. `started` is when
    the walk began by the database's clock, in the driver's form (the lease's take gives
    it; without one, this process's now); `lease` the (holder, token) its merge must hold."""
    dialect = session.get_bind().dialect.name
    conn = await session.connection()
    # The version first: a write landing between the two reads only makes the merge look
    # again, never miss a change.
    data_version = await plans.run_async(conn, versions.read_version(dialect, customer_id))
    # Every write of a customer's jobs moves its version: at 0 there is nothing stored to
    # compare with (every customer of a cold refresh), and no query to make.
    known: Known = (
        await plans.run_async(conn, versions.read_known(dialect, customer_id))
        if data_version
        else {}
    )
    if started is None:
        started = driver_value(dialect, datetime.now(UTC))
    return Ingest(
        customer_id=customer_id,
        dialect=dialect,
        known=known,
        version=data_version,
        started=started,
        lease=lease,
    )
