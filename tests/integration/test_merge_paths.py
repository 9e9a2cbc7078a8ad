"""The refresh's faster write paths keep what the store holds and tells the same, on SQLite
and on PostgreSQL (issue 15):

- a page's rows hashed and kept as the bytes the upstream sent (`add_page(rows, received)`)
  store the same jobs as the rows alone, and the same bytes again write nothing;
- the merge gives the walk's lease back in its own transaction;
- merges that wait for the SQLite writer together commit together, and one customer's failed
  merge loses none of the others' (also when the shared transaction fails as a whole);
- the lease keeper never stops a walk that is committing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.alert_rules import Rules
from app.config import DEFAULT_ALERT_STATUSES
from app.refresh.leasing import Leasing
from app.store import leases, plans
from app.store.db import session_factory
from app.store.merge import Ingest, IngestResult, open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.tables import Event, Job, RefreshLease
from app.store.telling import FeedConfig
from app.store.writer import Writer

NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = FeedConfig(Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=0))
HOLDER = "test-host:1:aaaa"


def row(job_id: str, status: int = 3, minutes_ago: int = 30) -> dict[str, Any]:
    start = NOW - timedelta(hours=2)
    modified = NOW - timedelta(minutes=minutes_ago)
    return {
        "jobType": 7,
        "jobModule": 304,
        "status": status,
        "jobId": job_id,
        "name": f"Backup {job_id} «ü»",
        "totalCount": "10",
        "failedCount": "1" if status == 3 else "0",
        "successfulCount": "9",
        "skippedCount": "0",
        "warningCount": "N/A",
        "backupSize": "0.84 GB",
        "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endTime": modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jobDuration": "17m39s",
        "lastModifyTime": modified.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def as_sent(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Rows as the page decoder gives them: each decoded from its own bytes."""
    received = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() for r in rows]
    return [json.loads(b) for b in received], received


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


async def walk(
    writer: Writer,
    cid: str,
    rows: list[dict[str, Any]],
    received: list[bytes] | None = None,
    lease: tuple[str, int] | None = None,
) -> Ingest:
    async with writer.sessions() as session:
        ingest = await open_ingest(
            session, cid, started=plans.to_driver(writer.dialect, NOW), lease=lease
        )
    ingest.add_page(rows, received)
    return ingest


async def commit(writer: Writer, ingest: Ingest) -> IngestResult:
    at = datetime.now(UTC)
    snapshot = SnapshotRecord(ingest.customer_id, at, at, "success", pages=1)
    return await ingest.commit(writer, snapshot, CONFIG)


async def take(writer: Writer, cid: str, holder: str = HOLDER) -> leases.Lease:
    return await writer.run_plan(lambda d: leases.take(d, cid, holder, 120.0))


async def jobs_of(engine: AsyncEngine, cid: str) -> list[dict[str, Any]]:
    async with session_factory(engine)() as session:
        rows = await session.execute(select(Job).where(Job.customer_id == cid).order_by(Job.job_id))
        return [
            {c: getattr(j, c) for c in Job.__table__.columns.keys()}  # noqa: SIM118
            for j in rows.scalars().all()
        ]


async def events_of(engine: AsyncEngine, cid: str) -> list[str]:
    async with session_factory(engine)() as session:
        rows = await session.execute(
            select(Event.type).where(Event.customer_id == cid).order_by(Event.id)
        )
        return list(rows.scalars().all())


async def lease_rows(engine: AsyncEngine) -> list[str]:
    async with session_factory(engine)() as session:
        rows = await session.execute(select(RefreshLease.customer_id))
        return sorted(rows.scalars().all())


async def test_rows_kept_as_sent_store_the_same_jobs_and_the_same_bytes_write_nothing(
    engine: AsyncEngine, writer: Writer
) -> None:
    rows, received = as_sent([row("j1"), row("j2", status=2), {"jobId": "N/A"}])
    plain = await commit(writer, await walk(writer, "plain", rows))
    sent = await commit(writer, await walk(writer, "sent", rows, received))
    assert (plain.written, plain.rows_skipped) == (sent.written, sent.rows_skipped) == (2, 1)
    different = {"customer_id", "raw", "content_hash", "first_seen_at", "last_seen_at"}
    for a, b in zip(await jobs_of(engine, "plain"), await jobs_of(engine, "sent"), strict=True):
        assert {k: v for k, v in a.items() if k not in different} == {
            k: v for k, v in b.items() if k not in different
        }
        assert a["raw"] == b["raw"]  # the same row, as JSON
    assert [j["raw"] for j in await jobs_of(engine, "sent")] == [
        json.loads(b) for b in received[:2]
    ]
    assert await events_of(engine, "plain") == await events_of(engine, "sent")

    again = await commit(writer, await walk(writer, "sent", rows, received))
    assert again.written == 0
    changed_rows, changed = as_sent([row("j1", status=2, minutes_ago=10), row("j2", status=2)])
    moved = await commit(writer, await walk(writer, "sent", changed_rows, changed))
    assert moved.written == 1
    assert [c.status for c in moved.changes] == ["finished"]


async def test_the_merge_gives_the_walks_lease_back(engine: AsyncEngine, writer: Writer) -> None:
    lease = await take(writer, "c1")
    assert lease.ours and lease.stored_at is None
    ingest = await walk(writer, "c1", [row("j1")], lease=(HOLDER, lease.token))
    await commit(writer, ingest)
    assert await lease_rows(engine) == []
    again = await take(writer, "c1")
    assert again.ours and again.stored_at is not None  # the take saw the snapshot stored


async def test_a_merge_that_lost_its_lease_stores_nothing_and_keeps_the_lease(
    engine: AsyncEngine, writer: Writer
) -> None:
    lease = await take(writer, "c1")
    ingest = await walk(writer, "c1", [row("j1")], lease=(HOLDER, lease.token))
    await writer.run_plan(lambda d: leases.give_back(d, "c1", HOLDER, lease.token))
    other = await take(writer, "c1", holder="other-host:2:bbbb")
    assert other.ours
    with pytest.raises(leases.LeaseLost):
        await commit(writer, ingest)
    assert await jobs_of(engine, "c1") == []
    assert await lease_rows(engine) == ["c1"]


async def walks_with_one_lost(writer: Writer) -> list[Ingest]:
    """Walks of c1, c2 and c3, each holding its lease; c2's lease was then taken over."""
    ingests = []
    for cid in ("c1", "c2", "c3"):
        lease = await take(writer, cid)
        rows, received = as_sent([row(f"{cid}-a"), row(f"{cid}-b", status=2)])
        ingests.append(await walk(writer, cid, rows, received, lease=(HOLDER, lease.token)))
    await writer.run_plan(lambda d: leases.give_back(d, "c2", HOLDER, ingests[1].lease[1]))  # type: ignore[index]
    assert (await take(writer, "c2", holder="other-host:2:bbbb")).ours
    return ingests


async def commit_together(
    writer: Writer, ingests: list[Ingest], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], list[int]]:
    """Commit the walks while the writer is busy, so that they wait for it together; gives
    their outcomes and the sizes of the groups the SQLite writer committed."""
    groups: list[int] = []
    original: Callable[..., Any] = Writer._commit_group

    def recording(self: Writer, group: list[Any]) -> Any:
        groups.append(len(group))
        return original(self, group)

    monkeypatch.setattr(Writer, "_commit_group", recording)
    busy = threading.Event()
    blocker = None
    if writer.direct:
        blocker = asyncio.create_task(writer.run_sync(lambda _conn: busy.wait(30)))
        await asyncio.sleep(0)
    pending = [asyncio.create_task(commit(writer, i)) for i in ingests]
    for _ in range(10):  # each walk's commit reaches the writer's queue
        await asyncio.sleep(0)
    if writer.direct:
        assert len(writer._waiting) == len(ingests)
    busy.set()
    if blocker is not None:
        await blocker
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    return outcomes, groups


async def test_merges_waiting_together_commit_together_and_a_lost_lease_loses_no_other(
    engine: AsyncEngine, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingests = await walks_with_one_lost(writer)
    outcomes, groups = await commit_together(writer, ingests, monkeypatch)
    if writer.direct:
        assert groups == [3]
    one, two, three = outcomes
    assert isinstance(two, leases.LeaseLost)
    for cid, outcome in (("c1", one), ("c3", three)):
        assert isinstance(outcome, IngestResult)
        assert outcome.written == 2
        assert len(await jobs_of(engine, cid)) == 2
        assert (await events_of(engine, cid)).count("job.created") == 2
    assert await events_of(engine, "c1") == await events_of(engine, "c3")
    assert await jobs_of(engine, "c2") == []
    assert await events_of(engine, "c2") == []
    assert await lease_rows(engine) == ["c2"]  # the others' went back in their merges


async def test_a_group_whose_transaction_fails_commits_each_merge_alone(
    engine: AsyncEngine, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not writer.direct:
        pytest.skip("group commit is the SQLite writer's")
    original = Writer._transaction
    failed: list[bool] = []

    def failing_once(self: Writer, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if failed or getattr(fn, "__name__", "") != "all_of":
            return original(self, fn)
        failed.append(True)

        def then_fail(conn: sqlite3.Connection) -> Any:
            fn(conn)  # every merge ran (and changed its walk's state) ...
            raise sqlite3.OperationalError("simulated: the group's transaction failed")

        return original(self, then_fail)

    monkeypatch.setattr(Writer, "_transaction", failing_once)
    ingests = await walks_with_one_lost(writer)
    outcomes, groups = await commit_together(writer, ingests, monkeypatch)
    assert failed and groups == [3]
    one, two, three = outcomes
    assert isinstance(two, leases.LeaseLost)
    for cid, outcome in (("c1", one), ("c3", three)):
        assert isinstance(outcome, IngestResult)
        assert (outcome.written, outcome.job_count, len(outcome.changes)) == (2, 2, 2)
        assert len(await jobs_of(engine, cid)) == 2
        # ... and each, run again alone, told its changes once.
        assert (await events_of(engine, cid)).count("job.created") == 2
    assert await events_of(engine, "c1") == await events_of(engine, "c3")
    assert await jobs_of(engine, "c2") == []


async def test_the_keeper_never_stops_a_walk_that_is_committing(writer: Writer) -> None:
    leasing = Leasing(writer, HOLDER, seconds=0.03)
    gone = leases.Lease(True, HOLDER, 1, None, 0.03)  # no such lease: a renewal finds none
    walk_task = asyncio.create_task(asyncio.Event().wait())
    try:
        await asyncio.wait_for(leasing.keep("c1", gone, walk_task, lambda: True), 30)
        await asyncio.sleep(0)
        assert not walk_task.done() and walk_task not in leasing.lost
        await asyncio.wait_for(leasing.keep("c1", gone, walk_task), 30)
        with pytest.raises(asyncio.CancelledError):
            await walk_task
        assert walk_task in leasing.lost
    finally:
        walk_task.cancel()
