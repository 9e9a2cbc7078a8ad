"""`job_stage`: a walk's changed rows parked in the database while the walk goes on, when
they are too many to hold in memory (`app.store.merge.MEMORY_ROWS`), and merged from there.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete

from app import catalog
from app.store.jobs import HISTORY_COLUMNS, JOB_KEEP, WRITE_COLUMNS, StatusChange
from app.store.plans import Plan, driver_value, execute, from_driver, marks, sql
from app.store.tables import JobStage
from app.store.telling import JobChange
from app.store.writer import Writer

STAGE = cast(Table, JobStage.__table__)

# Stage rows older than this belong to a refresh that died with its process.
ORPHAN_STAGE_AGE = timedelta(hours=1)


@functools.cache
def stage_sql(dialect: str) -> str:
    """The insert of staged rows; a job met again on a later page replaces its copy."""
    columns = ["stage_id", "staged_at", "created", "previous_status_code", *WRITE_COLUMNS]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("stage_id", "job_id"))
    # Column names are this module's constants, never input: no injection here.
    return (
        f"INSERT INTO job_stage ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({marks(dialect, len(columns))}) "
        f"ON CONFLICT (stage_id, job_id) DO UPDATE SET {updates}"
    )


def rebase_stage(dialect: str, stage_id: str) -> Plan[None]:
    """`Ingest._rebase` of the staged rows, in SQL: drop those stored as they are, or stored in
    a newer version (newest wins, as `older` says), and take `created` and the
    previous status from what is stored now."""
    same = "j.customer_id = s.customer_id AND j.job_id = s.job_id"
    newer = (
        "j.sort_modified > s.sort_modified OR (j.sort_modified = s.sort_modified "
        "AND j.walk_started_at IS NOT NULL AND s.walk_started_at IS NOT NULL "
        "AND j.walk_started_at > s.walk_started_at)"
    )
    yield from execute(
        dialect,
        "DELETE FROM job_stage AS s WHERE s.stage_id = ? AND EXISTS ("  # noqa: S608
        f"SELECT 1 FROM jobs AS j WHERE {same} AND (j.content_hash = s.content_hash "
        f"OR {newer}))",
        (stage_id,),
    )
    yield from execute(
        dialect,
        "UPDATE job_stage AS s SET "  # noqa: S608
        f"previous_status_code = (SELECT j.status_code FROM jobs AS j WHERE {same}), "
        f"created = NOT EXISTS (SELECT 1 FROM jobs AS j WHERE {same}) "
        "WHERE s.stage_id = ?",
        (stage_id,),
    )


def merge_stage(
    dialect: str, customer_id: str, stage_id: str, at: datetime
) -> Plan[tuple[int, list[StatusChange], list[JobChange]]]:
    """Staged rows into `jobs` and history; gives the rows written and the changes."""
    stamp = driver_value(dialect, at)
    mine = (stage_id,)
    counted = yield (
        "fetch",
        sql(dialect, "SELECT COUNT(*) FROM job_stage WHERE stage_id = ?"),
        mine,
    )
    written = int(counted[0][0])
    columns = ", ".join(WRITE_COLUMNS)
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in [*WRITE_COLUMNS, "last_seen_at"] if c not in JOB_KEEP
    )
    yield from execute(
        dialect,
        f"INSERT INTO jobs ({columns}, first_seen_at, last_seen_at) "  # noqa: S608
        f"SELECT {columns}, ?, ? FROM job_stage WHERE stage_id = ? "
        f"ON CONFLICT (customer_id, job_id) DO UPDATE SET {updates}",
        (stamp, stamp, stage_id),
    )
    distinct = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    changed = f"(created OR status_code {distinct} previous_status_code)"
    yield from execute(
        dialect,
        f"INSERT INTO job_status_history ({', '.join(HISTORY_COLUMNS)}) "  # noqa: S608
        "SELECT customer_id, job_id, status_code, status, previous_status_code, ? "
        f"FROM job_stage WHERE stage_id = ? AND {changed}",
        (stamp, stage_id),
    )
    found = yield (
        "fetch",
        sql(
            dialect,
            "SELECT job_id, previous_status_code, status_code, created, status, "  # noqa: S608
            f"job_type, module, name, start_time FROM job_stage WHERE stage_id = ? "
            f"AND {changed}",
        ),
        mine,
    )
    changes: list[StatusChange] = []
    job_changes: list[JobChange] = []
    for job_id, previous, current, new, status, job_type, module, name, start in found:
        created = bool(new)
        changes.append(StatusChange(customer_id, job_id, previous, current, at, created))
        job_changes.append(
            JobChange(
                job_id=job_id,
                created=created,
                previous=None if created else catalog.STATUS.name(previous),
                status=status,
                job_type=job_type,
                module=module,
                name=name,
                start_time=from_driver(start),
            )
        )
    yield from execute(dialect, "DELETE FROM job_stage WHERE stage_id = ?", mine)
    return written, changes, job_changes


async def purge_orphan_stage(writer: Writer, now: datetime) -> int:
    """Delete stage rows left by refreshes that died with their process."""
    async with writer.transaction() as session:
        result = await session.execute(
            delete(STAGE).where(STAGE.c.staged_at < now - ORPHAN_STAGE_AGE)
        )
    return int(getattr(result, "rowcount", 0) or 0)
