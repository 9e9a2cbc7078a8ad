"""An upstream stand-in for the load benchmark: AvePoint Graph's token, customers and jobs.

    python -m bench.standin --port 8901 --customers 100 --jobs 1000 --latency 0.05

Why not the app's own simulator: the product should be measured against an upstream it was
not written together with. This is a separate, minimal implementation of the wire format in
`shared/reference/avepoint-jobs-batch.md` (integer `jobType`, `jobModule` and `status`, every
other field a string such as "2323", "0.84 GB", "17m39s" or "2025-09-11T03:21:16Z"), as a raw
ASGI app served by uvicorn in a process of its own.

It is built to never be the bottleneck of what it serves:
- the data is a pure function of (customer, job) for C customers x J jobs: no randomness, no
  clock, the same bytes in every run;
- customers share a handful of "variants" of job rows; each variant's pages are rendered to
  bytes once, with a fixed-width placeholder where the customer's number goes, so a request
  costs one `bytes.replace`, a fixed `asyncio.sleep` (the latency) and the write;
- about 5% of the jobs have status 3 (failed).

What it measures, for the jobs endpoint only: the monotonic and wall time of the first request
received and of the last response sent, the number of requests (by status), the requests in
flight and their maximum. `GET /stats` answers them as JSON, `POST /stats/reset` zeroes them.
On Linux `time.monotonic()` is the system-wide CLOCK_MONOTONIC, so another process on the
machine can compare these times with its own.

`POST /change?customers=K` changes K customers' data (spread evenly over the customers): the
status of each one's newest job flips between failed and finished and its `lastModifyTime`
moves on, so an incremental refresh has exactly K customers with one changed job each.
`&share=F` changes the newest F of each one's jobs instead of one (`share=0.1`: 10% of every
customer's jobs, for a refresh that ingests changes; the changed pages are rendered before the
answer, so the walk's requests stay as fast as ever).
`&offset=N` shifts the K customers picked by N (modulo C), so that calls with a growing offset
(the soak benchmark, `bench/soak.py`) walk over every customer: each change fails or recovers
one job, and the service's alerts open and resolve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

TOKEN_PATH = "/connect/token"
CUSTOMERS_PATH = "/partner/external/v3/general/customers/batch"
JOBS_PREFIX = "/partner/external/v3/general/customers/"
JOBS_SUFFIX = "/avpt-products/jobs/batch"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
TOKEN = "standin-token"

# Customers with the same number modulo VARIANTS share their rows (apart from their ids).
VARIANTS = 7
# Where a customer's number goes in a variant's rendered page: fixed width, never in data.
PLACEHOLDER = b"~~~~~~"
NEWEST_START = datetime(2025, 9, 11, 3, 21, 16, tzinfo=UTC)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# (jobType, jobModule) pairs the reference lists: Microsoft 365, Google Workspace, IaaS +
# PaaS, Dynamics 365 and a scan.
PLANS = (
    (7, 302),
    (7, 303),
    (7, 304),
    (7, 305),
    (7, 308),
    (11, 501),
    (11, 504),
    (12, 356),
    (12, 358),
    (16, 401),
    (0, 0),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def customer_id(number: int) -> str:
    """The id of customer `number` (0-based): a UUID, the same in every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://bench.jobs-gateway/customer/{number}"))


def mix(*values: int) -> int:
    """A cheap deterministic hash of small integers (Knuth's multiplicative, folded)."""
    h = 0x9E3779B9
    for v in values:
        h = ((h ^ v) * 2654435761 + 0x7F4A7C15) & 0xFFFFFFFF
        h ^= h >> 15
    return h


def status_of(h: int) -> int:
    """About 5% failed (3); the rest mostly finished, with a few of the other states."""
    bucket = h % 100
    if bucket < 5:
        return 3
    if bucket < 13:
        return 4  # finished with exception
    if bucket < 16:
        return 1  # running
    if bucket < 18:
        return 8  # canceled
    if bucket < 19:
        return 7  # failed to start
    return 2


def duration_text(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def size_text(h: int) -> str:
    kind = h % 10
    if kind == 0:
        return "N/A"
    if kind < 3:
        return f"{h % 1000} MB"
    return f"{(h % 50000) / 100:.2f} GB"


def job_row(variant: int, job: int, tag: str, generation: int = 0) -> dict[str, Any]:
    """Job `job` (0 = newest) of a customer of `variant`; `tag` is its 6-character number."""
    h = mix(variant, job)
    job_type, module = PLANS[h % len(PLANS)]
    status = status_of(mix(h, 1))
    start = NEWEST_START - timedelta(hours=job, seconds=h % 900)
    seconds = 30 + mix(h, 2) % 7200
    end = start + timedelta(seconds=seconds)
    modified = end + timedelta(seconds=1)
    if generation:
        # A changed customer: its newest job flips between failed and finished.
        if generation % 2 == 1:
            status = 2 if status == 3 else 3
        modified += timedelta(minutes=generation)
    total = mix(h, 3) % 5000
    failed = mix(h, 4) % 50 if status in (3, 4) and total else 0
    running = status == 1
    return {
        "jobType": job_type,
        "jobModule": module,
        "status": status,
        "jobId": f"FB{start.strftime('%Y%m%d%H%M%S')}{tag}{job:06d}",
        "name": "N/A" if h % 4 == 0 else f"Backup plan {h % 37}",
        "totalCount": str(total),
        "failedCount": str(failed),
        "successfulCount": str(total - failed),
        "skippedCount": str(mix(h, 5) % 3 if h % 9 == 0 else 0),
        "warningCount": "0",
        "backupSize": size_text(mix(h, 6)),
        "startTime": start.strftime(TIME_FORMAT),
        "endTime": "N/A" if running else end.strftime(TIME_FORMAT),
        "jobDuration": "N/A" if running else duration_text(seconds),
        "lastModifyTime": (start if running else modified).strftime(TIME_FORMAT),
    }


def page_bytes(rows: list[dict[str, Any]], index: int, size: int, total: int) -> bytes:
    body = {
        "data": rows,
        "metadata": {"pageIndex": index, "pageSize": size, "totalCount": total},
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Stats:
    """What the jobs endpoint saw since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request_mono: float | None = None
        self.first_request_wall: float | None = None
        self.last_response_mono: float | None = None
        self.last_response_wall: float | None = None
        self.customers_requests = 0
        self.token_requests = 0

    def enter(self) -> None:
        if self.first_request_mono is None:
            self.first_request_mono = time.monotonic()
            self.first_request_wall = time.time()
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, status: int) -> None:
        self.in_flight -= 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.last_response_mono = time.monotonic()
        self.last_response_wall = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs_requests": self.requests,
            "jobs_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "first_request_mono": self.first_request_mono,
            "first_request_wall": self.first_request_wall,
            "last_response_mono": self.last_response_mono,
            "last_response_wall": self.last_response_wall,
            "customers_requests": self.customers_requests,
            "token_requests": self.token_requests,
            "now_mono": time.monotonic(),
        }


class StandIn:
    """The raw ASGI app: C customers x J jobs, `latency` seconds per customers/jobs request."""

    def __init__(self, customers: int, jobs: int, latency: float) -> None:
        self.customers = customers
        self.jobs = jobs
        self.latency = latency
        self.stats = Stats()
        self.ids = [customer_id(n) for n in range(customers)]
        self.number = {cid: n for n, cid in enumerate(self.ids)}
        self.tags = [f"{n:06d}".encode() for n in range(customers)]
        self.generation: dict[int, int] = {}
        self.changed_jobs: dict[int, int] = {}  # customer -> how many of its newest changed
        # (variant, pageIndex, pageSize) -> a page with PLACEHOLDER for the customer's number.
        self.templates: dict[tuple[int, int, int], bytes] = {}
        # (customer, generation, pageIndex, pageSize) -> a changed customer's page.
        self.changed_pages: dict[tuple[int, int, int, int], bytes] = {}
        for variant in range(min(VARIANTS, customers)):
            for index in range(1, max(1, math.ceil(jobs / MAX_PAGE_SIZE)) + 1):
                self.template(variant, index, MAX_PAGE_SIZE)

    def template(self, variant: int, index: int, size: int) -> bytes:
        key = (variant, index, size)
        page = self.templates.get(key)
        if page is None:
            tag = PLACEHOLDER.decode()
            first = (index - 1) * size
            rows = [job_row(variant, j, tag) for j in range(first, min(first + size, self.jobs))]
            page = self.templates[key] = page_bytes(rows, index, size, self.jobs)
        return page

    def jobs_page(self, number: int, index: int, size: int) -> bytes:
        generation = self.generation.get(number, 0)
        if not generation:
            return self.template(number % VARIANTS, index, size).replace(
                PLACEHOLDER, self.tags[number]
            )
        key = (number, generation, index, size)
        page = self.changed_pages.get(key)
        if page is None:
            tag = self.tags[number].decode()
            first = (index - 1) * size
            changed = self.changed_jobs.get(number, 1)
            rows = [
                job_row(number % VARIANTS, j, tag, generation if j < changed else 0)
                for j in range(first, min(first + size, self.jobs))
            ]
            page = self.changed_pages[key] = page_bytes(rows, index, size, self.jobs)
        return page

    def customers_page(self, index: int, size: int) -> bytes:
        first = (index - 1) * size
        rows = [
            {
                "id": self.ids[n],
                "organization": f"Bench Customer {n:04d}",
                "status": 1,
                "createdTime": "2024-01-15T09:30:00Z",
            }
            for n in range(first, min(first + size, self.customers))
        ]
        return page_bytes(rows, index, size, self.customers)

    def change(self, count: int, offset: int = 0, share: float | None = None) -> list[str]:
        """Change `count` customers' newest job, or the newest `share` of their jobs (the
        picks shifted by `offset`); returns their ids."""
        count = max(0, min(count, self.customers))
        picked = [n * self.customers // count for n in range(count)] if count else []
        if offset:
            picked = [(n + offset) % self.customers for n in picked]
        for n in picked:
            self.generation[n] = self.generation.get(n, 0) + 1
            self.forget_pages(n, self.generation[n])
            if share is not None:
                self.changed_jobs[n] = max(1, math.ceil(self.jobs * share))
                for index in range(1, max(1, math.ceil(self.jobs / MAX_PAGE_SIZE)) + 1):
                    self.jobs_page(n, index, MAX_PAGE_SIZE)
        return [self.ids[n] for n in picked]

    def forget_pages(self, number: int, generation: int) -> None:
        """Drop a changed customer's pages of older generations: they are never asked for
        again, and a long soak would otherwise keep every one of them."""
        old = [k for k in self.changed_pages if k[0] == number and k[1] < generation]
        for key in old:
            del self.changed_pages[key]

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if method == "POST" and path.startswith(JOBS_PREFIX) and path.endswith(JOBS_SUFFIX):
            await self.jobs_endpoint(scope, path, query, send)
        elif method == "POST" and path == CUSTOMERS_PATH:
            self.stats.customers_requests += 1
            if not authorized(scope):
                await respond(send, 401, b"")
                return
            index, size = paging(query)
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            await respond(send, 200, self.customers_page(index, size))
        elif method == "POST" and path == TOKEN_PATH:
            self.stats.token_requests += 1
            form = dict(parse_qsl(body.decode("utf-8", "replace")))
            if form.get("grant_type") != "client_credentials":
                await respond(send, 400, b'{"error":"unsupported_grant_type"}')
                return
            token = {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            await respond(send, 200, json.dumps(token).encode())
        elif method == "GET" and path == "/stats":
            await respond(send, 200, json.dumps(self.stats.as_dict()).encode())
        elif method == "POST" and path == "/stats/reset":
            self.stats.reset()
            await respond(send, 200, b"{}")
        elif method == "POST" and path == "/change":
            share = float(query["share"]) if "share" in query else None
            changed = self.change(
                int(query.get("customers", "1")), int(query.get("offset", "0")), share
            )
            await respond(send, 200, json.dumps({"changed": changed}).encode())
        else:
            await respond(send, 404, b'{"code":"NotFound"}')

    async def jobs_endpoint(
        self, scope: Scope, path: str, query: dict[str, str], send: Send
    ) -> None:
        self.stats.enter()
        status = 500
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            number = self.number.get(path[len(JOBS_PREFIX) : -len(JOBS_SUFFIX)])
            if not authorized(scope):
                status, body = 401, b""
            elif number is None:
                status, body = 404, b'{"code":"NotFound","message":"Customer was not found."}'
            else:
                index, size = paging(query)
                status, body = 200, self.jobs_page(number, index, size)
            await respond(send, status, body)
        finally:
            self.stats.leave(status)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", uuid.uuid4().hex.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def authorized(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bool(value == b"Bearer " + TOKEN.encode())
    return False


def paging(query: dict[str, str]) -> tuple[int, int]:
    lowered = {k.lower(): v for k, v in query.items()}

    def number(name: str, default: int) -> int:
        try:
            return max(1, int(lowered.get(name, default)))
        except ValueError:
            return default

    return number("pageindex", 1), min(number("pagesize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--customers", type=int, default=100, help="C customers")
    parser.add_argument("--jobs", type=int, default=1000, help="J jobs per customer")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per jobs request")
    args = parser.parse_args()
    app = StandIn(args.customers, args.jobs, args.latency)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
