"""Snapshots: one row per refresh attempt of one customer (how current it is, what failed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from app.store.plans import Plan, driver_value, execute

Outcome = Literal["success", "error"]


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One refresh attempt of one customer."""

    customer_id: str
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    pages: int = 0
    jobs_seen: int = 0
    rows_skipped: int = 0
    error_kind: str | None = None
    error_message: str | None = None
    upstream_status: int | None = None
    request_id: str | None = None


def snapshot_values(snapshot: SnapshotRecord) -> dict[str, Any]:
    return {
        "customer_id": snapshot.customer_id,
        "started_at": snapshot.started_at,
        "finished_at": snapshot.finished_at,
        "outcome": snapshot.outcome,
        "pages": snapshot.pages,
        "jobs_seen": snapshot.jobs_seen,
        "rows_skipped": snapshot.rows_skipped,
        "error_kind": snapshot.error_kind,
        "error_message": snapshot.error_message,
        "upstream_status": snapshot.upstream_status,
        "request_id": snapshot.request_id,
    }


def record_snapshot(dialect: str, snapshot: SnapshotRecord) -> Plan[None]:
    values = snapshot_values(snapshot)
    values["started_at"] = driver_value(dialect, snapshot.started_at)
    values["finished_at"] = driver_value(dialect, snapshot.finished_at)
    yield from execute(
        dialect,
        f"INSERT INTO snapshots ({', '.join(values)}) "  # noqa: S608 - our own column names
        f"VALUES ({', '.join('?' * len(values))})",
        tuple(values.values()),
    )
