"""Refresh leases: on PostgreSQL, one process at a time refreshes a customer.

A process takes a customer's lease (`take`) before it walks the customer. A lease is free
when nobody holds it, when it has expired (its holder died), or when its holder is the one
asking. The holder gives it back when its refresh is committed (`give_back`), or turns it
into a backoff after a failed one (`back_off`): a lease held by `BACKOFF` until the backoff
ends, so that no process asks the upstream about that customer before then. `give_back_all`
hands back what a stopping process holds.

SQLite is one process, so it needs no leases: the refresher uses them on PostgreSQL only.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from app.store.feed import Plan, from_driver, sql, to_driver

BACKOFF = "backoff"
"""The holder of a lease that keeps a failing customer from being asked again too soon."""


class Taken(NamedTuple):
    """The outcome of `take`: whether the caller holds the lease now; else who does and
    until when."""

    ours: bool
    holder: str
    expires_at: datetime


def take(
    dialect: str, customer_id: str, holder: str, now: datetime, until: datetime
) -> Plan[Taken]:
    stamp, expires = to_driver(dialect, now), to_driver(dialect, until)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "INSERT INTO refresh_leases (customer_id, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE refresh_leases.expires_at <= ? OR refresh_leases.holder = excluded.holder "
            "RETURNING holder",
        ),
        (customer_id, holder, expires, stamp),
    )
    if rows:
        return Taken(True, holder, until)
    rows = yield (
        "fetch",
        sql(dialect, "SELECT holder, expires_at FROM refresh_leases WHERE customer_id = ?"),
        (customer_id,),
    )
    if not rows:  # given back in between: free after all
        taken: Taken = yield from take(dialect, customer_id, holder, now, until)
        return taken
    expires_at = from_driver(rows[0][1])
    assert expires_at is not None
    return Taken(False, rows[0][0], expires_at)


def extend(dialect: str, customer_id: str, holder: str, until: datetime) -> Plan[bool]:
    """Keep holding the lease until `until` (a long walk); False when it was lost."""
    count = yield (
        "exec",
        sql(
            dialect,
            "UPDATE refresh_leases SET expires_at = ? WHERE customer_id = ? AND holder = ?",
        ),
        (to_driver(dialect, until), customer_id, holder),
    )
    return bool(count)


def give_back(dialect: str, customer_id: str, holder: str) -> Plan[None]:
    yield (
        "exec",
        sql(dialect, "DELETE FROM refresh_leases WHERE customer_id = ? AND holder = ?"),
        (customer_id, holder),
    )


def back_off(dialect: str, customer_id: str, holder: str, until: datetime) -> Plan[None]:
    """Turn the caller's lease into a backoff until `until`."""
    yield (
        "exec",
        sql(
            dialect,
            "UPDATE refresh_leases SET holder = ?, expires_at = ? "
            "WHERE customer_id = ? AND holder = ?",
        ),
        (BACKOFF, to_driver(dialect, until), customer_id, holder),
    )


def give_back_all(dialect: str, holder: str) -> Plan[int]:
    count = yield ("exec", sql(dialect, "DELETE FROM refresh_leases WHERE holder = ?"), (holder,))
    return int(count or 0)


def holders_on(dialect: str, host: str) -> Plan[list[str]]:
    """Holders of leases taken by processes of this host."""
    rows = yield (
        "fetch",
        sql(dialect, "SELECT DISTINCT holder FROM refresh_leases WHERE holder LIKE ?"),
        (f"{host}:%",),
    )
    return [r[0] for r in rows]
