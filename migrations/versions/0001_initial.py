"""Initial schema: customers, snapshots, jobs, job_status_history.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 08:30:00

Self-contained on purpose: a migration must keep meaning what it meant when it was written,
whatever later happens to `app.store.tables`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("job_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )

    op.create_table(
        "snapshots",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("jobs_seen", sa.Integer(), nullable=False),
        sa.Column("rows_skipped", sa.Integer(), nullable=False),
        sa.Column("error_kind", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("upstream_status", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.CheckConstraint("outcome IN ('success', 'error')", name=op.f("ck_snapshots_outcome")),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_snapshots_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_snapshots")),
    )
    op.create_index(
        "ix_snapshots_customer_finished", "snapshots", ["customer_id", "finished_at", "id"]
    )
    op.create_index(
        "ix_snapshots_customer_outcome_finished",
        "snapshots",
        ["customer_id", "outcome", "finished_at"],
    )

    op.create_table(
        "jobs",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("job_type_code", sa.Integer(), nullable=True),
        sa.Column("module_code", sa.Integer(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("job_type", sa.String(), nullable=False),
        sa.Column("module", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("total_count", sa.BigInteger(), nullable=True),
        sa.Column("failed_count", sa.BigInteger(), nullable=True),
        sa.Column("successful_count", sa.BigInteger(), nullable=True),
        sa.Column("skipped_count", sa.BigInteger(), nullable=True),
        sa.Column("warning_count", sa.BigInteger(), nullable=True),
        sa.Column("backup_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("start_time", Timestamp, nullable=True),
        sa.Column("end_time", Timestamp, nullable=True),
        sa.Column("last_modified", Timestamp, nullable=True),
        sa.Column("duration_seconds", sa.BigInteger(), nullable=True),
        sa.Column("first_seen_at", Timestamp, nullable=False),
        sa.Column("last_seen_at", Timestamp, nullable=False),
        sa.Column("raw", JSONDocument, nullable=False),
        sa.Column("sort_start", Timestamp, nullable=False),
        sa.Column("sort_modified", Timestamp, nullable=False),
        sa.Column("sort_duration", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_jobs_customer_id_customers")
        ),
        sa.PrimaryKeyConstraint("customer_id", "job_id", name=op.f("pk_jobs")),
    )
    for name, columns in (
        ("ix_jobs_sort_start", ["sort_start", "customer_id", "job_id"]),
        ("ix_jobs_sort_modified", ["sort_modified", "customer_id", "job_id"]),
        ("ix_jobs_sort_duration", ["sort_duration", "customer_id", "job_id"]),
        ("ix_jobs_status_sort_start", ["status", "sort_start", "customer_id", "job_id"]),
        ("ix_jobs_job_type_sort_start", ["job_type", "sort_start", "customer_id", "job_id"]),
        ("ix_jobs_module_sort_start", ["module", "sort_start", "customer_id", "job_id"]),
        ("ix_jobs_customer_sort_start", ["customer_id", "sort_start", "job_id"]),
        ("ix_jobs_customer_status", ["customer_id", "status"]),
    ):
        op.create_index(name, "jobs", columns)

    op.create_table(
        "job_status_history",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("previous_status_code", sa.Integer(), nullable=True),
        sa.Column("changed_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id", "job_id"],
            ["jobs.customer_id", "jobs.job_id"],
            name="fk_job_status_history_job_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_status_history")),
    )
    op.create_index(
        "ix_job_status_history_job",
        "job_status_history",
        ["customer_id", "job_id", "changed_at", "id"],
    )


def downgrade() -> None:
    op.drop_table("job_status_history")
    op.drop_table("jobs")
    op.drop_table("snapshots")
    op.drop_table("customers")
