"""Protected objects: their set expectations, their told "no result", and their results.

A protected object is one customer + job type + module (`app.expectations`); it exists when
the customer has a job of that kind. `object_expectations` holds a row only for an object
whose expectation was set (`put_setting`) or whose `object.no_result` was told
(`mark_no_result`, inside the merge or sweep that told it: `app.store.telling`); the
merge reads them back (`stored_of`) to judge each object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.expectations import NO_SETTING, Result, Setting
from app.store.plans import Plan, from_driver, sql, to_driver
from app.store.tables import Customer, Job, ObjectExpectation

ObjectKey = tuple[str, str, str]
"""(customer_id, job_type, module)"""


@dataclass(frozen=True, slots=True)
class Stored:
    """An object's row: its setting, and when its `object.no_result` was told (None: not)."""

    setting: Setting
    no_result_at: datetime | None


NOTHING_STORED = Stored(NO_SETTING, None)


def _days(text: str | None) -> tuple[str, ...] | None:
    return tuple(text.split(",")) if text else None


def stored_row(row: Sequence[Any]) -> Stored:
    every, days, grace, warning, retired, updated, told = row
    return Stored(
        Setting(
            every_hours=every,
            days=_days(days),
            grace_hours=grace,
            treat_warning_as_success=bool(warning),
            retired=bool(retired),
            updated_at=from_driver(updated),
        ),
        from_driver(told),
    )


_STORED_COLUMNS = (
    "every_hours, days, grace_hours, treat_warning_as_success, retired, updated_at, no_result_at"
)


def stored_of(dialect: str, customer_id: str) -> Plan[dict[tuple[str, str], Stored]]:
    """The customer's object rows, by (job_type, module)."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            f"SELECT job_type, module, {_STORED_COLUMNS} "  # noqa: S608
            "FROM object_expectations WHERE customer_id = ?",
        ),
        (customer_id,),
    )
    return {(r[0], r[1]): stored_row(r[2:]) for r in rows}


def upsert_object(dialect: str, key: str, obj: ObjectKey, values: dict[str, Any]) -> Plan[None]:
    row = {"treat_warning_as_success": False, "retired": False, **values}  # defaults first
    columns = ", ".join(["alert_key", "customer_id", "job_type", "module", *row])
    marks = ", ".join("?" * (4 + len(row)))
    updates = ", ".join(f"{n} = excluded.{n}" for n in values)  # only what was given
    params = (key, *obj, *row.values())
    yield (
        "exec",
        sql(
            dialect,
            f"INSERT INTO object_expectations ({columns}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT (alert_key) DO UPDATE SET {updates}",
        ),
        params,
    )


def mark_no_result(
    dialect: str, key: str, obj: ObjectKey, at: datetime | None, now: datetime
) -> Plan[None]:
    """Note that the object's `object.no_result` was told (`at`), or that it recovered (None)."""
    if at is None:
        yield (
            "exec",
            sql(dialect, "UPDATE object_expectations SET no_result_at = NULL WHERE alert_key = ?"),
            (key,),
        )
        return
    yield from upsert_object(
        dialect,
        key,
        obj,
        {"no_result_at": to_driver(dialect, at), "updated_at": to_driver(dialect, now)},
    )


CUSTOMERS = cast(Table, Customer.__table__)

EXPECTATIONS = cast(Table, ObjectExpectation.__table__)
JOBS = cast(Table, Job.__table__)


def put_setting(
    dialect: str, key: str, obj: ObjectKey, setting: Setting, now: datetime
) -> Plan[None]:
    """Store what `PUT /objects/{key}/expectation` set."""
    yield from upsert_object(
        dialect,
        key,
        obj,
        {
            "every_hours": setting.every_hours,
            "days": ",".join(setting.days) if setting.days else None,
            "grace_hours": setting.grace_hours,
            "treat_warning_as_success": setting.treat_warning_as_success,
            "retired": setting.retired,
            "updated_at": to_driver(dialect, now),
        },
    )


# -- reads of the API and the sweep -------------------------------------------------------------


async def read_objects(
    session: AsyncSession,
    customer_ids: Sequence[str] | None,
    since: datetime | None = None,
) -> tuple[dict[ObjectKey, list[Result]], dict[ObjectKey, Stored]]:
    """Every object of these customers (None: all) with its jobs (those that started since
    `since`, when given), and the rows of `object_expectations`."""
    j = JOBS
    stmt = select(j.c.customer_id, j.c.job_type, j.c.module, j.c.job_id, j.c.status, j.c.start_time)
    if customer_ids is not None:
        stmt = stmt.where(j.c.customer_id.in_(list(customer_ids)))
    if since is not None:
        stmt = stmt.where(j.c.start_time >= since)
    objects: dict[ObjectKey, list[Result]] = {}
    for cid, job_type, module, job_id, status, start in (await session.execute(stmt)).all():
        jobs = objects.setdefault((cid, job_type, module), [])
        if start is not None:
            jobs.append(Result(job_id, status, start))
    e = EXPECTATIONS
    rows_stmt = select(
        e.c.customer_id,
        e.c.job_type,
        e.c.module,
        e.c.every_hours,
        e.c.days,
        e.c.grace_hours,
        e.c.treat_warning_as_success,
        e.c.retired,
        e.c.updated_at,
        e.c.no_result_at,
    )
    if customer_ids is not None:
        rows_stmt = rows_stmt.where(e.c.customer_id.in_(list(customer_ids)))
    stored = {
        (r[0], r[1], r[2]): stored_row(r[3:]) for r in (await session.execute(rows_stmt)).all()
    }
    return objects, stored


async def object_exists(session: AsyncSession, obj: ObjectKey) -> bool:
    j = JOBS
    cid, job_type, module = obj
    found = await session.scalar(
        select(j.c.job_id)
        .where(j.c.customer_id == cid, j.c.job_type == job_type, j.c.module == module)
        .limit(1)
    )
    return found is not None


async def customer_ids(session: AsyncSession) -> list[str]:
    """Every customer stored."""
    return list((await session.scalars(select(CUSTOMERS.c.id).order_by(CUSTOMERS.c.id))).all())


async def customer_versions(session: AsyncSession) -> dict[str, int]:
    """Every customer's data version (it moves with every change of its jobs)."""
    c = CUSTOMERS
    rows = await session.execute(select(c.c.id, c.c.data_version))
    return {cid: int(version) for cid, version in rows.all()}


async def expectation_rows(session: AsyncSession) -> dict[str, tuple[Any, ...]]:
    """Every customer's rows of `object_expectations`, as one comparable value each."""
    e = EXPECTATIONS
    rows = await session.execute(select(e).order_by(e.c.customer_id, e.c.alert_key))
    out: dict[str, list[Any]] = {}
    for row in rows.all():
        out.setdefault(row.customer_id, []).append(tuple(row))
    return {cid: tuple(values) for cid, values in out.items()}
