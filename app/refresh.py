"""Freshness and refreshes: which customers a request needs refreshed, one walk per customer.

The API never calls the upstream itself. It asks `Refresher.ensure()` for the customers it
covers. The refresher keeps every customer's state in memory (the database is its durable
copy, read once at start-up), so answering "how current is this" costs no query:

- a customer's data is `fresh` for `CACHE_TTL_SECONDS` after its last good snapshot;
- older data is `stale`, and so is data whose newest refresh failed (served while younger
  than `STALE_IF_ERROR_SECONDS`);
- a customer with nothing to serve is `error`.

`ensure()` starts refreshes for what is older than the request's `max_age` (single flight: a
walk already running is joined, never doubled) and waits at most `REQUEST_WAIT_SECONDS` for
them, unless the background refresh is on and the request's data is merely stale: then it
answers at once with what it has, so that in normal operation a read never waits on the
upstream. A failing customer is backed off (doubling, at most the TTL, or as long as the
upstream's Retry-After asks) and not asked again by every request.

Walks stream: each page is hashed and normalized as it arrives and only the rows that changed
are written, in one short transaction at the end (`app.store.ingest`). At most `walk_slots`
customers are fetched at once and `COMMIT_SLOTS` more wait to be written, and the upstream
client's semaphore bounds the requests.

Each customer has a data version that grows when one of its refreshes changed something (the
database's `customers.data_version`, so every process agrees on it), and the refresher a
fingerprint of them all; the API keys its encoded answers, and their ETags, by them.

Several processes on one PostgreSQL database (`shared`) share the work:

- a process takes the customer's lease (`app.store.leases`) before it walks; one that finds
  it taken waits for the holder's result (or serves what is stored when the wait is up);
- a failed refresh keeps the lease as a backoff, so no process asks the upstream again
  before it ends;
- what one process stores, the others load (`reload`) as soon as they hear of it, through
  PostgreSQL's LISTEN/NOTIFY or, at the latest, the next look at the database
  (`app.replicas`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock, iso, to_second, utcnow
from app.logs import upstream_fields
from app.metrics import Metrics
from app.store import leases, repo
from app.store.feed import FeedConfig, Told
from app.store.ingest import Ingest, IngestResult, SnapshotRecord, Writer, open_ingest
from app.upstream.client import AvePointClient
from app.upstream.errors import UpstreamError

log = logging.getLogger("app.refresh")

State = Literal["fresh", "stale", "refreshing", "error"]
STATES: tuple[State, ...] = ("fresh", "stale", "refreshing", "error")
CacheResult = Literal["hit", "miss", "stale"]

# First backoff after a failure; it doubles per consecutive failure, capped at the TTL, but
# even with CACHE_TTL_SECONDS=0 a failing upstream is not asked by every request.
BACKOFF_BASE_SECONDS = 10.0
MIN_BACKOFF_SECONDS = 1.0
# Rows normalized between two yields to the event loop (a page is 100; a misbehaving
# upstream may send far more on one page).
ROWS_PER_SLICE = 500


# Walks done fetching that may wait for the writer at once, each with its changed rows.
COMMIT_SLOTS = 4

LEASE_SECONDS = 120.0
"""How long a refresh lease lasts unless renewed; a walk renews it when half has passed."""
LOOK_SECONDS = 0.25
"""How often a process waiting on another's refresh looks at the database meanwhile."""


class DiscoveryFailed(Exception):
    """The customer list could not be had from the upstream, and none is known from before."""


@dataclass(frozen=True, slots=True)
class SourceError:
    kind: str
    message: str
    upstream_status: int | None


NOT_FETCHED = SourceError("not_fetched", "no snapshot of this customer yet", None)


@dataclass(frozen=True, slots=True)
class Source:
    """How current one customer's part of an answer is."""

    customer_id: str
    state: State
    fetched_at: datetime | None
    age_seconds: int | None
    error: SourceError | None


@dataclass(slots=True)
class CustomerStatus:
    """What the refresher knows of one customer (in memory; snapshots are the durable copy)."""

    customer_id: str
    name: str | None = None
    last_success_at: datetime | None = None
    error: SourceError | None = None  # the newest attempt failed (after the last success)
    version: int = 0  # grows when a refresh changed the customer's data
    failures: int = 0
    backoff_until: datetime | None = None
    due_at: datetime | None = None  # when the background refresh takes it next


@dataclass(frozen=True, slots=True)
class Part:
    """One customer in a view: its state, when its data was fetched, why it is not fresh."""

    customer_id: str
    state: State
    fetched_at: datetime | None
    error: SourceError | None


@dataclass(frozen=True)
class View:
    """How current a set of customers is at one moment; valid until `valid_until` or until a
    customer's state changes (the refresher's epoch), whichever comes first."""

    customers: int
    counts: dict[State, int]
    oldest_fetched_at: datetime | None
    not_fresh: tuple[Part, ...]
    errors: frozenset[str]  # customers with nothing to serve
    valid_until: datetime | None
    tag: str  # what the answer's ETag covers of it

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            **{state: self.counts[state] for state in STATES},
            "oldest_fetched_at": iso(self.oldest_fetched_at),
        }


@dataclass(frozen=True)
class Freshness:
    """How current one answer is: the view of its customers, and what the request did."""

    view: View
    now: datetime
    ttl: float
    forwarded: bool = False  # the request waited on at least one refresh
    stored: bool = False  # ... and at least one of them stored new data
    upstream_status: int | None = None  # the status of a refresh that failed, if any did

    @property
    def sources(self) -> list[Source]:
        """Every customer whose part is not fresh (an empty list: complete and fresh)."""
        return [
            Source(
                p.customer_id,
                p.state,
                to_second(p.fetched_at) if p.fetched_at else None,
                _age_seconds(self.now, p.fetched_at),
                p.error,
            )
            for p in self.view.not_fresh
        ]

    @property
    def errors(self) -> frozenset[str]:
        return self.view.errors

    @property
    def ttl_left(self) -> int | None:
        """Seconds until the oldest data served stops being fresh (negative: stale since)."""
        age = _age_seconds(self.now, self.view.oldest_fetched_at)
        return None if age is None else int(self.ttl) - age


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    customer_id: str
    ok: bool
    jobs: int = 0
    pages: int = 0
    rows_skipped: int = 0
    written: int = 0
    error: SourceError | None = None
    stored_at: datetime | None = None
    data_version: int | None = None


class CustomerDirectory:
    """Which customers the partner has: `CUSTOMER_IDS`, or discovered from the upstream.

    A known list is answered at once (an expired one is renewed in the background); only when
    none is known yet does a request wait for the listing, at most `wait` seconds. A failed
    listing, upstream or database, is backed off like a failed refresh.
    """

    def __init__(
        self,
        *,
        client: AvePointClient,
        writer: Writer,
        configured: Sequence[str],
        ttl: float,
        wait: float,
        clock: Clock,
        on_names: Callable[[dict[str, str | None]], None],
    ) -> None:
        self.client = client
        self.writer = writer
        self.configured = list(dict.fromkeys(configured))
        self.ttl = ttl
        self.wait = wait
        self.clock = clock
        self.on_names = on_names
        self.known: list[str] | None = list(self.configured) or None
        self.fetched_at: datetime | None = None
        self.failure: str | None = None
        self.retry_at = datetime.min.replace(tzinfo=UTC)
        self.failures = 0
        self._task: asyncio.Task[list[str]] | None = None

    def load(self, stored: Sequence[str]) -> None:
        """What the store knew before a restart, until the upstream says otherwise."""
        if not self.configured and stored:
            self.known = sorted(stored)

    async def ids(self) -> list[str]:
        backing_off = self.failure is not None and self.clock() < self.retry_at
        if self.known is not None:
            expired = self.fetched_at is None or _age(self.clock(), self.fetched_at) >= self.ttl
            if expired and not backing_off:
                self._start()
            return list(self.known)
        if backing_off:
            raise DiscoveryFailed(self.failure or "the customer listing failed")
        task = self._start()
        await asyncio.wait({task}, timeout=self.wait)
        if not task.done():
            raise DiscoveryFailed("the customer list is still being fetched")
        if task.cancelled() or task.exception() is not None:
            raise DiscoveryFailed(self.failure or "the customer listing failed")
        return list(task.result())

    @property
    def task(self) -> asyncio.Task[list[str]] | None:
        """The listing in flight or last run, if any."""
        return self._task

    def _start(self) -> asyncio.Task[list[str]]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._discover(), name="discover-customers")
            self._task.add_done_callback(_log_failure)
        return self._task

    async def _discover(self) -> list[str]:
        # Even with a configured list, the listing gives the customers' names.
        self.fetched_at = self.clock()
        try:
            customers = await self.client.list_customers()
            pairs = [(c.id, c.organization) for c in customers]
            if self.configured:
                wanted = set(self.configured)
                pairs = [(cid, name) for cid, name in pairs if cid in wanted]
            names = dict(pairs)
            async with self.writer.transaction() as session:
                await repo.upsert_customers(
                    session, [*((cid, None) for cid in self.configured), *pairs], now=self.clock()
                )
        except (UpstreamError, SQLAlchemyError) as exc:
            reason = str(exc) if isinstance(exc, UpstreamError) else "the database failed"
            # The message names the upstream's request id when it sent one; so does a field.
            log.warning(
                "customer discovery failed: %s",
                reason,
                extra=upstream_fields(exc) if isinstance(exc, UpstreamError) else {},
            )
            self.failures += 1
            self.failure = reason
            self.retry_at = self.clock() + timedelta(
                seconds=_backoff_seconds(self.failures, self.ttl)
            )
            if self.configured:
                return list(self.configured)
            raise DiscoveryFailed(reason) from exc
        self.failure = None
        self.failures = 0
        self.on_names(names)
        if not self.configured:
            self.known = list(names)
        return list(self.known or ())


class Refresher:
    def __init__(
        self,
        *,
        client: AvePointClient,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        metrics: Metrics,
        configured_customers: Sequence[str] = (),
        ttl_seconds: float = 300,
        stale_if_error_seconds: float = 86400,
        wait_seconds: float = 10,
        interval_seconds: float = 0,
        walk_slots: int = 16,
        clock: Clock = utcnow,
        feed: FeedConfig | None = None,
        on_told: Callable[[Told], None] | None = None,
        shared: bool = False,
    ) -> None:
        self.client = client
        self.feed = feed
        self.on_told = on_told
        self.walking: set[str] = set()  # customers whose walk holds a slot now
        # Shared with other processes (PostgreSQL): leases, and state they store reloaded.
        self.shared = shared
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_settled: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self._landed: dict[str, asyncio.Event] = {}
        self._fingerprint: str | None = None
        self.sessions = sessions
        self.writer = writer
        self.metrics = metrics
        self.ttl = ttl_seconds
        self.stale_if_error = stale_if_error_seconds
        self.wait = wait_seconds
        self.interval = interval_seconds
        self.clock = clock
        self.directory = CustomerDirectory(
            client=client,
            writer=writer,
            configured=configured_customers,
            ttl=ttl_seconds,
            wait=wait_seconds,
            clock=clock,
            on_names=self._names_changed,
        )
        self.status: dict[str, CustomerStatus] = {}
        self.epoch = 0  # grows with every change of any customer's state
        self._view_all: tuple[int, int, View] | None = None  # (epoch, scope size, view)
        self._inflight: dict[str, asyncio.Task[RefreshOutcome]] = {}
        self._walk_slots = asyncio.Semaphore(max(1, walk_slots))
        self._commit_slots = asyncio.Semaphore(COMMIT_SLOTS)
        self._background: set[asyncio.Task[object]] = set()

    # ---- state -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Every stored customer's state, once at start-up."""
        async with self.sessions() as session:
            states = await repo.customer_states(session)
        for cid, state in states.items():
            self.status[cid] = CustomerStatus(cid)
            self._take_state(state)
        self.directory.load(list(states))
        self._changed(data=True)
        if self.shared:
            await self._release_dead_leases()

    async def _release_dead_leases(self) -> None:
        """Hand back the leases of this host's processes that are gone (a restart after a
        crash need not wait for their expiry). A container restarted keeps its host name
        and its process id, so a lease of this very pid but another nonce is a past life."""
        host, pid, _ = self.holder.split(":")
        for holder in await self.writer.run_plan(lambda d: leases.holders_on(d, host)):
            parts = holder.split(":")
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            if holder == self.holder:
                continue
            other = int(parts[1])
            if other == int(pid) or not _alive(other):
                count = await self.writer.run_plan(
                    lambda d, h=holder: leases.give_back_all(d, h)  # type: ignore[misc]
                )
                log.info("handed back %d leases of %s, a process that is gone", count, holder)

    def _take_state(self, state: repo.CustomerState) -> bool:
        """A customer's stored state into memory; whether its data or state moved."""
        status = self._status(state.customer_id)
        error = state.last_error
        before = (status.last_success_at, status.error, status.version)
        status.name = state.customer_name or status.name
        status.last_success_at = state.last_success_at
        status.error = (
            SourceError(
                error.error_kind or "upstream",
                error.error_message or "the last refresh failed",
                error.upstream_status,
            )
            if error is not None
            else None
        )
        status.version = state.data_version
        return (status.last_success_at, status.error, status.version) != before

    async def reload(self, customer_ids: Sequence[str]) -> None:
        """Load what another process stored for these customers (its refresh landed)."""
        if not customer_ids:
            return
        async with self.sessions() as session:
            states = await repo.customer_states(session, customer_ids)
        now = self.clock()
        moved = data = False
        for cid, state in states.items():
            if cid not in self.status and state.last_attempt_at is None:
                continue  # nothing stored of it: nothing to load
            status = self._status(cid)
            version = status.version
            # A state read before a refresh of ours landed (it settled while the read was
            # answered) is older than what memory holds: it is not taken.
            if not _older_than_known(state, status) and self._take_state(state):
                moved = True
                data = data or status.version != version
                if status.error is None and status.last_success_at is not None:
                    status.failures = 0
                    status.backoff_until = None
                    if self.interval:
                        delay = self.interval * random.uniform(0.9, 1.0)  # noqa: S311
                        status.due_at = status.last_success_at + timedelta(seconds=delay)
                elif status.backoff_until is None or status.backoff_until < now:
                    # Its holder backs it off; the lease says until when, at the latest the TTL.
                    status.backoff_until = now + timedelta(seconds=max(self.ttl, 1.0))
                    status.due_at = status.backoff_until
            landed = self._landed.pop(cid, None)
            if landed is not None:
                landed.set()
        if moved:
            self._changed(data=data)

    def _status(self, cid: str) -> CustomerStatus:
        status = self.status.get(cid)
        if status is None:
            status = self.status[cid] = CustomerStatus(cid)
        return status

    def _changed(self, *, data: bool) -> None:
        self.epoch += 1
        if data:
            self._fingerprint = None

    def _names_changed(self, names: dict[str, str | None]) -> None:
        changed = False
        for cid, name in names.items():
            status = self._status(cid)
            if name is not None and status.name != name:
                status.name = name
                changed = True
        self._changed(data=changed)

    def version_of(self, customer_ids: Sequence[str] | None) -> object:
        """The data version of an answer over these customers (None: all of them): the
        same in every process that holds the same data, so that their ETags agree."""
        if customer_ids is None:
            if self._fingerprint is None:
                parts = sorted((cid, s.version, s.name) for cid, s in self.status.items())
                digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"))
                self._fingerprint = digest.hexdigest()[:32]
            return self._fingerprint
        return tuple((s.version, s.name) for s in map(self._status, customer_ids))

    def name_of(self, cid: str) -> str | None:
        status = self.status.get(cid)
        return status.name if status else None

    async def customer_ids(self) -> list[str]:
        """Every customer this partner's requests cover: configured, or discovered."""
        return await self.directory.ids()

    # ---- freshness ---------------------------------------------------------------------------

    def _part(self, status: CustomerStatus, now: datetime) -> tuple[Part, datetime | None]:
        """A customer's state now, and until when it stays so without a refresh."""
        cid, last, error = status.customer_id, status.last_success_at, status.error
        if last is None:
            return Part(cid, "error", None, error or NOT_FETCHED), None
        age = _age(now, last)
        if error is not None:
            if age > self.stale_if_error:
                return Part(cid, "error", last, error), None
            return Part(cid, "stale", last, error), last + timedelta(seconds=self.stale_if_error)
        if age <= self.ttl:
            return Part(cid, "fresh", last, None), last + timedelta(seconds=self.ttl)
        return Part(cid, "stale", last, None), None

    def oldest_snapshot_age(self) -> float:
        """Seconds since the oldest last good snapshot of any customer (0 with none)."""
        times = [s.last_success_at for s in self.status.values() if s.last_success_at]
        return _age(self.clock(), min(times)) if times else 0.0

    def source(self, cid: str) -> Source:
        """How current one customer's data is now."""
        now = self.clock()
        part, _ = self._part(self._status(cid), now)
        fetched = to_second(part.fetched_at) if part.fetched_at else None
        return Source(cid, part.state, fetched, _age_seconds(now, part.fetched_at), part.error)

    def view(
        self,
        customer_ids: Sequence[str],
        *,
        everyone: bool = False,
        refreshing: frozenset[str] = frozenset(),
    ) -> View:
        """How current these customers are now. With `everyone` (the request covers every
        customer) the view is kept until a state changes or time moves it on."""
        now = self.clock()
        cached = self._view_all
        if (
            everyone
            and not refreshing
            and cached is not None
            and cached[0] == self.epoch
            and cached[1] == len(customer_ids)
            and (cached[2].valid_until is None or now < cached[2].valid_until)
        ):
            return cached[2]
        counts: dict[State, int] = dict.fromkeys(STATES, 0)
        oldest: datetime | None = None
        not_fresh: list[Part] = []
        errors: set[str] = set()
        valid_until: datetime | None = None
        for cid in customer_ids:
            part, until = self._part(self._status(cid), now)
            if cid in refreshing:
                part = Part(cid, "refreshing", part.fetched_at, part.error)
            counts[part.state] += 1
            if part.state != "fresh":
                not_fresh.append(part)
            if part.state == "error":
                errors.add(cid)
            if part.fetched_at is not None and (oldest is None or part.fetched_at < oldest):
                oldest = part.fetched_at
            if until is not None and (valid_until is None or until < valid_until):
                valid_until = until
        tag_source = repr(
            (
                sorted(counts.items()),
                [(p.customer_id, p.state, iso(p.fetched_at), p.error) for p in not_fresh],
            )
        )
        view = View(
            customers=len(customer_ids),
            counts=counts,
            oldest_fetched_at=to_second(oldest) if oldest else None,
            not_fresh=tuple(not_fresh),
            errors=frozenset(errors),
            valid_until=valid_until,
            tag=hashlib.blake2b(tag_source.encode(), digest_size=8).hexdigest(),
        )
        if everyone and not refreshing:
            self._view_all = (self.epoch, len(customer_ids), view)
        return view

    async def ensure(
        self,
        customer_ids: Sequence[str],
        *,
        max_age: float | None = None,
        everyone: bool = False,
    ) -> Freshness:
        """Refresh what is older than `max_age` (default: the TTL), then say how current
        each customer is. Waits only where it must (see the module docstring)."""
        view = self.view(customer_ids, everyone=everyone)
        now = self.clock()
        if max_age is None:
            candidates = [p.customer_id for p in view.not_fresh]
            limit = self.ttl
        else:
            candidates = list(customer_ids)
            limit = max_age
        wait_on: dict[str, asyncio.Task[RefreshOutcome]] = {}
        for cid in candidates:
            status = self._status(cid)
            last = status.last_success_at
            if last is not None and limit > 0 and _age(now, last) < limit:
                continue
            if self._in_backoff(status, now):
                continue
            task = self.start(cid)
            # With the background refresh on, stale data is served at once; a request waits
            # only for customers it has nothing of, or when it asked for fresher data.
            if last is None or max_age is not None or not self.interval:
                wait_on[cid] = task
        if not wait_on:
            result: CacheResult = "stale" if view.counts["stale"] else "hit"
            self.metrics.cache.labels(result).inc()
            return Freshness(view=view, now=now, ttl=self.ttl)
        await asyncio.wait(wait_on.values(), timeout=self.wait)
        running = frozenset(cid for cid, task in wait_on.items() if not task.done())
        outcomes = [t.result() for t in wait_on.values() if t.done() and not t.cancelled()]
        self.metrics.cache.labels("miss").inc()
        return Freshness(
            view=self.view(customer_ids, everyone=everyone, refreshing=running),
            now=self.clock(),
            ttl=self.ttl,
            forwarded=True,
            stored=any(o.ok for o in outcomes),
            upstream_status=next(
                (o.error.upstream_status for o in outcomes if o.error and o.error.upstream_status),
                None,
            ),
        )

    def _in_backoff(self, status: CustomerStatus, now: datetime) -> bool:
        return status.backoff_until is not None and now < status.backoff_until

    # ---- refreshing ----------------------------------------------------------------------------

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
        if self.shared:
            now = self.clock()
            taken = await self.writer.run_plan(
                lambda d: leases.take(
                    d, cid, self.holder, now, now + timedelta(seconds=LEASE_SECONDS)
                )
            )
            if not taken.ours:
                return await self._await_other(cid, taken, now)
            self.metrics.leases_held.inc()
        try:
            outcome = await self._refresh_here(cid)
        finally:
            if self.shared:
                self.metrics.leases_held.dec()
                await asyncio.shield(self._hand_back(cid))
        return outcome

    async def _hand_back(self, cid: str) -> None:
        """Give the lease back after a refresh (kept as a backoff after a failed one), and
        tell the other processes."""
        status = self._status(cid)
        until = status.backoff_until if status.error is not None else None
        try:
            if until is not None and until > self.clock():
                await self.writer.run_plan(lambda d: leases.back_off(d, cid, self.holder, until))
            else:
                await self.writer.run_plan(lambda d: leases.give_back(d, cid, self.holder))
            if self.on_settled is not None:
                await self.on_settled(cid)
        except Exception:  # the lease expires by itself; the others look again
            log.exception("could not hand back the lease of customer %s", cid)

    async def _await_other(self, cid: str, taken: leases.Taken, since: datetime) -> RefreshOutcome:
        """Another process holds the customer's lease: wait for its result (at most the
        request's wait), then serve what it stored; a backoff is taken as it is."""
        status = self._status(cid)
        if taken.holder == leases.BACKOFF:
            status.backoff_until = taken.expires_at
            status.due_at = taken.expires_at
            await self.reload([cid])
            status.backoff_until = max(status.backoff_until or taken.expires_at, taken.expires_at)
            return RefreshOutcome(cid, ok=False, error=status.error)
        landed = self._landed.setdefault(cid, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(landed.wait()), LOOK_SECONDS)
            if landed.is_set() or await self._landed_since(cid, since):
                break
            if self.clock() >= taken.expires_at:  # its holder died: the lease is free
                return await self._refresh(cid)
        await self.reload([cid])
        last = status.last_success_at
        ok = status.error is None and last is not None and last >= since
        return RefreshOutcome(cid, ok=ok, error=status.error)

    async def _landed_since(self, cid: str, since: datetime) -> bool:
        async with self.sessions() as session:
            state = (await repo.customer_states(session, [cid]))[cid]
        return state.last_attempt_at is not None and state.last_attempt_at >= since

    async def _refresh_here(self, cid: str) -> RefreshOutcome:
        self.metrics.refreshes_in_flight.inc()
        began = time.perf_counter()
        started = self.clock()
        retry_after: float | None = None
        try:
            outcome = await self._walk(cid, started)
        except UpstreamError as exc:
            log.warning(
                "refresh of customer %s failed: %s",
                cid,
                exc,
                extra={"customer_id": cid, **upstream_fields(exc)},
            )
            error = SourceError(exc.kind, exc.message, exc.status)
            retry_after = exc.retry_after
            await self._record_failure(cid, started, error, exc.request_id)
            outcome = RefreshOutcome(cid, ok=False, error=error)
        except Exception as exc:  # a bug or the database: record it, never crash the task
            log.exception("refresh of customer %s failed", cid)
            kind = "database" if isinstance(exc, SQLAlchemyError) else "internal"
            error = SourceError(kind, f"refresh failed: {type(exc).__name__}", None)
            await self._record_failure(cid, started, error, None)
            outcome = RefreshOutcome(cid, ok=False, error=error)
        finally:
            self.metrics.refreshes_in_flight.dec()
            took = time.perf_counter() - began
            self.metrics.refresh_latency.observe(took)
            self.metrics.customer_refresh_seconds.labels(cid).set(took)
        result = "success" if outcome.ok else "error"
        self.metrics.refreshes.labels(result).inc()
        self.metrics.customer_refreshes.labels(cid, result).inc()
        self._settle(cid, outcome, retry_after)
        return outcome

    async def _walk(self, cid: str, started: datetime) -> RefreshOutcome:
        """One walk of the customer's pages, staged as they come and merged at the end.

        A walk holds a walk slot while it fetches, then trades it for a commit slot: other
        walks fetch while it waits for the writer, and the customers held in memory are at
        most the two kinds of slots together.
        """
        slot = self._walk_slots
        await self._walk_slots.acquire()
        self.walking.add(cid)
        ingest: Ingest | None = None
        pages = 0
        request_id: str | None = None
        try:
            async with self.sessions() as session:
                ingest = await open_ingest(session, cid)
            renew_at = started + timedelta(seconds=LEASE_SECONDS / 2)
            async for page in self.client.iter_job_pages(cid):
                pages += 1
                if self.shared and self.clock() >= renew_at:  # a long walk keeps its lease
                    now = self.clock()
                    renew_at = now + timedelta(seconds=LEASE_SECONDS / 2)
                    until = now + timedelta(seconds=LEASE_SECONDS)
                    await self.writer.run_plan(
                        lambda d: leases.extend(d, cid, self.holder, until)  # noqa: B023
                    )
                request_id = page.request_id or request_id
                rows = page.rows
                for start in range(0, len(rows), ROWS_PER_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    ingest.add_page(rows[start : start + ROWS_PER_SLICE])
                if ingest.must_spill:
                    await ingest.spill(self.writer, self.clock())
            snapshot = SnapshotRecord(
                customer_id=cid,
                started_at=started,
                finished_at=self.clock(),
                outcome="success",
                pages=pages,
                jobs_seen=len(ingest.seen),
                rows_skipped=ingest.rows_skipped,
                request_id=request_id,
            )
            await self._commit_slots.acquire()
            self._walk_slots.release()
            slot = self._commit_slots
            result: IngestResult = await ingest.commit(self.writer, snapshot, self.feed)
        except BaseException:
            if ingest is not None:
                try:
                    await asyncio.shield(ingest.discard(self.writer))
                except Exception:
                    log.exception("could not discard the staged rows of customer %s", cid)
            raise
        finally:
            self.walking.discard(cid)
            slot.release()
        if result.told.events and self.on_told is not None:
            self.on_told(result.told)
        log.info(
            "customer %s: %d jobs on %d pages, %d written", cid, result.jobs, pages, result.written
        )
        return RefreshOutcome(
            cid,
            ok=True,
            jobs=result.jobs,
            pages=pages,
            rows_skipped=result.rows_skipped,
            written=result.written,
            stored_at=snapshot.finished_at,
            data_version=result.data_version,
        )

    def _settle(self, cid: str, outcome: RefreshOutcome, retry_after: float | None) -> None:
        """The customer's state after a refresh, in memory."""
        status = self._status(cid)
        now = self.clock()
        if outcome.stored_at is not None:
            status.last_success_at = outcome.stored_at
            status.error = None
            status.failures = 0
            status.backoff_until = None
            if self.interval:
                # Spread over the last tenth of the interval, so customers refreshed together
                # once drift apart instead of hitting the upstream together every time.
                delay = self.interval * random.uniform(0.9, 1.0)  # noqa: S311
                status.due_at = outcome.stored_at + timedelta(seconds=delay)
            if outcome.written:
                status.version = (
                    outcome.data_version if outcome.data_version is not None else status.version + 1
                )
            self._changed(data=bool(outcome.written))
            return
        status.error = outcome.error
        status.failures += 1
        delay = _backoff_seconds(status.failures, self.ttl)
        if retry_after is not None:
            # The upstream said when to ask again: not before.
            delay = max(delay, retry_after)
        status.backoff_until = now + timedelta(seconds=delay)
        status.due_at = status.backoff_until
        self._changed(data=False)

    async def _record_failure(
        self, cid: str, started: datetime, error: SourceError, request_id: str | None
    ) -> None:
        snapshot = SnapshotRecord(
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
            async with self.writer.transaction() as session:
                await repo.add_failure(session, snapshot)
        except Exception:  # best effort: the failure is logged either way
            log.exception("could not record the failed refresh of customer %s", cid)

    # ---- in the background ---------------------------------------------------------------------

    def due(self, customer_ids: Sequence[str], now: datetime) -> list[str]:
        """Customers the background refresh should take now."""
        out = []
        for cid in customer_ids:
            status = self._status(cid)
            if cid in self._inflight or self._in_backoff(status, now):
                continue
            if status.last_success_at is None or status.due_at is None or now >= status.due_at:
                out.append(cid)
        return out

    async def run_background(self, tick: float | None = None) -> None:
        """Refresh every customer every `interval` seconds (jittered), forever."""
        pause = tick if tick is not None else max(0.5, min(self.interval / 10, 5.0))
        while True:
            try:
                ids = await self.customer_ids()
            except DiscoveryFailed as exc:
                log.info("background refresh waits for the customer list: %s", exc)
            else:
                for cid in self.due(ids, self.clock()):
                    self.start(cid)
            await asyncio.sleep(pause)

    def spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def warm(self) -> None:
        """Refresh every customer in the background (at start-up), without waiting."""

        async def run() -> None:
            try:
                ids = await self.customer_ids()
            except DiscoveryFailed as exc:
                log.warning("warm-up skipped: %s", exc)
                return
            await asyncio.gather(*(self.refresh(cid) for cid in ids))

        self.spawn(run())

    async def aclose(self) -> None:
        """Stop every refresh still running (at shutdown); what was stored stays stored."""
        tasks: list[asyncio.Task[Any]] = [*self._inflight.values(), *self._background]
        if self.directory.task is not None:
            tasks.append(self.directory.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.shared:
            try:
                await self.writer.run_plan(lambda d: leases.give_back_all(d, self.holder))
            except Exception:  # they expire by themselves
                log.exception("could not hand back this process's leases")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _backoff_seconds(failures: int, ttl: float) -> float:
    """Doubling per consecutive failure, at most the TTL, and never nothing at all."""
    doubled = BACKOFF_BASE_SECONDS * 2.0 ** min(failures - 1, 30)
    return max(MIN_BACKOFF_SECONDS, min(float(ttl), doubled))


def _log_failure(task: asyncio.Task[Any]) -> None:
    """Retrieve a background task's exception, so that none is lost unlogged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, DiscoveryFailed):
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def _older_than_known(state: repo.CustomerState, status: CustomerStatus) -> bool:
    """Whether a stored state predates what memory already holds of the customer: an older
    last success, and no data newer than memory's (a success of another process whose clock
    runs behind still brings its data)."""
    known = status.last_success_at
    if known is None or state.data_version > status.version:
        return False
    return state.last_success_at is None or state.last_success_at < known


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def _age_seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else int(_age(now, then))
