"""Protected objects as `GET /objects` and `GET /grid` show them: the stored jobs and
settings of some customers (`app.store.objects`) judged by `app.expectations` at one moment.

The API keeps what these build, encoded, per data version until `valid_until` (see
`app.api.objects`); nothing here is kept. Judging is CPU work (about 0.1 ms an object), so it
runs off the event loop: a rebuild at 20,000 objects must not stall every other request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app import expectations
from app.alert_rules import alert_key
from app.clock import iso
from app.store import maintenance, objects
from app.store.maintenance import Window
from app.store.objects import NOTHING_STORED, ObjectKey, Stored

GRID_DAYS = 92
"""The most days a grid shows: windows that ended before are not read."""


@dataclass(frozen=True)
class Judging:
    """What judging objects needs of the settings."""

    failures: frozenset[str]  # ALERT_STATUSES
    zone: tzinfo  # TIMEZONE
    day_start_hour: int = 0  # DAY_START_HOUR
    day_result_rule: Literal["worst", "last"] = "worst"  # DAY_RESULT_RULE


@dataclass(frozen=True, slots=True)
class Judged:
    obj: ObjectKey
    jobs: list[expectations.Result]
    stored: Stored
    assessment: expectations.Assessment
    windows: tuple[Window, ...]  # the maintenance windows of its customer


async def judge_objects(
    session: AsyncSession,
    customer_ids: Sequence[str] | None,
    judging: Judging,
    now: datetime,
    keep: Callable[[ObjectKey], bool] = lambda _: True,
) -> list[Judged]:
    """Every object of these customers (None: all) that `keep` keeps, judged at `now`,
    ordered by key."""
    found, stored = await objects.read_objects(session, customer_ids)
    windows = await maintenance.list_windows(
        session, customer_ids, ending_after=now - timedelta(days=GRID_DAYS + 1)
    )
    return await asyncio.to_thread(_judge_all, found, stored, windows, judging, now, keep)


def _judge_all(
    found: dict[ObjectKey, list[expectations.Result]],
    stored: dict[ObjectKey, Stored],
    windows: Sequence[Window],
    judging: Judging,
    now: datetime,
    keep: Callable[[ObjectKey], bool],
) -> list[Judged]:
    out: list[Judged] = []
    for obj in sorted(found):
        if not keep(obj):
            continue
        jobs = found[obj]
        row = stored.get(obj, NOTHING_STORED)
        a = expectations.assess(jobs, row.setting, judging.failures, now, judging.zone)
        mine = tuple(w for w in windows if w.customer_id in (None, obj[0]))
        out.append(Judged(obj, jobs, row, a, mine))
    return out


def valid_until(judged: Sequence[Judged], now: datetime, longest: timedelta) -> datetime:
    """Until when what `judged` shows at `now` stays true by time alone, at most `longest`
    from now: the first object to turn "no result" (its due time and grace passing), to
    count one more day in its state, or a maintenance window starting or ending. Data and
    settings that change are the keepers' to notice (data versions, notices)."""
    # Windows are shared by the objects of a customer (or of all): each is looked at once.
    windows = {w for j in judged for w in j.windows}
    moments = [t for w in windows for t in (w.starts_at, w.ends_at)]
    for j in judged:
        a = j.assessment
        if a.state != "no_result" and a.next_result_due_at is not None:
            moments.append(a.next_result_due_at + a.expected.grace)
        if a.state_since is not None:
            moments.append(a.state_since + timedelta(days=a.days_in_state(now) + 1))
    return min([now + longest, *(m for m in moments if m > now)])


def in_maintenance(j: Judged, now: datetime) -> bool:
    return any(w.starts_at <= now < w.ends_at for w in j.windows)


def object_out(j: Judged, customer_name: str | None, now: datetime) -> dict[str, Any]:
    """An object as `GET /objects` shows it (the shape of `schemas.ProtectedObject`)."""
    a = j.assessment
    schedule = a.expected.schedule
    last = a.last_result
    cid, job_type, module = j.obj
    return {
        "key": alert_key(*j.obj),
        "customer_id": cid,
        "customer_name": customer_name,
        "job_type": job_type,
        "module": module,
        "state": a.state,
        "in_maintenance": in_maintenance(j, now),
        "expected": {
            "every_hours": schedule.every_hours if schedule else None,
            "days": list(schedule.days) if schedule and schedule.days else None,
            "grace_hours": a.expected.grace_hours,
            "source": a.expected.source,
        },
        "treat_warning_as_success": j.stored.setting.treat_warning_as_success,
        "last_result": (
            {"job_id": last.job_id, "status": last.status, "start_time": iso(last.start)}
            if last
            else None
        ),
        "last_success_at": iso(a.last_success_at),
        "next_result_due_at": iso(a.next_result_due_at),
        "days_in_state": a.days_in_state(now),
        "failures_since_success": a.failures_since_success,
    }


def grid_cells(j: Judged, days: Sequence[date], judging: Judging, now: datetime) -> list[Any]:
    """One object's row of `GET /grid`: its cells over `days`."""
    return [
        {"date": day.isoformat(), "result": result, "jobs": count}
        for day, result, count in expectations.cells(
            j.jobs,
            j.stored.setting,
            judging.failures,
            days,
            now,
            judging.zone,
            judging.day_start_hour,
            judging.day_result_rule,
            [(w.starts_at, w.ends_at) for w in j.windows],
            exp=j.assessment.expected,
        )
    ]
