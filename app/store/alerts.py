"""Alerts' rows: written as a merge or sweep judges them (`write_alerts`, called by
`app.store.telling`), listed and counted for the API, snoozed.

An alert is shown the same way by the API and the events that tell of it (`alert_out`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.alert_rules import AlertState, Transition
from app.clock import iso
from app.store.outbox import PSA_PREFIX
from app.store.plans import Plan, from_driver, sql, to_driver
from app.store.tables import Alert

ALERTS = cast(Table, Alert.__table__)


def alert_out(alert: AlertState) -> dict[str, Any]:
    """An alert as the API and events show it."""
    return {
        "alert_key": alert.alert_key,
        "customer_id": alert.customer_id,
        "job_type": alert.job_type,
        "module": alert.module,
        "state": alert.state,
        "reason": alert.reason,
        "severity": alert.severity,
        "snoozed_until": iso(alert.snoozed_until),
        "snooze_reason": alert.snooze_reason,
        "opened_at": iso(alert.opened_at),
        "resolved_at": iso(alert.resolved_at),
        "first_failure_at": iso(alert.first_failure_at),
        "last_failure_at": iso(alert.last_failure_at),
        "consecutive_failures": alert.consecutive_failures,
        "last_success_at": iso(alert.last_success_at),
        "last_job_id": alert.last_job_id,
    }


_ALERT_COLUMNS = (
    "id",
    "alert_key",
    "customer_id",
    "job_type",
    "module",
    "state",
    "reason",
    "severity",
    "opened_at",
    "resolved_at",
    "first_failure_at",
    "last_failure_at",
    "consecutive_failures",
    "last_success_at",
    "last_job_id",
    "snoozed_until",
    "snooze_reason",
)
_ALERT_TIMES = frozenset(
    {
        "opened_at",
        "resolved_at",
        "first_failure_at",
        "last_failure_at",
        "last_success_at",
        "snoozed_until",
    }
)
ALERT_SELECT = f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alerts"  # noqa: S608


def alert_from_row(row: Sequence[Any]) -> AlertState:
    values = dict(zip(_ALERT_COLUMNS, row, strict=True))
    for name in _ALERT_TIMES:
        values[name] = from_driver(values[name])
    return AlertState(**values)


# -- written in the transaction of a merge or sweep --------------------------------------


_ALERT_INSERT = (
    "INSERT INTO alerts (state, reason, severity, resolved_at, first_failure_at, "
    "last_failure_at, consecutive_failures, last_success_at, last_job_id, "
    "updated_at, alert_key, customer_id, job_type, module, opened_at) VALUES "
)
_ALERT_UPDATE = (
    "UPDATE alerts SET state = ?, reason = ?, severity = ?, resolved_at = ?, "
    "first_failure_at = ?, last_failure_at = ?, consecutive_failures = ?, "
    "last_success_at = ?, last_job_id = ?, updated_at = ? WHERE id = ?"
)


def write_alerts(
    dialect: str, transitions: Sequence[Transition], at: datetime
) -> Plan[list[Transition]]:
    """Write the alerts `transitions` moved, whatever their number, in at most two
    statements (a merge judges many keys at once): the updates as one executemany, first,
    so that a resolved alert is closed before anything new of its key; then the new alerts
    as one multi-row insert, whose ids come back by key (one transition per key)."""
    updates = [
        (*_alert_values(dialect, t.alert, at), t.alert.id)
        for t in transitions
        if t.alert.id is not None
    ]
    if updates:
        yield ("many", sql(dialect, _ALERT_UPDATE), updates)
    new = [t.alert for t in transitions if t.alert.id is None]
    ids: dict[str, int] = {}
    size = 1_000  # 15 parameters a row: within both drivers' limits
    for start in range(0, len(new), size):
        part = new[start : start + size]
        stamp = functools.partial(to_driver, dialect)
        params = [
            value
            for a in part
            for value in (
                *_alert_values(dialect, a, at),
                a.alert_key,
                a.customer_id,
                a.job_type,
                a.module,
                stamp(a.opened_at),
            )
        ]
        marks = ", ".join(["(" + ", ".join("?" * 15) + ")"] * len(part))
        rows = yield (
            "fetch",
            sql(dialect, f"{_ALERT_INSERT}{marks} RETURNING id, alert_key"),
            tuple(params),
        )
        ids.update((key, int(alert_id)) for alert_id, key in rows)
    return [
        t
        if t.alert.id is not None
        else Transition(
            t.change,
            AlertState(**{**_fields(t.alert), "id": ids[t.alert.alert_key]}),
            t.job,
            t.previous_severity,
        )
        for t in transitions
    ]


def _alert_values(dialect: str, alert: AlertState, at: datetime) -> tuple[Any, ...]:
    t = functools.partial(to_driver, dialect)
    return (
        alert.state,
        alert.reason,
        alert.severity,
        t(alert.resolved_at),
        t(alert.first_failure_at),
        t(alert.last_failure_at),
        alert.consecutive_failures,
        t(alert.last_success_at),
        alert.last_job_id,
        t(at),
    )


def _fields(alert: AlertState) -> dict[str, Any]:
    return {name: getattr(alert, name) for name in AlertState.__dataclass_fields__}


# -- read and snoozed through the API ----------------------------------------------------


def _alert_of(row: Any) -> AlertState:
    return AlertState(**{name: getattr(row, name) for name in _ALERT_COLUMNS})


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """The filters and page of `GET /alerts` (hashable: it keys cached answers)."""

    state: str | None = None
    customer_ids: tuple[str, ...] | None = None
    job_types: tuple[str, ...] | None = None
    modules: tuple[str, ...] | None = None
    severities: tuple[str, ...] | None = None
    before: int | None = None  # the cursor: alerts with a lower id
    limit: int = 100


async def list_alerts(session: AsyncSession, q: AlertQuery) -> list[AlertState]:
    """Alerts, newest first; up to `q.limit + 1` (one more means a next page)."""
    a = ALERTS
    stmt = select(*(a.c[name] for name in _ALERT_COLUMNS)).order_by(a.c.id.desc())
    if q.state is not None:
        stmt = stmt.where(a.c.state == q.state)
    if q.customer_ids is not None:
        stmt = stmt.where(a.c.customer_id.in_(q.customer_ids))
    if q.job_types is not None:
        stmt = stmt.where(a.c.job_type.in_(q.job_types))
    if q.modules is not None:
        stmt = stmt.where(a.c.module.in_(q.modules))
    if q.severities is not None:
        stmt = stmt.where(a.c.severity.in_(q.severities))
    if q.before is not None:
        stmt = stmt.where(a.c.id < q.before)
    rows = await session.execute(stmt.limit(q.limit + 1))
    return [_alert_of(row) for row in rows.all()]


async def open_alert_counts(session: AsyncSession, now: datetime) -> dict[str, dict[str, int]]:
    """Open alerts that are not snoozed, per customer and severity."""
    a = ALERTS
    awake = or_(a.c.snoozed_until.is_(None), a.c.snoozed_until <= now)
    rows = await session.execute(
        select(a.c.customer_id, a.c.severity, func.count())
        .where(a.c.state == "open", awake)
        .group_by(a.c.customer_id, a.c.severity)
    )
    out: dict[str, dict[str, int]] = {}
    for customer_id, severity, count in rows.all():
        out.setdefault(customer_id, {})[severity] = int(count)
    return out


def snooze(
    dialect: str, key: str, until: datetime, reason: str | None, now: datetime
) -> Plan[AlertState | None]:
    """Snooze the key's open alert (a past `until` lifts it); None when none is open."""
    t = functools.partial(to_driver, dialect)
    lifted = until <= now
    yield (
        "exec",
        sql(
            dialect,
            "UPDATE alerts SET snoozed_until = ?, snooze_reason = ?, updated_at = ? "
            "WHERE alert_key = ? AND state = 'open'",
        ),
        (None if lifted else t(until), None if lifted else reason, t(now), key),
    )
    # Ticket work waiting out the old snooze is due now: the desk judges the new one (and
    # opens the ticket at once when the snooze was lifted).
    yield (
        "exec",
        sql(
            dialect,
            "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE alert_key = ? "
            "AND state = 'pending' AND url LIKE ? AND next_attempt_at > ?",
        ),
        (t(now), key, PSA_PREFIX + "%", t(now)),
    )
    rows = yield (
        "fetch",
        sql(dialect, f"{ALERT_SELECT} WHERE alert_key = ? AND state = 'open'"),
        (key,),
    )
    return alert_from_row(rows[0]) if rows else None
