"""The answer cache and freshness as a user meets them: answers kept until the data changes,
304s without the database, reads that never wait on the upstream in normal operation.

The gateway's clock moves; each test's simulator has a clock of its own, so that its data
changes only when a test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import event

from app.main import create_app
from app.normalize import job_id_of
from app.refresh import schedule
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.api.conftest import API_KEY, Sleeps, settings_for
from tests.clock import FakeClock

_ASKED: ContextVar[bool] = ContextVar("asked", default=False)
"""Set in the test's own context once the app has started (see `gateway`)."""


@asynccontextmanager
async def gateway(
    database_url: str,
    clock: FakeClock,
    upstream: httpx.AsyncBaseTransport,
    **overrides: Any,
) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """The app in process, and the SQL statements it sends (appended as they go)."""
    app = create_app(
        settings_for(database_url, **overrides),
        clock=clock,
        transport=upstream,
        sleep=Sleeps(clock).sleep,
    )
    statements: list[str] = []
    async with app.router.lifespan_context(app):
        engine = app.state.services.engine.sync_engine

        def record(*args: Any) -> None:
            # Only what the test's requests run (and the tasks they start): not the process's
            # background tasks, started before, such as its look at the database every half
            # second, which a loaded machine lets land anywhere between two reads.
            if _ASKED.get():
                statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", record)
        _ASKED.set(True)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.test",
            headers={"X-API-Key": API_KEY},
        ) as client:
            yield client, statements


def jobs_with_an_id(sim: Simulator, customer_id: str) -> int:
    """The simulator's jobs of a customer that the gateway can keep (a row may lack an id)."""
    return len({job_id_of(r) for r in sim.rows(customer_id)} - {None})


def simulator(customers: int = 4, **config: Any) -> tuple[Simulator, FakeClock]:
    sim_clock = FakeClock()
    return Simulator(SimulatorConfig(seed=7, customers=customers, **config), clock=sim_clock), (
        sim_clock
    )


async def test_a_repeated_read_and_a_304_ask_nothing_of_the_database(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, statements):
        first = await api.get("/jobs", params={"status": "failed", "limit": 100})
        assert first.status_code == 200
        statements.clear()
        again = await api.get("/jobs", params={"status": "failed", "limit": 100})
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
        assert statements == [], "a repeated read is answered from memory"
        revalidated = await api.get(
            "/jobs",
            params={"status": "failed", "limit": 100},
            headers={"If-None-Match": first.headers["etag"]},
        )
        assert revalidated.status_code == 304
        assert revalidated.content == b""
        assert statements == [], "a 304 needs no query"


async def test_only_a_refresh_that_changed_data_moves_the_answer(
    database_url: str, clock: FakeClock
) -> None:
    sim, sim_clock = simulator()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, statements):
        first = await api.get("/jobs", params={"limit": 500})
        walks = sum(sim.stats.walks.values())
        # Past the TTL the data is refreshed, but the upstream has nothing new.
        clock.advance(301)
        statements.clear()
        same = await api.get("/jobs", params={"limit": 500})
        assert sum(sim.stats.walks.values()) == walks + 4, "every customer was refreshed"
        assert same.headers["etag"] == first.headers["etag"]
        assert same.json()["items"] == first.json()["items"]
        assert not any("JOIN customers" in s for s in statements), (
            "the unchanged answer came from memory, not from a listing query"
        )
        # Now the upstream moves on: new runs start and finish.
        sim_clock.advance(6 * 3600)
        clock.advance(301)
        moved = await api.get("/jobs", params={"limit": 500})
        assert moved.headers["etag"] != first.headers["etag"]
        assert moved.json()["items"] != first.json()["items"]
        assert moved.json()["freshness"]["fresh"] == 4


async def test_a_change_of_one_customer_keeps_the_others_answers(
    database_url: str, clock: FakeClock
) -> None:
    sim, sim_clock = simulator()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    ids = sim.customer_ids()
    async with gateway(database_url, clock, upstream) as (api, statements):
        await api.get("/jobs")
        one = {"customer_id": ids[0], "limit": 500}
        other = {"customer_id": ids[1], "limit": 500}
        await api.get("/jobs", params=one)
        before = await api.get("/jobs", params=other)
        sim_clock.advance(6 * 3600)
        await api.get("/jobs", params={"customer_id": ids[0], "max_age": 0})
        statements.clear()
        after = await api.get("/jobs", params=other)
        assert after.headers["etag"] == before.headers["etag"]
        assert statements == [], "the other customer's answer was still good"
        changed = await api.get("/jobs", params=one)
        assert statements, "the changed customer's answer was rebuilt"
        assert changed.status_code == 200


async def test_sources_list_only_what_is_not_fresh(database_url: str, clock: FakeClock) -> None:
    sim, _ = simulator()
    failing = sim.customer_ids()[2]
    sim.config = SimulatorConfig(seed=7, customers=4, failing_customers=frozenset({failing}))
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, _):
        body = (await api.get("/jobs", params={"limit": 1})).json()
        assert body["freshness"] == {
            "customers": 4,
            "fresh": 3,
            "stale": 0,
            "refreshing": 0,
            "error": 1,
            "oldest_fetched_at": body["freshness"]["oldest_fetched_at"],
        }
        assert [(s["customer_id"], s["state"]) for s in body["sources"]] == [(failing, "error")]
        assert body["sources"][0]["error"]["upstream_status"] == 500


async def test_a_read_after_the_ttl_does_not_wait_with_the_background_refresh_on(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator()
    inner = httpx.ASGITransport(app=create_simulator_app(sim))
    gate = asyncio.Event()
    gate.set()

    class Held(httpx.AsyncBaseTransport):
        """The upstream, whose jobs pages wait while the gate is shut."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if "/avpt-products/jobs/" in request.url.path:
                await gate.wait()
            return await inner.handle_async_request(request)

    overrides = {"refresh_interval_seconds": 240, "request_wait_seconds": 30}
    async with gateway(database_url, clock, Held(), **overrides) as (api, _):
        first = await api.get("/jobs", params={"limit": 5})
        assert first.json()["freshness"]["fresh"] == 4
        gate.clear()  # from now on the upstream does not answer
        clock.advance(301)
        # A request that waited would wait 30 s for the held upstream; it must not wait.
        late = await asyncio.wait_for(api.get("/jobs", params={"limit": 5}), timeout=5)
        body = late.json()
        assert late.status_code == 200
        assert body["items"] == first.json()["items"], "the last good data is served"
        assert body["freshness"]["stale"] == 4
        assert {s["state"] for s in body["sources"]} == {"stale"}
        assert "detail=stale" in late.headers["cache-status"]
        gate.set()


async def test_a_hundred_customers_refreshed_at_once_lose_none(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator(customers=100, jobs_per_customer=150)
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream, request_wait_seconds=120) as (api, _):
        body = (await api.get("/jobs", params={"limit": 1})).json()
        assert body["freshness"]["error"] == 0
        assert body["freshness"]["fresh"] == 100
        customers = (await api.get("/customers", params={"limit": 500})).json()["items"]
        stored = {c["customer_id"]: sum(c["counts"].values()) for c in customers}
        assert stored == {cid: jobs_with_an_id(sim, cid) for cid in sim.customer_ids()}


async def test_a_walk_with_a_low_total_count_still_gets_every_job(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator(customers=2, jobs_per_customer=450, low_total_count=True)
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, _):
        customers = (await api.get("/customers")).json()["items"]
        stored = {c["customer_id"]: sum(c["counts"].values()) for c in customers}
        assert stored == {cid: jobs_with_an_id(sim, cid) for cid in sim.customer_ids()}
        assert min(stored.values()) > 400


async def test_odd_text_from_the_upstream_is_served(database_url: str, clock: FakeClock) -> None:
    sim, _ = simulator(customers=2)
    odd = sim.customer_ids()[0]
    sim.config = SimulatorConfig(seed=7, customers=2, odd_text_customers=frozenset({odd}))
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, _):
        body = (await api.get("/jobs", params={"customer_id": odd, "limit": 500})).json()
        assert body["freshness"]["fresh"] == 1 and body["sources"] == []
        names = {job["name"] for job in body["items"]}
        assert "\ufffd" in "".join(n for n in names if n)
        for job in body["items"]:
            assert "\x00" not in (job["name"] or "")


async def test_a_long_retry_after_backs_the_customer_off_until_then(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator(customers=2)
    limited = sim.customer_ids()[0]
    inner = httpx.ASGITransport(app=create_simulator_app(sim))
    asked: list[str] = []

    class RateLimited(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if f"/customers/{limited}/" in request.url.path:
                asked.append(limited)
                return httpx.Response(429, headers={"Retry-After": "3600"}, text="slow down")
            return await inner.handle_async_request(request)

    async with gateway(database_url, clock, RateLimited()) as (api, _):
        body = (await api.get("/jobs", params={"limit": 1})).json()
        assert [(s["customer_id"], s["state"]) for s in body["sources"]] == [(limited, "error")]
        assert body["sources"][0]["error"]["upstream_status"] == 429
        assert len(asked) == 1, "a Retry-After longer than the request can wait is not waited"
        clock.advance(timedelta(minutes=30).total_seconds())
        await api.get("/jobs", params={"limit": 1})
        assert len(asked) == 1, "backed off for as long as the upstream asked"
        clock.advance(timedelta(minutes=31).total_seconds())
        await api.get("/jobs", params={"limit": 1})
        assert len(asked) == 2


async def test_a_remembered_query_still_needs_a_key(database_url: str, clock: FakeClock) -> None:
    sim, _ = simulator()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream) as (api, _):
        url = "/jobs?status=failed&limit=3"
        assert (await api.get(url)).status_code == 200
        assert (await api.get(url, headers={"X-API-Key": "wrong"})).status_code == 401
        bearer = {"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"}
        assert (await api.get(url, headers=bearer)).status_code == 200
        anonymous = httpx.AsyncClient(transport=api._transport, base_url="http://gateway.test")
        async with anonymous:
            refused = await anonymous.get(url)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"


async def test_the_background_refresh_takes_every_customer_on_its_own(
    database_url: str, clock: FakeClock
) -> None:
    sim, _ = simulator()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    async with gateway(database_url, clock, upstream, refresh_interval_seconds=240) as (api, _):
        refresher = api._transport.app.state.services.refresher  # type: ignore[attr-defined]
        # Started with the app: every customer is walked without any request.
        for _ in range(500):
            if len(sim.stats.walks) == 4 and not any(map(refresher.in_flight, sim.customer_ids())):
                break
            await asyncio.sleep(0.01)
        assert sorted(sim.stats.walks) == sorted(sim.customer_ids())
        ids = await refresher.customer_ids()
        clock.advance(200)
        assert schedule.due(refresher, ids, clock()) == [], "not before 90% of the interval"
        clock.advance(41)
        assert sorted(schedule.due(refresher, ids, clock())) == sorted(ids)
        body = (await api.get("/jobs", params={"limit": 1})).json()
        assert body["freshness"]["fresh"] == 4, "refreshed before the TTL ran out"
