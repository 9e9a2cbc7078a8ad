"""The write path of a refresh: rows in page by page, one short transaction at the end.

A refresh of one customer is an `Ingest`:

1. `open_ingest()` reads the customer's stored (job id -> content hash, status code) once.
2. `add_page(rows)` for each page as it arrives: rows are de-duplicated by job id (the last
   copy wins), hashed, and only those whose hash differs from the stored one are normalized
   and kept. Pure CPU bounded by one page, so the event loop is never held for long.
3. Changed rows stay in memory up to `MEMORY_ROWS`; past that `spill()` writes them to
   `job_stage` in short transactions, so memory follows the pages in flight rather than the
   size of the customer (only the job ids and hashes are kept for the whole walk).
4. `commit(snapshot)` merges in one transaction: the changed jobs, a history row for each
   new job and each changed status, the customer's job count and data version, the events,
   alerts and webhook deliveries they cause (`app.store.feed`), and the snapshot row.
   `discard()` deletes what was staged: a failed walk changes nothing readers see.

The merge locks the customer's row first (PostgreSQL) and compares its data version with the
one the walk started from: when another refresh of the customer wrote in between, the
changes are taken again against what is stored now, so no change is written, or told, twice.

Unchanged rows are not rewritten, so a job's `last_seen_at` (the API's `fetched_at`) is when
the gateway fetched the job as it is now; its customer's snapshot says how current it is.

Writes go through a `Writer`: on SQLite one transaction at a time (one writer), each started
with BEGIN IMMEDIATE so that it waits for a lock up front instead of failing halfway; on
PostgreSQL transactions run side by side.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Table, and_, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import catalog, retention
from app.normalize import NormalizedJob, job_id_of, normalize_row
from app.store import feed, outage
from app.store.db import (
    SqliteRecovery,
    apply_sqlite_pragmas,
    session_factory,
    sqlite_file,
    sqlite_recovery,
)
from app.store.feed import FeedConfig, JobChange, Told
from app.store.tables import (
    SORT_MIN_DURATION,
    SORT_MIN_TIME,
    Customer,
    Job,
    JobStage,
    JobStatusHistory,
    Snapshot,
)

CUSTOMERS = cast(Table, Customer.__table__)
SNAPSHOTS = cast(Table, Snapshot.__table__)
JOBS = cast(Table, Job.__table__)
STAGE = cast(Table, JobStage.__table__)
HISTORY = cast(Table, JobStatusHistory.__table__)

MEMORY_ROWS = 2_000
"""Changed rows a refresh holds in memory before it spills them to `job_stage`."""

ROWS_PER_SLICE = 2_000
"""Rows handled between two yields to the event loop when a merge reads staged rows back."""

NORMALIZER_VERSION = 1
"""Part of every content hash: bump it when normalizing changes, and every stored row is
rewritten by its next refresh, as if the upstream had changed it."""

# Bound parameters per statement, under SQLite's (32766) and asyncpg's (32767) limits, and a
# cap on rows per round trip.
_MAX_PARAMETERS = 30_000
_MAX_ROWS_PER_STATEMENT = 1_000

# Stage rows older than this belong to a refresh that died with its process.
ORPHAN_STAGE_AGE = timedelta(hours=1)


Outcome = Literal["success", "error"]
T = TypeVar("T")


def _open_sqlite(path: str) -> sqlite3.Connection:
    """The writer's own connection: autocommit mode (it says BEGIN itself), the store's pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    apply_sqlite_pragmas(conn)
    return conn


class Writer:
    """Write transactions: one at a time on SQLite, side by side on PostgreSQL.

    On a SQLite file the writer also owns one plain `sqlite3` connection in a thread of its
    own (`run_sync`): a refresh's whole merge runs there in one hop, instead of a hop through
    the event loop per statement, which a loop busy with other walks' pages makes slow, and
    which the one writer would pay for every customer in turn.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dialect: str,
        sqlite_file: str | None = None,
        recovery: SqliteRecovery | None = None,
    ) -> None:
        self.sessions = sessions
        self.dialect = dialect
        self._recovery = recovery
        self._lock: asyncio.Lock | None = asyncio.Lock() if dialect == "sqlite" else None
        self._sqlite_file = sqlite_file if dialect == "sqlite" else None
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> Writer:
        """The engine's writer, with its own connection when the database is a SQLite file."""
        path = sqlite_file(str(engine.url)) if engine.dialect.name == "sqlite" else None
        return cls(
            session_factory(engine),
            engine.dialect.name,
            str(path) if path else None,
            sqlite_recovery(engine),
        )

    @property
    def direct(self) -> bool:
        """Whether `run_sync` is available (a SQLite file)."""
        return self._sqlite_file is not None

    async def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in the writer's thread, in one BEGIN IMMEDIATE ... COMMIT."""
        assert self._sqlite_file is not None and self._lock is not None
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        path = self._sqlite_file

        def transaction() -> T:
            if self._conn is None:
                if self._recovery is not None:
                    self._recovery.before_reopen()
                self._conn = _open_sqlite(path)
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite has rolled back itself after some errors (a full disk, I/O).
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if outage.unreachable(exc):
                    # Opened read-only, it would stay so: the next write opens the file
                    # afresh, with the pool's connections (`SqliteRecovery`).
                    self._conn = None
                    conn.close()
                    if self._recovery is not None:
                        self._recovery.away()
                raise
            return result

        async with self._lock:
            loop = asyncio.get_running_loop()
            # Shielded: a cancelled caller must not leave the lock free while the thread
            # still writes.
            return await asyncio.shield(loop.run_in_executor(self._thread, transaction))

    async def run_plan(self, make: Callable[[str], feed.Plan[T]]) -> T:
        """One write transaction running the plan `make(dialect)` (see `app.store.feed`)."""
        if self.direct:
            return await self.run_sync(lambda conn: feed.run_sync(conn, make("sqlite")))
        async with self.transaction() as session:
            return await feed.run_async(await session.connection(), make(self.dialect))

    def close(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None

            def close_conn() -> None:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

            thread.submit(close_conn)
            thread.shutdown(wait=True)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed when the block ends (rolled back on error)."""
        async with self._lock or nullcontext(), self.sessions() as session:
            try:
                if self._lock is not None:
                    # Take the write lock now: a deferred transaction that reads, then
                    # writes, fails at once when another process wrote in between.
                    await session.execute(text("BEGIN IMMEDIATE"))
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise


def row_hash(row: Mapping[str, Any]) -> int:
    """A stable 64-bit hash of an upstream row (and of how it is normalized)."""
    data = f"{NORMALIZER_VERSION}:{row!r}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def job_hash(job: NormalizedJob) -> int:
    """The content hash of an already normalized job (its typed fields and its raw row)."""
    fields = tuple(getattr(job, name) for name in job.__dataclass_fields__ if name != "raw")
    data = f"{NORMALIZER_VERSION}:{fields!r}:{job.raw!r}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def insert_for(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {dialect}")


def chunks(rows: Sequence[Any], columns: int) -> Iterator[Sequence[Any]]:
    size = max(1, min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMETERS // max(1, columns)))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


_WRITE_COLUMNS = [
    "customer_id",
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
    "raw",
    "sort_start",
    "sort_modified",
    "sort_duration",
    "content_hash",
]
# Kept from the first sighting; everything else follows the newest snapshot.
_JOB_KEEP = frozenset({"customer_id", "job_id", "first_seen_at"})


@dataclass(slots=True)
class Changed:
    """A row to write, new or different from the stored one: its columns in
    `_WRITE_COLUMNS` order as the driver takes them (compact: a refresh may hold thousands)."""

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
class SnapshotRecord:
    """One refresh attempt of one customer."""

    customer_id: str
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    pages: int = 0
    jobs_seen: int = 0
    rows_skipped: int = 0
    error_kind: str | None = None
    error_message: str | None = None
    upstream_status: int | None = None
    request_id: str | None = None


def snapshot_values(snapshot: SnapshotRecord) -> dict[str, Any]:
    return {
        "customer_id": snapshot.customer_id,
        "started_at": snapshot.started_at,
        "finished_at": snapshot.finished_at,
        "outcome": snapshot.outcome,
        "pages": snapshot.pages,
        "jobs_seen": snapshot.jobs_seen,
        "rows_skipped": snapshot.rows_skipped,
        "error_kind": snapshot.error_kind,
        "error_message": snapshot.error_message,
        "upstream_status": snapshot.upstream_status,
        "request_id": snapshot.request_id,
    }


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
    known: dict[str, tuple[int | None, int | None]]  # job id -> (hash, status code)
    version: int = 0  # the customer's data version when `known` was read
    stage_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    seen: set[str] = field(default_factory=set)
    pending: dict[str, Changed] = field(default_factory=dict)
    spilled: int = 0
    rows_skipped: int = 0
    created: int = 0

    # -- while walking ------------------------------------------------------------------

    def add_page(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Take one page of upstream rows (pure CPU, proportional to the page)."""
        for row in rows:
            job_id = job_id_of(row)
            if job_id is None:
                self.rows_skipped += 1
                continue
            self._offer(job_id, row_hash(row), row, None)

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
        self.pending[job_id] = Changed(
            _driver_row(self.dialect, job, digest),
            created=stored is None,
            previous_status_code=stored[1] if stored else None,
        )

    @property
    def must_spill(self) -> bool:
        return len(self.pending) >= MEMORY_ROWS

    async def spill(self, writer: Writer, at: datetime) -> None:
        """Move the rows held in memory to `job_stage` (one short transaction)."""
        if self.pending:
            async with writer.transaction() as session:
                await self.spill_in(session, at)

    # -- at the end -----------------------------------------------------------------------

    def _rebase(self, known: dict[str, tuple[int | None, int | None]]) -> None:
        """Take the changes again against `known`, what another refresh stored meanwhile."""
        for job_id, c in list(self.pending.items()):
            stored = known.get(job_id)
            if stored is not None and stored[0] == c.row[_HASH]:
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
                        start_time=feed.from_driver(row[_START]),
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

    async def merge(
        self, session: AsyncSession, snapshot: SnapshotRecord, config: FeedConfig | None = None
    ) -> IngestResult:
        """Write everything into `session`'s transaction (the caller commits); with `config`,
        tell the changes (events, alerts, webhook deliveries)."""
        at = snapshot.finished_at
        cid, dialect = self.customer_id, self.dialect
        conn = await session.connection()
        version = await feed.run_async(conn, feed.lock_customer(dialect, cid, at))
        moved = version != self.version
        job_changes: list[JobChange]
        if self.spilled:
            await self.spill_in(session, at)
            if moved:
                await self._rebase_stage(session)
            written, changes, job_changes = await self._merge_stage(session, at)
            job_count = (
                await feed.run_async(conn, feed.count_jobs(dialect, cid)) if written else None
            )
        else:
            if moved:
                self._rebase(await feed.run_async(conn, feed.read_known(dialect, cid)))
            written = len(self.pending)
            changes = self._changes(at)
            job_changes = self._job_changes()
            if self.pending:
                await self._merge_memory(session, at, changes)
            job_count = len(self.known) + self.created
        if written:
            await feed.run_async(
                conn, feed.bump_version(dialect, cid, job_count if self.created else None)
            )
        if self.spilled and moved:
            self.known = await feed.run_async(conn, feed.read_known(dialect, cid))
        unreported = await feed.run_async(
            conn, retention.note_reported(dialect, cid, self.known, self.seen, at)
        )
        told = Told()
        if config is not None and job_changes:
            told = await feed.run_async(conn, feed.tell(dialect, cid, at, job_changes, config))
        await session.execute(SNAPSHOTS.insert().values(snapshot_values(snapshot)))
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

    async def commit(
        self, writer: Writer, snapshot: SnapshotRecord, config: FeedConfig | None = None
    ) -> IngestResult:
        if writer.direct and not self.spilled:
            return await writer.run_sync(functools.partial(self._merge_sqlite, snapshot, config))
        async with writer.transaction() as session:
            return await self.merge(session, snapshot, config)

    def _merge_sqlite(
        self, snapshot: SnapshotRecord, config: FeedConfig | None, conn: sqlite3.Connection
    ) -> IngestResult:
        """`merge` of rows held in memory, on the writer's own SQLite connection."""
        at = snapshot.finished_at
        stamp = _sqlite_time(at)
        cid = self.customer_id
        version = feed.run_sync(conn, feed.lock_customer("sqlite", cid, at))
        if version != self.version:
            self._rebase(feed.run_sync(conn, feed.read_known("sqlite", cid)))
        job_count = len(self.known) + self.created
        changes = self._changes(at)
        job_changes = self._job_changes()
        upsert_sql, history_sql = _merge_sql("sqlite")
        if self.pending:
            rows, history = self._merge_rows(stamp, changes)
            conn.executemany(upsert_sql, rows)
            conn.executemany(history_sql, history)
            feed.run_sync(
                conn, feed.bump_version("sqlite", cid, job_count if self.created else None)
            )
        unreported = feed.run_sync(
            conn, retention.note_reported("sqlite", cid, self.known, self.seen, at)
        )
        told = Told()
        if config is not None and job_changes:
            told = feed.run_sync(conn, feed.tell("sqlite", cid, at, job_changes, config))
        values = snapshot_values(snapshot)
        values["started_at"] = _sqlite_time(snapshot.started_at)
        values["finished_at"] = stamp
        conn.execute(
            f"INSERT INTO snapshots ({', '.join(values)}) "  # noqa: S608 - our own column names
            f"VALUES ({_marks('sqlite', len(values))})",
            tuple(values.values()),
        )
        return IngestResult(
            jobs=len(self.seen),
            rows_skipped=self.rows_skipped,
            written=len(self.pending),
            job_count=job_count,
            changes=changes,
            told=told,
            data_version=version + 1 if self.pending else version,
            unreported=unreported,
        )

    async def discard(self, writer: Writer) -> None:
        """Forget a failed walk: delete what it staged (nothing else was written)."""
        self.pending.clear()
        if self.spilled:
            async with writer.transaction() as session:
                await session.execute(delete(STAGE).where(STAGE.c.stage_id == self.stage_id))
            self.spilled = 0

    async def spill_in(self, session: AsyncSession, at: datetime) -> None:
        """`spill`, inside a transaction the caller holds."""
        if not self.pending:
            return
        staged_at = _driver_value(self.dialect, at)
        rows = [
            (self.stage_id, staged_at, c.created, c.previous_status_code, *c.row)
            for c in self.pending.values()
        ]
        conn = await session.connection()
        stage_sql = _stage_sql(self.dialect)
        for chunk in chunks(rows, len(_WRITE_COLUMNS) + 4):
            await conn.exec_driver_sql(stage_sql, list(chunk))
        self.spilled += len(rows)
        self.pending.clear()

    async def _merge_memory(
        self, session: AsyncSession, at: datetime, changes: Sequence[StatusChange]
    ) -> None:
        """The changed rows and their history, by the driver's executemany: plain tuples,
        converted once here, with none of the per-value processing of bound parameters."""
        conn = await session.connection()
        rows, history = self._merge_rows(_driver_value(self.dialect, at), changes)
        upsert_sql, history_sql = _merge_sql(self.dialect)
        for chunk in chunks(rows, len(_WRITE_COLUMNS) + 2):
            await conn.exec_driver_sql(upsert_sql, list(chunk))
        for chunk in chunks(history, len(_HISTORY_COLUMNS)):
            await conn.exec_driver_sql(history_sql, list(chunk))

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

    async def _rebase_stage(self, session: AsyncSession) -> None:
        """`_rebase` of the staged rows, in SQL: drop those stored as they are, and take
        `created` and the previous status from what is stored now."""
        s, j = STAGE, JOBS
        same_job = and_(j.c.customer_id == s.c.customer_id, j.c.job_id == s.c.job_id)
        mine = s.c.stage_id == self.stage_id
        await session.execute(
            delete(s).where(
                mine,
                select(j.c.job_id).where(same_job, j.c.content_hash == s.c.content_hash).exists(),
            )
        )
        await session.execute(
            update(s)
            .where(mine)
            .values(
                previous_status_code=select(j.c.status_code).where(same_job).scalar_subquery(),
                created=~select(j.c.job_id).where(same_job).exists(),
            )
        )

    async def _merge_stage(
        self, session: AsyncSession, at: datetime
    ) -> tuple[int, list[StatusChange], list[JobChange]]:
        """Staged rows into `jobs` and history; gives the rows written and the changes."""
        s = STAGE
        mine = s.c.stage_id == self.stage_id
        staged = await session.execute(select(func.count()).select_from(s).where(mine))
        written = int(staged.scalar_one())
        columns = _WRITE_COLUMNS
        source = select(
            *(s.c[name] for name in columns),
            literal(at, JOBS.c.first_seen_at.type).label("first_seen_at"),
            literal(at, JOBS.c.last_seen_at.type).label("last_seen_at"),
        ).where(mine)
        upsert = insert_for(self.dialect, JOBS).from_select(
            [*columns, "first_seen_at", "last_seen_at"], source
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[JOBS.c.customer_id, JOBS.c.job_id],
            set_={c.name: upsert.excluded[c.name] for c in JOBS.c if c.name not in _JOB_KEEP},
        )
        await session.execute(upsert)
        changed = or_(
            s.c.created.is_(True), s.c.status_code.is_distinct_from(s.c.previous_status_code)
        )
        history_source = select(
            s.c.customer_id,
            s.c.job_id,
            s.c.status_code,
            s.c.status,
            s.c.previous_status_code,
            literal(at, HISTORY.c.changed_at.type).label("changed_at"),
        ).where(and_(mine, changed))
        await session.execute(HISTORY.insert().from_select(_HISTORY_COLUMNS, history_source))
        found = await session.stream(
            select(
                s.c.job_id,
                s.c.previous_status_code,
                s.c.status_code,
                s.c.created,
                s.c.status,
                s.c.job_type,
                s.c.module,
                s.c.name,
                s.c.start_time,
            ).where(mine, changed)
        )
        changes: list[StatusChange] = []
        job_changes: list[JobChange] = []
        # In slices: a large customer's changes would hold the event loop in one go.
        async for part in found.partitions(ROWS_PER_SLICE):
            for job_id, previous, current, new, status, job_type, module, name, start in part:
                created = bool(new)
                changes.append(
                    StatusChange(self.customer_id, job_id, previous, current, at, created=created)
                )
                job_changes.append(
                    JobChange(
                        job_id=job_id,
                        created=created,
                        previous=None if created else catalog.STATUS.name(previous),
                        status=status,
                        job_type=job_type,
                        module=module,
                        name=name,
                        start_time=start,
                    )
                )
            await asyncio.sleep(0)
        await session.execute(delete(STAGE).where(mine))
        return written, changes, job_changes


async def ensure_customer(
    session: AsyncSession, dialect: str, customer_id: str, at: datetime
) -> None:
    stmt = insert_for(dialect, CUSTOMERS).values(
        id=customer_id, name=None, created_at=at, updated_at=at
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=[CUSTOMERS.c.id]))


async def open_ingest(session: AsyncSession, customer_id: str) -> Ingest:
    """A refresh of `customer_id`, knowing what the store holds for it now."""
    # The version first: a write landing between the two reads only makes the merge look
    # again, never miss a change.
    version = await session.execute(
        select(CUSTOMERS.c.data_version).where(CUSTOMERS.c.id == customer_id)
    )
    data_version = version.scalar() or 0
    rows = await session.execute(
        select(JOBS.c.job_id, JOBS.c.content_hash, JOBS.c.status_code).where(
            JOBS.c.customer_id == customer_id
        )
    )
    known = {job_id: (digest, status) for job_id, digest, status in rows.all()}
    dialect = session.get_bind().dialect.name
    return Ingest(customer_id=customer_id, dialect=dialect, known=known, version=data_version)


async def purge_orphan_stage(writer: Writer, now: datetime) -> int:
    """Delete stage rows left by refreshes that died with their process."""
    async with writer.transaction() as session:
        result = await session.execute(
            delete(STAGE).where(STAGE.c.staged_at < now - ORPHAN_STAGE_AGE)
        )
    return int(getattr(result, "rowcount", 0) or 0)


def _driver_value(dialect: str, value: datetime) -> Any:
    """A time as the driver takes it: aware for asyncpg; for SQLite, the naive UTC text
    SQLAlchemy stores (`YYYY-MM-DD HH:MM:SS.ffffff`), so that both compare and read alike."""
    return _sqlite_time(value) if dialect == "sqlite" else value


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is UTC:  # normalized times are UTC already: the common case is cheap
        return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"
    return _aware(value).astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    return value


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def _json_text(value: Any) -> str:
    return _JSON.encode(value)


def _driver_row(dialect: str, job: NormalizedJob, digest: int) -> tuple[Any, ...]:
    """A changed job's columns in `_WRITE_COLUMNS` order, as the driver takes them; built
    straight from the job, as this runs for every changed row of every refresh."""
    t = _sqlite_time if dialect == "sqlite" else _postgres_time
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
        _json_text(job.raw),
        # The sort keys: the times themselves, or the sort minimum when there is none.
        start if start is not None else t(SORT_MIN_TIME),
        modified if modified is not None else t(SORT_MIN_TIME),
        SORT_MIN_DURATION if job.duration_seconds is None else job.duration_seconds,
        digest,
    )


def _postgres_time(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


_HISTORY_COLUMNS = [
    "customer_id",
    "job_id",
    "status_code",
    "status",
    "previous_status_code",
    "changed_at",
]
"""A history row's columns, in the order the merges write them."""

_STATUS_CODE = _WRITE_COLUMNS.index("status_code")
_STATUS = _WRITE_COLUMNS.index("status")
_JOB_TYPE = _WRITE_COLUMNS.index("job_type")
_MODULE = _WRITE_COLUMNS.index("module")
_NAME = _WRITE_COLUMNS.index("name")
_START = _WRITE_COLUMNS.index("start_time")
_HASH = _WRITE_COLUMNS.index("content_hash")


def _marks(dialect: str, n: int) -> str:
    if dialect == "sqlite":
        return ", ".join("?" * n)
    return ", ".join(f"${i}" for i in range(1, n + 1))


@functools.cache
def _stage_sql(dialect: str) -> str:
    """The insert of staged rows; a job met again on a later page replaces its copy."""
    columns = ["stage_id", "staged_at", "created", "previous_status_code", *_WRITE_COLUMNS]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("stage_id", "job_id"))
    # Column names are this module's constants, never input: no injection here.
    return (
        f"INSERT INTO job_stage ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({_marks(dialect, len(columns))}) "
        f"ON CONFLICT (stage_id, job_id) DO UPDATE SET {updates}"
    )


@functools.cache
def _merge_sql(dialect: str) -> tuple[str, str]:
    """The upsert of changed jobs and the insert of history rows, as driver SQL."""
    columns = [*_WRITE_COLUMNS, "first_seen_at", "last_seen_at"]
    history = _HISTORY_COLUMNS
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in _JOB_KEEP)
    # Column names are this module's constants, never input: no injection here.
    upsert = (
        f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({_marks(dialect, len(columns))}) "  # noqa: S608
        f"ON CONFLICT (customer_id, job_id) DO UPDATE SET {updates}"
    )
    insert_history = (
        f"INSERT INTO job_status_history ({', '.join(history)}) "  # noqa: S608
        f"VALUES ({_marks(dialect, len(history))})"
    )
    return upsert, insert_history
