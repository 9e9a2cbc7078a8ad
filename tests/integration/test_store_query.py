"""Job listings: every filter and combination, every sort, keyset pagination.

A seeded data set with ties, NULLs and awkward names is loaded into the store; each query's
answer is compared with the same query answered in Python over the same jobs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app import catalog
from app.normalize import NormalizedJob
from app.store import repo
from app.store.repo import SORTS, InvalidCursor, JobQuery, JobRow, SnapshotRecord

T = datetime(2025, 9, 1, tzinfo=UTC)
FETCHED = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
TIMES = [None, T, T, T + timedelta(hours=1), T + timedelta(days=1), T + timedelta(days=2)]
DURATIONS = [None, 0, 38, 600, 600, 1059]
STATUSES = [1, 2, 3, 3, 4, None, 99]
JOB_TYPES = [7, 7, 11, 12, None, 42]
MODULES = [304, 501, 8, 309, None, 999]
NAMES = [
    None,
    "Daily backup",
    "WEEKLY BACKUP",
    "Mail 100% done",
    "Mail 1000 done",
    "under_score",
    "underXscore",
    "back\\slash",
    "a/b path",
]
CUSTOMERS = {"c1": "Contoso", "c2": "Fabrikam", "c3": None}


def build_jobs(seed: int = 7, per_customer: int = 25) -> list[NormalizedJob]:
    rng = random.Random(seed)
    jobs = []
    for customer_id in CUSTOMERS:
        for n in range(per_customer):
            jobs.append(
                NormalizedJob(
                    customer_id=customer_id,
                    job_id=f"job{n:03d}",
                    name=rng.choice(NAMES),
                    job_type_code=rng.choice(JOB_TYPES),
                    module_code=rng.choice(MODULES),
                    status_code=rng.choice(STATUSES),
                    total_count=n,
                    failed_count=None,
                    successful_count=n,
                    skipped_count=0,
                    warning_count=0,
                    backup_size_bytes=n * 1024,
                    start_time=rng.choice(TIMES),
                    end_time=None,
                    duration_seconds=rng.choice(DURATIONS),
                    last_modified=rng.choice(TIMES),
                    raw={"jobId": f"job{n:03d}"},
                )
            )
    return jobs


JOBS = build_jobs()


def snapshot(customer_id: str, at: datetime) -> SnapshotRecord:
    return SnapshotRecord(customer_id, at - timedelta(seconds=1), at, "success")


async def load(session: AsyncSession, jobs: Sequence[NormalizedJob], at: datetime) -> None:
    for customer_id in CUSTOMERS:
        mine = [j for j in jobs if j.customer_id == customer_id]
        await repo.record_success(session, snapshot(customer_id, at), mine)


@pytest.fixture
async def loaded(session: AsyncSession) -> AsyncSession:
    await repo.upsert_customers(session, list(CUSTOMERS.items()), now=FETCHED)
    await session.commit()
    await load(session, JOBS, FETCHED)
    return session


# -- the oracle ------------------------------------------------------------------------------

MIN = datetime.min.replace(tzinfo=UTC)


def names_match(cat: catalog.Catalog, wanted: Sequence[str], code: int | None) -> bool:
    primary = {e.name for e in cat.entries} | {catalog.UNKNOWN}
    for name in wanted:
        if name in primary and cat.name(code) == name:
            return True
        if name not in primary and code in cat.codes(name):
            return True
    return False


def matches(job: NormalizedJob, q: JobQuery) -> bool:
    if q.customer_ids is not None and job.customer_id not in q.customer_ids:
        return False
    if q.statuses is not None and not names_match(catalog.STATUS, q.statuses, job.status_code):
        return False
    if q.job_types is not None and not names_match(
        catalog.JOB_TYPE, q.job_types, job.job_type_code
    ):
        return False
    if q.modules is not None and not names_match(catalog.MODULE, q.modules, job.module_code):
        return False
    if q.start_after is not None and (job.start_time is None or job.start_time <= q.start_after):
        return False
    if q.start_before is not None and (job.start_time is None or job.start_time >= q.start_before):
        return False
    if q.modified_since is not None and (
        job.last_modified is None or job.last_modified < q.modified_since
    ):
        return False
    return not q.q or (job.name is not None and q.q.lower() in job.name.lower())


def sort_key(job: NormalizedJob, sort: str) -> tuple[object, str, str]:
    field = sort.lstrip("-")
    key: object
    if field == "start_time":
        key = job.start_time or MIN
    elif field == "last_modified":
        key = job.last_modified or MIN
    else:
        key = -1 if job.duration_seconds is None else job.duration_seconds
    return key, job.customer_id, job.job_id


def expected(jobs: Sequence[NormalizedJob], q: JobQuery) -> list[tuple[str, str]]:
    found = sorted(
        (j for j in jobs if matches(j, q)),
        key=lambda j: sort_key(j, q.sort),
        reverse=q.sort.startswith("-"),
    )
    return [(j.customer_id, j.job_id) for j in found]


def ids(rows: Sequence[JobRow]) -> list[tuple[str, str]]:
    return [(r.customer_id, r.job_id) for r in rows]


def with_(q: JobQuery, **changes: Any) -> JobQuery:
    return dataclasses.replace(q, **changes)


# -- filters and sorts -----------------------------------------------------------------------

FILTER_CHOICES: dict[str, list[object]] = {
    "customer_ids": [None, ["c1", "c3"]],
    "statuses": [None, ["failed", "unknown"]],
    "job_types": [None, ["microsoft_365", "google_workspace"]],
    "modules": [None, ["archiver", "microsoft_365_groups"]],
    "times": [
        {},
        {"start_after": T, "start_before": T + timedelta(days=1)},
        {"modified_since": T + timedelta(hours=1)},
    ],
    "q": [None, "backup"],
}


def all_filter_combinations() -> list[JobQuery]:
    queries = []
    for values in itertools.product(*FILTER_CHOICES.values()):
        fields = dict(zip(FILTER_CHOICES, values, strict=True))
        times = fields.pop("times")
        assert isinstance(times, dict)
        queries.append(JobQuery(**fields, **times, limit=1000))  # type: ignore[arg-type]
    return queries


async def test_every_filter_combination_in_every_sort(loaded: AsyncSession) -> None:
    nonempty = 0
    for base in all_filter_combinations():
        for sort in SORTS:
            q = with_(base, sort=sort)
            rows = await repo.query_jobs(loaded, q)
            assert ids(rows) == expected(JOBS, q), q
            nonempty += bool(rows)
    assert nonempty > len(SORTS) * 20  # the data set exercises the filters, not just empties


@pytest.mark.parametrize(
    "query",
    [
        JobQuery(customer_ids=["c2"]),
        JobQuery(statuses=["finished"]),
        JobQuery(statuses=["unknown"]),
        JobQuery(job_types=["unknown"]),
        JobQuery(modules=["unknown"]),
        JobQuery(modules=["teams_chat"]),  # module 309's name, once the page's `archiver`
        JobQuery(modules=["archiver"]),  # module 8 alone
        JobQuery(job_types=["iaas_paas"], modules=["gmail", "microsoft_365_groups"]),
        JobQuery(start_after=T),  # strictly after: the jobs that started at T are not
        JobQuery(start_after=T + timedelta(hours=1)),
        JobQuery(start_before=T + timedelta(hours=1)),
        JobQuery(start_after=MIN),
        JobQuery(start_before=T + timedelta(days=1)),
        JobQuery(modified_since=T),
        JobQuery(modified_since=MIN),
        JobQuery(q="BACKUP"),
        JobQuery(q=""),
    ],
    ids=lambda q: ",".join(f"{k}={v}" for k, v in q.__dict__.items() if v is not None),
)
async def test_single_filters(loaded: AsyncSession, query: JobQuery) -> None:
    query = with_(query, limit=1000)
    rows = await repo.query_jobs(loaded, query)
    assert ids(rows) == expected(JOBS, query)
    if query.q != "":
        assert 0 < len(rows) < len(JOBS)


async def test_alias_matches_its_code_only(loaded: AsyncSession) -> None:
    # One name per code: 309 is `teams_chat`, and `archiver` (the page's old name of 309,
    # which also named 8) is module 8 alone.
    rows = await repo.query_jobs(loaded, JobQuery(modules=["teams_chat"], limit=1000))
    assert rows
    assert {r.module_code for r in rows} == {309}
    assert {r.module for r in rows} == {"teams_chat"}
    archiver = await repo.query_jobs(loaded, JobQuery(modules=["archiver"], limit=1000))
    assert archiver
    assert {r.module_code for r in archiver} == {8}
    assert {r.module for r in archiver} == {"archiver"}
    # `azure_sql`, the page's name of 362, is an alias of 362 only: not of 365
    # (`azure_sql_backup`), and it is served under 362's current name.
    extra = [
        dataclasses.replace(JOBS[0], customer_id="c1", job_id=f"m{code}", module_code=code)
        for code in (362, 365)
    ]
    await repo.record_success(loaded, snapshot("c1", FETCHED), extra)
    alias = await repo.query_jobs(loaded, JobQuery(modules=["azure_sql"], limit=1000))
    assert [(r.job_id, r.module_code) for r in alias] == [("m362", 362)]
    assert alias[0].module == "native_azure_sql_backup_monitoring"
    named = await repo.query_jobs(
        loaded, JobQuery(modules=["native_azure_sql_backup_monitoring"], limit=1000)
    )
    assert ids(named) == ids(alias)


async def test_unknown_keeps_the_code(loaded: AsyncSession) -> None:
    rows = await repo.query_jobs(loaded, JobQuery(statuses=["unknown"], limit=1000))
    assert {r.status_code for r in rows} == {None, 99}
    assert {r.status for r in rows} == {"unknown"}


async def test_empty_filter_lists_match_nothing(loaded: AsyncSession) -> None:
    for field in ("customer_ids", "statuses", "job_types", "modules"):
        assert await repo.query_jobs(loaded, JobQuery(**{field: []})) == []  # type: ignore[arg-type]
    assert await repo.query_jobs(loaded, JobQuery(statuses=["no_such_status"])) == []


@pytest.mark.parametrize(
    ("needle", "hits"),
    [
        ("%", ["Mail 100% done"]),
        ("0%", ["Mail 100% done"]),
        ("_", ["under_score"]),
        ("r_s", ["under_score"]),
        ("\\", ["back\\slash"]),
        ("/", ["a/b path"]),
        ("mail 10", ["Mail 100% done", "Mail 1000 done"]),
        ("WEEKLY backup", ["WEEKLY BACKUP"]),
        ("'; drop table jobs; --", []),
    ],
)
async def test_name_search_escapes_wildcards(
    session: AsyncSession, needle: str, hits: list[str]
) -> None:
    jobs = [
        dataclasses.replace(JOBS[0], customer_id="c1", job_id=f"n{i}", name=name)
        for i, name in enumerate(NAMES)
    ]
    await repo.record_success(session, snapshot("c1", FETCHED), jobs)
    rows = await repo.query_jobs(session, JobQuery(q=needle, limit=100))
    assert sorted(r.name or "" for r in rows) == sorted(hits)


async def test_rows_carry_every_field(loaded: AsyncSession) -> None:
    rows = await repo.query_jobs(loaded, JobQuery(customer_ids=["c1"], limit=1000))
    by_id = {j.job_id: j for j in JOBS if j.customer_id == "c1"}
    assert len(rows) == len(by_id)
    for row in rows:
        job = by_id[row.job_id]
        assert row.customer_name == "Contoso"
        assert row.fetched_at == FETCHED
        assert (row.status, row.job_type, row.module) == (job.status, job.job_type, job.module)
        for field in (
            "name",
            "status_code",
            "job_type_code",
            "module_code",
            "total_count",
            "failed_count",
            "backup_size_bytes",
            "start_time",
            "last_modified",
            "duration_seconds",
        ):
            assert getattr(row, field) == getattr(job, field), field
        # Listings leave the raw upstream row out; one job read alone carries it.
        assert row.raw is None
        single = await repo.get_job(loaded, "c1", row.job_id)
        assert single is not None
        assert single.raw == job.raw
    other = await repo.query_jobs(loaded, JobQuery(customer_ids=["c3"], limit=1))
    assert other[0].customer_name is None


# -- keyset pagination -----------------------------------------------------------------------


async def walk(
    session: AsyncSession, q: JobQuery, between_pages: object = None
) -> list[tuple[str, str]]:
    """Every row of `q`, page by page, with the cursor through JSON like the API does."""
    seen: list[tuple[str, str]] = []
    after = None
    for _ in range(1000):
        rows = await repo.query_jobs(session, with_(q, after=after))
        page, more = rows[: q.limit], len(rows) > q.limit
        seen += ids(page)
        if not more:
            return seen
        assert page
        after = tuple(json.loads(json.dumps(repo.keyset_of(page[-1], q.sort))))
        if callable(between_pages):
            await between_pages()
    raise AssertionError("the walk does not end")


@pytest.mark.parametrize("sort", SORTS)
async def test_keyset_walk_sees_every_row_once_in_order(loaded: AsyncSession, sort: str) -> None:
    everything = expected(JOBS, JobQuery(sort=sort, limit=1000))  # type: ignore[arg-type]
    for limit in (1, 7, 75, 500):
        assert await walk(loaded, JobQuery(sort=sort, limit=limit)) == everything, limit  # type: ignore[arg-type]


@pytest.mark.parametrize("sort", SORTS)
async def test_keyset_walk_with_filters(loaded: AsyncSession, sort: str) -> None:
    q = JobQuery(statuses=["failed", "finished"], customer_ids=["c1", "c2"], sort=sort, limit=3)  # type: ignore[arg-type]
    result = await walk(loaded, q)
    assert result == expected(JOBS, q)
    assert len(result) > 3


@pytest.mark.parametrize("sort", SORTS)
async def test_keyset_walk_is_stable_while_jobs_change(loaded: AsyncSession, sort: str) -> None:
    """New jobs and status changes between pages: no row twice, no original row missed."""
    jobs = list(JOBS)
    round_ = 0

    async def change() -> None:
        nonlocal round_, jobs
        round_ += 1
        at = FETCHED + timedelta(minutes=round_)
        fresh = dataclasses.replace(JOBS[round_], job_id=f"new{round_:03d}")
        jobs = [
            dataclasses.replace(j, status_code=(j.status_code or 0) + round_)
            if i % 3 == round_ % 3
            else j
            for i, j in enumerate(jobs)
        ] + [fresh]
        await load(loaded, jobs, at)

    q = JobQuery(sort=sort, limit=6)  # type: ignore[arg-type]
    seen = await walk(loaded, q, between_pages=change)
    assert len(seen) == len(set(seen))
    assert {(j.customer_id, j.job_id) for j in JOBS} <= set(seen)
    assert round_ > 5


async def test_keyset_of_is_json_and_iso(loaded: AsyncSession) -> None:
    rows = await repo.query_jobs(loaded, JobQuery(sort="start_time", limit=1000))
    first, last = rows[0], rows[-1]
    assert first.start_time is None
    assert repo.keyset_of(first, "start_time")[0] == "0001-01-01T00:00:00Z"
    assert repo.keyset_of(last, "-start_time")[0] == "2025-09-03T00:00:00Z"
    by_duration = await repo.query_jobs(loaded, JobQuery(sort="-duration", limit=1000))
    assert repo.keyset_of(by_duration[0], "-duration")[0] == 1059
    assert repo.keyset_of(by_duration[-1], "duration")[0] == -1
    for row in rows:
        for sort in SORTS:
            json.dumps(repo.keyset_of(row, sort))


async def test_after_accepts_datetimes_and_offsets(loaded: AsyncSession) -> None:
    full = expected(JOBS, JobQuery(limit=1000))
    pivot = next(j for j in JOBS if (j.customer_id, j.job_id) == full[10])
    assert pivot.start_time is not None
    plus_one = pivot.start_time.astimezone(timezone(timedelta(hours=1)))
    for key in (pivot.start_time, pivot.start_time.isoformat(), plus_one.isoformat()):
        rows = await repo.query_jobs(
            loaded, JobQuery(limit=1000, after=(key, pivot.customer_id, pivot.job_id))
        )
        assert ids(rows) == full[11:]


BAD_POSITIONS: list[tuple[str, object]] = [
    ("-start_time", ("yesterday", "c1", "j1")),
    ("-start_time", ("2025-01-01T00:00:00", "c1", "j1")),  # no offset
    ("-start_time", (5, "c1", "j1")),
    ("duration", ("5", "c1", "j1")),
    ("duration", (True, "c1", "j1")),
    ("duration", (5, 1, "j1")),
    ("duration", (5, "c1")),
    ("duration", "5,c1,j1"),
]


async def test_bad_positions_are_invalid_cursors(loaded: AsyncSession) -> None:
    for sort, after in BAD_POSITIONS:
        with pytest.raises(InvalidCursor):
            await repo.query_jobs(loaded, JobQuery(sort=sort, after=after))  # type: ignore[arg-type]


async def test_bad_queries_raise_value_error(loaded: AsyncSession) -> None:
    with pytest.raises(ValueError, match="sort"):
        await repo.query_jobs(loaded, JobQuery(sort="name"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await repo.query_jobs(loaded, JobQuery(limit=0))
    with pytest.raises(ValueError, match="start_after"):
        await repo.query_jobs(loaded, JobQuery(start_after=datetime(2025, 1, 1)))
    with pytest.raises(ValueError, match="sort"):
        repo.keyset_of((await repo.query_jobs(loaded, JobQuery(limit=1)))[0], "size")


async def test_limit_plus_one_says_there_is_more(loaded: AsyncSession) -> None:
    assert len(await repo.query_jobs(loaded, JobQuery(limit=10))) == 11
    assert len(await repo.query_jobs(loaded, JobQuery(limit=len(JOBS)))) == len(JOBS)
