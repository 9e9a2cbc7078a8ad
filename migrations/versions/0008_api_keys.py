"""API keys people can manage, and the request counts replicas share for rate limits.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 19:45:00

- `api_keys`: one row per key made with `jobs-gateway keys create`. The key itself is never
  stored: `key_id` (the public part of the key, which finds its row) and a SHA-256 of the
  whole key with a salt of its own. `customers` is the key's scope (NULL: every customer),
  `rate_per_minute` its own limit (NULL: RATE_LIMIT_PER_MINUTE). A revoked key keeps its row
  (`revoked_at`), and its name is free again: names are unique among live keys only.
- `rate_counts`: requests per key, per minute window and per process, so that each `serve`
  process on one PostgreSQL database can add the others' requests to its own count
  (`app.access.ratelimit`). Rows of past windows are deleted as they pass.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)
LIVE = "revoked_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("salt", sa.String(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("customers", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
        sa.Column("rate_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("last_used_at", Timestamp, nullable=True),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_api_keys_key_id")),
    )
    op.create_index(
        "ix_api_keys_live_name",
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_table(
        "rate_counts",
        sa.Column("window", sa.BigInteger(), nullable=False),
        sa.Column("identity", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("window", "identity", "holder", name=op.f("pk_rate_counts")),
    )


def downgrade() -> None:
    op.drop_table("rate_counts")
    op.drop_index("ix_api_keys_live_name", table_name="api_keys")
    op.drop_table("api_keys")
