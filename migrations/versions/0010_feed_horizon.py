"""How far retention purged the change feed, so a cursor below it is told, not skipped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00

- `feed_horizon`: one row; `purged_upto` is the highest event id retention deleted (0: none
  yet). No event above it was ever purged, so a client reading after a cursor at or above it
  misses nothing; below it, some events are gone, and `GET /events` answers `410
  cursor_expired` instead of skipping them. Retention moves it in the transaction that
  deletes the events, so every process, and every restart, agrees on it.
- A database that purged events before this revision did not note how far. The row starts
  just below the oldest event kept (every id below that is gone), or at the last id handed
  out when no event is kept (then every event went).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_horizon",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("purged_upto", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_feed_horizon_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_horizon")),
    )
    op.execute(
        sa.text("INSERT INTO feed_horizon (id, purged_upto) VALUES (1, :upto)").bindparams(
            upto=_purged_so_far(op.get_bind())
        )
    )


def _purged_so_far(bind: sa.Connection) -> int:
    oldest = bind.execute(sa.text("SELECT MIN(id) FROM events")).scalar()
    if oldest is not None:
        return int(oldest) - 1
    if bind.dialect.name == "postgresql":
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('events', 'id')")).scalar()
        if sequence is None:
            return 0
        # The sequence's name comes from the database itself, not from input.
        last = bind.execute(
            sa.text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}")  # noqa: S608
        ).scalar()
        return int(last or 0)
    last = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'events'")).scalar()
    return int(last or 0)


def downgrade() -> None:
    op.drop_table("feed_horizon")
