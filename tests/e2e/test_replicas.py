"""Two real `serve` processes on one PostgreSQL database share the work.

The upstream is the simulator, served over HTTP from this test's process so that its request
counters can be read: forty concurrent requests spread over both processes walk each customer
once, both processes then answer with the same ETag, and the change feed tells each job once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http, two_processes

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

KEY = "e2e-replica-key"
CUSTOMERS = 6
GUARD_SECONDS = 120.0  # how long a wait may take before the test fails: never reached when well
FAILED = 3  # the upstream's status code


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    """The simulator over HTTP, with some latency so that walks overlap requests."""
    sim = Simulator(SimulatorConfig(seed=11, customers=CUSTOMERS, latency_seconds=0.05))
    with simulator_over_http(sim) as base:
        yield base, sim


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
    """Both processes' ETag of `path` once they agree (they reload within about a second;
    the deadline only stops a test that would wait forever)."""
    tags: list[str] = []
    deadline = time.monotonic() + GUARD_SECONDS
    while time.monotonic() < deadline:
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

            # A refresh through one process is seen by the other: a failure the upstream
            # reports from now on is in both processes' answers, which agree again.
            cid = sim.customer_ids()[0]
            sim.put_job(cid, "e2e-new-failure", status=FAILED, start=sim.now())
            failed = f"/jobs?status=failed&customer_id={cid}"
            before = (await _get(client, replicas[1] + failed)).json()["items"]
            assert "e2e-new-failure" not in {j["job_id"] for j in before}
            sim.stats.reset()
            response = await client.post(replicas[0] + "/refresh")
            assert response.status_code == 202
            run = response.headers["location"]
            deadline = time.monotonic() + GUARD_SECONDS
            while (state := (await _get(client, replicas[0] + run)).json())["state"] != "done":
                assert time.monotonic() < deadline, f"the refresh did not end: {state}"
                await asyncio.sleep(0.05)
            assert {c["state"] for c in state["customers"]} == {"ok"}, state
            assert set(Counter(sim.stats.walks).values()) == {1}
            await _same_etag(client, replicas, failed)
            for base in replicas:
                items = (await _get(client, base + failed)).json()["items"]
                assert "e2e-new-failure" in {j["job_id"] for j in items}, base

    asyncio.run(scenario())


INTERVAL = 2.0  # REFRESH_INTERVAL_SECONDS of the background replicas
WALKS = 4  # walks of every customer the background test waits for


@pytest.fixture
def background_replicas(
    upstream: tuple[str, Simulator], postgres_database: str
) -> Iterator[list[str]]:
    env = serve_env(
        upstream[0],
        postgres_database,
        KEY,
        CACHE_TTL_SECONDS="3",
        REFRESH_INTERVAL_SECONDS=str(INTERVAL),
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


Walk = tuple[datetime, datetime, str]  # a snapshot: started, finished, outcome


def _walks(database_url: str) -> dict[str, list[Walk]]:
    """Every customer's refreshes as the processes recorded them (snapshots), in order."""

    async def read() -> list[asyncpg.Record]:
        dsn = make_url(database_url).set(drivername="postgresql")
        connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
        try:
            return list(
                await connection.fetch(
                    "SELECT customer_id, started_at, finished_at, outcome FROM snapshots "
                    "ORDER BY customer_id, started_at"
                )
            )
        finally:
            await connection.close()

    walks: dict[str, list[Walk]] = {}
    for row in asyncio.run(read()):
        walks.setdefault(row[0], []).append((row[1], row[2], row[3]))
    return walks


def test_the_background_refresh_is_spread_over_the_processes_not_repeated(
    background_replicas: list[str], upstream: tuple[str, Simulator], postgres_database: str
) -> None:
    _, sim = upstream
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        walks = _walks(postgres_database)
        done = [
            _refreshes(httpx.get(base + "/metrics", timeout=10).text)
            for base in background_replicas
        ]
        if (
            set(walks) == set(sim.customer_ids())
            and min(len(w) for w in walks.values()) >= WALKS
            and all(n > 0 for n in done)
        ):
            break
        assert time.monotonic() < deadline, f"not {WALKS} walks each by both: {done}, {walks}"
        time.sleep(0.2)

    pace = timedelta(seconds=INTERVAL * 0.9)  # the interval, jittered down by a tenth
    for cid, rounds in walks.items():
        assert {outcome for _, _, outcome in rounds} == {"success"}, (cid, rounds)
        # One process at a time: each walk starts after the one before it was stored.
        for (_, finished, _), (started, _, _) in itertools.pairwise(rounds):
            assert started >= finished, (cid, rounds)
        # Not repeated: whichever process walks, it walks when the customer is due after
        # the last walk stored, so walks come at most one per interval (the first is free),
        # measured on the walks' own times, however slowly this machine ran them. Two
        # processes on their own would walk each customer twice as often.
        span = rounds[-1][0] - rounds[0][0]
        assert len(rounds) - 1 <= span / pace + 1, (cid, [r[0].isoformat() for r in rounds])
