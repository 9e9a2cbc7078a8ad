"""Fixtures every suite shares: a fresh database of each backend.

`database_url` is an empty database, fresh for every test: a SQLite file in `tmp_path`, or a
PostgreSQL database created for the test and dropped after it. PostgreSQL comes from
TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test, a database used only to
create and drop the per-test ones). When it is unreachable the PostgreSQL variants are skipped
with the reason, or fail when JOBS_GATEWAY_REQUIRE_POSTGRES=1 (as in CI).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from app.store.db import safe_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _probe(url: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=3)
    await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The admin URL of a reachable PostgreSQL, or a skip (a failure when it is required)."""
    url = postgres_admin_url()
    try:
        # In a thread of its own: this may be set up while a test's event loop runs.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, _probe(url)).result()
    except Exception as exc:
        reason = (
            f"PostgreSQL at {safe_url(url)} is unreachable ({type(exc).__name__}: {exc}); "
            "start one or point TEST_POSTGRES_URL at one"
        )
        if os.environ.get("JOBS_GATEWAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (JOBS_GATEWAY_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    return url


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database (plain URL, as DATABASE_URL would give it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'store.sqlite'}"
        return
    admin = request.getfixturevalue("postgres_url")
    name = f"jobs_gateway_test_{uuid.uuid4().hex[:16]}"
    await _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
