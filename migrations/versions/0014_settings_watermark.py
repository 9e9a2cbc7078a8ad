"""An index on `object_expectations.updated_at`, so that every process can look cheaply for
an expectation set through another one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 23:00:00

Each process looks at the database twice a second for what the others wrote
(`app.store.watermarks`). An expectation set through one replica writes no event, so the
look also asks for the newest `updated_at` of `object_expectations`; with this index that
is one step down a b-tree, not a scan of every protected object.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_object_expectations_updated_at", "object_expectations", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_object_expectations_updated_at", table_name="object_expectations")
