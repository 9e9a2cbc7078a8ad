"""The webhook outbox as its senders use it: claiming the deliveries that are due, recording
what each attempt gave, and failing the deliveries of receivers that are gone; and as the
API lists and retries them (`GET /webhooks/deliveries`).

`app.store.telling.tell` writes the deliveries, in the transaction of their events. What to do
with an answer (retry when, fail when) is `app.alerts.webhooks`'s to decide: the steps here only
write it down. They are plans (`app.store.plans.Plan`), run by `Writer.run_plan`.

A receiver is its URL exactly as `WEBHOOK_URLS` gives it: two receivers may share an origin
and differ by their path, so nothing here compares less than the whole URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.events import EVENTS, event_json
from app.store.plans import Plan, from_driver, sql, to_driver
from app.store.tables import WebhookDelivery

DELIVERIES = cast(Table, WebhookDelivery.__table__)

PSA_PREFIX = "psa:"
"""The outbox's PSA receivers (`app.store.tickets.PSA_RECEIVER`) start so; they are no
webhooks, and the webhook listing, retry and backlog leave them out."""

RECEIVER_REMOVED = "receiver_removed"
"""The last error of a delivery whose receiver left `WEBHOOK_URLS`."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A due delivery, leased to the sender that claimed it, with its event's JSON."""

    id: int
    event_id: int
    attempts: int
    deadline_at: datetime
    body: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to store of one attempt: its new state, when it is next due, what was answered."""

    delivery_id: int
    state: str  # pending (retried at next_attempt_at), delivered or failed
    attempts: int
    next_attempt_at: datetime
    status: int | None
    error: str | None


def claim(
    dialect: str, url: str, now: datetime, limit: int, lease: timedelta
) -> Plan[list[Claimed]]:
    """The due deliveries of `url`, the oldest pending one per key, leased to the caller."""
    stamp = to_driver(dialect, now)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT d.id, d.event_id, d.attempts, d.deadline_at, e.type, e.at, e.customer_id, "
            "e.job_id, e.alert_key, e.data "
            "FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.url = ? AND d.state = 'pending' AND d.next_attempt_at <= ? "
            "AND (d.lease_until IS NULL OR d.lease_until < ?) "
            "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.url = d.url "
            "AND p.state = 'pending' AND p.alert_key = d.alert_key AND p.id < d.id) "
            "ORDER BY d.id LIMIT ?",
        ),
        (url, stamp, stamp, limit),
    )
    until = to_driver(dialect, now + lease)
    claimed = []
    for delivery_id, event_id, attempts, deadline, *event in rows:
        taken = yield (
            "exec",
            sql(
                dialect,
                "UPDATE webhook_deliveries SET lease_until = ? WHERE id = ? "
                "AND state = 'pending' AND (lease_until IS NULL OR lease_until < ?)",
            ),
            (until, delivery_id, stamp),
        )
        if taken == 1:  # another process may have claimed it in between
            deadline_at = from_driver(deadline)
            assert deadline_at is not None
            claimed.append(
                Claimed(delivery_id, event_id, attempts, deadline_at, event_json(event_id, *event))
            )
    return claimed


def record(dialect: str, outcomes: Sequence[Outcome], now: datetime) -> Plan[None]:
    """Each attempt's outcome, and the end of its lease."""
    stamp = to_driver(dialect, now)
    for o in outcomes:
        delivered = o.state == "delivered"
        yield (
            "exec",
            sql(
                dialect,
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
                "lease_until = NULL, last_attempt_at = ?, last_status = ?, last_error = ?, "
                "delivered_at = ? WHERE id = ?",
            ),
            (
                o.state,
                o.attempts,
                to_driver(dialect, o.next_attempt_at),
                stamp,
                o.status,
                o.error,
                stamp if delivered else None,
                o.delivery_id,
            ),
        )


def fail_removed_receivers(
    dialect: str, receivers: Sequence[str], now: datetime
) -> Plan[dict[str, int]]:
    """Fail every pending delivery whose receiver is not one of `receivers` (whole URLs),
    with the last error `receiver_removed`: no sender will ever claim them. Gives the number
    failed per removed receiver's URL."""
    kept = list(dict.fromkeys(receivers))
    # Built from `?` marks only: the URLs travel as parameters.
    other = f" AND url NOT IN ({', '.join('?' * len(kept))})" if kept else ""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = ?, "  # noqa: S608
            f"lease_until = NULL, last_error = ? WHERE state = 'pending'{other} RETURNING url",
        ),
        (to_driver(dialect, now), RECEIVER_REMOVED, *kept),
    )
    failed: dict[str, int] = {}
    for (url,) in rows:
        failed[url] = failed.get(url, 0) + 1
    return failed


# -- listed and retried through the API --------------------------------------------------

_WEBHOOKS_ONLY = ~DELIVERIES.c.url.startswith(PSA_PREFIX)

_DELIVERY_COLUMNS = (
    "id",
    "event_id",
    "url",
    "alert_key",
    "customer_id",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "deadline_at",
    "last_attempt_at",
    "last_status",
    "last_error",
    "delivered_at",
)


def _webhook_deliveries() -> Select[Any]:
    """Webhook deliveries (not ticket work) with their event's type."""
    d, e = DELIVERIES, EVENTS
    return (
        select(*(d.c[name] for name in _DELIVERY_COLUMNS), e.c.type.label("event_type"))
        .join_from(d, e, e.c.id == d.c.event_id)
        .where(_WEBHOOKS_ONLY)
    )


async def list_deliveries(
    session: AsyncSession,
    *,
    state: str | None,
    customer_ids: Sequence[str] | None,
    before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Deliveries, newest first, below id `before`; up to `limit + 1`, with the event type."""
    d = DELIVERIES
    stmt = _webhook_deliveries().order_by(d.c.id.desc())
    if state is not None:
        stmt = stmt.where(d.c.state == state)
    if customer_ids is not None:
        stmt = stmt.where(d.c.customer_id.in_(list(customer_ids)))
    if before is not None:
        stmt = stmt.where(d.c.id < before)
    rows = await session.execute(stmt.limit(limit + 1))
    return [dict(row._mapping) for row in rows.all()]


async def get_delivery(session: AsyncSession, delivery_id: int) -> dict[str, Any] | None:
    stmt = _webhook_deliveries().where(DELIVERIES.c.id == delivery_id)
    row = (await session.execute(stmt)).first()
    return dict(row._mapping) if row is not None else None


def retry_delivery(
    dialect: str, delivery_id: int, now: datetime, window: timedelta
) -> Plan[str | None]:
    """Make a failed or delivered delivery pending again, due now, with a new deadline.
    Gives its state before (None: no such delivery)."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT state FROM webhook_deliveries WHERE id = ? AND url NOT LIKE ?",
        ),
        (delivery_id, PSA_PREFIX + "%"),
    )
    if not rows:
        return None
    state: str = rows[0][0]
    if state != "pending":
        yield (
            "exec",
            sql(
                dialect,
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ?, "
                "deadline_at = ?, lease_until = NULL, delivered_at = NULL WHERE id = ?",
            ),
            (to_driver(dialect, now), to_driver(dialect, now + window), delivery_id),
        )
    return state


async def pending_deliveries(session: AsyncSession) -> int:
    d = DELIVERIES
    count = await session.scalar(
        select(func.count()).select_from(d).where(d.c.state == "pending", _WEBHOOKS_ONLY)
    )
    return int(count or 0)
