"""Newest wins, by data: a stored job is never replaced by an older version of itself,
whatever order walks commit in, and a change that is not applied is not told. On SQLite and
on PostgreSQL.

The story found from outside: a job went `running`, then `failed` (modified 60 min ago),
then `finished` (30 min ago). A slow walk read `failed`; another walk stored `finished`; the
slow walk committed last. The store went back to `failed`, and the feed told
`finished -> failed` and an `alert.opened`.

Walks are built directly here (`open_ingest`, pages, `commit`): two walks that both read the
store before either commits are what two processes, or `jobs-gateway refresh` beside
`serve`, do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.alert_rules import Rules
from app.config import DEFAULT_ALERT_STATUSES
from app.store import leases, plans
from app.store.db import session_factory
from app.store.merge import Ingest, IngestResult, open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.tables import Alert, Event, Job
from app.store.telling import FeedConfig
from app.store.writer import Writer

NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0))
RUNNING, FINISHED, FAILED = 1, 2, 3


def row(status: int, modified: datetime, job_id: str = "a") -> dict[str, Any]:
    start = NOW - timedelta(hours=2)
    return {
        "jobType": 7,
        "jobModule": 304,
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
        "endTime": "N/A" if status == RUNNING else modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jobDuration": "N/A" if status == RUNNING else "5m",
        "lastModifyTime": modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


async def walk(
    writer: Writer,
    rows: list[dict[str, Any]],
    started: datetime,
    lease: tuple[str, int] | None = None,
) -> Ingest:
    """A walk that began at `started` (the database's clock, as a lease's take gives it),
    has read the store, and holds its pages, ready to commit."""
    dialect = writer.dialect
    async with writer.sessions() as session:
        ingest = await open_ingest(
            session, "c1", started=plans.to_driver(dialect, started), lease=lease
        )
    ingest.add_page(rows)
    return ingest


async def commit(writer: Writer, ingest: Ingest, spill: bool = False) -> IngestResult:
    at = datetime.now(UTC)
    if spill:  # the path of a large customer: rows staged in the database first
        await ingest.spill(writer, at)
    return await ingest.commit(writer, SnapshotRecord("c1", at, at, "success", pages=1), CONFIG)


async def stored_status(engine: AsyncEngine) -> str:
    async with session_factory(engine)() as session:
        status: str = (await session.execute(select(Job.status))).scalar_one()
    return status


async def told(engine: AsyncEngine) -> list[tuple[str, str | None]]:
    async with session_factory(engine)() as session:
        rows = await session.execute(select(Event.type, Event.data).order_by(Event.id))
        return [(t, d) for t, d in rows.all()]


async def open_alerts(engine: AsyncEngine) -> int:
    async with session_factory(engine)() as session:
        rows = await session.execute(select(Alert.id).where(Alert.state == "open"))
        return len(rows.all())


@pytest.fixture
async def running_job(writer: Writer) -> None:
    """The job as first stored: running, modified 90 minutes ago."""
    await commit(writer, await walk(writer, [row(RUNNING, NOW - timedelta(minutes=90))], NOW))


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "staged"])
@pytest.mark.usefixtures("running_job")
async def test_an_older_walk_committing_last_changes_nothing_and_tells_nothing(
    engine: AsyncEngine, writer: Writer, spill: bool
) -> None:
    slow = await walk(writer, [row(FAILED, NOW - timedelta(minutes=60))], NOW)
    fast = await walk(writer, [row(FINISHED, NOW - timedelta(minutes=30))], NOW + timedelta(1))
    await commit(writer, fast, spill)
    before = await told(engine)
    late = await commit(writer, slow, spill)

    assert await stored_status(engine) == "finished"
    assert late.written == 0
    assert late.told.events == 0
    assert await told(engine) == before  # no finished -> failed, no alert.opened
    assert await open_alerts(engine) == 0
    changes = [d for t, d in before if t == "job.status_changed"]
    assert len(changes) == 1
    assert '"from":"running","to":"finished"' in (changes[0] or "")


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "staged"])
@pytest.mark.usefixtures("running_job")
async def test_walks_committing_in_their_order_tell_each_step(
    engine: AsyncEngine, writer: Writer, spill: bool
) -> None:
    slow = await walk(writer, [row(FAILED, NOW - timedelta(minutes=60))], NOW)
    fast = await walk(writer, [row(FINISHED, NOW - timedelta(minutes=30))], NOW + timedelta(1))
    await commit(writer, slow, spill)
    await commit(writer, fast, spill)

    assert await stored_status(engine) == "finished"
    events = await told(engine)
    changes = [d or "" for t, d in events if t == "job.status_changed"]
    assert len(changes) == 2
    assert '"from":"running","to":"failed"' in changes[0]
    assert '"from":"failed","to":"finished"' in changes[1]
    assert [t for t, _ in events if t.startswith("alert.")] == ["alert.opened", "alert.resolved"]


@pytest.mark.parametrize("later_commits_first", [True, False])
@pytest.mark.usefixtures("running_job")
async def test_on_a_tie_of_last_modified_the_walk_that_started_later_wins(
    engine: AsyncEngine, writer: Writer, later_commits_first: bool
) -> None:
    # The same lastModifyTime, other content: the upstream changed the job without moving
    # its time. Which walk saw the newer state is then known only by when each started.
    same = NOW - timedelta(minutes=30)
    earlier = await walk(writer, [row(FAILED, same)], NOW)
    later = await walk(writer, [row(FINISHED, same)], NOW + timedelta(seconds=1))
    order = [later, earlier] if later_commits_first else [earlier, later]
    for ingest in order:
        await commit(writer, ingest)
    assert await stored_status(engine) == "finished"
    if later_commits_first:
        assert not [t for t, _ in await told(engine) if t == "alert.opened"]


async def test_a_walk_whose_lease_was_taken_over_commits_nothing(
    engine: AsyncEngine, writer: Writer
) -> None:
    mine = await writer.run_plan(lambda d: leases.take(d, "c1", "host:1:mine", 60))
    assert mine.ours
    ingest = await walk(writer, [row(FAILED, NOW)], NOW, lease=("host:1:mine", mine.token))
    # The lease expires (the holder stalled) and another process takes it.
    async with writer.transaction() as session:
        await session.execute(
            text("UPDATE refresh_leases SET expires_at = :past"),
            {"past": plans.to_driver(writer.dialect, NOW - timedelta(hours=1))},
        )
    theirs = await writer.run_plan(lambda d: leases.take(d, "c1", "host:2:theirs", 60))
    assert theirs.ours

    with pytest.raises(leases.LeaseLost):
        await commit(writer, ingest)
    assert await told(engine) == []
    async with session_factory(engine)() as session:
        assert (await session.execute(select(Job.job_id))).all() == []


async def test_a_lease_is_judged_by_the_database_clock_and_fenced_by_its_token(
    writer: Writer,
) -> None:
    first = await writer.run_plan(lambda d: leases.take(d, "c1", "host:1:a", 60))
    other = await writer.run_plan(lambda d: leases.take(d, "c1", "host:2:b", 60))
    assert first.ours
    assert not other.ours
    assert other.holder == "host:1:a"
    assert 0 < other.seconds_left <= 60
    # Renewing with a stale token fails; with the right one it holds.
    assert not await writer.run_plan(lambda d: leases.extend(d, "c1", "host:1:a", 1, 60))
    assert await writer.run_plan(lambda d: leases.extend(d, "c1", "host:1:a", first.token, 60))
    # A backoff keeps the others out, not the process that backed off.
    await writer.run_plan(lambda d: leases.back_off(d, "c1", "host:1:a", first.token, 60))
    refused = await writer.run_plan(lambda d: leases.take(d, "c1", "host:2:b", 60))
    assert not refused.ours
    assert refused.backoff
    again = await writer.run_plan(lambda d: leases.take(d, "c1", "host:1:a", 60))
    assert again.ours
    assert again.token != first.token
