"""The upstream walk: 50 customers x 5 pages through `AvePointClient`, against a bare loop.

    python -m bench.walk            # the simulator in process (httpx.ASGITransport)
    python -m bench.walk --http     # the simulator in a uvicorn process on a loopback port

The simulator holds 50 customers of 450 rows each (five pages, the last short) and answers every
jobs request after 50 ms. `AvePointClient(concurrency=8)` fetches every customer at once
(`asyncio.gather` of `fetch_jobs`): 250 page requests, so the ideal wall time is
ceil(250 / 8) x 50 ms = 1.6 s.

Same-run baseline: the same 250 page requests from a bare loop (plain httpx, one
`asyncio.Semaphore(8)`, the JSON parsed, no retries, token handling, page planning or
de-duplication; the token is fetched before the clock starts).

Reported: median wall time of 3 runs after a warm-up (the simulator's row cache warmed first),
as ratios to the ideal and to the baseline; the simulator's max in-flight requests; the peak
traced memory (tracemalloc, in a separate untimed run, since tracing slows Python down) of our
walk and of the baseline. Exits 1 when more than 8 requests were in flight or a job is missing;
never because of timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import socket
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from app.simulator.state import DEFAULT_SCOPE
from app.upstream.auth import TokenProvider
from app.upstream.client import JOBS_PATH, AvePointClient, JobsFetch
from bench.common import machine, median, peak_rss_mib, table, write_results

CUSTOMERS = 50
JOBS_PER_CUSTOMER = 450  # the last page short: a full one makes the walk ask one more
PAGE_SIZE = AvePointClient.PAGE_SIZE
PAGES = math.ceil(JOBS_PER_CUSTOMER / PAGE_SIZE)
LATENCY = 0.05
CONCURRENCY = 8
RUNS = 3
IDEAL = math.ceil(CUSTOMERS * PAGES / CONCURRENCY) * LATENCY

# A fixed simulator clock: its rows (and tokens) do not move between runs.
SIM_NOW = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
BASE_URL = "http://simulator.bench"
STATS_PATH = "/_bench/stats"
RESET_PATH = "/_bench/reset"


def make_simulator() -> Simulator:
    config = SimulatorConfig(
        customers=CUSTOMERS, jobs_per_customer=JOBS_PER_CUSTOMER, latency_seconds=LATENCY
    )
    sim = Simulator(config, clock=lambda: SIM_NOW)
    for customer_id in sim.customer_ids():
        sim.jobs(customer_id)  # builds and caches the rows the pages are cut from
    return sim


# -- the upstream: in process, or a uvicorn process -------------------------------------------


@dataclass
class Upstream:
    """Where the simulator answers, and how to read and reset its in-flight gauge."""

    base_url: str
    transport: Callable[[], httpx.AsyncBaseTransport | None]
    max_in_flight: Callable[[], Awaitable[int]]
    reset: Callable[[], Awaitable[None]]


@asynccontextmanager
async def in_process(sim: Simulator) -> Any:
    app = create_simulator_app(sim)

    async def max_in_flight() -> int:
        return sim.stats.max_in_flight

    async def reset() -> None:
        sim.stats.reset()

    yield Upstream(BASE_URL, lambda: httpx.ASGITransport(app=app), max_in_flight, reset)


def serve(port: int) -> None:
    """The `--serve PORT` child: the simulator under uvicorn, plus a stats and a reset path."""
    import uvicorn

    sim = make_simulator()
    app = create_simulator_app(sim)

    async def with_stats(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in (STATS_PATH, RESET_PATH):
            if scope["path"] == RESET_PATH:
                sim.stats.reset()
            body = json.dumps({"max_in_flight": sim.stats.max_in_flight}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    uvicorn.run(with_stats, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def over_http() -> Any:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.walk", "--serve", str(port)
    )
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    (await http.get(STATS_PATH)).raise_for_status()
                    break
                except httpx.TransportError:
                    if child.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError("the simulator process did not start") from None
                    await asyncio.sleep(0.1)

            async def max_in_flight() -> int:
                value: int = (await http.get(STATS_PATH)).json()["max_in_flight"]
                return value

            async def reset() -> None:
                (await http.get(RESET_PATH)).raise_for_status()

            yield Upstream(base, lambda: None, max_in_flight, reset)
    finally:
        child.terminate()
        await asyncio.wait_for(child.wait(), timeout=10)


# -- the two walks ------------------------------------------------------------------------------


def http_client(upstream: Upstream) -> httpx.AsyncClient:
    # As the service opens it (app.main.open_services).
    return httpx.AsyncClient(
        transport=upstream.transport(),
        timeout=httpx.Timeout(30),
        limits=httpx.Limits(max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY),
    )


async def our_walk(upstream: Upstream, ids: list[str]) -> tuple[float, list[JobsFetch]]:
    """Every customer at once through AvePointClient; the token request is part of the walk."""
    async with http_client(upstream) as http:
        tokens = TokenProvider(
            http,
            token_url=f"{upstream.base_url}/connect/token",
            client_id="demo-client",
            client_secret="demo-secret",
            scope=DEFAULT_SCOPE,
        )
        client = AvePointClient(
            http, base_url=upstream.base_url, tokens=tokens, concurrency=CONCURRENCY
        )
        began = time.perf_counter()
        fetches = await asyncio.gather(*(client.fetch_jobs(cid) for cid in ids))
        return time.perf_counter() - began, list(fetches)


async def baseline_walk(
    upstream: Upstream, ids: list[str]
) -> tuple[float, list[list[dict[str, Any]]]]:
    """The same 250 page requests, bare: known page count, one semaphore, nothing else."""
    async with http_client(upstream) as http:
        answer = await http.post(
            f"{upstream.base_url}/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "demo-client",
                "client_secret": "demo-secret",
            },
        )
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def page(customer_id: str, index: int) -> list[dict[str, Any]]:
            async with semaphore:
                response = await http.post(
                    upstream.base_url + JOBS_PATH.format(customer_id=customer_id),
                    params={"pageIndex": index, "pageSize": PAGE_SIZE},
                    json={},
                    headers=headers,
                )
            response.raise_for_status()
            rows: list[dict[str, Any]] = response.json()["data"]
            return rows

        began = time.perf_counter()
        pages = await asyncio.gather(
            *(page(cid, index) for cid in ids for index in range(1, PAGES + 1))
        )
        return time.perf_counter() - began, list(pages)


async def traced_peak(run: Callable[[], Awaitable[object]]) -> float:
    """Peak traced allocation of `run()`, in MiB, from a collected heap."""
    gc.collect()
    tracemalloc.start()
    try:
        await run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


# -- the benchmark ----------------------------------------------------------------------------


def missing_jobs(sim: Simulator, fetches: list[JobsFetch]) -> list[str]:
    """`customer:job` of every job the simulator holds and the walk did not return."""
    missing = []
    for fetch in fetches:
        expected = {row["jobId"] for row in sim.jobs(fetch.customer_id)}
        got = {row.get("jobId") for row in fetch.rows}
        missing += [f"{fetch.customer_id}:{job_id}" for job_id in sorted(expected - got)]
    return missing


async def bench(mode: str) -> dict[str, Any]:
    sim = make_simulator()  # the expected data (the --http child builds the same, same seed)
    ids = sim.customer_ids()
    context: AbstractAsyncContextManager[Upstream] = (
        over_http() if mode == "http" else in_process(sim)
    )
    async with context as upstream:
        # Warm-up: imports, connection pools, first-call caches on both sides.
        await our_walk(upstream, ids)
        await baseline_walk(upstream, ids)

        ours: list[float] = []
        base: list[float] = []
        in_flight = 0
        missing: list[str] = []
        pages_seen: set[int] = set()
        for _ in range(RUNS):  # interleaved, so drift hits both alike
            await upstream.reset()
            seconds, fetches = await our_walk(upstream, ids)
            ours.append(seconds)
            in_flight = max(in_flight, await upstream.max_in_flight())
            missing += missing_jobs(sim, fetches)
            pages_seen |= {fetch.pages for fetch in fetches}
            await upstream.reset()
            seconds, pages = await baseline_walk(upstream, ids)
            base.append(seconds)
            baseline_in_flight = await upstream.max_in_flight()
            assert sum(len(p) for p in pages) == CUSTOMERS * JOBS_PER_CUSTOMER

        our_peak = await traced_peak(lambda: our_walk(upstream, ids))
        base_peak = await traced_peak(lambda: baseline_walk(upstream, ids))

    our_time, base_time = median(ours), median(base)
    return {
        "benchmark": "walk",
        "mode": "http (uvicorn on loopback)" if mode == "http" else "in process (ASGITransport)",
        "setup": {
            "customers": CUSTOMERS,
            "pages_per_customer": PAGES,
            "page_requests": CUSTOMERS * PAGES,
            "page_size": PAGE_SIZE,
            "latency_ms": LATENCY * 1000,
            "concurrency": CONCURRENCY,
            "runs": RUNS,
        },
        "ideal_seconds": round(IDEAL, 3),
        "walk_seconds": {"median": round(our_time, 3), "runs": [round(s, 3) for s in ours]},
        "baseline_seconds": {"median": round(base_time, 3), "runs": [round(s, 3) for s in base]},
        "ratio_to_ideal": round(our_time / IDEAL, 3),
        "baseline_ratio_to_ideal": round(base_time / IDEAL, 3),
        "ratio_to_baseline": round(our_time / base_time, 3),
        "max_in_flight": in_flight,
        "baseline_max_in_flight": baseline_in_flight,
        "pages_per_customer_seen": sorted(pages_seen),
        "missing_jobs": len(missing),
        "missing_examples": missing[:5],
        "traced_peak_mib": {
            "walk": round(our_peak, 1),
            "baseline": round(base_peak, 1),
            "ratio": round(our_peak / base_peak, 2),
        },
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "machine": machine(),
    }


def report(r: dict[str, Any]) -> str:
    s = r["setup"]
    header = (
        f"walk: {s['customers']} customers x {s['pages_per_customer']} pages "
        f"({s['page_requests']} requests), {s['latency_ms']:g} ms latency, concurrency "
        f"{s['concurrency']}; {r['mode']}; median of {s['runs']} runs"
    )
    mem = r["traced_peak_mib"]
    rows = [
        ("", "seconds", "x ideal", "x baseline", "peak MiB"),
        ("ideal", f"{r['ideal_seconds']:.3f}", "1.00", "", ""),
        (
            "AvePointClient",
            f"{r['walk_seconds']['median']:.3f}",
            f"{r['ratio_to_ideal']:.2f}",
            f"{r['ratio_to_baseline']:.2f}",
            f"{mem['walk']:.1f}",
        ),
        (
            "bare loop (baseline)",
            f"{r['baseline_seconds']['median']:.3f}",
            f"{r['baseline_ratio_to_ideal']:.2f}",
            "1.00",
            f"{mem['baseline']:.1f}",
        ),
    ]
    footer = (
        f"max in flight: {r['max_in_flight']} (limit {s['concurrency']}); missing jobs: "
        f"{r['missing_jobs']}; memory x baseline: {mem['ratio']:.2f}; "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB"
    )
    return "\n".join([header, "", table(rows), "", footer])


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.walk", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--http", action="store_true", help="a uvicorn simulator on loopback")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    mode = "http" if args.http else "asgi"
    results = asyncio.run(bench(mode))
    print(report(results))
    path = write_results("walk_http" if mode == "http" else "walk", results)
    print(f"results: {path.relative_to(path.parents[2])}")
    problems = []
    if results["max_in_flight"] > CONCURRENCY:
        problems.append(f"{results['max_in_flight']} requests in flight, more than {CONCURRENCY}")
    if results["missing_jobs"]:
        examples = results["missing_examples"]
        problems.append(f"{results['missing_jobs']} jobs missing, e.g. {examples}")
    if results["pages_per_customer_seen"] != [PAGES]:
        problems.append(f"pages per customer {results['pages_per_customer_seen']}, not {PAGES}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
