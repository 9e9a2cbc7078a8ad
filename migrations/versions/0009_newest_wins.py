"""Newest wins, by data: which walk wrote a job, fencing tokens on leases, alert changes seen.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 17:00:00

- `jobs.walk_started_at` (and the same on `job_stage`): when the walk that wrote the job's
  stored version started, by the database's clock. A walk never replaces a stored job with
  an older version of it: a lower `lastModifyTime` loses, and on a tie the walk that started
  earlier loses (`app.store.jobs`). NULL for rows written before this revision: any walk
  wins a tie against them.
- `refresh_leases.token`: a fencing token, new with every take. A walk's merge checks, in its
  own transaction, that the customer's lease is still held by its holder with its token;
  one whose lease expired or was taken over commits nothing (`app.store.leases`).
- `ix_alerts_updated_at`: every process looks for the newest alert change once a second, so
  a snooze made through one replica reaches the others' answers (`app.replicas`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN (no batch): SQLite adds a nullable or defaulted column in place,
    # without copying the jobs table.
    op.add_column("jobs", sa.Column("walk_started_at", Timestamp, nullable=True))
    op.add_column("job_stage", sa.Column("walk_started_at", Timestamp, nullable=True))
    op.add_column(
        "refresh_leases",
        sa.Column("token", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index("ix_alerts_updated_at", "alerts", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_alerts_updated_at", table_name="alerts")
    with op.batch_alter_table("refresh_leases") as batch:
        batch.drop_column("token")
    with op.batch_alter_table("job_stage") as batch:
        batch.drop_column("walk_started_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("walk_started_at")
