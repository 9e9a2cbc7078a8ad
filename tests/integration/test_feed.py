"""The change feed in the store: events written with the data, never twice, in an order a
cursor can trust, on SQLite and on PostgreSQL.

Racing refreshes are built directly: two walks of one customer read the store before either
commits (what two processes, or a refresh racing a request's refresh, do), then both commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.alert_rules import Rules
from app.config import DEFAULT_ALERT_STATUSES
from app.store import plans, telling, versions
from app.store.db import create_engine, session_factory
from app.store.events import last_event_id, list_events
from app.store.merge import IngestResult, open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.tables import Alert, Event
from app.store.telling import FeedConfig
from app.store.writer import Writer

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
CONFIG = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=36))


def row(job_id: str, status: int, start: datetime = T0, module: int = 304) -> dict[str, Any]:
    return {
        "jobType": 7,
        "jobModule": module,
        "status": status,
        "jobId": job_id,
        "name": f"Backup {job_id}",
        "totalCount": "10",
        "failedCount": "0",
        "successfulCount": "10",
        "skippedCount": "0",
        "warningCount": "0",
        "backupSize": "1 GB",
        "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endTime": "N/A"
        if status == 1
        else (start + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jobDuration": "N/A" if status == 1 else "5m",
        "lastModifyTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def snapshot(customer_id: str, at: datetime = T0) -> SnapshotRecord:
    return SnapshotRecord(customer_id, at, at, "success", pages=1)


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


@pytest.fixture
async def second_engine(database_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """Another engine on the same (migrated) database: another process, as far as the
    database can tell."""
    other = create_engine(database_url)
    yield other
    await other.dispose()


async def walk(writer: Writer, customer_id: str, rows: list[dict[str, Any]]) -> Any:
    """A walk that has read the store and taken its pages, ready to commit."""
    async with writer.sessions() as session:
        ingest = await open_ingest(session, customer_id)
    ingest.add_page(rows)
    return ingest


async def commit(writer: Writer, ingest: Any, at: datetime = T0) -> IngestResult:
    result: IngestResult = await ingest.commit(writer, snapshot(ingest.customer_id, at), CONFIG)
    return result


async def stored_events(engine: AsyncEngine) -> list[tuple[int, str, str | None]]:
    async with session_factory(engine)() as session:
        rows = await session.execute(select(Event.id, Event.type, Event.job_id).order_by(Event.id))
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def test_two_walks_that_read_before_either_committed_tell_each_change_once(
    engine: AsyncEngine, writer: Writer
) -> None:
    rows = [row("a", 3, T0 + timedelta(hours=1)), row("b", 2)]
    first = await walk(writer, "c1", rows)
    second = await walk(writer, "c1", rows)
    one = await commit(writer, first)
    two = await commit(writer, second)
    assert one.written == 2
    assert two.written == 0
    assert two.told.events == 0
    types = [(t, j) for _, t, j in await stored_events(engine)]
    assert sorted(types) == sorted(
        [("job.created", "a"), ("job.created", "b"), ("alert.opened", "a")]
    )


async def test_a_status_change_seen_by_two_walks_is_told_once(
    engine: AsyncEngine, writer: Writer
) -> None:
    await commit(writer, await walk(writer, "c1", [row("a", 1)]))
    first = await walk(writer, "c1", [row("a", 3)])
    second = await walk(writer, "c1", [row("a", 3)])
    await commit(writer, first, T0 + timedelta(minutes=1))
    await commit(writer, second, T0 + timedelta(minutes=2))
    types = [t for _, t, _ in await stored_events(engine)]
    assert types == ["job.created", "job.status_changed", "alert.opened"]


async def test_a_walk_that_raced_a_newer_one_tells_what_differs_from_the_store(
    engine: AsyncEngine, writer: Writer
) -> None:
    # Both walks start from 'running'; one commits 'failed', the other then sees 'finished'.
    await commit(writer, await walk(writer, "c1", [row("a", 1)]))
    failed = await walk(writer, "c1", [row("a", 3)])
    finished = await walk(writer, "c1", [row("a", 2)])
    await commit(writer, failed, T0 + timedelta(minutes=1))
    await commit(writer, finished, T0 + timedelta(minutes=2))
    async with session_factory(engine)() as session:
        events = await list_events(session, after=0, limit=100)
    changes = [(e.type, e.data) for e in events if e.type == "job.status_changed"]
    assert [t for t, _ in changes] == ["job.status_changed"] * 2
    assert '"from":"running","to":"failed"' in changes[0][1]
    assert '"from":"failed","to":"finished"' in changes[1][1]
    assert [e.type for e in events][-1] == "alert.resolved"


async def test_racing_processes_on_one_database_never_duplicate_an_event(
    engine: AsyncEngine, second_engine: AsyncEngine, writer: Writer
) -> None:
    other = Writer.for_engine(second_engine)
    try:
        for step in range(5):
            status = (1, 3, 3, 2, 3)[step]
            rows = [row(f"j{n}", status) for n in range(20)]
            walks = [await walk(w, "c1", rows) for w in (writer, other, writer, other)]
            at = T0 + timedelta(minutes=step)
            await asyncio.gather(
                *(
                    commit(w, i, at)
                    for w, i in zip((writer, other, writer, other), walks, strict=True)
                )
            )
    finally:
        other.close()
    events = await stored_events(engine)
    per_job: dict[str | None, list[str]] = {}
    for _, type_, job_id in events:
        if type_.startswith("job."):
            per_job.setdefault(job_id, []).append(type_)
    for n in range(20):
        # running, failed, failed again (no change), finished, failed
        assert per_job[f"j{n}"] == ["job.created"] + ["job.status_changed"] * 3, n
    async with session_factory(engine)() as session:
        alerts = (await session.execute(select(Alert.state))).scalars().all()
    assert sorted(alerts) == ["open", "resolved"]
    alert_events = [t for _, t, _ in events if t.startswith("alert.")]
    assert alert_events == ["alert.opened", "alert.resolved", "alert.opened"]


async def test_a_reader_following_the_feed_while_processes_write_misses_nothing(
    engine: AsyncEngine, second_engine: AsyncEngine, writer: Writer
) -> None:
    """Ids are handed out in commit order, so a cursor never passes an event that commits
    later: what a reader collects page by page during the writes is the whole feed."""
    other = Writer.for_engine(second_engine)
    done = asyncio.Event()
    seen: list[int] = []

    async def read() -> None:
        cursor = 0
        sessions = session_factory(engine)
        while True:
            finished = done.is_set()
            async with sessions() as session:
                top = await last_event_id(session)
                page = await list_events(session, after=cursor, upto=top, limit=50)
            seen.extend(e.id for e in page)
            cursor = page[-1].id if len(page) == 50 else max(cursor, top)
            if finished and not page:
                return
            await asyncio.sleep(0)

    async def write(w: Writer, customers: range) -> None:
        for c in customers:
            ingest = await walk(w, f"c{c}", [row(f"j{n}", 3) for n in range(5)])
            await commit(w, ingest)

    try:
        reader = asyncio.create_task(read())
        await asyncio.gather(write(writer, range(0, 30, 2)), write(other, range(1, 30, 2)))
        done.set()
        await reader
    finally:
        other.close()
    stored = [i for i, _, _ in await stored_events(engine)]
    assert len(stored) == 30 * 6  # five jobs created and one alert per customer
    assert seen == stored


async def test_a_failed_commit_leaves_no_event(engine: AsyncEngine, writer: Writer) -> None:
    ingest = await walk(writer, "c1", [row("a", 3)])
    broken = snapshot("c1")
    object.__setattr__(broken, "outcome", "bogus")  # the snapshot insert fails the check
    with pytest.raises((sqlite3.IntegrityError, IntegrityError)):
        await ingest.commit(writer, broken, CONFIG)
    assert await stored_events(engine) == []


async def test_an_event_committed_late_is_not_passed_by_a_cursor(
    engine: AsyncEngine, second_engine: AsyncEngine, writer: Writer
) -> None:
    """One transaction has written its event but not committed; another process writes an
    event meanwhile. A reader in between must not be handed a cursor past the first one."""
    other = Writer.for_engine(second_engine)
    sessions = session_factory(engine)
    seen: list[int] = []
    cursor = 0

    async def read() -> None:
        nonlocal cursor
        async with sessions() as session:
            top = await last_event_id(session)
            page = await list_events(session, after=cursor, upto=top, limit=100)
        seen.extend(e.id for e in page)
        cursor = max(cursor, top)

    change = telling.JobChange("a", True, None, "failed", "microsoft_365", "onedrive", None, T0)
    try:
        async with writer.transaction() as session:
            conn = await session.connection()
            dialect = engine.dialect.name
            await plans.run_async(conn, versions.lock_customer(dialect, "c1", T0))
            await plans.run_async(conn, telling.tell(dialect, "c1", T0, [change], CONFIG))
            late = asyncio.create_task(commit(other, await walk(other, "c2", [row("b", 2)])))
            await asyncio.sleep(0.3)  # the other process's write runs, or waits its turn
            await read()
        await late
        await read()
    finally:
        other.close()
    stored = [i for i, _, _ in await stored_events(engine)]
    assert seen == stored


async def test_walks_too_large_for_memory_tell_the_same_and_once(
    engine: AsyncEngine, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MEMORY_ROWS changed rows wait in job_stage: the merge from there tells the same
    events, and a racing walk of the same rows tells nothing again."""
    from app.store import merge as merge_module

    monkeypatch.setattr(merge_module, "MEMORY_ROWS", 3)
    await commit(writer, await walk(writer, "c1", [row(f"j{n}", 1) for n in range(10)]))
    rows = [row(f"j{n}", 3 if n < 4 else 1) for n in range(10)]
    walks = []
    for _ in range(2):
        w = await walk(writer, "c1", [])
        for start in range(0, len(rows), 3):
            w.add_page(rows[start : start + 3])
            if w.must_spill:
                await w.spill(writer, T0)
        walks.append(w)
    assert all(w.spilled for w in walks)
    first = await commit(writer, walks[0], T0 + timedelta(minutes=1))
    second = await commit(writer, walks[1], T0 + timedelta(minutes=2))
    assert first.written == 4
    assert second.written == 0
    assert second.told.events == 0
    events = await stored_events(engine)
    assert [t for _, t, _ in events].count("job.created") == 10
    changed = sorted(j for _, t, j in events if t == "job.status_changed")
    assert changed == ["j0", "j1", "j2", "j3"]
    assert [t for _, t, _ in events][-1] == "alert.opened"
