"""The refresher: what a request or the background asks of the refresh package.

`ensure(customer_ids, max_age)` starts refreshes for what is older than the request's
`max_age` (single flight: a walk already running is joined, never doubled) and waits at most
`REQUEST_WAIT_SECONDS` for them, unless the background refresh is on and the request's data
is merely stale: then it answers at once with what it has, so that in normal operation a read
never waits on the upstream. A failing customer is backed off (doubling, at most the TTL, or
as long as the upstream's Retry-After asks) and not asked again by any caller meanwhile.

One refresh (`start`): the backoff is honoured, a walk slot is taken, then the customer's
lease (`app.refresh.leasing`); a process that finds the lease held elsewhere waits for that
walk's result, or serves what is stored. The walk itself is `app.refresh.walk`; what the
process knows of every customer is `app.refresh.ledger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock, utcnow
from app.metrics import Metrics
from app.refresh.directory import CustomerDirectory, Listing
from app.refresh.leasing import LEASE_SECONDS, Leasing, process_holder
from app.refresh.ledger import (
    CacheResult,
    Freshness,
    Ledger,
    RefreshOutcome,
    Source,
    SourceError,
    View,
)
from app.refresh.walk import Walker
from app.store import leases, outage, repo
from app.store.snapshots import SnapshotRecord
from app.store.telling import FeedConfig, Told
from app.store.writer import Writer
from app.upstream.client import AvePointClient
from app.upstream.errors import UpstreamError, upstream_fields

log = logging.getLogger("app.refresh")

LOOK_SECONDS = 0.25
"""How often a process waiting on another's walk looks at the database meanwhile."""


@dataclass(frozen=True, slots=True)
class Ask:
    """When a refresh was first asked for, and the newest good snapshot known then."""

    at: datetime
    known: datetime | None


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
        on_settled: Callable[[str], Awaitable[None]] | None = None,
        holder: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.writer = writer
        self.metrics = metrics
        self.clock = clock
        self.ttl = ttl_seconds
        self.wait = wait_seconds
        self.on_settled = on_settled
        self.ledger = Ledger(
            ttl=ttl_seconds, stale_if_error=stale_if_error_seconds, interval=interval_seconds
        )
        self.leasing = Leasing(writer, holder or process_holder(), lease_seconds)
        self.walker = Walker(
            client=client,
            sessions=sessions,
            writer=writer,
            leasing=self.leasing,
            clock=clock,
            slots=walk_slots,
            feed=feed,
            on_told=on_told,
        )
        self.directory = CustomerDirectory(
            client=client,
            writer=writer,
            configured=configured_customers,
            ttl=ttl_seconds,
            wait=wait_seconds,
            clock=clock,
            on_names=self.ledger.names_changed,
        )
        self._inflight: dict[str, asyncio.Task[RefreshOutcome]] = {}
        self._landed: dict[str, asyncio.Event] = {}

    # ---- what the API reads ------------------------------------------------------------------

    @property
    def holder(self) -> str:
        return self.leasing.holder

    @property
    def epoch(self) -> int:
        return self.ledger.epoch

    @property
    def walking(self) -> set[str]:
        return self.walker.walking

    def version_of(self, customer_ids: Sequence[str] | None) -> object:
        return self.ledger.version_of(customer_ids)

    def name_of(self, cid: str) -> str | None:
        return self.ledger.name_of(cid)

    def source(self, cid: str) -> Source:
        return self.ledger.source(cid, self.clock())

    def view(
        self,
        customer_ids: Sequence[str],
        *,
        everyone: bool = False,
        refreshing: frozenset[str] = frozenset(),
        kept: Hashable | None = None,
    ) -> View:
        return self.ledger.view(
            customer_ids, self.clock(), everyone=everyone, refreshing=refreshing, kept=kept
        )

    def oldest_snapshot_age(self) -> float:
        return self.ledger.oldest_snapshot_age(self.clock())

    async def customer_ids(self) -> list[str]:
        """Every customer this partner's requests cover: configured, or discovered."""
        return await self.directory.ids()

    async def customer_listing(self) -> Listing:
        """`customer_ids` without the copy, with the generation of the list."""
        return await self.directory.listing()

    def in_flight(self, cid: str) -> bool:
        return cid in self._inflight

    # ---- the stored state ----------------------------------------------------------------

    async def load(self) -> None:
        """Every stored customer's state, once at start-up."""
        async with self.sessions() as session:
            states = await repo.customer_states(session)
        for state in states.values():
            self.ledger.take_state(state)
        self.directory.load(list(states))
        self.ledger.changed(data=True)
        await self.leasing.release_dead()

    async def reload(self, customer_ids: Sequence[str]) -> None:
        """Load what another process stored for these customers (its refresh landed)."""
        if not customer_ids:
            return
        async with self.sessions() as session:
            states = await repo.customer_states(session, customer_ids)
        self.ledger.take_states(states, self.clock())
        for cid in states:
            landed = self._landed.pop(cid, None)
            if landed is not None:
                landed.set()

    # ---- freshness -----------------------------------------------------------------------

    async def ensure(
        self,
        customer_ids: Sequence[str],
        *,
        max_age: float | None = None,
        everyone: bool = False,
        kept: Hashable | None = None,
    ) -> Freshness:
        """Refresh what is older than `max_age` (default: the TTL), then say how current
        each customer is. Waits only where it must (see the module docstring). `kept` names
        these customers for a view kept between requests (`Ledger.view`)."""
        view = self.view(customer_ids, everyone=everyone, kept=kept)
        now = self.clock()
        if max_age is None:
            candidates = [p.customer_id for p in view.not_fresh]
            limit = self.ttl
        else:
            candidates = list(customer_ids)
            limit = max_age
        background = bool(self.ledger.interval)
        wait_on: dict[str, asyncio.Task[RefreshOutcome]] = {}
        for cid in candidates:
            status = self.ledger.of(cid)
            last = status.last_success_at
            if last is not None and limit > 0 and (now - last).total_seconds() < limit:
                continue
            if self.ledger.in_backoff(status, now):
                continue
            task = self.start(cid)
            # With the background refresh on, stale data is served at once; a request waits
            # only for customers it has nothing of, or when it asked for fresher data.
            if last is None or max_age is not None or not background:
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

    # ---- refreshing ----------------------------------------------------------------------

    def start(self, customer_id: str) -> asyncio.Task[RefreshOutcome]:
        """The customer's refresh in flight, started if there is none (single flight)."""
        task = self._inflight.get(customer_id)
        if task is None or task.done():
            task = asyncio.create_task(
                self._refresh_or_back_off(customer_id), name=f"refresh:{customer_id}"
            )
            self._inflight[customer_id] = task
            task.add_done_callback(functools.partial(self._forget, customer_id))
        return task

    async def refresh(self, customer_id: str) -> RefreshOutcome:
        """Refresh one customer now (joining a refresh already in flight) and wait for it."""
        return await asyncio.shield(self.start(customer_id))

    def _forget(self, customer_id: str, task: asyncio.Task[RefreshOutcome]) -> None:
        if self._inflight.get(customer_id) is task:
            del self._inflight[customer_id]

    async def _refresh_or_back_off(self, cid: str) -> RefreshOutcome:
        """`_refresh`; a database that fails before the walk (taking the lease, reading
        another process's result) is a failed refresh of kind `database` too, backed off like
        any other, so that requests serve what they have and nothing retries in a loop."""
        try:
            return await self._refresh(cid)
        except outage.DRIVER_ERRORS as exc:
            return self._failed_to_start(cid, exc)

    async def _refresh(self, cid: str, ask: Ask | None = None) -> RefreshOutcome:
        """One refresh: not while the customer backs off; else a walk slot, then the lease
        (taken only now, so it never runs down in a queue), then the walk. `ask` is when
        the refresh was first asked for and what this process knew then: a good snapshot
        stored after it, or one newer than what was known, is this refresh's too."""
        status = self.ledger.of(cid)
        if ask is None:
            ask = Ask(self.clock(), status.last_success_at)
        if self.ledger.in_backoff(status, ask.at):
            return RefreshOutcome(cid, ok=False, error=self.ledger.backoff_error(status))
        slots = self.walker.slots
        await slots.acquire()
        try:
            lease = await self.leasing.take(cid)
            # While this walk queued, another process may have walked the customer and
            # handed its lease back: then its result is this refresh's too.
            landed = lease.ours and self._landed_elsewhere(ask, lease.stored_at)
        except Exception as exc:  # the database: a failed refresh, backed off like any other
            slots.release()
            return self._failed_to_start(cid, exc)
        if not lease.ours:
            slots.release()
            return await self._await_other(cid, lease, ask)
        if landed:
            slots.release()
            await asyncio.shield(self.leasing.hand_back(cid, lease, 0.0))
            await self.reload([cid])
            return RefreshOutcome(cid, ok=True)
        self.metrics.leases_held.inc()
        outcome: RefreshOutcome | None = None
        try:
            outcome = await self._walk(cid, lease)
        finally:
            self.metrics.leases_held.dec()
            # A walk that stored gave its lease back in its merge's transaction.
            given = outcome is not None and outcome.ok
            await asyncio.shield(self._hand_back(cid, lease, given=given))
        return outcome

    def _failed_to_start(self, cid: str, exc: Exception) -> RefreshOutcome:
        log.warning(
            "refresh of customer %s could not start: %s",
            cid,
            outage.cause(exc),
            extra={"customer_id": cid},
        )
        kind = "database" if isinstance(exc, outage.DRIVER_ERRORS) else "internal"
        error = SourceError(kind, f"refresh failed: {type(exc).__name__}", None)
        outcome = RefreshOutcome(cid, ok=False, error=error)
        self.ledger.settle(cid, outcome, None, self.clock())
        return outcome

    async def _hand_back(self, cid: str, lease: leases.Lease, *, given: bool = False) -> None:
        """Give the lease back after a refresh (kept as a backoff after a failed one; already
        `given` back by a merge that stored), and tell the other processes."""
        status = self.ledger.of(cid)
        until = status.backoff_until if status.error is not None else None
        try:
            left = (until - self.clock()).total_seconds() if until is not None else 0.0
            if not given:
                await self.leasing.hand_back(cid, lease, left)
            if self.on_settled is not None:
                await self.on_settled(cid)
        except Exception:  # the lease expires by itself; the others look again
            log.exception("could not hand back the lease of customer %s", cid)

    async def _await_other(self, cid: str, lease: leases.Lease, ask: Ask) -> RefreshOutcome:
        """Another walk holds the customer's lease: wait for its result (at most the
        request's wait), then serve what it stored; a backoff is taken as it is. The
        lease's expiry is the database's to judge: a free lease is taken again."""
        status = self.ledger.of(cid)
        if lease.backoff:
            left = timedelta(seconds=max(0.0, lease.seconds_left))
            await self.reload([cid])
            status.backoff_until = max(status.backoff_until or self.clock(), self.clock() + left)
            status.due_at = status.backoff_until
            return RefreshOutcome(cid, ok=False, error=self.ledger.backoff_error(status))
        since = self.clock()
        landed = self._landed.setdefault(cid, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(landed.wait()), LOOK_SECONDS)
            if landed.is_set() or await self._landed_since(cid, since):
                break
            now = await self.leasing.peek(cid)
            if now is None or now.seconds_left <= 0:  # given back, or its holder died
                # It may have stored between the look above and the hand-back: a snapshot
                # stored since this wait began, or newer than what was known when the
                # refresh was asked for, is taken (`_landed_elsewhere`), not walked.
                return await self._refresh(cid, Ask(since, ask.known))
        await self.reload([cid])
        last = status.last_success_at
        ok = status.error is None and last is not None and last >= since
        return RefreshOutcome(cid, ok=ok, error=status.error)

    def _landed_elsewhere(self, ask: Ask, stored: datetime | None) -> bool:
        """Whether another process stored a good snapshot this refresh can take instead of
        walking: one recorded after it was asked for, or one newer than what this process
        knew when it was asked for that is still fresh (what the request would have served,
        had it heard in time). What was known then, not now: the bus may have brought the
        other's snapshot while this refresh queued or took the lease, and it is still the
        one this refresh would store again. `stored` is when the last good one was stored,
        as the lease's take read it."""
        if stored is None:
            return False
        if stored > ask.at:
            return True
        fresh = (self.clock() - stored).total_seconds() < self.ttl
        return (ask.known is None or stored > ask.known) and fresh

    async def _landed_since(self, cid: str, since: datetime) -> bool:
        """Whether a refresh of the customer was recorded since `since`."""
        async with self.sessions() as session:
            state = (await repo.customer_states(session, [cid]))[cid]
        return state.last_attempt_at is not None and state.last_attempt_at >= since

    async def _walk(self, cid: str, lease: leases.Lease) -> RefreshOutcome:
        """The walk, with its metrics, its failure recorded, and the ledger settled."""
        self.metrics.refreshes_in_flight.inc()
        began = time.perf_counter()
        started = self.clock()
        retry_after: float | None = None
        try:
            outcome = await self.walker.run(cid, started, lease)
        except leases.LeaseLost as exc:
            # Another walk took the customer over: it stores and tells; this one stops.
            log.warning("refresh of customer %s stopped: %s", cid, exc, extra={"customer_id": cid})
            return RefreshOutcome(cid, ok=False, error=SourceError("lease_lost", str(exc), None))
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
            if outage.unreachable(exc):  # no traceback: an outage is not a bug
                log.warning("refresh of customer %s failed: %s", cid, outage.cause(exc))
            else:
                log.exception("refresh of customer %s failed", cid)
            kind = "database" if isinstance(exc, outage.DRIVER_ERRORS) else "internal"
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
        self.ledger.settle(cid, outcome, retry_after, self.clock())
        return outcome

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

    async def aclose(self) -> None:
        """Stop every refresh still running (at shutdown); what was stored stays stored."""
        tasks: list[asyncio.Task[object]] = [*self._inflight.values()]
        if self.directory.task is not None:
            tasks.append(self.directory.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.leasing.give_back_all()
