"""The fault matrix (issue 9): what one customer's refresh makes of each way the upstream fails.

Each row of `ROWS` is one test: the real app (lifespan, database) against a respx-faked
upstream (token, customer list and jobs endpoints).

1. A good first snapshot of the customer (`GOOD`: 3 jobs on one page), unless the row has
   `before=None` (a customer that never had good data, and the data-shape rows of `shape`).
2. The clock moves past the TTL, the upstream switches to the row's `fault`, and one
   `GET /jobs` runs the refresh and waits for it. Backoff sleeps are injected (recorded by
   the `sleeps` fixture), so nothing really waits.
3. The row's columns:

   - state   fresh / stale / error, as `sources` shows the customer (fresh: not listed),
             and as `freshness` counts it;
   - kind    the source's `error.kind`; status its `error.upstream_status`;
   - tries   the customer's jobs requests during that refresh, counted on the respx route
             (first try, retries and the repeat after a renewed token);
   - jobs    what is served: KEPT is the previous good snapshot item for item (nothing lost,
             nothing half-written although the upstream meanwhile holds other data); a
             number is how many distinct jobs of the new listing are served;
   - check   what else the row is about (sleeps, the token, the normalized fields).

   A failed customer is also asked once more `quiet_for` seconds later: that request is
   answered from the store without an upstream call (its backoff), in the same state.

One customer per row (a circuit breaker across customers is not what this tests); the 404
row adds a healthy neighbour to show the failure stays that customer's own. Every row runs
on SQLite; `ON_POSTGRES` picks the rows also run on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import respx

from app.clock import iso
from tests.api.conftest import UPSTREAM, Gateway, Sleeps, services_of
from tests.clock import FakeClock

CUSTOMER = "c-fault-0001"
NEIGHBOUR = "c-healthy-0002"
TTL = 300
JOBS_PATH = "/partner/external/v3/general/customers/{}/avpt-products/jobs/batch"
CUSTOMERS_PATH = "/partner/external/v3/general/customers/batch"

Json = dict[str, Any]
# How the upstream answers the n-th jobs request (1-based, counted from the fault on) for
# one page: a response, or an httpx transport error raised.
Answer = Callable[[httpx.Request, int, int], httpx.Response]


# -- job rows and listings ------------------------------------------------------------------

MISSING: Any = object()  # a field left out of a row


def job(n: int, **fields: Any) -> Json:
    """A well-formed upstream row; `fields` override or, set to MISSING, remove fields."""
    row: Json = {
        "jobType": 7,
        "jobModule": 304,
        "status": 2,
        "jobId": f"J{n:04d}",
        "name": f"backup {n}",
        "totalCount": "10",
        "failedCount": "0",
        "successfulCount": "10",
        "skippedCount": "0",
        "warningCount": "0",
        "backupSize": "1 GB",
        "startTime": f"2026-11-28T{n // 60 % 24:02d}:{n % 60:02d}:00Z",
        "endTime": f"2026-11-28T{n // 60 % 24:02d}:{n % 60:02d}:30Z",
        "jobDuration": "30s",
        "lastModifyTime": f"2026-11-28T{n // 60 % 24:02d}:{n % 60:02d}:31Z",
    }
    row.update(fields)
    return {k: v for k, v in row.items() if v is not MISSING}


GOOD = [job(1, status=3), job(2), job(3)]
# What the upstream holds when the fault strikes: job 1 finished since, job 4 is new. A
# failed refresh must store none of it.
NEXT = [job(1), job(2), job(3), job(4)]
NEXT_150 = [job(n) for n in range(1, 151)]


def listing(rows: list[Json], *, total: Any = None, metadata: bool = True) -> Answer:
    """Pages of `rows` at the requested pageSize; `totalCount` is len(rows) unless given."""

    def answer(request: httpx.Request, page: int, n: int) -> httpx.Response:
        size = int(request.url.params["pageSize"])
        body: Json = {"data": rows[(page - 1) * size : page * size]}
        if metadata:
            body["metadata"] = {
                "pageIndex": page,
                "pageSize": size,
                "totalCount": len(rows) if total is None else total,
            }
        return httpx.Response(200, json=body, headers={"request-id": f"rid-{page}-{n}"})

    return answer


GOOD_LISTING = listing(GOOD)


def status(code: int, **headers: str) -> Answer:
    """Every request answered with `code` (header names with `_` for `-`)."""
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return lambda request, page, n: httpx.Response(code, headers=named)


def raises(error: type[httpx.TransportError], message: str) -> Answer:
    def answer(request: httpx.Request, page: int, n: int) -> httpx.Response:
        raise error(message, request=request)

    return answer


def body(content: bytes, content_type: str = "application/json") -> Answer:
    """A 200 whose body is `content` as it is."""
    return lambda request, page, n: httpx.Response(
        200, content=content, headers={"content-type": content_type}
    )


def once(first: Answer, then: Answer) -> Answer:
    """The first request answered by `first`, every later one by `then`."""
    return lambda request, page, n: (first if n == 1 else then)(request, page, n)


class StopsMidBody(httpx.AsyncByteStream):
    """A body whose first bytes arrive and whose rest never does (the read times out)."""

    def __init__(self, head: bytes, request: httpx.Request) -> None:
        self.head = head
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        raise httpx.ReadTimeout("the rest of the page never arrived", request=self.request)


def stops_mid_body(rows: list[Json], page: int) -> Answer:
    """`listing(rows)`, except that page `page` stops arriving halfway through its body."""
    pages = listing(rows)

    def answer(request: httpx.Request, index: int, n: int) -> httpx.Response:
        full = pages(request, index, n)
        if index != page:
            return full
        return httpx.Response(
            200,
            headers={"content-type": "application/json"},
            stream=StopsMidBody(full.content[: len(full.content) // 2], request),
        )

    return answer


# -- the upstream ---------------------------------------------------------------------------


class FakeUpstream:
    """The identity server, the customer list and the jobs endpoint, as respx routes.

    `jobs` is the customer's route (its call_count is the attempts column); the neighbour's
    jobs always answer well.
    """

    def __init__(self, before: Answer | None) -> None:
        self.router = respx.MockRouter(
            base_url=UPSTREAM, assert_all_called=False, assert_all_mocked=True
        )
        self.token = self.router.post("/connect/token").mock(side_effect=self._token)
        self.router.post(CUSTOMERS_PATH).mock(
            return_value=httpx.Response(
                200,
                json={
                    "data": [
                        {"id": CUSTOMER, "organization": "Contoso"},
                        {"id": NEIGHBOUR, "organization": "Fabrikam"},
                    ],
                    "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 2},
                },
            )
        )
        self.jobs = self.router.post(JOBS_PATH.format(CUSTOMER)).mock(side_effect=self._jobs)
        healthy = listing([job(900 + n) for n in range(3)])
        self.router.post(JOBS_PATH.format(NEIGHBOUR)).mock(
            side_effect=lambda request: healthy(request, int(request.url.params["pageIndex"]), 1)
        )
        self.answer: Answer = before or status(500)
        self.issued = 0
        self.calls = 0  # jobs requests since the last `misbehave`
        self.since = 0  # the route's call_count then

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(self.router.async_handler)

    def misbehave(self, answer: Answer) -> None:
        self.answer = answer
        self.calls = 0
        self.since = self.jobs.call_count

    @property
    def attempts(self) -> int:
        """Jobs requests of the customer since the fault, as the respx route counted them."""
        return self.jobs.call_count - self.since

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.issued += 1
        return httpx.Response(200, json={"access_token": f"tok-{self.issued}", "expires_in": 3600})

    def _jobs(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.answer(request, int(request.url.params["pageIndex"]), self.calls)


# -- the matrix -----------------------------------------------------------------------------

FRESH, STALE, ERROR = "fresh", "stale", "error"
KEPT = "kept"


@dataclass
class Seen:
    """What a row's `check` may look at after the faulted request."""

    body: Json
    items: dict[str, Json]  # the customer's served jobs by job_id
    upstream: FakeUpstream
    sleeps: list[float]
    tokens_before: int  # tokens issued before the fault


Check = Callable[[Seen], None]


@dataclass(frozen=True)
class Row:
    name: str
    fault: Answer
    state: str
    kind: str | None
    status: int | None
    attempts: int
    jobs: str | int
    check: Check | None = None
    before: Answer | None = GOOD_LISTING
    neighbour: bool = False
    # A failed customer is asked again no sooner than this many seconds later.
    quiet_for: int = 1


def waited(*seconds: float) -> Check:
    def check(seen: Seen) -> None:
        assert seen.sleeps == list(seconds), "Retry-After is honoured between the attempts"

    return check


def jittered(retries: int) -> Check:
    def check(seen: Seen) -> None:
        assert len(seen.sleeps) == retries
        for attempt, slept in enumerate(seen.sleeps, start=1):
            assert 0 <= slept <= 0.5 * 2 ** (attempt - 1), "full jitter, doubling from 0.5 s"

    return check


def gave_up_without_waiting(seen: Seen) -> None:
    assert seen.sleeps == [], "3600 s is past the retry budget: no sleep, no second try"


def token_renewed_once(seen: Seen) -> None:
    assert seen.upstream.issued == seen.tokens_before + 1, "one new token"
    refused, repeated = (call.request for call in seen.upstream.jobs.calls[-2:])
    assert refused.headers["authorization"] == f"Bearer tok-{seen.tokens_before}"
    assert repeated.headers["authorization"] == f"Bearer tok-{seen.tokens_before + 1}"
    assert seen.items["J0001"]["status"] == "finished", "the repeated request's data is stored"


def token_renewed_once_then_given_up(seen: Seen) -> None:
    assert seen.upstream.issued == seen.tokens_before + 1, "renewed once, not again"


def neighbour_unharmed(seen: Seen) -> None:
    assert seen.body["freshness"]["customers"] == 2
    assert seen.body["freshness"]["fresh"] == 1
    assert [s["customer_id"] for s in seen.body["sources"]] == [CUSTOMER]
    served = {i["customer_id"] for i in seen.body["items"]}
    assert served == {NEIGHBOUR}, "the neighbour's jobs are served"


def each_job_once(seen: Seen) -> None:
    ids = [i["job_id"] for i in seen.body["items"] if i["customer_id"] == CUSTOMER]
    assert len(ids) == len(set(ids)) == 150
    assert set(ids) == {f"J{n:04d}" for n in range(1, 151)}


def unknown_codes(seen: Seen) -> None:
    odd = seen.items["J0001"]
    assert (odd["job_type"], odd["job_type_code"]) == ("unknown", 99)
    assert (odd["module"], odd["module_code"]) == ("unknown", 999)
    assert (odd["status"], odd["status_code"]) == ("unknown", 42)
    # A module the change log added after the page was written is known by its new name.
    late = seen.items["J0002"]
    assert (late["module"], late["module_code"]) == ("azure_postgresql", 371)


NULL_FIELDS = (
    "name",
    "job_type_code",
    "module_code",
    "status_code",
    "backup_size_bytes",
    "start_time",
    "end_time",
    "duration_seconds",
    "last_modified",
)
NULL_COUNTS = {"total": None, "failed": None, "successful": None, "skipped": None, "warning": None}


def all_null(item: Json) -> None:
    assert {f: item[f] for f in NULL_FIELDS} == dict.fromkeys(NULL_FIELDS)
    assert item["counts"] == NULL_COUNTS
    assert (item["job_type"], item["module"], item["status"]) == ("unknown",) * 3


def missing_fields(seen: Seen) -> None:
    all_null(seen.items["J0001"])  # nothing but a jobId
    assert "J0002" in seen.items  # the row without a jobId is skipped, its neighbours kept


def na_everywhere(seen: Seen) -> None:
    all_null(seen.items["J0001"])  # every string "N/A", the codes too
    # The row seen live (jobType 0, jobModule 0, every string "N/A", its jobId too) has no
    # usable id: skipped, never a 500.
    assert set(seen.items) == {"J0001"}


def odd_timestamps(seen: Seen) -> None:
    odd = seen.items["J0001"]
    assert odd["start_time"] == "2026-03-14T12:00:00Z"  # 03-14-2026T12:00:00Z
    assert odd["end_time"] == "2026-03-14T12:30:00Z"  # 2026-03-14T13:30:00+01:00
    assert odd["last_modified"] == "2026-03-14T12:31:00Z"  # 2026-03-14T12:31:00.1234567Z
    garbled = seen.items["J0002"]
    assert garbled["start_time"] is None  # "yesterday"
    assert garbled["end_time"] is None  # "2026-13-45T99:00:00Z"
    assert garbled["last_modified"] == "2026-03-14T12:31:00Z"  # "03/14/2026 12:31:00"


def shape(name: str, fault: Answer, attempts: int, jobs: int, check: Check | None = None) -> Row:
    """A data-shape row: the customer's first refresh, which succeeds (fresh, no error)."""
    return Row(name, fault, FRESH, None, None, attempts, jobs, check, before=None)


# The faults, by name.
TIMEOUT = raises(httpx.ReadTimeout, "timed out")
RESET = raises(httpx.ReadError, "[Errno 104] Connection reset by peer")
LIMITED_7S = status(429, retry_after="7")
LIMITED_1H = status(429, retry_after="3600")  # longer than the client's retry budget
LIMITED = status(429)
RENEWED = once(status(401), listing(NEXT))  # refused once, then answered
_PAGE = json.dumps({"data": NEXT, "metadata": {"pageIndex": 1, "pageSize": 100}}).encode()
BAD_JSON = body(b'{"data": [{"jobId": "J0001",}]}')
TRUNCATED = body(_PAGE[: len(_PAGE) // 2])
HTML = body(b"<html><body>Down for maintenance</body></html>", "text/html")
NEVER_ENDS = stops_mid_body(NEXT_150, page=2)  # page 1 arrives, page 2 stops halfway

# Data shapes, each the whole of what the upstream lists.
TOO_HIGH = listing(NEXT_150, total=250)
TOO_LOW = listing([job(n) for n in range(1, 251)], total=100)
DUPLICATES = listing(NEXT_150[:100] + NEXT_150[95:])  # 95..99 again on page 2
UNKNOWN_CODES = listing([job(1, jobType=99, jobModule=999, status=42), job(2, jobModule=371)])
MISSING_FIELDS = listing([{"jobId": "J0001"}, job(2, jobId=MISSING), job(2)], metadata=False)
N_A = listing(
    [
        job(1, **dict.fromkeys(job(0).keys() - {"jobId"}, "N/A")),
        dict.fromkeys(job(0), "N/A") | {"jobType": 0, "jobModule": 0},  # as seen live
    ],
    total="N/A",
)
ODD_TIMES = listing(
    [
        job(
            1,
            startTime="03-14-2026T12:00:00Z",
            endTime="2026-03-14T13:30:00+01:00",
            lastModifyTime="2026-03-14T12:31:00.1234567Z",
        ),
        job(
            2,
            startTime="yesterday",
            endTime="2026-13-45T99:00:00Z",
            lastModifyTime="03/14/2026 12:31:00",
        ),
    ]
)

# fmt: off
ROWS = [
    #   name                    fault          state  kind            status tries   jobs
    Row("timeout",              TIMEOUT,       STALE, "timeout",      None,  5,      KEPT,
        check=jittered(4)),
    Row("connection-reset",     RESET,         STALE, "connection",   None,  5,      KEPT,
        check=jittered(4)),
    Row("429-retry-after",      LIMITED_7S,    STALE, "rate_limited", 429,   5,      KEPT,
        check=waited(7, 7, 7, 7)),
    Row("429-long-retry-after", LIMITED_1H,    STALE, "rate_limited", 429,   1,      KEPT,
        check=gave_up_without_waiting, quiet_for=TTL + 100),  # backed off past the TTL
    Row("429-no-retry-after",   LIMITED,       STALE, "rate_limited", 429,   5,      KEPT,
        check=jittered(4)),
    Row("500",                  status(500),   STALE, "http_status",  500,   5,      KEPT),
    Row("502",                  status(502),   STALE, "http_status",  502,   5,      KEPT),
    Row("503",                  status(503),   STALE, "http_status",  503,   5,      KEPT),
    Row("504",                  status(504),   STALE, "http_status",  504,   5,      KEPT),
    Row("401-then-success",     RENEWED,       FRESH, None,           None,  2,      4,
        check=token_renewed_once),
    Row("401-twice",            status(401),   STALE, "auth",         401,   2,      KEPT,
        check=token_renewed_once_then_given_up),
    Row("403",                  status(403),   STALE, "http_status",  403,   1,      KEPT),
    Row("404-outside-scope",    status(404),   ERROR, "http_status",  404,   1,      0,
        check=neighbour_unharmed, before=None, neighbour=True),
    Row("malformed-json",       BAD_JSON,      STALE, "malformed",    200,   1,      KEPT),
    Row("truncated-body",       TRUNCATED,     STALE, "malformed",    200,   1,      KEPT),
    Row("wrong-content-type",   HTML,          STALE, "malformed",    200,   1,      KEPT),
    Row("page-never-finishes",  NEVER_ENDS,    STALE, "timeout",      None,  1 + 5,  KEPT,
        check=jittered(4)),
    # Data shapes: the customer's first refresh; what is stored and served of it.
    #     name                       upstream lists  tries jobs
    shape("totalcount-too-high",     TOO_HIGH,       3,    150),
    shape("totalcount-too-low",      TOO_LOW,        3,    250),
    shape("duplicates-across-pages", DUPLICATES,     2,    150, each_job_once),
    shape("unknown-enum-codes",      UNKNOWN_CODES,  1,    2,   unknown_codes),
    shape("missing-fields",          MISSING_FIELDS, 1,    2,   missing_fields),
    shape("na-everywhere",           N_A,            1,    1,   na_everywhere),
    shape("odd-timestamp-shapes",    ODD_TIMES,      1,    2,   odd_timestamps),
]
# fmt: on

# Every row runs on SQLite. On PostgreSQL (leases kept as the failed customer's backoff,
# staged rows, upserts) one row per kind of failure and the shapes that test the store;
# the whole matrix on both would cost a database per row for the same upstream behaviour.
ON_POSTGRES = {
    "timeout",
    "429-long-retry-after",
    "503",
    "401-then-success",
    "404-outside-scope",
    "malformed-json",
    "page-never-finishes",
    "totalcount-too-low",
    "duplicates-across-pages",
    "na-everywhere",
    "odd-timestamp-shapes",
}
CASES = [pytest.param(row, "sqlite", id=f"{row.name}-sqlite") for row in ROWS] + [
    pytest.param(row, "postgres", id=f"{row.name}-postgres", marks=pytest.mark.postgres)
    for row in ROWS
    if row.name in ON_POSTGRES
]


async def customer_part(api: httpx.AsyncClient) -> tuple[Json, list[Json]]:
    """One /jobs answer (the refresh it waited on included) and the customer's items."""
    response = await api.get("/jobs", params={"limit": 500})
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer, [i for i in answer["items"] if i["customer_id"] == CUSTOMER]


@pytest.mark.parametrize(("row", "database_url"), CASES, indirect=["database_url"])
async def test_fault_matrix(row: Row, gateway: Gateway, clock: FakeClock, sleeps: Sleeps) -> None:
    upstream = FakeUpstream(row.before)
    customers = [CUSTOMER, NEIGHBOUR] if row.neighbour else [CUSTOMER]
    async with gateway(transport=upstream.transport, customer_ids=",".join(customers)) as api:
        good_at = iso(clock.now)
        before: list[Json] = []
        if row.before is not None:
            first, before = await customer_part(api)
            assert first["sources"] == [], "the first snapshot is good"
            assert sorted(i["job_id"] for i in before) == ["J0001", "J0002", "J0003"]
            clock.advance(TTL + 1)
        upstream.misbehave(row.fault)
        tokens_before = upstream.issued
        answer, after = await customer_part(api)
        # On a loaded machine the request may stop waiting (REQUEST_WAIT_SECONDS) before the
        # refresh has given up retrying: count its attempts once it is over.
        refresher = services_of(api).refresher
        for _ in range(3000):
            if not refresher.in_flight(CUSTOMER):
                break
            await asyncio.sleep(0.01)
        attempts = upstream.attempts
        if row.state != FRESH:
            # The failing customer is backed off: the next request is answered from the store.
            clock.advance(row.quiet_for)
            again, served_again = await customer_part(api)
            assert upstream.attempts == attempts, "not asked again before its backoff ends"
            assert [s["state"] for s in again["sources"] if s["customer_id"] == CUSTOMER] == [
                row.state
            ]
            assert served_again == after

    # state
    sources = {s["customer_id"]: s for s in answer["sources"]}
    source = sources.get(CUSTOMER)
    assert (source["state"] if source else FRESH) == row.state
    states = [row.state] + [FRESH] * (len(customers) - 1)
    assert {k: v for k, v in answer["freshness"].items() if k != "oldest_fetched_at"} == {
        "customers": len(customers),
        **{state: states.count(state) for state in (FRESH, STALE, "refreshing", ERROR)},
    }
    # kind and upstream status
    error = source["error"] if source else None
    assert (error and error["kind"], error and error["upstream_status"]) == (row.kind, row.status)
    assert error is None or error["message"]
    # attempts
    assert attempts == row.attempts
    # jobs
    if row.jobs == KEPT:
        assert after == before, "the previous good snapshot is served as it was"
        assert source is not None
        assert (source["fetched_at"], source["age_seconds"]) == (good_at, TTL + 1)
    else:
        assert len(after) == len({i["job_id"] for i in after}) == row.jobs
        assert all(i["fetched_at"] == iso(clock.now) or i in before for i in after)
    if row.check is not None:
        items = {i["job_id"]: i for i in after}
        row.check(Seen(answer, items, upstream, sleeps.seconds, tokens_before))
