"""The simulator's HTTP face: the upstream's endpoints, auth, paging, filters and faults."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import types
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig, create_simulator_app, run_simulator
from app.simulator import app as simulator_app

NOW = datetime(2025, 9, 11, 12, 0, tzinfo=UTC)
CUSTOMERS = "/partner/external/v3/general/customers/batch"


def jobs_path(customer_id: str) -> str:
    return f"/partner/external/v3/general/customers/{customer_id}/avpt-products/jobs/batch"


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Simulator:
    return Simulator(SimulatorConfig(customers=4), clock=clock)


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_simulator_app(sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as c:
        yield c


async def get_token(client: httpx.AsyncClient, secret: str = "demo-secret") -> str:
    response = await client.post(
        "/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "demo-client",
            "client_secret": secret,
            "scope": "elements.jobs.read.all elements.customers.read.all",
        },
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
async def authed(client: httpx.AsyncClient) -> httpx.AsyncClient:
    client.headers["Authorization"] = f"Bearer {await get_token(client)}"
    return client


async def walk(
    client: httpx.AsyncClient, customer_id: str, page_size: int, body: Any = None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for page_index in range(1, 1000):
        response = await client.post(
            jobs_path(customer_id),
            params={"pageIndex": page_index, "pageSize": page_size},
            json=body,
        )
        assert response.status_code == 200
        page = response.json()
        assert page["metadata"]["pageIndex"] == page_index
        assert page["metadata"]["pageSize"] == page_size
        if not page["data"]:
            return rows
        rows += page["data"]
    raise AssertionError("the walk never ended")


# --- token --------------------------------------------------------------------------------


async def test_token_for_good_credentials(client: httpx.AsyncClient, sim: Simulator) -> None:
    response = await client.post(
        "/connect/token",
        data={"grant_type": "client_credentials", "client_id": "demo-client"}
        | {"client_secret": "demo-secret", "scope": "elements.jobs.read.all"},
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == sim.config.token_ttl_seconds
    assert body["scope"] == "elements.jobs.read.all"
    assert len(body["access_token"]) >= 32
    assert response.headers["cache-control"] == "no-store"


async def test_token_accepts_http_basic_client_credentials(client: httpx.AsyncClient) -> None:
    basic = base64.b64encode(b"demo-client:demo-secret").decode()
    response = await client.post(
        "/connect/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200
    assert response.json()["scope"] == "elements.jobs.read.all elements.customers.read.all"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"client_id": "demo-client", "client_secret": "wrong"}, "invalid_client"),
        ({"client_id": "someone", "client_secret": "demo-secret"}, "invalid_client"),
        ({"client_id": "demo-client"}, "invalid_client"),
        ({}, "invalid_client"),
    ],
)
async def test_bad_credentials_are_invalid_client(
    client: httpx.AsyncClient, form: dict[str, str], error: str
) -> None:
    response = await client.post("/connect/token", data={"grant_type": "client_credentials"} | form)
    assert response.status_code == 400
    assert response.json() == {"error": error}


async def test_other_grant_types_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/connect/token",
        data={"grant_type": "password", "client_id": "demo-client", "client_secret": "demo-secret"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


# --- auth on the API ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [CUSTOMERS, "jobs"])
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc", "Bearer"])
async def test_api_needs_a_valid_bearer_token(
    client: httpx.AsyncClient, sim: Simulator, path: str, authorization: str | None
) -> None:
    url = jobs_path(sim.customer_ids()[0]) if path == "jobs" else path
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.post(url, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.content == b""


async def test_expired_token_gets_401_and_a_new_one_works(
    authed: httpx.AsyncClient, sim: Simulator, clock: Clock
) -> None:
    url = jobs_path(sim.customer_ids()[0])
    clock.advance(seconds=sim.config.token_ttl_seconds - 1)
    assert (await authed.post(url)).status_code == 200
    clock.advance(seconds=1)
    expired = await authed.post(url)
    assert expired.status_code == 401
    assert "invalid_token" in expired.headers["www-authenticate"]
    authed.headers["Authorization"] = f"Bearer {await get_token(authed)}"
    assert (await authed.post(url)).status_code == 200


async def test_short_ttl_is_reported_and_enforced(clock: Clock) -> None:
    sim = Simulator(SimulatorConfig(customers=1, token_ttl_seconds=5), clock=clock)
    transport = httpx.ASGITransport(app=create_simulator_app(sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        response = await client.post(
            "/connect/token",
            data={"grant_type": "client_credentials"}
            | {"client_id": "demo-client", "client_secret": "demo-secret"},
        )
        assert response.json()["expires_in"] == 5
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        clock.advance(seconds=5)
        response = await client.post(CUSTOMERS, headers=headers)
        assert response.status_code == 401


async def test_forgotten_tokens_get_401(authed: httpx.AsyncClient, sim: Simulator) -> None:
    sim.expire_tokens()
    assert (await authed.post(CUSTOMERS)).status_code == 401


# --- customers ----------------------------------------------------------------------------


async def test_customers_endpoint_lists_the_simulators_customers(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    response = await authed.post(CUSTOMERS, params={"pageIndex": 1, "pageSize": 100})
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == sim.customers()
    assert body["metadata"] == {"pageIndex": 1, "pageSize": 100, "totalCount": 4}


async def test_customers_endpoint_pages_and_filters(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    ids = sim.customer_ids()
    page2 = (await authed.post(CUSTOMERS, params={"pageIndex": 2, "pageSize": 3})).json()
    assert [c["id"] for c in page2["data"]] == ids[3:]
    assert page2["metadata"]["totalCount"] == 4
    wanted = {"customerIds": [ids[2], ids[0], "not-a-customer"]}
    filtered = (await authed.post(CUSTOMERS, json=wanted)).json()
    assert [c["id"] for c in filtered["data"]] == [ids[0], ids[2]]
    assert filtered["metadata"]["totalCount"] == 2


# --- jobs: paging -------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 7, 50, 100])
async def test_pages_cover_every_row_exactly_once_in_order(
    authed: httpx.AsyncClient, sim: Simulator, page_size: int
) -> None:
    customer_id = sim.customer_ids()[0]
    assert await walk(authed, customer_id, page_size) == sim.jobs(customer_id)


async def test_paging_defaults_and_page_past_the_data(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    customer_id = sim.customer_ids()[1]
    total = len(sim.jobs(customer_id))
    first = (await authed.post(jobs_path(customer_id))).json()
    assert first["metadata"] == {"pageIndex": 1, "pageSize": 50, "totalCount": total}
    assert first["data"] == sim.jobs(customer_id)[:50]
    past = await authed.post(jobs_path(customer_id), params={"pageIndex": 99, "pageSize": 100})
    assert past.status_code == 200
    assert past.json() == {
        "data": [],
        "metadata": {"pageIndex": 99, "pageSize": 100, "totalCount": total},
    }


async def test_query_names_are_case_insensitive(authed: httpx.AsyncClient, sim: Simulator) -> None:
    customer_id = sim.customer_ids()[0]
    response = await authed.post(f"{jobs_path(customer_id)}?pageindex=2&PAGESIZE=5")
    assert response.json()["metadata"]["pageIndex"] == 2
    assert response.json()["data"] == sim.jobs(customer_id)[5:10]


@pytest.mark.parametrize("path", [CUSTOMERS, "jobs"])
@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": 101},
        {"pageSize": 1000},
        {"pageSize": 0},
        {"pageIndex": 0},
        {"pageIndex": -1},
        {"pageSize": "ten"},
        {"pageIndex": "1.5"},
    ],
)
async def test_bad_paging_is_refused_with_400(
    authed: httpx.AsyncClient, sim: Simulator, path: str, params: dict[str, Any]
) -> None:
    url = jobs_path(sim.customer_ids()[0]) if path == "jobs" else path
    response = await authed.post(url, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert list(response.json()["errors"]) == [next(iter(params))]


async def test_unknown_customer_is_404(authed: httpx.AsyncClient) -> None:
    response = await authed.post(jobs_path(str(uuid.uuid4())))
    assert response.status_code == 404


async def test_data_moves_with_the_clock(
    authed: httpx.AsyncClient, sim: Simulator, clock: Clock
) -> None:
    customer_id = sim.customer_ids()[0]
    before = await walk(authed, customer_id, 100)
    clock.advance(hours=12)
    authed.headers["Authorization"] = f"Bearer {await get_token(authed)}"  # the old one expired
    after = await walk(authed, customer_id, 100)
    assert after == sim.jobs(customer_id)
    assert {r["jobId"] for r in after} - {r["jobId"] for r in before}


# --- jobs: filters ------------------------------------------------------------------------


async def test_job_type_and_module_filters(authed: httpx.AsyncClient, sim: Simulator) -> None:
    customer_id = sim.customer_ids()[0]
    rows = sim.jobs(customer_id)
    job_type, module = rows[1]["jobType"], rows[1]["jobModule"]
    by_type = await walk(authed, customer_id, 100, {"jobType": job_type})
    assert by_type == [r for r in rows if r["jobType"] == job_type]
    by_module = await walk(authed, customer_id, 100, {"jobModule": module})
    assert by_module == [r for r in rows if r["jobModule"] == module]
    both = await walk(authed, customer_id, 100, {"jobType": job_type, "jobModule": module})
    assert both == [r for r in rows if (r["jobType"], r["jobModule"]) == (job_type, module)]
    assert 0 < len(both) < len(by_type) <= len(rows)
    nothing = await authed.post(jobs_path(customer_id), json={"jobType": 12345})
    assert nothing.json()["data"] == []
    assert nothing.json()["metadata"]["totalCount"] == 0
    unfiltered = await walk(authed, customer_id, 100, {"jobType": None})
    assert unfiltered == rows


async def test_filter_property_names_are_case_insensitive(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    customer_id = sim.customer_ids()[0]
    rows = sim.jobs(customer_id)
    response = await authed.post(jobs_path(customer_id), json={"JobType": rows[1]["jobType"]})
    assert all(r["jobType"] == rows[1]["jobType"] for r in response.json()["data"])


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b'{"jobType": "7"}', b'{"jobModule": true}']
)
async def test_bad_bodies_are_refused_with_400(
    authed: httpx.AsyncClient, sim: Simulator, content: bytes
) -> None:
    response = await authed.post(
        jobs_path(sim.customer_ids()[0]),
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400


# --- request id ---------------------------------------------------------------------------


async def test_every_response_carries_a_fresh_request_id(
    client: httpx.AsyncClient, sim: Simulator
) -> None:
    responses = [
        await client.post("/connect/token", data={"grant_type": "client_credentials"}),
        await client.post(CUSTOMERS),  # 401
        await client.get("/nowhere"),  # 404 from the router
        await client.get(CUSTOMERS),  # 405
    ]
    client.headers["Authorization"] = f"Bearer {await get_token(client)}"
    responses.append(await client.post(jobs_path(sim.customer_ids()[0])))
    ids = [r.headers["request-id"] for r in responses]
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == len(ids)
    assert [r.request_id for r in sim.stats.log][-1] == ids[-1]


# --- faults -------------------------------------------------------------------------------


def reconfigure(sim: Simulator, **changes: Any) -> None:
    sim.config = dataclasses.replace(sim.config, **changes)


async def test_error_rate_one_makes_every_api_request_503(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    reconfigure(sim, error_rate=1.0)
    assert (await authed.post(CUSTOMERS)).status_code == 503
    assert (await authed.post(jobs_path(sim.customer_ids()[0]))).status_code == 503
    assert (await get_token(authed)) != ""  # the token endpoint is spared


async def error_pattern(seed: int) -> list[int]:
    sim = Simulator(SimulatorConfig(seed=seed, customers=1, error_rate=0.4), clock=Clock())
    transport = httpx.ASGITransport(app=create_simulator_app(sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        client.headers["Authorization"] = f"Bearer {await get_token(client)}"
        url = jobs_path(sim.customer_ids()[0])
        return [(await client.post(url)).status_code for _ in range(40)]


async def test_error_rate_is_seeded_and_partial() -> None:
    pattern = await error_pattern(42)
    assert pattern == await error_pattern(42)
    assert set(pattern) == {200, 503}
    assert 5 <= pattern.count(503) <= 30


async def test_failing_customers_always_500_and_others_are_served(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    bad, good = sim.customer_ids()[:2]
    reconfigure(sim, failing_customers=frozenset({bad}))
    for _ in range(3):
        assert (await authed.post(jobs_path(bad))).status_code == 500
    assert (await authed.post(jobs_path(good))).status_code == 200
    reconfigure(sim, failing_customers=frozenset())
    assert (await authed.post(jobs_path(bad))).status_code == 200


async def test_forbidden_customers_get_403(authed: httpx.AsyncClient, sim: Simulator) -> None:
    outside = sim.customer_ids()[3]
    reconfigure(sim, forbidden_customers=frozenset({outside}))
    assert (await authed.post(jobs_path(outside))).status_code == 403
    assert (await authed.post(jobs_path(sim.customer_ids()[0]))).status_code == 200


async def test_every_nth_jobs_request_is_rate_limited(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    reconfigure(sim, rate_limit_every=3)
    url = jobs_path(sim.customer_ids()[0])
    responses = [await authed.post(url) for _ in range(7)]
    assert [r.status_code for r in responses] == [200, 200, 429, 200, 200, 429, 200]
    assert responses[2].headers["retry-after"] == "1"
    assert (await authed.post(CUSTOMERS)).status_code == 200  # only jobs requests count


async def test_malformed_customers_answer_broken_pages_in_turn(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    broken = sim.customer_ids()[2]
    reconfigure(sim, malformed_customers=frozenset({broken}))
    responses = [await authed.post(jobs_path(broken)) for _ in range(4)]
    assert all(r.status_code == 200 for r in responses)
    truncated, html, wrong_shape, again = responses
    assert truncated.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.content)
    assert html.headers["content-type"].startswith("text/html")
    assert not isinstance(wrong_shape.json()["data"], list)
    assert again.content == truncated.content
    assert (await authed.post(jobs_path(sim.customer_ids()[0]))).json()["data"]


async def test_low_total_count_under_reports_yet_the_pages_hold_every_row(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    reconfigure(sim, jobs_per_customer=450, low_total_count=True)
    customer_id = sim.customer_ids()[0]
    params = {"pageIndex": 1, "pageSize": 100}

    first = (await authed.post(jobs_path(customer_id), params=params)).json()
    customers = (await authed.post(CUSTOMERS, params=params)).json()

    assert first["metadata"] == {"pageIndex": 1, "pageSize": 100, "totalCount": 225}
    assert await walk(authed, customer_id, 100) == sim.jobs(customer_id)  # 5 pages, not 3
    # Never less than page 1 holds: 4 customers on one page still say 4.
    assert customers["metadata"]["totalCount"] == 4
    reconfigure(sim, low_total_count=False)
    first = (await authed.post(jobs_path(customer_id), params=params)).json()
    assert first["metadata"]["totalCount"] == 450


async def test_odd_text_customers_send_escaped_odd_names_and_1e400(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    odd_id, plain_id = sim.customer_ids()[:2]
    reconfigure(sim, odd_text_customers=frozenset({odd_id}))
    params = {"pageIndex": 1, "pageSize": 100}

    response = await authed.post(jobs_path(odd_id), params=params)
    plain = await authed.post(jobs_path(plain_id), params=params)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.content
    assert body.isascii()
    assert b'"name":"\\ud800"' in body  # the six characters \ud800, not UTF-8 bytes
    assert b'"name":"Nightly\\u0000backup"' in body
    assert b'"totalCount":1e400,' in body
    assert b"Infinity" not in body
    rows = json.loads(body)["data"]
    assert rows == sim.jobs(odd_id)[:100]
    names = [row["name"] for row in rows]
    assert "\ud800" in names
    assert any("\x00" in name for name in names)
    assert rows[1]["totalCount"] == float("inf")
    assert b"1e400" not in plain.content
    assert b"\\ud800" not in plain.content
    # Every job still has its id, so a walk sees them all.
    assert await walk(authed, odd_id, 100) == sim.jobs(odd_id)


async def test_latency_delays_api_responses(
    authed: httpx.AsyncClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer waits for a sleep of `latency_seconds`: told by the order of things, not
    by a clock, so a loaded machine changes nothing."""
    happened: list[str] = []
    sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        happened.append(f"sleep {seconds}")
        await sleep(seconds)
        happened.append("woke")

    monkeypatch.setattr(simulator_app, "asyncio", types.SimpleNamespace(sleep=recorded))
    reconfigure(sim, latency_seconds=0.05)
    response = await authed.post(jobs_path(sim.customer_ids()[0]))
    happened.append(f"answered {response.status_code}")
    assert happened == ["sleep 0.05", "woke", "answered 200"]
    # Without latency, nothing waits.
    happened.clear()
    reconfigure(sim, latency_seconds=0)
    response = await authed.post(jobs_path(sim.customer_ids()[0]))
    happened.append(f"answered {response.status_code}")
    assert happened == ["answered 200"]


async def test_slow_customers_wait_longer_and_the_others_do_not(
    authed: httpx.AsyncClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slow_customers` wait `slow_latency_seconds` more for each jobs page (a test's long
    walks), on top of the latency every customer has; the other customers do not."""
    happened: list[str] = []
    sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        happened.append(f"sleep {seconds}")
        await sleep(seconds)

    monkeypatch.setattr(simulator_app, "asyncio", types.SimpleNamespace(sleep=recorded))
    slow, other = sim.customer_ids()[:2]
    reconfigure(
        sim,
        latency_seconds=0.01,
        slow_customers=frozenset({slow}),
        slow_latency_seconds=0.03,
    )
    for cid in (slow, other):
        response = await authed.post(jobs_path(cid))
        happened.append(f"answered {cid} {response.status_code}")
    assert happened == [
        "sleep 0.01",
        "sleep 0.03",
        f"answered {slow} 200",
        "sleep 0.01",
        f"answered {other} 200",
    ]


# --- stats --------------------------------------------------------------------------------


async def test_stats_count_requests_walks_and_concurrency(
    authed: httpx.AsyncClient, sim: Simulator
) -> None:
    first, second = sim.customer_ids()[:2]
    sim.stats.reset()
    rows = await walk(authed, first, 50)
    pages = -(-len(rows) // 50) + 1  # the walk ends on an empty page
    assert sim.stats.walks == {first: 1}
    assert sim.stats.jobs_requests == {first: pages}
    assert sim.stats.requests == {"jobs": pages}
    assert sim.stats.statuses == {200: pages}
    assert [r.page_index for r in sim.stats.log] == list(range(1, pages + 1))

    reconfigure(sim, latency_seconds=0.02)
    sim.stats.reset()
    await asyncio.gather(*(authed.post(jobs_path(second)) for _ in range(5)))
    assert sim.stats.max_in_flight == 5
    assert sim.stats.in_flight == 0
    assert sim.stats.walks == {second: 5}
    assert sim.stats.total == 5


# --- serving ------------------------------------------------------------------------------


def test_run_simulator_serves_the_app_with_uvicorn(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.append((app, kwargs))

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    run_simulator("127.0.0.1", 8099, sim)
    ((app, kwargs),) = calls
    assert app.state.simulator is sim
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["port"] == 8099
    assert simulator_app.JOBS_PATH.startswith("/partner/external/v3/")
