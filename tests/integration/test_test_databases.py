"""The suite's PostgreSQL test databases (tests/databases.py): a database given back is used
again only once it is as fresh as a new copy of the template, and one whose schema a test
changed is never used again."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from tests.databases import PostgresDatabases, asyncpg_dsn

pytestmark = pytest.mark.postgres


def run(url: str, *statements: str) -> list[list[tuple[object, ...]]]:
    async def go() -> list[list[tuple[object, ...]]]:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
        try:
            return [[tuple(r) for r in await connection.fetch(s)] for s in statements]
        finally:
            await connection.close()

    return asyncio.run(go())


FRESH = (
    "SELECT count(*) FROM customers",
    "SELECT count(*) FROM events",
    "SELECT id, purged_upto FROM feed_horizon",
    "SELECT nextval('events_id_seq')",
)


def test_a_database_given_back_is_taken_again_as_fresh_as_a_new_copy(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.take()
    fresh = run(url, *FRESH)
    # A test's leftovers: rows, a changed seed row, a sequence moved on, and a connection
    # left open (as a server process or an engine not disposed leaves one).
    run(
        url,
        "INSERT INTO customers (id, name, created_at, updated_at)"
        " VALUES ('c1', 'Left over', now(), now())",
        "INSERT INTO events (type, at, customer_id, data)"
        " VALUES ('job.created', now(), 'c1', '{}')",
        "UPDATE feed_horizon SET purged_upto = 99",
        "SELECT setval('events_id_seq', 500)",
    )
    left_open = asyncio.new_event_loop()
    connection = left_open.run_until_complete(asyncpg.connect(asyncpg_dsn(url), timeout=10))
    try:
        postgres_databases.give_back(url)
        again = postgres_databases.take()
        assert make_url(again).database == make_url(url).database  # used again, not copied
        assert run(again, *FRESH) == fresh
    finally:
        left_open.run_until_complete(connection.close(timeout=1))
        left_open.close()
    postgres_databases.give_back(again)


def test_a_database_whose_schema_a_test_changed_is_not_used_again(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.take()
    run(url, "ALTER TABLE customers ADD COLUMN extra integer")
    postgres_databases.give_back(url)
    again = postgres_databases.take()
    assert make_url(again).database != make_url(url).database
    columns = run(
        again,
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'customers' AND column_name = 'extra'",
    )
    assert columns == [[(0,)]]
    postgres_databases.give_back(again)
