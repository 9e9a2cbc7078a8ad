"""Expectations of protected objects: when a result is due, learned or set. Pure functions.

A protected object is one customer + job type + module (its key is the alert key). A
*result* is one of its finished jobs: `finished` a success, `finished_with_exception` a
warning (a success when the object treats warnings so), another status of `ALERT_STATUSES`
a failure.

Learning (`learn`), from the start times of the object's results:
1. the window: the last 14 days; when that holds fewer than 3 results, the last 3 results
   of the last 5 weeks (so that a weekly job is learned too). Fewer than 3: nothing learned.
2. retries: the gaps between consecutive starts, without those shorter than half the
   upper quartile of the gaps (a burst of retries on one day is one run of the schedule);
3. the interval: the largest of 1, 2, 3, 4, 6, 8, 12, 24, 48, 72 and 168 hours, at most a
   quarter above the median of the gaps left, that 80% of them are a whole multiple of
   (within a quarter of it): a missed run or a missing week is two or more intervals, not
   a longer one. When none fits, the median itself, to a tenth of an hour;
4. the weekdays: for intervals up to a day, when the window reaches a week back and some
   weekdays (in `TIMEZONE`) never had a start between the first start and the last, and
   they are a pattern (each passed twice, or two or more in a row), the expectation holds
   only on the others (a weekday-only job is never "no result" on a weekend).

The next result is due one interval after the last one (wall-clock days for whole days, so
a daily 03:00 stays at 03:00 across a DST change), moved on to the next expected weekday;
"no result" is when that moment and the grace pass without a new result.

The grid's business day starts at `DAY_START_HOUR` in `TIMEZONE`: `business_day`.
"""

from __future__ import annotations

import functools
import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
INTERVALS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0, 48.0, 72.0, 168.0)
WINDOW = timedelta(days=14)
LONG_WINDOW = timedelta(days=35)
MIN_RESULTS = 3
DEFAULT_GRACE_HOURS = 6.0

Source = Literal["learned", "set", "none"]
ResultKind = Literal["success", "warning", "failure"]
State = Literal["ok", "warning", "failure", "no_result", "retired"]
WARNING_STATUS = "finished_with_exception"
SUCCESS_STATUS = "finished"


@dataclass(frozen=True, slots=True)
class Schedule:
    """How often a result comes, and on which weekdays (None: every day)."""

    every_hours: float
    days: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Setting:
    """What `PUT /objects/{key}/expectation` stored; the defaults when nothing was."""

    every_hours: float | None = None  # None: learn
    days: tuple[str, ...] | None = None
    grace_hours: float | None = None  # None: the default for the interval
    treat_warning_as_success: bool = False
    retired: bool = False
    updated_at: datetime | None = None


NO_SETTING = Setting()


@dataclass(frozen=True, slots=True)
class Expected:
    """An object's expectation as `GET /objects` shows it."""

    schedule: Schedule | None
    grace_hours: float | None
    source: Source

    @property
    def grace(self) -> timedelta:
        """How late a result may be before it is "no result"."""
        return timedelta(hours=self.grace_hours or 0)


@dataclass(frozen=True, slots=True)
class Result:
    job_id: str
    status: str
    start: datetime


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def learn(starts: Iterable[datetime], now: datetime, tz: tzinfo) -> Schedule | None:
    """The schedule the start times of an object's results show (module docstring)."""
    ordered = sorted(s for s in starts if s <= now)
    window = [s for s in ordered if s >= now - WINDOW]
    if len(window) < MIN_RESULTS:
        window = [s for s in ordered if s >= now - LONG_WINDOW][-MIN_RESULTS:]
    if len(window) < MIN_RESULTS:
        return None
    gaps = [(b - a).total_seconds() / 3600 for a, b in itertools.pairwise(window)]
    upper = _quantile(gaps, 0.75)
    if upper <= 0:
        return None
    kept = [g for g in gaps if g >= upper / 2]
    median = statistics.median(kept)
    every = round(median, 1) or 0.1
    for candidate in sorted(INTERVALS, reverse=True):
        if candidate > median * 1.25:
            continue
        fits = sum(
            1 for g in kept if abs(g - max(1, round(g / candidate)) * candidate) <= candidate / 4
        )
        if fits >= 0.8 * len(kept):
            every = candidate
            break
    days: tuple[str, ...] | None = None
    if every <= 24 and now - window[0] >= timedelta(days=7):
        days = _weekdays(window, now, tz)
    return Schedule(every, days)


def _weekdays(window: Sequence[datetime], now: datetime, tz: tzinfo) -> tuple[str, ...] | None:
    """The weekdays with starts, when the others are a pattern and not a miss: each of them
    was passed twice without a start, or they are two or more days in a row (a weekend),
    passed between the first start and the last (days after the last start are silence,
    not a pattern)."""
    seen = {s.astimezone(tz).weekday() for s in window}
    missing = [d for d in range(7) if d not in seen]
    if not missing or not seen:
        return None
    first, last = window[0].astimezone(tz).date(), window[-1].astimezone(tz).date()
    passed = [0] * 7
    day = first
    while day <= last:
        passed[day.weekday()] += 1
        day += timedelta(days=1)
    if not all(passed[d] for d in missing):
        return None
    twice = all(passed[d] >= 2 for d in missing)
    in_a_row = len(missing) >= 2 and _contiguous(missing)
    if not (twice or in_a_row):
        return None
    return tuple(WEEKDAYS[d] for d in sorted(seen))


def _contiguous(days: Sequence[int]) -> bool:
    """Whether weekdays (0..6) are one block, Sunday to Monday wrapping."""
    block = set(days)
    starts = [d for d in block if (d - 1) % 7 not in block]
    return len(starts) == 1


def default_grace(every_hours: float) -> float:
    """Six hours, or half the interval when that is shorter (a 4-hourly job is late after 2)."""
    return min(DEFAULT_GRACE_HOURS, every_hours / 2)


def expected(setting: Setting, starts: Iterable[datetime], now: datetime, tz: tzinfo) -> Expected:
    """The object's expectation: the set one, else the learned one, else none."""
    if setting.every_hours is not None:
        schedule: Schedule | None = Schedule(setting.every_hours, setting.days)
        source: Source = "set"
    else:
        schedule = learn(starts, now, tz)
        if schedule is not None and setting.days is not None:
            schedule = Schedule(schedule.every_hours, setting.days)
        source = "learned" if schedule is not None else "none"
    if schedule is None:
        return Expected(None, setting.grace_hours, "none")
    grace = setting.grace_hours
    if grace is None:
        grace = default_grace(schedule.every_hours)
    return Expected(schedule, grace, source)


def next_due(last: datetime, schedule: Schedule, tz: tzinfo) -> datetime:
    """When the result after one that started at `last` is due."""
    utc = last.tzinfo
    if schedule.every_hours % 24 == 0:
        # Whole days on the wall clock: a daily 03:00 job stays at 03:00 across DST.
        local = last.astimezone(tz).replace(tzinfo=None) + timedelta(hours=schedule.every_hours)
        due = local.replace(tzinfo=tz).astimezone(utc)
    else:
        due = last + timedelta(hours=schedule.every_hours)
    if schedule.days:
        for _ in range(7):
            local_due = due.astimezone(tz)
            if WEEKDAYS[local_due.weekday()] in schedule.days:
                break
            due = (local_due.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
            due = due.astimezone(utc)
    return due


def kind_of(
    status: str, failures: frozenset[str], treat_warning_as_success: bool
) -> ResultKind | None:
    """What a job of this status is as a result (None: not a result)."""
    if status == SUCCESS_STATUS:
        return "success"
    if status == WARNING_STATUS:
        return "success" if treat_warning_as_success else "warning"
    if status in failures:
        return "failure"
    return None


def results_of(
    jobs: Iterable[Result], failures: frozenset[str], treat_warning_as_success: bool
) -> list[tuple[Result, ResultKind]]:
    """The jobs that are results, with their kind, oldest first."""
    out = []
    for job in jobs:
        kind = kind_of(job.status, failures, treat_warning_as_success)
        if kind is not None:
            out.append((job, kind))
    out.sort(key=lambda r: (r[0].start, r[0].job_id))
    return out


@dataclass(frozen=True, slots=True)
class Assessment:
    """An object's state, as `GET /objects` and the alert rules see it."""

    state: State
    expected: Expected
    last_result: Result | None
    last_success_at: datetime | None
    next_result_due_at: datetime | None
    no_result_since: datetime | None  # when the due time and grace passed; None: not late
    state_since: datetime | None
    failures_since_success: int

    def days_in_state(self, now: datetime) -> int:
        if self.state_since is None:
            return 0
        return max(0, (now - self.state_since).days)


_STATE_OF: dict[ResultKind, State] = {"success": "ok", "warning": "warning", "failure": "failure"}


def assess(
    jobs: Iterable[Result],
    setting: Setting,
    failures: frozenset[str],
    now: datetime,
    tz: tzinfo,
) -> Assessment:
    """The state an object's jobs (any order; non-results ignored) and setting put it in."""
    results = results_of(jobs, failures, setting.treat_warning_as_success)
    exp = expected(setting, (r.start for r, _ in results), now, tz)
    last = results[-1][0] if results else None
    last_success = next((r.start for r, k in reversed(results) if k == "success"), None)
    failed = 0
    for _, kind in reversed(results):
        if kind == "success":
            break
        failed += kind == "failure"
    due = late = None
    if last is not None and exp.schedule is not None:
        due = next_due(last.start, exp.schedule, tz)
        grace = exp.grace
        if now > due + grace:
            late = due + grace
    since: datetime | None = None
    state: State
    if setting.retired:
        state, since = "retired", setting.updated_at
    elif late is not None:
        state, since = "no_result", late
    elif results:
        kind = results[-1][1]
        state = _STATE_OF[kind]
        since = results[-1][0].start
        for r, k in reversed(results[:-1]):
            # A time without a result (late past the grace) ends the run too.
            late_between = exp.schedule is not None and (
                next_due(r.start, exp.schedule, tz) + exp.grace < since
            )
            if k != kind or late_between:
                break
            since = r.start
    else:
        state = "ok"
    return Assessment(state, exp, last, last_success, due, late, since, failed)


# -- the grid: business days -------------------------------------------------------------------

GridResult = Literal["success", "warning", "failure", "no_result", "maintenance", "none"]
_WORST: dict[ResultKind, int] = {"success": 0, "warning": 1, "failure": 2}


def business_day(moment: datetime, tz: tzinfo, start_hour: int) -> date:
    """The business day a moment belongs to: days start at `start_hour` on the wall clock."""
    local = moment.astimezone(tz).replace(tzinfo=None)
    return (local - timedelta(hours=start_hour)).date()


def business_days(now: datetime, count: int, tz: tzinfo, start_hour: int) -> list[date]:
    """The last `count` business days, oldest first; the last is today."""
    today = business_day(now, tz, start_hour)
    return [today - timedelta(days=n) for n in range(count - 1, -1, -1)]


@functools.lru_cache(maxsize=4096)
def day_start(day: date, tz: tzinfo, start_hour: int) -> datetime:
    """When a business day starts (aware, in `tz`)."""
    return datetime(day.year, day.month, day.day, start_hour, tzinfo=tz)


def pick(kinds: Sequence[ResultKind], rule: Literal["worst", "last"]) -> ResultKind:
    """A day's result among its results (oldest first)."""
    if rule == "last":
        return kinds[-1]
    return max(kinds, key=lambda k: _WORST[k])


def cells(
    jobs: Iterable[Result],
    setting: Setting,
    failures: frozenset[str],
    days: Sequence[date],
    now: datetime,
    tz: tzinfo,
    start_hour: int,
    rule: Literal["worst", "last"],
    maintenance: Sequence[tuple[datetime, datetime]] = (),
    exp: Expected | None = None,
) -> list[tuple[date, GridResult, int]]:
    """One object's cells: per day, its pick; for a day without a result, `maintenance`
    when a window (start, end) covered some of it, `no_result` when it falls in a time the
    object was late, else `none`; and the number of results. `exp`: the object's
    expectation, when the caller has it already (`assess`)."""
    results = results_of(jobs, failures, setting.treat_warning_as_success)
    if not days:
        return []
    # In UTC: comparing times of two zones asks the zone for its offset every time.
    first = day_start(days[0], tz, start_hour).astimezone(UTC)
    by_day: dict[date, list[ResultKind]] = {}
    for r, kind in results:
        if r.start >= first:
            by_day.setdefault(business_day(r.start, tz, start_hour), []).append(kind)
    late: set[date] = set()
    if exp is None:
        exp = expected(setting, (r.start for r, _ in results), now, tz)
    schedule = exp.schedule
    if schedule is not None:
        grace = exp.grace
        # A result is due an interval after the one before, give or take an hour of DST
        # (later still on a day off): a shorter gap was never late, and needs no calendar.
        never_late = timedelta(hours=schedule.every_hours - 1) + grace
        starts = [r.start for r, _ in results]
        for a, b in zip(starts, [*starts[1:], None], strict=True):
            until = b if b is not None else now
            if until < first or until - a <= never_late:
                continue
            overdue = next_due(a, schedule, tz) + grace
            if overdue >= until:
                continue
            day = business_day(overdue, tz, start_hour)
            end = business_day(until, tz, start_hour)
            while day <= end:
                if not schedule.days or WEEKDAYS[day.weekday()] in schedule.days:
                    late.add(day)
                day += timedelta(days=1)
    out: list[tuple[date, GridResult, int]] = []
    for day in days:
        kinds = by_day.get(day)
        if kinds:
            out.append((day, pick(kinds, rule), len(kinds)))
        elif maintenance and _covered(day, maintenance, tz, start_hour):
            out.append((day, "maintenance", 0))
        elif day in late:
            out.append((day, "no_result", 0))
        else:
            out.append((day, "none", 0))
    return out


def _covered(
    day: date, windows: Sequence[tuple[datetime, datetime]], tz: tzinfo, start_hour: int
) -> bool:
    begin = day_start(day, tz, start_hour)
    end = day_start(day + timedelta(days=1), tz, start_hour)
    return any(s < end and e > begin for s, e in windows)
