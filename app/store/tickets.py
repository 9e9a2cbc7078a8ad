"""PSA tickets as the store keeps them: which company each customer's tickets go to
(`psa_companies`), one row per alert that reached the PSA (`tickets`), and the storm guard's
count of new tickets in the last hour, shared by every process on the database.

The ticket work itself is a delivery of the outbox (`webhook_deliveries`, to the receiver
`PSA_RECEIVER`), written by `app.store.telling.tell` with the alert's events and claimed and
recorded by `app.store.outbox`, as webhooks are. What to do with each is
`app.integrations.tickets`'s to decide; the steps here only read and write it down. They are
plans (`app.store.plans.Plan`), run by `Writer.run_plan` or, for reads, `read`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.alert_rules import AlertState
from app.store.alerts import ALERT_SELECT, alert_from_row
from app.store.outbox import PSA_PREFIX
from app.store.plans import Plan, T, from_driver, run_async, sql
from app.store.plans import to_driver as _t

PSA_RECEIVER = f"{PSA_PREFIX}tickets"
"""The outbox's receiver of ticket work: not a URL, so no webhook sender ever claims it."""
STATES = ("open", "closed", "held", "failed", "unmapped")
STORM_WINDOW = timedelta(hours=1)
STORM_LOCK = 0x7469636B  # 'tick': serializes the storm guard's count on PostgreSQL


async def read(session: AsyncSession, plan: Plan[T]) -> T:
    """Run a reading plan on a session's connection."""
    return await run_async(await session.connection(), plan)


# -- the mapping -------------------------------------------------------------------------------


def map_company(dialect: str, customer_id: str, company_id: str, now: datetime) -> Plan[None]:
    yield (
        "exec",
        sql(
            dialect,
            "INSERT INTO psa_companies (customer_id, company_id, mapped_at) VALUES (?, ?, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET company_id = excluded.company_id, "
            "mapped_at = excluded.mapped_at",
        ),
        (customer_id, company_id, _t(dialect, now)),
    )


def unmap_company(dialect: str, customer_id: str) -> Plan[bool]:
    count = yield (
        "exec",
        sql(dialect, "DELETE FROM psa_companies WHERE customer_id = ?"),
        (customer_id,),
    )
    return bool(count)


def mappings(dialect: str) -> Plan[list[tuple[str, str, datetime]]]:
    rows = yield (
        "fetch",
        "SELECT customer_id, company_id, mapped_at FROM psa_companies ORDER BY customer_id",
        (),
    )
    out = []
    for customer_id, company_id, at in rows:
        moment = from_driver(at)
        assert moment is not None
        out.append((customer_id, company_id, moment))
    return out


def company_of(dialect: str, customer_id: str) -> Plan[str | None]:
    rows = yield (
        "fetch",
        sql(dialect, "SELECT company_id FROM psa_companies WHERE customer_id = ?"),
        (customer_id,),
    )
    return str(rows[0][0]) if rows else None


# -- alerts and their tickets ------------------------------------------------------------------


def alert_of(dialect: str, alert_key: str, opened_at: datetime | None) -> Plan[AlertState | None]:
    """The alert of `alert_key` opened at `opened_at` (to the second, as events tell it), or
    its newest when that is None."""
    if opened_at is not None:
        start = opened_at.replace(microsecond=0)
        rows = yield (
            "fetch",
            sql(
                dialect,
                f"{ALERT_SELECT} WHERE alert_key = ? AND opened_at >= ? AND opened_at < ? "
                "ORDER BY id DESC LIMIT 1",
            ),
            (alert_key, _t(dialect, start), _t(dialect, start + timedelta(seconds=1))),
        )
    else:
        rows = yield (
            "fetch",
            sql(dialect, f"{ALERT_SELECT} WHERE alert_key = ? ORDER BY id DESC LIMIT 1"),
            (alert_key,),
        )
    return alert_from_row(rows[0]) if rows else None


@dataclass(frozen=True, slots=True)
class TicketRow:
    """One alert's ticket, or why it has none (yet)."""

    alert_id: int
    alert_key: str
    customer_id: str
    company_id: str | None
    ticket_id: str | None
    state: str
    reserved_at: datetime | None = None
    create_sent_at: datetime | None = None
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    last_error: str | None = None
    id: int | None = None

    def but(self, **changes: Any) -> TicketRow:
        return replace(self, **changes)


_COLUMNS = (
    "alert_id",
    "alert_key",
    "customer_id",
    "company_id",
    "ticket_id",
    "state",
    "reserved_at",
    "create_sent_at",
    "opened_at",
    "closed_at",
    "last_error",
    "id",
)
_TIMES = frozenset({"reserved_at", "create_sent_at", "opened_at", "closed_at"})
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM tickets"  # noqa: S608


def _row(values: Sequence[Any]) -> TicketRow:
    fields = dict(zip(_COLUMNS, values, strict=True))
    for name in _TIMES:
        fields[name] = from_driver(fields[name])
    return TicketRow(**fields)


def ticket_of(dialect: str, alert_id: int) -> Plan[TicketRow | None]:
    rows = yield ("fetch", sql(dialect, f"{_SELECT} WHERE alert_id = ?"), (alert_id,))
    return _row(rows[0]) if rows else None


def save(dialect: str, row: TicketRow, now: datetime) -> Plan[None]:
    """Write `row` (by its alert), everything but the storm guard's slot (`reserve`)."""
    t = _t
    yield (
        "exec",
        sql(
            dialect,
            "INSERT INTO tickets (alert_id, alert_key, customer_id, company_id, ticket_id, "
            "state, create_sent_at, opened_at, closed_at, last_error, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET "
            "company_id = excluded.company_id, ticket_id = excluded.ticket_id, "
            "state = excluded.state, create_sent_at = excluded.create_sent_at, "
            "opened_at = excluded.opened_at, closed_at = excluded.closed_at, "
            "last_error = excluded.last_error, updated_at = excluded.updated_at",
        ),
        (
            row.alert_id,
            row.alert_key,
            row.customer_id,
            row.company_id,
            row.ticket_id,
            row.state,
            t(dialect, row.create_sent_at),
            t(dialect, row.opened_at),
            t(dialect, row.closed_at),
            row.last_error,
            t(dialect, now),
            t(dialect, now),
        ),
    )


def forget(dialect: str, alert_id: int) -> Plan[None]:
    """Drop a ticket that never opened (its alert resolved while it was held)."""
    yield (
        "exec",
        sql(dialect, "DELETE FROM tickets WHERE alert_id = ? AND ticket_id IS NULL"),
        (alert_id,),
    )


@dataclass(frozen=True, slots=True)
class Slot:
    """The storm guard's answer: a slot for a new ticket, or when one frees up."""

    granted: bool
    free_at: datetime | None = None


def reserve(dialect: str, alert_id: int, now: datetime, per_hour: int) -> Plan[Slot]:
    """Take one of the hour's `per_hour` new-ticket slots for `alert_id`'s ticket (its row
    must exist). Counted over every process: on PostgreSQL under a transaction advisory lock,
    on SQLite under the one writer."""
    if dialect == "postgresql":
        yield ("fetch", "SELECT pg_advisory_xact_lock($1)", (STORM_LOCK,))
    rows = yield (
        "fetch",
        sql(dialect, "SELECT reserved_at FROM tickets WHERE alert_id = ?"),
        (alert_id,),
    )
    if rows and rows[0][0] is not None:
        return Slot(True)  # taken before (a retry, or `psa release`)
    since = _t(dialect, now - STORM_WINDOW)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT COUNT(*), MIN(reserved_at) FROM tickets WHERE reserved_at > ?",
        ),
        (since,),
    )
    count, oldest = int(rows[0][0]), from_driver(rows[0][1])
    if count >= per_hour:
        assert oldest is not None
        return Slot(False, oldest + STORM_WINDOW)
    yield (
        "exec",
        sql(dialect, "UPDATE tickets SET reserved_at = ? WHERE alert_id = ?"),
        (_t(dialect, now), alert_id),
    )
    return Slot(True)


def release(dialect: str, customer_id: str | None, now: datetime) -> Plan[int]:
    """Let held tickets open now, past the storm guard (they count against this hour):
    their slot is taken and their ticket work is due at once. Gives how many."""
    where = "state = 'held'" + (" AND customer_id = ?" if customer_id else "")
    args: tuple[Any, ...] = (customer_id,) if customer_id else ()
    keys = yield ("fetch", sql(dialect, f"SELECT alert_key FROM tickets WHERE {where}"), args)  # noqa: S608
    yield (
        "exec",
        sql(dialect, f"UPDATE tickets SET reserved_at = ? WHERE {where}"),  # noqa: S608
        (_t(dialect, now), *args),
    )
    for (key,) in keys:
        yield (
            "exec",
            sql(
                dialect,
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE url = ? "
                "AND alert_key = ? AND state = 'pending'",
            ),
            (_t(dialect, now), PSA_RECEIVER, key),
        )
    return len(keys)


def count_held(dialect: str) -> Plan[int]:
    rows = yield ("fetch", "SELECT COUNT(*) FROM tickets WHERE state = 'held'", ())
    return int(rows[0][0])


def list_tickets(
    dialect: str,
    state: str | None,
    customer_ids: Sequence[str] | None,
    before: int | None,
    limit: int,
) -> Plan[list[TicketRow]]:
    """Tickets newest first, one more than `limit` (to tell a next page)."""
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if customer_ids is not None:
        if not customer_ids:
            return []
        where.append(f"customer_id IN ({', '.join('?' * len(customer_ids))})")
        args.extend(customer_ids)
    if before is not None:
        where.append("id < ?")
        args.append(before)
    rows = yield (
        "fetch",
        sql(dialect, f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"),
        (*args, limit + 1),
    )
    return [_row(r) for r in rows]


def open_alerts_tickets(dialect: str, customer_ids: Sequence[str] | None) -> Plan[list[TicketRow]]:
    """The tickets of the open alerts of these customers (None: all), in one query: what
    the board shows beside each open alert."""
    where = "a.id = t.alert_id AND a.state = 'open'"
    args: list[Any] = []
    if customer_ids is not None:
        if not customer_ids:
            return []
        where += f" AND t.customer_id IN ({', '.join('?' * len(customer_ids))})"
        args.extend(customer_ids)
    columns = ", ".join(f"t.{c}" for c in _COLUMNS)
    rows = yield (
        "fetch",
        sql(
            dialect,
            # CROSS JOIN: SQLite then walks the (few) tickets, not every open alert.
            f"SELECT {columns} FROM tickets t CROSS JOIN alerts a WHERE {where}",  # noqa: S608
        ),
        tuple(args),
    )
    return [_row(r) for r in rows]
