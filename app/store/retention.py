"""Retention: what is older than `RETENTION_DAYS` leaves the store, a little at a time.

`purge(writer, now, days)` deletes, of what is older than `now - days`:

- `jobs` the upstream stopped reporting (below), with their history;
- `job_status_history` rows, but never a job's newest row: a job that still exists keeps
  its current status's row, so `GET /jobs/{customer_id}/{job_id}` always shows how it got
  to what it is now, however long it has been unchanged; only the older changes go;
- `snapshots`, but never a customer's newest snapshot nor its newest successful one: they
  are what start-up loads (`repo.customer_states`), so a restart still knows how current,
  and how failing, every customer is;
- `webhook_deliveries` that are `delivered` or `failed`, never `pending` ones;
- `events`, except those a delivery that stays still points to. Ids are never reused after
  a purge, even of the newest events: AUTOINCREMENT on SQLite, a sequence on PostgreSQL;
  nothing is reset. The highest id purged is kept (`feed_horizon`, moved in the transaction
  that deletes), so that `GET /events` tells a client whose cursor is below it that it
  missed events (410), on every process, rather than skipping them;
- resolved `alerts`, by `resolved_at`; open ones stay, however old;
- `maintenance_windows` that ended before the cutoff (the grid's oldest days then show
  what ran, as `/jobs` does once their history went), and `digest_days`, the claims of
  digests sent before it (a day that old is never sent again anyway).

Every step goes in batches of at most `batch` rows of its table (a purged job's history
goes with it), each its own short write transaction
through the `Writer` (on SQLite, the one writer every refresh also waits for), with a turn
of the event loop between them: a purge of a year of history never holds the writer for
longer than one batch. Steps that walk a table by age resume where the previous batch
ended (a keyset), so the rows a step keeps are looked at once per purge, not once per batch.
`run_retention` runs `purge` every hour.

Which jobs the upstream stopped reporting
-----------------------------------------
A job is still reported when the customer's newest successful refresh saw it. A refresh
rewrites only the jobs whose upstream row changed (issue 6), so `jobs.last_seen_at` is when
the job last changed, not when it was last seen: a job unchanged for 90 days is reported by
every refresh, and nothing stored says so. Writing a "seen at" per job per refresh would
bring back the write per row per refresh that issue 6 removed.

So the store marks the opposite, which is rare: `jobs.unreported_since`, set by a
successful refresh's merge on the customer's stored jobs its walk did not see
(`Ingest.known` less `Ingest.seen`), and cleared when one is seen again. Marking a job also
clears its content hash, so the walk that sees it again rewrites it (its `last_seen_at`
moves) and knows to clear the mark without reading anything more. While no job
disappears, this costs nothing: no statement at all. `note_reported` (`app.store.jobs`) is
that upkeep, a plan (`app.store.plans`) the one merge (`app.store.merge`) runs in its
transaction, after it wrote the jobs. Until the merge runs it, no job is marked and so no
job is purged: the safe side.

A job is purged when `unreported_since` and `last_seen_at` are both older than the cutoff:
the upstream has not reported it for `days`. A job without a mark is never purged, however
old its `last_seen_at`: its customer's newest successful refresh saw it, even when that
refresh is months old because every one since failed. Purging a job moves its customer's
data version (a walk that read the store before then takes its changes again) and
recounts its `job_count`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from app.clock import Clock
from app.store.plans import Plan, sql, to_driver

if TYPE_CHECKING:
    from app.store.writer import Writer

log = logging.getLogger(__name__)

RETENTION_SECONDS = 3600.0
"""How often `run_retention` purges: a day's threshold needs no finer grain."""

START_DELAY_SECONDS = 60.0
"""How long `run_retention` waits before its first purge: start-up's refreshes go first."""

BATCH = 500
"""Rows per purge transaction: short enough that a waiting refresh hardly notices."""

TABLES = (
    "jobs",
    "job_status_history",
    "snapshots",
    "webhook_deliveries",
    "events",
    "alerts",
    "maintenance_windows",
    "digest_days",
)
"""The tables `purge` counts, in the order it purges them."""

_IDS_PER_STATEMENT = 500  # job ids in one IN (...) of `note_reported`

Keyset = tuple[Any, int]
"""Where a walk by age stopped: (the time as the driver gave it, the row id)."""


@dataclass
class Purged:
    """What one purge deleted: rows per table, and the customers whose jobs went (their
    data version moved)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    customers: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


async def purge(
    writer: Writer, now: datetime, days: float, *, batch: int = BATCH
) -> dict[str, int]:
    """Delete what is older than `now - days` (see the module docstring); rows per table.

    `days` <= 0 keeps everything. Each batch of at most `batch` rows is one write
    transaction; the event loop gets a turn between two.
    """
    return (await purge_store(writer, now, days, batch=batch)).counts


async def purge_store(writer: Writer, now: datetime, days: float, *, batch: int = BATCH) -> Purged:
    """`purge`, telling also whose jobs went."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    purged = Purged()
    if days <= 0:
        return purged
    cutoff = now - timedelta(days=days)
    counts = purged.counts

    # Jobs first: their history goes with them.
    while True:
        jobs, history, customers, examined = await writer.run_plan(
            functools.partial(purge_jobs, cutoff=cutoff, batch=batch)
        )
        counts["jobs"] += jobs
        counts["job_status_history"] += history
        purged.customers.update(customers)
        await asyncio.sleep(0)
        if examined < batch:
            break

    after: Keyset | None = None
    while True:
        deleted, examined, after = await writer.run_plan(
            functools.partial(purge_history, cutoff=cutoff, batch=batch, after=after)
        )
        counts["job_status_history"] += deleted
        await asyncio.sleep(0)
        if examined < batch:
            break

    async with writer.sessions() as session:
        found = await session.execute(text("SELECT id FROM customers ORDER BY id"))
        customer_ids = [str(row[0]) for row in found.all()]
    position = 0
    while position < len(customer_ids):
        deleted, done = await writer.run_plan(
            functools.partial(
                purge_snapshots, cutoff=cutoff, batch=batch, customer_ids=customer_ids[position:]
            )
        )
        counts["snapshots"] += deleted
        position += done
        await asyncio.sleep(0)

    after = None
    while True:
        deliveries, events, examined, after = await writer.run_plan(
            functools.partial(purge_events, cutoff=cutoff, batch=batch, after=after)
        )
        counts["webhook_deliveries"] += deliveries
        counts["events"] += events
        await asyncio.sleep(0)
        if examined < batch:
            break

    after_id = 0
    while True:
        deleted, examined, after_id = await writer.run_plan(
            functools.partial(purge_alerts, cutoff=cutoff, batch=batch, after_id=after_id)
        )
        counts["alerts"] += deleted
        await asyncio.sleep(0)
        if examined < batch:
            break

    for table in AGED:
        while True:
            (deleted,) = await writer.run_plan(
                functools.partial(purge_aged, table=table, cutoff=cutoff, batch=batch)
            )
            counts[table] += deleted
            await asyncio.sleep(0)
            if deleted < batch:
                break
    return purged


async def run_retention(
    writer: Writer,
    days: float,
    clock: Clock,
    every: float = RETENTION_SECONDS,
    *,
    delay: float = START_DELAY_SECONDS,
    on_jobs_purged: Callable[[Sequence[str]], Awaitable[None]] | None = None,
) -> None:
    """`purge` every `every` seconds, the first time after `delay`, forever; never raises (a
    failed purge is logged and tried again next time). `on_jobs_purged` hears of the
    customers whose jobs went, so that what is cached of them moves on (`Refresher.reload`)."""
    await asyncio.sleep(delay)
    while True:
        try:
            purged = await purge_store(writer, clock(), days)
            if purged.total:
                log.info(
                    "retention: purged what was older than %g days: %s",
                    days,
                    ", ".join(f"{n} {table}" for table, n in purged.counts.items() if n),
                )
            if purged.customers and on_jobs_purged is not None:
                await on_jobs_purged(sorted(purged.customers))
        except Exception:  # the database may be away for a while: try again next time
            log.exception("the retention purge failed")
        await asyncio.sleep(every)


# -- the steps, one transaction each (plans of driver SQL, see `app.store.plans`) --------------
# Table and column names in the SQL are this module's constants, never input: the `noqa: S608`
# below mark no injection.


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def purge_jobs(dialect: str, cutoff: datetime, batch: int) -> Plan[tuple[int, int, list[str], int]]:
    """Up to `batch` jobs not reported since before `cutoff`, with their history. Gives the
    jobs and history rows deleted, the customers concerned, and the jobs looked at."""
    t = to_driver(dialect, cutoff)
    gone = "unreported_since < ? AND last_seen_at < ?"
    rows = yield (
        "fetch",
        sql(
            dialect,
            f"SELECT customer_id, job_id FROM jobs WHERE {gone} "  # noqa: S608
            "ORDER BY unreported_since, customer_id, job_id LIMIT ?",
        ),
        (t, t, batch),
    )
    by_customer: dict[str, list[str]] = {}
    for customer_id, job_id in rows:
        by_customer.setdefault(customer_id, []).append(job_id)
    jobs = history = 0
    customers: list[str] = []
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    for customer_id, job_ids in sorted(by_customer.items()):
        # The customer's row first, as a merge takes it: the two take turns (PostgreSQL).
        yield (
            "fetch",
            sql(dialect, f"SELECT data_version FROM customers WHERE id = ?{lock}"),  # noqa: S608
            (customer_id,),
        )
        # Looked at again under the lock: a merge may have seen a job again meanwhile.
        still = f"customer_id = ? AND job_id IN ({_marks(len(job_ids))}) AND {gone}"
        params = (customer_id, *job_ids, t, t)
        history += yield (
            "exec",
            sql(
                dialect,
                "DELETE FROM job_status_history WHERE customer_id = ? AND job_id IN "  # noqa: S608
                f"(SELECT job_id FROM jobs WHERE {still})",
            ),
            (customer_id, *params),
        )
        deleted = yield ("exec", sql(dialect, f"DELETE FROM jobs WHERE {still}"), params)  # noqa: S608
        if deleted:
            jobs += deleted
            customers.append(customer_id)
            yield (
                "exec",
                sql(
                    dialect,
                    "UPDATE customers SET data_version = data_version + 1, "
                    "job_count = (SELECT COUNT(*) FROM jobs WHERE customer_id = ?) WHERE id = ?",
                ),
                (customer_id, customer_id),
            )
    return jobs, history, customers, len(rows)


def _after(column: str, after: Keyset | None) -> tuple[str, tuple[Any, ...]]:
    """The condition that resumes a walk by (`column`, id) after `after`."""
    if after is None:
        return "", ()
    at, row_id = after
    # The plain bound on the time gives both databases an index range.
    return f" AND {column} >= ? AND ({column} > ? OR id > ?)", (at, at, row_id)


def purge_history(
    dialect: str, cutoff: datetime, batch: int, after: Keyset | None
) -> Plan[tuple[int, int, Keyset | None]]:
    """Of the next `batch` history rows older than `cutoff` (oldest first, after `after`),
    delete those that are not their job's newest. Gives the rows deleted, the rows looked
    at and where to go on from."""
    resume, params = _after("changed_at", after)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT id, changed_at FROM job_status_history "  # noqa: S608
            f"WHERE changed_at < ?{resume} ORDER BY changed_at, id LIMIT ?",
        ),
        (to_driver(dialect, cutoff), *params, batch),
    )
    if not rows:
        return 0, 0, after
    ids = [row[0] for row in rows]
    deleted = yield (
        "exec",
        sql(
            dialect,
            f"DELETE FROM job_status_history WHERE id IN ({_marks(len(ids))}) "  # noqa: S608
            "AND EXISTS (SELECT 1 FROM job_status_history AS newer "
            "WHERE newer.customer_id = job_status_history.customer_id "
            "AND newer.job_id = job_status_history.job_id "
            "AND (newer.changed_at > job_status_history.changed_at "
            "OR (newer.changed_at = job_status_history.changed_at "
            "AND newer.id > job_status_history.id)))",
        ),
        tuple(ids),
    )
    last_id, last_at = rows[-1]
    return int(deleted), len(rows), (last_at, int(last_id))


def purge_snapshots(
    dialect: str, cutoff: datetime, batch: int, customer_ids: Sequence[str]
) -> Plan[tuple[int, int]]:
    """Snapshots older than `cutoff` of the first of `customer_ids`, at most `batch` rows
    and customers in all, keeping each customer's newest and newest successful snapshot.
    Gives the rows deleted and how many of the customers are done."""
    t = to_driver(dialect, cutoff)
    statement = sql(
        dialect,
        "DELETE FROM snapshots WHERE id IN (SELECT s.id FROM snapshots AS s "
        "WHERE s.customer_id = ? AND s.finished_at < ? "
        # What `repo.customer_states` reads: the newest attempt, and the newest success.
        "AND s.id <> (SELECT n.id FROM snapshots AS n WHERE n.customer_id = ? "
        "ORDER BY n.finished_at DESC, n.id DESC LIMIT 1) "
        "AND s.id <> COALESCE((SELECT n.id FROM snapshots AS n WHERE n.customer_id = ? "
        "AND n.outcome = 'success' ORDER BY n.finished_at DESC, n.id DESC LIMIT 1), -1) "
        "ORDER BY s.finished_at, s.id LIMIT ?)",
    )
    budget, deleted, done = batch, 0, 0
    for customer_id in customer_ids:
        n = yield ("exec", statement, (customer_id, t, customer_id, customer_id, budget))
        deleted += n
        if n >= budget:  # maybe more of this customer: the next transaction goes on
            break
        done += 1
        budget -= n + 1  # a customer with nothing to purge still costs a look
        if budget <= 0:
            break
    return deleted, done


def purge_events(
    dialect: str, cutoff: datetime, batch: int, after: Keyset | None
) -> Plan[tuple[int, int, int, Keyset | None]]:
    """Of the next `batch` events older than `cutoff` (oldest first, after `after`), their
    delivered and failed deliveries, then the events no delivery points to any more. Gives
    the deliveries and events deleted, the events looked at and where to go on from.

    A delivery is written with its event, `created_at` the event's `at`: the old deliveries
    are those of the old events."""
    t = to_driver(dialect, cutoff)
    resume, params = _after("at", after)
    rows = yield (
        "fetch",
        sql(
            dialect,
            f"SELECT id, at FROM events WHERE at < ?{resume} ORDER BY at, id LIMIT ?",  # noqa: S608
        ),
        (t, *params, batch),
    )
    if not rows:
        return 0, 0, 0, after
    ids = tuple(row[0] for row in rows)
    marks = _marks(len(ids))
    deliveries = yield (
        "exec",
        sql(
            dialect,
            f"DELETE FROM webhook_deliveries WHERE event_id IN ({marks}) "  # noqa: S608
            "AND state IN ('delivered', 'failed') AND created_at < ?",
        ),
        (*ids, t),
    )
    events = yield (
        "exec",
        sql(
            dialect,
            f"DELETE FROM events WHERE id IN ({marks}) AND NOT EXISTS "  # noqa: S608
            "(SELECT 1 FROM webhook_deliveries AS d WHERE d.event_id = events.id)",
        ),
        ids,
    )
    if events:
        yield from note_purged(dialect, ids)
    last_id, last_at = rows[-1]
    return int(deliveries), int(events), len(rows), (last_at, int(last_id))


def note_purged(dialect: str, ids: Sequence[int]) -> Plan[None]:
    """Move the feed's purge horizon up to the highest of `ids` this transaction deleted (a
    delivery may have kept some): a cursor below it has missed events (`events.read_feed`)."""
    kept = yield (
        "fetch",
        sql(dialect, f"SELECT id FROM events WHERE id IN ({_marks(len(ids))})"),  # noqa: S608
        tuple(ids),
    )
    gone = set(ids) - {row[0] for row in kept}
    if gone:
        upto = max(gone)
        yield (
            "exec",
            sql(dialect, "UPDATE feed_horizon SET purged_upto = ? WHERE purged_upto < ?"),
            (upto, upto),
        )


def purge_alerts(
    dialect: str, cutoff: datetime, batch: int, after_id: int
) -> Plan[tuple[int, int, int]]:
    """Up to `batch` alerts resolved before `cutoff`, by id after `after_id`. Gives the rows
    deleted, the rows looked at and the id to go on from."""
    t = to_driver(dialect, cutoff)
    rows = yield (
        "fetch",
        sql(
            dialect,
            "SELECT id FROM alerts WHERE state = 'resolved' AND resolved_at < ? AND id > ? "
            "ORDER BY id LIMIT ?",
        ),
        (t, after_id, batch),
    )
    if not rows:
        return 0, 0, after_id
    ids = tuple(row[0] for row in rows)
    deleted = yield (
        "exec",
        sql(
            dialect,
            f"DELETE FROM alerts WHERE id IN ({_marks(len(ids))}) "  # noqa: S608
            "AND state = 'resolved' AND resolved_at < ?",
        ),
        (*ids, t),
    )
    return int(deleted), len(rows), int(ids[-1])


AGED = {
    "maintenance_windows": ("id", "ends_at"),  # windows that ended
    "digest_days": ("day", "claimed_at"),  # digests claimed (sent)
}
"""Tables purged by one time alone: their key and the time a row is aged by."""


def purge_aged(dialect: str, table: str, cutoff: datetime, batch: int) -> Plan[tuple[int]]:
    """Up to `batch` rows of `table` (one of `AGED`) older than `cutoff`; gives the rows
    deleted (first, as every step does)."""
    key, column = AGED[table]
    deleted = yield (
        "exec",
        sql(
            dialect,
            f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608
            f"WHERE {column} < ? ORDER BY {key} LIMIT ?)",
        ),
        (to_driver(dialect, cutoff), batch),
    )
    return (int(deleted),)


# -- the mark of jobs the upstream stopped reporting, kept by a refresh's merge -----------------


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        yield ids[start : start + _IDS_PER_STATEMENT]
