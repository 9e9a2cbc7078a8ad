"""Caching and freshness: TTL hits, single flight, stale-if-error, backoff, restarts, ETags."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from app.api import schemas
from app.simulator import Simulator, create_simulator_app
from app.store import repo
from tests.api.conftest import Gateway, Sleeps
from tests.api.test_jobs import all_items
from tests.clock import FakeClock


def states(body: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {s["customer_id"]: s["state"] for s in body["sources"]}


async def test_a_second_request_inside_the_ttl_makes_no_upstream_call(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first = await api.get("/jobs", params={"status": "failed"})
    assert "fwd=miss" in first.headers["cache-status"]
    calls = sim.stats.total
    clock.advance(299)
    second = await api.get("/jobs", params={"status": "failed"})
    assert sim.stats.total == calls
    assert second.headers["cache-status"] == "jobs-gateway; hit; ttl=1"
    assert second.json()["items"] == first.json()["items"]
    assert all(s["age_seconds"] == 299 for s in second.json()["sources"])


async def test_after_the_ttl_the_next_request_refreshes(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    await api.get("/jobs")
    clock.advance(301)
    body = (await api.get("/jobs")).json()
    assert sim.stats.walks == {cid: 2 for cid in sim.customer_ids()}
    assert all(s["state"] == "fresh" and s["age_seconds"] == 0 for s in body["sources"])


async def test_max_age_zero_forces_a_refresh(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    await api.get("/jobs")
    clock.advance(5)
    await api.get("/jobs", params={"max_age": 0})
    assert set(sim.stats.walks.values()) == {2}


async def test_a_failing_customer_beside_healthy_ones(gateway: Gateway, sim: Simulator) -> None:
    bad, *good = sim.customer_ids()
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({bad}))
    async with gateway() as api:
        response = await api.get("/jobs", params={"limit": 500})
    assert response.status_code == 200
    body = response.json()
    by_id = {s["customer_id"]: s for s in body["sources"]}
    assert by_id[bad]["state"] == "error"
    assert by_id[bad]["error"]["upstream_status"] == 500
    assert by_id[bad]["error"]["kind"]
    assert by_id[bad]["fetched_at"] is None
    assert all(by_id[c]["state"] == "fresh" for c in good)
    assert {i["customer_id"] for i in body["items"]} == set(good)
    # The upstream was asked; no old data is served, but one answer was a 500.
    assert response.headers["cache-status"] == "jobs-gateway; fwd=miss; fwd-status=500; stored"


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
    assert body["sources"][0]["state"] == "fresh"


async def test_data_is_kept_across_a_restart(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    async with gateway() as api:
        before = (await api.get("/jobs", params={"limit": 500})).json()
    # The upstream goes down entirely while the service restarts.
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset(sim.customer_ids()))
    clock.advance(60)
    async with gateway() as api:
        after = (await api.get("/jobs", params={"limit": 500})).json()
        customers = (await api.get("/customers")).json()
    assert [i["id"] for i in after["items"]] == [i["id"] for i in before["items"]]
    assert set(states(after).values()) == {"fresh"}, "still inside the TTL: no upstream call"
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
    assert set(states(body).values()) == {"refreshing"}
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
    assert [s["customer_id"] for s in body["sources"]] == chosen
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
    by_id = {s["customer_id"]: s for s in response.json()["sources"]}
    assert by_id[forbidden]["error"]["upstream_status"] == 403
    assert by_id[malformed]["error"]["kind"] == "malformed"
    assert {by_id[c]["state"] for c in (forbidden, malformed)} == {"error"}
    assert all(by_id[c]["state"] == "fresh" for c in good)
    assert {i["customer_id"] for i in response.json()["items"]} == set(good)


async def test_rate_limits_and_flaky_upstreams_are_ridden_out(
    gateway: Gateway, sim: Simulator, sleeps: Sleeps
) -> None:
    sim.config = dataclasses.replace(sim.config, rate_limit_every=3, error_rate=0.2)
    async with gateway() as api:
        body = (await api.get("/jobs", params={"limit": 1})).json()
    assert {s["state"] for s in body["sources"]} == {"fresh"}
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
        assert {s["customer_id"] for s in response.json()["sources"]} == set(sim.customer_ids())
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
        for _ in range(200):  # let the in-process refreshes finish (no real time passes)
            await asyncio.sleep(0)
            body = (await api.get("/jobs")).json()
            if {s["state"] for s in body["sources"]} == {"fresh"}:
                break
        sim.config = dataclasses.replace(sim.config, latency_seconds=0.5)
        forced = (await api.get("/jobs", params={"max_age": 0})).json()
        assert set(states(forced).values()) == {"refreshing"}
        # Someone else's refresh is in flight, but this request did not wait on it.
        cached = (await api.get("/jobs")).json()
        assert set(states(cached).values()) == {"fresh"}


async def test_customers_answer_304_while_only_the_age_changes(
    api: httpx.AsyncClient, clock: FakeClock
) -> None:
    first = await api.get("/customers")
    clock.advance(5)
    again = await api.get("/customers", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


async def test_a_refresh_that_finishes_between_read_and_decision_is_not_repeated(
    gateway: Gateway, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race behind single flight: a request read the store just before another
    request's refresh was written, and decides after that refresh has finished."""
    cid = sim.customer_ids()[0]
    real = repo.customer_states
    reads: list[dict[str, repo.CustomerState]] = []

    async def states_read_too_early(
        session: Any, customer_ids: Any = None
    ) -> dict[str, repo.CustomerState]:
        result = await real(session, customer_ids)
        reads.append(result)
        # The third read (the second request's) sees the store as the first read did.
        return reads[0] if len(reads) == 3 else result

    async with gateway(customer_ids=cid) as api:
        monkeypatch.setattr(repo, "customer_states", states_read_too_early)
        await api.get("/jobs")
        body = (await api.get("/jobs")).json()
    assert len(reads) >= 3
    assert sim.stats.walks[cid] == 1
    assert states(body) == {cid: "fresh"}
