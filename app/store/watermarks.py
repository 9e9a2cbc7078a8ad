"""How far the store has moved: the newest snapshot, event, alert change, expectation set
and maintenance window made or deleted, so that a process can tell what other processes on
the database wrote (`app.refresh.replicas` looks every half second), and the NOTIFY that
tells them at once on PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "jobs_gateway"
"""The PostgreSQL channel the processes of one database LISTEN and NOTIFY on."""


@dataclass(frozen=True, slots=True)
class Watermarks:
    snapshots: int  # the newest snapshot id (0: none)
    events: int  # the newest event id (0: none)
    alerts: datetime | None  # the newest change of an alert
    # What answers are judged by and no event tells: the newest expectation set, and the
    # maintenance windows (how many and the newest: a deletion lowers the one, a new window
    # moves the other).
    settings: tuple[datetime | None, int, int]


async def newest(session: AsyncSession) -> Watermarks:
    row = (
        await session.execute(
            text(
                "SELECT (SELECT COALESCE(MAX(id), 0) FROM snapshots), "
                "(SELECT COALESCE(MAX(id), 0) FROM events), "
                "(SELECT MAX(updated_at) FROM alerts), "
                "(SELECT MAX(updated_at) FROM object_expectations), "
                "(SELECT COUNT(*) FROM maintenance_windows), "
                "(SELECT COALESCE(MAX(id), 0) FROM maintenance_windows)"
            )
        )
    ).one()
    return Watermarks(int(row[0]), int(row[1]), row[2], (row[3], int(row[4]), int(row[5])))


async def customers_stored_after(session: AsyncSession, snapshot_id: int) -> set[str]:
    """The customers with a snapshot newer than `snapshot_id`."""
    moved = await session.execute(
        text("SELECT DISTINCT customer_id FROM snapshots WHERE id > :after"),
        {"after": snapshot_id},
    )
    return {r[0] for r in moved.all()}


async def notify(connection: Any, payload: str) -> None:
    """NOTIFY the other processes on `connection` (an asyncpg connection)."""
    await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
