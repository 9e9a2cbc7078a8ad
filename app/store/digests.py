"""The digest's day claims: a process may send a day's digest only after it inserted that
day's row (`claim`), which succeeds for one process only, whatever the replicas and
restarts. A send that failed gives the claim back (`release`), so a later try sends it.
"""

from __future__ import annotations

from datetime import datetime

from app.store.plans import Plan, sql, to_driver


def claim(dialect: str, day: str, holder: str, now: datetime) -> Plan[bool]:
    """Take the day's digest; False when another process (or this one) already did."""
    count = yield (
        "exec",
        sql(
            dialect,
            "INSERT INTO digest_days (day, holder, claimed_at) VALUES (?, ?, ?) "
            "ON CONFLICT (day) DO NOTHING",
        ),
        (day, holder, to_driver(dialect, now)),
    )
    return bool(count == 1)


def release(dialect: str, day: str, holder: str) -> Plan[None]:
    """Give back a claim whose digest could not be sent."""
    yield (
        "exec",
        sql(dialect, "DELETE FROM digest_days WHERE day = ? AND holder = ?"),
        (day, holder),
    )
