"""Two real `serve` processes on one PostgreSQL database share the work.

The upstream is the simulator, served over HTTP from this test's process so that its request
counters can be read: forty concurrent requests spread over both processes walk each customer
once, both processes then answer with the same ETag, and the change feed tells each job once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port, start, stop, wait_until_up

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

KEY = "e2e-replica-key"
CUSTOMERS = 6


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    """The simulator over HTTP, with some latency so that walks overlap requests."""
    sim = Simulator(SimulatorConfig(seed=11, customers=CUSTOMERS, latency_seconds=0.05))
    with simulator_over_http(sim) as base:
        yield base, sim


@contextmanager
def two_processes(env: dict[str, str]) -> Iterator[list[str]]:
    """Two `serve` processes with `env`, up and ready; yields their base URLs."""
    ports = [free_port(), free_port()]
    processes = [start(["serve", "--port", str(p)], env) for p in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_up(f"http://127.0.0.1:{port}/readyz", process)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for log in [stop(p) for p in processes]:
            assert "demo-secret" not in log


@pytest.fixture
def replicas(upstream: tuple[str, Simulator], postgres_database: str) -> Iterator[list[str]]:
    env = serve_env(
        upstream[0],
        postgres_database,
        KEY,
        CACHE_TTL_SECONDS="3600",
        # Requests drive the refreshes, so that the test decides when they happen.
        REFRESH_INTERVAL_SECONDS="0",
        UPSTREAM_CONCURRENCY="4",
    )
    with two_processes(env) as bases:
        yield bases


async def _get(client: httpx.AsyncClient, url: str, **params: object) -> httpx.Response:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    return response


async def _same_etag(client: httpx.AsyncClient, bases: list[str], path: str) -> str:
    """Both processes' ETag of `path` once they agree (they reload within about a second)."""
    tags: list[str] = []
    for _ in range(40):
        tags = [(await _get(client, base + path)).headers["etag"] for base in bases]
        if len(set(tags)) == 1:
            return tags[0]
        await asyncio.sleep(0.1)
    bodies = [(await _get(client, base + path)).json() for base in bases]
    same_items = bodies[0].get("items") == bodies[1].get("items")
    raise AssertionError(
        f"the processes disagree on {path}: {tags}; same items: {same_items}; "
        f"freshness {[b.get('freshness') for b in bodies]}; "
        f"sources {[b.get('sources') for b in bodies]}"
    )


def test_two_processes_walk_each_customer_once_and_agree(
    replicas: list[str], upstream: tuple[str, Simulator]
) -> None:
    _, sim = upstream

    async def scenario() -> None:
        headers = {"X-API-Key": KEY}
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            # Forty requests at once, alternating between the processes, on a cold store.
            paths = ["/jobs", "/jobs?status=failed", "/customers", "/summary"]
            answers = await asyncio.gather(
                *(client.get(replicas[n % 2] + paths[n % len(paths)]) for n in range(40))
            )
            assert [a.status_code for a in answers] == [200] * 40
            walks = Counter(sim.stats.walks)
            assert set(walks) == set(sim.customer_ids())
            assert set(walks.values()) == {1}, f"a customer was walked twice: {walks}"
            pages = {cid: -(-len(sim.jobs(cid)) // 100) for cid in sim.customer_ids()}
            for cid, count in sim.stats.jobs_requests.items():
                # Every page once, and the one past a full last page at most.
                assert pages[cid] <= count <= pages[cid] + 1, (cid, count, pages[cid])

            for path in ("/jobs", "/jobs?status=failed&limit=50", "/customers"):
                await _same_etag(client, replicas, path)

            # The feed: one sequence, whichever process wrote it, each job told once.
            feeds = [
                (await _get(client, base + "/events", limit=1000)).json()["items"]
                for base in replicas
            ]
            assert feeds[0] == feeds[1]
            created = Counter(e["job_id"] for e in feeds[0] if e["type"] == "job.created")
            assert created and set(created.values()) == {1}

            # A refresh through one process is seen by the other: their answers agree again.
            sim.stats.reset()
            before = (await _get(client, replicas[1] + "/jobs")).headers["etag"]
            response = await client.post(replicas[0] + "/refresh")
            assert response.status_code == 202
            run = response.headers["location"]
            for _ in range(100):
                state = (await _get(client, replicas[0] + run)).json()
                if state["state"] == "done":
                    break
                await asyncio.sleep(0.05)
            assert set(Counter(sim.stats.walks).values()) == {1}
            tag = await _same_etag(client, replicas, "/jobs")
            # The simulator's clock moved on, so its running jobs did too: new data.
            assert tag != before or sim.stats.walks

    asyncio.run(scenario())


@pytest.fixture
def background_replicas(
    upstream: tuple[str, Simulator], postgres_database: str
) -> Iterator[list[str]]:
    env = serve_env(
        upstream[0],
        postgres_database,
        KEY,
        CACHE_TTL_SECONDS="3",
        REFRESH_INTERVAL_SECONDS="2",
        UPSTREAM_CONCURRENCY="4",
    )
    with two_processes(env) as bases:
        yield bases


def _refreshes(metrics: str) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("jobs_gateway_customer_refreshes_total{")
    )


def test_the_background_refresh_is_spread_over_the_processes_not_repeated(
    background_replicas: list[str], upstream: tuple[str, Simulator]
) -> None:
    _, sim = upstream
    seconds = 8.0
    time.sleep(seconds)
    walks = Counter(sim.stats.walks)
    assert set(walks) == set(sim.customer_ids())
    # Every 2 s (jittered down to 1.8 s) by one process or the other: at most one walk per
    # interval and customer, plus the first; two processes on their own would make twice that.
    most = 1 + int(seconds / 1.8) + 1
    assert max(walks.values()) <= most, walks
    done = [
        _refreshes(httpx.get(base + "/metrics", timeout=10).text) for base in background_replicas
    ]
    assert all(n > 0 for n in done), f"one process did all the work: {done}"
