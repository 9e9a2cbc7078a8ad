"""AvePointClient against a respx-faked upstream: pages, concurrency, tokens, retries, errors.

Nothing here waits for real: the client gets a fake `sleep` that records the delay and moves
a fake `clock` forward, and the faked endpoints only yield to the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import traceback
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from app.upstream import (
    AvePointClient,
    RetryPolicy,
    TokenProvider,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
)

BASE = "https://graph.test"
TOKEN_URL = "https://identity.test/connect/token"
CLIENT_ID = "app-client-id"
SECRET = "very-secret-client-secret-42"
JOBS_PATH = r"^/partner/external/v3/general/customers/(?P<customer>[^/]+)/avpt-products/jobs/batch$"
CUSTOMERS_PATH = "/partner/external/v3/general/customers/batch"
MISSING = object()

Script = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """A monotonic clock that only the fake sleep (and fake request time) moves."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class JobsCall:
    customer: str
    page: int
    page_size: int
    body: dict[str, Any]
    authorization: str | None


@dataclass
class FakeUpstream:
    """The identity server and the jobs/customers endpoints, scriptable per request."""

    time: FakeTime
    jobs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    scripted: dict[tuple[str, int], deque[Script]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    token_script: deque[Script] = field(default_factory=deque)
    calls: list[JobsCall] = field(default_factory=list)
    token_forms: list[dict[str, list[str]]] = field(default_factory=list)
    issued: int = 0
    # Tokens the API accepts; None accepts any.
    accepted: set[str] | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    finished: list[tuple[str, int]] = field(default_factory=list)
    request_seconds: float = 0.0
    customers: list[dict[str, Any]] = field(default_factory=list)
    customer_calls: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def script(self, customer: str, page: int, *responses: Script) -> None:
        self.scripted[(customer, page)].extend(responses)

    async def token(self, request: httpx.Request) -> httpx.Response:
        self.token_forms.append(parse_qs(request.content.decode()))
        for _ in range(3):
            await asyncio.sleep(0)
        if self.token_script:
            return self.token_script.popleft()(request)
        self.issued += 1
        return httpx.Response(
            200, json={"access_token": f"token-{self.issued}", "expires_in": 3600}
        )

    async def jobs_batch(self, request: httpx.Request, customer: str) -> httpx.Response:
        params = request.url.params
        page, size = int(params["pageIndex"]), int(params["pageSize"])
        self.calls.append(
            JobsCall(
                customer,
                page,
                size,
                json.loads(request.content),
                request.headers.get("authorization"),
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            self.time.now += self.request_seconds
        finally:
            self.in_flight -= 1
            self.finished.append((customer, page))
        queue = self.scripted.get((customer, page))
        if queue:
            return queue.popleft()(request)
        token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
        if self.accepted is not None and token not in self.accepted:
            return httpx.Response(401, headers={"request-id": f"denied-{page}"})
        rows = self.jobs.get(customer, [])
        metadata: dict[str, Any] = {"pageIndex": page, "pageSize": size}
        total = self.totals.get(customer, len(rows))
        if total is not MISSING:
            metadata["totalCount"] = total
        return httpx.Response(
            200,
            json={"data": rows[(page - 1) * size : page * size], "metadata": metadata},
            headers={"request-id": f"rid-{customer}-{page}"},
        )

    async def customers_batch(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        page, size = int(params["pageIndex"]), int(params["pageSize"])
        self.customer_calls.append((page, json.loads(request.content)))
        return httpx.Response(
            200,
            json={
                "data": self.customers[(page - 1) * size : page * size],
                "metadata": {"pageIndex": page, "pageSize": size, "totalCount": None},
            },
        )

    def pages_of(self, customer: str) -> list[int]:
        return [call.page for call in self.calls if call.customer == customer]


def job(n: int, **extra: Any) -> dict[str, Any]:
    return {"jobId": f"J{n:05d}", "jobType": 7, "jobModule": 304, "status": 2, **extra}


def respond(
    status: int, body: Any = None, *, content: bytes | None = None, **headers: str
) -> Script:
    """A scripted answer; header keywords use `_` for `-` (request_id -> request-id)."""
    names = {name.replace("_", "-"): value for name, value in headers.items()}

    def script(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=names)
        if body is None:
            return httpx.Response(status, headers=names)
        return httpx.Response(status, json=body, headers=names)

    return script


def fail_with(error: type[httpx.TransportError]) -> Script:
    def script(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return script


def make_router(upstream: FakeUpstream) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False, assert_all_mocked=True)
    router.post(TOKEN_URL).mock(side_effect=upstream.token)
    router.post(url__startswith=BASE, path__regex=JOBS_PATH).mock(side_effect=upstream.jobs_batch)
    router.post(url__startswith=BASE, path=CUSTOMERS_PATH).mock(
        side_effect=upstream.customers_batch
    )
    return router


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def upstream(fake_time: FakeTime) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(fake_time)
    with make_router(fake):
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
        yield client


@pytest.fixture
def tokens(http: httpx.AsyncClient, fake_time: FakeTime) -> TokenProvider:
    return TokenProvider(
        http,
        token_url=TOKEN_URL,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        scope="elements.jobs.read.all elements.customers.read.all",
        clock=fake_time.clock,
    )


@dataclass
class Build:
    http: httpx.AsyncClient
    tokens: TokenProvider
    time: FakeTime
    outcomes: list[tuple[str, float]] = field(default_factory=list)

    def __call__(
        self,
        *,
        concurrency: int | asyncio.Semaphore = 8,
        retry: RetryPolicy | None = None,
        utcnow: Callable[[], datetime] | None = None,
    ) -> AvePointClient:
        return AvePointClient(
            self.http,
            base_url=BASE + "/",
            tokens=self.tokens,
            concurrency=concurrency,
            retry=retry or RetryPolicy(),
            sleep=self.time.sleep,
            clock=self.time.clock,
            metrics=lambda outcome, seconds, *_: self.outcomes.append((outcome, seconds)),
            # The top of each full-jitter range, so the sleeps are predictable.
            jitter=lambda low, high: high,
            utcnow=utcnow or (lambda: datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)),
        )


@pytest.fixture
def build(http: httpx.AsyncClient, tokens: TokenProvider, fake_time: FakeTime) -> Build:
    return Build(http, tokens, fake_time)


# -- pagination ---------------------------------------------------------------------


async def test_one_page(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(3)]

    fetch = await build().fetch_jobs("c1")

    assert fetch.customer_id == "c1"
    assert [row["jobId"] for row in fetch.rows] == ["J00000", "J00001", "J00002"]
    assert fetch.pages == 1
    assert fetch.request_ids == ["rid-c1-1"]
    assert upstream.pages_of("c1") == [1]
    assert upstream.calls[0].page_size == 100
    assert upstream.calls[0].body == {}


async def test_five_pages_first_alone_then_the_rest_concurrently(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(450)]

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 450
    assert [row["jobId"] for row in fetch.rows] == [f"J{n:05d}" for n in range(450)]
    assert fetch.pages == 5
    assert fetch.request_ids == [f"rid-c1-{page}" for page in range(1, 6)]
    assert sorted(upstream.pages_of("c1")) == [1, 2, 3, 4, 5]
    # Page 1 is answered before any other page is asked for: its totalCount plans the rest.
    assert upstream.pages_of("c1")[0] == 1
    assert upstream.finished[0] == ("c1", 1)
    assert upstream.max_in_flight == 4


async def test_total_count_as_string_plans_the_pages(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(250)]
    upstream.totals["c1"] = "250"

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 250
    assert sorted(upstream.pages_of("c1")) == [1, 2, 3]
    assert upstream.max_in_flight == 2


async def test_empty_page_two_ends_the_walk_although_total_promised_more(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(100)]
    upstream.totals["c1"] = 500  # the upstream lies

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 100
    assert fetch.pages == 2
    assert fetch.request_ids == ["rid-c1-1", "rid-c1-2"]


async def test_pages_after_an_empty_page_are_ignored(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(400)]
    upstream.script("c1", 3, respond(200, {"data": [], "metadata": {"totalCount": 400}}))

    fetch = await build().fetch_jobs("c1")

    assert [row["jobId"] for row in fetch.rows] == [f"J{n:05d}" for n in range(200)]
    assert fetch.pages == 3


async def test_unknown_total_walks_one_page_at_a_time_until_a_short_page(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(250)]
    upstream.totals["c1"] = "N/A"

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 250
    assert upstream.pages_of("c1") == [1, 2, 3]
    assert upstream.max_in_flight == 1


async def test_missing_total_walks_until_an_empty_page(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(200)]
    upstream.totals["c1"] = MISSING

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 200
    assert upstream.pages_of("c1") == [1, 2, 3]
    assert fetch.pages == 3


async def test_total_smaller_than_page_one_is_not_trusted(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(150)]
    upstream.totals["c1"] = 0

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 150
    assert upstream.pages_of("c1") == [1, 2]


async def test_empty_customer(upstream: FakeUpstream, build: Build) -> None:
    fetch = await build().fetch_jobs("c1")

    assert fetch.rows == []
    assert fetch.pages == 1


async def test_upstream_page_size_smaller_than_asked_is_followed(
    upstream: FakeUpstream, build: Build
) -> None:
    rows = [job(n) for n in range(120)]
    for page in (1, 2, 3):
        chunk = rows[(page - 1) * 50 : page * 50]
        meta = {"pageIndex": page, "pageSize": 50, "totalCount": 120}
        upstream.script("c1", page, respond(200, {"data": chunk, "metadata": meta}))

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 120
    assert sorted(upstream.pages_of("c1")) == [1, 2, 3]


async def test_jobs_on_two_pages_count_once_and_rows_without_id_are_kept(
    upstream: FakeUpstream, build: Build
) -> None:
    rows = [job(n) for n in range(150)]
    rows[120] = job(99, status=3)  # J00099 again on page 2, e.g. the list shifted
    rows[130] = {"jobId": "N/A", "status": 3}
    rows[131] = {"status": 3}
    rows[132] = {"jobId": "N/A", "status": 3}
    upstream.jobs["c1"] = rows

    fetch = await build().fetch_jobs("c1")

    ids = [row.get("jobId") for row in fetch.rows]
    assert len(fetch.rows) == 149
    assert ids.count("J00099") == 1
    assert fetch.rows[99] == job(99)  # the first one seen wins
    assert ids.count("N/A") == 2
    assert {"status": 3} in fetch.rows


@pytest.mark.parametrize(
    ("job_type", "job_module", "body"),
    [
        (None, None, {}),
        (7, None, {"jobType": 7}),
        (None, 304, {"jobModule": 304}),
        (7, 304, {"jobType": 7, "jobModule": 304}),
        (0, 0, {"jobType": 0, "jobModule": 0}),
    ],
)
async def test_filters_go_in_the_body_only_when_given(
    upstream: FakeUpstream,
    build: Build,
    job_type: int | None,
    job_module: int | None,
    body: dict[str, int],
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(150)]

    await build().fetch_jobs("c1", job_type=job_type, job_module=job_module)

    assert [call.body for call in upstream.calls] == [body, body]


async def test_customer_id_is_escaped_in_the_path(
    fake_time: FakeTime, tokens: TokenProvider
) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        router.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
        route = router.post(
            BASE + "/partner/external/v3/general/customers/a%2Fb%3F/avpt-products/jobs/batch",
            params={"pageIndex": "1", "pageSize": "100"},
        ).mock(return_value=httpx.Response(200, json={"data": []}))
        async with httpx.AsyncClient() as http:
            await Build(http, tokens, fake_time)().fetch_jobs("a/b?")

    assert route.call_count == 1


async def test_walk_without_end_is_capped(
    upstream: FakeUpstream, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(100 * 7)]
    upstream.totals["c1"] = MISSING
    client = build()
    client.MAX_PAGES = 4  # type: ignore[misc]

    fetch = await client.fetch_jobs("c1")

    assert fetch.pages == 4
    assert len(fetch.rows) == 400
    assert "stopped after 4 pages" in caplog.text


async def test_stopping_early_cancels_prefetched_pages(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(3_000)]
    walk = build().iter_job_pages("c1")

    pages = []
    async for page in walk:
        pages.append(page.page)
        if page.page == 2:
            break
    await walk.aclose()  # type: ignore[attr-defined]

    assert pages == [1, 2]
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert len(upstream.calls) <= 1 + AvePointClient.PREFETCH_PAGES


async def test_iter_job_pages_yields_pages_in_order(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(301)]

    pages = [page async for page in build().iter_job_pages("c1", job_type=7)]

    assert [page.page for page in pages] == [1, 2, 3, 4]
    assert [len(page.rows) for page in pages] == [100, 100, 100, 1]
    assert pages[0].total_count == 301
    assert pages[3].request_id == "rid-c1-4"


async def test_total_count_too_low_walks_on_to_the_short_page(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(450)]  # pages of 100/100/100/100/50
    upstream.totals["c1"] = 150  # promises two pages

    fetch = await build().fetch_jobs("c1")

    assert [row["jobId"] for row in fetch.rows] == [f"J{n:05d}" for n in range(450)]
    assert fetch.pages == 5
    # Pages 1 and 2 as promised, then one at a time; the short page 5 ends it (no page 6).
    assert upstream.pages_of("c1") == [1, 2, 3, 4, 5]
    assert fetch.request_ids == [f"rid-c1-{page}" for page in range(1, 6)]


async def test_exact_total_with_a_full_last_page_asks_for_one_more(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(200)]
    upstream.totals["c1"] = 200

    pages = [page async for page in build().iter_job_pages("c1")]

    assert [(page.page, len(page.rows)) for page in pages] == [(1, 100), (2, 100), (3, 0)]
    assert upstream.pages_of("c1") == [1, 2, 3]


async def test_exact_total_with_a_short_last_page_asks_no_more(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(250)]
    upstream.totals["c1"] = 250

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 250
    assert sorted(upstream.pages_of("c1")) == [1, 2, 3]


async def test_total_count_too_high_ends_on_the_empty_page(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(200)]
    upstream.totals["c1"] = 500  # promises five pages; page 3 is empty

    pages = [page async for page in build().iter_job_pages("c1")]
    fetch = await build().fetch_jobs("c1")

    assert [page.page for page in pages] == [1, 2, 3]
    assert pages[-1].rows == []
    assert [row["jobId"] for row in fetch.rows] == [f"J{n:05d}" for n in range(200)]
    assert fetch.pages == 3
    # Pages 4 and 5 were asked for concurrently at most, never past what was promised,
    # and nothing is left running.
    assert set(upstream.pages_of("c1")) <= {1, 2, 3, 4, 5}
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_jobs_repeated_past_the_promised_pages_count_once(
    upstream: FakeUpstream, build: Build
) -> None:
    rows = [job(n) for n in range(350)]
    rows[150] = job(7, status=3)  # page 2 repeats a job of page 1
    rows[320] = job(250, status=3)  # page 4, past the promise, repeats one of page 3
    upstream.jobs["c1"] = rows
    upstream.totals["c1"] = 100  # promises one page

    pages = [page async for page in build().iter_job_pages("c1")]
    fetch = await build().fetch_jobs("c1")

    # The pages carry the repeats as sent; fetch_jobs drops them, the first one seen wins.
    assert sum(len(page.rows) for page in pages) == 350
    ids = [row["jobId"] for row in fetch.rows]
    assert len(ids) == 348
    assert len(set(ids)) == 348
    assert fetch.rows[7] == job(7)
    assert fetch.rows[249] == job(250)
    assert fetch.pages == 4


async def test_walk_past_the_promise_is_capped(
    upstream: FakeUpstream, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(100 * 7)]
    upstream.totals["c1"] = 200
    client = build()
    client.MAX_PAGES = 4  # type: ignore[misc]

    fetch = await client.fetch_jobs("c1")

    assert fetch.pages == 4
    assert upstream.pages_of("c1") == [1, 2, 3, 4]
    assert "stopped after 4 pages" in caplog.text


@asynccontextmanager
async def simulator_client(sim: Simulator) -> AsyncIterator[AvePointClient]:
    """A real client (real sleeps and clock) in front of the simulator, in process."""
    transport = httpx.ASGITransport(app=create_simulator_app(sim))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as http:
        tokens = TokenProvider(
            http,
            token_url="http://upstream/connect/token",
            client_id=sim.config.client_id,
            client_secret=sim.config.client_secret,
            scope="elements.jobs.read.all elements.customers.read.all",
        )
        yield AvePointClient(http, base_url="http://upstream", tokens=tokens, concurrency=4)


SIM_NOW = datetime(2025, 9, 11, 12, 0, tzinfo=UTC)


async def test_low_total_count_simulator_customer_gives_every_job() -> None:
    config = SimulatorConfig(customers=2, jobs_per_customer=450, low_total_count=True)
    sim = Simulator(config, clock=lambda: SIM_NOW)
    customer_id = sim.customer_ids()[1]

    async with simulator_client(sim) as client:
        fetch = await client.fetch_jobs(customer_id)

    # totalCount said 225 (three pages); the walk went on to the short page 5.
    assert sorted(r.page_index or 0 for r in sim.stats.log if r.endpoint == "jobs") == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert fetch.rows == sim.jobs(customer_id)
    assert len(fetch.rows) == 450
    assert fetch.pages == 5
    assert sim.stats.jobs_requests == {customer_id: 5}


async def test_low_total_count_simulator_customer_list_is_whole() -> None:
    config = SimulatorConfig(customers=150, jobs_per_customer=1, low_total_count=True)
    sim = Simulator(config, clock=lambda: SIM_NOW)

    async with simulator_client(sim) as client:
        customers = await client.list_customers()

    # totalCount says 100 of 150: page 1 is full, so page 2 is asked for.
    assert [c.id for c in customers] == sim.customer_ids()
    assert sim.stats.requests["customers"] == 2


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=400), max_size=450),
    total=st.one_of(st.none(), st.just("N/A"), st.integers(min_value=0, max_value=900)),
)
def test_any_listing_gives_each_job_once(ids: list[int], total: int | str | None) -> None:
    """Whatever the totalCount says, every job on the pages comes back exactly once."""

    async def run() -> list[dict[str, Any]]:
        fake_time = FakeTime()
        upstream = FakeUpstream(fake_time)
        upstream.jobs["c1"] = [job(n) for n in ids]
        upstream.totals["c1"] = MISSING if total is None else total
        with make_router(upstream):
            async with httpx.AsyncClient() as http:
                tokens = TokenProvider(
                    http, token_url=TOKEN_URL, client_id=CLIENT_ID, client_secret=SECRET, scope="s"
                )
                fetch = await Build(http, tokens, fake_time)().fetch_jobs("c1")
        return fetch.rows

    rows = asyncio.run(run())

    # totalCount only plans the concurrent part: too low, too high or absent, the walk
    # ends where the data ends.
    assert [row["jobId"] for row in rows] == list(dict.fromkeys(f"J{n:05d}" for n in ids))


# -- customers ------------------------------------------------------------------------


async def test_list_customers_walks_all_pages(upstream: FakeUpstream, build: Build) -> None:
    upstream.customers = [
        {"id": f"cust-{n}", "organization": f"Org {n}", "ownerEmail": "x@example.com"}
        for n in range(150)
    ]
    upstream.customers[5] = {"id": "cust-5", "organization": "N/A"}
    upstream.customers[6] = {"organization": "No id"}
    upstream.customers[120] = {"id": "cust-1", "organization": "Org 1 again"}

    customers = await build().list_customers()

    assert len(customers) == 148
    assert customers[1].id == "cust-1"
    assert customers[1].organization == "Org 1"
    assert customers[5].organization is None
    assert upstream.customer_calls == [(1, {}), (2, {})]


async def test_list_customers_stops_on_an_empty_page(upstream: FakeUpstream, build: Build) -> None:
    upstream.customers = [{"id": f"cust-{n}"} for n in range(100)]

    customers = await build().list_customers()

    assert len(customers) == 100
    assert [page for page, _ in upstream.customer_calls] == [1, 2]


# -- concurrency ----------------------------------------------------------------------


async def test_in_flight_requests_never_exceed_the_limit_across_customers(
    upstream: FakeUpstream, build: Build
) -> None:
    for n in range(6):
        upstream.jobs[f"c{n}"] = [job(i) for i in range(500)]
    client = build(concurrency=3)

    fetches = await asyncio.gather(*(client.fetch_jobs(f"c{n}") for n in range(6)))

    assert [len(fetch.rows) for fetch in fetches] == [500] * 6
    assert upstream.max_in_flight == 3


async def test_clients_sharing_a_semaphore_share_the_limit(
    upstream: FakeUpstream, build: Build
) -> None:
    for n in range(4):
        upstream.jobs[f"c{n}"] = [job(i) for i in range(300)]
    shared = asyncio.Semaphore(2)
    first, second = build(concurrency=shared), build(concurrency=shared)

    await asyncio.gather(
        first.fetch_jobs("c0"),
        first.fetch_jobs("c1"),
        second.fetch_jobs("c2"),
        second.fetch_jobs("c3"),
    )

    assert upstream.max_in_flight == 2


async def test_semaphore_is_free_while_sleeping_between_retries(
    upstream: FakeUpstream, build: Build, fake_time: FakeTime
) -> None:
    shared = asyncio.Semaphore(1)
    held_while_sleeping: list[bool] = []

    async def sleep(seconds: float) -> None:
        held_while_sleeping.append(shared.locked())
        await fake_time.sleep(seconds)

    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(503), respond(503))
    client = build(concurrency=shared)
    client._sleep = sleep

    fetch = await client.fetch_jobs("c1")

    assert len(fetch.rows) == 1
    assert held_while_sleeping == [False, False]


# -- tokens -------------------------------------------------------------------------


async def test_every_request_carries_the_bearer_token_fetched_once(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(250)]
    upstream.jobs["c2"] = [job(n) for n in range(250)]
    client = build()

    await asyncio.gather(client.fetch_jobs("c1"), client.fetch_jobs("c2"))

    assert {call.authorization for call in upstream.calls} == {"Bearer token-1"}
    assert len(upstream.calls) == 6
    assert len(upstream.token_forms) == 1
    form = upstream.token_forms[0]
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_id"] == [CLIENT_ID]
    assert form["client_secret"] == [SECRET]


async def test_401_renews_the_token_once_and_repeats(
    upstream: FakeUpstream, build: Build, tokens: TokenProvider
) -> None:
    upstream.jobs["c1"] = [job(1)]
    await tokens.token()  # token-1, which the API will refuse
    upstream.accepted = {"token-2"}

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 1
    assert [call.authorization for call in upstream.calls] == ["Bearer token-1", "Bearer token-2"]
    assert upstream.issued == 2
    assert build.time.sleeps == []


async def test_many_pages_refused_at_once_share_one_renewal(
    upstream: FakeUpstream, build: Build, tokens: TokenProvider
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(450)]  # page 5 is short: the walk ends there
    upstream.accepted = {"token-1"}
    await tokens.token()
    upstream.script("c1", 1, respond(200, {"data": [job(0)], "metadata": {"totalCount": 450}}))
    for page in range(2, 6):
        upstream.script("c1", page, respond(401))
    upstream.accepted = {"token-2"}

    fetch = await build().fetch_jobs("c1")

    assert fetch.pages == 5
    assert upstream.issued == 2


async def test_second_401_is_an_auth_error_and_not_retried(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.accepted = set()  # nothing is accepted

    with pytest.raises(UpstreamAuthError) as caught:
        await build().fetch_jobs("c1")

    error = caught.value
    assert error.kind == "auth"
    assert error.status == 401
    assert (error.customer_id, error.page, error.request_id) == ("c1", 1, "denied-1")
    assert len(upstream.calls) == 2
    assert upstream.issued == 2
    assert build.time.sleeps == []


async def test_token_is_renewed_once_per_request_even_across_retries(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.script("c1", 1, respond(401), respond(503), respond(401, request_id="again"))

    with pytest.raises(UpstreamAuthError) as caught:
        await build().fetch_jobs("c1")

    assert caught.value.request_id == "again"
    assert upstream.issued == 2
    assert len(upstream.calls) == 3
    assert build.time.sleeps == [0.5]


async def test_failing_token_endpoint_is_retried_and_named_in_the_error(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.token_script.extend([respond(503), respond(503)])
    upstream.jobs["c1"] = [job(1)]

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 1
    assert build.time.sleeps == [0.5, 1.0]


async def test_refused_credentials_fail_fast_naming_the_customer(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.token_script.append(respond(400, {"error": "invalid_client"}))

    with pytest.raises(UpstreamAuthError) as caught:
        await build().fetch_jobs("c1")

    assert caught.value.customer_id == "c1"
    assert caught.value.page == 1
    assert caught.value.status == 400
    assert "invalid_client" in str(caught.value)
    assert upstream.calls == []
    assert build.time.sleeps == []


# -- retries --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_status_is_retried_with_backoff(
    upstream: FakeUpstream, build: Build, status: int
) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(status), respond(status))

    fetch = await build().fetch_jobs("c1")

    assert len(fetch.rows) == 1
    assert upstream.pages_of("c1") == [1, 1, 1]
    assert build.time.sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, UpstreamRateLimited), (500, UpstreamStatusError), (503, UpstreamStatusError)],
)
async def test_retries_end_after_the_attempts(
    upstream: FakeUpstream, build: Build, status: int, error_type: type[UpstreamError]
) -> None:
    upstream.script("c1", 1, *[respond(status, request_id=f"r{n}") for n in range(10)])

    with pytest.raises(error_type) as caught:
        await build(retry=RetryPolicy(attempts=4)).fetch_jobs("c1")

    error = caught.value
    assert type(error) is error_type
    assert error.status == status
    assert error.attempts == 4
    assert error.request_id == "r3"
    assert "4 attempts" in str(error)
    assert len(upstream.calls) == 4
    assert build.time.sleeps == [0.5, 1.0, 2.0]


async def test_backoff_is_capped_by_max_delay(upstream: FakeUpstream, build: Build) -> None:
    upstream.script("c1", 1, *[respond(502)] * 5)
    policy = RetryPolicy(attempts=5, base_delay=10, max_delay=15, total_seconds=1_000)

    with pytest.raises(UpstreamStatusError):
        await build(retry=policy).fetch_jobs("c1")

    assert build.time.sleeps == [10, 15, 15, 15]


async def test_backoff_draws_full_jitter(upstream: FakeUpstream, build: Build) -> None:
    ranges: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        ranges.append((low, high))
        return high / 4

    upstream.script("c1", 1, *[respond(503)] * 3)
    upstream.jobs["c1"] = [job(1)]
    client = build()
    client._jitter = jitter

    await client.fetch_jobs("c1")

    assert ranges == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0)]
    assert build.time.sleeps == [0.125, 0.25, 0.5]


async def test_retry_after_seconds_is_honoured(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(429, retry_after="7"), respond(503, retry_after="2"))

    await build().fetch_jobs("c1")

    assert build.time.sleeps == [7.0, 2.0]


async def test_retry_after_http_date_is_measured_against_the_date_header(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script(
        "c1",
        1,
        respond(
            429,
            retry_after="Sun, 29 Nov 2026 08:00:12 GMT",
            date="Sun, 29 Nov 2026 08:00:00 GMT",
        ),
    )
    # The local clock is an hour off; the server's own Date header wins.
    client = build(utcnow=lambda: datetime(2026, 11, 29, 7, 0, 0, tzinfo=UTC))

    await client.fetch_jobs("c1")

    assert build.time.sleeps == [12.0]


async def test_retry_after_http_date_without_date_header_uses_utcnow(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(503, retry_after="Sun, 29 Nov 2026 08:00:20 GMT"))

    await build().fetch_jobs("c1")  # utcnow is 08:00:00

    assert build.time.sleeps == [20.0]


async def test_retry_after_is_capped_at_max_delay(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(429, retry_after="45"))

    await build().fetch_jobs("c1")

    assert build.time.sleeps == [30]


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.script("c1", 1, respond(429, retry_after="500", request_id="rl-1"))

    with pytest.raises(UpstreamRateLimited) as caught:
        await build().fetch_jobs("c1")

    assert build.time.sleeps == []
    assert len(upstream.calls) == 1
    assert "Retry-After" in str(caught.value)
    assert caught.value.retry_after == 500
    assert caught.value.request_id == "rl-1"


async def test_retry_after_of_an_hour_gives_up_at_once_and_keeps_the_wait(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.script("c1", 1, respond(429, retry_after="3600", request_id="rl-2"))

    with pytest.raises(UpstreamRateLimited) as caught:
        await build().fetch_jobs("c1")

    assert len(upstream.calls) == 1
    assert build.time.sleeps == []
    error = caught.value
    assert error.retry_after == 3600
    assert error.attempts == 1
    now = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
    assert error.retry_at(now) == now + timedelta(hours=1)
    # The wait survives the copies made to raise it elsewhere.
    assert error.copy().retry_after == 3600
    assert pickle.loads(pickle.dumps(error)).retry_after == 3600


async def test_final_503_keeps_its_retry_after(upstream: FakeUpstream, build: Build) -> None:
    upstream.script("c1", 1, respond(503, retry_after="2"), respond(503, retry_after="5"))

    with pytest.raises(UpstreamStatusError) as caught:
        await build(retry=RetryPolicy(attempts=2)).fetch_jobs("c1")

    assert build.time.sleeps == [2.0]
    assert caught.value.attempts == 2
    assert caught.value.retry_after == 5


def test_retry_at_without_a_usable_retry_after_is_none() -> None:
    now = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
    assert UpstreamStatusError("x", status=503).retry_at(now) is None
    assert UpstreamStatusError("x", retry_after=float("inf")).retry_at(now) is None
    assert UpstreamStatusError("x", retry_after=1e15).retry_at(now) is None  # past year 9999
    assert UpstreamStatusError("x", retry_after=0).retry_at(now) == now


async def test_total_time_is_bounded(upstream: FakeUpstream, build: Build) -> None:
    upstream.script("c1", 1, *[respond(503)] * 10)
    policy = RetryPolicy(attempts=10, base_delay=40, max_delay=60, total_seconds=100)

    with pytest.raises(UpstreamStatusError) as caught:
        await build(retry=policy).fetch_jobs("c1")

    # 40 (at 40s), 60 (at 100s); another 60 would pass the 100s budget.
    assert build.time.sleeps == [40, 60]
    assert caught.value.attempts == 3
    assert "100s budget" in str(caught.value)


async def test_slow_requests_count_against_the_budget(upstream: FakeUpstream, build: Build) -> None:
    upstream.request_seconds = 50
    upstream.script("c1", 1, *[respond(504)] * 10)

    with pytest.raises(UpstreamStatusError):
        await build(retry=RetryPolicy(attempts=10, total_seconds=120)).fetch_jobs("c1")

    # 50s + 0.5 + 50s + 1.0 + 50s: the next wait (2s) would pass 120s.
    assert build.time.sleeps == [0.5, 1.0]
    assert len(upstream.calls) == 3


@pytest.mark.parametrize(
    ("failure", "error_type", "kind"),
    [
        (httpx.ConnectError, UpstreamConnectionError, "connection"),
        (httpx.ReadError, UpstreamConnectionError, "connection"),
        (httpx.RemoteProtocolError, UpstreamConnectionError, "connection"),
        (httpx.ConnectTimeout, UpstreamTimeout, "timeout"),
        (httpx.ReadTimeout, UpstreamTimeout, "timeout"),
        (httpx.PoolTimeout, UpstreamTimeout, "timeout"),
    ],
)
async def test_transport_failures_are_retried_then_typed(
    upstream: FakeUpstream,
    build: Build,
    failure: type[httpx.TransportError],
    error_type: type[UpstreamError],
    kind: str,
) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, fail_with(failure))
    assert len((await build().fetch_jobs("c1")).rows) == 1
    assert build.time.sleeps == [0.5]

    upstream.script("c1", 1, *[fail_with(failure)] * 5)
    with pytest.raises(error_type) as caught:
        await build().fetch_jobs("c1")

    assert caught.value.kind == kind
    assert caught.value.attempts == 5
    assert caught.value.customer_id == "c1"
    assert caught.value.status is None


async def test_unsupported_protocol_is_not_retried(
    fake_time: FakeTime, tokens: TokenProvider
) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
        router.post(url__startswith=BASE).mock(side_effect=fail_with(httpx.UnsupportedProtocol))
        async with httpx.AsyncClient() as http:
            client = Build(http, tokens, fake_time)()
            with pytest.raises(UpstreamConnectionError):
                await client.fetch_jobs("c1")
    assert fake_time.sleeps == []


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 301])
async def test_client_errors_are_not_retried(
    upstream: FakeUpstream, build: Build, status: int
) -> None:
    upstream.script("c1", 1, respond(status, content=b"no", x_request_id="abc-123"))

    with pytest.raises(UpstreamStatusError) as caught:
        await build().fetch_jobs("c1")

    error = caught.value
    assert type(error) is UpstreamStatusError
    assert error.kind == "http_status"
    assert (error.customer_id, error.page, error.status, error.request_id) == (
        "c1",
        1,
        status,
        "abc-123",
    )
    assert error.attempts == 1
    assert len(upstream.calls) == 1
    assert build.time.sleeps == []


@pytest.mark.parametrize(
    ("status", "summary"),
    [
        (
            403,
            "The AvePoint app may not read customer 'c1' (HTTP 403): add it to the app's "
            "customer scope in AvePoint Online Services, or remove it from CUSTOMER_IDS",
        ),
        (
            404,
            "AvePoint does not know customer 'c1', or the AvePoint app may not read it "
            "(HTTP 404): check the id, add it to the app's customer scope in AvePoint Online "
            "Services, or remove it from CUSTOMER_IDS",
        ),
    ],
)
async def test_403_and_404_say_the_customer_is_outside_the_apps_scope_and_what_to_do(
    upstream: FakeUpstream, build: Build, status: int, summary: str
) -> None:
    upstream.script("c1", 1, respond(status, request_id="rid-9"))

    with pytest.raises(UpstreamStatusError) as caught:
        await build().fetch_jobs("c1")

    error = caught.value
    assert (
        error.message == f"{summary} (customer 'c1', page 1, status {status}, request id 'rid-9')"
    )
    assert (error.attempts, error.retriable) == (1, False)
    assert len(upstream.calls) == 1, "not retried"


async def test_a_403_of_the_customer_list_is_not_about_one_customer(
    fake_time: FakeTime, tokens: TokenProvider
) -> None:
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
        router.post(url__startswith=BASE, path=CUSTOMERS_PATH).mock(
            return_value=httpx.Response(403)
        )
        async with httpx.AsyncClient() as http:
            with pytest.raises(UpstreamStatusError) as caught:
                await Build(http, tokens, fake_time)().list_customers()

    assert caught.value.message == (
        "AvePoint answered the customers request with HTTP 403 (page 1, status 403)"
    )


async def test_a_failing_later_page_fails_the_fetch_with_its_page(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(500)]
    upstream.script("c1", 4, respond(404, request_id="gone-4"))

    with pytest.raises(UpstreamStatusError) as caught:
        await build().fetch_jobs("c1")

    assert (caught.value.page, caught.value.status, caught.value.request_id) == (4, 404, "gone-4")
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- malformed bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"<html>Service unavailable</html>",
        b"",
        b'{"data": [',
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'{"metadata": {"totalCount": 1}}',
        b'{"data": {"jobId": "J1"}}',
        b'{"data": [1, 2]}',
        b'{"data": [{"jobId": "J1"}, "J2"]}',
    ],
)
async def test_malformed_body_is_a_typed_error_not_retried(
    upstream: FakeUpstream, build: Build, content: bytes
) -> None:
    upstream.script("c1", 1, respond(200, content=content, request_id="m-1"))

    with pytest.raises(UpstreamMalformed) as caught:
        await build().fetch_jobs("c1")

    error = caught.value
    assert error.kind == "malformed"
    assert (error.customer_id, error.page, error.status, error.request_id) == ("c1", 1, 200, "m-1")
    assert len(upstream.calls) == 1
    assert build.time.sleeps == []


async def test_malformed_later_page_names_its_page(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(500)]
    upstream.script("c1", 3, respond(200, content=b"oops"))

    with pytest.raises(UpstreamMalformed) as caught:
        await build().fetch_jobs("c1")

    assert caught.value.page == 3
    assert "page 3" in str(caught.value)


async def test_tolerant_envelope(upstream: FakeUpstream, build: Build) -> None:
    body = {
        "data": [job(1, extra={"nested": True})],
        "metadata": {"totalCount": "N/A", "pageSize": "abc", "somethingNew": 1},
        "links": {"next": None},
    }
    upstream.script("c1", 1, respond(200, body))

    fetch = await build().fetch_jobs("c1")

    assert fetch.rows == [job(1, extra={"nested": True})]


# -- errors: fields, secrets, logs, metrics -----------------------------------------------


@pytest.mark.parametrize(
    "header",
    ["request-id", "Request-Id", "X-Request-ID", "x-ms-request-id", "X-Correlation-ID"],
)
async def test_request_id_is_read_from_any_usual_header(
    upstream: FakeUpstream, build: Build, header: str
) -> None:
    upstream.script("c1", 1, respond(400, **{header.replace("-", "_"): "the-id"}))

    with pytest.raises(UpstreamStatusError) as caught:
        await build().fetch_jobs("c1")

    assert caught.value.request_id == "the-id"


async def test_error_message_names_customer_page_status_and_request_id(
    upstream: FakeUpstream, build: Build
) -> None:
    upstream.jobs["c1"] = [job(n) for n in range(200)]
    upstream.script("c1", 2, *[respond(503, request_id="req-77")] * 5)

    with pytest.raises(UpstreamStatusError) as caught:
        await build().fetch_jobs("c1")

    message = str(caught.value)
    assert message == caught.value.message
    assert "'c1'" in message
    assert "page 2" in message
    assert "503" in message
    assert "'req-77'" in message


async def test_no_secret_or_token_in_errors_or_logs(
    upstream: FakeUpstream, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.upstream")
    errors: list[BaseException] = []

    # The token endpoint echoes what it got; the API echoes the Authorization header.
    upstream.token_script.append(
        respond(401, content=f"bad secret {SECRET}".encode(), request_id="t-1")
    )
    with pytest.raises(UpstreamAuthError) as caught:
        await build().fetch_jobs("c1")
    errors.append(caught.value)

    upstream.script("c1", 1, *[respond(500, content=b"Bearer token-1 was used")] * 5)
    with pytest.raises(UpstreamStatusError) as status_caught:
        await build().fetch_jobs("c1")
    errors.append(status_caught.value)

    upstream.script("c1", 1, *[fail_with(httpx.ConnectError)] * 5)
    with pytest.raises(UpstreamConnectionError) as connect_caught:
        await build().fetch_jobs("c1")
    errors.append(connect_caught.value)

    upstream.token_script.append(fail_with(httpx.ConnectError))
    build.tokens._token = None  # force a token request that fails in transport
    with pytest.raises(UpstreamAuthError) as transport_caught:
        await build(retry=RetryPolicy(attempts=1)).fetch_jobs("c1")
    errors.append(transport_caught.value)

    for error in errors:
        texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
        for text in texts:
            assert SECRET not in text
            assert "token-1" not in text
            assert "Bearer" not in text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert "token-1" not in record.getMessage()
    assert SECRET not in repr(build.tokens)


async def test_retries_are_logged_with_the_request_id(
    upstream: FakeUpstream, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.upstream")
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(503, request_id="retry-me"))

    await build().fetch_jobs("c1")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "app.upstream"
    assert "retry-me" in warnings[0].getMessage()


async def test_metrics_hook_sees_every_exchange(upstream: FakeUpstream, build: Build) -> None:
    upstream.jobs["c1"] = [job(1)]
    upstream.script("c1", 1, respond(429), respond(503), fail_with(httpx.ReadTimeout))
    upstream.request_seconds = 0.25

    await build().fetch_jobs("c1")

    assert [outcome for outcome, _ in build.outcomes] == [
        "rate_limited",
        "http_status",
        "timeout",
        "ok",
    ]
    assert build.outcomes[-1][1] == 0.25


async def test_a_broken_metrics_hook_does_not_fail_the_fetch(
    upstream: FakeUpstream, build: Build, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(outcome: str, seconds: float) -> None:
        raise RuntimeError("metrics down")

    upstream.jobs["c1"] = [job(1)]
    client = build()
    client._metrics = broken

    assert len((await client.fetch_jobs("c1")).rows) == 1
    assert "metrics hook failed" in caplog.text


def test_errors_survive_pickling() -> None:
    error = UpstreamRateLimited(
        "limited", customer_id="c1", page=2, status=429, request_id="r", attempts=3
    )

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is UpstreamRateLimited
    assert (copy.customer_id, copy.page, copy.status, copy.request_id, copy.attempts) == (
        "c1",
        2,
        429,
        "r",
        3,
    )
    assert str(copy) == str(error)


def test_error_tree() -> None:
    assert issubclass(UpstreamRateLimited, UpstreamStatusError)
    for error_type, kind in [
        (UpstreamAuthError, "auth"),
        (UpstreamStatusError, "http_status"),
        (UpstreamRateLimited, "rate_limited"),
        (UpstreamTimeout, "timeout"),
        (UpstreamConnectionError, "connection"),
        (UpstreamMalformed, "malformed"),
    ]:
        assert issubclass(error_type, UpstreamError)
        assert error_type("x").kind == kind


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay=-1)
