"""The upstream's side of issue 9: the circuit breaker and the request-rate limit.

- `CircuitBreaker` alone, its clock injected: when it opens, for how long, the probe.
- `AvePointClient` with a breaker against a respx-faked upstream: what counts as a
  failure (5xx, token-endpoint failures as every customer's) and what does not (403, 404,
  429, refused credentials), that a refused request sends nothing, the half-open probe.
- The app: two customers failing open the breaker, later requests send nothing upstream,
  and the last good jobs are served as stale meanwhile.
- The rate limiter: every Graph API request (retries included) acquires it before it is
  sent; token requests do not. Fake limiters count and hold; nothing waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from aiolimiter import AsyncLimiter

from app.main import create_app
from app.metrics import Metrics
from app.upstream import (
    AvePointClient,
    RetryPolicy,
    TokenProvider,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamStatusError,
)
from app.upstream.breaker import EVERYONE, CircuitBreaker, Permit
from app.upstream.client import rate_limiter_for
from app.upstream.errors import UpstreamCircuitOpen
from tests.api.conftest import API_KEY, UPSTREAM, Sleeps, settings_for
from tests.clock import FakeClock

BASE = "https://graph.test"
TOKEN_URL = "https://identity.test/connect/token"
JOBS = r"^/partner/external/v3/general/customers/(?P<customer>[^/]+)/avpt-products/jobs/batch$"
NOW = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)


class FakeTime:
    """Monotonic seconds that only the client's (fake) retry sleeps and the test move."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


# -- the state machine ------------------------------------------------------------------------


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@dataclass
class Watched:
    breaker: CircuitBreaker
    states: list[str]
    refusals: list[None]


@pytest.fixture
def watched(time: FakeTime) -> Watched:
    states: list[str] = []
    refusals: list[None] = []
    breaker = CircuitBreaker(
        clock=time, on_state=states.append, on_refused=lambda: refusals.append(None)
    )
    return Watched(breaker, states, refusals)


def fail(breaker: CircuitBreaker, *customers: object) -> None:
    """One failed attempt for each customer, in turn."""
    for customer in customers:
        permit = breaker.admit()
        assert permit is not None, "refused"
        breaker.failed(permit, customer, "AvePoint answered the jobs request with HTTP 503", 503)


def succeed(breaker: CircuitBreaker) -> None:
    permit = breaker.admit()
    assert permit is not None, "refused"
    breaker.succeeded(permit)


def test_five_failures_across_two_customers_open_it_for_30_seconds(
    watched: Watched, time: FakeTime
) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c1", "c1", "c2")
    assert breaker.state == "closed"
    fail(breaker, "c1")
    assert breaker.state == "open"
    assert watched.states == ["closed", "open"]
    assert breaker.retry_in() == 30
    assert (breaker.last_failure, breaker.last_status) == (
        "AvePoint answered the jobs request with HTTP 503",
        503,
    )
    assert breaker.admit() is None
    assert breaker.admit() is None
    assert len(watched.refusals) == 2
    time.advance(29.9)
    assert breaker.admit() is None
    assert breaker.retry_in() == pytest.approx(0.1)


def test_one_customer_failing_alone_never_opens_it(watched: Watched) -> None:
    fail(watched.breaker, *["c1"] * 100)
    assert watched.breaker.state == "closed"
    assert watched.states == ["closed"]


def test_a_failure_of_everyone_spans_every_customer(watched: Watched) -> None:
    fail(watched.breaker, EVERYONE, EVERYONE, EVERYONE, EVERYONE)
    assert watched.breaker.state == "closed"
    fail(watched.breaker, EVERYONE)
    assert watched.breaker.state == "open"


def test_any_success_ends_the_run(watched: Watched) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c2", "c1", "c2")
    succeed(breaker)
    fail(breaker, "c1", "c2", "c1", "c2")
    assert breaker.state == "closed", "the run started again after the success"
    fail(breaker, "c3")
    assert breaker.state == "open"


def test_an_attempt_that_counts_neither_way_neither_adds_nor_ends_the_run(
    watched: Watched,
) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c2", "c1", "c2")
    permit = breaker.admit()
    assert permit is not None
    breaker.released(permit)  # a 404, a 429, a cancellation
    assert breaker.state == "closed"
    fail(breaker, "c1")
    assert breaker.state == "open"


def test_half_open_lets_one_probe_go_and_its_success_closes(
    watched: Watched, time: FakeTime
) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c2", "c1", "c2", "c1")
    time.advance(30)
    assert breaker.state == "half_open"
    probe = breaker.admit()
    assert probe is not None and probe.probe
    assert breaker.admit() is None, "one probe at a time"
    assert breaker.retry_in() == 0
    breaker.succeeded(probe)
    assert breaker.state == "closed"
    assert watched.states == ["closed", "open", "half_open", "closed"]
    assert len(watched.refusals) == 1
    # Closed again: it takes a whole new run to open it.
    fail(breaker, "c1", "c2", "c1", "c2")
    assert breaker.state == "closed"


def test_each_failed_probe_doubles_the_open_time_up_to_300_seconds(
    watched: Watched, time: FakeTime
) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c2", "c1", "c2", "c1")
    opened_for = [breaker.retry_in()]
    for _ in range(5):
        time.advance(breaker.retry_in())
        fail(breaker, "c1")  # the probe
        opened_for.append(breaker.retry_in())
    assert opened_for == [30, 60, 120, 240, 300, 300]
    # A probe that succeeds closes it, and the next opening is back to 30 s.
    time.advance(300)
    succeed(breaker)
    fail(breaker, "c1", "c2", "c1", "c2", "c1")
    assert breaker.retry_in() == 30


def test_a_probe_that_counts_neither_way_hands_the_probe_on(
    watched: Watched, time: FakeTime
) -> None:
    breaker = watched.breaker
    fail(breaker, "c1", "c2", "c1", "c2", "c1")
    time.advance(30)
    probe = breaker.admit()
    assert probe is not None
    breaker.released(probe)  # cancelled, or a 404
    assert breaker.state == "half_open"
    second = breaker.admit()
    assert second is not None and second.probe


def test_attempts_sent_before_it_opened_count_no_more(watched: Watched, time: FakeTime) -> None:
    breaker = watched.breaker
    early = [breaker.admit() for _ in range(3)]
    fail(breaker, "c1", "c2", "c1", "c2", "c1")
    assert breaker.state == "open"
    late_success, late_failure, late_release = early
    assert late_success is not None and late_failure is not None and late_release is not None
    breaker.succeeded(late_success)
    assert breaker.state == "open", "an answer to a request sent before it opened"
    time.advance(30)
    probe = breaker.admit()
    assert probe is not None
    breaker.failed(late_failure, "c3")
    breaker.released(late_release)
    assert breaker.state == "half_open"
    assert breaker.admit() is None, "the probe is still out"


def test_a_permit_is_settled_once(watched: Watched) -> None:
    breaker = watched.breaker
    permit = breaker.admit()
    assert permit is not None
    breaker.failed(permit, "c1")
    breaker.failed(permit, "c2")
    breaker.released(permit)
    assert isinstance(permit, Permit) and permit.settled
    fail(breaker, "c1", "c1", "c1")
    assert breaker.state == "closed", "four failures counted, not five"


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0}, {"min_customers": 0}, {"open_seconds": 0}, {"open_seconds": 301}],
)
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(**kwargs)


# -- the client with a breaker ----------------------------------------------------------------


class FakeUpstream:
    """The token endpoint and every customer's jobs, as respx routes.

    A customer's jobs answer `statuses[customer]` (a list is consumed one answer per
    request, its last kept) or, by default, a page of one job.
    """

    def __init__(self) -> None:
        self.router = respx.mock(assert_all_called=False, assert_all_mocked=True)
        self.token = self.router.post(TOKEN_URL).mock(side_effect=self._token)
        self.jobs = self.router.post(url__startswith=BASE, path__regex=JOBS).mock(
            side_effect=self._jobs
        )
        self.statuses: dict[str, int | list[int]] = {}
        self.token_status = 200
        self.sent: list[str] = []

    async def _token(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        if self.token_status != 200:
            return httpx.Response(self.token_status, json={"error": "invalid_client"})
        return httpx.Response(200, json={"access_token": "token-1", "expires_in": 3600})

    async def _jobs(self, request: httpx.Request, customer: str) -> httpx.Response:
        self.sent.append(customer)
        for _ in range(3):
            await asyncio.sleep(0)
        answer = self.statuses.get(customer, 200)
        if isinstance(answer, list):
            status = answer.pop(0) if len(answer) > 1 else answer[0]
        else:
            status = answer
        if status != 200:
            return httpx.Response(status, headers={"request-id": f"rid-{customer}"})
        page = {
            "data": [{"jobId": f"{customer}-J1", "jobType": 7, "jobModule": 304, "status": 2}],
            "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 1},
        }
        return httpx.Response(200, json=page)


@dataclass
class Rig:
    upstream: FakeUpstream
    time: FakeTime
    metrics: Metrics
    breaker: CircuitBreaker
    http: httpx.AsyncClient
    tokens: TokenProvider

    def client(self, *, attempts: int = 5, rate_limiter: Any = None) -> AvePointClient:
        return AvePointClient(
            self.http,
            base_url=BASE,
            tokens=self.tokens,
            concurrency=8,
            retry=RetryPolicy(attempts=attempts),
            sleep=self.time.sleep,
            clock=self.time,
            jitter=lambda low, high: high,
            utcnow=lambda: NOW,
            breaker=self.breaker,
            rate_limiter=rate_limiter,
        )

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value("jobs_gateway_upstream_breaker_state")

    def refused(self) -> float | None:
        return self.metrics.registry.get_sample_value("jobs_gateway_upstream_breaker_refused_total")


@pytest.fixture
async def rig(time: FakeTime) -> AsyncIterator[Rig]:
    upstream = FakeUpstream()
    metrics = Metrics()
    breaker = CircuitBreaker(
        clock=time,
        on_state=metrics.upstream_breaker,
        on_refused=metrics.upstream_breaker_refused.inc,
    )
    with upstream.router:
        async with httpx.AsyncClient() as http:
            tokens = TokenProvider(
                http,
                token_url=TOKEN_URL,
                client_id="app-client-id",
                client_secret="very-secret-client-secret-42",
                scope="elements.jobs.read.all",
                clock=time,
            )
            yield Rig(upstream, time, metrics, breaker, http, tokens)


async def until(condition: Callable[[], bool], turns: int = 500) -> None:
    """Let the other tasks run until `condition` holds (a bounded number of loop turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def outcome(client: AvePointClient, customer: str) -> str | UpstreamError:
    """The fetch's error, or "ok"."""
    try:
        await client.fetch_jobs(customer)
    except UpstreamError as error:
        return error
    return "ok"


async def test_two_customers_failing_with_503_open_it_and_then_nothing_is_sent(rig: Rig) -> None:
    client = rig.client(attempts=3)
    rig.upstream.statuses = {"c1": 503, "c2": 503}
    assert rig.gauge() == 0

    first = await outcome(client, "c1")
    assert isinstance(first, UpstreamStatusError) and first.attempts == 3
    assert rig.breaker.state == "closed", "three failures of one customer"

    # c2's second failure is the fifth in a row, across two customers: its third try is
    # refused without being sent.
    second = await outcome(client, "c2")
    assert isinstance(second, UpstreamCircuitOpen)
    assert rig.upstream.sent == ["c1", "c1", "c1", "c2", "c2"]
    assert rig.breaker.state == "open"
    assert rig.gauge() == 2

    # Any customer, healthy or not: refused at once, no token asked for, nothing sent.
    tokens_asked = rig.upstream.token.call_count
    refused = await outcome(client, "c3")
    assert isinstance(refused, UpstreamCircuitOpen)
    assert rig.upstream.sent == ["c1", "c1", "c1", "c2", "c2"]
    assert rig.upstream.token.call_count == tokens_asked
    assert rig.refused() == 2

    wait = rig.breaker.retry_in()
    assert 0 < wait < 30  # c2's retry sleep passed since it opened
    assert refused.kind == "circuit_open"
    assert not refused.retriable
    assert refused.retry_after == wait
    assert (refused.customer_id, refused.page, refused.status) == ("c3", 1, 503)
    assert refused.message == (
        "AvePoint jobs request not sent: the circuit breaker is open after upstream failures "
        "across customers (the last: AvePoint answered the jobs request with HTTP 503); "
        f"next try at 2026-11-29T08:00:{math.ceil(wait):02d}Z, in {math.ceil(wait)}s "
        "(customer 'c3', page 1, status 503)"
    )


async def test_one_customer_failing_alone_spends_its_retries_and_opens_nothing(rig: Rig) -> None:
    client = rig.client(attempts=5)
    rig.upstream.statuses = {"c1": 503}
    for _ in range(4):
        error = await outcome(client, "c1")
        assert isinstance(error, UpstreamStatusError) and error.attempts == 5
    assert rig.upstream.sent == ["c1"] * 20
    assert rig.breaker.state == "closed"
    assert await outcome(client, "c2") == "ok"
    assert rig.refused() == 0


async def test_403_404_and_429_count_neither_way(rig: Rig) -> None:
    client = rig.client(attempts=1)
    rig.upstream.statuses = {"c1": 503, "c2": 503, "c3": 403, "c4": 404, "c5": 429}
    for customer in ["c1", "c2", "c3", "c4", "c5", "c1", "c2", "c3", "c4", "c5"]:
        await outcome(client, customer)
    assert rig.breaker.state == "closed", "four failures, the 4xx between them did not count"
    out_of_scope = await outcome(client, "c3")
    assert isinstance(out_of_scope, UpstreamStatusError) and out_of_scope.attempts == 1
    assert isinstance(await outcome(client, "c5"), UpstreamRateLimited)
    assert rig.breaker.state == "closed", "... nor did they end the run"
    await outcome(client, "c1")
    assert rig.breaker.state == "open"


async def test_a_good_answer_ends_the_run(rig: Rig) -> None:
    client = rig.client(attempts=1)
    rig.upstream.statuses = {"c1": 503, "c2": 503}
    for customer in ["c1", "c2", "c1", "c2"]:
        await outcome(client, customer)
    assert await outcome(client, "c3") == "ok"
    for customer in ["c1", "c2", "c1", "c2"]:
        await outcome(client, customer)
    assert rig.breaker.state == "closed"


async def test_after_30_seconds_one_probe_goes_and_its_success_closes_it(rig: Rig) -> None:
    client = rig.client(attempts=1)
    rig.upstream.statuses = {"c1": 503, "c2": 503}
    for customer in ["c1", "c2", "c1", "c2", "c1"]:
        await outcome(client, customer)
    assert rig.breaker.state == "open"
    rig.upstream.statuses = {}  # the upstream is back
    rig.time.advance(30)

    # c1's request is the probe; c2's, asked while it is out, is refused.
    probe, other = await asyncio.gather(outcome(client, "c1"), outcome(client, "c2"))
    assert probe == "ok"
    assert isinstance(other, UpstreamCircuitOpen)
    assert other.retry_after is None
    assert "one probe request is testing whether it has recovered" in other.message
    assert rig.breaker.state == "closed"
    assert rig.gauge() == 0
    assert await outcome(client, "c2") == "ok"


async def test_a_failed_probe_opens_it_again_for_twice_as_long(rig: Rig) -> None:
    client = rig.client(attempts=2)
    rig.upstream.statuses = {"c1": 503, "c2": 503}
    for customer in ["c1", "c2", "c1"]:
        await outcome(client, customer)
    assert rig.breaker.state == "open"
    rig.time.advance(rig.breaker.retry_in())
    sent = len(rig.upstream.sent)

    # The probe's 503 reopens it, so its own retry is refused.
    error = await outcome(client, "c2")
    assert isinstance(error, UpstreamCircuitOpen)
    assert len(rig.upstream.sent) == sent + 1
    assert "in 60s" in error.message


async def test_token_endpoint_failures_count_as_every_customer_and_once_per_token_request(
    rig: Rig,
) -> None:
    client = rig.client(attempts=1)
    rig.upstream.token_status = 503
    customers = ["c1", "c2", "c3", "c4"]
    for round_ in range(1, 5):
        # The four share one token request (TokenProvider), and it counts once.
        errors = await asyncio.gather(*(outcome(client, c) for c in customers))
        assert all(isinstance(e, UpstreamAuthError) for e in errors)
        assert rig.upstream.token.call_count == round_
        assert rig.breaker.state == "closed"
    await outcome(client, "c1")  # the fifth token failure: one customer suffices
    assert rig.breaker.state == "open"
    assert rig.upstream.sent == []
    refused = await asyncio.gather(*(outcome(client, c) for c in customers))
    assert all(isinstance(e, UpstreamCircuitOpen) for e in refused)
    assert rig.upstream.token.call_count == 5
    assert rig.breaker.last_failure == "AvePoint token endpoint failed with HTTP 503"


async def test_refused_client_credentials_do_not_open_it(rig: Rig) -> None:
    client = rig.client(attempts=1)
    rig.upstream.token_status = 401
    for _ in range(6):
        error = await outcome(client, "c1")
        assert isinstance(error, UpstreamAuthError)
        assert "refused the client credentials" in error.message
    assert rig.upstream.token.call_count == 6
    assert rig.breaker.state == "closed"


async def test_a_cancelled_probe_hands_the_probe_on(rig: Rig) -> None:
    client = rig.client(attempts=1)
    rig.upstream.statuses = {"c1": 503, "c2": 503}
    for customer in ["c1", "c2", "c1", "c2", "c1"]:
        await outcome(client, customer)
    rig.upstream.statuses = {}
    rig.time.advance(30)
    probe = asyncio.create_task(client.fetch_jobs("c1"))
    await until(lambda: rig.upstream.sent.count("c1") == 4)  # the probe is out
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert rig.breaker.state == "half_open"
    assert await outcome(client, "c2") == "ok"
    assert rig.breaker.state == "closed"


# -- through the app --------------------------------------------------------------------------


async def test_the_app_serves_stale_jobs_while_the_breaker_is_open(database_url: str) -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    router = respx.MockRouter(base_url=UPSTREAM, assert_all_called=False, assert_all_mocked=True)
    router.post("/connect/token").mock(
        return_value=httpx.Response(200, json={"access_token": "tok-1", "expires_in": 3600})
    )
    router.post("/partner/external/v3/general/customers/batch").mock(
        return_value=httpx.Response(
            200,
            json={
                "data": [{"id": "c1", "organization": "Contoso"}, {"id": "c2"}],
                "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 2},
            },
        )
    )
    down = False

    def jobs(request: httpx.Request, customer: str) -> httpx.Response:
        if down:
            return httpx.Response(503)
        page = {
            "data": [
                {"jobId": f"{customer}-J{n}", "jobType": 7, "jobModule": 304, "status": 2}
                for n in range(3)
            ],
            "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 3},
        }
        return httpx.Response(200, json=page)

    route = router.post(path__regex=JOBS).mock(side_effect=jobs)
    settings = settings_for(database_url, customer_ids="c1,c2")
    app = create_app(
        settings,
        clock=clock,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps.sleep,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.test",
            headers={"X-API-Key": API_KEY},
        ) as api,
    ):
        good = (await api.get("/jobs", params={"limit": 500})).json()
        assert good["sources"] == []
        served = sorted(i["id"] for i in good["items"])
        assert len(served) == 6

        # Both customers fail: five failed attempts across the two open the breaker, and
        # the retries left are refused instead of sent.
        down = True
        clock.advance(301)
        sent = route.call_count
        first = (await api.get("/jobs", params={"limit": 500})).json()
        assert route.call_count - sent <= 6  # the fifth, and at most one already in flight
        assert sorted(i["id"] for i in first["items"]) == served
        assert {s["customer_id"]: s["state"] for s in first["sources"]} == {
            "c1": "stale",
            "c2": "stale",
        }
        assert "circuit_open" in {s["error"]["kind"] for s in first["sources"]}

        # Past the customers' backoff, still inside the breaker's 30 s: asked again,
        # refused at once, nothing sent; the last good jobs are still served.
        clock.advance(60)
        sent = route.call_count
        again = (await api.get("/jobs", params={"limit": 500})).json()
        assert route.call_count == sent
        assert sorted(i["id"] for i in again["items"]) == served
        assert {s["error"]["kind"] for s in again["sources"]} == {"circuit_open"}
        assert {s["error"]["upstream_status"] for s in again["sources"]} == {503}
        message = again["sources"][0]["error"]["message"]
        assert "the circuit breaker is open" in message
        assert "next try at" in message

        metrics = (await api.get("/metrics")).text
        assert "jobs_gateway_upstream_breaker_state 2.0" in metrics
        refused = next(
            line
            for line in metrics.splitlines()
            if line.startswith("jobs_gateway_upstream_breaker_refused_total ")
        )
        assert float(refused.split()[1]) >= 2


# -- the rate limit ---------------------------------------------------------------------------


class CountingLimiter:
    """Lets everything through at once, counting the acquisitions."""

    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self, amount: float = 1) -> None:
        self.acquired += 1


class GateLimiter:
    """Lets `allowance` acquisitions through, then holds the rest until `grant`."""

    def __init__(self, allowance: int) -> None:
        self.allowance = allowance
        self.waits = 0
        self._changed = asyncio.Condition()

    async def acquire(self, amount: float = 1) -> None:
        async with self._changed:
            if self.allowance < 1:
                self.waits += 1
            await self._changed.wait_for(lambda: self.allowance >= 1)
            self.allowance -= 1

    async def grant(self, n: int) -> None:
        async with self._changed:
            self.allowance += n
            self._changed.notify_all()


async def test_every_graph_request_acquires_the_limiter_and_token_requests_do_not(
    rig: Rig,
) -> None:
    limiter = CountingLimiter()
    client = rig.client(attempts=3, rate_limiter=limiter)
    rig.upstream.statuses = {"c1": [503, 200]}  # a retry is a request like any other
    assert await outcome(client, "c1") == "ok"
    assert await outcome(client, "c2") == "ok"
    assert rig.upstream.sent == ["c1", "c1", "c2"]
    assert limiter.acquired == rig.upstream.jobs.call_count == 3
    assert rig.upstream.token.call_count == 1


async def test_requests_past_the_rate_wait_for_the_limiter_before_they_are_sent(
    rig: Rig,
) -> None:
    limiter = GateLimiter(allowance=2)
    client = rig.client(rate_limiter=limiter)
    fetches = [asyncio.create_task(client.fetch_jobs(f"c{n}")) for n in range(5)]
    await until(lambda: limiter.waits == 3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(rig.upstream.sent) == 2, "the other three wait on the limiter, unsent"
    await limiter.grant(3)
    await asyncio.gather(*fetches)
    assert sorted(rig.upstream.sent) == ["c0", "c1", "c2", "c3", "c4"]
    assert limiter.waits == 3


async def test_a_real_limiter_holds_the_request_past_its_rate(rig: Rig) -> None:
    limiter = rate_limiter_for(0.01)  # one request per 100 s
    assert limiter is not None
    client = rig.client(rate_limiter=limiter)
    assert await outcome(client, "c1") == "ok"
    held = asyncio.create_task(client.fetch_jobs("c2"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.upstream.sent == ["c1"]
    assert not limiter.has_capacity()
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held


@pytest.mark.parametrize(
    ("per_second", "max_rate", "period"),
    [(50, 50, 1), (1, 1, 1), (2.5, 2.5, 1), (0.5, 1, 2), (0.01, 1, 100)],
)
def test_the_limiter_holds_one_second_of_requests(
    per_second: float, max_rate: float, period: float
) -> None:
    limiter = rate_limiter_for(per_second)
    assert isinstance(limiter, AsyncLimiter)
    assert (limiter.max_rate, limiter.time_period) == (max_rate, pytest.approx(period))
    assert rate_limiter_for(per_second) is not limiter, "one per call"


def test_a_rate_of_zero_is_no_limit() -> None:
    assert rate_limiter_for(0) is None
