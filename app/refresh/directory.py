"""Which customers the partner has: `CUSTOMER_IDS`, or discovered from the upstream.

A known list is answered at once (an expired one is renewed in the background); only when
none is known yet does a request wait for the listing. The listing also gives the customers'
names, stored with them.

The known list is never changed in place: a new one replaces it and moves `generation`, so
that what is built from a list (the API's pages of customers) can be kept under the
generation instead of being rebuilt from the whole list on every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.clock import Clock
from app.refresh.ledger import backoff_seconds
from app.store import outage, repo
from app.store.writer import Writer
from app.tasks import log_failure
from app.upstream.client import AvePointClient
from app.upstream.errors import UpstreamError, upstream_fields

log = logging.getLogger("app.refresh")


LISTING_FAILURES: tuple[type[Exception], ...] = (UpstreamError, *outage.DRIVER_ERRORS)
"""What a customer listing may fail with and be backed off for: the upstream or the database."""


@dataclass(frozen=True, slots=True)
class Listing:
    """The customers known now, in the directory's order, and the generation of that list:
    the same generation always names the same ids."""

    generation: int
    ids: tuple[str, ...]


class DiscoveryFailed(Exception):
    """The customer list could not be had from the upstream, and none is known from before."""

    quiet = True  # said where it matters; not a background task's failure to log


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
        self.known: tuple[str, ...] | None = tuple(self.configured) or None
        self.generation = 0  # moves whenever `known` is replaced
        self.fetched_at: datetime | None = None
        self.failure: str | None = None
        self.retry_at = datetime.min.replace(tzinfo=UTC)
        self.failures = 0
        self._task: asyncio.Task[list[str]] | None = None

    def load(self, stored: Sequence[str]) -> None:
        """What the store knew before a restart, until the upstream says otherwise."""
        if not self.configured and stored:
            self._know(sorted(stored))

    def _know(self, ids: Sequence[str]) -> None:
        self.known = tuple(ids)
        self.generation += 1

    async def ids(self) -> list[str]:
        return list((await self.listing()).ids)

    async def listing(self) -> Listing:
        """The customers known now, without a copy: `ids` for callers that keep what they
        build from it under its generation."""
        backing_off = self.failure is not None and self.clock() < self.retry_at
        if self.known is not None:
            expired = (
                self.fetched_at is None
                or (self.clock() - self.fetched_at).total_seconds() >= self.ttl
            )
            if expired and not backing_off:
                self._start()
            return Listing(self.generation, self.known)
        if backing_off:
            raise DiscoveryFailed(self.failure or "the customer listing failed")
        task = self._start()
        await asyncio.wait({task}, timeout=self.wait)
        if not task.done():
            raise DiscoveryFailed("the customer list is still being fetched")
        if task.cancelled() or task.exception() is not None:
            raise DiscoveryFailed(self.failure or "the customer listing failed")
        known = self.known
        if known is None:  # the listing set none (it always does): its result, then
            self._know(task.result())
            known = tuple(task.result())
        return Listing(self.generation, known)

    @property
    def task(self) -> asyncio.Task[list[str]] | None:
        """The listing in flight or last run, if any."""
        return self._task

    def _start(self) -> asyncio.Task[list[str]]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._discover(), name="discover-customers")
            self._task.add_done_callback(log_failure)
        return self._task

    async def _discover(self) -> list[str]:
        # Even with a configured list, the listing gives the customers' names.
        self.fetched_at = self.clock()
        failed: str | None = None
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
        except LISTING_FAILURES as exc:
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
                seconds=backoff_seconds(self.failures, self.ttl)
            )
            if self.configured:
                return list(self.configured)
            failed = reason
        if failed is not None:
            # Raised here, not in the handler: the task keeps its error until the next
            # listing, and a cause would keep the database connection it failed on open.
            raise DiscoveryFailed(failed)
        self.failure = None
        self.failures = 0
        self.on_names(names)
        if not self.configured:
            self._know(list(names))
        return list(self.known or ())
