"""A cached `GET /jobs?status=failed&limit=100` over 100k stored jobs, and the fill before it.

    python -m bench.cached_jobs                                   # SQLite file in a temp dir
    python -m bench.cached_jobs --postgres postgresql://postgres@127.0.0.1:5432/test

Fill: 100 customers x 1000 jobs (about 5% failed), generated as `NormalizedJob` values and
written with `repo.upsert_customers` + `repo.record_success`, one transaction per customer: the
first snapshot (inserts and history rows), then a second snapshot of 10 customers (updates,
no status change: the steady-state refresh). Reported as jobs/s.

Read: the app from `create_app` (CUSTOMER_IDS = the 100 ids, a TTL long enough that every
snapshot is fresh, the clock fixed just after the fill) with an upstream transport that
refuses every call, so a cache miss would show (and fails the run). Requests go through
`httpx.ASGITransport` inside the app's lifespan, one at a time; each case is warmed up, then
timed over 200 requests (median and p95).

Same-run baselines: `/healthz` through the same stack (ratio = case / healthz) and the case's
own SQL through `repo.query_jobs` on the app's sessions (ratio = endpoint / raw query). The
per-request freshness read (`repo.customer_states` of the 100 customers) is timed on its own
too, since every request pays it. `EXPLAIN QUERY PLAN` (SQLite) / `EXPLAIN` (PostgreSQL) of
each case's query shows which index it uses.

With `--postgres URL`, a fresh database is created next to URL's and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.engine import make_url

from app.api.deps import Services
from app.config import Settings
from app.main import create_app
from app.normalize import NormalizedJob
from app.store import db, repo
from bench.common import machine, median, peak_rss_mib, percentile, table, write_results

CUSTOMERS = 100
JOBS_PER_CUSTOMER = 1000
REWRITE_CUSTOMERS = 10
REQUESTS = 200  # the main case and /healthz
VARIANT_REQUESTS = 100  # the other cases and the raw queries, to stay within two minutes
WARMUP = 20
CURSOR_PAGES = 5
API_KEY = "bench-key-0123456789"
UPSTREAM = "http://upstream.invalid"

FILLED_AT = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
NOW = FILLED_AT + timedelta(minutes=1)

# Status code -> share of the jobs: mostly finished, about 5% failed (code 3).
STATUS_MIX = {2: 0.80, 4: 0.08, 3: 0.05, 1: 0.02, 7: 0.01, 5: 0.01, 8: 0.01, 6: 0.01, 10: 0.01}
# (job type, module) pairs the way partners' plans combine them.
WORKLOADS = [(7, 302), (7, 303), (7, 304), (7, 305), (7, 308), (0, 302), (11, 501), (11, 504),
             (12, 356), (12, 362), (15, 0), (16, 401)]  # fmt: skip
PLAN_NAMES = ["Daily SharePoint", "Exchange mailboxes", "Groups and Teams", "OneDrive users",
              "Teams chats", "Tenant scan", "Gmail", "Google Drive", "Azure VMs",
              "Azure SQL", "Salesforce org", "Dynamics CRM"]  # fmt: skip


# -- data --------------------------------------------------------------------------------------


def _wire_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "N/A"


def generate(rng: random.Random) -> tuple[list[tuple[str, str]], dict[str, list[NormalizedJob]]]:
    """100 customers (id, name) and their 1000 jobs each, deterministic for the seed."""
    customers = [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"Customer {n:03d}")
        for n in range(CUSTOMERS)
    ]
    codes, weights = list(STATUS_MIX), list(STATUS_MIX.values())
    jobs: dict[str, list[NormalizedJob]] = {}
    for customer_id, _ in customers:
        rows = []
        for n in range(JOBS_PER_CUSTOMER):
            plan = n % len(WORKLOADS)
            job_type, module = WORKLOADS[plan]
            status = rng.choices(codes, weights)[0]
            start = FILLED_AT - timedelta(seconds=rng.randrange(7 * 86400))
            running = status in (1, 6)
            duration = None if running else rng.randrange(5, 4 * 3600)
            end = None if duration is None else start + timedelta(seconds=duration)
            modified = (end or start) + timedelta(seconds=1)
            total = rng.randrange(1, 5000)
            failed = total if status == 3 else rng.randrange(0, 3) if status == 4 else 0
            size = None if job_type in (0, 10) else rng.randrange(0, 2**34)
            job_id = f"FB{start:%Y%m%d%H%M%S}{rng.randrange(10**6):06d}"
            raw = {
                "jobType": job_type,
                "jobModule": module,
                "status": status,
                "jobId": job_id,
                "name": PLAN_NAMES[plan],
                "totalCount": str(total),
                "failedCount": str(failed),
                "successfulCount": str(total - failed),
                "skippedCount": "0",
                "warningCount": "0",
                "backupSize": "N/A" if size is None else f"{size / 2**30:.2f} GB",
                "startTime": _wire_time(start),
                "endTime": _wire_time(end),
                "jobDuration": "N/A" if duration is None else f"{duration // 60}m{duration % 60}s",
                "lastModifyTime": _wire_time(modified),
            }
            rows.append(
                NormalizedJob(
                    customer_id=customer_id,
                    job_id=job_id,
                    name=PLAN_NAMES[plan],
                    job_type_code=job_type,
                    module_code=module,
                    status_code=status,
                    total_count=total,
                    failed_count=failed,
                    successful_count=total - failed,
                    skipped_count=0,
                    warning_count=0,
                    backup_size_bytes=size,
                    start_time=start,
                    end_time=end,
                    duration_seconds=duration,
                    last_modified=modified,
                    raw=raw,
                )
            )
        jobs[customer_id] = rows
    return customers, jobs


def snapshot(customer_id: str, jobs: int, finished_at: datetime) -> repo.SnapshotRecord:
    return repo.SnapshotRecord(
        customer_id=customer_id,
        started_at=finished_at - timedelta(seconds=20),
        finished_at=finished_at,
        outcome="success",
        pages=(jobs + 99) // 100,
        jobs_seen=jobs,
        request_id=str(uuid.uuid4()),
    )


async def fill(
    url: str, customers: list[tuple[str, str]], jobs: dict[str, list[NormalizedJob]]
) -> dict[str, Any]:
    """Migrate and write every customer's first snapshot, then a second one for a few."""
    engine = db.create_engine(url)
    try:
        await db.migrate(engine)
        sessions = db.session_factory(engine)
        async with sessions() as session:
            await repo.upsert_customers(session, customers, now=FILLED_AT)
            await session.commit()
        began = time.perf_counter()
        for customer_id, _ in customers:
            async with sessions() as session:
                await repo.record_success(
                    session, snapshot(customer_id, JOBS_PER_CUSTOMER, FILLED_AT), jobs[customer_id]
                )
        first = time.perf_counter() - began
        again = [cid for cid, _ in customers[:REWRITE_CUSTOMERS]]
        began = time.perf_counter()
        for customer_id in again:
            async with sessions() as session:
                changes = await repo.record_success(
                    session,
                    snapshot(customer_id, JOBS_PER_CUSTOMER, FILLED_AT + timedelta(seconds=10)),
                    jobs[customer_id],
                )
                assert not changes
        second = time.perf_counter() - began
    finally:
        await engine.dispose()
    inserted = CUSTOMERS * JOBS_PER_CUSTOMER
    updated = REWRITE_CUSTOMERS * JOBS_PER_CUSTOMER
    return {
        "first_snapshot": {
            "jobs": inserted,
            "seconds": round(first, 2),
            "jobs_per_second": round(inserted / first),
        },
        "second_snapshot": {
            "jobs": updated,
            "seconds": round(second, 2),
            "jobs_per_second": round(updated / second),
        },
    }


# -- the app -----------------------------------------------------------------------------------


class RefusingUpstream(httpx.AsyncBaseTransport):
    """An upstream that answers 403 to everything, and counts what it was asked."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = "jobs" if path.endswith("/jobs/batch") else path.rsplit("/", 1)[-1]
        self.calls[kind] += 1
        return httpx.Response(403, json={"code": "Forbidden", "message": "benchmark: no upstream"})


def settings_for(url: str, customer_ids: list[str]) -> Settings:
    return Settings(
        _env_file=None,
        avepoint_base_url=UPSTREAM,
        avepoint_token_url=f"{UPSTREAM}/connect/token",
        avepoint_client_id="bench",
        avepoint_client_secret="bench",
        database_url=url,
        api_keys=API_KEY,
        customer_ids=",".join(customer_ids),
        cache_ttl_seconds=10**9,
        stale_if_error_seconds=10**9,
        demo=False,
        auth_disabled=False,
        log_level="WARNING",
    )


@asynccontextmanager
async def running_app(
    url: str, customer_ids: list[str], upstream: RefusingUpstream
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    app = create_app(
        settings_for(url, customer_ids), clock=lambda: NOW, transport=upstream, freeze_heap=True
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.bench",
            headers={"X-API-Key": API_KEY},
        ) as client,
    ):
        yield client, app.state.services


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One request shape: its URL and the JobQuery the endpoint runs for it."""

    name: str
    path: str
    query: repo.JobQuery
    timings_ms: list[float] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    items: int = 0


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(median(values), 3), "p95": round(percentile(values, 0.95), 3)}


async def timed(call: Callable[[], Awaitable[Any]], n: int, warmup: int = WARMUP) -> list[float]:
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(n):
        began = time.perf_counter()
        await call()
        out.append((time.perf_counter() - began) * 1000)
    return out


class Misses(Exception):
    pass


async def get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """The answer to GET `path`, checked: 200, and a cache hit for /jobs. The body is not
    parsed here, so the client's JSON decoding stays out of the timings."""
    response = await client.get(path)
    if response.status_code != 200:
        raise Misses(f"GET {path} -> {response.status_code}: {response.text[:300]}")
    cache = response.headers.get("cache-status", "")
    fresh_hit = cache.startswith("jobs-gateway; hit;") and "stale" not in cache
    if path.startswith("/jobs") and not fresh_hit:
        raise Misses(f"GET {path} was not a cache hit: Cache-Status {cache!r}")
    return response


async def explain(svc: Services, query: repo.JobQuery) -> list[str]:
    """The plan of the statement `repo.query_jobs` sends for `query`."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM jobs" in statement:
            seen.append((statement, parameters))

    engine = svc.engine
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with svc.sessions() as session:
            await repo.query_jobs(session, query)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    statement, parameters = seen[-1]
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql(prefix + statement, parameters)
        rows = result.all()
    if sqlite:  # (id, parent, notused, detail)
        depth: dict[int, int] = {0: -1}
        lines = []
        for row in rows:
            node, parent, _, detail = tuple(row)
            depth[node] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node] + str(detail))
        return lines
    # PostgreSQL prints the 100 customer ids of `= ANY (...)` in full.
    return [_LONG_ARRAY.sub("'{...}'", str(row[0])) for row in rows]


_LONG_ARRAY = re.compile(r"'\{[^}]{120,}\}'")


def cases(customer_ids: list[str]) -> list[Case]:
    one = customer_ids[len(customer_ids) // 2]
    failed = ["failed"]
    return [
        Case(
            "status=failed",
            "/jobs?status=failed&limit=100",
            repo.JobQuery(customer_ids=customer_ids, statuses=failed, limit=100),
        ),
        Case(
            "status=failed&customer_id=<one>",
            f"/jobs?status=failed&limit=100&customer_id={one}",
            repo.JobQuery(customer_ids=[one], statuses=failed, limit=100),
        ),
        Case(
            "status=failed&sort=-duration",
            "/jobs?status=failed&limit=100&sort=-duration",
            repo.JobQuery(customer_ids=customer_ids, statuses=failed, sort="-duration", limit=100),
        ),
    ]


async def cursor_walk(
    client: httpx.AsyncClient, svc: Services, customer_ids: list[str]
) -> dict[str, Any]:
    """Pages 1..5 of status=failed by next_cursor, endpoint and raw keyset query alike."""
    base = "/jobs?status=failed&limit=100"
    endpoint: list[list[float]] = [[] for _ in range(CURSOR_PAGES)]
    raw: list[list[float]] = [[] for _ in range(CURSOR_PAGES)]
    walks = VARIANT_REQUESTS // CURSOR_PAGES
    for n in range(WARMUP // CURSOR_PAGES + walks):
        path = base
        after: repo.Keyset | None = None
        for page in range(CURSOR_PAGES):
            began = time.perf_counter()
            response = await get(client, path)
            took = (time.perf_counter() - began) * 1000
            body = response.json()
            if body["next_cursor"] is None:
                raise Misses(f"the cursor walk ended at page {page + 1}")
            path = f"{base}&cursor={body['next_cursor']}"
            query = repo.JobQuery(customer_ids=customer_ids, statuses=["failed"], after=after)
            began = time.perf_counter()
            async with svc.sessions() as session:
                rows = await repo.query_jobs(session, query)
            raw_took = (time.perf_counter() - began) * 1000
            after = repo.keyset_of(rows[99], query.sort)
            if rows[99].id != body["items"][-1]["id"]:
                raise Misses(f"raw page {page + 1} differs from the endpoint's")
            if n >= WARMUP // CURSOR_PAGES:
                endpoint[page].append(took)
                raw[page].append(raw_took)
    every = [t for page in endpoint[1:] for t in page]
    every_raw = [t for page in raw[1:] for t in page]
    return {
        "pages": CURSOR_PAGES,
        "walks": walks,
        "endpoint_ms_pages_2_on": summary(every),
        "raw_query_ms_pages_2_on": summary(every_raw),
        "endpoint_median_ms_by_page": [round(median(p), 3) for p in endpoint],
        "ratio_to_raw": round(median(every) / median(every_raw), 2),
    }


async def measure(url: str, customer_ids: list[str]) -> dict[str, Any]:
    upstream = RefusingUpstream()
    async with running_app(url, customer_ids, upstream) as (client, svc):
        await get(client, "/jobs?status=failed&limit=1")  # the first request loads the scope
        healthz = await timed(lambda: get(client, "/healthz"), REQUESTS)

        async def states() -> None:
            async with svc.sessions() as session:
                await repo.customer_states(session, customer_ids)

        freshness = await timed(states, VARIANT_REQUESTS)
        results: dict[str, Any] = {}
        for n, case in enumerate(cases(customer_ids)):
            case.items = len((await get(client, case.path)).json()["items"])
            requests = REQUESTS if n == 0 else VARIANT_REQUESTS
            case.timings_ms = await timed(functools.partial(get, client, case.path), requests)

            async def raw(c: Case = case) -> None:
                async with svc.sessions() as session:
                    await repo.query_jobs(session, c.query)

            case.raw_ms = await timed(raw, VARIANT_REQUESTS)
            case.plan = await explain(svc, case.query)
            results[case.name] = {
                "path": case.path,
                "requests": requests,
                "items": case.items,
                "endpoint_ms": summary(case.timings_ms),
                "raw_query_ms": summary(case.raw_ms),
                "ratio_to_healthz": round(median(case.timings_ms) / median(healthz), 1),
                "ratio_to_raw_query": round(median(case.timings_ms) / median(case.raw_ms), 2),
                "plan": case.plan,
            }
        walk = await cursor_walk(client, svc, customer_ids)
        walk["ratio_to_healthz"] = round(
            walk["endpoint_ms_pages_2_on"]["median"] / median(healthz), 1
        )
        response_bytes = len((await client.get(cases(customer_ids)[0].path)).content)
    jobs_calls = upstream.calls["jobs"]
    if jobs_calls:
        raise Misses(f"{jobs_calls} upstream jobs requests: a cache miss")
    return {
        "healthz_ms": summary(healthz),
        "customer_states_ms": summary(freshness),
        "cases": results,
        "cursor_walk": walk,
        "response_bytes": response_bytes,
        "upstream_calls": dict(upstream.calls),
    }


# -- backends ----------------------------------------------------------------------------------


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-cached-jobs-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'gateway.db'}"


@asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    import asyncpg  # type: ignore[import-untyped]

    admin = make_url(admin_url).set(drivername="postgresql")
    name = f"bench_cached_jobs_{uuid.uuid4().hex[:8]}"
    dsn = admin.render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


async def settled(url: str, customer_ids: list[str]) -> dict[str, Any]:
    """PostgreSQL right after the bulk write, then `VACUUM ANALYZE`d (what autovacuum does
    soon after): fresh rows are not all-visible yet, so counts read the heap."""
    engine = db.create_engine(url)
    try:
        sessions = db.session_factory(engine)

        async def states() -> None:
            async with sessions() as session:
                await repo.customer_states(session, customer_ids)

        before = await timed(states, 50, warmup=5)
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE")
    finally:
        await engine.dispose()
    return {"customer_states_ms_before_vacuum": summary(before)}


async def run_backend(
    name: str,
    database: Callable[[], Any],
    customers: list[tuple[str, str]],
    jobs: dict[str, list[NormalizedJob]],
) -> dict[str, Any]:
    customer_ids = [cid for cid, _ in customers]
    async with database() as url:
        print(f"[{name}] filling {CUSTOMERS * JOBS_PER_CUSTOMER} jobs ...", file=sys.stderr)
        writes = await fill(url, customers, jobs)
        settle = await settled(url, customer_ids) if name == "postgresql" else {}
        print(f"[{name}] measuring ...", file=sys.stderr)
        reads = await measure(url, customer_ids)
        if name == "sqlite":
            reads["database_mib"] = round(
                sum(p.stat().st_size for p in Path(str(make_url(url).database)).parent.iterdir())
                / 2**20,
                1,
            )
    return {"writes": writes, **settle, **reads}


def report(results: dict[str, Any]) -> str:
    lines = [
        f"cached GET /jobs over {results['setup']['jobs']} stored jobs "
        f"({results['setup']['failed_jobs']} failed), sequential requests in process: "
        f"{REQUESTS} for the first case and /healthz, {VARIANT_REQUESTS} for the others",
    ]
    for backend, r in results["backends"].items():
        w = r["writes"]
        rows = [("case", "median ms", "p95 ms", "raw SQL ms", "x raw", "x healthz")]
        for case, c in r["cases"].items():
            rows.append(
                (
                    case,
                    f"{c['endpoint_ms']['median']:.2f}",
                    f"{c['endpoint_ms']['p95']:.2f}",
                    f"{c['raw_query_ms']['median']:.2f}",
                    f"{c['ratio_to_raw_query']:.1f}",
                    f"{c['ratio_to_healthz']:.1f}",
                )
            )
        walk = r["cursor_walk"]
        rows.append(
            (
                f"status=failed, cursor pages 2..{walk['pages']}",
                f"{walk['endpoint_ms_pages_2_on']['median']:.2f}",
                f"{walk['endpoint_ms_pages_2_on']['p95']:.2f}",
                f"{walk['raw_query_ms_pages_2_on']['median']:.2f}",
                f"{walk['ratio_to_raw']:.1f}",
                f"{walk['ratio_to_healthz']:.1f}",
            )
        )
        rows.append(
            (
                "/healthz (baseline)",
                f"{r['healthz_ms']['median']:.2f}",
                f"{r['healthz_ms']['p95']:.2f}",
                "",
                "",
                "1.0",
            )
        )
        rows.append(
            (
                "customer_states(100) alone",
                f"{r['customer_states_ms']['median']:.2f}",
                f"{r['customer_states_ms']['p95']:.2f}",
                "",
                "",
                "",
            )
        )
        if "customer_states_ms_before_vacuum" in r:
            rows.append(
                (
                    "  same, before VACUUM ANALYZE",
                    f"{r['customer_states_ms_before_vacuum']['median']:.2f}",
                    f"{r['customer_states_ms_before_vacuum']['p95']:.2f}",
                    "",
                    "",
                    "",
                )
            )
        main_plan = r["cases"]["status=failed"]["plan"]
        lines += [
            "",
            f"[{backend}] writes: first snapshot {w['first_snapshot']['jobs_per_second']} jobs/s "
            f"({w['first_snapshot']['seconds']} s), second snapshot "
            f"{w['second_snapshot']['jobs_per_second']} jobs/s; upstream calls "
            f"{r['upstream_calls']}",
            table(rows),
            f"plan of status=failed ({backend}):",
            *("    " + line for line in main_plan),
        ]
    lines.append(f"\npeak RSS {results['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


async def bench(postgres: str | None) -> dict[str, Any]:
    customers, jobs = generate(random.Random(42))
    failed = sum(1 for rows in jobs.values() for j in rows if j.status_code == 3)
    backends: dict[str, Any] = {}
    backends["sqlite"] = await run_backend("sqlite", sqlite_database, customers, jobs)
    if postgres:
        backends["postgresql"] = await run_backend(
            "postgresql", lambda: postgres_database(postgres), customers, jobs
        )
    return {
        "benchmark": "cached_jobs",
        "setup": {
            "customers": CUSTOMERS,
            "jobs": CUSTOMERS * JOBS_PER_CUSTOMER,
            "failed_jobs": failed,
            "requests_main_case": REQUESTS,
            "requests_other_cases": VARIANT_REQUESTS,
            "warmup_per_case": WARMUP,
        },
        "backends": backends,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": machine(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cached_jobs", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also run on PostgreSQL: a fresh database is created beside URL's and dropped",
    )
    args = parser.parse_args()
    try:
        results = asyncio.run(bench(args.postgres))
    except Misses as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    path = write_results("cached_jobs", results)
    print(f"results: {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
