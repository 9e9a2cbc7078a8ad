"""The alert rules (app/alerts.py) as a PSA integration relies on them: which jobs open an
alert, when it turns critical, when it resolves, and which changes are worth an event.

`judge` and `transition` are pure, so the cases are tables and the invariants are properties
over any history of statuses the catalog knows.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import catalog
from app.alert_rules import (
    AlertState,
    KeyJob,
    Rules,
    Transition,
    group_by_key,
    judge,
    transition,
)
from app.config import DEFAULT_ALERT_STATUSES

NOW = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
RULES = Rules(frozenset(DEFAULT_ALERT_STATUSES), overdue_hours=36)
KEY = ("cust-1", "microsoft_365", "exchange_online")
ALERT_KEY = "cust-1:microsoft_365:exchange_online"
FAILURES = frozenset(DEFAULT_ALERT_STATUSES)
STATUS_NAMES = [e.name for e in catalog.STATUS.entries] + [catalog.UNKNOWN]


def hours_ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def history(*statuses: str, newest_hours_ago: float = 1.0) -> list[KeyJob]:
    """Jobs an hour apart, oldest first, the last one `newest_hours_ago`; ids j0, j1, ..."""
    n = len(statuses)
    return [
        KeyJob(f"j{i}", status, hours_ago(newest_hours_ago + (n - 1 - i)))
        for i, status in enumerate(statuses)
    ]


# -- judge ------------------------------------------------------------------------------------

JUDGE_CASES: list[tuple[str, list[KeyJob], dict[str, Any]]] = [
    (
        "no jobs",
        [],
        {"open": False, "reason": None, "severity": None, "consecutive_failures": 0},
    ),
    (
        "only running and canceled jobs",
        history("running", "canceled", "pending", "skipped"),
        {"open": False, "consecutive_failures": 0, "latest": None, "last_success_at": None},
    ),
    (
        "one failure opens a warning",
        history("failed"),
        {
            "open": True,
            "reason": "failed",
            "severity": "warning",
            "consecutive_failures": 1,
            "first_failure_at": hours_ago(1),
            "last_failure_at": hours_ago(1),
            "last_success_at": None,
        },
    ),
    (
        "two in a row are still a warning",
        history("failed", "failed"),
        {"open": True, "severity": "warning", "consecutive_failures": 2},
    ),
    (
        "three in a row are critical",
        history("failed", "failed", "failed"),
        {
            "open": True,
            "reason": "failed",
            "severity": "critical",
            "consecutive_failures": 3,
            "first_failure_at": hours_ago(3),
            "last_failure_at": hours_ago(1),
        },
    ),
    (
        "a failure after a success counts from the success",
        history("failed", "failed", "finished", "failed"),
        {
            "open": True,
            "severity": "warning",
            "consecutive_failures": 1,
            "first_failure_at": hours_ago(1),
            "last_success_at": hours_ago(2),
        },
    ),
    (
        "a success after failures closes it",
        history("failed", "failed", "failed", "finished"),
        {
            "open": False,
            "reason": None,
            "severity": None,
            "consecutive_failures": 0,
            "first_failure_at": None,
            "last_failure_at": None,
            "last_success_at": hours_ago(1),
        },
    ),
    (
        "finished_with_exception is a failure",
        history("finished", "finished_with_exception"),
        {"open": True, "reason": "failed", "severity": "warning", "consecutive_failures": 1},
    ),
    (
        "failed_to_start is a failure",
        history("finished", "failed_to_start"),
        {"open": True, "reason": "failed", "severity": "warning", "consecutive_failures": 1},
    ),
    (
        "the three failure statuses count together towards critical",
        history("failed", "failed_to_start", "finished_with_exception"),
        {"open": True, "severity": "critical", "consecutive_failures": 3},
    ),
    (
        "canceled and running between failures neither break nor extend the run",
        history("failed", "canceled", "failed", "running", "skipped", "failed"),
        {"open": True, "severity": "critical", "consecutive_failures": 3},
    ),
    (
        "a canceled job after a failure leaves it open",
        history("finished", "failed", "canceled"),
        {"open": True, "consecutive_failures": 1, "last_failure_at": hours_ago(2)},
    ),
    (
        "a success older than OVERDUE_HOURS opens an overdue critical alert",
        history("failed", "finished", newest_hours_ago=37),
        {
            "open": True,
            "reason": "overdue",
            "severity": "critical",
            "consecutive_failures": 0,
            "last_success_at": hours_ago(37),
        },
    ),
    (
        "a success exactly OVERDUE_HOURS old is not overdue yet",
        history("finished", newest_hours_ago=36),
        {"open": False, "reason": None},
    ),
    (
        "a running job does not stop a key from being overdue",
        [*history("finished", newest_hours_ago=40), KeyJob("run", "running", hours_ago(1))],
        {"open": True, "reason": "overdue", "severity": "critical"},
    ),
    (
        "an old failure is failed, not overdue",
        history("finished", "failed", newest_hours_ago=100),
        {"open": True, "reason": "failed", "severity": "warning"},
    ),
]


@pytest.mark.parametrize(
    ("jobs", "expected"), [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES]
)
def test_judge(jobs: list[KeyJob], expected: dict[str, Any]) -> None:
    judgement = judge(jobs, RULES, NOW)
    assert {k: getattr(judgement, k) for k in expected} == expected
    # The order the jobs come in does not matter.
    assert judge(list(reversed(jobs)), RULES, NOW) == judgement


def test_the_latest_finished_job_decides_and_is_named() -> None:
    jobs = history("failed", "finished", "failed", "running")
    judgement = judge(jobs, RULES, NOW)
    assert judgement.latest == jobs[2]
    assert judgement.last_success == jobs[1]


def test_overdue_hours_zero_is_never_overdue() -> None:
    rules = Rules(FAILURES, overdue_hours=0)
    judgement = judge(history("finished", newest_hours_ago=24 * 365), rules, NOW)
    assert judgement.open is False
    assert judgement.reason is None
    assert judgement.last_success_at == hours_ago(24 * 365)


def test_other_alert_statuses_count_only_what_they_name() -> None:
    rules = Rules(frozenset({"failed"}), overdue_hours=0)
    # finished_with_exception is not a failure here, nor a success: it changes nothing.
    assert judge(history("failed", "finished_with_exception"), rules, NOW).open is True
    assert judge(history("finished", "finished_with_exception"), rules, NOW).open is False
    assert judge(history("finished_with_exception"), rules, NOW).latest is None


@pytest.mark.parametrize(
    ("first", "second", "open_"),
    [
        # Same start: the larger job id is the later one.
        (KeyJob("a", "failed", NOW), KeyJob("b", "finished", NOW), False),
        (KeyJob("a", "finished", NOW), KeyJob("b", "failed", NOW), True),
    ],
    ids=["success-has-the-larger-id", "failure-has-the-larger-id"],
)
def test_ties_in_start_time_are_broken_by_job_id(
    first: KeyJob, second: KeyJob, open_: bool
) -> None:
    for jobs in ([first, second], [second, first]):
        judgement = judge(jobs, RULES, NOW)
        assert judgement.open is open_
        assert judgement.latest == second


# -- transition -------------------------------------------------------------------------------


def opened_alert(**fields: Any) -> AlertState:
    """An open alert as `transition` would have stored it, with `fields` changed."""
    [t] = transition(KEY, None, judge(history("failed"), RULES, hours_ago(1)), hours_ago(1))
    return replace(t.alert, **fields)


def test_a_failure_opens_an_alert_caused_by_the_failing_job() -> None:
    jobs = history("finished", "failed")
    judgement = judge(jobs, RULES, NOW)
    [t] = transition(KEY, None, judgement, NOW)
    assert t.change == "opened"
    assert t.job == jobs[1]
    assert t.previous_severity is None
    a = t.alert
    assert (a.alert_key, a.customer_id, a.job_type, a.module) == (ALERT_KEY, *KEY)
    assert (a.state, a.reason, a.severity) == ("open", "failed", "warning")
    assert a.opened_at == NOW
    assert a.resolved_at is None
    assert a.consecutive_failures == 1
    assert a.first_failure_at == a.last_failure_at == jobs[1].start
    assert a.last_success_at == jobs[0].start
    assert a.last_job_id == "j1"
    assert a.snoozed_until is None


def test_an_overdue_alert_is_caused_by_the_last_success() -> None:
    jobs = history("finished", newest_hours_ago=40)
    [t] = transition(KEY, None, judge(jobs, RULES, NOW), NOW)
    assert t.change == "opened"
    assert (t.alert.reason, t.alert.severity) == ("overdue", "critical")
    assert t.job == jobs[0]
    assert t.alert.last_job_id == "j0"


def test_nothing_to_open_and_nothing_open_is_no_transition() -> None:
    assert transition(KEY, None, judge(history("finished"), RULES, NOW), NOW) == []
    assert transition(KEY, None, judge([], RULES, NOW), NOW) == []


def test_counters_that_move_without_a_new_severity_update_silently() -> None:
    current = opened_alert()
    jobs = history("failed", "failed")
    [t] = transition(KEY, current, judge(jobs, RULES, NOW), NOW)
    assert t.change is None
    assert t.alert.consecutive_failures == 2
    assert t.alert.first_failure_at == jobs[0].start
    assert t.alert.last_failure_at == jobs[1].start
    assert t.alert.last_job_id == "j1"
    assert t.alert.severity == "warning"
    assert t.alert.opened_at == current.opened_at


def test_an_unchanged_judgement_moves_nothing() -> None:
    jobs = history("failed", "failed")
    [t] = transition(KEY, None, judge(jobs, RULES, NOW), NOW)
    later = NOW + timedelta(hours=1)
    assert transition(KEY, t.alert, judge(jobs, RULES, later), later) == []


def test_a_rising_severity_is_an_updated_event() -> None:
    current = replace(opened_alert(), consecutive_failures=2)
    jobs = history("failed", "failed", "failed")
    [t] = transition(KEY, current, judge(jobs, RULES, NOW), NOW)
    assert t.change == "updated"
    assert t.previous_severity == "warning"
    assert t.alert.severity == "critical"
    assert t.alert.consecutive_failures == 3
    assert t.job == jobs[2]
    assert t.alert.state == "open"
    assert t.alert.opened_at == current.opened_at


def test_severity_never_falls_while_the_alert_stays_open() -> None:
    current = replace(opened_alert(), severity="critical", consecutive_failures=3)
    # Older failures were purged: what is left says "warning", the alert stays critical.
    [t] = transition(KEY, current, judge(history("failed"), RULES, NOW), NOW)
    assert t.change is None
    assert t.alert.severity == "critical"
    assert t.alert.consecutive_failures == 1


def test_the_reason_is_kept_while_open() -> None:
    overdue = history("finished", newest_hours_ago=40)
    [opened] = transition(KEY, None, judge(overdue, RULES, NOW), NOW)
    assert opened.alert.reason == "overdue"
    later = NOW + timedelta(hours=1)
    jobs = [*overdue, KeyJob("late-failure", "failed", NOW)]
    [t] = transition(KEY, opened.alert, judge(jobs, RULES, later), later)
    assert t.change is None
    assert t.alert.reason == "overdue"
    assert t.alert.severity == "critical"
    assert t.alert.consecutive_failures == 1
    assert t.alert.last_job_id == "late-failure"


def test_a_success_resolves_the_alert() -> None:
    current = replace(opened_alert(), severity="critical", consecutive_failures=3)
    jobs = history("failed", "failed", "failed", "finished")
    [t] = transition(KEY, current, judge(jobs, RULES, NOW), NOW)
    assert t.change == "resolved"
    assert t.job == jobs[3]
    a = t.alert
    assert a.state == "resolved"
    assert a.resolved_at == NOW
    assert a.opened_at == current.opened_at
    assert a.consecutive_failures == 0
    assert a.first_failure_at is None
    assert a.last_failure_at is None
    assert a.last_success_at == jobs[3].start
    assert a.last_job_id == "j3"
    assert a.reason == current.reason
    assert a.severity == "critical"


def test_an_alert_whose_jobs_vanished_is_left_alone() -> None:
    current = opened_alert()
    assert transition(KEY, current, judge([], RULES, NOW), NOW) == []
    # Only uncounted jobs left: the same.
    left = [KeyJob("c", "canceled", NOW)]
    assert transition(KEY, current, judge(left, RULES, NOW), NOW) == []


def test_an_overdue_alert_names_its_last_success_whatever_the_latest_job() -> None:
    # `judge` makes an overdue key's latest finished job its last success, so only a
    # judgement built here can tell the two apart: the cause an overdue alert names (its
    # event's job, `last_job_id`) is the last success, by `transition`'s own rule.
    jobs = history("finished", newest_hours_ago=40)
    later = KeyJob("later", "failed", hours_ago(1))
    judgement = replace(judge(jobs, RULES, NOW), latest=later)
    assert judgement.reason == "overdue"
    [t] = transition(KEY, None, judgement, NOW)
    assert t.job == jobs[0]
    assert t.alert.last_job_id == "j0"


# -- snoozes ----------------------------------------------------------------------------------


def test_a_snooze_mutes_until_its_time_and_not_after() -> None:
    alert = opened_alert(snoozed_until=NOW)
    assert alert.snoozed(NOW - timedelta(hours=1)) is True
    assert alert.snoozed(NOW - timedelta(seconds=1)) is True
    # `until` is the first moment it speaks again; and a snooze that ran out stays out.
    assert alert.snoozed(NOW) is False
    assert alert.snoozed(NOW + timedelta(seconds=1)) is False
    assert alert.snoozed(NOW + timedelta(days=30)) is False


def test_a_snooze_stays_on_the_alert_through_its_changes() -> None:
    # The alert an event carries is the alert /alerts lists: a snooze is the user's, and no
    # new failure, rise in severity or resolution drops it from what is told.
    until = NOW + timedelta(days=1)
    current = opened_alert(snoozed_until=until, snooze_reason="planned maintenance")
    histories = {
        None: history("failed", "failed"),
        "updated": history("failed", "failed", "failed"),
        "resolved": history("failed", "finished"),
    }
    for change, jobs in histories.items():
        [t] = transition(KEY, current, judge(jobs, RULES, NOW), NOW)
        assert t.change == change
        assert (t.alert.snoozed_until, t.alert.snooze_reason) == (until, "planned maintenance")


def test_an_alert_never_snoozed_is_not_muted() -> None:
    alert = opened_alert()
    assert alert.snoozed_until is None
    assert alert.snoozed(NOW) is False


# -- grouping the stored jobs by key ------------------------------------------------------------


def test_jobs_are_grouped_by_job_type_and_module() -> None:
    rows = [
        ("microsoft_365", "exchange_online", "a", "failed", hours_ago(3)),
        ("microsoft_365", "onedrive", "b", "finished", hours_ago(2)),
        ("microsoft_365", "exchange_online", "c", "finished", hours_ago(1)),
        ("salesforce", "exchange_online", "d", "failed", hours_ago(1)),
    ]
    assert group_by_key(rows) == {
        ("microsoft_365", "exchange_online"): [
            KeyJob("a", "failed", hours_ago(3)),
            KeyJob("c", "finished", hours_ago(1)),
        ],
        ("microsoft_365", "onedrive"): [KeyJob("b", "finished", hours_ago(2))],
        ("salesforce", "exchange_online"): [KeyJob("d", "failed", hours_ago(1))],
    }


def test_a_job_without_a_start_time_is_left_out_and_the_jobs_after_it_still_count() -> None:
    rows = [
        ("microsoft_365", "exchange_online", "a", "failed", hours_ago(3)),
        ("microsoft_365", "exchange_online", "no-start", "failed", None),
        ("microsoft_365", "exchange_online", "c", "finished", hours_ago(1)),
        ("microsoft_365", "onedrive", "d", "failed", hours_ago(1)),
    ]
    keys = group_by_key(rows)
    assert keys == {
        ("microsoft_365", "exchange_online"): [
            KeyJob("a", "failed", hours_ago(3)),
            KeyJob("c", "finished", hours_ago(1)),
        ],
        ("microsoft_365", "onedrive"): [KeyJob("d", "failed", hours_ago(1))],
    }
    # What a user sees: the success after the job with no start resolves the key, and the
    # other key's failure opens its alert.
    assert judge(keys[("microsoft_365", "exchange_online")], RULES, NOW).open is False
    assert judge(keys[("microsoft_365", "onedrive")], RULES, NOW).open is True


# -- properties -------------------------------------------------------------------------------

statuses = st.sampled_from(STATUS_NAMES)
# Start times on a coarse grid, so ties (broken by job id) happen often.
offsets = st.integers(min_value=0, max_value=48)


@st.composite
def key_jobs(draw: st.DrawFn, max_size: int = 25) -> list[KeyJob]:
    drawn = draw(st.lists(st.tuples(statuses, offsets), max_size=max_size))
    return [
        KeyJob(f"job-{i:03d}", status, NOW - timedelta(hours=offset))
        for i, (status, offset) in enumerate(drawn)
    ]


def in_time_order(jobs: list[KeyJob]) -> list[KeyJob]:
    return sorted(jobs, key=lambda j: (j.start, j.job_id))


def trailing_failures(jobs: list[KeyJob]) -> list[KeyJob]:
    """The model: the failures after the last success, in time order."""
    run: list[KeyJob] = []
    for job in in_time_order(jobs):
        if job.status == "finished":
            run = []
        elif job.status in FAILURES:
            run.append(job)
    return run


NO_OVERDUE = Rules(FAILURES, overdue_hours=0)


@given(key_jobs())
def test_consecutive_failures_are_the_trailing_run_before_the_last_success(
    jobs: list[KeyJob],
) -> None:
    judgement = judge(jobs, NO_OVERDUE, NOW)
    run = trailing_failures(jobs)
    assert judgement.consecutive_failures == len(run)
    assert judgement.first_failure_at == (run[0].start if run else None)
    assert judgement.last_failure_at == (run[-1].start if run else None)
    successes = [j for j in in_time_order(jobs) if j.status == "finished"]
    assert judgement.last_success_at == (successes[-1].start if successes else None)
    assert judgement.open is bool(run)
    counted = [j for j in in_time_order(jobs) if j.status in FAILURES | {"finished"}]
    assert judgement.latest == (counted[-1] if counted else None)
    if counted and counted[-1].status in FAILURES:
        assert judgement.reason == "failed"
        assert (judgement.severity == "critical") is (len(run) >= 3)
        assert (judgement.severity == "warning") is (len(run) < 3)
    else:
        assert judgement.severity is None


@given(key_jobs(), st.randoms(use_true_random=False))
def test_the_order_jobs_are_listed_in_does_not_matter(jobs: list[KeyJob], rnd: Any) -> None:
    shuffled = list(jobs)
    rnd.shuffle(shuffled)
    assert judge(shuffled, RULES, NOW) == judge(jobs, RULES, NOW)


@given(
    st.floats(min_value=0, max_value=24 * 30, allow_nan=False),
    st.integers(min_value=0, max_value=24 * 10),
)
def test_a_key_whose_last_finished_job_succeeded_is_overdue_only_past_overdue_hours(
    hours_since: float, overdue_hours: int
) -> None:
    rules = Rules(FAILURES, overdue_hours=overdue_hours)
    jobs = [KeyJob("a", "failed", NOW - timedelta(days=60)), KeyJob("b", "finished", NOW)]
    at = NOW + timedelta(hours=hours_since)
    judgement = judge(jobs, rules, at)
    overdue = overdue_hours > 0 and at - NOW > timedelta(hours=overdue_hours)
    assert judgement.open is overdue
    assert judgement.reason == ("overdue" if overdue else None)
    assert judgement.severity == ("critical" if overdue else None)


@given(key_jobs(), st.integers(min_value=0, max_value=24 * 30))
def test_an_overdue_key_names_its_last_success_as_the_cause(
    jobs: list[KeyJob], hours_later: int
) -> None:
    now = NOW + timedelta(hours=hours_later)
    judgement = judge(jobs, RULES, now)
    if judgement.reason != "overdue":
        return
    successes = [j for j in in_time_order(jobs) if j.status == "finished"]
    assert judgement.last_success == successes[-1]
    assert judgement.latest == successes[-1]  # overdue: nothing finished after it
    [t] = transition(KEY, None, judgement, now)
    assert t.job == successes[-1]
    assert t.alert.last_job_id == successes[-1].job_id


def replay(jobs: list[KeyJob], rules: Rules) -> list[Transition]:
    """Feed a key's jobs in time order, one refresh per job, as the gateway would see them;
    gives every transition with an event, and checks the open alert as it goes."""
    current: AlertState | None = None
    told: list[Transition] = []
    seen: list[KeyJob] = []
    for job in in_time_order(jobs):
        seen.append(job)
        now = job.start + timedelta(minutes=30)
        judgement = judge(seen, rules, now)
        for t in transition(KEY, current, judgement, now):
            if current is not None and t.change != "resolved":
                # While open: severity only grows, the reason and opening stay.
                assert t.alert.severity in (current.severity, "critical")
                assert t.alert.reason == current.reason
                assert t.alert.opened_at == current.opened_at
            current = None if t.alert.state == "resolved" else t.alert
            if t.change is not None:
                told.append(t)
        assert (current is not None) is judgement.open
        if current is not None:
            assert current.consecutive_failures == judgement.consecutive_failures
    return told


def alternates(told: list[Transition]) -> bool:
    """Checks opened / updated / resolved follow each other as a ticket's life can; gives
    whether an alert is open at the end."""
    is_open = False
    for t in told:
        if t.change == "opened":
            assert not is_open, "opened twice without a resolution"
            is_open = True
        elif t.change == "resolved":
            assert is_open, "resolved what was not open"
            is_open = False
        else:
            assert t.change == "updated"
            assert is_open
            assert (t.previous_severity, t.alert.severity) == ("warning", "critical")
    return is_open


@given(key_jobs(max_size=40))
def test_replaying_a_history_never_opens_twice_without_resolving_in_between(
    jobs: list[KeyJob],
) -> None:
    told = replay(jobs, NO_OVERDUE)
    is_open = alternates(told)
    # One opening per run of failures between successes.
    counted = [j.status for j in in_time_order(jobs) if j.status in FAILURES | {"finished"}]
    runs = [
        i
        for i, s in enumerate(counted)
        if s != "finished" and (i == 0 or counted[i - 1] == "finished")
    ]
    assert [t.change for t in told].count("opened") == len(runs)
    assert is_open is (bool(counted) and counted[-1] != "finished")
    # An opening tells the job that failed; a resolution the success that ended it.
    for t in told:
        assert t.job is not None
        if t.change == "opened":
            assert t.job.status in FAILURES
        if t.change == "resolved":
            assert t.job.status == "finished"


@st.composite
def sparse_jobs(draw: st.DrawFn) -> list[KeyJob]:
    """Jobs up to four days apart, so that keys fall silent past OVERDUE_HOURS."""
    drawn = draw(
        st.lists(st.tuples(statuses, st.integers(min_value=0, max_value=24 * 4)), max_size=30)
    )
    start = NOW - timedelta(days=200)
    jobs = []
    for i, (status, gap) in enumerate(drawn):
        start += timedelta(hours=gap)
        jobs.append(KeyJob(f"job-{i:03d}", status, start))
    return jobs


@given(sparse_jobs())
def test_with_overdue_on_an_alert_still_opens_once_at_a_time(jobs: list[KeyJob]) -> None:
    told = replay(jobs, RULES)
    alternates(told)
    for t in told:
        if t.change == "opened" and t.alert.reason == "overdue":
            assert t.alert.severity == "critical"
            assert t.job is not None and t.job.status == "finished"
