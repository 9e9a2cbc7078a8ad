"""One name per module code: 309 is teams_chat, 362 native_azure_sql_backup_monitoring.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:00:00

The catalog followed the batch page's labels, which named both module 8 and module 309
`archiver`, and 362 `azure_sql`. The upstream's change log renamed 309 (Teams Chat) and 362
(Native Azure SQL Backup Monitoring), and the contract now follows it: one name per code.
`jobs.module` keeps the name a row was stored with, and it is what the API answers and what
`module` filters and `group_by=module` read, so the stored rows are renamed here rather than
left to the next refresh (jobs the upstream stopped reporting would never be).

The values are written out: a migration must keep meaning what it meant, whatever later
happens to `app.catalog`. Plain UPDATEs, the same on SQLite and PostgreSQL.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE jobs SET module = 'teams_chat' WHERE module_code = 309")
    op.execute(
        "UPDATE jobs SET module = 'native_azure_sql_backup_monitoring' WHERE module_code = 362"
    )


def downgrade() -> None:
    op.execute("UPDATE jobs SET module = 'archiver' WHERE module_code = 309")
    op.execute("UPDATE jobs SET module = 'azure_sql' WHERE module_code = 362")
