"""The overdue sweep: alerts that time opens.

An overdue alert opens because time passed, not because a refresh saw something, so a sweep
looks for keys whose last success is older than `OVERDUE_HOURS` and judges their customers
again (`app.store.feed.sweep_customer`), each in a write transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.store import feed
from app.store.feed import FeedConfig, Told
from app.store.ingest import Writer

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0
"""How often the overdue sweep runs: an hour's threshold needs no finer grain."""


async def sweep_overdue(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    config: FeedConfig,
    clock: Clock,
    on_told: Callable[[Told], None] | None = None,
) -> int:
    """Open the overdue alerts time has brought; gives the events written."""
    if config.rules.overdue_hours <= 0:
        return 0
    now = clock()
    cutoff = now - timedelta(hours=config.rules.overdue_hours)
    async with sessions() as session:
        dialect = session.get_bind().dialect.name
        conn = await session.connection()
        candidates = await feed.run_async(conn, feed.overdue_candidates(dialect, cutoff))
    events = 0
    for cid in candidates:
        told = await writer.run_plan(
            lambda dialect, cid=cid: feed.sweep_customer(dialect, cid, now, config)  # type: ignore[misc]
        )
        events += told.events
        if on_told is not None:
            on_told(told)
    return events


async def run_sweeps(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    config: FeedConfig,
    clock: Clock,
    on_told: Callable[[Told], None] | None = None,
    every: float = SWEEP_SECONDS,
) -> None:
    """`sweep_overdue` every `every` seconds, forever."""
    while True:
        try:
            await sweep_overdue(writer, sessions, config, clock, on_told)
        except Exception:  # the database may be away for a while: try again next time
            log.exception("the overdue sweep failed")
        await asyncio.sleep(every)
