"""The CPU a cold refresh pays per job, by stage, in process: no HTTP, no other load's noise.

    python -m bench.ingest_cpu                          # SQLite and PostgreSQL, both sizes
    python -m bench.ingest_cpu --db sqlite --size 1000x100 --profile

The refresh's own steps on the stand-in's pages (`bench/standin.py`, the same bytes the
load benchmarks serve), on a fresh database built by the migrations, for every customer in
turn, each step as `app/refresh.py` takes it:

1. decode: `wire.parse_page` of each page's bytes (what the client does per response);
2. add: `Ingest.add_page` of its rows (job id, content hash, normalize, the driver's row);
3. commit: `Ingest.commit` through the service's `Writer` with the default feed config
   (the merge: jobs, history, version, reported marks, events and alerts, the snapshot),
   and the `open_ingest` read before the walk; `--group N` commits N customers at once, as
   walks that end together wait for the writer together (on SQLite, one group commit).

CPU is `time.process_time()` (every thread: the SQLite writer's too) per job; the commit's
share that ran in other threads than this one is shown apart (the writer's thread on
SQLite). `--profile` runs cProfile over each stage (the SQLite writer's thread included)
and prints the functions that take the most time. The HTTP side of a walk is not here:
`bench.cold` measures the whole service, this is the part the store and normalizing pay.
Writes `bench/results/ingest_cpu.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import pstats
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import machine, table, write_results
from bench.standin import StandIn, customer_id

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SIZES = {"100x1000": (100, 1000), "1000x100": (1000, 100)}
AT = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)


class Stage:
    """CPU of one stage, this thread's and the whole process's, and an optional profile."""

    def __init__(self, name: str, profile: bool) -> None:
        self.name = name
        self.process = 0.0
        self.thread = 0.0
        self.profiler = cProfile.Profile(time.thread_time) if profile else None

    def run(self, fn: Callable[[], Any]) -> Any:
        p, t = time.process_time(), time.thread_time()
        result = self.profiler.runcall(fn) if self.profiler is not None else fn()
        self.process += time.process_time() - p
        self.thread += time.thread_time() - t
        return result

    async def arun(self, make: Callable[[], Any]) -> Any:
        p, t = time.process_time(), time.thread_time()
        if self.profiler is not None:
            self.profiler.enable()
        try:
            result = await make()
        finally:
            if self.profiler is not None:
                self.profiler.disable()
        self.process += time.process_time() - p
        self.thread += time.thread_time() - t
        return result


def profiled_writer_thread(profiler: cProfile.Profile) -> None:
    """Profile the SQLite writer's transactions too (they run in the writer's own thread)."""
    from app.store import writer

    original = writer.Writer._transaction
    if getattr(original, "_profiled", False):
        return

    @functools.wraps(original)
    def transaction(self: Any, *args: Any) -> Any:
        return profiler.runcall(original, self, *args)

    transaction._profiled = True  # type: ignore[attr-defined]
    writer.Writer._transaction = transaction  # type: ignore[method-assign]


async def one(db: str, customers: int, jobs: int, args: argparse.Namespace) -> dict[str, Any]:
    from app.store.db import create_engine, migrate, session_factory
    from app.store.merge import open_ingest
    from app.store.snapshots import SnapshotRecord
    from app.store.telling import FeedConfig
    from app.store.versions import ensure_customer
    from app.store.writer import Writer
    from app.upstream.wire import parse_page

    standin = StandIn(customers, jobs, 0.0)
    pages_per_customer = max(1, -(-jobs // 100))
    stages = {n: Stage(n, args.profile) for n in ("decode", "add", "commit")}
    if args.profile:
        writer_profiler = cProfile.Profile(time.thread_time)
        profiled_writer_thread(writer_profiler)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    name = f"bench_{secrets.token_hex(6)}"
    if db == "sqlite":
        url = f"sqlite:///{workdir / 'store.db'}"
    else:
        import asyncpg

        conn = await asyncpg.connect(args.postgres_url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        url = args.postgres_url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url)
    try:
        await migrate(engine)
        writer = Writer.for_engine(engine)
        sessions = session_factory(engine)
        config = FeedConfig.default()
        dialect = engine.dialect.name
        async with writer.transaction() as session:
            for n in range(customers):
                await ensure_customer(session, dialect, customer_id(n), AT)
        wall = time.perf_counter()
        waiting: list[Any] = []

        async def commit_waiting() -> None:
            # Merges that wait for the writer together, as walks that end together do: on
            # SQLite they are committed together (`Writer.run_merge`).
            async def all_of() -> None:
                await asyncio.gather(*(i.commit(writer, snap, config) for i, snap in waiting))

            await stages["commit"].arun(all_of)
            waiting.clear()

        for n in range(customers):
            cid = customer_id(n)

            async def opened(cid: str = cid) -> Any:
                async with sessions() as session:
                    return await open_ingest(session, cid)

            ingest = await stages["commit"].arun(opened)
            for index in range(1, pages_per_customer + 1):
                body = standin.jobs_page(n, index, 100)
                page = stages["decode"].run(lambda body=body: parse_page(body))
                stages["add"].run(functools.partial(ingest.add_page, page.data, page.raw))
                if ingest.must_spill:
                    await stages["commit"].arun(functools.partial(ingest.spill, writer, AT))
            snapshot = SnapshotRecord(
                customer_id=cid,
                started_at=AT - timedelta(seconds=1),
                finished_at=AT,
                outcome="success",
                pages=pages_per_customer,
                jobs_seen=len(ingest.seen),
            )
            waiting.append((ingest, snapshot))
            if len(waiting) >= args.group:
                await commit_waiting()
        if waiting:
            await commit_waiting()
        wall = time.perf_counter() - wall
        writer.close()
    finally:
        await engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
        if db == "postgres":
            import asyncpg

            conn = await asyncpg.connect(args.postgres_url)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
    total = customers * jobs
    result: dict[str, Any] = {
        "db": db,
        "customers": customers,
        "jobs": jobs,
        "wall_s": wall,
        "stages": {
            n: {"us_per_job": s.process / total * 1e6, "thread_us_per_job": s.thread / total * 1e6}
            for n, s in stages.items()
        },
    }
    result["us_per_job"] = sum(s["us_per_job"] for s in result["stages"].values())
    if args.profile:
        profiles = {n: s.profiler for n, s in stages.items()}
        if db == "sqlite":
            profiles["commit (writer thread)"] = writer_profiler
        for n, prof in profiles.items():
            if prof is None:
                continue
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
            print(f"\n--- {db} {customers}x{jobs} {n}: by {args.sort} time ---")
            print(_trim(out.getvalue()))
    return result


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, x in enumerate(lines) if x.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--size", choices=(*SIZES, "both"), default="both")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--group", type=int, default=1, help="customers whose merges wait for the writer together"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", choices=("tottime", "cumulative"), default="tottime")
    parser.add_argument("--name", default="ingest_cpu")
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    sizes = list(SIZES.values()) if args.size == "both" else [SIZES[args.size]]
    runs = []
    for db in dbs:
        for customers, jobs in sizes:
            r = asyncio.run(one(db, customers, jobs, args))
            runs.append(r)
            print(
                f"{db} {customers}x{jobs}: {r['us_per_job']:.1f} µs/job "
                + ", ".join(
                    f"{n} {s['us_per_job']:.1f} (this thread {s['thread_us_per_job']:.1f})"
                    for n, s in r["stages"].items()
                )
                + f"; wall {r['wall_s']:.1f} s",
                flush=True,
            )
    rows = [["db", "customers × jobs", "decode", "add", "commit", "total", "jobs/s (CPU)"]]
    for r in runs:
        st = r["stages"]
        rows.append(
            [
                r["db"],
                f"{r['customers']:,} × {r['jobs']:,}",
                *(f"{st[n]['us_per_job']:.1f} µs" for n in ("decode", "add", "commit")),
                f"{r['us_per_job']:.1f} µs",
                f"{1e6 / r['us_per_job']:,.0f}",
            ]
        )
    print("\n" + table(rows))
    write_results(args.name, {"argv": sys.argv[1:], "machine": machine(), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
