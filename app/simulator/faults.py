"""What the simulated upstream remembers between requests: tokens, counters and fault dice.

`SimulatorStats` is what tests read to see how the gateway used the upstream ("one walk
per customer", "never more than 8 requests in flight"). `Fault` and `Malformed` name the
ways an API request can go wrong; `Simulator.gateway_fault` and `customer_fault` (in
`state`) pick one from the config's knobs.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime

ENDPOINT_TOKEN = "token"  # noqa: S105 - an endpoint's name, not a secret
ENDPOINT_CUSTOMERS = "customers"
ENDPOINT_JOBS = "jobs"


class Fault(enum.Enum):
    """How an API request fails instead of answering its page, checked in this order."""

    RATE_LIMITED = 429  # every Nth jobs request (`rate_limit_every`)
    UNAVAILABLE = 503  # by chance (`error_rate`)
    FORBIDDEN = 403  # outside the app's customer scope (`forbidden_customers`)
    SERVER_ERROR = 500  # always, for `failing_customers`
    MALFORMED = 200  # a 200 whose body is not a page (`malformed_customers`)


class Malformed(enum.Enum):
    """The broken pages a malformed customer answers, in turn."""

    TRUNCATED_JSON = "truncated_json"  # application/json, cut off mid-document
    HTML = "html"  # a proxy's error page with status 200
    WRONG_SHAPE = "wrong_shape"  # valid JSON, but `data` is not a list


MALFORMED_ORDER = tuple(Malformed)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the simulator answered."""

    endpoint: str
    status: int
    request_id: str
    at: datetime
    customer_id: str | None = None
    page_index: int | None = None
    page_size: int | None = None


@dataclass
class SimulatorStats:
    """Counters of the requests the simulator answered; `reset()` between test phases."""

    # Requests by endpoint name (`token`, `customers`, `jobs`), whatever their answer.
    requests: Counter[str] = field(default_factory=Counter)
    # Jobs requests by customer id, whatever their answer.
    jobs_requests: Counter[str] = field(default_factory=Counter)
    # Page-1 jobs requests answered 200, by customer id: the number of walks that started
    # (a retried failing page 1 is not a new walk).
    walks: Counter[str] = field(default_factory=Counter)
    # Responses by HTTP status.
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    # The latest requests, oldest first; bounded so long benchmarks do not grow it forever.
    log: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def record(self, entry: RequestRecord) -> None:
        self.requests[entry.endpoint] += 1
        self.statuses[entry.status] += 1
        if entry.endpoint == ENDPOINT_JOBS and entry.customer_id is not None:
            self.jobs_requests[entry.customer_id] += 1
            if entry.page_index == 1 and entry.status == 200:
                self.walks[entry.customer_id] += 1
        self.log.append(entry)

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def reset(self) -> None:
        """Forget every count (requests still in flight stay counted as in flight)."""
        self.requests.clear()
        self.jobs_requests.clear()
        self.walks.clear()
        self.statuses.clear()
        self.max_in_flight = self.in_flight
        self.log.clear()
