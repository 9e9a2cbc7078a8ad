"""Retention: which jobs the upstream stopped reporting, and an index to purge history by age.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 18:00:00

- `jobs.unreported_since`: when a successful refresh of the customer first did not report
  the job; NULL while the newest successful refresh reports it. A refresh rewrites only the
  jobs that changed, so `last_seen_at` cannot tell a job unchanged for months from one the
  upstream dropped; this column can, at no cost while nothing disappears (`app.retention`).
  A partial index keeps the few marked jobs in reach of the hourly purge.
- `ix_job_status_history_changed_at`: the purge walks history from its oldest row.
- Jobs stored before 0004 that no refresh has rewritten since still have no content hash;
  they get the hash 0, which no row hashes to, so that a job without a hash means one thing
  from now on: marked as no longer reported (its next sighting rewrites it, as before).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
MARKED = "unreported_since IS NOT NULL"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("unreported_since", Timestamp, nullable=True))
    op.create_index(
        "ix_jobs_unreported_since",
        "jobs",
        ["unreported_since"],
        sqlite_where=sa.text(MARKED),
        postgresql_where=sa.text(MARKED),
    )
    op.create_index("ix_job_status_history_changed_at", "job_status_history", ["changed_at", "id"])
    op.execute("UPDATE jobs SET content_hash = 0 WHERE content_hash IS NULL")


def downgrade() -> None:
    op.drop_index("ix_job_status_history_changed_at", table_name="job_status_history")
    op.drop_index("ix_jobs_unreported_since", table_name="jobs")
    op.drop_column("jobs", "unreported_since")
