"""Three indexes of `jobs` fewer: every refresh paid for them, few reads did.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 20:00:00

Every inserted or rewritten job updates each secondary index of `jobs`; on SQLite that is
about 12 µs per index per row, the largest part of a cold refresh's CPU (bench/RESULTS.md,
issue 15). Reads are answered from memory (`app.api.answers`) once built, so an index only
helps the first read of a shape, and these three have a neighbour that serves that read:

- `ix_jobs_status_sort_modified` (`?status=...&sort=last_modified`, `modified_since`): the
  range on `ix_jobs_sort_modified`, filtered by status; an integration's
  `modified_since` poll reads only the recent end of it.
- `ix_jobs_status_sort_duration` (`?status=...&sort=duration`): `ix_jobs_status_sort_start`
  finds the status's jobs and sorts them, or `ix_jobs_sort_duration` is read in order and
  filtered (the planner's pick).
- `ix_jobs_job_type_sort_start` (`?job_type=...`): `ix_jobs_sort_start` read in order and
  filtered; a job type is a large part of all jobs, so a page is found soon.

The module index stays: a module is often a small part of all jobs, and reading the whole
start-time order to find a page of it would be slow.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_jobs_status_sort_modified": ["status", "sort_modified", "customer_id", "job_id"],
    "ix_jobs_status_sort_duration": ["status", "sort_duration", "customer_id", "job_id"],
    "ix_jobs_job_type_sort_start": ["job_type", "sort_start", "customer_id", "job_id"],
}


def upgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="jobs")


def downgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "jobs", columns)
