"""Refresh leases: one walk at a time per customer, across processes, fenced at commit.

A walk takes the customer's lease (`take`) when it really starts (it holds a walk slot), so
the lease never runs down while the walk waits in a queue. A lease is free when nobody
holds it, when it has expired (its holder died or stalled), or when its holder is the one
asking. Every take draws a new fencing `token`: the walk renews the lease while it runs
(`extend`, which says False once the lease was taken over), and its merge checks, inside the
merge's own transaction, that the lease is still its own, giving it back in the same statement
(`check_and_give_back`). A walk that lost its lease
therefore commits nothing, whatever order walks finish in.

Expiry is judged by the database's clock, never by a process's own: every time written or
compared here is the database's "now" plus a duration, so processes whose clocks disagree
still agree on who holds a lease. The same holds on SQLite, where several processes on one
file (`jobs-gateway refresh` beside `serve`) take turns the same way.

The holder gives the lease back when its walk is committed (the merge does, in its own
transaction; `give_back` when a walk ends without one), or turns it into a backoff after a
failed one (`back_off`): a lease held by `backoff:<holder>` until the backoff
ends, so that no other process asks the upstream about that customer before then (the
process that backed off keeps its own account, in memory). `give_back_all` hands back what a
stopping process holds.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import NamedTuple

from app.store.plans import Plan, from_driver, sql

BACKOFF = "backoff"
"""The holder prefix of a lease that keeps a failing customer from being asked too soon."""


class LeaseLost(Exception):
    """The walk's lease expired and was taken over (or given up): it may not commit."""

    def __init__(self, customer_id: str) -> None:
        super().__init__(f"the refresh lease of customer {customer_id} was lost")
        self.customer_id = customer_id


class Lease(NamedTuple):
    """The outcome of `take`: whether the caller holds the lease now (with its token, and
    the database's time of the take); else who does, and for how many seconds more."""

    ours: bool
    holder: str
    token: int
    taken_at: object  # the database's now, in the driver's form (see `app.store.plans`)
    seconds_left: float
    # Taken: when the customer's last good snapshot was stored, by whichever process (read
    # in the take's own transaction, so a walk need not ask again whether one landed).
    stored_at: datetime | None = None

    @property
    def backoff(self) -> bool:
        return is_backoff(self.holder)


def is_backoff(holder: str) -> bool:
    return holder == BACKOFF or holder.startswith(f"{BACKOFF}:")


def backoff_of(holder: str) -> str:
    """The holder a process's backoff leases carry."""
    return f"{BACKOFF}:{holder}"


def now_sql(dialect: str, plus: bool = False) -> str:
    """The database's now (plus a `?` number of seconds), as the store keeps times: aware on
    PostgreSQL, naive UTC text with microseconds on SQLite (so that text compares in order)."""
    if dialect == "postgresql":
        return "(clock_timestamp() + make_interval(secs => ?))" if plus else "clock_timestamp()"
    if plus:
        return "(strftime('%Y-%m-%d %H:%M:%f', 'now', ? || ' seconds') || '000')"
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


def seconds_left_sql(dialect: str) -> str:
    """Seconds from the database's now until `expires_at` (negative: expired)."""
    if dialect == "postgresql":
        return "EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8"
    return "(julianday(expires_at) - julianday('now')) * 86400.0"


def _seconds(dialect: str, value: float) -> object:
    # SQLite's modifier is text ("+12.5 seconds"); PostgreSQL's interval takes a float.
    return f"{value:+.6f}" if dialect == "sqlite" else float(value)


def take(dialect: str, customer_id: str, holder: str, seconds: float) -> Plan[Lease]:
    """Take the customer's lease for `seconds` if it is free (or already the caller's, or
    the caller's own backoff); else say who holds it."""
    token = secrets.randbits(62)
    now = now_sql(dialect)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "INSERT INTO refresh_leases (customer_id, holder, expires_at, token) "  # noqa: S608
            f"VALUES (?, ?, {now_sql(dialect, plus=True)}, ?) "
            "ON CONFLICT (customer_id) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at, token = excluded.token "
            f"WHERE refresh_leases.expires_at <= {now} "
            "OR refresh_leases.holder = excluded.holder OR refresh_leases.holder = ? "
            f"RETURNING token, {now}",
        ),
        (customer_id, holder, _seconds(dialect, seconds), token, backoff_of(holder)),
    )
    if rows:
        stored = yield (
            "fetch",
            sql(
                dialect,
                "SELECT MAX(finished_at) FROM snapshots "
                "WHERE customer_id = ? AND outcome = 'success'",
            ),
            (customer_id,),
        )
        return Lease(
            True,
            holder,
            int(rows[0][0]),
            rows[0][1],
            float(seconds),
            from_driver(stored[0][0]) if stored else None,
        )
    found = yield from peek(dialect, customer_id)
    if found is None:  # given back in between: free after all
        lease: Lease = yield from take(dialect, customer_id, holder, seconds)
        return lease
    return found


def peek(dialect: str, customer_id: str) -> Plan[Lease | None]:
    """Who holds the customer's lease now, if anyone (`ours` is False: a look only)."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            f"SELECT holder, token, {now_sql(dialect)}, {seconds_left_sql(dialect)} "  # noqa: S608
            "FROM refresh_leases WHERE customer_id = ?",
        ),
        (customer_id,),
    )
    if not rows:
        return None
    holder, token, now, left = rows[0]
    return Lease(False, holder, int(token), now, float(left))


def extend(dialect: str, customer_id: str, holder: str, token: int, seconds: float) -> Plan[bool]:
    """Keep holding the lease for `seconds` more; False when it was lost (taken over)."""
    count = yield (
        "exec",
        sql(
            dialect,
            f"UPDATE refresh_leases SET expires_at = {now_sql(dialect, plus=True)} "  # noqa: S608
            "WHERE customer_id = ? AND holder = ? AND token = ?",
        ),
        (_seconds(dialect, seconds), customer_id, holder, token),
    )
    return bool(count)


def check(dialect: str, customer_id: str, holder: str, token: int) -> Plan[None]:
    """Inside a merge's transaction: the lease must still be the caller's, with its token
    (locked on PostgreSQL until the merge commits, so nobody takes it over meanwhile)."""
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT 1 FROM refresh_leases "  # noqa: S608 - the lock clause is ours
            f"WHERE customer_id = ? AND holder = ? AND token = ?{lock}",
        ),
        (customer_id, holder, token),
    )
    if not rows:
        raise LeaseLost(customer_id)


def check_and_give_back(dialect: str, customer_id: str, holder: str, token: int) -> Plan[None]:
    """`check`, and the lease given back in the same statement: a merge that stores does it
    first in its transaction (the row stays locked until it commits, and comes back with a
    rollback), instead of a check and, once committed, a give-back of its own."""
    rows = yield (
        "fetch",
        sql(
            dialect,
            "DELETE FROM refresh_leases WHERE customer_id = ? AND holder = ? AND token = ? "
            "RETURNING 1",
        ),
        (customer_id, holder, token),
    )
    if not rows:
        raise LeaseLost(customer_id)


def give_back(dialect: str, customer_id: str, holder: str, token: int) -> Plan[None]:
    yield (
        "exec",
        sql(
            dialect,
            "DELETE FROM refresh_leases WHERE customer_id = ? AND holder = ? AND token = ?",
        ),
        (customer_id, holder, token),
    )


def back_off(dialect: str, customer_id: str, holder: str, token: int, seconds: float) -> Plan[None]:
    """Turn the caller's lease into a backoff for `seconds` (the database's clock)."""
    yield (
        "exec",
        sql(
            dialect,
            "UPDATE refresh_leases SET holder = ?, "  # noqa: S608 - the clock's SQL is ours
            f"expires_at = {now_sql(dialect, plus=True)} "
            "WHERE customer_id = ? AND holder = ? AND token = ?",
        ),
        (backoff_of(holder), _seconds(dialect, seconds), customer_id, holder, token),
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
