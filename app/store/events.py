"""The change feed as clients read it: events after a cursor, oldest first, and the cursor
retention purged past (`CursorExpired`).

Events are written by a merge or a sweep (`app.store.telling.tell`), with ids handed out in
commit order: a reader that has seen id N never later finds an id below N appear, so
replaying from any cursor gives the same events in the same order. Retention purges old
events and notes the highest id it purged (`feed_horizon`); `read_feed` refuses a cursor
below it (`CursorExpired`), so a client that fell that far behind is told, never silently
skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.clock import iso
from app.store.plans import encode, from_driver
from app.store.tables import Event, FeedHorizon

EVENTS = cast(Table, Event.__table__)
HORIZON = cast(Table, FeedHorizon.__table__)


def event_json(
    event_id: int,
    type_: str,
    at: Any,
    customer_id: str,
    job_id: str | None,
    alert_key: str | None,
    data: str,
) -> str:
    """An event as the feed and webhooks send it; `data` is the stored JSON text."""
    head = encode(
        {
            "id": event_id,
            "type": type_,
            "at": iso(from_driver(at)),
            "customer_id": customer_id,
            "job_id": job_id,
            "alert_key": alert_key,
        }
    )
    return f'{head[:-1]},"data":{data}}}'


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    type: str
    at: datetime
    customer_id: str
    job_id: str | None
    alert_key: str | None
    data: str  # JSON text


def _events_after(
    *columns: Any,
    after: int,
    limit: int,
    upto: int | None,
    types: Sequence[str] | None,
    customer_ids: Sequence[str] | None,
) -> Select[Any]:
    e = EVENTS
    stmt = select(
        *columns, e.c.id, e.c.type, e.c.at, e.c.customer_id, e.c.job_id, e.c.alert_key, e.c.data
    )
    stmt = stmt.where(e.c.id > after).order_by(e.c.id).limit(limit)
    if upto is not None:
        stmt = stmt.where(e.c.id <= upto)
    if types is not None:
        stmt = stmt.where(e.c.type.in_(list(types)))
    if customer_ids is not None:
        stmt = stmt.where(e.c.customer_id.in_(list(customer_ids)))
    return stmt


async def list_events(
    session: AsyncSession,
    *,
    after: int,
    limit: int,
    upto: int | None = None,
    types: Sequence[str] | None = None,
    customer_ids: Sequence[str] | None = None,
) -> list[EventRow]:
    """Events after id `after` (and up to `upto`), oldest first."""
    stmt = _events_after(
        after=after, limit=limit, upto=upto, types=types, customer_ids=customer_ids
    )
    rows = await session.execute(stmt)
    return [EventRow(*row) for row in rows.all()]


async def last_event_id(session: AsyncSession) -> int:
    value = await session.scalar(select(func.max(EVENTS.c.id)))
    return int(value or 0)


# -- reading the feed from a cursor, told when retention purged past it ----------------------


class CursorExpired(Exception):
    """Retention purged events after the cursor `after`: reading on from it would skip them
    silently. `oldest` is the cursor to read on from instead (the purge horizon)."""

    def __init__(self, after: int, oldest: int) -> None:
        super().__init__(f"events after {after} were purged, up to {oldest}")
        self.after = after
        self.oldest = oldest


@dataclass(frozen=True, slots=True)
class FeedPage:
    rows: list[EventRow]
    cursor: int  # `next_cursor`: the events up to it have been looked at


def _horizon() -> Any:
    return func.coalesce(select(HORIZON.c.purged_upto).scalar_subquery(), 0)


async def read_feed(
    session: AsyncSession,
    *,
    after: int | None,
    limit: int,
    types: Sequence[str] | None = None,
    customer_ids: Sequence[str] | None = None,
) -> FeedPage:
    """Up to `limit` events after the cursor `after`, oldest first, and the cursor to go on
    from. Raises `CursorExpired` when retention purged an event after `after`; `after=None`
    (a client starting out) reads from the oldest event kept, which is no error.

    The newest id is read first and the page stops there: ids are handed out in commit
    order, so a cursor never passes an event that commits later. The purge horizon is read
    in the same statement as the events it judges (a statement sees one state of the
    database, on PostgreSQL as on SQLite), so a purge that commits between two statements
    is never missed: the answer is exact, not just likely."""
    top, horizon = (
        await session.execute(select(select(func.max(EVENTS.c.id)).scalar_subquery(), _horizon()))
    ).one()
    top, horizon = int(top or 0), int(horizon)
    while True:
        if after is not None and after < horizon:
            raise CursorExpired(after, horizon)
        start = horizon if after is None else after
        if top <= start:  # nothing after the cursor: nothing there to miss either
            return FeedPage([], start)
        found = (
            await session.execute(
                _events_after(
                    _horizon(),
                    after=start,
                    limit=limit,
                    upto=top,
                    types=types,
                    customer_ids=customer_ids,
                )
            )
        ).all()
        seen = int(found[0][0]) if found else int(await session.scalar(select(_horizon())) or 0)
        if seen > horizon:  # a purge committed since the first read: judge again
            horizon = seen
            continue
        rows = [EventRow(*row[1:]) for row in found]
        return FeedPage(rows, rows[-1].id if len(rows) == limit else top)
