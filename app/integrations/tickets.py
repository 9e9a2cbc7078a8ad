"""The ticket desk: the outbox's ticket work, done in the PSA.

`app.store.telling.tell` writes a delivery to `PSA_RECEIVER` for every alert event and for each
new failure of an open alert, in the transaction of the change. The desk (`Desk.run`) claims
them as the webhook senders claim theirs (`app.store.outbox.claim`: due, the oldest pending
one per alert key, leased so that two processes never work one), and for each:

- it reads the alert as it is now, its ticket row and the customer's company;
- an alert with no ticket yet opens one when it is open, at least `PSA_MIN_SEVERITY`, not
  snoozed (the delivery waits until the snooze ends, and opens it then if the alert is still
  open) and its customer is mapped (else the row says `unmapped`); first the storm guard
  gives it one of the hour's `PSA_MAX_NEW_TICKETS_PER_HOUR` slots, or it waits as `held`
  until one frees up (or `jobs-gateway psa release`); before a create is sent, the row notes
  it, so that a create whose answer was lost is looked up by its external reference (`find`)
  before it is sent again: never two tickets for one alert;
- an alert with a ticket gets a note for a new failure or a severity change, and, on
  `alert.resolved`, a resolution note and the closed status;
- an alert that resolved while its ticket was held never opens one.

Failures are retried with the webhooks' backoff (a `Retry-After` honoured) until the
delivery's deadline; the row shows `failed` and `last_error` meanwhile. A request the PSA will
never take (a 400 and its `errors`) fails at once. The PSA's keys never reach the row, logs or
answers: `PsaError` texts hold only what the PSA said.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alert_rules import AlertState
from app.alerts.notices import Notices
from app.alerts.webhooks import retry_delay
from app.clock import Clock, iso
from app.integrations.psa import Connector, NewTicket, PsaError
from app.integrations.texts import description_of, job_line, summary_of, ticket_ref
from app.store import outbox, repo, tickets
from app.store.outbox import Claimed, Outcome
from app.store.repo import JobRow
from app.store.tickets import PSA_RECEIVER, TicketRow
from app.store.writer import Writer
from app.tasks import keep_gauge

log = logging.getLogger(__name__)

BATCH = 20
LEASE = timedelta(minutes=5)
"""Longer than a slow create (the client's timeout): a claim must outlast its work."""
POLL_SECONDS = 1.0
SEVERITY_RANK = {"warning": 1, "critical": 2}


@dataclass(frozen=True)
class DeskConfig:
    min_severity: str = "warning"
    max_new_per_hour: int = 30
    board_url: str | None = None  # where the description links to (the gateway's board)


@dataclass
class Result:
    """What working one delivery gave: done, retried at `retry_at`, or failed."""

    state: str  # delivered, pending, failed
    error: str | None = None
    status: int | None = None
    retry_at: datetime | None = None
    counts_attempt: bool = True  # a wait (held, snoozed) is no failed attempt


class Desk:
    """Works the outbox's ticket deliveries in the PSA (see the module docstring)."""

    def __init__(
        self,
        *,
        writer: Writer,
        sessions: async_sessionmaker[AsyncSession],
        connector: Connector,
        config: DeskConfig,
        notices: Notices,
        clock: Clock,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.writer = writer
        self.sessions = sessions
        self.psa = connector
        self.config = config
        self.notices = notices
        self.clock = clock
        self.on_request = on_request

    async def run(self) -> None:
        log.info("tickets go to %s", self.psa.name)
        while True:
            seen = self.notices.count
            try:
                worked = await self.work_due()
            except Exception:  # the database may be away: try again at the next poll
                log.exception("ticket work failed")
                worked = 0
            if worked < BATCH:
                await self.notices.wait(POLL_SECONDS, since=seen)

    async def work_due(self) -> int:
        """One round: claim what is due, work it (keys side by side), record the outcomes."""
        now = self.clock()
        claimed = await self.writer.run_plan(
            lambda dialect: outbox.claim(dialect, PSA_RECEIVER, now, BATCH, LEASE)
        )
        if not claimed:
            return 0
        results = await asyncio.gather(*(self._work_safely(c) for c in claimed))
        done = self.clock()
        outcomes = [_outcome(c, r, done) for c, r in zip(claimed, results, strict=True)]
        await self.writer.run_plan(lambda dialect: outbox.record(dialect, outcomes, done))
        return len(claimed)

    async def _work_safely(self, delivery: Claimed) -> Result:
        """One delivery's result; a failure of it is retried, and never costs the batch
        its record (which would do the others' work twice)."""
        try:
            return await self.work(delivery)
        except PsaError as exc:
            retry_at = None
            if exc.retry_after is not None:
                retry_at = self.clock() + timedelta(seconds=exc.retry_after)
            return Result("failed" if exc.permanent else "pending", str(exc), exc.status, retry_at)
        except Exception as exc:  # the database, or an answer not as documented
            log.exception("ticket work for %s failed", delivery.id)
            return Result("pending", f"internal error ({type(exc).__name__}); see the log")

    async def work(self, delivery: Claimed) -> Result:
        event = json.loads(delivery.body)
        kind: str = event["type"]
        key: str = event["alert_key"]
        data = event.get("data") or {}
        opened = data.get("alert", {}).get("opened_at") if kind.startswith("alert.") else None
        opened_at = datetime.fromisoformat(opened.replace("Z", "+00:00")) if opened else None
        dialect = self.writer.dialect
        async with self.sessions() as session:  # reads: not through the writer
            alert = await tickets.read(session, tickets.alert_of(dialect, key, opened_at))
            if alert is None or alert.id is None:
                return Result("delivered")  # purged, or never there: nothing to follow
            row = await tickets.read(session, tickets.ticket_of(dialect, alert.id))
        now = self.clock()
        if row is not None and row.ticket_id is not None:
            return await self._follow(row, alert, kind, data, now)
        if alert.state != "open" or kind == "alert.resolved":
            return await self._never_opened(row, alert, kind, data, now)
        return await self._open(row, alert, data, now)

    async def _save(self, row: TicketRow, now: datetime) -> None:
        await self.writer.run_plan(lambda d: tickets.save(d, row, now))

    async def _never_opened(
        self,
        row: TicketRow | None,
        alert: AlertState,
        kind: str,
        data: dict[str, Any],
        now: datetime,
    ) -> Result:
        """The alert resolved before its ticket was known to exist."""
        if row is None:
            return Result("delivered")
        if row.create_sent_at is not None:
            # A create went out and its answer was lost: the ticket may exist, and must close.
            ref = ticket_ref(alert)
            try:
                found = await self._call("find", self.psa.find(ref))
            except PsaError as exc:
                await self._save(row.but(last_error=str(exc)), now)
                raise
            if found is not None:
                known = row.but(ticket_id=found, state="open", opened_at=row.create_sent_at)
                return await self._follow(known, alert, "alert.resolved", data, now)
        if row.state in ("held", "open"):
            # Held (or never sent): the problem is over before a ticket was needed.
            alert_id = row.alert_id
            await self.writer.run_plan(lambda d: tickets.forget(d, alert_id))
        else:  # unmapped or failed: kept, to show what happened
            await self._save(row.but(closed_at=alert.resolved_at or now), now)
        return Result("delivered")

    async def _job(self, alert: AlertState, data: dict[str, Any]) -> JobRow | None:
        """The job the event tells of, as stored (name, times, counts)."""
        job_id = (data.get("job") or {}).get("job_id")
        if not job_id:
            return None
        async with self.sessions() as session:
            return await repo.get_job(session, alert.customer_id, str(job_id))

    async def _follow(
        self, row: TicketRow, alert: AlertState, kind: str, data: dict[str, Any], now: datetime
    ) -> Result:
        """Notes on a ticket that exists, and its close."""
        ticket_id = row.ticket_id
        assert ticket_id is not None
        if row.state == "closed":
            return Result("delivered")
        try:
            if kind == "alert.resolved":
                job = await self._job(alert, data)
                text = (
                    f"Backups recovered: alert {alert.alert_key} resolved at "
                    f"{iso(alert.resolved_at)}."
                )
                if job is not None:
                    text += "\n" + job_line(job)
                await self._call("close", self.psa.close(ticket_id, text))
                row = row.but(state="closed", closed_at=now, last_error=None)
            elif kind == "alert.updated":
                before = data.get("previous_severity")
                text = f"Severity changed from {before} to {alert.severity}."
                text += f"\nConsecutive failures: {alert.consecutive_failures}."
                await self._call("note", self.psa.note(ticket_id, text))
                row = row.but(state="open", last_error=None)
            elif kind.startswith("job."):
                job = await self._job(alert, data)
                text = f"Another failure ({alert.consecutive_failures} in a row)."
                if job is not None:
                    text += "\n" + job_line(job)
                await self._call("note", self.psa.note(ticket_id, text))
                row = row.but(state="open", last_error=None)
            else:
                return Result("delivered")  # alert.opened of a ticket already open
        except PsaError as exc:
            await self._save(row.but(last_error=str(exc)), now)
            raise
        await self._save(row, now)
        return Result("delivered")

    async def _open(
        self, row: TicketRow | None, alert: AlertState, data: dict[str, Any], now: datetime
    ) -> Result:
        assert alert.id is not None
        alert_id = alert.id
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.config.min_severity]:
            return Result("delivered")  # a later severity change opens it
        if alert.snoozed(now):
            assert alert.snoozed_until is not None
            return Result("pending", retry_at=alert.snoozed_until, counts_attempt=False)
        customer = alert.customer_id
        async with self.sessions() as session:
            company = await tickets.read(session, tickets.company_of(self.writer.dialect, customer))
        # `open` with no ticket id yet: being opened (the storm guard may still hold it).
        base = row or TicketRow(alert_id, alert.alert_key, customer, company, None, "open")
        if company is None:
            await self._save(base.but(company_id=None, state="unmapped", last_error=None), now)
            return Result("delivered")  # a later change of the alert opens it, once mapped
        base = base.but(company_id=company)
        if row is None or row.company_id != company or row.state == "unmapped":
            await self._save(
                base.but(state="open") if row is None or row.state == "unmapped" else base, now
            )
        per_hour = self.config.max_new_per_hour
        slot = await self.writer.run_plan(lambda d: tickets.reserve(d, alert_id, now, per_hour))
        if not slot.granted:
            await self._save(base.but(state="held", last_error=None), now)
            log.warning(
                "ticket for %s held: %d new tickets in the last hour "
                "(PSA_MAX_NEW_TICKETS_PER_HOUR)",
                alert.alert_key,
                per_hour,
            )
            return Result("pending", retry_at=slot.free_at, counts_attempt=False)
        ref = ticket_ref(alert)
        try:
            ticket_id = None
            if base.create_sent_at is not None:
                # A create went out before and its answer never came: it may have landed.
                ticket_id = await self._call("find", self.psa.find(ref))
            if ticket_id is None:
                base = base.but(create_sent_at=now)
                await self._save(base, now)
                job = await self._job(alert, data)  # only now: most deliveries never get here
                ticket = NewTicket(
                    ref=ref,
                    company_id=company,
                    summary=summary_of(alert, job.customer_name if job else None),
                    description=description_of(alert, job, self.config.board_url),
                )
                ticket_id = await self._call("open", self.psa.open(ticket))
        except PsaError as exc:
            await self._save(base.but(state="failed", last_error=str(exc)), now)
            raise
        await self._save(
            base.but(ticket_id=ticket_id, state="open", opened_at=now, last_error=None), now
        )
        log.info("ticket %s opened for %s", ticket_id, alert.alert_key)
        return Result("delivered")

    async def _call(self, verb: str, call: Any) -> Any:
        try:
            result = await call
        except PsaError as exc:
            if self.on_request is not None:
                self.on_request("error")
            log.warning("%s %s: %s", self.psa.name, verb, exc)
            raise
        if self.on_request is not None:
            self.on_request("ok")
        return result


def _outcome(delivery: Claimed, result: Result, now: datetime) -> Outcome:
    tries = delivery.attempts + (1 if result.counts_attempt else 0)
    if result.state == "delivered":
        return Outcome(delivery.id, "delivered", tries, now, result.status, None)
    if result.state == "pending" and not result.counts_attempt:
        # Held or snoozed: waiting is no failure, and no deadline ends it.
        assert result.retry_at is not None
        return Outcome(delivery.id, "pending", tries, result.retry_at, None, result.error)
    if result.state == "failed" or now >= delivery.deadline_at:
        return Outcome(delivery.id, "failed", tries, now, result.status, result.error)
    retry_after = None
    if result.retry_at is not None:
        retry_after = (result.retry_at - now).total_seconds()
    delay = timedelta(seconds=retry_delay(tries, retry_after))
    return Outcome(delivery.id, "pending", tries, now + delay, result.status, result.error)


async def watch_held(
    sessions: async_sessionmaker[AsyncSession], gauge: Any, every: float = 5.0
) -> None:
    """Keep the held-tickets gauge current, forever."""

    async def count() -> int:
        async with sessions() as session:
            dialect = session.get_bind().dialect.name
            return await tickets.read(session, tickets.count_held(dialect))

    await keep_gauge(gauge, count, "held tickets", every)
