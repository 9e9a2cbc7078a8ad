"""Writes and states: upserts, history, snapshots, customer states, counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.normalize import NormalizedJob
from app.store import repo
from app.store.db import session_factory
from app.store.repo import SnapshotRecord, StatusChange
from app.store.tables import Customer, Job, JobStatusHistory, Snapshot

MakeJob = Callable[..., NormalizedJob]
T0 = datetime(2025, 9, 11, 3, 0, 0, tzinfo=UTC)  # make_job's default start time


def success(customer_id: str, at: datetime, **fields: object) -> SnapshotRecord:
    return SnapshotRecord(
        customer_id=customer_id,
        started_at=at - timedelta(seconds=5),
        finished_at=at,
        outcome="success",
        **fields,  # type: ignore[arg-type]
    )


def failure(customer_id: str, at: datetime, **fields: object) -> SnapshotRecord:
    values: dict[str, object] = {
        "error_kind": "upstream_error",
        "error_message": "503 Service Unavailable",
        "upstream_status": 503,
        "request_id": "req-1",
        **fields,
    }
    return SnapshotRecord(
        customer_id=customer_id,
        started_at=at - timedelta(seconds=5),
        finished_at=at,
        outcome="error",
        **values,  # type: ignore[arg-type]
    )


async def count(session: AsyncSession, model: type[object]) -> int:
    return (await session.execute(select(func.count()).select_from(model))).scalar_one()


T1 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
T2 = T1 + timedelta(minutes=5)
T3 = T1 + timedelta(minutes=10)


async def test_record_success_creates_then_updates_jobs(
    session: AsyncSession, make_job: MakeJob
) -> None:
    first = [make_job("c1", "j1", status_code=1), make_job("c1", "j2", name=None)]
    changes = await repo.record_success(session, success("c1", T1, pages=1, jobs_seen=2), first)
    assert {(c.job_id, c.created, c.previous, c.current) for c in changes} == {
        ("j1", True, None, 1),
        ("j2", True, None, 2),
    }

    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.id == "c1:j1"
    assert (job.status_code, job.status, job.job_type, job.module) == (
        1,
        "running",
        "microsoft_365",
        "microsoft_365_groups",
    )
    assert job.first_seen_at == job.last_seen_at == job.fetched_at == T1
    assert job.start_time == T0
    assert job.raw == {"jobId": "j1", "status": 1}

    updated = make_job(
        "c1",
        "j1",
        status_code=3,
        name="Renamed",
        failed_count=4,
        backup_size_bytes=5 * 1024**4,
        end_time=None,
        duration_seconds=None,
        raw={"jobId": "j1", "status": 3, "extra": ["x", 1]},
    )
    changes = await repo.record_success(session, success("c1", T2), [updated])
    assert changes == [StatusChange("c1", "j1", 1, 3, T2, created=False)]

    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert (job.name, job.status, job.failed_count) == ("Renamed", "failed", 4)
    assert job.backup_size_bytes == 5 * 1024**4
    assert job.end_time is None
    assert job.duration_seconds is None
    assert job.first_seen_at == T1
    assert job.last_seen_at == T2
    assert job.raw == {"jobId": "j1", "status": 3, "extra": ["x", 1]}

    # A job the newest snapshot does not mention keeps what it had.
    untouched = await repo.get_job(session, "c1", "j2")
    assert untouched is not None
    assert untouched.last_seen_at == T1
    assert untouched.name is None
    assert await count(session, Job) == 2
    assert await count(session, Snapshot) == 2


async def test_datetimes_come_back_aware_utc(session: AsyncSession, make_job: MakeJob) -> None:
    plus_two = timezone(timedelta(hours=2))
    start = datetime(2025, 1, 1, 12, 0, 0, tzinfo=plus_two)
    await repo.record_success(
        session, success("c1", T1.astimezone(plus_two)), [make_job(start_time=start)]
    )
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    for value in (job.start_time, job.end_time, job.last_modified, job.first_seen_at):
        assert value is not None
        assert value.utcoffset() == timedelta(0)
    assert job.start_time == start
    assert job.start_time.hour == 10
    states = await repo.customer_states(session)
    assert states["c1"].last_success_at == T1
    assert states["c1"].last_success_at is not None
    assert states["c1"].last_success_at.tzinfo is not None


async def test_history_records_first_sighting_and_changes_only(
    session: AsyncSession, make_job: MakeJob
) -> None:
    await repo.record_success(session, success("c1", T1), [make_job(status_code=1)])
    same = await repo.record_success(
        session, success("c1", T2), [make_job(status_code=1, total_count=99)]
    )
    assert same == []
    changed = await repo.record_success(session, success("c1", T3), [make_job(status_code=4)])
    assert [(c.previous, c.current, c.created, c.at) for c in changed] == [(1, 4, False, T3)]
    assert changed[0].status == "finished_with_exception"
    assert changed[0].previous_status == "running"

    history = await repo.job_history(session, "c1", "j1")
    assert [(h.previous_status_code, h.status_code, h.status, h.changed_at) for h in history] == [
        (None, 1, "running", T1),
        (1, 4, "finished_with_exception", T3),
    ]
    assert history[0].previous_status is None
    assert history[1].previous_status == "running"
    assert await repo.job_history(session, "c1", "nope") == []


async def test_status_to_and_from_none_is_a_change(
    session: AsyncSession, make_job: MakeJob
) -> None:
    await repo.record_success(session, success("c1", T1), [make_job(status_code=None)])
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.status == "unknown"
    assert job.status_code is None
    assert await repo.record_success(session, success("c1", T2), [make_job(status_code=None)]) == []
    changes = await repo.record_success(session, success("c1", T3), [make_job(status_code=999)])
    assert [(c.previous, c.current) for c in changes] == [(None, 999)]
    assert not changes[0].created
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert (job.status, job.status_code) == ("unknown", 999)


async def test_duplicate_job_ids_in_one_snapshot_count_once(
    session: AsyncSession, make_job: MakeJob
) -> None:
    jobs = [make_job(status_code=1), make_job(status_code=2, name="last wins")]
    changes = await repo.record_success(session, success("c1", T1), jobs)
    assert len(changes) == 1
    assert changes[0].current == 2
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.name == "last wins"


async def test_jobs_of_customers_are_separate(session: AsyncSession, make_job: MakeJob) -> None:
    await repo.record_success(session, success("c1", T1), [make_job("c1", "j1", status_code=1)])
    changes = await repo.record_success(
        session, success("c2", T1), [make_job("c2", "j1", status_code=3)]
    )
    assert changes[0].created
    one, two = await repo.get_job(session, "c1", "j1"), await repo.get_job(session, "c2", "j1")
    assert one is not None
    assert two is not None
    assert (one.status_code, two.status_code) == (1, 3)


async def test_record_success_refuses_a_job_of_another_customer(
    session: AsyncSession, make_job: MakeJob
) -> None:
    with pytest.raises(ValueError, match="belongs to"):
        await repo.record_success(session, success("c1", T1), [make_job("c2", "j1")])
    with pytest.raises(ValueError, match="outcome"):
        await repo.record_success(session, failure("c1", T1), [])
    with pytest.raises(ValueError, match="outcome"):
        await repo.record_failure(session, success("c1", T1))
    assert await count(session, Snapshot) == 0


async def test_record_success_is_all_or_nothing(session: AsyncSession, make_job: MakeJob) -> None:
    await repo.record_success(session, success("c1", T1), [make_job("c1", "j1", status_code=1)])
    naive = datetime(2025, 1, 1)  # naive on purpose
    bad = [make_job("c1", "j1", status_code=3), make_job("c1", "j2", start_time=naive)]
    with pytest.raises(Exception, match="naive datetime"):
        await repo.record_success(session, success("c1", T2), bad)
    # The session is usable again and nothing of the failed call was kept.
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.status_code == 1
    assert job.last_seen_at == T1
    assert await count(session, Job) == 1
    assert await count(session, Snapshot) == 1
    assert await count(session, JobStatusHistory) == 1


async def test_failed_refresh_touches_no_job(session: AsyncSession, make_job: MakeJob) -> None:
    await repo.record_success(session, success("c1", T1), [make_job(), make_job(job_id="j2")])
    before = [await repo.get_job(session, "c1", j) for j in ("j1", "j2")]
    await repo.record_failure(session, failure("c1", T2))
    after = [await repo.get_job(session, "c1", j) for j in ("j1", "j2")]
    assert before == after
    assert await count(session, Snapshot) == 2
    assert await count(session, JobStatusHistory) == 2


async def test_record_failure_commits(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session:
        await repo.record_failure(session, failure("c9", T1))
    async with sessions() as session:
        states = await repo.customer_states(session)
    assert states["c9"].last_error is not None


async def test_customer_states_follow_the_snapshots(
    session: AsyncSession, make_job: MakeJob
) -> None:
    await repo.upsert_customers(session, [("c1", "Contoso"), ("c2", "Fabrikam")], now=T1)
    await session.commit()

    states = await repo.customer_states(session)
    assert set(states) == {"c1", "c2"}
    assert states["c1"] == repo.CustomerState("c1", "Contoso", None, None, None, 0)

    # An error before any success.
    first_error = failure("c1", T1, error_message="boom")
    await repo.record_failure(session, first_error)
    state = (await repo.customer_states(session, ["c1"]))["c1"]
    assert state.last_success_at is None
    assert state.last_attempt_at == T1
    assert state.last_error == first_error

    # A success clears the error.
    await repo.record_success(session, success("c1", T2), [make_job(), make_job(job_id="j2")])
    state = (await repo.customer_states(session, ["c1"]))["c1"]
    assert (state.last_success_at, state.last_attempt_at, state.last_error) == (T2, T2, None)
    assert state.job_count == 2
    assert state.customer_name == "Contoso"

    # A later error is the last error; the last success stays.
    later_error = failure("c1", T3, error_kind="timeout", upstream_status=None, request_id=None)
    await repo.record_failure(session, later_error)
    states = await repo.customer_states(session, ["c1", "c2", "never-seen"])
    assert states["c1"].last_success_at == T2
    assert states["c1"].last_attempt_at == T3
    assert states["c1"].last_error == later_error
    assert states["c1"].job_count == 2
    assert states["c2"] == repo.CustomerState("c2", "Fabrikam", None, None, None, 0)
    assert states["never-seen"] == repo.CustomerState("never-seen", None, None, None, None, 0)
    assert set(await repo.customer_states(session)) == {"c1", "c2"}
    assert await repo.customer_states(session, []) == {}


async def test_upsert_customers_adds_renames_and_keeps_names(session: AsyncSession) -> None:
    await repo.upsert_customers(session, [("c1", "Contoso"), ("c2", None)], now=T1)
    await repo.upsert_customers(session, [("c1", None), ("c2", "Fabrikam")], now=T2)
    await repo.upsert_customers(session, [("c1", "Contoso Ltd")], now=T3)
    await repo.upsert_customers(session, [])
    await session.commit()
    rows = {
        c.id: (c.name, c.created_at, c.updated_at)
        for c in (await session.execute(select(Customer))).scalars()
    }
    assert rows == {"c1": ("Contoso Ltd", T1, T3), "c2": ("Fabrikam", T1, T2)}


async def test_a_recorded_customer_gets_its_name_later(
    session: AsyncSession, make_job: MakeJob
) -> None:
    await repo.record_success(session, success("c1", T1), [make_job()])
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.customer_name is None
    await repo.upsert_customers(session, [("c1", "Contoso")], now=T2)
    await session.commit()
    job = await repo.get_job(session, "c1", "j1")
    assert job is not None
    assert job.customer_name == "Contoso"


async def test_status_counts(session: AsyncSession, make_job: MakeJob) -> None:
    await repo.upsert_customers(session, [("c0", "No jobs")], now=T1)
    await repo.record_success(
        session,
        success("c1", T1),
        [
            make_job("c1", "a", status_code=3),
            make_job("c1", "b", status_code=3, job_type_code=11, module_code=501),
            make_job("c1", "c", status_code=2),
            make_job("c1", "d", status_code=77),
        ],
    )
    await repo.record_success(session, success("c2", T1), [make_job("c2", "a", status_code=2)])
    assert await repo.status_counts(session) == {
        "c0": {},
        "c1": {"failed": 2, "finished": 1, "unknown": 1},
        "c2": {"finished": 1},
    }
    assert await repo.status_counts(session, ["c2", "zz"]) == {"c2": {"finished": 1}, "zz": {}}
    assert await repo.status_counts(session, ["c1"], group_by="job_type") == {
        "microsoft_365": {"failed": 1, "finished": 1, "unknown": 1},
        "google_workspace": {"failed": 1},
    }
    assert await repo.status_counts(session, group_by="module") == {
        "microsoft_365_groups": {"failed": 1, "finished": 2, "unknown": 1},
        "gmail": {"failed": 1},
    }


async def test_ten_thousand_jobs_in_one_snapshot(session: AsyncSession, make_job: MakeJob) -> None:
    jobs = [
        make_job("big", f"job-{n:05d}", status_code=n % 4, start_time=T0 + timedelta(seconds=n))
        for n in range(10_000)
    ]
    changes = await repo.record_success(session, success("big", T1), jobs)
    assert len(changes) == 10_000
    assert all(c.created for c in changes)

    again = [
        dataclasses.replace(job, status_code=5) if n % 10 == 0 else job
        for n, job in enumerate(jobs)
    ]
    changes = await repo.record_success(session, success("big", T2), again)
    assert len(changes) == 1_000
    assert not any(c.created for c in changes)
    assert await count(session, Job) == 10_000
    assert await count(session, JobStatusHistory) == 11_000
    states = await repo.customer_states(session, ["big"])
    assert states["big"].job_count == 10_000
    counts = (await repo.status_counts(session, ["big"]))["big"]
    assert counts["skipped"] == 1_000
    assert sum(counts.values()) == 10_000


async def test_job_count_counts_every_stored_job(session: AsyncSession, make_job: MakeJob) -> None:
    await repo.record_success(
        session, success("c1", T1), [make_job(job_id="a"), make_job(job_id="b")]
    )
    await repo.record_success(
        session, success("c1", T2), [make_job(job_id="b"), make_job(job_id="c")]
    )
    await repo.record_success(session, success("c1", T3), [])
    await repo.record_failure(session, failure("c1", T3 + timedelta(minutes=1)))
    await repo.upsert_customers(session, [("c1", "Contoso")], now=T3)
    await session.commit()
    state = (await repo.customer_states(session, ["c1"]))["c1"]
    assert state.job_count == 3
    assert state.job_count == await count(session, Job)
