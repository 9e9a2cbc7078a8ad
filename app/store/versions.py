"""A customer's row as a merge holds it: made sure of, locked, its data version and job count.

A merge locks the customer's row first (`lock_customer`: `FOR UPDATE` on PostgreSQL, so two
merges of one customer take turns) and reads its `data_version`. A merge whose version moved
since its walk read the store re-reads the stored jobs (`read_known`) and tells only what
differs from them: two racing refreshes, or two processes, never tell one change twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.plans import Plan, insert_for, sql, to_driver
from app.store.tables import Customer

CUSTOMERS = cast(Table, Customer.__table__)


def lock_customer(dialect: str, customer_id: str, at: datetime) -> Plan[int]:
    """Make sure the customer has a row, lock it (PostgreSQL), and give its data version."""
    stamp = to_driver(dialect, at)
    yield (
        "exec",
        sql(
            dialect,
            "INSERT INTO customers (id, name, created_at, updated_at, job_count, data_version) "
            "VALUES (?, NULL, ?, ?, 0, 0) ON CONFLICT (id) DO NOTHING",
        ),
        (customer_id, stamp, stamp),
    )
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    rows = yield (
        "fetch",
        sql(dialect, f"SELECT data_version FROM customers WHERE id = ?{lock}"),  # noqa: S608
        (customer_id,),
    )
    return int(rows[0][0])


def read_version(dialect: str, customer_id: str) -> Plan[int]:
    rows = yield (
        "fetch",
        sql(dialect, "SELECT data_version FROM customers WHERE id = ?"),
        (customer_id,),
    )
    return int(rows[0][0]) if rows else 0


Known = dict[str, tuple[int | None, int | None, Any, Any]]
"""A customer's stored jobs: job id -> (content hash, status code, `sort_modified`,
`walk_started_at`), the times in the driver's form."""


def read_known(dialect: str, customer_id: str) -> Plan[Known]:
    """The customer's stored jobs, as a walk compares its rows with them."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT job_id, content_hash, status_code, sort_modified, walk_started_at "
            "FROM jobs WHERE customer_id = ?",
        ),
        (customer_id,),
    )
    return {
        job_id: (digest, status, modified, walk) for job_id, digest, status, modified, walk in rows
    }


def bump_version(dialect: str, customer_id: str, job_count: int | None) -> Plan[None]:
    if job_count is None:
        yield (
            "exec",
            sql(dialect, "UPDATE customers SET data_version = data_version + 1 WHERE id = ?"),
            (customer_id,),
        )
    else:
        yield (
            "exec",
            sql(
                dialect,
                "UPDATE customers SET data_version = data_version + 1, job_count = ? WHERE id = ?",
            ),
            (job_count, customer_id),
        )


def count_jobs(dialect: str, customer_id: str) -> Plan[int]:
    rows = yield (
        "fetch",
        sql(dialect, "SELECT COUNT(*) FROM jobs WHERE customer_id = ?"),
        (customer_id,),
    )
    return int(rows[0][0])


async def ensure_customer(
    session: AsyncSession, dialect: str, customer_id: str, at: datetime
) -> None:
    stmt = insert_for(dialect, CUSTOMERS).values(
        id=customer_id, name=None, created_at=at, updated_at=at
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=[CUSTOMERS.c.id]))
