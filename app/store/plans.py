"""The bottom floor of the store's SQL: statements as plans, and values as drivers take them.

A step of the store that runs inside a write transaction is written once, as a generator
of SQL statements (`Plan`), and run either on the SQLite writer's own `sqlite3` connection
(`run_sync`) or on a SQLAlchemy connection (`run_async`); both take the SQLite/asyncpg
driver's own SQL (`sql` turns `?` marks into the driver's paramstyle) and parameters.

Every other module of the store builds on this one; it imports nothing else of ours.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")

StepKind = Literal["fetch", "exec", "many"]
Step = tuple[StepKind, str, Any]
Plan = Generator[Step, Any, T]
"""SQL statements to run, one at a time; what each gives back is sent into the plan:
`fetch` -> the rows, `exec` -> the row count, `many` -> None."""

# Bound parameters per statement, under SQLite's (32766) and asyncpg's (32767) limits, and a
# cap on rows per round trip.
_MAX_PARAMETERS = 30_000
_MAX_ROWS_PER_STATEMENT = 1_000


# -- running plans ------------------------------------------------------------------------


@functools.cache
def sql(dialect: str, text: str) -> str:
    """`text` with `?` marks, in the driver's own paramstyle."""
    if dialect == "sqlite":
        return text
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", text)


def run_sync(conn: Any, plan: Plan[T]) -> T:
    """Run `plan` on a `sqlite3` connection (inside the caller's transaction)."""
    try:
        step = next(plan)
        while True:
            kind, statement, params = step
            if kind == "fetch":
                result: Any = conn.execute(statement, params).fetchall()
            elif kind == "exec":
                result = conn.execute(statement, params).rowcount
            else:
                if params:
                    conn.executemany(statement, params)
                result = None
            step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def run_async(conn: AsyncConnection, plan: Plan[T]) -> T:
    """Run `plan` on a SQLAlchemy connection (inside the caller's transaction).

    On PostgreSQL the first statement goes through SQLAlchemy, which begins the transaction;
    the rest go straight to asyncpg's connection, in that transaction: SQLAlchemy's cursor,
    result and greenlet hop per statement cost more CPU than the statement itself. A driver
    error is raised as SQLAlchemy would raise it (`_translated`)."""
    driver: Any = None
    try:
        step = next(plan)
        while True:
            kind, statement, params = step
            if driver is not None:
                try:
                    if kind == "fetch":
                        result: Any = await driver.fetch(statement, *params)
                    elif kind == "exec":
                        result = _rowcount(await driver.execute(statement, *params))
                    else:
                        if params:
                            await driver.executemany(statement, params)
                        result = None
                except Exception as exc:
                    raise await _translated(conn, exc) from exc
            else:
                if kind == "fetch":
                    result = (await conn.exec_driver_sql(statement, params)).fetchall()
                elif kind == "exec":
                    result = (await conn.exec_driver_sql(statement, params)).rowcount
                else:
                    if not params:
                        step = plan.send(None)
                        continue
                    await conn.exec_driver_sql(statement, list(params))
                    result = None
                if conn.dialect.name == "postgresql":
                    driver = (await conn.get_raw_connection()).driver_connection
            step = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


def _rowcount(status: str) -> int:
    """The row count of asyncpg's status message (`INSERT 0 5`, `UPDATE 3`, ...)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdecimal() else -1


async def _translated(conn: AsyncConnection, exc: Exception) -> Exception:
    """`exc` of asyncpg as SQLAlchemy raises it: a `DBAPIError` wrapping the driver's error,
    the connection marked invalid when it is gone (so the pool drops it)."""
    from sqlalchemy.exc import DBAPIError

    raw = await conn.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    try:
        adapted._handle_exception(exc)
    except Exception as dbapi_error:
        disconnect = conn.dialect.is_disconnect(dbapi_error, adapted, None)  # type: ignore[arg-type]
        wrapped = DBAPIError.instance(
            None, None, dbapi_error, type(dbapi_error), connection_invalidated=disconnect
        )
        if disconnect:
            await conn.invalidate(exc)
        return wrapped
    return exc


# -- building statements ----------------------------------------------------------------------


def execute(dialect: str, statement: str, params: tuple[Any, ...]) -> Plan[int]:
    """One statement, as a plan; gives its row count."""
    count: int = yield ("exec", sql(dialect, statement), params)
    return count


def marks(dialect: str, n: int) -> str:
    """`n` parameter marks in the driver's paramstyle."""
    if dialect == "sqlite":
        return ", ".join("?" * n)
    return ", ".join(f"${i}" for i in range(1, n + 1))


def chunks(rows: Sequence[Any], columns: int) -> Iterator[Sequence[Any]]:
    """`rows` of `columns` values each, in slices one statement can bind."""
    size = max(1, min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMETERS // max(1, columns)))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def insert_for(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {dialect}")


# -- values as the drivers take and give them ------------------------------------------------


def to_driver(dialect: str, value: datetime | None) -> Any:
    """A time for the driver: naive UTC text on SQLite (as SQLAlchemy stores it), aware on
    PostgreSQL."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    if dialect == "sqlite":
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def from_driver(value: Any) -> datetime | None:
    """A time as a driver gives it back: text (SQLite) or a datetime, naive meaning UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    moment: datetime = value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def encode(value: Any) -> str:
    return _JSON.encode(value)


def driver_value(dialect: str, value: datetime) -> Any:
    """A time as the driver takes it: aware for asyncpg; for SQLite, the naive UTC text
    SQLAlchemy stores (`YYYY-MM-DD HH:MM:SS.ffffff`), so that both compare and read alike."""
    return sqlite_time(value) if dialect == "sqlite" else value


def sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is UTC:  # normalized times are UTC already: the common case is cheap
        return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"
    return _aware(value).astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC times only")
    return value


def postgres_time(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)
