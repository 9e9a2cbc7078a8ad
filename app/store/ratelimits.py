"""The `rate_counts` table: the requests each process admitted per key and minute, so that
replicas on PostgreSQL share one limit (`app.access.ratelimit` keeps the counters and runs
the rounds; this is their SQL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.tables import RateCount

RATE_COUNTS = cast(Table, RateCount.__table__)

_insert = pg_insert(RATE_COUNTS)
UPSERT = _insert.on_conflict_do_update(
    index_elements=[RATE_COUNTS.c.window, RATE_COUNTS.c.identity, RATE_COUNTS.c.holder],
    set_={"hits": RATE_COUNTS.c.hits + _insert.excluded.hits},
)
"""Adds a process's new hits of one identity and window to its row (executed as a batch)."""


async def exchange(
    engine: AsyncEngine, holder: str, window: int, hits: Mapping[tuple[int, str], int]
) -> dict[str, int]:
    """Add this process's new `hits` ((window, identity) -> count) to its rows, and read the
    other processes' totals per identity in `window`, in one transaction."""
    rows = [
        {"window": w, "identity": identity, "holder": holder, "hits": count}
        for (w, identity), count in hits.items()
    ]
    others = (
        select(RATE_COUNTS.c.identity, func.sum(RATE_COUNTS.c.hits))
        .where(RATE_COUNTS.c.window == window, RATE_COUNTS.c.holder != holder)
        .group_by(RATE_COUNTS.c.identity)
    )
    async with engine.begin() as connection:
        if rows:
            await connection.execute(UPSERT, rows)
        result = await connection.execute(others)
        return {identity: int(total) for identity, total in result}


async def forget_before(engine: AsyncEngine, window: int) -> None:
    """Delete the counts of windows before `window`."""
    async with engine.begin() as connection:
        await connection.execute(delete(RATE_COUNTS).where(RATE_COUNTS.c.window < window))
