"""Caching and freshness: TTL hits, single flight, stale-if-error, backoff, restarts, ETags."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from app.access import keys
from app.api import schemas
from app.clock import iso
from app.simulator import Simulator, create_simulator_app
from app.store import repo
from tests.api.conftest import Gateway, Sleeps, services_of
from tests.api.test_jobs import all_items
from tests.clock import FakeClock


def states(body: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """The customers whose part of the answer is not fresh, and their states."""
    return {s["customer_id"]: s["state"] for s in body["sources"]}


def counts(body: dict) -> dict[str, int]:  # type: ignore[type-arg]
    """`freshness` without `oldest_fetched_at`: how many customers are in each state."""
    return {k: v for k, v in body["freshness"].items() if k != "oldest_fetched_at"}


def tally(customers: int, **states: int) -> dict[str, int]:
    """What `counts` should be: `customers` covered, in these states (the rest fresh)."""
    out = {"customers": customers, "stale": 0, "refreshing": 0, "error": 0} | states
    out.setdefault("fresh", customers - sum(states.values()))
    return {k: out[k] for k in ("customers", "fresh", "stale", "refreshing", "error")}


def complete_and_fresh(body: dict, customers: int) -> bool:  # type: ignore[type-arg]
    return counts(body) == tally(customers) and body["sources"] == []


async def test_a_second_request_inside_the_ttl_makes_no_upstream_call(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    fetched = iso(clock.now)
    first = await api.get("/jobs", params={"status": "failed"})
    assert "fwd=miss" in first.headers["cache-status"]
    calls = sim.stats.total
    clock.advance(299)
    second = await api.get("/jobs", params={"status": "failed"})
    assert sim.stats.total == calls
    assert second.headers["cache-status"] == "jobs-gateway; hit; ttl=1"
    assert second.json()["items"] == first.json()["items"]
    # Still fresh, 299 s old: served from the snapshot the first request took.
    assert complete_and_fresh(second.json(), len(sim.customer_ids()))
    assert second.json()["freshness"]["oldest_fetched_at"] == fetched


async def test_after_the_ttl_the_next_request_refreshes(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first_fetch = iso(clock.now)
    before = {i["id"]: i for i in await all_items(api, {"limit": 500})}
    clock.advance(301)
    body = (await api.get("/jobs")).json()
    assert sim.stats.walks == {cid: 2 for cid in sim.customer_ids()}
    assert complete_and_fresh(body, len(sim.customer_ids()))
    assert body["freshness"]["oldest_fetched_at"] == iso(clock.now), "every customer: 0 s old"
    # A job's fetched_at is when it was fetched as shown: the refresh found most jobs
    # unchanged and left them as they were; what it changed or added was fetched now.
    after = await all_items(api, {"limit": 500})
    kept = 0
    for item in after:
        old = before.get(item["id"])
        if old is not None and {**old, "fetched_at": None} == {**item, "fetched_at": None}:
            assert item["fetched_at"] == first_fetch, item["id"]
            kept += 1
        else:
            assert item["fetched_at"] == iso(clock.now), item["id"]
    assert 0 < kept < len(after), "some jobs changed in five minutes, most did not"


async def test_max_age_zero_forces_a_refresh(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    await api.get("/jobs")
    clock.advance(5)
    await api.get("/jobs", params={"max_age": 0})
    assert set(sim.stats.walks.values()) == {2}


async def test_a_failing_customer_beside_healthy_ones(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    bad, *good = sim.customer_ids()
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({bad}))
    async with gateway() as api:
        response = await api.get("/jobs", params={"limit": 500})
    assert response.status_code == 200
    body = response.json()
    # The healthy customers are counted as fresh; only the failing one is listed, and why.
    assert body["freshness"] == tally(4, error=1) | {"oldest_fetched_at": iso(clock.now)}
    [source] = body["sources"]
    assert source["customer_id"] == bad
    assert source["state"] == "error", "it has no good data yet"
    assert source["error"]["upstream_status"] == 500
    assert source["error"]["kind"]
    assert source["fetched_at"] is None
    assert {i["customer_id"] for i in body["items"]} == set(good)
    # The upstream was asked; one answer was a 500 and that customer has nothing to serve.
    assert response.headers["cache-status"] == (
        "jobs-gateway; fwd=miss; fwd-status=500; stored; detail=partial"
    )


async def test_stale_if_error_keeps_the_last_good_jobs(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    bad = sim.customer_ids()[0]
    good = await api.get("/jobs", params={"customer_id": bad, "limit": 500})
    good_ids = [i["id"] for i in good.json()["items"]]
    assert good_ids
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({bad}))
    clock.advance(600)
    body = (await api.get("/jobs", params={"customer_id": bad, "limit": 500})).json()
    [source] = body["sources"]
    assert source["state"] == "stale"
    assert source["error"]["upstream_status"] == 500
    assert source["age_seconds"] == 600
    assert [i["id"] for i in body["items"]] == good_ids
    # Past STALE_IF_ERROR_SECONDS the old data is no longer served.
    clock.advance(86400)
    body = (await api.get("/jobs", params={"customer_id": bad, "limit": 500})).json()
    assert body["sources"][0]["state"] == "error"
    assert body["items"] == []


async def test_a_failing_customer_is_not_asked_again_on_every_request(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    bad = sim.customer_ids()[0]
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({bad}))
    await api.get("/jobs", params={"customer_id": bad})
    asked = sim.stats.jobs_requests[bad]
    assert asked >= 1
    for _ in range(5):
        clock.advance(1)
        body = (await api.get("/jobs", params={"customer_id": bad})).json()
        assert body["sources"][0]["state"] == "error"
    assert sim.stats.jobs_requests[bad] == asked
    # Once the backoff has passed (never longer than the TTL), it is tried again.
    clock.advance(300)
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset())
    body = (await api.get("/jobs", params={"customer_id": bad})).json()
    assert sim.stats.jobs_requests[bad] > asked
    assert complete_and_fresh(body, 1)
    assert body["items"]


async def test_data_is_kept_across_a_restart(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    async with gateway() as api:
        before = (await api.get("/jobs", params={"limit": 500})).json()
    # The upstream goes down entirely while the service restarts.
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset(sim.customer_ids()))
    clock.advance(60)
    asked = sum(sim.stats.jobs_requests.values())
    async with gateway() as api:
        after = (await api.get("/jobs", params={"limit": 500})).json()
        customers = (await api.get("/customers")).json()
    assert [i["id"] for i in after["items"]] == [i["id"] for i in before["items"]]
    # Still inside the TTL: no upstream call, and every customer is fresh.
    assert sum(sim.stats.jobs_requests.values()) == asked
    assert complete_and_fresh(after, len(sim.customer_ids()))
    assert after["freshness"]["oldest_fetched_at"] == before["freshness"]["oldest_fetched_at"]
    assert {c["customer_name"] for c in customers["items"]} == {
        c["organization"] for c in sim.customers()
    }


async def test_a_slow_refresh_answers_with_what_the_store_has(
    gateway: Gateway, sim: Simulator
) -> None:
    # The upstream takes longer than the request is willing to wait (here: not at all).
    sim.config = dataclasses.replace(sim.config, latency_seconds=0.5)
    ids = ",".join(sim.customer_ids())
    async with gateway(request_wait_seconds=0, customer_ids=ids) as api:
        body = (await api.get("/jobs")).json()
    assert states(body) == dict.fromkeys(sim.customer_ids(), "refreshing")
    assert counts(body) == tally(4, refreshing=4)
    assert body["items"] == []


async def test_etag_and_304(api: httpx.AsyncClient, clock: FakeClock) -> None:
    first = await api.get("/jobs", params={"status": "failed"})
    etag = first.headers["etag"]
    clock.advance(30)  # age_seconds changes; the tag does not
    again = await api.get("/jobs", params={"status": "failed"}, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = await api.get("/jobs", params={"status": "finished"}, headers={"If-None-Match": etag})
    assert other.status_code == 200
    assert other.headers["etag"] != etag


async def test_etag_changes_when_the_data_does(api: httpx.AsyncClient, clock: FakeClock) -> None:
    first = await api.get("/jobs")
    clock.advance(6 * 3600)
    later = await api.get("/jobs", headers={"If-None-Match": first.headers["etag"]})
    assert later.status_code == 200
    assert later.headers["etag"] != first.headers["etag"]


async def test_job_detail_has_an_etag(api: httpx.AsyncClient) -> None:
    item = (await api.get("/jobs", params={"limit": 1})).json()["items"][0]
    path = f"/jobs/{item['customer_id']}/{item['job_id']}"
    first = await api.get(path)
    assert first.status_code == 200
    again = await api.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


async def test_customers_list_sources_and_counts(api: httpx.AsyncClient, sim: Simulator) -> None:
    body = (await api.get("/customers")).json()
    assert schemas.CustomerPage.model_validate(body).model_dump(mode="json") == body
    assert {c["customer_id"] for c in body["items"]} == set(sim.customer_ids())
    jobs = await all_items(api, {"limit": 500})
    for customer in body["items"]:
        mine = [j for j in jobs if j["customer_id"] == customer["customer_id"]]
        assert sum(customer["counts"].values()) == len(mine)
        assert customer["source"]["state"] == "fresh"
    assert body["next_cursor"] is None
    first = (await api.get("/customers", params={"limit": 3})).json()
    rest = (await api.get("/customers", params={"cursor": first["next_cursor"]})).json()
    assert [c["customer_id"] for c in first["items"] + rest["items"]] == sorted(sim.customer_ids())


async def test_configured_customer_ids_limit_the_scope(gateway: Gateway, sim: Simulator) -> None:
    chosen = sim.customer_ids()[1:3]
    async with gateway(customer_ids=",".join(chosen)) as api:
        body = (await api.get("/jobs", params={"limit": 500})).json()
    assert complete_and_fresh(body, len(chosen))
    assert {i["customer_id"] for i in body["items"]} == set(chosen)
    assert sim.stats.walks.keys() == set(chosen)


async def test_forbidden_and_malformed_customers_are_errors_of_their_own(
    gateway: Gateway, sim: Simulator
) -> None:
    forbidden, malformed, *good = sim.customer_ids()
    sim.config = dataclasses.replace(
        sim.config,
        forbidden_customers=frozenset({forbidden}),
        malformed_customers=frozenset({malformed}),
    )
    async with gateway() as api:
        response = await api.get("/jobs", params={"status": "finished", "limit": 500})
    assert response.status_code == 200
    body = response.json()
    by_id = {s["customer_id"]: s for s in body["sources"]}
    assert set(by_id) == {forbidden, malformed}, "the healthy customers are not listed"
    assert by_id[forbidden]["error"]["upstream_status"] == 403
    assert by_id[malformed]["error"]["kind"] == "malformed"
    assert {by_id[c]["state"] for c in (forbidden, malformed)} == {"error"}
    assert counts(body) == tally(4, error=2), "the others are fresh"
    assert {i["customer_id"] for i in body["items"]} == set(good)


async def test_rate_limits_and_flaky_upstreams_are_ridden_out(
    gateway: Gateway, sim: Simulator, sleeps: Sleeps
) -> None:
    sim.config = dataclasses.replace(sim.config, rate_limit_every=3, error_rate=0.2)
    async with gateway() as api:
        body = (await api.get("/jobs", params={"limit": 1})).json()
    assert complete_and_fresh(body, len(sim.customer_ids()))
    assert sim.stats.statuses[429] > 0
    assert 1.0 in sleeps.seconds, "the simulator's Retry-After: 1 is honoured"


async def test_an_upstream_down_after_a_restart_serves_the_stored_jobs_as_stale(
    gateway: Gateway, clock: FakeClock
) -> None:
    async with gateway() as api:
        before = await all_items(api, {"limit": 500})
    asked: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(503, headers={"Retry-After": "0"})

    clock.advance(600)
    async with gateway(transport=httpx.MockTransport(down)) as api:
        first = await api.get("/jobs", params={"limit": 500})
        listing_calls = sum("customers/batch" in p for p in asked)
        again = await api.get("/jobs", params={"limit": 500})
    assert first.status_code == again.status_code == 200
    assert counts(first.json()) == tally(4, stale=4)
    assert {s["state"] for s in first.json()["sources"]} == {"stale"}
    assert {s["error"]["upstream_status"] for s in first.json()["sources"]} == {503}
    assert [i["id"] for i in await_items(first, again)] == [i["id"] for i in before][:500]
    # Neither the listing nor the failing customers are asked again straight away.
    assert sum("customers/batch" in p for p in asked) == listing_calls
    assert first.headers["cache-status"] == "jobs-gateway; fwd=stale; fwd-status=503"
    assert again.headers["cache-status"] == "jobs-gateway; hit; ttl=-300; detail=stale"


def await_items(*responses: httpx.Response) -> list[dict]:  # type: ignore[type-arg]
    first, *rest = (r.json()["items"] for r in responses)
    assert all(items == first for items in rest)
    return first


class BlockedListing(httpx.AsyncBaseTransport):
    """The simulator, except that the customer listing hangs until released."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=create_simulator_app(sim))
        self.blocked = False
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.blocked and request.url.path.endswith("/customers/batch"):
            await self.release.wait()
        return await self.inner.handle_async_request(request)


async def test_a_slow_customer_listing_never_holds_up_a_request(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    upstream = BlockedListing(sim)
    async with gateway(transport=upstream) as api:
        await api.get("/jobs")
        upstream.blocked = True
        clock.advance(400)  # the customer list has expired: it is renewed in the background
        response = await asyncio.wait_for(api.get("/jobs", params={"limit": 1}), timeout=10)
        assert response.status_code == 200
        # Answered from the customer list known before, every customer of it covered.
        assert counts(response.json())["customers"] == len(sim.customer_ids())
        assert response.json()["items"]
        upstream.release.set()


async def test_the_first_listing_is_waited_for_at_most_request_wait_seconds(
    gateway: Gateway, sim: Simulator
) -> None:
    upstream = BlockedListing(sim)
    upstream.blocked = True
    async with gateway(transport=upstream, request_wait_seconds=0) as api:
        response = await asyncio.wait_for(api.get("/jobs"), timeout=10)
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        assert response.headers["retry-after"] == "10"
        upstream.blocked = False
        upstream.release.set()


async def test_refreshing_is_said_only_where_the_request_stopped_waiting(
    gateway: Gateway, sim: Simulator
) -> None:
    ids = ",".join(sim.customer_ids())
    async with gateway(request_wait_seconds=0, customer_ids=ids) as api:
        sim.config = dataclasses.replace(sim.config, latency_seconds=0)
        await api.get("/jobs", params={"max_age": 0})  # refreshes start; nobody waits
        # Let the in-process refreshes finish: their database work runs in threads, so give
        # it real time (the test's clock does not move, so nothing ages meanwhile).
        refresher = services_of(api).refresher
        for _ in range(1000):
            await asyncio.sleep(0.01)
            body = (await api.get("/jobs")).json()
            # Done: stored, and the walks over (their leases handed back), so that the next
            # request starts walks of its own instead of joining the last moments of these.
            walking = any(map(refresher.in_flight, sim.customer_ids()))
            if complete_and_fresh(body, 4) and not walking:
                break
        assert complete_and_fresh(body, 4)
        sim.config = dataclasses.replace(sim.config, latency_seconds=0.5)
        forced = (await api.get("/jobs", params={"max_age": 0})).json()
        assert states(forced) == dict.fromkeys(sim.customer_ids(), "refreshing")
        assert counts(forced) == tally(4, refreshing=4)
        # Someone else's refresh is in flight, but this request did not wait on it.
        cached = (await api.get("/jobs")).json()
        assert complete_and_fresh(cached, 4)


async def test_customers_answer_304_while_only_the_age_changes(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    first = await api.get("/customers")
    clock.advance(5)
    again = await api.get("/customers", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def names_and_ages(body: dict) -> dict[str, tuple[str | None, int | None]]:  # type: ignore[type-arg]
    return {
        c["customer_id"]: (c["customer_name"], c["source"]["age_seconds"]) for c in body["items"]
    }


async def test_the_kept_customers_answer_follows_ages_names_and_the_customer_list(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    """`/customers` is kept, and found without looking at every customer; what it shows still
    moves with the second (ages), a name another process stored, and the customer list."""
    async with gateway() as api:
        svc = services_of(api)
        first = (await api.get("/customers")).json()
        assert {age for _, age in names_and_ages(first).values()} == {0}
        clock.advance(5)
        assert {
            age for _, age in names_and_ages((await api.get("/customers")).json()).values()
        } == {5}
        # Another process lists the customers and stores a new name; this one hears of it
        # (app.refresh.replicas) and reloads the customer's state.
        renamed = sim.customer_ids()[0]
        async with svc.writer.transaction() as session:
            await repo.upsert_customers(session, [(renamed, "Renamed Elsewhere Ltd")])
        await svc.refresher.reload([renamed])
        body = (await api.get("/customers")).json()
        assert names_and_ages(body)[renamed] == ("Renamed Elsewhere Ltd", 5)
        jobs = (await api.get("/jobs", params={"customer_id": renamed, "limit": 500})).json()
        assert {j["customer_name"] for j in jobs["items"]} == {"Renamed Elsewhere Ltd"}
        everyone = await all_items(api, {"limit": 500})
        assert {j["customer_name"] for j in everyone if j["customer_id"] == renamed} == {
            "Renamed Elsewhere Ltd"
        }
        # The partner gains a customer: once the list is renewed (after the TTL), the next
        # answer has it, with its data.
        before = set(sim.customer_ids())
        sim.config = dataclasses.replace(sim.config, customers=len(before) + 1)
        clock.advance(300)
        await api.get("/customers")  # renews the list in the background, answers the old one
        listing = svc.refresher.directory.task
        assert listing is not None
        await listing
        body = (await api.get("/customers")).json()
        assert [c["customer_id"] for c in body["items"]] == sorted(sim.customer_ids())
        assert len(body["items"]) == len(before) + 1
        assert {c["source"]["state"] for c in body["items"]} == {"fresh"}
        paged = (await api.get("/customers", params={"limit": 2})).json()
        rest = (await api.get("/customers", params={"cursor": paged["next_cursor"]})).json()
        assert [c["customer_id"] for c in paged["items"] + rest["items"]] == sorted(
            sim.customer_ids()
        )


async def test_customers_with_max_age_refresh_only_their_page(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    first = (await api.get("/customers")).json()
    walks = dict(sim.stats.walks)
    page = (await api.get("/customers", params={"max_age": 0, "limit": 2})).json()
    assert [c["customer_id"] for c in page["items"]] == sorted(sim.customer_ids())[:2]
    walked = {cid for cid in sim.customer_ids() if sim.stats.walks[cid] > walks.get(cid, 0)}
    assert walked == {c["customer_id"] for c in page["items"]}
    rest = await api.get("/customers", params={"max_age": 0, "cursor": page["next_cursor"]})
    assert [c["customer_id"] for c in rest.json()["items"]] == sorted(sim.customer_ids())[2:]
    assert len(first["items"]) == len(sim.customer_ids())


async def test_a_limited_keys_kept_customers_view_still_goes_stale_with_time(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    """A key limited to some customers keeps its freshness view between requests too; time
    alone still moves it on: past the TTL its customers are refreshed, and only they."""
    mine = sorted(sim.customer_ids())[:2]
    svc = services_of(api)
    key = await keys.create_key(
        svc.writer, "two", customers=mine, rate_per_minute=None, now=svc.clock()
    )
    await svc.keys.reload(svc.sessions)
    limited = {"X-API-Key": key}
    first = await api.get("/customers", headers=limited)
    assert [c["customer_id"] for c in first.json()["items"]] == mine
    again = await api.get("/customers", headers=limited)
    assert again.headers["cache-status"].startswith("jobs-gateway; hit")
    walks = dict(sim.stats.walks)
    clock.advance(301)
    late = await api.get("/customers", headers=limited)
    assert "fwd=miss" in late.headers["cache-status"]
    walked = {cid for cid in sim.customer_ids() if sim.stats.walks[cid] > walks.get(cid, 0)}
    assert walked == set(mine)
    assert {c["source"]["state"] for c in late.json()["items"]} == {"fresh"}


class BlockedJobs(httpx.AsyncBaseTransport):
    """The simulator, except that jobs requests hang, once `blocked`, until released."""

    def __init__(self, sim: Simulator) -> None:
        self.inner = httpx.ASGITransport(app=create_simulator_app(sim))
        self.blocked = False
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.blocked and request.url.path.endswith("/jobs/batch"):
            self.arrived.set()
            await self.release.wait()
        return await self.inner.handle_async_request(request)


async def test_a_refresh_that_finishes_between_read_and_decision_is_not_repeated(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    """Single flight around a refresh's end: requests that come while the customers'
    refreshes are in flight join them, and one that comes just after they finished is
    answered from them; neither starts another walk."""
    upstream = BlockedJobs(sim)
    async with gateway(transport=upstream) as api:
        await api.get("/jobs")
        assert sim.stats.walks == {cid: 1 for cid in sim.customer_ids()}
        clock.advance(301)  # past the TTL: the next requests need every customer refreshed
        upstream.blocked = True
        first = asyncio.create_task(api.get("/jobs"))
        await asyncio.wait_for(upstream.arrived.wait(), timeout=10)  # the walks are under way
        second = asyncio.create_task(api.get("/jobs"))
        for _ in range(50):  # the second request reaches the refreshes in flight (no real time)
            await asyncio.sleep(0)
        assert not first.done() and not second.done(), "both wait on the refreshes"
        upstream.release.set()
        together = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert sim.stats.walks == {cid: 2 for cid in sim.customer_ids()}
        right_after = await api.get("/jobs")
    assert sim.stats.walks == {cid: 2 for cid in sim.customer_ids()}
    for response in (*together, right_after):
        assert response.status_code == 200
        assert complete_and_fresh(response.json(), len(sim.customer_ids()))
        assert response.json()["freshness"]["oldest_fetched_at"] == iso(clock.now)
    assert right_after.headers["cache-status"].startswith("jobs-gateway; hit")


async def test_a_reload_read_before_a_refresh_landed_does_not_take_it_back(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas reload what the database says of a customer when a snapshot lands (their
    own included, as the look at the database finds it). A reload that read the database
    before this process's own refresh landed, and took its time, must not replace the
    newer state with the older one: a fresh customer would be answered as stale."""
    await api.get("/jobs")
    customers = len(sim.customer_ids())
    refresher = services_of(api).refresher
    read, go_on = asyncio.Event(), asyncio.Event()
    customer_states = repo.customer_states

    async def slow_states(*args: Any, **kwargs: Any) -> dict[str, repo.CustomerState]:
        states = await customer_states(*args, **kwargs)
        read.set()
        await go_on.wait()  # a busy process: the answer is used a while after it was read
        return states

    monkeypatch.setattr(repo, "customer_states", slow_states)
    reload = asyncio.create_task(refresher.reload(sim.customer_ids()))
    await read.wait()
    monkeypatch.setattr(repo, "customer_states", customer_states)
    clock.advance(6 * 3600)
    refreshed = await api.get("/jobs", params={"max_age": 0})
    assert complete_and_fresh(refreshed.json(), customers)
    go_on.set()
    await reload
    # A day is more than enough: nothing is refreshed, the answer says what memory holds.
    answer = (await api.get("/jobs", params={"max_age": 86400})).json()
    assert complete_and_fresh(answer, customers)
    assert answer["freshness"]["oldest_fetched_at"] == iso(clock.now)
