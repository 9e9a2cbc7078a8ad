"""Engines and URLs: the async driver forms, SQLite settings, sessions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.db import async_url, create_engine, safe_url, session_factory
from app.store.tables import Customer, Snapshot


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/jobs", "postgresql+asyncpg://u:p@db:5432/jobs"),
        ("postgres://u:p@db/jobs", "postgresql+asyncpg://u:p@db/jobs"),
        ("postgresql+asyncpg://u@db/jobs", "postgresql+asyncpg://u@db/jobs"),
        ("postgresql+psycopg://u@db/jobs", "postgresql+psycopg://u@db/jobs"),
        ("sqlite:///data/jobs.db", "sqlite+aiosqlite:///data/jobs.db"),
        ("sqlite:////abs/jobs.db", "sqlite+aiosqlite:////abs/jobs.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("mysql+aiomysql://u@h/db", "mysql+aiomysql://u@h/db"),
    ],
)
def test_async_url(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_safe_url_hides_the_password() -> None:
    assert safe_url("postgresql://gateway:s3cret@db/jobs") == "postgresql://gateway:***@db/jobs"
    assert "s3cret" not in safe_url("postgresql+asyncpg://gateway:s3cret@db/jobs")


async def test_file_database_gets_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert path.parent.is_dir()


async def test_memory_database_works() -> None:
    engine = create_engine("sqlite://")
    try:
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()


async def test_sessions_keep_objects_readable_after_commit(engine: AsyncEngine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    async with session_factory(engine)() as session:
        customer = Customer(id="c1", name="Contoso", created_at=at, updated_at=at)
        session.add(customer)
        await session.commit()
        assert customer.name == "Contoso"  # no lazy reload after commit
        loaded = (await session.execute(select(Customer))).scalar_one()
        assert loaded.created_at == at
        assert loaded.created_at.tzinfo is not None


async def test_foreign_keys_are_enforced(engine: AsyncEngine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    async with session_factory(engine)() as session:
        session.add(Snapshot(customer_id="ghost", started_at=at, finished_at=at, outcome="error"))
        with pytest.raises(IntegrityError):
            await session.flush()


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgres_engine_skips_jit(engine: AsyncEngine) -> None:
    # Its pings: tests/integration/test_pool_ping.py.
    assert engine.url.drivername == "postgresql+asyncpg"
    async with engine.connect() as connection:
        assert (await connection.exec_driver_sql("SHOW jit")).scalar() == "off"


async def test_a_database_error_never_shows_its_statements_parameters(
    engine: AsyncEngine,
) -> None:
    # Parameters hold webhook receivers' URLs (their paths are credentials) and key hashes;
    # an error logged with its traceback prints its text.
    receiver = "https://hooks.example.test/services/T000/B000-param-secret-6d"
    with pytest.raises(DBAPIError) as caught:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO no_such_table (url) VALUES (?)"
                if engine.dialect.name == "sqlite"
                else "INSERT INTO no_such_table (url) VALUES ($1)",
                (receiver,),
            )
    assert "no_such_table" in str(caught.value)
    assert "B000-param-secret-6d" not in str(caught.value)
