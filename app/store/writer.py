"""The store's writer: write transactions, one at a time on SQLite, side by side on
PostgreSQL.

On SQLite each transaction starts with BEGIN IMMEDIATE, so that it waits for a lock up
front instead of failing halfway. On a SQLite file the writer owns one plain `sqlite3`
connection in a thread of its own, and the merges of walks that wait for it together are
committed together (group commit). Write steps are plans (`app.store.plans`).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store import outage, plans
from app.store.db import (
    SqliteRecovery,
    apply_sqlite_pragmas,
    session_factory,
    sqlite_file,
    sqlite_recovery,
)

WRITER_CACHE_KIB = 16_384
"""The SQLite writer connection's page cache."""

GROUP_CUSTOMERS = 50
GROUP_ROWS = 12_000
"""A SQLite group commit takes up to this many customers' merges, and this many changed rows
(at least one merge, whatever its size): the transaction stays short for the readers."""

POSTGRES_MERGES = 4
"""Merges run at once on PostgreSQL: more only contend for the same locks and CPU."""

T = TypeVar("T")


@dataclass(slots=True)
class _Merge:
    """A walk's merge waiting for the SQLite writer (`Writer.run_merge`)."""

    make: Callable[[str], plans.Plan[Any]]
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
        make: Callable[[str], plans.Plan[T]],
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
                    out.append((plans.run_sync(conn, merge.make("sqlite")),))
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

            def one(conn: sqlite3.Connection, make: Callable[[str], plans.Plan[Any]] = plan) -> Any:
                return plans.run_sync(conn, make("sqlite"))

            try:
                out.append((self._transaction(one),))
            except Exception as exc:
                out.append(exc)
        return out

    async def run_plan(self, make: Callable[[str], plans.Plan[T]]) -> T:
        """One write transaction running the plan `make(dialect)` (see `app.store.plans`)."""
        if self.direct:
            return await self.run_sync(lambda conn: plans.run_sync(conn, make("sqlite")))
        async with self.transaction() as session:
            return await plans.run_async(await session.connection(), make(self.dialect))

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
