"""PostgreSQL's pool: a connection idle for a while is pinged before use; one handed back a
moment ago is not, and a server that dropped it is still survived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import db
from tests.databases import PostgresDatabases, asyncpg_dsn

pytestmark = pytest.mark.postgres


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())


async def _terminate(admin_url: str, pid: int) -> None:
    """Ends the server process `pid`, and waits until the server says it has gone."""
    admin = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=10)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # only turns a hang into a failure
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            assert loop.time() < deadline, "the server ended the connection's process"
            await asyncio.sleep(0.01)
    finally:
        await admin.close()


@pytest.fixture
def pg_database_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    url = postgres_databases.take()
    try:
        yield url
    finally:
        postgres_databases.give_back(url)


@asynccontextmanager
async def _dropped(
    postgres_url: str, url: str, ping_after: float, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AsyncEngine, int]]:
    """An engine pinging after `ping_after` seconds idle, whose one pooled connection the
    server has just ended (and that connection's server process id)."""
    monkeypatch.setattr(db, "POSTGRES_PING_AFTER_IDLE_SECONDS", ping_after)
    engine = db.create_engine(url)
    try:
        first = await _backend_pid(engine)
        await _terminate(postgres_url, first)
        yield engine, first
    finally:
        await engine.dispose()


async def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    postgres_url: str, pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every checkout counts as "idle for a while": the ping runs each time.
    async with _dropped(postgres_url, pg_database_url, 0.0, monkeypatch) as (engine, first):
        # The pooled connection fails its ping and is replaced: the caller sees no error.
        assert await _backend_pid(engine) != first


async def test_a_connection_handed_back_a_moment_ago_is_not_pinged_and_a_drop_is_survived(
    postgres_url: str, pg_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _dropped(postgres_url, pg_database_url, 3600.0, monkeypatch) as (engine, first):
        # Not pinged: its first statement finds the server gone, as a disconnect ...
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        # ... and the pool has let it go: the next use has a new connection.
        assert await _backend_pid(engine) != first
