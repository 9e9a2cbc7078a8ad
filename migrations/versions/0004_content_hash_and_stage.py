"""A content hash per job, and a staging table for refreshes too large to hold in memory.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 14:30:00

Every refresh rewrote every job, changed or not. `jobs.content_hash` (a 64-bit hash of the
upstream's row) lets a refresh skip the rows that did not change. `job_stage` holds a
customer's changed rows while its walk goes on, once there are more than a refresh keeps in
memory; they reach `jobs` in one short transaction at the end, so readers never see half a
refresh and a failed walk leaves nothing behind (its stage rows are deleted).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("content_hash", sa.BigInteger(), nullable=True))
    op.create_table(
        "job_stage",
        sa.Column("stage_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("staged_at", Timestamp, nullable=False),
        sa.Column("created", sa.Boolean(), nullable=False),
        sa.Column("previous_status_code", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.BigInteger(), nullable=False),
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
        sa.Column("raw", JSONDocument, nullable=False),
        sa.Column("sort_start", Timestamp, nullable=False),
        sa.Column("sort_modified", Timestamp, nullable=False),
        sa.Column("sort_duration", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stage_id", "job_id", name=op.f("pk_job_stage")),
    )


def downgrade() -> None:
    op.drop_table("job_stage")
    op.drop_column("jobs", "content_hash")
