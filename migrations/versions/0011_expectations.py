"""Protected objects' expectations, and alerts for "no result".

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 20:10:00

- `object_expectations`: one row per protected object (customer + job type + module, keyed
  by its alert key) whose expectation was set (`PUT /objects/{key}/expectation`) or whose
  `object.no_result` was told (`no_result_at`, cleared when it recovers). Objects without a
  row are learned and have told nothing.
- `maintenance_windows`: times when one customer (or all) opens no alert and sends no
  webhook; `released_at` is when the sweep judged its customers after it ended.
- `digest_days`: one row per day whose digest a process took to send; inserted only if
  absent, so one process sends it, whatever the replicas and restarts.
- `alerts.reason` may be `no_result` too.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "object_expectations",
        sa.Column("alert_key", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("job_type", sa.String(), nullable=False),
        sa.Column("module", sa.String(), nullable=False),
        sa.Column("every_hours", sa.Float(), nullable=True),
        sa.Column("days", sa.String(), nullable=True),
        sa.Column("grace_hours", sa.Float(), nullable=True),
        sa.Column("treat_warning_as_success", sa.Boolean(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("no_result_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("alert_key", name=op.f("pk_object_expectations")),
    )
    op.create_index(
        "ix_object_expectations_customer", "object_expectations", ["customer_id"], unique=False
    )
    op.create_table(
        "maintenance_windows",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("customer_id", sa.String(), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
    )
    op.create_index(
        "ix_maintenance_windows_ends_at", "maintenance_windows", ["ends_at"], unique=False
    )
    op.create_table(
        "digest_days",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_digest_days")),
    )
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("ck_alerts_reason"), type_="check")
        batch.create_check_constraint(
            op.f("ck_alerts_reason"), "reason IN ('failed', 'overdue', 'no_result')"
        )


def downgrade() -> None:
    op.execute("UPDATE alerts SET reason = 'overdue' WHERE reason = 'no_result'")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("ck_alerts_reason"), type_="check")
        batch.create_check_constraint(op.f("ck_alerts_reason"), "reason IN ('failed', 'overdue')")
    op.drop_table("digest_days")
    op.drop_index("ix_maintenance_windows_ends_at", table_name="maintenance_windows")
    op.drop_table("maintenance_windows")
    op.drop_index("ix_object_expectations_customer", table_name="object_expectations")
    op.drop_table("object_expectations")
