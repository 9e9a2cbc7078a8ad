"""Freshness: which customers a request needs refreshed, one refresh per customer in flight.

The API never calls the upstream itself. It asks `Refresher.ensure()` for the customers it
covers; the refresher reads each customer's last snapshot from the store, starts a refresh
for those older than the request's `max_age` (single flight: a refresh already running is
joined, never doubled), waits at most `REQUEST_WAIT_SECONDS`, and says per customer how
current the store's data is (a `Source`). Refreshes run as tasks owned by the refresher, not
by the request: a request that stops waiting leaves the refresh to finish and be stored.

A failed refresh writes only its snapshot row (the last good jobs stay) and puts the customer
in backoff, so a failing upstream is not asked again by every request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock, to_second, utcnow
from app.metrics import Metrics
from app.normalize import NormalizedJob, normalize_row
from app.store import repo
from app.upstream.client import AvePointClient
from app.upstream.errors import UpstreamError

log = logging.getLogger("app.refresh")

State = Literal["fresh", "stale", "refreshing", "error"]
CacheResult = Literal["hit", "miss", "stale"]

# First backoff after a failure; it doubles per consecutive failure, capped at the TTL, but
# even with CACHE_TTL_SECONDS=0 a failing upstream is not asked by every request.
BACKOFF_BASE_SECONDS = 10.0
MIN_BACKOFF_SECONDS = 1.0


class DiscoveryFailed(Exception):
    """The customer list could not be had from the upstream, and none is known from before."""


@dataclass(frozen=True, slots=True)
class SourceError:
    kind: str
    message: str
    upstream_status: int | None


@dataclass(frozen=True, slots=True)
class Source:
    """How current one customer's part of an answer is."""

    customer_id: str
    state: State
    fetched_at: datetime | None
    age_seconds: int | None
    error: SourceError | None


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current an answer is: a source per customer, and whether the request forwarded
    to the upstream (refreshed, or joined a refresh of, at least one customer)."""

    sources: list[Source]
    forwarded: bool
    ttl: float
    names: dict[str, str | None] = field(default_factory=dict)

    @property
    def cache(self) -> CacheResult:
        """`stale` when old data is served, else `miss` when the upstream was asked, else `hit`."""
        if any(s.state in ("stale", "refreshing") for s in self.sources):
            return "stale"
        return "miss" if self.forwarded else "hit"

    @property
    def ttl_left(self) -> int | None:
        """Seconds until the oldest data served stops being fresh (negative: stale since)."""
        ages = [s.age_seconds for s in self.sources if s.age_seconds is not None]
        return int(self.ttl) - max(ages) if ages else None

    @property
    def upstream_status(self) -> int | None:
        """The status of a refresh that failed, if any did."""
        return next(
            (s.error.upstream_status for s in self.sources if s.error and s.error.upstream_status),
            None,
        )

    @property
    def servable(self) -> list[str]:
        """Customers whose stored jobs belong in the answer (not those in `error`)."""
        return [s.customer_id for s in self.sources if s.state != "error"]


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    customer_id: str
    ok: bool
    jobs: int = 0
    pages: int = 0
    rows_skipped: int = 0
    changes: list[repo.StatusChange] = field(default_factory=list)
    error: SourceError | None = None
    stored_at: datetime | None = None


@dataclass
class _Backoff:
    failures: int = 0
    until: datetime | None = None


class Refresher:
    def __init__(
        self,
        *,
        client: AvePointClient,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics,
        configured_customers: Sequence[str] = (),
        ttl_seconds: float = 300,
        stale_if_error_seconds: float = 86400,
        wait_seconds: float = 10,
        clock: Clock = utcnow,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.metrics = metrics
        self.configured = list(dict.fromkeys(configured_customers))
        self.ttl = ttl_seconds
        self.stale_if_error = stale_if_error_seconds
        self.wait = wait_seconds
        self.clock = clock
        self._inflight: dict[str, asyncio.Task[RefreshOutcome]] = {}
        self._backoff: dict[str, _Backoff] = {}
        # When each customer's last successful refresh was stored (by this process).
        self._stored_at: dict[str, datetime] = {}
        self._discovery: asyncio.Task[list[str]] | None = None
        self._discovered: list[str] | None = None
        self._discovered_at: datetime | None = None
        self._discovery_failed: str | None = None
        self._discovery_retry_at: datetime = datetime.min.replace(tzinfo=UTC)
        self._background: set[asyncio.Task[object]] = set()

    # ---- customers in scope -------------------------------------------------------------

    async def customer_ids(self) -> list[str]:
        """Every customer this partner's requests cover: configured, or discovered.

        A known list is answered at once (an expired one is renewed in the background);
        only when none is known yet does a request wait for the listing, at most
        `REQUEST_WAIT_SECONDS`.
        """
        if self.configured:
            if self._discovered_at is None:
                # Names only; the configured list is the scope whatever the listing says.
                await self._ensure_known(self.configured)
                self._discovered_at = self.clock()
                self._spawn(self._load_names())
            return list(self.configured)
        if self._discovered is None:
            # A restarted service knows the customers it stored before.
            async with self.sessions() as session:
                stored = sorted(await repo.customer_states(session))
            if stored and self._discovered is None:
                self._discovered = stored
        backing_off = self._discovery_failed is not None and self.clock() < self._discovery_retry_at
        if self._discovered is not None:
            if self._expired(self._discovered_at) and not backing_off:
                self._start_discovery()
            return list(self._discovered)
        if backing_off:
            raise DiscoveryFailed(self._discovery_failed or "the customer listing failed")
        task = self._start_discovery()
        await asyncio.wait({task}, timeout=self.wait)
        if not task.done():
            raise DiscoveryFailed("the customer list is still being fetched")
        return list(task.result())

    def _start_discovery(self) -> asyncio.Task[list[str]]:
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.create_task(self._discover(), name="discover-customers")
            self._discovery.add_done_callback(_log_failure)
        return self._discovery

    async def _discover(self) -> list[str]:
        try:
            customers = await self.client.list_customers()
        except UpstreamError as exc:
            log.warning("customer discovery failed: %s", exc)
            self._discovery_failed = str(exc)
            self._discovery_retry_at = self.clock() + timedelta(seconds=self._backoff_seconds(1))
            raise DiscoveryFailed(str(exc)) from exc
        pairs = [(c.id, c.organization) for c in customers]
        async with self.sessions() as session:
            await repo.upsert_customers(session, pairs, now=self.clock())
            await session.commit()
        self._discovered = [cid for cid, _ in pairs]
        self._discovered_at = self.clock()
        self._discovery_failed = None
        return list(self._discovered)

    async def _load_names(self) -> None:
        try:
            customers = await self.client.list_customers()
        except UpstreamError as exc:
            log.info("customer names unavailable: %s", exc)
            return
        wanted = set(self.configured)
        pairs = [(c.id, c.organization) for c in customers if c.id in wanted]
        if pairs:
            async with self.sessions() as session:
                await repo.upsert_customers(session, pairs, now=self.clock())
                await session.commit()

    async def _ensure_known(self, customer_ids: Sequence[str]) -> None:
        async with self.sessions() as session:
            await repo.upsert_customers(
                session, [(cid, None) for cid in customer_ids], now=self.clock()
            )
            await session.commit()

    # ---- freshness ------------------------------------------------------------------------

    async def ensure(
        self, customer_ids: Sequence[str], *, max_age: float | None = None
    ) -> Freshness:
        """Refresh what is older than `max_age` (default: the TTL), then say how current each is."""
        limit = self.ttl if max_age is None else max_age
        now = self.clock()
        async with self.sessions() as session:
            states = await repo.customer_states(session, customer_ids)
        tasks: dict[str, asyncio.Task[RefreshOutcome]] = {}
        reread = False
        for cid in customer_ids:
            state = states.get(cid)
            last = state.last_success_at if state else None
            stored = self._stored_at.get(cid)
            if stored is not None and (last is None or stored > last):
                # A refresh finished after the states above were read: it counts, or the
                # request would start a second walk of a customer just refreshed.
                last, reread = stored, True
            if last is not None and limit > 0 and _age(now, last) < limit:
                self.metrics.cache.labels("hit").inc()
                continue
            if self._in_backoff(cid, now):
                self.metrics.cache.labels("stale").inc()
                continue
            self.metrics.cache.labels("miss").inc()
            tasks[cid] = self.start(cid)
        if tasks:
            await asyncio.wait(tasks.values(), timeout=self.wait)
        if tasks or reread:
            async with self.sessions() as session:
                states = await repo.customer_states(session, customer_ids)
        now = self.clock()
        sources = [
            self._source(cid, states.get(cid), now, waited=cid in tasks) for cid in customer_ids
        ]
        names = {cid: state.customer_name for cid, state in states.items()}
        return Freshness(sources=sources, forwarded=bool(tasks), ttl=self.ttl, names=names)

    def _source(
        self, cid: str, state: repo.CustomerState | None, now: datetime, *, waited: bool
    ) -> Source:
        last = state.last_success_at if state else None
        age = int(_age(now, last)) if last is not None else None
        failure = state.last_error if state else None
        error = (
            SourceError(
                kind=failure.error_kind or "upstream",
                message=failure.error_message or "the last refresh failed",
                upstream_status=failure.upstream_status,
            )
            if failure is not None
            else None
        )
        fetched = to_second(last) if last is not None else None
        # `refreshing` only where this request waited on the refresh and stopped waiting.
        running = waited and cid in self._inflight and not self._inflight[cid].done()
        if running:
            return Source(cid, "refreshing", fetched, age, error)
        if last is None or (age is not None and error is not None and age > self.stale_if_error):
            if error is None:
                error = SourceError("not_fetched", "no snapshot of this customer yet", None)
            return Source(cid, "error", fetched, age, error)
        if error is not None:
            return Source(cid, "stale", fetched, age, error)
        state_name: State = "fresh" if age is not None and age <= self.ttl else "stale"
        return Source(cid, state_name, fetched, age, None)

    def _backoff_seconds(self, failures: int) -> float:
        """Doubling per consecutive failure, at most the TTL, and never nothing at all."""
        doubled = BACKOFF_BASE_SECONDS * 2.0 ** (failures - 1)
        return max(MIN_BACKOFF_SECONDS, min(float(self.ttl), doubled))

    def _in_backoff(self, cid: str, now: datetime) -> bool:
        backoff = self._backoff.get(cid)
        return backoff is not None and backoff.until is not None and now < backoff.until

    def _expired(self, at: datetime | None) -> bool:
        return at is None or _age(self.clock(), at) >= self.ttl

    # ---- refreshing -----------------------------------------------------------------------

    def start(self, customer_id: str) -> asyncio.Task[RefreshOutcome]:
        """The customer's refresh in flight, started if there is none (single flight)."""
        task = self._inflight.get(customer_id)
        if task is None or task.done():
            task = asyncio.create_task(self._refresh(customer_id), name=f"refresh:{customer_id}")
            self._inflight[customer_id] = task
            task.add_done_callback(functools.partial(self._forget, customer_id))
        return task

    async def refresh(self, customer_id: str) -> RefreshOutcome:
        """Refresh one customer now (joining a refresh already in flight) and wait for it."""
        return await asyncio.shield(self.start(customer_id))

    def _forget(self, customer_id: str, task: asyncio.Task[RefreshOutcome]) -> None:
        if self._inflight.get(customer_id) is task:
            del self._inflight[customer_id]

    async def _refresh(self, cid: str) -> RefreshOutcome:
        self.metrics.refreshes_in_flight.inc()
        began = time.perf_counter()
        started = self.clock()
        try:
            outcome = await self._fetch_and_store(cid, started)
        except Exception as exc:  # a bug or the database: record it, never crash the task
            log.exception("refresh of customer %s failed", cid)
            kind = "database" if isinstance(exc, SQLAlchemyError) else "internal"
            error = SourceError(kind, f"refresh failed: {type(exc).__name__}", None)
            await self._record_failure(cid, started, error, None)
            outcome = RefreshOutcome(cid, ok=False, error=error)
        finally:
            self.metrics.refreshes_in_flight.dec()
            self.metrics.refresh_latency.observe(time.perf_counter() - began)
        self.metrics.refreshes.labels("success" if outcome.ok else "error").inc()
        if outcome.stored_at is not None:
            self._backoff.pop(cid, None)
            self._stored_at[cid] = outcome.stored_at
        else:
            backoff = self._backoff.setdefault(cid, _Backoff())
            backoff.failures += 1
            delay = self._backoff_seconds(backoff.failures)
            backoff.until = self.clock() + timedelta(seconds=delay)
        return outcome

    async def _fetch_and_store(self, cid: str, started: datetime) -> RefreshOutcome:
        """One walk of the customer's pages, normalized and stored; an upstream failure is
        recorded as a failed snapshot (the store adds an unknown customer either way)."""
        try:
            fetch = await self.client.fetch_jobs(cid)
        except UpstreamError as exc:
            log.warning("refresh of customer %s failed: %s", cid, exc)
            error = SourceError(exc.kind, exc.message, exc.status)
            await self._record_failure(cid, started, error, exc.request_id)
            return RefreshOutcome(cid, ok=False, error=error)
        jobs: list[NormalizedJob] = []
        skipped = 0
        for row in fetch.rows:
            job = normalize_row(cid, row)
            if job is None:
                skipped += 1
            else:
                jobs.append(job)
        snapshot = repo.SnapshotRecord(
            customer_id=cid,
            started_at=started,
            finished_at=self.clock(),
            outcome="success",
            pages=fetch.pages,
            jobs_seen=len(jobs),
            rows_skipped=skipped,
            request_id=fetch.request_ids[-1] if fetch.request_ids else None,
        )
        async with self.sessions() as session:
            changes = await repo.record_success(session, snapshot, jobs)
        return RefreshOutcome(
            cid,
            ok=True,
            jobs=len(jobs),
            pages=fetch.pages,
            rows_skipped=skipped,
            changes=changes,
            stored_at=snapshot.finished_at,
        )

    async def _record_failure(
        self, cid: str, started: datetime, error: SourceError, request_id: str | None
    ) -> None:
        snapshot = repo.SnapshotRecord(
            customer_id=cid,
            started_at=started,
            finished_at=self.clock(),
            outcome="error",
            error_kind=error.kind,
            error_message=error.message,
            upstream_status=error.upstream_status,
            request_id=request_id,
        )
        try:
            async with self.sessions() as session:
                await repo.record_failure(session, snapshot)
        except Exception:  # best effort: the failure is logged either way
            log.exception("could not record the failed refresh of customer %s", cid)

    def warm(self) -> None:
        """Refresh every customer in the background (at start-up), without waiting."""

        async def run() -> None:
            try:
                ids = await self.customer_ids()
            except DiscoveryFailed as exc:
                log.warning("warm-up skipped: %s", exc)
                return
            await asyncio.gather(*(self.refresh(cid) for cid in ids))

        self._spawn(run())

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def aclose(self) -> None:
        """Stop every refresh still running (at shutdown); what was stored stays stored."""
        tasks: list[asyncio.Task[object]] = [*self._inflight.values(), *self._background]
        if self._discovery is not None:
            tasks.append(self._discovery)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception, so that none is lost unlogged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, DiscoveryFailed):
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())
