"""The database tables, as SQLAlchemy 2 typed models.

Alembic migrations in `app/migrations/versions/` are the only source of the schema; these models
describe it for queries and for the drift test, which fails when the two disagree.

- `customers`: every customer of the partner, with the name from the customer listing and
  the number of jobs stored for it.
- `snapshots`: one row per refresh attempt of one customer, success or error.
- `jobs`: the current state of every job, keyed by (customer_id, job_id). Besides the typed
  fields it keeps non-null sort keys (`sort_start`, `sort_modified`, `sort_duration`) so that
  keyset pagination compares plain values on both SQLite and PostgreSQL: a missing time
  sorts as `SORT_MIN_TIME`, a missing duration as `SORT_MIN_DURATION`, i.e. first when
  ascending and last when descending.
- `job_stage`: a refresh's changed rows while its walk goes on, when too many to hold in
  memory; merged into `jobs` in the refresh's last transaction, then deleted.
- `job_status_history`: one row when a job is first seen and one each time its status changes.
- `events`: the change feed, written in the transaction of the change it tells.
- `feed_horizon`: one row, the highest event id retention purged: a feed cursor below it
  has missed events (`GET /events` answers 410).
- `alerts`: problems of one customer + job type + module, at most one open per `alert_key`.
- `webhook_deliveries`: the outbox of webhooks, one row per event and receiver.
- `object_expectations`: what `PUT /objects/{key}/expectation` set for a protected object,
  and whether its `object.no_result` was told (`no_result_at`); no row: learned, told nothing.
- `maintenance_windows`: times when one customer (or all: `customer_id` NULL) opens no
  alert and sends nothing; `released_at` notes that the sweep judged them once it ended.
- `digest_days`: one row per day whose digest a process took to send (`app.store.digests`).

Every timestamp is timezone-aware UTC in Python. SQLite has no time zone type, so `UTCDateTime`
stores naive UTC there and attaches UTC on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SORT_MIN_TIME = datetime.min.replace(tzinfo=UTC)
"""The sort key of a missing start time or last-modified time: before every real time."""

SORT_MIN_DURATION = -1
"""The sort key of a missing duration: below every real duration (which is >= 0)."""


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored as UTC; naive values are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
        value = value.astimezone(UTC)
        # SQLite keeps the text of the value: drop the offset so every row has one format
        # and text comparison is time comparison.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")
"""Raw upstream rows: JSONB on PostgreSQL, JSON text elsewhere."""

# Snapshot and history ids grow with every refresh; SQLite needs INTEGER for autoincrement.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


metadata = Base.metadata


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # How many jobs the store keeps for the customer, kept by `repo.record_success`: every
    # request reads it (sources), and counting the jobs each time would cost O(jobs).
    job_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Grows with every write of the customer's jobs: a refresh that read the store before
    # another refresh of the customer wrote notices it with one read (app.store.versions).
    data_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class Snapshot(Base):
    """One refresh attempt of one customer."""

    __tablename__ = "snapshots"
    __table_args__ = (
        CheckConstraint("outcome IN ('success', 'error')", name="outcome"),
        # customer_states: the latest attempt, and the latest success, of each customer.
        Index("ix_snapshots_customer_finished", "customer_id", "finished_at", "id"),
        Index("ix_snapshots_customer_outcome_finished", "customer_id", "outcome", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(), ForeignKey("customers.id"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    pages: Mapped[int] = mapped_column(Integer, default=0)
    jobs_seen: Mapped[int] = mapped_column(Integer, default=0)
    rows_skipped: Mapped[int] = mapped_column(Integer, default=0)
    error_kind: Mapped[str | None] = mapped_column(String())
    error_message: Mapped[str | None] = mapped_column(Text)
    upstream_status: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String())


class Job(Base):
    """The current state of one job; the names derive from the codes through the catalog."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The default listing and its keyset: every customer, by start time.
        Index("ix_jobs_sort_start", "sort_start", "customer_id", "job_id"),
        Index("ix_jobs_sort_modified", "sort_modified", "customer_id", "job_id"),
        Index("ix_jobs_sort_duration", "sort_duration", "customer_id", "job_id"),
        # GET /jobs?status=failed and friends, in the default order. Every index here costs
        # each refresh a B-tree update per written job: a filter or order that a neighbour
        # serves well enough for the first read of its answer has none (migration 0013).
        Index("ix_jobs_status_sort_start", "status", "sort_start", "customer_id", "job_id"),
        Index("ix_jobs_module_sort_start", "module", "sort_start", "customer_id", "job_id"),
        # One customer's jobs in the default order (the primary key covers plain lookups).
        Index("ix_jobs_customer_sort_start", "customer_id", "sort_start", "job_id"),
        # Counts by status per customer (GET /customers, /summary).
        Index("ix_jobs_customer_status", "customer_id", "status"),
        # The jobs the upstream stopped reporting, for the retention purge (few: partial).
        Index(
            "ix_jobs_unreported_since",
            "unreported_since",
            sqlite_where=text("unreported_since IS NOT NULL"),
            postgresql_where=text("unreported_since IS NOT NULL"),
        ),
    )

    customer_id: Mapped[str] = mapped_column(String(), ForeignKey("customers.id"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(), primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    job_type_code: Mapped[int | None] = mapped_column(Integer)
    module_code: Mapped[int | None] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    job_type: Mapped[str] = mapped_column(String())
    module: Mapped[str] = mapped_column(String())
    status: Mapped[str] = mapped_column(String())
    total_count: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int | None] = mapped_column(BigInteger)
    successful_count: Mapped[int | None] = mapped_column(BigInteger)
    skipped_count: Mapped[int | None] = mapped_column(BigInteger)
    warning_count: Mapped[int | None] = mapped_column(BigInteger)
    backup_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    last_modified: Mapped[datetime | None]
    duration_seconds: Mapped[int | None] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    raw: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    sort_start: Mapped[datetime]
    sort_modified: Mapped[datetime]
    sort_duration: Mapped[int] = mapped_column(BigInteger)
    # A 64-bit hash of the upstream's row: a refresh rewrites only the rows whose hash moved.
    content_hash: Mapped[int | None] = mapped_column(BigInteger)
    # When a successful refresh of the customer first did not report the job; NULL while the
    # newest successful refresh reports it (`app.store.retention`). Marking a job also clears its
    # content hash, so that its next sighting rewrites it (and clears this).
    unreported_since: Mapped[datetime | None]
    # When the walk that wrote this version started (the database's clock): on a tie of
    # `last_modified`, the walk that started later wins (`app.store.jobs.older`).
    walk_started_at: Mapped[datetime | None]


class JobStage(Base):
    """A refresh's changed rows, staged while its walk goes on (see `app.store.stage`)."""

    __tablename__ = "job_stage"

    stage_id: Mapped[str] = mapped_column(String(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String())
    staged_at: Mapped[datetime]
    created: Mapped[bool] = mapped_column(Boolean)
    previous_status_code: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(Text)
    job_type_code: Mapped[int | None] = mapped_column(Integer)
    module_code: Mapped[int | None] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    job_type: Mapped[str] = mapped_column(String())
    module: Mapped[str] = mapped_column(String())
    status: Mapped[str] = mapped_column(String())
    total_count: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int | None] = mapped_column(BigInteger)
    successful_count: Mapped[int | None] = mapped_column(BigInteger)
    skipped_count: Mapped[int | None] = mapped_column(BigInteger)
    warning_count: Mapped[int | None] = mapped_column(BigInteger)
    backup_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    last_modified: Mapped[datetime | None]
    duration_seconds: Mapped[int | None] = mapped_column(BigInteger)
    raw: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    sort_start: Mapped[datetime]
    sort_modified: Mapped[datetime]
    sort_duration: Mapped[int] = mapped_column(BigInteger)
    walk_started_at: Mapped[datetime | None]


class JobStatusHistory(Base):
    """A job's status when first seen, and every change after."""

    __tablename__ = "job_status_history"
    __table_args__ = (
        ForeignKeyConstraint(
            ["customer_id", "job_id"],
            ["jobs.customer_id", "jobs.job_id"],
            name="fk_job_status_history_job_jobs",
            ondelete="CASCADE",
        ),
        Index("ix_job_status_history_job", "customer_id", "job_id", "changed_at", "id"),
        # The retention purge walks history from its oldest row.
        Index("ix_job_status_history_changed_at", "changed_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String())
    job_id: Mapped[str] = mapped_column(String())
    status_code: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String())
    previous_status_code: Mapped[int | None] = mapped_column(Integer)
    changed_at: Mapped[datetime]


class Event(Base):
    """One entry of the change feed; `data` is its JSON, encoded once when written."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_customer", "customer_id", "id"),
        Index("ix_events_type", "type", "id"),
        Index("ix_events_at", "at"),
        {"sqlite_autoincrement": True},  # ids are never reused, even after a purge
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String())
    at: Mapped[datetime]
    customer_id: Mapped[str] = mapped_column(String())
    job_id: Mapped[str | None] = mapped_column(String())
    alert_key: Mapped[str | None] = mapped_column(String())
    data: Mapped[str] = mapped_column(Text)


class FeedHorizon(Base):
    """How far retention purged the change feed (see `app.store.events.read_feed`)."""

    __tablename__ = "feed_horizon"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    purged_upto: Mapped[int] = mapped_column(BigInteger)


class Alert(Base):
    """One problem of one customer + job type + module (see `app.alerts`)."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'resolved')", name="state"),
        CheckConstraint("reason IN ('failed', 'overdue', 'no_result')", name="reason"),
        CheckConstraint("severity IN ('warning', 'critical')", name="severity"),
        Index(
            "ix_alerts_one_open",
            "alert_key",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
        Index("ix_alerts_customer_state", "customer_id", "state", "id"),
        Index("ix_alerts_state", "state", "id"),
        # Every process looks for the newest alert change (`app.replicas`).
        Index("ix_alerts_updated_at", "updated_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_key: Mapped[str] = mapped_column(String())
    customer_id: Mapped[str] = mapped_column(String())
    job_type: Mapped[str] = mapped_column(String())
    module: Mapped[str] = mapped_column(String())
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    first_failure_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    last_success_at: Mapped[datetime | None]
    last_job_id: Mapped[str | None] = mapped_column(String())
    snoozed_until: Mapped[datetime | None]
    snooze_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One event to one receiver: pending until delivered, or failed past its deadline."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_order", "url", "alert_key", "state", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("events.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    alert_key: Mapped[str | None] = mapped_column(String())
    customer_id: Mapped[str] = mapped_column(String())
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    deadline_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class RefreshLease(Base):
    """Which process refreshes a customer now, until when (see `app.store.leases`)."""

    __tablename__ = "refresh_leases"

    customer_id: Mapped[str] = mapped_column(String(), primary_key=True)
    holder: Mapped[str] = mapped_column(String())
    expires_at: Mapped[datetime]
    # A fencing token, new with every take: only the walk holding it may commit.
    token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))


class ApiKey(Base):
    """A key made with `jobs-gateway keys create`, stored as a salted hash (`app.access.keys`)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        # A revoked key's name may be given to a new key.
        Index(
            "ix_api_keys_live_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String())
    key_id: Mapped[str] = mapped_column(String(), unique=True)
    salt: Mapped[str] = mapped_column(String())
    digest: Mapped[str] = mapped_column(String())
    customers: Mapped[list[str] | None] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class RateCount(Base):
    """One process's requests of one key in one minute window (see `app.access.ratelimit`)."""

    __tablename__ = "rate_counts"

    window: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    identity: Mapped[str] = mapped_column(String(), primary_key=True)
    holder: Mapped[str] = mapped_column(String(), primary_key=True)
    hits: Mapped[int] = mapped_column(BigInteger)


class ObjectExpectation(Base):
    """A protected object's set expectation and its told "no result" (see `app.expectations`)."""

    __tablename__ = "object_expectations"
    __table_args__ = (
        Index("ix_object_expectations_customer", "customer_id"),
        # The newest change, which every process looks for (`app.store.watermarks`).
        Index("ix_object_expectations_updated_at", "updated_at"),
    )

    alert_key: Mapped[str] = mapped_column(String(), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String())
    job_type: Mapped[str] = mapped_column(String())
    module: Mapped[str] = mapped_column(String())
    every_hours: Mapped[float | None] = mapped_column(Float)  # None: learned
    days: Mapped[str | None] = mapped_column(String())  # "mon,tue,..."; None: every day
    grace_hours: Mapped[float | None] = mapped_column(Float)  # None: the default
    treat_warning_as_success: Mapped[bool] = mapped_column(Boolean)
    retired: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime]
    # When `object.no_result` was told (the moment due + grace passed); None once recovered.
    no_result_at: Mapped[datetime | None]


class MaintenanceWindow(Base):
    """A time when a customer's (or every customer's) problems open no alert
    (`app.store.maintenance`)."""

    __tablename__ = "maintenance_windows"
    __table_args__ = (Index("ix_maintenance_windows_ends_at", "ends_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str | None] = mapped_column(String())  # None: every customer
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    # When the sweep judged its customers after it ended (so problems it held back open).
    released_at: Mapped[datetime | None]


class DigestDay(Base):
    """A day whose digest was taken to send: its row is the claim, so only one process sends."""

    __tablename__ = "digest_days"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD in TIMEZONE
    holder: Mapped[str] = mapped_column(String())
    claimed_at: Mapped[datetime]


class PsaCompany(Base):
    """Which PSA company a customer's tickets go to (`jobs-gateway psa map`), by id."""

    __tablename__ = "psa_companies"

    customer_id: Mapped[str] = mapped_column(String(), primary_key=True)
    company_id: Mapped[str] = mapped_column(String())
    mapped_at: Mapped[datetime]


class Ticket(Base):
    """One alert's ticket in the PSA, or why it has none yet (see `app.store.tickets`)."""

    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'closed', 'held', 'failed', 'unmapped')", name="state"),
        Index("ix_tickets_state", "state", "id"),
        Index("ix_tickets_reserved_at", "reserved_at"),
        Index("ix_tickets_customer_id", "customer_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"), unique=True
    )
    alert_key: Mapped[str] = mapped_column(String())
    customer_id: Mapped[str] = mapped_column(String())
    company_id: Mapped[str | None] = mapped_column(String())
    ticket_id: Mapped[str | None] = mapped_column(String())
    state: Mapped[str] = mapped_column(String(16))
    reserved_at: Mapped[datetime | None]
    create_sent_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
