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
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Table, delete, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import catalog
from app.normalize import (
    JOB_VALUES,
    NormalizedJob,
    job_id_of,
    job_values,
    normalize_row,
    raw_json,
)
from app.store import feed, leases, outage
from app.store.db import (
    SqliteRecovery,
    apply_sqlite_pragmas,
    session_factory,
    sqlite_file,
    sqlite_recovery,
)
from app.store.feed import FeedConfig, JobChange, Known, Plan, Told, sql
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

NORMALIZER_VERSION = 2
"""Part of every content hash: bump it when normalizing changes, and every stored row is
rewritten by its next refresh, as if the upstream had changed it. (2: a walk's rows are
hashed from their bytes as the upstream sent them, `raw_hash`.)"""

# Bound parameters per statement, under SQLite's (32766) and asyncpg's (32767) limits, and a
# cap on rows per round trip.
_MAX_PARAMETERS = 30_000
_MAX_ROWS_PER_STATEMENT = 1_000

WRITER_CACHE_KIB = 16_384
"""The SQLite writer connection's page cache."""

GROUP_CUSTOMERS = 50
GROUP_ROWS = 12_000
"""A SQLite group commit takes up to this many customers' merges, and this many changed rows
(at least one merge, whatever its size): the transaction stays short for the readers."""

POSTGRES_MERGES = 4
"""Merges run at once on PostgreSQL: more only contend for the same locks and CPU."""

# Stage rows older than this belong to a refresh that died with its process.
ORPHAN_STAGE_AGE = timedelta(hours=1)


Outcome = Literal["success", "error"]
T = TypeVar("T")


@dataclass(slots=True)
class _Merge:
    """A walk's merge waiting for the SQLite writer (`Writer.run_merge`)."""

    make: Callable[[str], feed.Plan[Any]]
    rows: int
    restore: Callable[[], None] | None
    done: asyncio.Future[Any]


def _open_sqlite(path: str) -> sqlite3.Connection:
    """The writer's own connection: autocommit mode (it says BEGIN itself), the store's pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    apply_sqlite_pragmas(conn)
    # Every inserted job updates a dozen B-trees whose keys scatter over the file: a page
    # cache of 16 MiB (the default is 2) keeps their inner pages between merges.
    conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
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
        self._merges = asyncio.Semaphore(POSTGRES_MERGES)
        self._waiting: deque[_Merge] = deque()  # merges waiting for the SQLite writer
        self._drainer: asyncio.Task[None] | None = None

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

    def _connection(self) -> sqlite3.Connection:
        """The writer's connection (in its thread), opened when there is none."""
        assert self._sqlite_file is not None
        if self._conn is None:
            if self._recovery is not None:
                self._recovery.before_reopen()
            self._conn = _open_sqlite(self._sqlite_file)
        return self._conn

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        """After a failed transaction (in the writer's thread)."""
        if isinstance(exc, sqlite3.Error) and outage.unreachable(exc):
            # Opened read-only, it would stay so: the next write opens the file afresh, with
            # the pool's connections (`SqliteRecovery`).
            self._conn = None
            conn.close()
            if self._recovery is not None:
                self._recovery.away()

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in one BEGIN IMMEDIATE ... COMMIT (in the writer's thread)."""
        conn = self._connection()
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
        except BaseException as exc:
            self._failed(conn, exc)
            raise
        return result

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """`fn()` in the writer's thread, holding the write lock."""
        assert self._lock is not None
        async with self._lock:
            return await self._locked(fn)

    async def _locked(self, fn: Callable[[], T]) -> T:
        """`fn()` in the writer's thread; the caller holds the write lock."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        # Shielded: a cancelled caller must not leave the lock free while the thread still
        # writes.
        return await asyncio.shield(loop.run_in_executor(self._thread, fn))

    async def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in the writer's thread, in one BEGIN IMMEDIATE ... COMMIT."""
        assert self._sqlite_file is not None
        return await self._in_thread(lambda: self._transaction(fn))

    async def run_merge(
        self,
        make: Callable[[str], feed.Plan[T]],
        *,
        rows: int = 0,
        restore: Callable[[], None] | None = None,
    ) -> T:
        """`run_plan` for a walk's merge of `rows` changed rows. On PostgreSQL at most
        `POSTGRES_MERGES` run at once. On a SQLite file, merges that wait for the writer
        together are committed together (group commit, `_commit_group`): one transaction
        and its page writes for up to `GROUP_CUSTOMERS` customers. `restore` puts the
        merge's walk back as it was before its plan ran, so that it can run again."""
        if not self.direct:
            async with self._merges:
                return await self.run_plan(make)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._waiting.append(_Merge(make, rows, restore, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain(), name="sqlite-group-commit")
        result: T = await done
        return result

    async def _drain(self) -> None:
        """Commit the merges waiting, a group at a time, until none waits. A group is taken
        once the writer is free: every merge that came while it was busy joins."""
        assert self._lock is not None
        while self._waiting:
            group: list[_Merge] = []
            try:
                async with self._lock:
                    group = self._next_group()
                    if not group:
                        continue
                    outcomes = await self._locked(functools.partial(self._commit_group, group))
            except BaseException as exc:
                if not isinstance(exc, Exception):  # stopped (the loop ends): nobody waits
                    for merge in [*group, *self._waiting]:
                        merge.done.cancel()
                    self._waiting.clear()
                    raise
                outcomes = [exc] * len(group)
            for merge, outcome in zip(group, outcomes, strict=True):
                if merge.done.done():
                    continue
                if isinstance(outcome, BaseException):
                    merge.done.set_exception(outcome)
                else:
                    merge.done.set_result(outcome[0])

    def _next_group(self) -> list[_Merge]:
        """The merges waiting, oldest first, up to `GROUP_CUSTOMERS` and `GROUP_ROWS`."""
        group: list[_Merge] = []
        budget = GROUP_ROWS
        while self._waiting and len(group) < GROUP_CUSTOMERS:
            merge = self._waiting[0]
            if merge.done.done():  # its walk was cancelled while it waited
                self._waiting.popleft()
                continue
            if group and merge.rows > budget:
                break
            budget -= merge.rows
            group.append(self._waiting.popleft())
        return group

    def _commit_group(self, group: list[_Merge]) -> list[Any]:
        """The group's merges in one transaction, each in a savepoint: a merge that fails
        (a lost lease, a bad row) is rolled back alone and the others commit. When the
        transaction itself fails, each merge runs again in its own (in the writer's thread).
        Gives, per merge, `(result,)` or the exception."""
        if len(group) == 1:
            return self._commit_each(group)

        def all_of(conn: sqlite3.Connection) -> list[Any]:
            out: list[Any] = []
            for merge in group:
                conn.execute("SAVEPOINT merge")
                try:
                    out.append((feed.run_sync(conn, merge.make("sqlite")),))
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite rolled the whole transaction back
                    conn.execute("ROLLBACK TO merge")
                    out.append(exc)
                conn.execute("RELEASE merge")
            return out

        try:
            return self._transaction(all_of)
        except Exception:
            if any(merge.restore is None for merge in group):
                raise
            for merge in group:
                assert merge.restore is not None
                merge.restore()
            return self._commit_each(group)

    def _commit_each(self, group: list[_Merge]) -> list[Any]:
        out: list[Any] = []
        for merge in group:
            plan = merge.make

            def one(conn: sqlite3.Connection, make: Callable[[str], feed.Plan[Any]] = plan) -> Any:
                return feed.run_sync(conn, make("sqlite"))

            try:
                out.append((self._transaction(one),))
            except Exception as exc:
                out.append(exc)
        return out

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
    *JOB_VALUES,  # the typed fields, as normalize gives them (one list, not two)
    "raw",
    "sort_start",
    "sort_modified",
    "sort_duration",
    "content_hash",
    "walk_started_at",
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
        self._take(job_id, stored, _driver_row(self.dialect, job, digest, self.started))

    def _take(self, job_id: str, stored: tuple[Any, ...] | None, changed: tuple[Any, ...]) -> None:
        if stored is not None and _older(changed, stored):
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
        """`_driver_row` from `normalize.job_values` straight: no `NormalizedJob` between
        (this runs for every changed row of every walk)."""
        t = _sqlite_time if self.dialect == "sqlite" else _postgres_time
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

    def _spill(self, dialect: str, at: datetime) -> feed.Plan[None]:
        if not self.pending:
            return
        staged_at = _driver_value(dialect, at)
        rows = [
            (self.stage_id, staged_at, c.created, c.previous_status_code, *c.row)
            for c in self.pending.values()
        ]
        stage_sql = _stage_sql(dialect)
        for chunk in chunks(rows, len(_WRITE_COLUMNS) + 4):
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
            if stored is not None and _older(c.row, stored):
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
    ) -> feed.Plan[IngestResult]:
        """The one merge of a walk, as a plan (run on the SQLite writer's own connection or
        on a SQLAlchemy one, inside the caller's transaction): lock the customer and check
        the lease; take the changes again if another walk wrote meanwhile (newest wins);
        write the changed jobs and their history, from memory or from `job_stage`; move
        the customer's version; mark what the upstream stopped reporting; with `config`,
        tell the changes (events, alerts, webhook deliveries); record the snapshot; give the
        lease back."""
        at = snapshot.finished_at
        cid = self.customer_id
        version = yield from feed.lock_customer(dialect, cid, at)
        if self.lease is not None:
            # Checked and given back at once; a rollback gives it back to the walk.
            yield from leases.check_and_give_back(dialect, cid, *self.lease)
        moved = version != self.version
        job_changes: list[JobChange]
        job_count: int | None
        if self.spilled:
            yield from self._spill(dialect, at)
            if moved:
                yield from self._rebase_stage(dialect)
            written, changes, job_changes = yield from self._merge_stage(dialect, at)
            job_count = (yield from feed.count_jobs(dialect, cid)) if written else None
            if moved:
                self.known = yield from feed.read_known(dialect, cid)
        else:
            if moved:
                self._rebase((yield from feed.read_known(dialect, cid)))
            written = len(self.pending)
            changes = self._changes(at)
            job_changes = self._job_changes()
            if self.pending:
                yield from self._merge_memory(dialect, at, changes)
            job_count = len(self.known) + self.created
        if written:
            yield from feed.bump_version(dialect, cid, job_count if self.created else None)
        unreported = yield from note_reported(dialect, cid, self.known, self.seen, at, self.started)
        told = Told()
        if config is not None and job_changes:
            told = yield from feed.tell(dialect, cid, at, job_changes, config)
        yield from _record_snapshot(dialect, snapshot)
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
                lambda d: _exec(d, "DELETE FROM job_stage WHERE stage_id = ?", (self.stage_id,))
            )
            self.spilled = 0

    def _merge_memory(
        self, dialect: str, at: datetime, changes: Sequence[StatusChange]
    ) -> feed.Plan[None]:
        """The changed rows and their history, by the driver's executemany: plain tuples,
        converted once here, with none of the per-value processing of bound parameters."""
        rows, history = self._merge_rows(_driver_value(dialect, at), changes)
        upsert_sql, history_sql = _merge_sql(dialect)
        for chunk in chunks(rows, len(_WRITE_COLUMNS) + 2):
            yield ("many", upsert_sql, list(chunk))
        for chunk in chunks(history, len(_HISTORY_COLUMNS)):
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

    def _rebase_stage(self, dialect: str) -> feed.Plan[None]:
        """`_rebase` of the staged rows, in SQL: drop those stored as they are, or stored in
        a newer version (newest wins, as `_older` says), and take `created` and the
        previous status from what is stored now."""
        same = "j.customer_id = s.customer_id AND j.job_id = s.job_id"
        newer = (
            "j.sort_modified > s.sort_modified OR (j.sort_modified = s.sort_modified "
            "AND j.walk_started_at IS NOT NULL AND s.walk_started_at IS NOT NULL "
            "AND j.walk_started_at > s.walk_started_at)"
        )
        yield from _exec(
            dialect,
            "DELETE FROM job_stage AS s WHERE s.stage_id = ? AND EXISTS ("  # noqa: S608
            f"SELECT 1 FROM jobs AS j WHERE {same} AND (j.content_hash = s.content_hash "
            f"OR {newer}))",
            (self.stage_id,),
        )
        yield from _exec(
            dialect,
            "UPDATE job_stage AS s SET "  # noqa: S608
            f"previous_status_code = (SELECT j.status_code FROM jobs AS j WHERE {same}), "
            f"created = NOT EXISTS (SELECT 1 FROM jobs AS j WHERE {same}) "
            "WHERE s.stage_id = ?",
            (self.stage_id,),
        )

    def _merge_stage(
        self, dialect: str, at: datetime
    ) -> feed.Plan[tuple[int, list[StatusChange], list[JobChange]]]:
        """Staged rows into `jobs` and history; gives the rows written and the changes."""
        stamp = _driver_value(dialect, at)
        mine = (self.stage_id,)
        counted = yield (
            "fetch",
            feed.sql(dialect, "SELECT COUNT(*) FROM job_stage WHERE stage_id = ?"),
            mine,
        )
        written = int(counted[0][0])
        columns = ", ".join(_WRITE_COLUMNS)
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in [*_WRITE_COLUMNS, "last_seen_at"] if c not in _JOB_KEEP
        )
        yield from _exec(
            dialect,
            f"INSERT INTO jobs ({columns}, first_seen_at, last_seen_at) "  # noqa: S608
            f"SELECT {columns}, ?, ? FROM job_stage WHERE stage_id = ? "
            f"ON CONFLICT (customer_id, job_id) DO UPDATE SET {updates}",
            (stamp, stamp, self.stage_id),
        )
        distinct = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
        changed = f"(created OR status_code {distinct} previous_status_code)"
        yield from _exec(
            dialect,
            f"INSERT INTO job_status_history ({', '.join(_HISTORY_COLUMNS)}) "  # noqa: S608
            "SELECT customer_id, job_id, status_code, status, previous_status_code, ? "
            f"FROM job_stage WHERE stage_id = ? AND {changed}",
            (stamp, self.stage_id),
        )
        found = yield (
            "fetch",
            feed.sql(
                dialect,
                "SELECT job_id, previous_status_code, status_code, created, status, "  # noqa: S608
                f"job_type, module, name, start_time FROM job_stage WHERE stage_id = ? "
                f"AND {changed}",
            ),
            mine,
        )
        changes: list[StatusChange] = []
        job_changes: list[JobChange] = []
        for job_id, previous, current, new, status, job_type, module, name, start in found:
            created = bool(new)
            changes.append(StatusChange(self.customer_id, job_id, previous, current, at, created))
            job_changes.append(
                JobChange(
                    job_id=job_id,
                    created=created,
                    previous=None if created else catalog.STATUS.name(previous),
                    status=status,
                    job_type=job_type,
                    module=module,
                    name=name,
                    start_time=feed.from_driver(start),
                )
            )
        yield from _exec(dialect, "DELETE FROM job_stage WHERE stage_id = ?", mine)
        return written, changes, job_changes


async def ensure_customer(
    session: AsyncSession, dialect: str, customer_id: str, at: datetime
) -> None:
    stmt = insert_for(dialect, CUSTOMERS).values(
        id=customer_id, name=None, created_at=at, updated_at=at
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=[CUSTOMERS.c.id]))


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
    data_version = await feed.run_async(conn, feed.read_version(dialect, customer_id))
    # Every write of a customer's jobs moves its version: at 0 there is nothing stored to
    # compare with (every customer of a cold refresh), and no query to make.
    known: Known = (
        await feed.run_async(conn, feed.read_known(dialect, customer_id)) if data_version else {}
    )
    if started is None:
        started = _driver_value(dialect, datetime.now(UTC))
    return Ingest(
        customer_id=customer_id,
        dialect=dialect,
        known=known,
        version=data_version,
        started=started,
        lease=lease,
    )


async def purge_orphan_stage(writer: Writer, now: datetime) -> int:
    """Delete stage rows left by refreshes that died with their process."""
    async with writer.transaction() as session:
        result = await session.execute(
            delete(STAGE).where(STAGE.c.staged_at < now - ORPHAN_STAGE_AGE)
        )
    return int(getattr(result, "rowcount", 0) or 0)


def _exec(dialect: str, statement: str, params: tuple[Any, ...]) -> feed.Plan[int]:
    count: int = yield ("exec", feed.sql(dialect, statement), params)
    return count


def _record_snapshot(dialect: str, snapshot: SnapshotRecord) -> feed.Plan[None]:
    values = snapshot_values(snapshot)
    values["started_at"] = _driver_value(dialect, snapshot.started_at)
    values["finished_at"] = _driver_value(dialect, snapshot.finished_at)
    yield from _exec(
        dialect,
        f"INSERT INTO snapshots ({', '.join(values)}) "  # noqa: S608 - our own column names
        f"VALUES ({', '.join('?' * len(values))})",
        tuple(values.values()),
    )


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


def _older(row: tuple[Any, ...], stored: tuple[Any, ...]) -> bool:
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


def _driver_row(dialect: str, job: NormalizedJob, digest: int, started: Any) -> tuple[Any, ...]:
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
        started,
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
_SORT_MODIFIED = _WRITE_COLUMNS.index("sort_modified")
_WALK = _WRITE_COLUMNS.index("walk_started_at")


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
    stamp = feed.to_driver(dialect, at)
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
