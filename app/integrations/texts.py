"""What a ticket says: its external reference, summary and description, and a job in one
line for notes. Plain text: ConnectWise shows notes as they are written."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from app.alert_rules import AlertState
from app.clock import iso
from app.store.repo import JobRow


def ticket_ref(alert: AlertState) -> str:
    """The external reference of an alert's ticket: the alert's id and when it opened (an id
    alone could come back after a purge on SQLite), and its key for the people who read it,
    cut to ConnectWise's 100 characters."""
    opened = int(alert.opened_at.timestamp())
    return f"jobs-gateway:{alert.id}:{opened}:{alert.alert_key}"[:100]


def summary_of(alert: AlertState, customer_name: str | None = None) -> str:
    """At most 100 characters, naming the customer (by name when known), the job type and
    the module; a long customer name gives way first."""
    tail = f": {alert.job_type} / {alert.module}"
    head = "Backups failing for "
    room = 100 - len(head) - len(tail)
    customer = customer_name or alert.customer_id
    if len(customer) > room:
        customer = customer[: max(room - 1, 0)] + "…"
    return (head + customer + tail)[:100]


def description_of(alert: AlertState, job: JobRow | None, board_url: str | None) -> str:
    """The ticket's first text: the alert, and the failing job."""
    customer = alert.customer_id
    if job is not None and job.customer_name:
        customer = f"{job.customer_name} ({alert.customer_id})"
    lines = [
        f"Jobs Gateway opened this ticket for alert {alert.alert_key}.",
        f"Customer: {customer}",
        f"Job type: {alert.job_type}; module: {alert.module}",
        f"Reason: {alert.reason}; severity: {alert.severity}",
        f"Consecutive failures: {alert.consecutive_failures}",
        f"First failure: {iso(alert.first_failure_at) or '-'}; "
        f"last failure: {iso(alert.last_failure_at) or '-'}",
        f"Last success: {iso(alert.last_success_at) or 'none seen'}",
    ]
    if job is not None:
        lines.append(job_line(job))
    if board_url:
        lines.append(f"On the board: {board_link(alert, board_url)}")
    return "\n".join(lines)


def board_link(alert: AlertState, board_url: str) -> str:
    """The board's page of the alert's customer, showing its object (`board_url` is the
    board's root, from PUBLIC_URL)."""
    customer = quote(alert.customer_id, safe="")
    kind = urlencode({"job_type": alert.job_type, "module": alert.module})
    return f"{board_url.rstrip('/')}/customers/{customer}?{kind}"


def job_line(job: JobRow) -> str:
    """A job in one line: its id, name, status, times and counts."""
    parts = [f"Job {job.job_id}"]
    if job.name:
        parts.append(f"name {job.name!r}")
    parts.append(f"status {job.status}")
    if job.start_time is not None:
        parts.append(f"started {iso(job.start_time)}")
    if job.end_time is not None:
        parts.append(f"ended {iso(job.end_time)}")
    if job.duration_seconds is not None:
        parts.append(f"took {job.duration_seconds} s")
    counts = {
        "total": job.total_count,
        "failed": job.failed_count,
        "successful": job.successful_count,
        "skipped": job.skipped_count,
        "warning": job.warning_count,
    }
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None)
    if shown:
        parts.append(f"items: {shown}")
    return "; ".join(parts)
