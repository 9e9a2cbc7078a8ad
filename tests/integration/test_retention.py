"""Retention: what is older than RETENTION_DAYS goes, in short batches, and nothing that
start-up, a pending webhook, an open alert or a job the upstream still reports needs.

Every test runs on a SQLite file and on PostgreSQL. The data is written the way refreshes
write it (`open_ingest`, `add_page`, `commit`); the merge keeps `jobs.unreported_since`
(`app.store.jobs.note_reported`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.alert_rules import Rules
from app.config import DEFAULT_ALERT_STATUSES
from app.store import events, maintenance, repo, retention
from app.store.db import session_factory
from app.store.merge import IngestResult, open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.tables import (
    Alert,
    Customer,
    DigestDay,
    Event,
    FeedHorizon,
    Job,
    JobStatusHistory,
    MaintenanceWindow,
    Snapshot,
    WebhookDelivery,
)
from app.store.telling import FeedConfig
from app.store.writer import Writer

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
DAYS = 90
T_OLD = NOW - timedelta(days=200)
T_OLD2 = NOW - timedelta(days=150)
T_RECENT = NOW - timedelta(days=10)
T_LAST = NOW - timedelta(days=1)
T_ERROR = NOW - timedelta(hours=1)

RECEIVER = "https://receiver.example/hooks"
CONFIG = FeedConfig(
    Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0),
    webhook_urls=(RECEIVER,),
    webhook_events=frozenset({"alert.opened", "alert.updated", "alert.resolved"}),
)
KEY = "microsoft_365:microsoft_365_groups"  # job type and module of every row here


def row(job_id: str, status: int, start: datetime) -> dict[str, Any]:
    """An upstream row; 1 running, 2 finished, 3 failed."""
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
        "endTime": "N/A",
        "jobDuration": "N/A",
        "lastModifyTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


async def refresh(
    writer: Writer,
    customer_id: str,
    rows: list[dict[str, Any]],
    at: datetime,
    config: FeedConfig = CONFIG,
) -> tuple[IngestResult, tuple[int, int]]:
    """A successful refresh as the refresher writes it, and the merge's upkeep of the mark
    of jobs the upstream stopped reporting (jobs marked, unmarked)."""
    async with writer.sessions() as session:
        ingest = await open_ingest(session, customer_id)
    ingest.add_page(rows)
    result = await ingest.commit(writer, SnapshotRecord(customer_id, at, at, "success"), config)
    return result, result.unreported


async def fail(writer: Writer, customer_id: str, at: datetime) -> None:
    snapshot = SnapshotRecord(
        customer_id, at, at, "error", error_kind="upstream", error_message="503 from upstream"
    )
    async with writer.transaction() as session:
        await repo.add_failure(session, snapshot)


async def build(writer: Writer) -> None:
    """Three customers over 200 days (the cutoff is 90 days before NOW).

    c1, refreshed throughout: `a` never changes; `b` fails (alert A1), is reported until
    T_OLD2 and missed since T_RECENT; `c` finishes at T_OLD2 (A1 resolves); `d` fails at
    T_RECENT (A2, open); `e` and `f` change status at T_OLD2 and T_RECENT; `x` is missed
    from T_OLD2 on; `y` is missed at T_OLD2 and back at T_RECENT. Its newest attempt failed.
    c2: two old successes (its second opens A3, never resolved), then only failures.
    c3: two old successes.
    """
    await refresh(writer, "c3", [row("k", 2, T_OLD)], T_OLD - timedelta(days=2))
    await refresh(writer, "c3", [row("k", 2, T_OLD)], T_OLD)
    await refresh(writer, "c2", [row("g", 2, T_OLD - timedelta(days=1))], T_OLD - timedelta(days=1))
    await refresh(writer, "c2", [row("g", 2, T_OLD - timedelta(days=1)), row("h", 3, T_OLD)], T_OLD)
    a = row("a", 2, T_OLD - timedelta(hours=1))
    b = row("b", 3, T_OLD)
    x = row("x", 2, T_OLD - timedelta(hours=2))
    y = row("y", 2, T_OLD - timedelta(hours=3))
    await refresh(writer, "c1", [a, b, row("e", 1, T_OLD), row("f", 1, T_OLD), x, y], T_OLD)
    c = row("c", 2, T_OLD2)
    await refresh(writer, "c1", [a, b, c, row("e", 2, T_OLD), row("f", 1, T_OLD)], T_OLD2)
    await fail(writer, "c2", T_OLD2)
    latest = [a, c, row("d", 3, T_RECENT), row("e", 2, T_OLD), row("f", 2, T_OLD), y]
    await refresh(writer, "c1", latest, T_RECENT)
    _, noted = await refresh(writer, "c1", latest, T_LAST)
    assert noted == (0, 0)  # `b` is marked once, not by every refresh that misses it
    await fail(writer, "c1", T_ERROR)
    # The receiver took every delivery, but the resolution of A1 failed and the opening of
    # A3 is still pending.
    async with writer.transaction() as session:
        d, e = WebhookDelivery, Event
        await session.execute(update(d).values(state="delivered", delivered_at=NOW))

        def of(type_: str, customer: str) -> Any:
            return select(e.id).where(e.type == type_, e.customer_id == customer).scalar_subquery()

        await session.execute(
            update(d).where(d.event_id == of("alert.resolved", "c1")).values(state="failed")
        )
        await session.execute(
            update(d).where(d.event_id == of("alert.opened", "c2")).values(state="pending")
        )


EXPECTED = {
    "jobs": 1,  # x
    "job_status_history": 3,  # x's, and the first rows of e and f
    "snapshots": 4,  # c1 at T_OLD and T_OLD2, c2 at T_OLD - 1 day, c3 at T_OLD - 2 days
    "webhook_deliveries": 2,  # A1's opening (delivered) and resolution (failed)
    "events": 13,  # all before the cutoff but A3's opening, which a pending delivery holds
    "alerts": 1,  # A1, resolved at T_OLD2
    "maintenance_windows": 0,
    "digest_days": 0,
}


async def table(engine: AsyncEngine, *columns: Any, order: Any = None) -> list[tuple[Any, ...]]:
    async with session_factory(engine)() as session:
        stmt = select(*columns)
        stmt = stmt.order_by(*(order if order is not None else columns))
        return [tuple(r) for r in (await session.execute(stmt)).all()]


async def sizes(engine: AsyncEngine) -> dict[str, int]:
    tables = {
        "jobs": Job,
        "job_status_history": JobStatusHistory,
        "snapshots": Snapshot,
        "webhook_deliveries": WebhookDelivery,
        "events": Event,
        "alerts": Alert,
        "maintenance_windows": MaintenanceWindow,
        "digest_days": DigestDay,
    }
    async with session_factory(engine)() as session:
        return {
            name: int(await session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in tables.items()
        }


async def test_a_purge_deletes_what_is_old_and_keeps_what_is_needed(
    engine: AsyncEngine, writer: Writer
) -> None:
    await build(writer)
    before = await sizes(engine)

    counts = await retention.purge(writer, NOW, DAYS)

    assert counts == EXPECTED
    after = await sizes(engine)
    assert after == {name: before[name] - EXPECTED[name] for name in before}
    # A job the upstream reports is kept however long it has been unchanged (a, and c2's
    # jobs, whose newest success is 200 days old); b is missed for 10 days only; y is back.
    assert await table(engine, Job.customer_id, Job.job_id, Job.unreported_since) == [
        ("c1", "a", None),
        ("c1", "b", T_RECENT),
        ("c1", "c", None),
        ("c1", "d", None),
        ("c1", "e", None),
        ("c1", "f", None),
        ("c1", "y", None),
        ("c2", "g", None),
        ("c2", "h", None),
        ("c3", "k", None),
    ]
    h = JobStatusHistory
    assert await table(
        engine,
        h.customer_id,
        h.job_id,
        h.status,
        h.changed_at,
        order=[h.customer_id, h.job_id, h.id],
    ) == [
        ("c1", "a", "finished", T_OLD),  # old, but each job keeps its newest row
        ("c1", "b", "failed", T_OLD),
        ("c1", "c", "finished", T_OLD2),
        ("c1", "d", "failed", T_RECENT),
        ("c1", "e", "finished", T_OLD2),
        ("c1", "f", "finished", T_RECENT),
        ("c1", "y", "finished", T_OLD),
        ("c2", "g", "finished", T_OLD - timedelta(days=1)),
        ("c2", "h", "failed", T_OLD),
        ("c3", "k", "finished", T_OLD - timedelta(days=2)),
    ]
    s = Snapshot
    assert await table(engine, s.customer_id, s.finished_at, s.outcome) == [
        ("c1", T_RECENT, "success"),
        ("c1", T_LAST, "success"),
        ("c1", T_ERROR, "error"),
        ("c2", T_OLD, "success"),  # the newest success, 200 days old
        ("c2", T_OLD2, "error"),  # the newest attempt
        ("c3", T_OLD, "success"),  # both
    ]
    e = Event
    assert await table(engine, e.at, e.customer_id, e.type, e.job_id, order=[e.id]) == [
        (T_OLD, "c2", "alert.opened", "h"),
        (T_RECENT, "c1", "job.created", "d"),
        (T_RECENT, "c1", "job.status_changed", "f"),
        (T_RECENT, "c1", "alert.opened", "d"),
    ]
    d = WebhookDelivery
    assert await table(engine, d.customer_id, d.state, d.created_at) == [
        ("c1", "delivered", T_RECENT),
        ("c2", "pending", T_OLD),
    ]
    a = Alert
    assert await table(engine, a.alert_key, a.state, a.opened_at) == [
        (f"c1:{KEY}", "open", T_RECENT),
        (f"c2:{KEY}", "open", T_OLD),  # open: kept however old
    ]
    async with session_factory(engine)() as session:
        c1 = await session.get(Customer, "c1")
        assert c1 is not None
        assert c1.job_count == 7


async def test_a_restart_after_a_purge_sees_every_customer_as_before(
    engine: AsyncEngine, writer: Writer
) -> None:
    await build(writer)
    sessions = session_factory(engine)
    async with sessions() as session:
        before = await repo.customer_states(session)

    await retention.purge(writer, NOW, DAYS)

    async with sessions() as session:
        after = await repo.customer_states(session)
        counted = select(Job.customer_id, func.count()).group_by(Job.customer_id)
        stored = {cid: n for cid, n in (await session.execute(counted)).all()}
    assert sorted(after) == sorted(before) == ["c1", "c2", "c3"]
    for cid, state in before.items():
        now = after[cid]
        assert now.last_success_at == state.last_success_at, cid
        assert now.last_attempt_at == state.last_attempt_at, cid
        assert now.last_error == state.last_error, cid
        assert now.job_count == stored[cid], cid
    assert after["c1"].last_error is not None
    assert after["c2"].last_success_at == T_OLD
    assert after["c2"].last_error is not None and after["c2"].last_attempt_at == T_OLD2
    assert (before["c1"].job_count, after["c1"].job_count) == (8, 7)


async def test_purging_with_nothing_to_purge_deletes_nothing(
    engine: AsyncEngine, writer: Writer
) -> None:
    await build(writer)
    assert await retention.purge(writer, NOW, DAYS) == EXPECTED
    left = await sizes(engine)
    assert await retention.purge(writer, NOW, DAYS) == dict.fromkeys(retention.TABLES, 0)
    assert await sizes(engine) == left
    # Nothing is older than 300 days; and 0 days keeps everything.
    assert await retention.purge(writer, NOW, 300) == dict.fromkeys(retention.TABLES, 0)
    assert await retention.purge(writer, NOW + timedelta(days=999), 0) == dict.fromkeys(
        retention.TABLES, 0
    )
    assert await sizes(engine) == left


async def test_small_batches_delete_the_same_over_many_short_transactions(
    engine: AsyncEngine, writer: Writer
) -> None:
    await build(writer)
    results: list[tuple[Any, ...]] = []
    run_plan = writer.run_plan

    async def counted(make: Any) -> Any:
        result = await run_plan(make)
        results.append(result)
        return result

    writer.run_plan = counted  # type: ignore[method-assign]

    assert await retention.purge(writer, NOW, DAYS, batch=2) == EXPECTED

    # Each transaction deleted at most 2 rows of the table it purges, and looked at no more.
    assert all(r[0] <= 2 for r in results), results
    assert len(results) >= sum(EXPECTED.values()) // 2
    with pytest.raises(ValueError, match="batch"):
        await retention.purge(writer, NOW, DAYS, batch=0)


async def test_maintenance_windows_and_digest_claims_older_than_retention_go(
    engine: AsyncEngine, writer: Writer
) -> None:
    windows = [  # (ends, kept): ended before the cutoff, just after it, still to come
        (NOW - timedelta(days=DAYS + 5), False),
        (NOW - timedelta(days=DAYS + 1), False),
        (NOW - timedelta(days=DAYS - 1), True),
        (NOW + timedelta(days=2), True),
    ]
    days = [("2026-01-02", NOW - timedelta(days=DAYS + 60)), ("2026-11-28", T_LAST)]
    async with writer.transaction() as session:
        for ends, _ in windows:
            await maintenance.create(
                session, None, ends - timedelta(hours=4), ends, "patching", ends - timedelta(days=1)
            )
        for day, claimed in days:
            session.add(DigestDay(day=day, holder="h:1:x", claimed_at=claimed))

    counts = await retention.purge(writer, NOW, DAYS, batch=1)

    assert counts["maintenance_windows"] == 2
    assert counts["digest_days"] == 1
    left = await table(engine, MaintenanceWindow.ends_at, order=(MaintenanceWindow.id,))
    assert [w[0].replace(tzinfo=UTC) for w in left] == [e for e, kept in windows if kept]
    assert await table(engine, DigestDay.day) == [("2026-11-28",)]


async def test_event_ids_are_never_reused_after_the_newest_events_are_purged(
    engine: AsyncEngine, writer: Writer
) -> None:
    plain = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0))
    await refresh(writer, "c1", [row(f"j{n}", 2, T_OLD) for n in range(5)], T_OLD, plain)
    newest = max(i for (i,) in await table(engine, Event.id))

    counts = await retention.purge(writer, NOW, DAYS)

    assert counts["events"] == 5
    assert await table(engine, Event.id) == []
    await refresh(writer, "c1", [row("new", 3, NOW)], NOW, plain)
    ids = [i for (i,) in await table(engine, Event.id)]
    assert len(ids) == 2  # job.created and alert.opened
    assert min(ids) > newest


async def test_a_job_missed_by_a_refresh_is_marked_once_and_unmarked_when_seen_again(
    engine: AsyncEngine, writer: Writer
) -> None:
    rows = [row("a", 2, T_OLD), row("b", 2, T_OLD)]
    _, noted = await refresh(writer, "c1", rows, T_OLD)
    assert noted == (0, 0)
    _, noted = await refresh(writer, "c1", rows[:1], T_OLD2)
    assert noted == (1, 0)
    _, noted = await refresh(writer, "c1", rows[:1], T_RECENT)
    assert noted == (0, 0)
    j = Job
    assert await table(engine, j.job_id, j.unreported_since, j.last_seen_at) == [
        ("a", None, T_OLD),
        ("b", T_OLD2, T_OLD),
    ]
    # Back, unchanged: rewritten (its fetched_at moves) and unmarked; no event tells it.
    result, noted = await refresh(writer, "c1", rows, T_LAST)
    assert noted == (0, 1)
    assert (result.written, result.told.events) == (1, 0)
    assert await table(engine, j.job_id, j.unreported_since, j.last_seen_at) == [
        ("a", None, T_OLD),
        ("b", None, T_LAST),
    ]
    _, noted = await refresh(writer, "c1", rows, NOW)
    assert noted == (0, 0)
    assert (await retention.purge(writer, NOW, DAYS))["jobs"] == 0


async def test_a_job_purged_while_a_walk_saw_it_again_comes_back_as_new(
    engine: AsyncEngine, writer: Writer
) -> None:
    """The purge moves the customer's data version: a walk that read the store before it
    takes its changes again, so the job comes back whole (created, with its history)."""
    rows = [row("a", 2, T_OLD), row("b", 2, T_OLD)]
    await refresh(writer, "c1", rows, T_OLD)
    await refresh(writer, "c1", rows[:1], T_OLD2)
    async with writer.sessions() as session:
        walk = await open_ingest(session, "c1")
    walk.add_page(rows)

    assert (await retention.purge(writer, NOW, DAYS))["jobs"] == 1

    snapshot = SnapshotRecord("c1", NOW, NOW, "success")
    result = await walk.commit(writer, snapshot, CONFIG)
    assert [(c.job_id, c.created) for c in result.changes] == [("b", True)]
    assert result.job_count == 2
    h = JobStatusHistory
    assert await table(engine, h.job_id, h.changed_at, order=[h.id]) == [
        ("a", T_OLD),
        ("b", NOW),
    ]


async def test_run_retention_purges_logs_and_survives_a_failure(
    engine: AsyncEngine, writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    await build(writer)
    run_plan = writer.run_plan
    calls = 0

    async def flaky(make: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the database went away")
        return await run_plan(make)

    writer.run_plan = flaky  # type: ignore[method-assign]
    heard: list[list[str]] = []
    purged = asyncio.Event()

    async def on_jobs_purged(customer_ids: Any) -> None:
        heard.append(list(customer_ids))
        purged.set()

    caplog.set_level(logging.INFO, logger="app.store.retention")
    task = asyncio.create_task(
        retention.run_retention(
            writer, DAYS, lambda: NOW, 0.0, delay=0.0, on_jobs_purged=on_jobs_purged
        )
    )
    try:
        await asyncio.wait_for(purged.wait(), 30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert heard == [["c1"]]
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[0] == (logging.ERROR, "the retention purge failed")
    assert messages[1][0] == logging.INFO
    assert messages[1][1].startswith("retention: purged what was older than 90 days: 1 jobs, ")
    assert (await sizes(engine))["jobs"] == 10


# -- the feed's purge horizon: a cursor below it is told, never skipped ----------------------


async def test_a_purge_notes_how_far_it_went_and_the_feed_refuses_cursors_below(
    engine: AsyncEngine, writer: Writer
) -> None:
    await build(writer)
    ids_before = [i for (i,) in await table(engine, Event.id)]
    await retention.purge(writer, NOW, DAYS, batch=3)  # over many transactions

    kept = [i for (i,) in await table(engine, Event.id)]
    horizon = max(set(ids_before) - set(kept))
    async with session_factory(engine)() as session:
        assert await session.scalar(select(FeedHorizon.purged_upto)) == horizon
        pinned = min(kept)  # A3's opening, held by its pending delivery
        assert pinned < horizon
        for behind in (0, pinned - 1, pinned, horizon - 1):
            with pytest.raises(events.CursorExpired) as caught:
                await events.read_feed(session, after=behind, limit=100)
            assert (caught.value.after, caught.value.oldest) == (behind, horizon)
        # From the horizon on, every event is there; a client starting out begins there.
        page = await events.read_feed(session, after=horizon, limit=100)
        assert [r.id for r in page.rows] == [i for i in kept if i > horizon]
        assert await events.read_feed(session, after=None, limit=100) == page
        # Pages of one: the cursor moves through kept events only, never below the horizon.
        fresh = await events.read_feed(session, after=None, limit=1)
        assert fresh.rows[0].id > horizon and fresh.cursor == fresh.rows[0].id


async def test_the_horizon_only_grows_and_outlives_the_events(
    engine: AsyncEngine, writer: Writer
) -> None:
    plain = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0))
    await refresh(writer, "c1", [row(f"j{n}", 2, T_OLD) for n in range(3)], T_OLD, plain)
    await refresh(writer, "c1", [row("late", 2, T_RECENT)], T_RECENT, plain)
    await retention.purge(writer, NOW, DAYS)
    async with session_factory(engine)() as session:
        assert await session.scalar(select(FeedHorizon.purged_upto)) == 3
    # Everything goes, later: the horizon is the last id, with no event left to show it.
    await retention.purge(writer, NOW + timedelta(days=DAYS), DAYS)
    assert await table(engine, Event.id) == []
    async with session_factory(engine)() as session:
        assert await session.scalar(select(FeedHorizon.purged_upto)) == 4
        with pytest.raises(events.CursorExpired):
            await events.read_feed(session, after=3, limit=10)
        assert await events.read_feed(session, after=4, limit=10) == events.FeedPage([], 4)
        assert await events.read_feed(session, after=None, limit=10) == events.FeedPage([], 4)


class PurgeMidRead:
    """A session on which a purge commits right after the feed's first statement: between
    the read of the newest id and the read of the events."""

    def __init__(self, session: Any, purge: Callable[[], Awaitable[Any]]) -> None:
        self.session = session
        self.purge: Callable[[], Awaitable[Any]] | None = purge

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self.session.execute(*args, **kwargs)
        if self.purge is not None:
            purge, self.purge = self.purge, None
            rows = result.all()
            await purge()
            return _Rows(rows)
        return result

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return await self.session.scalar(*args, **kwargs)


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def one(self) -> Any:
        [only] = self.rows
        return only


@pytest.mark.parametrize("after", [0, 2])
async def test_a_purge_committing_while_the_feed_reads_is_not_missed(
    engine: AsyncEngine, writer: Writer, after: int
) -> None:
    plain = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0))
    await refresh(writer, "c1", [row(f"j{n}", 2, T_OLD) for n in range(3)], T_OLD, plain)
    await refresh(writer, "c1", [row("late", 2, T_RECENT)], T_RECENT, plain)
    async with session_factory(engine)() as session:
        racing = PurgeMidRead(session, lambda: retention.purge(writer, NOW, DAYS))
        with pytest.raises(events.CursorExpired) as caught:
            await events.read_feed(cast(AsyncSession, racing), after=after, limit=10)
        assert caught.value.oldest == 3
    async with session_factory(engine)() as session:
        racing = PurgeMidRead(session, lambda: retention.purge(writer, NOW, DAYS))
        page = await events.read_feed(cast(AsyncSession, racing), after=None, limit=10)
        assert [r.id for r in page.rows] == [4]
