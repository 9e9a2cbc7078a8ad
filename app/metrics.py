"""Prometheus metrics, one registry per app so that tests can build many apps side by side."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""The value of `jobs_gateway_upstream_breaker_state` for each state of the breaker."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.upstream_requests = Counter(
            "jobs_gateway_upstream_requests",
            "Upstream HTTP requests by endpoint (jobs, customers), outcome (ok, or the error "
            "kind) and HTTP status ('none' when no answer came).",
            ["endpoint", "outcome", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "jobs_gateway_upstream_request_seconds",
            "Latency of one upstream HTTP request, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.refreshes = Counter(
            "jobs_gateway_refreshes",
            "Customer refreshes by outcome (success, error).",
            ["outcome"],
            registry=r,
        )
        self.refresh_latency = Histogram(
            "jobs_gateway_refresh_seconds",
            "Duration of one customer's refresh (every page).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "jobs_gateway_cache_lookups",
            "Per-customer freshness lookups made by API requests: hit, miss or stale.",
            ["result"],
            registry=r,
        )
        self.http_requests = Counter(
            "jobs_gateway_http_requests",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "jobs_gateway_http_request_seconds",
            "Latency of HTTP requests served, by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "jobs_gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer: how long it was held by one piece of work.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "jobs_gateway_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since start-up.",
            registry=r,
        )
        self.refreshes_in_flight = Gauge(
            "jobs_gateway_refreshes_in_flight",
            "Customer refreshes running now.",
            registry=r,
        )

        self.webhook_attempts = Counter(
            "jobs_gateway_webhook_attempts",
            "Webhook POSTs by outcome (delivered, failed: to be retried or given up).",
            ["outcome"],
            registry=r,
        )
        self.events_written = Counter(
            "jobs_gateway_events",
            "Events written to the change feed by this process.",
            registry=r,
        )

        self.customer_refreshes = Counter(
            "jobs_gateway_customer_refreshes",
            "Refreshes by customer and outcome (success, error).",
            ["customer_id", "outcome"],
            registry=r,
        )
        self.customer_refresh_seconds = Gauge(
            "jobs_gateway_customer_refresh_seconds",
            "How long the customer's last refresh took.",
            ["customer_id"],
            registry=r,
        )
        self.oldest_fresh_age = Gauge(
            "jobs_gateway_oldest_snapshot_age_seconds",
            "Age of the oldest last good snapshot among the customers: alert when it nears "
            "CACHE_TTL_SECONDS (refreshes fall behind) or STALE_IF_ERROR_SECONDS.",
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "jobs_gateway_webhook_backlog",
            "Webhook deliveries pending (all receivers).",
            registry=r,
        )
        self.leases_held = Gauge(
            "jobs_gateway_refresh_leases_held",
            "Customer refresh leases this process holds (PostgreSQL replicas).",
            registry=r,
        )
        self.upstream_breaker_state = Gauge(
            "jobs_gateway_upstream_breaker_state",
            "The upstream circuit breaker: 0 closed, 1 half-open (one probe request goes), "
            "2 open (upstream requests refused, stale data served).",
            registry=r,
        )
        self.upstream_breaker_refused = Counter(
            "jobs_gateway_upstream_breaker_refused",
            "Upstream requests the open circuit breaker refused without sending them.",
            registry=r,
        )
        self.rate_limited = Counter(
            "jobs_gateway_rate_limited_requests",
            "Requests refused with 429 for passing their key's rate limit.",
            registry=r,
        )
        self.tickets_held = Gauge(
            "jobs_gateway_tickets_held",
            "PSA tickets the storm guard holds (PSA_MAX_NEW_TICKETS_PER_HOUR): above 0, a "
            "storm; `jobs-gateway psa release` lets them open.",
            registry=r,
        )
        self.psa_requests = Counter(
            "jobs_gateway_psa_requests",
            "Requests to the PSA by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.api_keys_live = Gauge(
            "jobs_gateway_api_keys_live",
            "Live keys made with `jobs-gateway keys create` (API_KEYS not counted).",
            registry=r,
        )

    def webhook_attempt(self, outcome: str, ok: bool) -> None:
        self.webhook_attempts.labels(outcome).inc()

    def upstream_request(
        self, outcome: str, seconds: float, endpoint: str = "jobs", status: int | None = None
    ) -> None:
        self.upstream_requests.labels(endpoint, outcome, str(status or "none")).inc()
        self.upstream_latency.labels(endpoint).observe(seconds)

    def upstream_breaker(self, state: str) -> None:
        """The circuit breaker changed state ("closed", "half_open" or "open")."""
        self.upstream_breaker_state.set(BREAKER_STATES.get(state, 2))

    def render(self) -> bytes:
        return generate_latest(self.registry)


LAG_PROBE_SECONDS = 0.1


async def watch_loop_lag(metrics: Metrics, every: float = LAG_PROBE_SECONDS) -> None:
    """Measure, forever, how late the event loop wakes a sleeper: the longest a piece of work
    held the loop (a parse, a normalization, a query in the loop's thread) shows here."""
    worst = 0.0
    while True:
        began = time.perf_counter()
        await asyncio.sleep(every)
        lag = max(0.0, time.perf_counter() - began - every)
        metrics.loop_lag.observe(lag)
        if lag > worst:
            worst = lag
            metrics.loop_lag_max.set(lag)
