"""Database fixtures: every store test runs on a SQLite file and on PostgreSQL.

- `database_url` (tests/conftest.py): a database of each backend at the newest schema, fresh
  for every test (a copy of the one the migrations built for the session).
- `engine`: an engine on that database.
- `session`: one session on it.
- `make_job`: builds a `NormalizedJob` with sensible defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.normalize import NormalizedJob
from app.store.db import create_engine, session_factory

MakeJob = Callable[..., NormalizedJob]


@pytest.fixture
def backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database built by the migrations."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(engine)() as session:
        yield session


T0 = datetime(2025, 9, 11, 3, 0, 0, tzinfo=UTC)


@pytest.fixture
def make_job() -> MakeJob:
    def make(customer_id: str = "c1", job_id: str = "j1", **fields: Any) -> NormalizedJob:
        values: dict[str, Any] = {
            "customer_id": customer_id,
            "job_id": job_id,
            "name": f"Job {job_id}",
            "job_type_code": 7,
            "module_code": 304,
            "status_code": 2,
            "total_count": 10,
            "failed_count": 0,
            "successful_count": 10,
            "skipped_count": 0,
            "warning_count": 0,
            "backup_size_bytes": 1024,
            "start_time": T0,
            "end_time": T0.replace(minute=10),
            "duration_seconds": 600,
            "last_modified": T0.replace(minute=11),
            "raw": {"jobId": job_id, "status": fields.get("status_code", 2)},
        }
        values.update(fields)
        return NormalizedJob(**values)

    return make
