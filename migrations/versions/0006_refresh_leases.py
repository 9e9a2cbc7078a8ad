"""Refresh leases: one process at a time refreshes a customer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 17:30:00

Several `serve` processes on one PostgreSQL database take a customer's lease before they
walk it; the others wait for that walk's result or serve what is stored. A lease ends when
its holder commits, or at `expires_at` when the holder died. After a failed refresh the lease
is kept until the customer's backoff ends (`holder = 'backoff'`), so no process asks the
upstream again before then.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "refresh_leases",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_refresh_leases")),
    )


def downgrade() -> None:
    op.drop_table("refresh_leases")
