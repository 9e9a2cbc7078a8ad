"""The overdue and "no result" sweep's plans: which customers may have a key overdue, and
judging every key of one customer in its own transaction (`app.alerts.sweeps` runs them).
"""

from __future__ import annotations

from datetime import datetime

from app.store.plans import Plan, sql, to_driver
from app.store.telling import FeedConfig, Told, tell
from app.store.versions import lock_customer


def overdue_candidates(dialect: str, cutoff: datetime) -> Plan[list[str]]:
    """Customers with a key whose last success started before `cutoff` and no open alert."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT DISTINCT j.customer_id FROM ("
            "  SELECT customer_id, job_type, module, MAX(start_time) AS last_ok FROM jobs"
            "  WHERE status = 'finished' AND start_time IS NOT NULL"
            "  GROUP BY customer_id, job_type, module"
            ") AS j WHERE j.last_ok < ? AND NOT EXISTS ("
            "  SELECT 1 FROM alerts a WHERE a.state = 'open' AND a.customer_id = j.customer_id"
            "  AND a.job_type = j.job_type AND a.module = j.module)",
        ),
        (to_driver(dialect, cutoff),),
    )
    return sorted(r[0] for r in rows)


def sweep_customer(dialect: str, customer_id: str, at: datetime, config: FeedConfig) -> Plan[Told]:
    """Judge every key of one customer at `at` (in its own transaction): overdue alerts."""
    yield from lock_customer(dialect, customer_id, at)
    told: Told = yield from tell(dialect, customer_id, at, (), config, all_keys=True)
    return told
