"""The refresh engine under the API: leases taken when a walk really starts, renewed while it
runs, a walk that lost its lease stops and stores nothing, and a customer in backoff is not
asked again by `POST /refresh`. On SQLite and on PostgreSQL (leases hold on both: several
processes may share a SQLite file).

The upstream is the simulator behind a transport that can hold a customer's pages, so a
walk can be caught mid-way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.refresh import RefreshOutcome
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

FAILED = 3


class Held(httpx.AsyncBaseTransport):
    """The simulator, except that jobs pages of the customers in `hold` wait for `release`."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=create_simulator_app(sim))
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.waiting: set[str] = set()
        self.asked: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/avpt-products/jobs/batch"):
            cid = path.split("/customers/")[1].split("/")[0]
            self.asked.append(cid)
            if cid in self.hold:
                self.waiting.add(cid)
                await self.release.wait()
        return await self.inner.handle_async_request(request)


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    sim = Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)
    for cid in sim.customer_ids():
        sim.put_job(cid, "job-1", status=FAILED, start=clock.now - timedelta(hours=1))
    return sim


@pytest.fixture
def held(sim: Simulator) -> Held:
    return Held(sim)


@pytest.fixture
async def api(gateway: Gateway, held: Held) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(transport=held) as client:
        yield client


async def until(condition: Callable[[], Any], what: str) -> None:
    """Yield to the app until `condition()` holds (a guard, not a timing: generous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await _holds(condition):
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


async def _holds(condition: Callable[[], Any]) -> bool:
    value = condition()
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


async def lease_of(api: httpx.AsyncClient, cid: str) -> tuple[str, int] | None:
    svc = services_of(api)
    async with svc.sessions() as session:
        row = (
            await session.execute(
                text("SELECT holder, token FROM refresh_leases WHERE customer_id = :c"),
                {"c": cid},
            )
        ).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def steal(api: httpx.AsyncClient, cid: str) -> None:
    """Another process takes the customer over (as after the walk's lease ran out)."""
    async with services_of(api).writer.transaction() as session:
        await session.execute(
            text(
                "UPDATE refresh_leases SET holder = 'elsewhere:1:x', token = 7 "
                "WHERE customer_id = :c"
            ),
            {"c": cid},
        )


async def stored_jobs(api: httpx.AsyncClient, cid: str) -> int:
    async with services_of(api).sessions() as session:
        count = await session.execute(
            text("SELECT COUNT(*) FROM jobs WHERE customer_id = :c"), {"c": cid}
        )
        return int(count.scalar_one())


async def events_of(api: httpx.AsyncClient, cid: str) -> int:
    async with services_of(api).sessions() as session:
        count = await session.execute(
            text("SELECT COUNT(*) FROM events WHERE customer_id = :c"), {"c": cid}
        )
        return int(count.scalar_one())


async def test_a_walk_whose_lease_is_taken_over_stops_and_stores_nothing(
    api: httpx.AsyncClient, held: Held, sim: Simulator
) -> None:
    svc = services_of(api)
    svc.refresher.leasing.seconds = 0.6  # renewed every 0.2 s: the keeper notices quickly
    cid = sim.customer_ids()[0]
    held.hold.add(cid)
    task = svc.refresher.start(cid)
    await until(lambda: cid in held.waiting, "the walk asks for its first page")
    assert await lease_of(api, cid) is not None
    await steal(api, cid)

    outcome: RefreshOutcome = await asyncio.wait_for(asyncio.shield(task), 60)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.kind == "lease_lost"
    assert not held.release.is_set()  # it stopped without waiting for the upstream
    assert await stored_jobs(api, cid) == 0
    assert await events_of(api, cid) == 0
    # The other holder's lease is left alone.
    assert await lease_of(api, cid) == ("elsewhere:1:x", 7)
    held.release.set()


async def test_a_walk_whose_lease_is_taken_over_before_it_commits_commits_nothing(
    api: httpx.AsyncClient, held: Held, sim: Simulator
) -> None:
    svc = services_of(api)
    svc.refresher.leasing.seconds = 3600  # no renewal in this test: the commit's check decides
    cid = sim.customer_ids()[0]
    held.hold.add(cid)
    task = svc.refresher.start(cid)
    await until(lambda: cid in held.waiting, "the walk asks for its first page")
    await steal(api, cid)
    held.release.set()

    outcome: RefreshOutcome = await asyncio.wait_for(asyncio.shield(task), 60)
    assert outcome.error is not None
    assert outcome.error.kind == "lease_lost"
    assert await stored_jobs(api, cid) == 0
    assert await events_of(api, cid) == 0


async def test_a_walk_waiting_for_a_slot_holds_no_lease(
    api: httpx.AsyncClient, held: Held, sim: Simulator
) -> None:
    svc = services_of(api)
    first, second = sim.customer_ids()
    svc.refresher.walker.slots = asyncio.Semaphore(1)  # one walk at a time
    held.hold.add(first)
    one = svc.refresher.start(first)
    await until(lambda: first in held.waiting, "the first walk holds the only slot")
    two = svc.refresher.start(second)
    for _ in range(50):  # the second walk runs up to its queue and waits there
        await asyncio.sleep(0)
    assert await lease_of(api, first) is not None
    assert await lease_of(api, second) is None  # its lease cannot run down while it queues
    held.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(one, two), 60)
    assert all(o.ok for o in outcomes)
    assert await lease_of(api, second) is None  # given back after the walk


async def test_post_refresh_does_not_ask_a_customer_in_backoff(
    api: httpx.AsyncClient, held: Held, sim: Simulator, clock: FakeClock
) -> None:
    cid = sim.customer_ids()[0]
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({cid}))
    first = await api.get("/jobs", params={"customer_id": cid, "max_age": 0})
    assert first.status_code == 200
    assert first.json()["sources"][0]["state"] == "error"
    asked = held.asked.count(cid)
    assert asked >= 1

    response = await api.post("/refresh", json={"customer_ids": [cid]})
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    for _ in range(2000):
        run = (await api.get(f"/refresh/{run_id}")).json()
        if run["state"] == "done":
            break
        await asyncio.sleep(0.01)
    assert run["state"] == "done"
    (customer,) = run["customers"]
    assert customer["state"] == "error"
    assert "backing off until" in customer["error"]["message"]
    assert held.asked.count(cid) == asked  # nothing was asked

    # Once the backoff has passed, it is asked again.
    clock.advance(400)
    response = await api.post("/refresh", json={"customer_ids": [cid]})
    run_id = response.json()["run_id"]
    for _ in range(2000):
        run = (await api.get(f"/refresh/{run_id}")).json()
        if run["state"] == "done":
            break
        await asyncio.sleep(0.01)
    assert held.asked.count(cid) > asked


async def test_a_walk_that_heard_of_anothers_result_while_it_queued_takes_it_not_walks_again(
    gateway: Gateway, held: Held, sim: Simulator
) -> None:
    """Two processes are asked for one customer at once. The other walks and stores first,
    and this one hears of it (as the bus tells it) while its walk still waits for a slot.
    What this process knew when the refresh was asked for decides: the other's snapshot is
    newer than that, so it is this refresh's result, and nothing is walked twice (a CI
    failure of `tests/e2e/test_replicas.py` on a busy machine)."""
    cid = sim.customer_ids()[0]
    async with gateway(transport=held) as one, gateway() as other:
        svc = services_of(one)
        svc.refresher.walker.slots = asyncio.Semaphore(0)  # its walk waits for a slot
        task = svc.refresher.start(cid)
        for _ in range(50):  # asked, and queued
            await asyncio.sleep(0)
        assert (await services_of(other).refresher.refresh(cid)).ok
        await svc.refresher.reload([cid])  # heard of it, as from the bus
        svc.refresher.walker.slots.release()
        outcome: RefreshOutcome = await asyncio.wait_for(asyncio.shield(task), 60)
        assert outcome.ok
        assert cid not in held.asked  # this process asked the upstream nothing
        assert await stored_jobs(one, cid) == 1
