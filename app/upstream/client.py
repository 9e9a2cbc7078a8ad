"""The AvePoint Graph client: customers, job pages, retries and the concurrency bound.

One `AvePointClient` serves the whole process. Every HTTP request it sends waits on one
shared semaphore, so at most `concurrency` requests are in flight across all customers
(token requests are not counted). Each request carries a bearer token from the
`TokenProvider`; a 401 renews the token once and repeats the request.

Retries (tenacity, with the injected `sleep` and `clock`): 408, 429 and every 5xx (the
contract says "429 and 5xx are retried"), timeouts and connection failures, and token
requests that failed in one of those ways. Backoff is exponential with full jitter, or
the upstream's Retry-After (capped at `max_delay`) when it sends one. The walk stops at
`attempts` tries or when the next wait would pass `total_seconds`, and gives up at once
when Retry-After asks for more than the time left. Other statuses (400, 401 after the
renewal, 403, 404, ...) and malformed bodies are not retried. The semaphore is released
before any retry sleep.

A job walk fetches page 1, then the pages `metadata.totalCount` promises concurrently
(at most `PREFETCH_PAGES` tasks ahead); an empty page ends it. totalCount only plans the
concurrent part: the walk ends where the data ends, on a short or empty page. When the
last promised page is full (totalCount was too low) it asks for the next page, and the
next, one at a time until a short or empty one; without a usable totalCount it walks that
way from page 2. Either way at most `MAX_PAGES` pages. Pages are yielded in page order,
as the upstream sent them; `fetch_jobs` drops the jobs that show up on two pages. The
customer list also ends on a short or empty page, walked one page at a time.

Every failure is an `UpstreamError` naming the customer, page, status and request id; a
429 or 5xx that came with Retry-After keeps those seconds in `retry_after`, also when the
client gave up because the wait was longer than its budget. A 403 or 404 of a customer's
jobs says the app may not read that customer (its customer scope) and what to do about it.

Two guards shared by every customer, both off unless given (`open_services` gives both):

- `rate_limiter` (one `aiolimiter.AsyncLimiter` per process, `UPSTREAM_RATE_PER_SECOND`)
  paces every request to the Graph API, retries and the repeat after a 401 included; it is
  acquired inside the semaphore, just before sending, so its pace is the sending pace.
  Token requests are not paced: they go to the identity server, not the Graph API whose
  limit this is, once an hour and shared by every caller; pacing them would also hold
  every task waiting for a token behind a queue of page requests.
- `breaker` (`app.upstream.breaker`) watches every attempt and, when the upstream fails
  for several customers at once, refuses requests for a while with `UpstreamCircuitOpen`
  (not retried; its `retry_after` is the time until the breaker's next try). Counted as
  failures: 5xx and 408 answers, timeouts and connection failures, of the Graph API and
  of the token endpoint; a token-endpoint failure counts as every customer's (without a
  token nobody is served), and once, however many tasks shared the one token request.
  Any 2xx ends a run of failures. Other 4xx answers count neither way: 403/404 (a
  customer outside the app's scope), 429, a 401 after renewal, and refused client
  credentials (a setting to fix, which an open breaker would only hide). A refused
  attempt asks neither for a token nor for a page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NoReturn, Protocol
from urllib.parse import quote

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from app.upstream.auth import TokenProvider
from app.upstream.breaker import EVERYONE, CircuitBreaker, Permit
from app.upstream.errors import (
    UpstreamAuthError,
    UpstreamCircuitOpen,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
    upstream_fields,
)
from app.upstream.wire import (
    PageEnvelope,
    UpstreamCustomer,
    customer_of,
    is_transient,
    parse_page,
    request_id_of,
    retry_after_of,
    unique_jobs,
)

logger = logging.getLogger("app.upstream")

CUSTOMERS_PATH = "/partner/external/v3/general/customers/batch"
JOBS_PATH = "/partner/external/v3/general/customers/{customer_id}/avpt-products/jobs/batch"

MetricsHook = Callable[[str, float, str, int | None], None]
"""(outcome, seconds, endpoint, HTTP status or None) of each upstream exchange."""
"""Called once per HTTP exchange with its outcome ("ok" or an error kind) and seconds."""


class RateLimiter(Protocol):
    """What the client needs of a rate limiter (`aiolimiter.AsyncLimiter` is one)."""

    async def acquire(self, amount: float = 1) -> None: ...


def rate_limiter_for(per_second: float) -> AsyncLimiter | None:
    """The process's limiter for `per_second` requests (None: 0, no limit).

    A leaky bucket holding one second's worth, so up to `per_second` requests may go at
    once after a quiet spell; below one a second, one at a time, `1/per_second` apart.
    """
    if per_second <= 0:
        return None
    if per_second >= 1:
        return AsyncLimiter(per_second, 1.0)
    return AsyncLimiter(1, 1.0 / per_second)


def counts_against_upstream(status: int) -> bool:
    """Whether an answer with this status is the upstream failing (for the breaker)."""
    return status == 408 or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried: bounded in attempts and in total seconds."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30
    total_seconds: float = 120

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if min(self.base_delay, self.max_delay, self.total_seconds) < 0:
            raise ValueError("RetryPolicy delays must not be negative")


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class JobsPage:
    """One page of a customer's jobs, as the upstream sent it.

    `raw`: each row's JSON as the upstream sent it, aligned with `rows` (`raw[i]` is the
    bytes of `rows[i]`), for the store to keep as the raw row with `normalize.raw_json`;
    None when the page was read by the general path (the store then encodes the row).
    """

    customer_id: str
    page: int
    rows: list[dict[str, Any]]
    total_count: int | None
    page_size: int | None
    request_id: str | None
    raw: list[bytes] | None = None


@dataclass(frozen=True)
class JobsFetch:
    """A customer's whole job list: rows de-duplicated by jobId, in page order.

    Rows without a usable jobId are kept as they came, for the caller to count as skipped.
    """

    customer_id: str
    rows: list[dict[str, Any]]
    pages: int
    request_ids: list[str]


def backoff_delay(
    policy: RetryPolicy, attempt: int, draw: Callable[[float, float], float]
) -> float:
    """Full jitter: a draw from [0, min(max_delay, base_delay * 2**(attempt-1))]."""
    ceiling = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt - 1, 62))
    return min(max(draw(0.0, ceiling), 0.0), ceiling)


def is_retriable(error: BaseException) -> bool:
    return isinstance(error, UpstreamError) and error.retriable


def jobs_filter(job_type: int | None, job_module: int | None) -> dict[str, int]:
    """The jobs request body: only the filters that were given."""
    body = {}
    if job_type is not None:
        body["jobType"] = job_type
    if job_module is not None:
        body["jobModule"] = job_module
    return body


def usable_page_size(reported: int | None, requested: int) -> int:
    """The page size the upstream actually used: it may cap ours, never exceed it."""
    return reported if reported is not None and 0 < reported <= requested else requested


@dataclass(frozen=True)
class _Call:
    """What one logical request is about, for messages, logs and retries."""

    what: str  # "jobs" or "customers"
    url: str
    body: dict[str, Any]
    page: int
    customer_id: str | None = None

    @property
    def content(self) -> bytes:
        """The body as httpx's `json=` would send it."""
        return _json_body(self.body)


def _json_body(body: dict[str, Any]) -> bytes:
    if not body:
        return b"{}"
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class _Answer:
    envelope: PageEnvelope
    request_id: str | None


@dataclass
class _Progress:
    """State of one logical request across its attempts."""

    started: float
    renewed: bool = False
    stop_reason: str | None = None


class AvePointClient:
    """Reads customers and their job pages from AvePoint Graph."""

    PAGE_SIZE: ClassVar[int] = 100
    # A walk that never meets an empty page (a looping upstream) stops here.
    MAX_PAGES: ClassVar[int] = 10_000
    # Pages of one customer requested ahead of the one being yielded; the semaphore
    # still decides how many are in flight, this only bounds the tasks one walk holds.
    PREFETCH_PAGES: ClassVar[int] = 16

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        tokens: TokenProvider,
        concurrency: int | asyncio.Semaphore,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        metrics: MetricsHook | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
        utcnow: Callable[[], datetime] = lambda: datetime.now(UTC),
        rate_limiter: RateLimiter | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if isinstance(concurrency, int) and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._semaphore = (
            concurrency
            if isinstance(concurrency, asyncio.Semaphore)
            else asyncio.Semaphore(concurrency)
        )
        self._retry = retry
        self._sleep = sleep
        self._clock = clock
        self._metrics = metrics
        self._jitter = jitter
        self._utcnow = utcnow
        self._rate_limiter = rate_limiter
        self._breaker = breaker
        # Token failures this client has seen. A task that finds it moved while it waited
        # for a token got a copy of another task's failure, which the breaker counted.
        self._token_failures = 0

    # Built by `open_services` through the class, one each per process.
    # -- customers -------------------------------------------------------------------

    async def list_customers(self) -> list[UpstreamCustomer]:
        """Every customer the app may see, over all pages, each id once."""
        customers: dict[str, UpstreamCustomer] = {}
        url = self._base_url + CUSTOMERS_PATH
        for index in range(1, self.MAX_PAGES + 1):
            answer = await self._request(_Call("customers", url, {}, index))
            rows = answer.envelope.data
            skipped = 0
            for row in rows:
                customer = customer_of(row)
                if customer is None:
                    skipped += 1
                else:
                    customers.setdefault(customer.id, customer)
            if skipped:
                logger.warning(
                    "AvePoint customers page %d: %d rows without an id ignored (request id %s)",
                    index,
                    skipped,
                    answer.request_id,
                    extra={"page": index, "upstream_request_id": answer.request_id},
                )
            metadata = answer.envelope.metadata
            size = usable_page_size(metadata.page_size, self.PAGE_SIZE)
            # A short or empty page ends the list, whatever totalCount says: a too-low
            # one would lose customers, and an exact one costs one empty page at most.
            if len(rows) < size:
                break
        else:
            logger.warning("AvePoint customer list stopped after %d pages", self.MAX_PAGES)
        return list(customers.values())

    # -- jobs ------------------------------------------------------------------------

    async def fetch_jobs(
        self,
        customer_id: str,
        *,
        job_type: int | None = None,
        job_module: int | None = None,
    ) -> JobsFetch:
        """All of a customer's jobs; raises an UpstreamError when any page fails."""
        rows: list[dict[str, Any]] = []
        pages = 0
        request_ids: list[str] = []
        # Consumed to the end (or ended by its own exception), so the walk's cleanup of
        # prefetched pages always runs without an explicit aclose().
        async for page in self.iter_job_pages(
            customer_id, job_type=job_type, job_module=job_module
        ):
            pages += 1
            rows.extend(page.rows)
            if page.request_id is not None:
                request_ids.append(page.request_id)
        unique = unique_jobs(rows)
        logger.info(
            "AvePoint customer %s: %d jobs (%d repeated rows dropped) on %d pages",
            customer_id,
            len(unique),
            len(rows) - len(unique),
            pages,
        )
        return JobsFetch(customer_id, unique, pages, request_ids)

    async def iter_job_pages(
        self,
        customer_id: str,
        *,
        job_type: int | None = None,
        job_module: int | None = None,
    ) -> AsyncIterator[JobsPage]:
        """A customer's job pages in page order, ending with the first short or empty one.

        Pages are yielded as the upstream sent them: a job that shows up on two pages is
        in both (`unique_jobs` drops the repeat, as `fetch_jobs` does).
        """
        body = jobs_filter(job_type, job_module)
        first = await self._jobs_page(customer_id, 1, body)
        yield first
        if not first.rows:
            return
        size = usable_page_size(first.page_size, self.PAGE_SIZE)
        total = first.total_count
        last = first
        planned: int | None = None
        # A totalCount smaller than page 1 holds (or missing, or "N/A") plans nothing.
        if total is not None and total >= len(first.rows):
            planned = min(math.ceil(total / size), self.MAX_PAGES)
            pages = self._concurrent_pages(customer_id, body, range(2, planned + 1))
            # aclosing: when our consumer stops early, the prefetched pages are
            # cancelled now rather than whenever the garbage collector gets to them.
            async with aclosing(pages):
                async for page in pages:
                    yield page
                    last = page
            if not last.rows:
                return
        # Past what totalCount promised (a full last page: it may have been too low), or
        # without it: one page at a time until a short or empty one. Asking ahead would
        # cost a request past the end on every walk whose totalCount was right.
        for index in range(last.page + 1, self.MAX_PAGES + 1):
            if len(last.rows) < size:
                return
            last = await self._jobs_page(customer_id, index, body)
            if planned is not None and index == planned + 1 and last.rows:
                logger.info(
                    "AvePoint customer %s: totalCount said %d but page %d has jobs; "
                    "walking on to a short or empty page",
                    customer_id,
                    total,
                    index,
                )
            yield last
        if len(last.rows) >= size:
            logger.warning(
                "AvePoint customer %s: job walk stopped after %d pages", customer_id, self.MAX_PAGES
            )

    async def _concurrent_pages(
        self, customer_id: str, body: dict[str, Any], indexes: range
    ) -> AsyncGenerator[JobsPage, None]:
        """The pages in `indexes`, fetched concurrently, yielded in order up to an empty one."""
        pending = iter(indexes)
        window: deque[asyncio.Task[JobsPage]] = deque()

        def top_up() -> None:
            while len(window) < self.PREFETCH_PAGES:
                index = next(pending, None)
                if index is None:
                    return
                window.append(asyncio.create_task(self._jobs_page(customer_id, index, body)))

        try:
            top_up()
            while window:
                page = await window.popleft()
                yield page
                if not page.rows:
                    return
                top_up()
        finally:
            # An empty page, a failure or a consumer that stopped early: the pages
            # still in the window are not wanted any more.
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)

    async def _jobs_page(self, customer_id: str, index: int, body: dict[str, Any]) -> JobsPage:
        url = self._base_url + JOBS_PATH.format(customer_id=quote(customer_id, safe=""))
        answer = await self._request(_Call("jobs", url, body, index, customer_id))
        metadata = answer.envelope.metadata
        return JobsPage(
            customer_id=customer_id,
            page=index,
            rows=answer.envelope.data,
            total_count=metadata.total_count,
            page_size=metadata.page_size,
            request_id=answer.request_id,
            raw=answer.envelope.raw,
        )

    # -- one request, with retries ---------------------------------------------------

    async def _request(self, call: _Call) -> _Answer:
        progress = _Progress(started=self._clock())

        def stop(state: RetryCallState) -> bool:
            progress.stop_reason = self._stop_reason(progress, state)
            return progress.stop_reason is not None

        def give_up(state: RetryCallState) -> NoReturn:
            error = _failure(state)
            raise error.gave_up(state.attempt_number, progress.stop_reason) from None

        def before_sleep(state: RetryCallState) -> None:
            # The error's message names the upstream's request id when it sent one.
            error = _failure(state)
            logger.warning(
                "%s; retry %d of %d in %.2fs",
                error,
                state.attempt_number,
                self._retry.attempts - 1,
                state.upcoming_sleep,
                extra=upstream_fields(error),
            )

        retrying = AsyncRetrying(
            stop=stop,
            wait=self._wait,
            retry=retry_if_exception(is_retriable),
            sleep=self._sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )
        answer: _Answer = await retrying(self._attempt, call, progress)
        return answer

    def _wait(self, state: RetryCallState) -> float:
        error = _failure(state)
        if error.retry_after is not None:
            return min(error.retry_after, self._retry.max_delay)
        return backoff_delay(self._retry, state.attempt_number, self._jitter)

    def _stop_reason(self, progress: _Progress, state: RetryCallState) -> str | None:
        policy = self._retry
        if state.attempt_number >= policy.attempts:
            return "gave up"
        remaining = policy.total_seconds - (self._clock() - progress.started)
        retry_after = _failure(state).retry_after
        if retry_after is not None and retry_after > remaining:
            return (
                f"gave up: Retry-After asks for {retry_after:g}s and only "
                f"{max(remaining, 0):.0f}s of the retry budget are left"
            )
        if state.upcoming_sleep > remaining:
            return f"gave up: the next retry would pass the {policy.total_seconds:g}s budget"
        return None

    async def _attempt(self, call: _Call, progress: _Progress) -> _Answer:
        permit = self._admit(call)
        try:
            return await self._exchange(call, progress, permit)
        finally:
            # Cancelled, or an outcome that counts neither way; a no-op once settled.
            if permit is not None and self._breaker is not None:
                self._breaker.released(permit)

    async def _exchange(self, call: _Call, progress: _Progress, permit: Permit | None) -> _Answer:
        token = await self._token(call, permit, stale=None)
        response, seconds = await self._send(call, permit, token)
        if response.status_code == 401 and not progress.renewed:
            # Once per logical request: a token refused twice is not a stale token.
            progress.renewed = True
            self._observe(UpstreamAuthError.kind, seconds, call.what, 401)
            request_id = request_id_of(response.headers)
            logger.info(
                "AvePoint refused the token for %s page %d (request id %s); renewing it",
                call.customer_id or call.what,
                call.page,
                request_id,
                extra={"upstream_status": 401, "upstream_request_id": request_id},
            )
            token = await self._token(call, permit, stale=token)
            response, seconds = await self._send(call, permit, token)
        return self._read(call, permit, response, seconds)

    def _admit(self, call: _Call) -> Permit | None:
        """The breaker's leave for one attempt (None without a breaker); refused: raises."""
        if self._breaker is None:
            return None
        permit = self._breaker.admit()
        if permit is None:
            raise self._circuit_open(call)
        return permit

    def _circuit_open(self, call: _Call) -> UpstreamCircuitOpen:
        assert self._breaker is not None
        wait = self._breaker.retry_in()
        last = self._breaker.last_failure
        why = f" (the last: {last})" if last else ""
        if wait > 0:
            at = (self._utcnow() + timedelta(seconds=wait)).astimezone(UTC)
            when = f"next try at {at:%Y-%m-%dT%H:%M:%SZ}, in {math.ceil(wait)}s"
        else:
            when = "one probe request is testing whether it has recovered; next try when it answers"
        # `status`: the upstream's answer behind the refusal (the one that last failed),
        # so that a source refused says what the upstream is answering.
        return UpstreamCircuitOpen(
            f"AvePoint {call.what} request not sent: the circuit breaker is open after "
            f"upstream failures across customers{why}; {when}",
            customer_id=call.customer_id,
            page=call.page,
            status=self._breaker.last_status,
            retry_after=wait if wait > 0 else None,
        )

    def _succeeded(self, permit: Permit | None) -> None:
        if permit is not None and self._breaker is not None:
            self._breaker.succeeded(permit)

    def _failed(self, permit: Permit | None, customer: Hashable, error: UpstreamError) -> None:
        if permit is not None and self._breaker is not None:
            self._breaker.failed(permit, customer, error.summary, error.status)

    async def _token(self, call: _Call, permit: Permit | None, *, stale: str | None) -> str:
        """A token (renewed when `stale` is given); failures name this call's customer and page."""
        seen = self._token_failures
        try:
            if stale is None:
                return await self._tokens.token()
            return await self._tokens.renew(stale)
        except UpstreamAuthError as error:
            # TokenProvider hands one failed request's error to every task that waited on
            # it; the task whose request it was sees the count unmoved, and counts it.
            own = self._token_failures == seen
            if own:
                self._token_failures += 1
            if own and (error.status is None or counts_against_upstream(error.status)):
                self._failed(permit, EVERYONE, error)
            raise error.replace(customer_id=call.customer_id, page=call.page) from None

    async def _send(
        self, call: _Call, permit: Permit | None, token: str
    ) -> tuple[httpx.Response, float]:
        """One HTTP exchange, inside the semaphore and the rate limit; transport failures
        become typed."""
        request = self._build(call, token)
        async with self._semaphore:
            if self._rate_limiter is not None:
                await self._rate_limiter.acquire()
            started = self._clock()
            try:
                response = await self._http.send(request)
            except httpx.RequestError as exc:
                error = _transport_error(call, exc)
                self._observe(error.kind, self._clock() - started, call.what, None)
                if isinstance(error, UpstreamTimeout | UpstreamConnectionError):
                    self._failed(permit, call.customer_id, error)
                # `from None`: the httpx error holds the request and its Authorization.
                raise error from None
            seconds = self._clock() - started
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "AvePoint %s customer=%s page=%d -> HTTP %d (request id %s)",
                call.what,
                call.customer_id,
                call.page,
                response.status_code,
                request_id_of(response.headers),
            )
        return response, seconds

    def _build(self, call: _Call, token: str) -> httpx.Request:
        """The request of one attempt, built straight: the query and the JSON body are known
        text, so the client's general merging (URL parsing, params encoding, JSON encoding
        and header merging on every page) is skipped. A client with cookies or default
        params of its own takes its general path, which adds them."""
        http = self._http
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        params = {"pageIndex": call.page, "pageSize": self.PAGE_SIZE}
        if http.cookies or http.params:
            return http.build_request(
                "POST", call.url, params=params, json=call.body, headers=headers
            )
        merged = httpx.Headers(http.headers)
        merged.update(headers)
        merged["Content-Type"] = "application/json"
        return httpx.Request(
            "POST",
            f"{call.url}?pageIndex={call.page}&pageSize={self.PAGE_SIZE}",
            headers=merged,
            content=call.content,
            extensions={"timeout": http.timeout.as_dict()},
        )

    def _read(
        self, call: _Call, permit: Permit | None, response: httpx.Response, seconds: float
    ) -> _Answer:
        request_id = request_id_of(response.headers)
        status = response.status_code
        try:
            if not 200 <= status < 300:
                raise self._status_error(call, response, request_id)
            # The upstream answered: it is up, whatever the body turns out to be.
            self._succeeded(permit)
            envelope = parse_page(
                response.content,
                customer_id=call.customer_id,
                page=call.page,
                status=status,
                request_id=request_id,
            )
        except UpstreamError as error:
            self._observe(error.kind, seconds, call.what, status)
            if counts_against_upstream(status):
                self._failed(permit, call.customer_id, error)
            raise
        self._observe("ok", seconds, call.what, status)
        return _Answer(envelope, request_id)

    def _status_error(
        self, call: _Call, response: httpx.Response, request_id: str | None
    ) -> UpstreamError:
        status = response.status_code
        context: dict[str, Any] = {
            "customer_id": call.customer_id,
            "page": call.page,
            "status": status,
            "request_id": request_id,
        }
        retriable = status in (408, 429) or 500 <= status <= 599
        if retriable:
            context["retriable"] = True
            context["retry_after"] = retry_after_of(response.headers, now=self._utcnow())
        if status == 401:
            return UpstreamAuthError(
                f"AvePoint refused the {call.what} request's token even after renewing it",
                **context,
            )
        if status == 429:
            return UpstreamRateLimited(f"AvePoint rate-limited the {call.what} request", **context)
        if status in (403, 404) and call.customer_id is not None:
            return UpstreamStatusError(_out_of_scope(call.customer_id, status), **context)
        summary = f"AvePoint answered the {call.what} request with HTTP {status}"
        return UpstreamStatusError(summary, **context)

    def _observe(self, outcome: str, seconds: float, endpoint: str, status: int | None) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics(outcome, seconds, endpoint, status)
        except Exception:
            # Metrics are a side channel: a broken hook must not fail a refresh.
            logger.exception("AvePoint metrics hook failed")


def _out_of_scope(customer_id: str, status: int) -> str:
    """What a 403 or 404 of a customer's jobs means, and what to do about it."""
    remedy = (
        "add it to the app's customer scope in AvePoint Online Services, "
        "or remove it from CUSTOMER_IDS"
    )
    if status == 404:
        return (
            f"AvePoint does not know customer {customer_id!r}, or the AvePoint app may not "
            f"read it (HTTP 404): check the id, {remedy}"
        )
    return f"The AvePoint app may not read customer {customer_id!r} (HTTP 403): {remedy}"


def _failure(state: RetryCallState) -> UpstreamError:
    """The UpstreamError that ended an attempt (the retry predicate only passes those)."""
    assert state.outcome is not None
    error = state.outcome.exception()
    assert isinstance(error, UpstreamError)
    return error


def _transport_error(call: _Call, exc: httpx.RequestError) -> UpstreamError:
    context: dict[str, Any] = {"customer_id": call.customer_id, "page": call.page}
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(
            f"AvePoint {call.what} request timed out ({name})", retriable=True, **context
        )
    if isinstance(exc, httpx.DecodingError):
        return UpstreamMalformed(
            f"AvePoint {call.what} answer could not be decoded ({name})", **context
        )
    return UpstreamConnectionError(
        f"AvePoint {call.what} request failed to connect ({name})",
        retriable=is_transient(exc),
        **context,
    )
