"""Learned schedules, object states and grid days (app/expectations.py): pure, so tables."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.expectations import (
    Result,
    Schedule,
    Setting,
    assess,
    business_day,
    business_days,
    cells,
    learn,
    next_due,
    pick,
)

UTC_TZ = ZoneInfo("UTC")
AMS = ZoneInfo("Europe/Amsterdam")
FAILURES = frozenset({"failed", "failed_to_start", "finished_with_exception"})
# A Wednesday morning.
NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def daily(days: int, hour: int = 3, end: datetime = NOW) -> list[datetime]:
    last = end.replace(hour=hour, minute=0)
    if last > end:
        last -= timedelta(days=1)
    return [last - timedelta(days=n) for n in range(days)]


def jobs(starts: list[datetime], status: str = "finished") -> list[Result]:
    return [Result(f"j{n}", status, s) for n, s in enumerate(sorted(starts))]


def test_a_daily_job_is_learned_as_24_hours() -> None:
    assert learn(daily(14), NOW, UTC_TZ) == Schedule(24.0, None)


def test_jitter_of_an_hour_still_reads_as_daily() -> None:
    starts = [s + timedelta(minutes=(n * 37) % 90 - 45) for n, s in enumerate(daily(14))]
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, None)


def test_a_4_hourly_job_is_learned_as_4_hours() -> None:
    starts = [NOW - timedelta(hours=1 + 4 * n) for n in range(84)]
    assert learn(starts, NOW, UTC_TZ) == Schedule(4.0, None)


def test_a_weekday_only_job_is_learned_on_weekdays() -> None:
    starts = [s for s in daily(14) if s.weekday() < 5]
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, ("mon", "tue", "wed", "thu", "fri"))


def test_a_weekly_job_is_learned_as_168_hours() -> None:
    starts = [NOW - timedelta(days=1 + 7 * n) for n in range(3)]
    assert learn(starts, NOW, UTC_TZ) == Schedule(168.0, None)


def test_a_weekly_job_with_a_missing_week_is_still_weekly() -> None:
    starts = [NOW - timedelta(days=d) for d in (1, 15, 22)]
    assert learn(starts, NOW, UTC_TZ) == Schedule(168.0, None)


def test_a_burst_of_retries_does_not_change_a_daily_schedule() -> None:
    starts = daily(6)
    burst_day = starts[2]
    starts += [burst_day + timedelta(minutes=10 * n) for n in range(1, 8)]
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, None)


def test_a_missing_week_does_not_change_a_daily_schedule() -> None:
    starts = [s for s in daily(21) if not (NOW - timedelta(days=14) < s < NOW - timedelta(days=6))]
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, None)


def test_fewer_than_three_results_learn_nothing() -> None:
    assert learn(daily(2), NOW, UTC_TZ) is None
    assert learn([], NOW, UTC_TZ) is None


@given(st.integers(3, 14), st.integers(0, 10))
def test_any_daily_history_with_retries_is_daily(days: int, retries: int) -> None:
    starts = daily(days)
    starts += [starts[0] + timedelta(minutes=5 * (n + 1)) for n in range(retries)]
    learned = learn(starts, NOW, UTC_TZ)
    if days >= 3 and retries <= days:
        assert learned is not None
        assert learned.every_hours == 24.0


def test_a_weekday_job_is_never_late_on_a_weekend() -> None:
    starts = [s for s in daily(14) if s.weekday() < 5]
    friday = max(s for s in starts if s.weekday() == 4)
    history = jobs([s for s in starts if s <= friday])
    for hours in (12, 24, 36, 48, 60, 70):
        at = friday + timedelta(hours=hours)  # Friday evening .. Monday 01:00
        assert assess(history, Setting(), FAILURES, at, UTC_TZ).state == "ok", at
    monday_late = friday + timedelta(days=3, hours=7)
    assert assess(history, Setting(), FAILURES, monday_late, UTC_TZ).state == "no_result"


def test_a_daily_job_turns_no_result_after_due_and_grace() -> None:
    history = jobs(daily(10))
    last = max(j.start for j in history)
    on_time = assess(history, Setting(), FAILURES, last + timedelta(hours=29), UTC_TZ)
    assert on_time.state == "ok"
    assert on_time.next_result_due_at == last + timedelta(hours=24)
    late = assess(history, Setting(), FAILURES, last + timedelta(hours=31), UTC_TZ)
    assert late.state == "no_result"
    assert late.no_result_since == last + timedelta(hours=30)
    assert late.expected.source == "learned"
    assert late.expected.grace_hours == 6


def test_set_expectation_wins_and_no_expectation_is_none() -> None:
    history = jobs(daily(10))
    last = max(j.start for j in history)
    setting = Setting(every_hours=48, grace_hours=1)
    a = assess(history, setting, FAILURES, last + timedelta(hours=30), UTC_TZ)
    assert (a.state, a.expected.source, a.next_result_due_at) == (
        "ok",
        "set",
        last + timedelta(hours=48),
    )
    few = assess(jobs(daily(2)), Setting(), FAILURES, NOW + timedelta(days=20), UTC_TZ)
    assert (few.state, few.expected.source, few.next_result_due_at) == ("ok", "none", None)


def test_states_failures_and_days_in_state() -> None:
    starts = sorted(daily(6))
    history = [
        *jobs(starts[:3]),
        Result("w", "finished_with_exception", starts[3]),
        Result("f1", "failed", starts[4]),
        Result("f2", "failed", starts[5]),
        Result("c", "canceled", starts[5] + timedelta(hours=1)),
    ]
    a = assess(history, Setting(), FAILURES, NOW, UTC_TZ)
    assert a.state == "failure"
    assert a.failures_since_success == 2
    assert a.last_success_at == starts[2]
    assert a.last_result is not None and a.last_result.job_id == "f2"
    assert a.days_in_state(NOW + timedelta(hours=1)) == 1  # failing since starts[4]
    then = starts[3] + timedelta(hours=1)
    treated = assess(history[:4], Setting(treat_warning_as_success=True), FAILURES, then, UTC_TZ)
    assert (treated.state, treated.last_success_at) == ("ok", starts[3])
    warned = assess(history[:4], Setting(), FAILURES, then, UTC_TZ)
    assert warned.state == "warning"
    retired = assess(history, Setting(retired=True), FAILURES, NOW, UTC_TZ)
    assert retired.state == "retired"


def test_next_due_keeps_the_wall_clock_across_dst() -> None:
    # 03:00 in Amsterdam on the Saturday before the October change (CEST, UTC+2).
    last = datetime(2026, 10, 24, 1, 0, tzinfo=UTC)
    due = next_due(last, Schedule(24.0), AMS)
    assert due == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)  # 03:00 CET
    assert due.astimezone(AMS).hour == 3


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        # March 29 2026: clocks go from 02:00 to 03:00 in Amsterdam (UTC+1 -> UTC+2).
        (datetime(2026, 3, 29, 4, 59, tzinfo=UTC), date(2026, 3, 29)),  # 06:59 CEST
        (datetime(2026, 3, 29, 3, 59, tzinfo=UTC), date(2026, 3, 28)),  # 05:59 CEST
        (datetime(2026, 3, 29, 4, 0, tzinfo=UTC), date(2026, 3, 29)),  # 06:00 CEST
        (datetime(2026, 3, 28, 4, 59, tzinfo=UTC), date(2026, 3, 27)),  # 05:59 CET
        (datetime(2026, 3, 28, 5, 0, tzinfo=UTC), date(2026, 3, 28)),  # 06:00 CET
        # October 25 2026: back from 03:00 to 02:00 (UTC+2 -> UTC+1).
        (datetime(2026, 10, 25, 4, 59, tzinfo=UTC), date(2026, 10, 24)),  # 05:59 CET
        (datetime(2026, 10, 25, 5, 0, tzinfo=UTC), date(2026, 10, 25)),  # 06:00 CET
        (datetime(2026, 10, 24, 3, 59, tzinfo=UTC), date(2026, 10, 23)),  # 05:59 CEST
        (datetime(2026, 10, 24, 4, 0, tzinfo=UTC), date(2026, 10, 24)),  # 06:00 CEST
    ],
)
def test_business_days_start_at_6_in_amsterdam_on_both_sides_of_dst(
    moment: datetime, day: date
) -> None:
    assert business_day(moment, AMS, 6) == day


def test_business_days_oldest_first_ending_today() -> None:
    now = datetime(2026, 10, 25, 5, 30, tzinfo=UTC)  # 06:30 CET, just after the change
    assert business_days(now, 3, AMS, 6) == [
        date(2026, 10, 23),
        date(2026, 10, 24),
        date(2026, 10, 25),
    ]
    assert business_days(now - timedelta(hours=1), 1, AMS, 6) == [date(2026, 10, 24)]


def test_worst_and_last_picks() -> None:
    assert pick(["failure", "success"], "worst") == "failure"
    assert pick(["failure", "success"], "last") == "success"
    assert pick(["success", "warning"], "worst") == "warning"


def test_cells_show_results_no_result_and_none() -> None:
    starts = sorted(daily(10))
    gone = starts[-4:-2]  # two days without a result
    history = [
        *jobs([s for s in starts if s not in gone]),
        Result("retry-fail", "failed", starts[-1] - timedelta(minutes=30)),
    ]
    days = business_days(NOW, 14, UTC_TZ, 0)
    worst = dict(
        (d, r) for d, r, _ in cells(history, Setting(), FAILURES, days, NOW, UTC_TZ, 0, "worst")
    )
    last = dict(
        (d, r) for d, r, _ in cells(history, Setting(), FAILURES, days, NOW, UTC_TZ, 0, "last")
    )
    today = days[-1]
    assert worst[today] == "failure" and last[today] == "success"
    assert [worst[g.date()] for g in gone] == ["no_result", "no_result"]
    assert worst[days[0]] == "none"  # before the first result
    assert worst[starts[0].date()] == "success"


def test_a_weekday_job_with_only_one_week_of_history_is_still_weekday_only() -> None:
    starts = [s for s in daily(8) if s.weekday() < 5]
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, ("mon", "tue", "wed", "thu", "fri"))


def test_one_missed_day_is_a_miss_not_a_pattern() -> None:
    starts = [s for s in daily(9) if s.weekday() != 3]  # one Thursday missed
    assert learn(starts, NOW, UTC_TZ) == Schedule(24.0, None)
