"""Alert rules: from one key's finished jobs, what its alert should be. Pure functions.

An alert covers one customer + job type + module; its `alert_key` is
`customer_id:job_type:module` (names), the external id a PSA keeps for its ticket.

- The jobs that count are the key's *finished* ones: status `finished`, or a status of
  `ALERT_STATUSES` (a failure). Others (`canceled`, `skipped`, ...) change nothing, and
  `running`, `pending` and the like have not finished.
- The latest finished job (by start time, then job id) decides:
  - a failure: the alert is open (reason `failed`);
  - `finished`: the alert is resolved, unless that success started more than
    `OVERDUE_HOURS` ago, when it is open (reason `overdue`: the key used to finish well and
    has not for that long).
- `consecutive_failures` counts the failures since the last success; `severity` is
  `warning` at the first failure and `critical` from the third, or when overdue. While an
  alert stays open its severity only grows, and its reason stays the one it opened with.
- An object with an expectation (`app.expectations`) is judged by it instead of
  `OVERDUE_HOURS`: the store opens its alert with reason `no_result` (critical) once its
  next result is more than the grace late (`late`).

Times of failures and successes are the jobs' start times.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

FINISHED = "finished"
CRITICAL_FROM = 3
"""Consecutive failures from which an alert is critical."""

Reason = Literal["failed", "overdue", "no_result"]
Severity = Literal["warning", "critical"]
_RANK = {"warning": 0, "critical": 1}


def alert_key(customer_id: str, job_type: str, module: str) -> str:
    return f"{customer_id}:{job_type}:{module}"


@dataclass(frozen=True, slots=True)
class Rules:
    """What opens an alert (`ALERT_STATUSES`) and when silence does (`OVERDUE_HOURS`)."""

    statuses: frozenset[str]
    overdue_hours: float = 36

    @property
    def counted(self) -> frozenset[str]:
        """The statuses of finished jobs: a failure or `finished`."""
        return self.statuses | {FINISHED}

    def is_overdue(self, last_success: datetime | None, now: datetime) -> bool:
        return (
            self.overdue_hours > 0
            and last_success is not None
            and now - last_success > timedelta(hours=self.overdue_hours)
        )


@dataclass(frozen=True, slots=True)
class KeyJob:
    """One finished job of a key: enough to judge it."""

    job_id: str
    status: str
    start: datetime


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a key's finished jobs say, whatever its alert says now."""

    open: bool
    reason: Reason | None
    severity: Severity | None
    consecutive_failures: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    latest: KeyJob | None  # the latest finished job
    last_success: KeyJob | None


def judge(
    jobs: Iterable[KeyJob],
    rules: Rules,
    now: datetime,
    *,
    expected: bool = False,
    late: bool = False,
) -> Judgement:
    """The state a key's finished jobs (any order; others are ignored) put its alert in.
    With an expectation (`expected`), "no result" (`late`) replaces the overdue rule."""
    counted = sorted(
        (j for j in jobs if j.status in rules.counted),
        key=lambda j: (j.start, j.job_id),
        reverse=True,
    )
    failures: list[KeyJob] = []
    success: KeyJob | None = None
    for job in counted:
        if job.status == FINISHED:
            success = job
            break
        failures.append(job)
    latest = counted[0] if counted else None
    last_success_at = success.start if success else None
    common = {
        "consecutive_failures": len(failures),
        "first_failure_at": failures[-1].start if failures else None,
        "last_failure_at": failures[0].start if failures else None,
        "last_success_at": last_success_at,
        "latest": latest,
        "last_success": success,
    }
    if failures:
        severity: Severity = "critical" if len(failures) >= CRITICAL_FROM else "warning"
        return Judgement(True, "failed", severity, **common)  # type: ignore[arg-type]
    if expected:
        if late:
            return Judgement(True, "no_result", "critical", **common)  # type: ignore[arg-type]
    elif rules.is_overdue(last_success_at, now):
        return Judgement(True, "overdue", "critical", **common)  # type: ignore[arg-type]
    return Judgement(False, None, None, **common)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AlertState:
    """An alert as stored (the fields the rules move)."""

    alert_key: str
    customer_id: str
    job_type: str
    module: str
    state: Literal["open", "resolved"]
    reason: Reason
    severity: Severity
    opened_at: datetime
    resolved_at: datetime | None
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    consecutive_failures: int
    last_success_at: datetime | None
    last_job_id: str | None
    snoozed_until: datetime | None = None
    snooze_reason: str | None = None
    id: int | None = None

    def snoozed(self, now: datetime) -> bool:
        return self.snoozed_until is not None and now < self.snoozed_until


Change = Literal["opened", "updated", "resolved"]


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a key's alert: the event type it tells, the alert after it, the job that
    caused it, and the severity before (for `updated`)."""

    change: Change | None  # None: fields moved, but nothing worth an event
    alert: AlertState
    job: KeyJob | None
    previous_severity: Severity | None = None


def transition(
    key: tuple[str, str, str],
    current: AlertState | None,
    judgement: Judgement,
    now: datetime,
) -> list[Transition]:
    """How the key's open alert (`current`, or None) follows its judgement; [] when nothing
    moves. `key` is (customer_id, job_type, module)."""
    j = judgement
    if current is None:
        if not j.open:
            return []
        assert j.reason is not None and j.severity is not None
        customer_id, job_type, module = key
        cause = j.last_success if j.reason == "overdue" else j.latest
        opened = AlertState(
            alert_key=alert_key(*key),
            customer_id=customer_id,
            job_type=job_type,
            module=module,
            state="open",
            reason=j.reason,
            severity=j.severity,
            opened_at=now,
            resolved_at=None,
            last_job_id=cause.job_id if cause else None,
            first_failure_at=j.first_failure_at,
            last_failure_at=j.last_failure_at,
            consecutive_failures=j.consecutive_failures,
            last_success_at=j.last_success_at,
        )
        return [Transition("opened", opened, cause)]
    if not j.open:
        if j.latest is None:  # the key's jobs are gone (purged): leave the alert be
            return []
        resolved = replace(
            _counted(current, j), state="resolved", resolved_at=now, last_job_id=j.latest.job_id
        )
        return [Transition("resolved", resolved, j.latest)]
    severity = current.severity
    if j.severity is not None and _RANK[j.severity] > _RANK[severity]:
        severity = j.severity
    last_job = j.latest.job_id if j.latest else current.last_job_id
    moved = replace(_counted(current, j), severity=severity, last_job_id=last_job)
    if moved == current:
        return []
    if severity != current.severity:
        return [Transition("updated", moved, j.latest, previous_severity=current.severity)]
    return [Transition(None, moved, j.latest)]


def held(transitions: list[Transition], muted: bool) -> list[Transition]:
    """What of a key's transitions happens while its customer is muted (a maintenance
    window): no alert opens or escalates; counters move and resolutions go through. What
    was held back happens at the first judgement after the window (the sweep)."""
    if not muted:
        return transitions
    return [t for t in transitions if t.change not in ("opened", "updated")]


def _counted(alert: AlertState, j: Judgement) -> AlertState:
    """`alert` with the judgement's counters."""
    return replace(
        alert,
        first_failure_at=j.first_failure_at,
        last_failure_at=j.last_failure_at,
        consecutive_failures=j.consecutive_failures,
        last_success_at=j.last_success_at,
    )


def group_by_key(
    rows: Iterable[tuple[str, str, str, str, datetime | None]],
) -> dict[tuple[str, str], list[KeyJob]]:
    """(job_type, module, job_id, status, start) rows -> each key's jobs."""
    keys: dict[tuple[str, str], list[KeyJob]] = {}
    for job_type, module, job_id, status, start in rows:
        if start is None:  # no start time: cannot be placed in time, so it does not count
            continue
        keys.setdefault((job_type, module), []).append(KeyJob(job_id, status, start))
    return keys
