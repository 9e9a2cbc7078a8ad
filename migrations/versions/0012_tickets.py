"""PSA tickets that follow the alerts, and which PSA company each customer's tickets go to.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 20:00:00

- `psa_companies`: one row per mapped customer: the PSA's company id (`jobs-gateway psa map`),
  by id and never by name, so a renamed company keeps its tickets.
- `tickets`: one row per alert that reached the PSA: the ticket's id once it exists, its
  state (`open`, `closed`, `held` by the storm guard, `failed` with `last_error`, or
  `unmapped`), `reserved_at` (the storm guard's slot, counted across processes),
  `create_sent_at` (a create went out: before creating again, look the ticket up by its
  external reference) and the times. Ticket work itself goes through `webhook_deliveries`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "psa_companies",
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("company_id", sa.String(), nullable=False),
        sa.Column("mapped_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_psa_companies")),
    )
    op.create_table(
        "tickets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("alert_key", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("company_id", sa.String(), nullable=True),
        sa.Column("ticket_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reserved_at", Timestamp, nullable=True),
        sa.Column("create_sent_at", Timestamp, nullable=True),
        sa.Column("opened_at", Timestamp, nullable=True),
        sa.Column("closed_at", Timestamp, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "state IN ('open', 'closed', 'held', 'failed', 'unmapped')",
            name=op.f("ck_tickets_state"),
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.id"],
            name=op.f("fk_tickets_alert_id_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
        sa.UniqueConstraint("alert_id", name=op.f("uq_tickets_alert_id")),
    )
    op.create_index("ix_tickets_state", "tickets", ["state", "id"])
    op.create_index("ix_tickets_reserved_at", "tickets", ["reserved_at"])
    op.create_index("ix_tickets_customer_id", "tickets", ["customer_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_tickets_customer_id", table_name="tickets")
    op.drop_index("ix_tickets_reserved_at", table_name="tickets")
    op.drop_index("ix_tickets_state", table_name="tickets")
    op.drop_table("tickets")
    op.drop_table("psa_companies")
