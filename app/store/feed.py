"""The change feed, alerts and the webhook outbox, written inside the transactions of the
changes they tell.

A refresh's merge (`app.store.ingest`) calls, in its one transaction:

1. `lock_customer`: the customer's row, locked on PostgreSQL (`FOR UPDATE`) so two merges
   of one customer take turns, and its `data_version`. A merge whose version moved since
   its walk read the store re-reads the stored state (`read_known`) and tells only what
   differs from it: two racing refreshes, or two processes, never tell one change twice.
2. the jobs and their history;
3. `tell`: `job.created` and `job.status_changed` events for the changes, the alerts of
   every key a change touched (`app.alerts`), their events, and one webhook delivery per
   event and receiver for the types `WEBHOOK_EVENTS` names, unless the alert is snoozed.

A refresh that changed nothing, or failed, calls none of this, so it tells nothing.

Event ids are handed out in commit order: on PostgreSQL a transaction takes a transaction
advisory lock just before it writes events and holds it until it commits; SQLite has one
writer. A reader that has seen id N never later finds an id below N appear, so replaying
from any cursor gives the same events in the same order. Retention purges old events and
notes the highest id it purged (`feed_horizon`); `read_feed` refuses a cursor below it
(`CursorExpired`), so a client that fell that far behind is told, never silently skipped.

The steps are written once, as generators of SQL statements (`Plan`), and run either on the
SQLite writer's own `sqlite3` connection (`run_sync`) or on a SQLAlchemy connection
(`run_async`); both take the SQLite/asyncpg driver's own SQL and parameters.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import Select, Table, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import alert_rules as rules_
from app import expectations
from app.alert_rules import AlertState, KeyJob, Rules, Transition
from app.clock import iso
from app.expectations import NO_SETTING, Assessment, Result, Setting
from app.store.tables import Alert, Event, FeedHorizon, WebhookDelivery

T = TypeVar("T")

StepKind = Literal["fetch", "exec", "many"]
Step = tuple[StepKind, str, Any]
Plan = Generator[Step, Any, T]
"""SQL statements to run, one at a time; what each gives back is sent into the plan:
`fetch` -> the rows, `exec` -> the row count, `many` -> None."""

EVENTS_LOCK = 0x6A6F6273  # 'jobs': the advisory lock that orders event ids on PostgreSQL

DELIVERY_WINDOW = timedelta(hours=24)
"""How long a webhook delivery is retried before it is marked failed."""


@dataclass(frozen=True)
class FeedConfig:
    """What the feed needs of the settings."""

    rules: Rules
    webhook_urls: tuple[str, ...] = ()
    webhook_events: frozenset[str] = frozenset()
    delivery_window: timedelta = DELIVERY_WINDOW
    # The outbox's receiver of PSA ticket work (`app.store.tickets.PSA_RECEIVER`); None: off.
    psa_receiver: str | None = None
    zone: tzinfo = UTC  # TIMEZONE: the weekdays of learned schedules

    @classmethod
    def default(cls) -> FeedConfig:
        from app.config import DEFAULT_ALERT_STATUSES

        return cls(Rules(frozenset(DEFAULT_ALERT_STATUSES)))


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job first seen, or whose status changed, with what an event tells of it."""

    job_id: str
    created: bool
    previous: str | None  # status name before; None when created
    status: str
    job_type: str
    module: str
    name: str | None
    start_time: datetime | None


@dataclass
class Told:
    """What `tell` wrote."""

    events: int = 0
    deliveries: int = 0
    alerts: list[Transition] = field(default_factory=list)


# -- running plans ------------------------------------------------------------------------


@functools.cache
def sql(dialect: str, text: str) -> str:
    """`text` with `?` marks, in the driver's own paramstyle."""
    if dialect == "sqlite":
        return text
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", text)


def run_sync(conn: Any, plan: Plan[T]) -> T:
    """Run `plan` on a `sqlite3` connection (inside the caller's transaction)."""
    try:
        step = next(plan)
        while True:
            kind, statement, params = step
            if kind == "fetch":
                result: Any = conn.execute(statement, params).fetchall()
            elif kind == "exec":
                result = conn.execute(statement, params).rowcount
            else:
                if params:
                    conn.executemany(statement, params)
                result = None
            step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def run_async(conn: AsyncConnection, plan: Plan[T]) -> T:
    """Run `plan` on a SQLAlchemy connection (inside the caller's transaction)."""
    try:
        step = next(plan)
        while True:
            kind, statement, params = step
            if kind == "fetch":
                result: Any = (await conn.exec_driver_sql(statement, params)).fetchall()
            elif kind == "exec":
                result = (await conn.exec_driver_sql(statement, params)).rowcount
            else:
                if params:
                    await conn.exec_driver_sql(statement, list(params))
                result = None
            step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


# -- values as the drivers take and give them ------------------------------------------------


def to_driver(dialect: str, value: datetime | None) -> Any:
    """A time for the driver: naive UTC text on SQLite (as SQLAlchemy stores it), aware on
    PostgreSQL."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    if dialect == "sqlite":
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def from_driver(value: Any) -> datetime | None:
    """A time as a driver gives it back: text (SQLite) or a datetime, naive meaning UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    moment: datetime = value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def encode(value: Any) -> str:
    return _JSON.encode(value)


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


# -- the customer's lock and version ---------------------------------------------------------


def lock_customer(dialect: str, customer_id: str, at: datetime) -> Plan[int]:
    """Make sure the customer has a row, lock it (PostgreSQL), and give its data version."""
    stamp = to_driver(dialect, at)
    yield (
        "exec",
        sql(
            dialect,
            "INSERT INTO customers (id, name, created_at, updated_at, job_count, data_version) "
            "VALUES (?, NULL, ?, ?, 0, 0) ON CONFLICT (id) DO NOTHING",
        ),
        (customer_id, stamp, stamp),
    )
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    rows = yield (
        "fetch",
        sql(dialect, f"SELECT data_version FROM customers WHERE id = ?{lock}"),  # noqa: S608
        (customer_id,),
    )
    return int(rows[0][0])


def read_version(dialect: str, customer_id: str) -> Plan[int]:
    rows = yield (
        "fetch",
        sql(dialect, "SELECT data_version FROM customers WHERE id = ?"),
        (customer_id,),
    )
    return int(rows[0][0]) if rows else 0


Known = dict[str, tuple[int | None, int | None, Any, Any]]
"""A customer's stored jobs: job id -> (content hash, status code, `sort_modified`,
`walk_started_at`), the times in the driver's form."""


def read_known(dialect: str, customer_id: str) -> Plan[Known]:
    """The customer's stored jobs, as a walk compares its rows with them."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT job_id, content_hash, status_code, sort_modified, walk_started_at "
            "FROM jobs WHERE customer_id = ?",
        ),
        (customer_id,),
    )
    return {
        job_id: (digest, status, modified, walk) for job_id, digest, status, modified, walk in rows
    }


def bump_version(dialect: str, customer_id: str, job_count: int | None) -> Plan[None]:
    if job_count is None:
        yield (
            "exec",
            sql(dialect, "UPDATE customers SET data_version = data_version + 1 WHERE id = ?"),
            (customer_id,),
        )
    else:
        yield (
            "exec",
            sql(
                dialect,
                "UPDATE customers SET data_version = data_version + 1, job_count = ? WHERE id = ?",
            ),
            (job_count, customer_id),
        )


def count_jobs(dialect: str, customer_id: str) -> Plan[int]:
    rows = yield (
        "fetch",
        sql(dialect, "SELECT COUNT(*) FROM jobs WHERE customer_id = ?"),
        (customer_id,),
    )
    return int(rows[0][0])


# -- telling ----------------------------------------------------------------------------------


def job_summary(change: JobChange) -> dict[str, Any]:
    return {
        "job_id": change.job_id,
        "name": change.name,
        "job_type": change.job_type,
        "module": change.module,
        "status": change.status,
        "start_time": iso(change.start_time),
    }


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


def _alert_job(job: KeyJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"job_id": job.job_id, "status": job.status, "start_time": iso(job.start)}


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


_EVENT_INSERT = "INSERT INTO events (type, at, customer_id, job_id, alert_key, data) VALUES "


def _event_row(
    dialect: str,
    type_: str,
    at: datetime,
    customer_id: str,
    job_id: str | None,
    key: str | None,
    data: dict[str, Any],
) -> tuple[Any, ...]:
    return (type_, to_driver(dialect, at), customer_id, job_id, key, encode(data))


def tell(
    dialect: str,
    customer_id: str,
    at: datetime,
    changes: Sequence[JobChange],
    config: FeedConfig,
    *,
    all_keys: bool = False,
) -> Plan[Told]:
    """Events for `changes`, the alerts of the keys they touch (every key of the customer
    with `all_keys`, as the overdue sweep asks), their events and webhook deliveries."""
    told = Told()
    events: list[tuple[Any, ...]] = []
    muted: set[str] = set()  # keys snoozed or in maintenance: their events are not sent
    for ch in changes:
        key = rules_.alert_key(customer_id, ch.job_type, ch.module)
        if ch.created:
            events.append(
                _event_row(
                    dialect, "job.created", at, customer_id, ch.job_id, key,
                    {"job": job_summary(ch)},
                )
            )  # fmt: skip
        else:
            events.append(
                _event_row(
                    dialect, "job.status_changed", at, customer_id, ch.job_id, key,
                    {"from": ch.previous, "to": ch.status, "job": job_summary(ch)},
                )
            )  # fmt: skip

    touched = {(ch.job_type, ch.module) for ch in changes}
    if touched or all_keys:
        transitions, muted, told_objects = yield from _judge_keys(
            dialect, customer_id, at, config, touched, all_keys
        )
        events.extend(told_objects)
        for t in transitions:
            a = t.alert
            if t.change is None:
                continue
            data: dict[str, Any] = {"alert": alert_out(a), "job": _alert_job(t.job)}
            if t.change == "updated":
                data["previous_severity"] = t.previous_severity
            events.append(
                _event_row(
                    dialect,
                    f"alert.{t.change}",
                    at,
                    customer_id,
                    t.job.job_id if t.job else None,
                    a.alert_key,
                    data,
                )
            )
        told.alerts = transitions
    if not events:
        return told
    told.events = len(events)
    if dialect == "postgresql":
        # Held until commit: event ids are handed out in commit order (module docstring).
        yield ("fetch", "SELECT pg_advisory_xact_lock($1)", (EVENTS_LOCK,))
    before = 0
    wanted = config.webhook_events if config.webhook_urls else frozenset()
    psa = config.psa_receiver
    if wanted or psa:
        rows = yield ("fetch", "SELECT COALESCE(MAX(id), 0) FROM events", ())
        before = int(rows[0][0])
        if dialect == "sqlite":
            # AUTOINCREMENT never goes below what it handed out, even after a purge.
            rows = yield ("fetch", "SELECT seq FROM sqlite_sequence WHERE name = 'events'", ())
            before = max(before, int(rows[0][0]) if rows else 0)
    statement = sql(dialect, _EVENT_INSERT + "(?, ?, ?, ?, ?, ?)")
    yield ("many", statement, events)
    if wanted or psa:
        rows = yield (
            "fetch",
            sql(
                dialect,
                "SELECT id, type, alert_key, job_id FROM events WHERE id > ? ORDER BY id",
            ),
            (before,),
        )
        stamp = to_driver(dialect, at)
        deadline = to_driver(dialect, at + config.delivery_window)
        deliveries = [
            (event_id, url, key, customer_id, "pending", 0, stamp, stamp, deadline)
            for event_id, type_, key, _ in rows
            # A resolution is sent even when snoozed or in maintenance: a ticket opened
            # before must still close.
            if type_ in wanted and (key not in muted or type_ == "alert.resolved")
            for url in config.webhook_urls
        ]
        if psa:
            deliveries.extend(
                (event_id, psa, key, customer_id, "pending", 0, stamp, stamp, deadline)
                for event_id, key in _ticket_work(rows, told.alerts)
            )
        if deliveries:
            yield (
                "many",
                sql(
                    dialect,
                    "INSERT INTO webhook_deliveries (event_id, url, alert_key, customer_id, "
                    "state, attempts, created_at, next_attempt_at, deadline_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ),
                deliveries,
            )
        told.deliveries = len(deliveries)
    return told


def _ticket_work(
    rows: Sequence[tuple[int, str, str | None, str | None]], transitions: Sequence[Transition]
) -> list[tuple[int, str | None]]:
    """The events (id, key) that are PSA ticket work: every alert event (snoozes are the
    desk's to judge, as a snooze that ends must open the ticket then), and each new failure
    of an open alert, which moves no severity and so has no alert event: its job's event."""
    failures = {
        (t.alert.alert_key, t.job.job_id)
        for t in transitions
        if t.change is None
        and t.alert.state == "open"
        and t.job is not None
        and t.job.status != "finished"
        and t.job.job_id == t.alert.last_job_id
    }
    return [
        (event_id, key)
        for event_id, type_, key, job_id in rows
        if type_.startswith("alert.") or (key, job_id) in failures
    ]


def _judge_keys(
    dialect: str,
    customer_id: str,
    at: datetime,
    config: FeedConfig,
    touched: set[tuple[str, str]],
    all_keys: bool,
) -> Plan[tuple[list[Transition], set[str], list[tuple[Any, ...]]]]:
    """Judge each key (its stored finished jobs and its object's expectation) against its
    open alert; write what moves. Gives the transitions, the keys of the customer's snoozed
    alerts, and the event rows of objects that turned "no result" or recovered."""
    statuses = sorted(config.rules.counted)
    marks = ", ".join("?" * len(statuses))
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT job_type, module, job_id, status, start_time FROM jobs "  # noqa: S608
            f"WHERE customer_id = ? AND status IN ({marks}) AND start_time IS NOT NULL",
        ),
        (customer_id, *statuses),
    )
    jobs = rules_.group_by_key(
        (job_type, module, job_id, status, from_driver(start))
        for job_type, module, job_id, status, start in rows
    )
    alert_rows = yield (
        "fetch",
        sql(dialect, f"{ALERT_SELECT} WHERE customer_id = ? AND state = 'open'"),
        (customer_id,),
    )
    open_alerts = {(a.job_type, a.module): a for a in map(alert_from_row, alert_rows)}
    stored = yield from stored_of(dialect, customer_id)
    told_late = {k for k, row in stored.items() if row.no_result_at is not None}
    keys = set(jobs) | set(open_alerts) | told_late if all_keys else touched
    transitions: list[Transition] = []
    told: list[tuple[Any, ...]] = []
    # The one question of muting: is the customer inside a maintenance window now?
    muted = (yield from in_maintenance(dialect, customer_id, at)) if keys else False
    for job_type, module in sorted(keys):
        row = stored.get((job_type, module), NOTHING_STORED)
        key_jobs = jobs.get((job_type, module), [])
        assessment = expectations.assess(
            (Result(j.job_id, j.status, j.start) for j in key_jobs),
            row.setting,
            config.rules.statuses,
            at,
            config.zone,
        )
        judgement = rules_.judge(
            _as_judged(key_jobs, row.setting),
            config.rules,
            at,
            expected=assessment.expected.schedule is not None,
            late=assessment.no_result_since is not None,
        )
        if row.setting.retired:  # out of alerts: an open one resolves
            judgement = replace(judgement, open=False, reason=None, severity=None)
        current = open_alerts.get((job_type, module))
        moves = rules_.transition((customer_id, job_type, module), current, judgement, at)
        transitions += rules_.held(moves, muted)
        event = yield from _tell_object(
            dialect, (customer_id, job_type, module), row, assessment, at, muted
        )
        if event is not None:
            told.append(event)
    transitions = yield from _write_alerts(dialect, transitions, at)
    quiet = {a.alert_key for a in open_alerts.values() if a.snoozed(at)}
    if muted:  # nothing of the customer goes to webhooks but resolutions (see `tell`)
        quiet |= {rules_.alert_key(customer_id, *k) for k in keys}
    return transitions, quiet, told


def _as_judged(jobs: list[KeyJob], setting: Setting) -> list[KeyJob]:
    """The key's jobs as its alert judges them: warnings are successes when the object
    treats them so."""
    if not setting.treat_warning_as_success:
        return jobs
    return [
        replace(j, status=rules_.FINISHED) if j.status == expectations.WARNING_STATUS else j
        for j in jobs
    ]


def object_event_data(obj: ObjectKey, a: Assessment) -> dict[str, Any]:
    """What `object.no_result` and `object.recovered` tell of the object."""
    cid, job_type, module = obj
    schedule = a.expected.schedule
    last = a.last_result
    return {
        "key": rules_.alert_key(*obj),
        "customer_id": cid,
        "job_type": job_type,
        "module": module,
        "state": a.state,
        "expected": {
            "every_hours": schedule.every_hours if schedule else None,
            "days": list(schedule.days) if schedule and schedule.days else None,
            "grace_hours": a.expected.grace_hours,
            "source": a.expected.source,
        },
        "last_result": (
            {"job_id": last.job_id, "status": last.status, "start_time": iso(last.start)}
            if last
            else None
        ),
        "last_success_at": iso(a.last_success_at),
        "next_result_due_at": iso(a.next_result_due_at),
    }


def _tell_object(
    dialect: str, obj: ObjectKey, row: Stored, a: Assessment, at: datetime, muted: bool
) -> Plan[tuple[Any, ...] | None]:
    """`object.no_result` when the object is late and that was not told yet (held back
    while its customer is `muted`); `object.recovered` when it was and the object is no
    longer late (a retired object recovers silently)."""
    key = rules_.alert_key(*obj)
    late = a.state == "no_result"
    if late and row.no_result_at is None and not muted:
        yield from mark_no_result(dialect, key, obj, a.no_result_since, at)
        job_id = a.last_result.job_id if a.last_result else None
        data = {"object": object_event_data(obj, a), "since": iso(a.no_result_since)}
        return _event_row(dialect, "object.no_result", at, obj[0], job_id, key, data)
    if not late and row.no_result_at is not None:
        yield from mark_no_result(dialect, key, obj, None, at)
        if a.state == "retired":
            return None
        job_id = a.last_result.job_id if a.last_result else None
        data = {"object": object_event_data(obj, a), "since": iso(row.no_result_at)}
        return _event_row(dialect, "object.recovered", at, obj[0], job_id, key, data)
    return None


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


def _write_alerts(
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


# -- the overdue sweep -------------------------------------------------------------------------


def overdue_candidates(dialect: str, cutoff: datetime) -> Plan[list[str]]:
    """Customers with a key whose last success started before `cutoff` and no open alert."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT DISTINCT j.customer_id FROM ("
            "  SELECT customer_id, job_type, module, MAX(start_time) AS last_ok FROM jobs"
            "  WHERE status = 'finished' AND start_time IS NOT NULL"
            "  GROUP BY customer_id, job_type, module"
            ") AS j WHERE j.last_ok < ? AND NOT EXISTS ("
            "  SELECT 1 FROM alerts a WHERE a.state = 'open' AND a.customer_id = j.customer_id"
            "  AND a.job_type = j.job_type AND a.module = j.module)",
        ),
        (to_driver(dialect, cutoff),),
    )
    return sorted(r[0] for r in rows)


def sweep_customer(dialect: str, customer_id: str, at: datetime, config: FeedConfig) -> Plan[Told]:
    """Judge every key of one customer at `at` (in its own transaction): overdue alerts."""
    yield from lock_customer(dialect, customer_id, at)
    told: Told = yield from tell(dialect, customer_id, at, (), config, all_keys=True)
    return told


# -- protected objects: their rows in object_expectations (see app.store.objects) ------------

ObjectKey = tuple[str, str, str]
"""(customer_id, job_type, module)"""


@dataclass(frozen=True, slots=True)
class Stored:
    """An object's row: its setting, and when its `object.no_result` was told (None: not)."""

    setting: Setting
    no_result_at: datetime | None


NOTHING_STORED = Stored(NO_SETTING, None)


def _days(text: str | None) -> tuple[str, ...] | None:
    return tuple(text.split(",")) if text else None


def stored_row(row: Sequence[Any]) -> Stored:
    every, days, grace, warning, retired, updated, told = row
    return Stored(
        Setting(
            every_hours=every,
            days=_days(days),
            grace_hours=grace,
            treat_warning_as_success=bool(warning),
            retired=bool(retired),
            updated_at=from_driver(updated),
        ),
        from_driver(told),
    )


_STORED_COLUMNS = (
    "every_hours, days, grace_hours, treat_warning_as_success, retired, updated_at, no_result_at"
)


def stored_of(dialect: str, customer_id: str) -> Plan[dict[tuple[str, str], Stored]]:
    """The customer's object rows, by (job_type, module)."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            f"SELECT job_type, module, {_STORED_COLUMNS} "  # noqa: S608
            "FROM object_expectations WHERE customer_id = ?",
        ),
        (customer_id,),
    )
    return {(r[0], r[1]): stored_row(r[2:]) for r in rows}


def upsert_object(dialect: str, key: str, obj: ObjectKey, values: dict[str, Any]) -> Plan[None]:
    names = ["alert_key", "customer_id", "job_type", "module", *values]
    updates = ", ".join(f"{n} = excluded.{n}" for n in values)
    marks = ", ".join("?" * len(names))
    defaults = {"treat_warning_as_success": False, "retired": False}
    insert_names = names + [n for n in defaults if n not in values]
    params = (key, *obj, *values.values(), *(defaults[n] for n in defaults if n not in values))
    marks = ", ".join("?" * len(insert_names))
    yield (
        "exec",
        sql(
            dialect,
            f"INSERT INTO object_expectations ({', '.join(insert_names)}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT (alert_key) DO UPDATE SET {updates}",
        ),
        params,
    )


def mark_no_result(
    dialect: str, key: str, obj: ObjectKey, at: datetime | None, now: datetime
) -> Plan[None]:
    """Note that the object's `object.no_result` was told (`at`), or that it recovered (None)."""
    if at is None:
        yield (
            "exec",
            sql(dialect, "UPDATE object_expectations SET no_result_at = NULL WHERE alert_key = ?"),
            (key,),
        )
        return
    yield from upsert_object(
        dialect,
        key,
        obj,
        {"no_result_at": to_driver(dialect, at), "updated_at": to_driver(dialect, now)},
    )


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


# -- reads and small writes of the API ---------------------------------------------------------

EVENTS = cast(Table, Event.__table__)
ALERTS = cast(Table, Alert.__table__)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
HORIZON = cast(Table, FeedHorizon.__table__)


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


PSA_PREFIX = "psa:"
"""The outbox's PSA receivers (`app.store.tickets.PSA_RECEIVER`) start so; they are no
webhooks, and the webhook listing, retry and backlog leave them out."""
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


async def list_deliveries(
    session: AsyncSession,
    *,
    state: str | None,
    customer_ids: Sequence[str] | None,
    before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Deliveries, newest first, below id `before`; up to `limit + 1`, with the event type."""
    d, e = DELIVERIES, EVENTS
    stmt = (
        select(*(d.c[name] for name in _DELIVERY_COLUMNS), e.c.type.label("event_type"))
        .join_from(d, e, e.c.id == d.c.event_id)
        .where(_WEBHOOKS_ONLY)
        .order_by(d.c.id.desc())
    )
    if state is not None:
        stmt = stmt.where(d.c.state == state)
    if customer_ids is not None:
        stmt = stmt.where(d.c.customer_id.in_(list(customer_ids)))
    if before is not None:
        stmt = stmt.where(d.c.id < before)
    rows = await session.execute(stmt.limit(limit + 1))
    return [dict(row._mapping) for row in rows.all()]


async def get_delivery(session: AsyncSession, delivery_id: int) -> dict[str, Any] | None:
    d, e = DELIVERIES, EVENTS
    row = (
        await session.execute(
            select(*(d.c[name] for name in _DELIVERY_COLUMNS), e.c.type.label("event_type"))
            .join_from(d, e, e.c.id == d.c.event_id)
            .where(d.c.id == delivery_id, _WEBHOOKS_ONLY)
        )
    ).first()
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
