"""The sweep: alerts and "no result" that time brings.

An overdue alert opens, and an object turns "no result", because time passed, not because
a refresh saw something (the upstream may be silent), so a sweep looks for keys whose last
success is older than `OVERDUE_HOURS`, and for objects whose expectation says they are late
(or no longer late) while their stored state says otherwise, and judges their customers
again (`app.store.feed.sweep_customer`), each in a write transaction of its own; and
the customers of maintenance windows that ended, so what a window held back opens.

With several processes on one database, one sweeps at a time: the one that holds the lease
`SWEEP_LEASE` (a row of `refresh_leases`, `app.store.leases`), taken for two rounds and
taken again each round, so another process takes over within two rounds when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import expectations
from app.clock import Clock
from app.store import feed, leases, objects
from app.store.feed import NOTHING_STORED, FeedConfig, Told
from app.store.ingest import Writer

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0
"""How often the sweep runs: an hour's threshold needs no finer grain."""

SWEEP_LEASE = "~sweep"
"""The well-known lease of the sweep (no customer id starts with a tilde)."""

LOOK_BACK = timedelta(days=36)
"""How far back the sweep reads results to find late objects (the learning's window)."""


async def sweep_overdue(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    config: FeedConfig,
    clock: Clock,
    on_told: Callable[[Told], None] | None = None,
    holder: str | None = None,
    every: float = SWEEP_SECONDS,
) -> int:
    """Open the overdue alerts and tell the "no result" time has brought; gives the events
    written. With a `holder`, only while it holds the sweep's lease."""
    if holder is not None:
        lease = await writer.run_plan(lambda d: leases.take(d, SWEEP_LEASE, holder, 2 * every))
        if not lease.ours:
            return 0
    now = clock()
    candidates: set[str] = set(await released_customers(writer, sessions, now))
    async with sessions() as session:
        if config.rules.overdue_hours > 0:
            dialect = session.get_bind().dialect.name
            conn = await session.connection()
            cutoff = now - timedelta(hours=config.rules.overdue_hours)
            candidates.update(await feed.run_async(conn, feed.overdue_candidates(dialect, cutoff)))
        candidates.update(await late_candidates(session, config, now))
    events = 0
    for cid in sorted(candidates):
        told = await writer.run_plan(
            lambda dialect, cid=cid: feed.sweep_customer(dialect, cid, now, config)  # type: ignore[misc]
        )
        events += told.events
        if on_told is not None:
            on_told(told)
    return events


async def released_customers(
    writer: Writer, sessions: async_sessionmaker[AsyncSession], now: datetime
) -> list[str]:
    """The customers of maintenance windows that ended since they were last judged: what a
    window held back (an alert, "no result") opens now."""
    released = await writer.run_plan(lambda d: feed.release_ended(d, now))
    if None in released:
        async with sessions() as session:
            return await objects.customer_ids(session)
    return [cid for cid in released if cid is not None]


async def late_candidates(session: AsyncSession, config: FeedConfig, now: datetime) -> set[str]:
    """Customers with an object whose "no result" state differs from what was told."""
    found, stored = await objects.read_objects(session, None, since=now - LOOK_BACK)
    out: set[str] = set()
    for obj, jobs in found.items():
        if obj[0] in out:
            continue
        row = stored.get(obj, NOTHING_STORED)
        a = expectations.assess(jobs, row.setting, config.rules.statuses, now, config.zone)
        if (a.state == "no_result") != (row.no_result_at is not None):
            out.add(obj[0])
    return out


async def run_sweeps(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    config: FeedConfig,
    clock: Clock,
    on_told: Callable[[Told], None] | None = None,
    every: float = SWEEP_SECONDS,
    holder: str | None = None,
) -> None:
    """`sweep_overdue` every `every` seconds, forever."""
    while True:
        try:
            await sweep_overdue(writer, sessions, config, clock, on_told, holder, every)
        except Exception:  # the database may be away for a while: try again next time
            log.exception("the overdue sweep failed")
        await asyncio.sleep(every)
