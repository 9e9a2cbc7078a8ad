"""The sweep: alerts and "no result" that time brings.

An overdue alert opens, and an object turns "no result", because time passed, not because
a refresh saw something (the upstream may be silent), so a sweep looks for keys whose last
success is older than `OVERDUE_HOURS`, and for objects whose expectation says they are late
(or no longer late) while their stored state says otherwise, and judges their customers
again (`app.store.sweep.sweep_customer`), each in a write transaction of its own; and
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
from app.store import leases, maintenance, objects, plans, sweep
from app.store.objects import NOTHING_STORED
from app.store.telling import FeedConfig, Told
from app.store.writer import Writer

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0
"""How often the sweep runs: an hour's threshold needs no finer grain."""

SWEEP_LEASE = "~sweep"
"""The well-known lease of the sweep (no customer id starts with a tilde)."""

LOOK_BACK = timedelta(days=36)
"""How far back the sweep reads results to find late objects (the learning's window)."""

CHUNK = 200
"""Customers whose objects the sweep reads in one query."""


async def sweep_overdue(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    config: FeedConfig,
    clock: Clock,
    on_told: Callable[[Told], None] | None = None,
    holder: str | None = None,
    every: float = SWEEP_SECONDS,
    watch: LateWatch | None = None,
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
            candidates.update(
                await plans.run_async(conn, sweep.overdue_candidates(dialect, cutoff))
            )
        watch = watch or LateWatch()
        candidates.update(await watch.candidates(session, config, now))
    events = 0
    for cid in sorted(candidates):
        told = await writer.run_plan(
            lambda dialect, cid=cid: sweep.sweep_customer(dialect, cid, now, config)  # type: ignore[misc]
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
    released = await writer.run_plan(lambda d: maintenance.release_ended(d, now))
    if None in released:
        async with sessions() as session:
            return await objects.customer_ids(session)
    return [cid for cid in released if cid is not None]


class LateWatch:
    """Which customers have an object whose "no result" state differs from what was told,
    without reading every job every round: per customer, what its stored jobs and rows say
    (the earliest moment one of its objects turns late, and whether one differs already),
    kept until the customer's data version or its rows of `object_expectations` change."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[object, datetime | None, bool]] = {}

    async def candidates(
        self, session: AsyncSession, config: FeedConfig, now: datetime
    ) -> set[str]:
        versions = await objects.customer_versions(session)
        rows = await objects.expectation_rows(session)
        moved = [
            cid
            for cid, version in versions.items()
            if (known := self._known.get(cid)) is None or known[0] != (version, rows.get(cid))
        ]
        for cid in set(self._known) - set(versions):
            del self._known[cid]
        for chunk in range(0, len(moved), CHUNK):
            names = moved[chunk : chunk + CHUNK]
            found, stored = await objects.read_objects(session, names, since=now - LOOK_BACK)
            per: dict[str, tuple[datetime | None, bool]] = {cid: (None, False) for cid in names}
            for obj, jobs in found.items():
                row = stored.get(obj, NOTHING_STORED)
                a = expectations.assess(jobs, row.setting, config.rules.statuses, now, config.zone)
                deadline, differs = per[obj[0]]
                late = a.state == "no_result"
                if late != (row.no_result_at is not None):
                    differs = True
                elif not late and a.next_result_due_at is not None and a.state != "retired":
                    moment = a.next_result_due_at + a.expected.grace
                    deadline = moment if deadline is None else min(deadline, moment)
                per[obj[0]] = (deadline, differs)
            for cid in names:
                self._known[cid] = ((versions[cid], rows.get(cid)), *per[cid])
        return {
            cid
            for cid, (_, deadline, differs) in self._known.items()
            if differs or (deadline is not None and deadline < now)
        }


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
    watch = LateWatch()
    while True:
        try:
            await sweep_overdue(writer, sessions, config, clock, on_told, holder, every, watch)
        except Exception:  # the database may be away for a while: try again next time
            log.exception("the overdue sweep failed")
        await asyncio.sleep(every)
