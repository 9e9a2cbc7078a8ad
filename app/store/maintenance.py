"""Maintenance windows: rows of `maintenance_windows`, made, listed and deleted through the
API (writes inside the caller's write transaction: `Writer.transaction`); and what a window
does: `in_maintenance`, the one question of muting, asked where alerts are judged
(`app.store.telling`), and `release_ended`, the sweep's look at windows that ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.plans import Plan, sql, to_driver
from app.store.tables import MaintenanceWindow

WINDOWS = cast(Table, MaintenanceWindow.__table__)


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    customer_id: str | None  # None: every customer
    starts_at: datetime
    ends_at: datetime
    reason: str | None
    created_at: datetime

    def covers(self, customer_id: str, start: datetime, end: datetime) -> bool:
        """Whether the window covers the customer at some time in [start, end)."""
        return (self.customer_id is None or self.customer_id == customer_id) and (
            self.starts_at < end and self.ends_at > start
        )


_COLUMNS = (
    WINDOWS.c.id,
    WINDOWS.c.customer_id,
    WINDOWS.c.starts_at,
    WINDOWS.c.ends_at,
    WINDOWS.c.reason,
    WINDOWS.c.created_at,
)


async def create(
    session: AsyncSession,
    customer_id: str | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str | None,
    now: datetime,
) -> Window:
    row = (
        await session.execute(
            insert(WINDOWS)
            .values(
                customer_id=customer_id,
                starts_at=starts_at,
                ends_at=ends_at,
                reason=reason,
                created_at=now,
            )
            .returning(*_COLUMNS)
        )
    ).one()
    return Window(*row)


async def list_windows(
    session: AsyncSession,
    customer_ids: Sequence[str] | None,
    *,
    ending_after: datetime | None = None,
) -> list[Window]:
    """Windows of these customers and of every customer (None: all windows), newest
    start first; with `ending_after`, only those that end after it."""
    stmt = select(*_COLUMNS).order_by(WINDOWS.c.starts_at.desc(), WINDOWS.c.id.desc())
    if customer_ids is not None:
        stmt = stmt.where(
            or_(WINDOWS.c.customer_id.is_(None), WINDOWS.c.customer_id.in_(list(customer_ids)))
        )
    if ending_after is not None:
        stmt = stmt.where(WINDOWS.c.ends_at > ending_after)
    return [Window(*row) for row in (await session.execute(stmt)).all()]


async def get(session: AsyncSession, window_id: int) -> Window | None:
    row = (await session.execute(select(*_COLUMNS).where(WINDOWS.c.id == window_id))).first()
    return Window(*row) if row is not None else None


async def remove(session: AsyncSession, window_id: int) -> None:
    await session.execute(delete(WINDOWS).where(WINDOWS.c.id == window_id))


# -- maintenance windows: the one question of muting ----------------------------------------


def in_maintenance(dialect: str, customer_id: str, at: datetime) -> Plan[bool]:
    """Whether a maintenance window covers the customer (or every customer) at `at`: then
    no alert opens or escalates, and nothing of it goes to webhooks or tickets."""
    stamp = to_driver(dialect, at)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT 1 FROM maintenance_windows WHERE starts_at <= ? AND ends_at > ? "
            "AND (customer_id IS NULL OR customer_id = ?) LIMIT 1",
        ),
        (stamp, stamp, customer_id),
    )
    return bool(rows)


def release_ended(dialect: str, at: datetime) -> Plan[list[str | None]]:
    """Windows that ended and were not judged after: marked so, and their customers given
    (None: every customer), so the sweep opens what they held back."""
    stamp = to_driver(dialect, at)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "UPDATE maintenance_windows SET released_at = ? "
            "WHERE ends_at <= ? AND released_at IS NULL RETURNING customer_id",
        ),
        (stamp, stamp),
    )
    return sorted({r[0] for r in rows}, key=lambda c: (c is not None, c or ""))
