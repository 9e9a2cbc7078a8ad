"""`POST /refresh` and `GET /refresh/{run_id}` as an operator or a PSA meets them: start a
refresh of every customer or of a few, follow it customer by customer until done, and see
which failed and why.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway
from tests.clock import FakeClock

FINISHED, FAILED = 2, 3
JOBS = (2, 0, 1)  # scripted jobs of the three customers, in order


def iso(t: Any) -> str:
    return str(t.strftime("%Y-%m-%dT%H:%M:%SZ"))


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Three customers with 2, 0 and 1 jobs, all put in place here."""
    sim = Simulator(SimulatorConfig(seed=7, customers=3, jobs_per_customer=0), clock=clock)
    for cid, count in zip(sim.customer_ids(), JOBS, strict=True):
        for n in range(count):
            sim.put_job(
                cid,
                f"job-{n}",
                status=(FINISHED, FAILED)[n % 2],
                start=clock.now - timedelta(hours=n + 1),
            )
    return sim


@pytest.fixture
def customers(sim: Simulator) -> list[str]:
    return sim.customer_ids()


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(cache_ttl_seconds=300) as client:
        yield client


async def start(api: httpx.AsyncClient, **kwargs: Any) -> str:
    response = await api.post("/refresh", **kwargs)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"run_id", "state"}
    assert body["state"] in ("running", "done")
    run_id: str = body["run_id"]
    assert run_id
    assert response.headers["location"] == f"/refresh/{run_id}"
    return run_id


async def until_done(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """Follow the run at its Location until it is done (yielding to the app in between)."""
    for _ in range(2000):
        response = await api.get(f"/refresh/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        assert run["run_id"] == run_id
        if run["state"] == "done":
            return run
        assert run["finished_at"] is None
        for customer in run["customers"]:
            assert customer["state"] in ("pending", "running", "ok", "error")
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} not done: {run}")


def assert_envelope(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert body["detail"]
    return body


@pytest.mark.parametrize(
    "body",
    [{}, {"json": {}}, {"json": {"customer_ids": None}}],
    ids=["no-body", "empty-object", "null-customer-ids"],
)
async def test_a_refresh_of_every_customer_runs_to_done_with_each_ones_job_count(
    api: httpx.AsyncClient,
    sim: Simulator,
    clock: FakeClock,
    customers: list[str],
    body: dict[str, Any],
) -> None:
    await api.get("/customers")  # the customer list is known; now count only the jobs walks
    sim.stats.reset()
    began = clock.now
    run_id = await start(api, **body)
    run = await until_done(api, run_id)
    assert run["started_at"] == iso(began)
    assert run["finished_at"] is not None
    assert run["finished_at"] >= run["started_at"]
    assert sorted(c["customer_id"] for c in run["customers"]) == sorted(customers)
    by_id = {c["customer_id"]: c for c in run["customers"]}
    for cid, count in zip(customers, JOBS, strict=True):
        assert by_id[cid] == {"customer_id": cid, "state": "ok", "jobs": count, "error": None}
    assert sim.stats.walks == {cid: 1 for cid in customers}

    # What the run fetched is served without asking the upstream again.
    jobs = await api.get("/jobs")
    assert jobs.status_code == 200
    assert len(jobs.json()["items"]) == sum(JOBS)
    assert jobs.json()["freshness"]["fresh"] == len(customers)
    assert sim.stats.walks == {cid: 1 for cid in customers}


async def test_a_refresh_of_one_customer_refreshes_only_it(
    api: httpx.AsyncClient, sim: Simulator, customers: list[str]
) -> None:
    first, _, third = customers
    await api.get("/customers")
    sim.stats.reset()
    run = await until_done(api, await start(api, json={"customer_ids": [third]}))
    assert run["customers"] == [{"customer_id": third, "state": "ok", "jobs": 1, "error": None}]
    assert sim.stats.walks == {third: 1}
    assert set(sim.stats.jobs_requests) == {third}
    # Named twice, refreshed once.
    sim.stats.reset()
    run = await until_done(api, await start(api, json={"customer_ids": [first, first]}))
    assert [c["customer_id"] for c in run["customers"]] == [first]
    assert run["customers"][0]["jobs"] == 2
    assert sim.stats.walks == {first: 1}


async def test_a_run_sees_what_changed_upstream(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    second = customers[1]
    run = await until_done(api, await start(api, json={"customer_ids": [second]}))
    assert run["customers"][0]["jobs"] == 0
    sim.put_job(second, "new", status=FAILED, start=clock.now)
    # Inside the TTL a read would not ask again; a refresh run does.
    run = await until_done(api, await start(api, json={"customer_ids": [second]}))
    assert run["customers"][0]["jobs"] == 1
    jobs = await api.get("/jobs", params={"customer_id": second})
    assert [j["job_id"] for j in jobs.json()["items"]] == ["new"]


async def test_a_failing_customer_is_an_error_and_the_others_are_ok(
    api: httpx.AsyncClient, sim: Simulator, customers: list[str]
) -> None:
    first, second, third = customers
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({second}))
    run = await until_done(api, await start(api))
    by_id = {c["customer_id"]: c for c in run["customers"]}
    assert by_id[first] == {"customer_id": first, "state": "ok", "jobs": 2, "error": None}
    assert by_id[third] == {"customer_id": third, "state": "ok", "jobs": 1, "error": None}
    failed = by_id[second]
    assert failed["state"] == "error"
    assert failed["jobs"] is None
    error = failed["error"]
    assert set(error) == {"kind", "message", "upstream_status"}
    assert error["kind"] == "http_status"
    assert error["upstream_status"] == 500
    assert "500" in error["message"]
    assert run["finished_at"] is not None


JSON = {"Content-Type": "application/json"}
TRUNCATED = b'{"customer_ids": ['


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"json": {"customer_ids": ["nobody"]}}, "customer_id"),
        ({"json": {"customer_ids": []}}, "customer_ids"),
        ({"json": {"customer_ids": ["a\x00b"]}}, "customer_id"),
        ({"json": {"customer_ids": "all"}}, "customer_ids"),
        ({"json": {"customer_ids": [1]}}, "customer_ids"),
        ({"json": {"customers": ["x"]}}, "customers"),
        ({"json": {"customer_ids": None, "force": True}}, "force"),
        ({"json": ["x"]}, "body"),
        ({"content": TRUNCATED, "headers": JSON}, "not valid JSON"),
        ({"content": b"not json", "headers": JSON}, "not valid JSON"),
    ],
    ids=[
        "unknown-customer",
        "empty-list",
        "nul",
        "not-a-list",
        "not-strings",
        "extra-field",
        "extra-field-beside",
        "not-an-object",
        "truncated-json",
        "malformed-json",
    ],
)
async def test_a_bad_request_is_422_naming_what_is_wrong_and_starts_nothing(
    api: httpx.AsyncClient, sim: Simulator, kwargs: dict[str, Any], names: str
) -> None:
    await api.get("/customers")
    sim.stats.reset()
    response = await api.post("/refresh", **kwargs)
    body = assert_envelope(response, 422, "invalid_parameter")
    assert names in body["detail"]
    await asyncio.sleep(0.01)
    assert sim.stats.walks == {}


async def test_an_unknown_run_is_404_in_the_error_envelope(api: httpx.AsyncClient) -> None:
    body = assert_envelope(await api.get("/refresh/no-such-run"), 404, "not_found")
    assert "no-such-run" in body["detail"]
    run_id = await start(api)
    await until_done(api, run_id)
    assert_envelope(await api.get(f"/refresh/{run_id}x"), 404, "not_found")


@pytest.mark.parametrize("key", ["", "nope"])
async def test_401_without_a_valid_key(api: httpx.AsyncClient, sim: Simulator, key: str) -> None:
    run_id = await start(api)
    await until_done(api, run_id)
    sim.stats.reset()
    headers = {"X-API-Key": key}
    assert_envelope(await api.post("/refresh", headers=headers), 401, "unauthorized")
    assert_envelope(
        await api.post("/refresh", json={"customer_ids": ["x"]}, headers=headers),
        401,
        "unauthorized",
    )
    assert_envelope(await api.get(f"/refresh/{run_id}", headers=headers), 401, "unauthorized")
    assert_envelope(await api.get("/refresh/no-such-run", headers=headers), 401, "unauthorized")
    assert sim.stats.total == 0, "an unauthorized request starts no refresh"


@pytest.mark.parametrize("content", [b'{"customer_ids": [', b"not json"])
async def test_malformed_json_is_422_naming_the_request_body(
    api: httpx.AsyncClient, content: bytes
) -> None:
    response = await api.post("/refresh", content=content, headers=JSON)
    body = assert_envelope(response, 422, "invalid_parameter")
    assert "body" in body["detail"]


async def test_the_newest_200_runs_are_kept(api: httpx.AsyncClient, customers: list[str]) -> None:
    one = {"json": {"customer_ids": [customers[1]]}}
    first = await start(api, **one)
    await until_done(api, first)
    later = [await start(api, **one) for _ in range(199)]
    assert (await api.get(f"/refresh/{first}")).status_code == 200
    newest = await start(api, **one)
    assert_envelope(await api.get(f"/refresh/{first}"), 404, "not_found")
    for run_id in (later[0], later[-1], newest):
        await until_done(api, run_id)
