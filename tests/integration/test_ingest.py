"""The streaming write path: pages in, changed rows only, one merge at the end, one writer.

Every test runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import merge, repo, stage
from app.store.db import session_factory
from app.store.merge import open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.tables import Job, JobStage, JobStatusHistory
from app.store.writer import Writer

T1 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
T2 = T1 + timedelta(minutes=5)
T3 = T1 + timedelta(minutes=10)


def row(job_id: str, status: int = 2, **fields: Any) -> dict[str, Any]:
    """An upstream row as the batch endpoint sends it."""
    return {
        "jobType": 7,
        "jobModule": 304,
        "status": status,
        "jobId": job_id,
        "name": "N/A",
        "totalCount": "2323",
        "failedCount": "0",
        "successfulCount": "2323",
        "skippedCount": "0",
        "warningCount": "0",
        "backupSize": "0.84 GB",
        "startTime": "2025-09-11T03:21:16Z",
        "endTime": "2025-09-11T03:38:56Z",
        "jobDuration": "17m39s",
        "lastModifyTime": "2025-09-11T03:38:57Z",
        **fields,
    }


def success(customer_id: str, at: datetime) -> SnapshotRecord:
    return SnapshotRecord(
        customer_id=customer_id,
        started_at=at - timedelta(seconds=5),
        finished_at=at,
        outcome="success",
    )


def writer_for(engine: AsyncEngine, kind: str = "direct") -> Writer:
    """The writer the service uses (`direct`: its own SQLite connection, on SQLite), or one
    that writes through SQLAlchemy sessions only."""
    if kind == "direct":
        return Writer.for_engine(engine)
    return Writer(session_factory(engine), engine.dialect.name)


async def refresh(
    engine: AsyncEngine,
    customer_id: str,
    pages: list[list[dict[str, Any]]],
    at: datetime,
    kind: str = "direct",
) -> merge.IngestResult:
    """One refresh of `customer_id` through the same steps the refresher takes."""
    sessions = session_factory(engine)
    writer = writer_for(engine, kind)
    try:
        async with sessions() as session:
            job = await open_ingest(session, customer_id)
        for page in pages:
            job.add_page(page)
            if job.must_spill:
                await job.spill(writer, at)
        return await job.commit(writer, success(customer_id, at))
    finally:
        writer.close()


async def jobs_of(engine: AsyncEngine, customer_id: str) -> dict[str, repo.JobRow]:
    async with session_factory(engine)() as session:
        rows = await repo.query_jobs(
            session, repo.JobQuery(customer_ids=[customer_id], limit=10_000)
        )
    return {r.job_id: r for r in rows}


async def count(engine: AsyncEngine, model: type[object]) -> int:
    async with session_factory(engine)() as session:
        return (await session.execute(select(func.count()).select_from(model))).scalar_one()


@pytest.fixture(params=["memory", "spilled", "memory-via-sessions"])
def spill(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with everything in memory (merged by the service's writer, and by
    SQLAlchemy sessions alone), and with a tiny memory that spills."""
    if request.param == "spilled":
        monkeypatch.setattr(merge, "MEMORY_ROWS", 7)
    if request.param == "memory-via-sessions":
        monkeypatch.setattr(Writer, "direct", property(lambda self: False))
    return str(request.param)


async def test_pages_are_merged_once_with_history(engine: AsyncEngine, spill: str) -> None:
    pages = [[row(f"j{p}-{i}", status=3 if i == 0 else 2) for i in range(10)] for p in range(3)]
    result = await refresh(engine, "c1", pages, T1)
    assert (result.jobs, result.written, result.job_count) == (30, 30, 30)
    assert len(result.changes) == 30 and all(c.created for c in result.changes)
    stored = await jobs_of(engine, "c1")
    assert len(stored) == 30
    assert stored["j1-0"].status == "failed" and stored["j1-0"].duration_seconds == 1059
    assert stored["j2-5"].backup_size_bytes == round(0.84 * 1024**3)
    assert stored["j2-5"].last_seen_at == T1
    assert await count(engine, JobStatusHistory) == 30
    assert await count(engine, JobStage) == 0, "nothing stays staged after the merge"


async def test_an_unchanged_refresh_rewrites_nothing(engine: AsyncEngine, spill: str) -> None:
    pages = [[row(f"j{i}") for i in range(20)]]
    await refresh(engine, "c1", pages, T1)
    again = await refresh(engine, "c1", pages, T2)
    assert (again.jobs, again.written, again.changes) == (20, 0, [])
    stored = await jobs_of(engine, "c1")
    # Not rewritten: the job was fetched as it is at T1.
    assert {r.last_seen_at for r in stored.values()} == {T1}
    assert await count(engine, JobStatusHistory) == 20


async def test_only_changed_rows_are_written(engine: AsyncEngine, spill: str) -> None:
    await refresh(engine, "c1", [[row(f"j{i}") for i in range(20)]], T1)
    changed = [row(f"j{i}", status=3 if i in (3, 11) else 2) for i in range(20)]
    changed[5]["totalCount"] = "9999"  # content, not status
    changed.append(row("new"))
    result = await refresh(engine, "c1", [changed[:10], changed[10:]], T2)
    assert result.written == 4
    assert result.job_count == 21
    assert sorted((c.job_id, c.previous, c.current, c.created) for c in result.changes) == [
        ("j11", 2, 3, False),
        ("j3", 2, 3, False),
        ("new", None, 2, True),
    ]
    stored = await jobs_of(engine, "c1")
    assert stored["j5"].total_count == 9999 and stored["j5"].last_seen_at == T2
    assert stored["j3"].status == "failed" and stored["j3"].first_seen_at == T1
    assert stored["j4"].last_seen_at == T1
    async with session_factory(engine)() as session:
        history = await repo.job_history(session, "c1", "j3")
    assert [(h.status, h.previous_status) for h in history] == [
        ("finished", None),
        ("failed", "finished"),
    ]


async def test_a_job_on_two_pages_counts_once_and_the_last_copy_wins(
    engine: AsyncEngine, spill: str
) -> None:
    first = [row(f"j{i}") for i in range(10)]
    second = [row("j2", status=3), *(row(f"k{i}") for i in range(5))]
    result = await refresh(engine, "c1", [first, second], T1)
    assert result.jobs == 15
    stored = await jobs_of(engine, "c1")
    assert len(stored) == 15 and stored["j2"].status == "failed"


async def test_a_failed_walk_leaves_nothing_behind(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge, "MEMORY_ROWS", 5)
    await refresh(engine, "c1", [[row(f"j{i}") for i in range(10)]], T1)
    sessions = session_factory(engine)
    writer = Writer(sessions, engine.dialect.name)
    async with sessions() as session:
        job = await open_ingest(session, "c1")
    job.add_page([row(f"j{i}", status=3) for i in range(10)])
    await job.spill(writer, T2)
    assert await count(engine, JobStage) == 10
    await job.discard(writer)  # the walk failed on its next page
    assert await count(engine, JobStage) == 0
    assert {r.status for r in (await jobs_of(engine, "c1")).values()} == {"finished"}


async def test_orphans_of_a_dead_process_are_purged(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge, "MEMORY_ROWS", 1)
    sessions = session_factory(engine)
    writer = Writer(sessions, engine.dialect.name)
    async with sessions() as session:
        job = await open_ingest(session, "c1")
    job.add_page([row("j1")])
    await job.spill(writer, T1)
    assert await stage.purge_orphan_stage(writer, T1 + timedelta(minutes=5)) == 0
    assert await stage.purge_orphan_stage(writer, T1 + timedelta(hours=2)) == 1
    assert await count(engine, JobStage) == 0


ODD = [
    "\ud800",  # a lone surrogate, as json.loads gives it from "\\ud800"
    "nul\x00byte",
    "emoji \U0001f4be backup",
    "\u0645\u0631\u062d\u0628\u0627",  # Arabic, right to left
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # a right-to-left mark and Hebrew
]


async def test_odd_text_is_stored_and_served(engine: AsyncEngine) -> None:
    rows = [row(f"odd{i}", name=text) for i, text in enumerate(ODD)]
    rows.append(json.loads(json.dumps(row("huge")).replace('"2323"', "1e400", 1)))
    rows.append(json.loads('{"jobId": "esc", "name": "a\\ud800b", "status": 3}'))
    result = await refresh(engine, "c1", [rows], T1)
    assert result.jobs == len(ODD) + 2
    stored = await jobs_of(engine, "c1")
    assert stored["odd0"].name == "\ufffd"
    assert stored["odd1"].name == "nulbyte"
    assert stored["odd2"].name == ODD[2] and stored["odd3"].name == ODD[3]
    assert stored["odd4"].name == ODD[4]
    assert stored["huge"].total_count is None
    assert stored["esc"].name == "a\ufffdb" and stored["esc"].status == "failed"
    # The same odd rows again change nothing: their hashes are stable.
    assert (await refresh(engine, "c1", [rows], T2)).written == 0


async def test_one_writer_loses_no_customer_when_a_hundred_write_at_once(
    engine: AsyncEngine,
) -> None:
    """On SQLite every refresh's transaction goes through one writer; none may fail on a
    lock, however many customers finish at once."""
    sessions = session_factory(engine)
    writer = writer_for(engine)

    async def one(n: int) -> merge.IngestResult:
        async with sessions() as session:
            job = await open_ingest(session, f"c{n:03}")
        job.add_page([row(f"j{i}", status=(i + n) % 4) for i in range(50)])
        await asyncio.sleep(0)
        return await job.commit(writer, success(f"c{n:03}", T3))

    try:
        results = await asyncio.gather(*(one(n) for n in range(100)))
    finally:
        writer.close()
    assert [r.job_count for r in results] == [50] * 100
    assert await count(engine, Job) == 5000
