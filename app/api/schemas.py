"""The API's shapes (pydantic), separate from the tables: what clients build on."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.api.times import BodyTime
from app.clock import iso

UtcTime = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str, when_used="json"),
    Field(json_schema_extra={"example": "2025-09-11T03:21:16Z"}),
]


class ErrorBody(BaseModel):
    error: str = Field(
        description="A short machine word: unauthorized, not_found, invalid_parameter, ..."
    )
    detail: str = Field(description="What went wrong and how to fix it.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "invalid_parameter",
                "detail": "status: unknown value 'broken'; allowed: running, finished, failed, ...",
            }
        }
    )


class Counts(BaseModel):
    total: int | None
    failed: int | None
    successful: int | None
    skipped: int | None
    warning: int | None


class Job(BaseModel):
    id: str = Field(description="`<customer_id>:<job_id>`, unique across customers.")
    customer_id: str
    customer_name: str | None
    job_id: str
    name: str | None
    job_type: str
    job_type_code: int | None
    module: str
    module_code: int | None
    status: str
    status_code: int | None
    counts: Counts
    backup_size_bytes: int | None = Field(description="Bytes, 1 KB = 1024 B.")
    start_time: UtcTime | None
    end_time: UtcTime | None
    duration_seconds: int | None
    last_modified: UtcTime | None
    fetched_at: UtcTime = Field(
        description=(
            "When the gateway fetched the job as shown (a refresh that finds it unchanged does "
            "not rewrite it); `freshness` and `sources` say how current each customer is."
        )
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3:FB20250911032116214502",
                "customer_id": "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3",
                "customer_name": "Contoso",
                "job_id": "FB20250911032116214502",
                "name": None,
                "job_type": "microsoft_365",
                "job_type_code": 7,
                "module": "microsoft_365_groups",
                "module_code": 304,
                "status": "failed",
                "status_code": 3,
                "counts": {
                    "total": 2323,
                    "failed": 0,
                    "successful": 2323,
                    "skipped": 0,
                    "warning": 0,
                },
                "backup_size_bytes": 0,
                "start_time": "2025-09-11T03:21:16Z",
                "end_time": "2025-09-11T03:38:56Z",
                "duration_seconds": 1059,
                "last_modified": "2025-09-11T03:38:57Z",
                "fetched_at": "2026-11-29T08:00:00Z",
            }
        }
    )


class SourceErrorBody(BaseModel):
    kind: str = Field(
        description=(
            "timeout, connection, http_status, rate_limited, auth, malformed, circuit_open "
            "(the upstream failed for every customer: not asked until the breaker's next try), ..."
        )
    )
    message: str
    upstream_status: int | None


class Source(BaseModel):
    customer_id: str
    state: Literal["fresh", "stale", "refreshing", "error"]
    fetched_at: UtcTime | None = Field(
        description="When this customer's last good snapshot was taken."
    )
    age_seconds: int | None
    error: SourceErrorBody | None


class FreshnessSummary(BaseModel):
    """How current the whole answer is, over every customer the request covered."""

    customers: int = Field(description="Customers the request covered.")
    fresh: int
    stale: int
    refreshing: int
    error: int
    oldest_fetched_at: UtcTime | None = Field(
        description="The oldest snapshot any part of the answer comes from."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "customers": 12,
                "fresh": 11,
                "stale": 1,
                "refreshing": 0,
                "error": 0,
                "oldest_fetched_at": "2026-11-29T07:55:00Z",
            }
        }
    )


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )
    freshness: FreshnessSummary
    sources: list[Source] = Field(
        description=(
            "Only the customers whose part of the answer is not fresh: an empty list means a "
            "complete, fresh answer."
        )
    )


class HistoryEntry(BaseModel):
    status: str
    status_code: int | None
    previous_status: str | None
    previous_status_code: int | None
    at: UtcTime


class JobDetail(Job):
    history: list[HistoryEntry] = Field(description="The job's status changes, oldest first.")
    source: Source


class Customer(BaseModel):
    customer_id: str
    customer_name: str | None = Field(description="The upstream's `organization`.")
    source: Source
    counts: dict[str, int] = Field(description="Jobs by status name.")


class CustomerPage(BaseModel):
    items: list[Customer]
    next_cursor: str | None


class EnumEntry(BaseModel):
    code: int
    name: str
    label: str


class Enums(BaseModel):
    status: list[EnumEntry]
    job_type: list[EnumEntry]
    module: list[EnumEntry]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


class CursorExpiredBody(ErrorBody):
    """The change feed's 410: events after the cursor were purged by retention."""

    oldest_cursor: str = Field(
        description=(
            "Pass as `after` to read on from the oldest event kept; what happened meanwhile "
            "is in GET /alerts and GET /jobs."
        )
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "cursor_expired",
                "detail": (
                    "after: events after 1200 were purged by retention (RETENTION_DAYS), up "
                    "to 5310; ..."
                ),
                "oldest_cursor": "5310",
            }
        }
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error envelope at the given statuses."""
    descriptions = {
        304: "Not modified: the answer's ETag matches If-None-Match.",
        401: "No valid API key (Authorization: Bearer <key> or X-API-Key).",
        404: "Not found.",
        409: "The request conflicts with the resource's state: the detail says how.",
        413: "The request body is larger than the API takes.",
        410: (
            "The cursor is older than what retention kept: events after it were purged. "
            "`oldest_cursor` is where to read on from."
        ),
        414: "The query string is longer than the API takes.",
        422: "A bad parameter: the detail names it (and lists allowed values for enums).",
        429: "Past the key's rate limit: Retry-After says when to come back.",
        503: (
            "`database_unavailable`: the answer needs the database and it cannot be reached "
            "(the detail names it, never its credentials; answers kept in memory are still "
            "served). `unavailable`: the customer list could not be had from the upstream. "
            "Retry-After says when to ask again."
        ),
    }
    out: dict[int | str, dict[str, Any]] = {}
    if 401 in statuses:  # what needs a key is also counted against the key's rate limit
        statuses = (*statuses, 414, 429)
    for status in sorted(set(statuses)):
        if status == 304:
            out[status] = {"description": descriptions[status]}
        elif status == 410:
            out[status] = {"model": CursorExpiredBody, "description": descriptions[status]}
        else:
            out[status] = {"model": ErrorBody, "description": descriptions[status]}
        if status == 503:
            out[status]["headers"] = {
                "Retry-After": {
                    "description": "Seconds until the request may work again.",
                    "schema": {"type": "integer"},
                }
            }
    return out


# -- the change feed, alerts and webhooks ---------------------------------------------------

EventType = Literal[
    "job.created",
    "job.status_changed",
    "alert.opened",
    "alert.updated",
    "alert.resolved",
    "object.no_result",
    "object.recovered",
]
AlertStateName = Literal["open", "resolved"]


class Alert(BaseModel):
    """One problem of one customer + job type + module."""

    alert_key: str = Field(
        description="`customer_id:job_type:module`: keep it as the ticket's external id."
    )
    customer_id: str
    job_type: str
    module: str
    state: AlertStateName
    reason: Literal["failed", "overdue", "no_result"]
    severity: Literal["warning", "critical"]
    snoozed_until: UtcTime | None = Field(description="Muted for webhooks and health until then.")
    snooze_reason: str | None
    opened_at: UtcTime
    resolved_at: UtcTime | None
    first_failure_at: UtcTime | None = Field(
        description="Start of the first failure since the last success."
    )
    last_failure_at: UtcTime | None
    consecutive_failures: int
    last_success_at: UtcTime | None = Field(description="Start of the key's last success.")
    last_job_id: str | None = Field(description="The job that last moved the alert.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "alert_key": "caf9d1f2-5ea3:microsoft_365:exchange_online",
                "customer_id": "caf9d1f2-5ea3",
                "job_type": "microsoft_365",
                "module": "exchange_online",
                "state": "open",
                "reason": "failed",
                "severity": "critical",
                "snoozed_until": None,
                "snooze_reason": None,
                "opened_at": "2026-11-28T03:40:00Z",
                "resolved_at": None,
                "first_failure_at": "2026-11-28T03:21:16Z",
                "last_failure_at": "2026-11-29T03:20:02Z",
                "consecutive_failures": 3,
                "last_success_at": "2026-11-27T03:22:41Z",
                "last_job_id": "FB20261129032002000104",
            }
        }
    )


class AlertPage(BaseModel):
    items: list[Alert]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Snooze(BaseModel):
    until: BodyTime = Field(
        description=(
            "RFC 3339 with an offset or Z, as a string. Muted until then; a time in the past "
            "lifts the snooze."
        )
    )
    reason: str | None = Field(None, max_length=500, description="Why, for the next person.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"until": "2030-01-01T00:00:00Z", "reason": "mailbox decommissioned"}
        },
    )


class EventJob(BaseModel):
    job_id: str
    status: str
    start_time: UtcTime | None
    name: str | None = None
    job_type: str | None = None
    module: str | None = None


class Event(BaseModel):
    """One change, told once, in order."""

    id: int = Field(description="Grows with every event and is never reused.")
    type: EventType
    at: UtcTime = Field(description="When the gateway recorded the change.")
    customer_id: str
    job_id: str | None
    alert_key: str | None = Field(description="The key of the job or alert the event is about.")
    data: dict[str, Any] = Field(
        description=(
            "`job`: the job (job.*); `from`, `to`: statuses (job.status_changed); "
            "`alert` and `job`, the job that caused it (alert.*); `previous_severity` "
            "(alert.updated); `object` and `since` (object.no_result, object.recovered)."
        )
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 1842,
                "type": "job.status_changed",
                "at": "2026-11-29T03:40:05Z",
                "customer_id": "caf9d1f2-5ea3",
                "job_id": "FB20261129032002000104",
                "alert_key": "caf9d1f2-5ea3:microsoft_365:exchange_online",
                "data": {
                    "from": "running",
                    "to": "failed",
                    "job": {
                        "job_id": "FB20261129032002000104",
                        "name": "Exchange Online backup",
                        "job_type": "microsoft_365",
                        "module": "exchange_online",
                        "status": "failed",
                        "start_time": "2026-11-29T03:20:02Z",
                    },
                },
            }
        }
    )


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str = Field(description="Pass as `after` next time (also when no items came).")


class Delivery(BaseModel):
    id: int
    event_id: int
    event_type: EventType
    url: str = Field(
        description=(
            "The receiver's origin, `scheme://host[:port]`: never its path, query or "
            "credentials, which often carry a token."
        )
    )
    alert_key: str | None
    customer_id: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: UtcTime
    next_attempt_at: UtcTime | None = Field(description="When it is tried next (pending).")
    deadline_at: UtcTime = Field(description="Retried until then, then failed.")
    last_attempt_at: UtcTime | None
    last_status: int | None = Field(description="The receiver's last HTTP status.")
    last_error: str | None = Field(
        description=(
            "Why the last attempt failed; `receiver_removed`: the receiver left WEBHOOK_URLS "
            "and the delivery was failed at start-up."
        )
    )
    delivered_at: UtcTime | None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": 311,
                "event_id": 1843,
                "event_type": "alert.opened",
                "url": "https://psa.example.com",
                "alert_key": "caf9d1f2-5ea3:microsoft_365:exchange_online",
                "customer_id": "caf9d1f2-5ea3",
                "state": "pending",
                "attempts": 2,
                "created_at": "2026-11-29T03:40:05Z",
                "next_attempt_at": "2026-11-29T03:40:31Z",
                "deadline_at": "2026-11-30T03:40:05Z",
                "last_attempt_at": "2026-11-29T03:40:12Z",
                "last_status": 503,
                "last_error": "the receiver answered 503",
                "delivered_at": None,
            }
        }
    )


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None


# -- summaries and refresh runs ---------------------------------------------------------------


class SummaryItem(BaseModel):
    key: str = Field(description="The customer id, or the status, job type or module name.")
    label: str | None = Field(description="The customer's name, or the catalog's label.")
    counts: dict[str, int] = Field(description="Jobs by status name.")
    total: int
    last_success_at: UtcTime | None = Field(description="Start of the last `finished` job.")
    hours_since_success: float | None
    success_rate_7d: float | None = Field(
        description=(
            "`finished` over finished jobs (finished or failed by ALERT_STATUSES) that started "
            "in the last 7 days; null when there were none."
        )
    )
    health: int | None = Field(
        None, description="0..100, customers only: see the README for the formula."
    )
    open_alerts: dict[str, int] | None = Field(
        None, description="Customers only: open alerts not snoozed, by severity."
    )
    freshness: FreshnessSummary | None = Field(None, description="Customers only: this one's.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "key": "caf9d1f2-5ea3",
                "label": "Contoso",
                "counts": {"failed": 3, "finished": 41, "running": 1},
                "total": 45,
                "last_success_at": "2026-11-29T02:28:27Z",
                "hours_since_success": 5.5,
                "success_rate_7d": 0.9318,
                "health": 67,
                "open_alerts": {"critical": 1, "warning": 0},
                "freshness": {
                    "customers": 1,
                    "fresh": 1,
                    "stale": 0,
                    "refreshing": 0,
                    "error": 0,
                    "oldest_fetched_at": "2026-11-29T07:58:00Z",
                },
            }
        }
    )


class SummaryPage(BaseModel):
    group_by: Literal["customer", "status", "job_type", "module"]
    items: list[SummaryItem]
    next_cursor: None = Field(None, description="Always null: a summary is one page.")
    freshness: FreshnessSummary
    sources: list[Source]


class RefreshRequest(BaseModel):
    customer_ids: list[str] | None = Field(
        None, description="The customers to refresh; null or absent: every customer."
    )

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {}})


class RefreshStarted(BaseModel):
    run_id: str
    state: Literal["running", "done"]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"run_id": "9f0c5e7a6b2d4c1e8a3f5b7d9e1c2a4b", "state": "running"}
        }
    )


class RunCustomer(BaseModel):
    customer_id: str
    state: Literal["pending", "running", "ok", "error"]
    jobs: int | None = Field(description="Jobs the refresh saw (ok).")
    error: SourceErrorBody | None


class RefreshRun(BaseModel):
    run_id: str
    state: Literal["running", "done"]
    started_at: UtcTime
    finished_at: UtcTime | None
    customers: list[RunCustomer]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "run_id": "9f0c5e7a6b2d4c1e8a3f5b7d9e1c2a4b",
                "state": "running",
                "started_at": "2026-11-29T08:00:00Z",
                "finished_at": None,
                "customers": [
                    {"customer_id": "caf9d1f2-5ea3", "state": "ok", "jobs": 1042, "error": None},
                    {
                        "customer_id": "0b7e4c2a-91d0",
                        "state": "running",
                        "jobs": None,
                        "error": None,
                    },
                    {
                        "customer_id": "5d3a9e61-2f7c",
                        "state": "error",
                        "jobs": None,
                        "error": {
                            "kind": "http_status",
                            "message": "the upstream answered 503",
                            "upstream_status": 503,
                        },
                    },
                ],
            }
        }
    )


# -- PSA tickets ------------------------------------------------------------------------------


class Ticket(BaseModel):
    alert_key: str = Field(
        description="The alert the ticket follows (customer_id:job_type:module)."
    )
    customer_id: str
    company_id: str | None = Field(description="The PSA company (`psa map`); null when unmapped.")
    ticket_id: str | None = Field(description="The PSA's ticket id, once the ticket exists.")
    state: Literal["open", "closed", "held", "failed", "unmapped"] = Field(
        description=(
            "`open`; `closed` (the alert resolved); `held` by the storm guard "
            "(PSA_MAX_NEW_TICKETS_PER_HOUR); `failed` (the last attempt failed: `last_error`; "
            "retried until its deadline); `unmapped` (the customer has no PSA company)."
        )
    )
    opened_at: UtcTime | None
    closed_at: UtcTime | None
    last_error: str | None = Field(description="What the PSA said to the last failed attempt.")


class TicketPage(BaseModel):
    items: list[Ticket]
    next_cursor: str | None


# -- protected objects and their expectations -------------------------------------------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ObjectStateName = Literal["ok", "warning", "failure", "no_result", "retired"]


class Expected(BaseModel):
    every_hours: float | None = Field(description="A result is expected this often.")
    days: list[Weekday] | None = Field(description="Only on these weekdays (TIMEZONE); null: all.")
    grace_hours: float | None = Field(description="How late a result may be before no result.")
    source: Literal["learned", "set", "none"]


class LastResult(BaseModel):
    job_id: str
    status: str
    start_time: UtcTime


class ProtectedObject(BaseModel):
    """One customer + job type + module, judged against its expectation."""

    key: str = Field(description="`customer_id:job_type:module`, the key of its alert.")
    customer_id: str
    customer_name: str | None
    job_type: str
    module: str
    state: ObjectStateName
    in_maintenance: bool
    expected: Expected
    treat_warning_as_success: bool
    last_result: LastResult | None
    last_success_at: UtcTime | None
    next_result_due_at: UtcTime | None
    days_in_state: int
    failures_since_success: int


class ObjectPage(BaseModel):
    items: list[ProtectedObject]
    next_cursor: str | None = Field(description="Always null: every object is in one page.")


class ExpectationIn(BaseModel):
    """An object's expectation: set, or handed back to learning (`every_hours` null)."""

    every_hours: float | None = Field(
        None, gt=0, le=24 * 92, description="Hours between results; null: learn them."
    )
    days: list[Weekday] | None = Field(
        None, min_length=1, description="Weekdays results come on (TIMEZONE); null: every day."
    )
    grace_hours: float | None = Field(
        None, ge=0, le=24 * 31, description="Lateness allowed; null: 6 h, or half the interval."
    )
    treat_warning_as_success: bool = False
    retired: bool = Field(False, description="Out of the grid, alerts and digests.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "every_hours": 24,
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "grace_hours": 6,
                "treat_warning_as_success": False,
                "retired": False,
            }
        },
    )


class GridCell(BaseModel):
    date: str = Field(description="The business day (TIMEZONE, from DAY_START_HOUR).")
    result: Literal["success", "warning", "failure", "no_result", "maintenance", "none"]
    jobs: int = Field(description="Results that day.")


class GridRow(BaseModel):
    key: str
    customer_id: str
    customer_name: str | None
    job_type: str
    module: str
    state: ObjectStateName
    cells: list[GridCell]


class Grid(BaseModel):
    days: list[str] = Field(description="Business days, oldest first; the last is today.")
    items: list[GridRow]


class MaintenanceIn(BaseModel):
    """A time when a customer (or every customer) opens no alert and sends nothing."""

    customer_id: str | None = Field(
        None, description="The customer; null (or left out): every customer."
    )
    starts_at: BodyTime = Field(description="RFC 3339 with an offset or Z.")
    ends_at: BodyTime = Field(description="RFC 3339 with an offset or Z; after starts_at.")
    reason: str | None = Field(None, max_length=500, description="Why, for the next person.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "customer_id": None,
                "starts_at": "2026-12-05T22:00:00Z",
                "ends_at": "2026-12-06T04:00:00Z",
                "reason": "tenant migration",
            }
        },
    )


class Maintenance(BaseModel):
    id: int
    customer_id: str | None = Field(description="null: every customer.")
    starts_at: UtcTime
    ends_at: UtcTime
    reason: str | None
    created_at: UtcTime
    active: bool = Field(description="Whether the window is on now.")


class MaintenancePage(BaseModel):
    items: list[Maintenance]
    next_cursor: str | None = Field(description="Always null: every window is in one page.")
