"""What a merge tells, inside the transaction of the changes it tells.

A refresh's merge (`app.store.merge`) calls, in its one transaction:

1. `lock_customer` (`app.store.versions`): the customer's row, locked on PostgreSQL, and
   its `data_version`, so that two racing merges never tell one change twice;
2. the jobs and their history;
3. `tell`: `job.created` and `job.status_changed` events for the changes, the alerts of
   every key a change touched (`app.alert_rules`, written by `app.store.alerts`), their
   events, the events of protected objects that turned "no result" or recovered
   (`app.store.objects`), and one webhook delivery per event and receiver for the types
   `WEBHOOK_EVENTS` names, unless the alert is snoozed or its customer in maintenance
   (`app.store.maintenance`); with a PSA receiver, its ticket work too.

A refresh that changed nothing, or failed, calls none of this, so it tells nothing. The
overdue sweep (`app.store.sweep`) tells every key of a customer the same way.

Event ids are handed out in commit order: on PostgreSQL a transaction takes a transaction
advisory lock just before it writes events and holds it until it commits; SQLite has one
writer. So a reader of the feed (`app.store.events`) never sees an id appear below one it
has seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from app import alert_rules as rules_
from app import expectations
from app.alert_rules import KeyJob, Rules, Transition
from app.clock import iso
from app.expectations import Assessment, Result, Setting
from app.store.alerts import ALERT_SELECT, alert_from_row, alert_out, write_alerts
from app.store.maintenance import in_maintenance
from app.store.objects import NOTHING_STORED, ObjectKey, Stored, mark_no_result, stored_of
from app.store.plans import Plan, encode, from_driver, sql, to_driver

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


def job_summary(change: JobChange) -> dict[str, Any]:
    return {
        "job_id": change.job_id,
        "name": change.name,
        "job_type": change.job_type,
        "module": change.module,
        "status": change.status,
        "start_time": iso(change.start_time),
    }


def _alert_job(job: KeyJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {"job_id": job.job_id, "status": job.status, "start_time": iso(job.start)}


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
    transitions = yield from write_alerts(dialect, transitions, at)
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
