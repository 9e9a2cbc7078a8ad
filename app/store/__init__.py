"""Persistence: tables (`tables`), engine, sessions and migrations (`db`), queries (`repo`).

Typical use, from the application's lifespan and its request handlers::

    engine = create_engine(settings.database_url)
    await migrate(engine)  # DatabaseUnavailable when the database cannot be used
    sessions = session_factory(engine)
    async with sessions() as session:
        rows = await query_jobs(session, JobQuery(statuses=["failed"], limit=100))
"""

from app.store.db import (
    DatabaseUnavailable,
    async_url,
    create_engine,
    migrate,
    migrations_current,
    safe_url,
    session_factory,
)
from app.store.repo import (
    DEFAULT_SORT,
    SORTS,
    CountGroup,
    CustomerState,
    HistoryRow,
    InvalidCursor,
    JobQuery,
    JobRow,
    JobSort,
    Keyset,
    Outcome,
    SnapshotRecord,
    StatusChange,
    customer_states,
    get_job,
    job_history,
    keyset_of,
    query_jobs,
    record_failure,
    record_success,
    status_counts,
    upsert_customers,
)

__all__ = [
    "DEFAULT_SORT",
    "SORTS",
    "CountGroup",
    "CustomerState",
    "DatabaseUnavailable",
    "HistoryRow",
    "InvalidCursor",
    "JobQuery",
    "JobRow",
    "JobSort",
    "Keyset",
    "Outcome",
    "SnapshotRecord",
    "StatusChange",
    "async_url",
    "create_engine",
    "customer_states",
    "get_job",
    "job_history",
    "keyset_of",
    "migrate",
    "migrations_current",
    "query_jobs",
    "record_failure",
    "record_success",
    "safe_url",
    "session_factory",
    "status_counts",
    "upsert_customers",
]
