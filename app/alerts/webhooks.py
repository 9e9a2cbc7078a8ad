"""Webhooks: the outbox's deliveries POSTed to their receivers, signed as Standard Webhooks says.

A delivery row is written with its event (`app.store.telling.tell`), so nothing is lost across a
restart. For each receiver a sender task (`Sender.run_url`):

1. claims the deliveries that are due, at most the oldest pending one per `alert_key` (so a
   key's events arrive in order), by setting a lease that another process respects;
2. POSTs each event's JSON with `webhook-id` (the event id), `webhook-timestamp` and
   `webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`);
3. records the answer: a 2xx delivers; anything else, a timeout or a refused connection
   retries with exponential backoff and jitter (a `Retry-After` is honoured) until the
   delivery's deadline (24 hours), when it is marked failed and the key's next event goes.

Each receiver has its own task, so one that is down never delays the others. Delivery is at
least once: a process that dies after sending but before recording sends again after the
lease ends. Receivers de-duplicate by `webhook-id`.

At start-up the pending deliveries of receivers no longer in `WEBHOOK_URLS` are failed
(`receiver_removed`, `fail_removed_receivers`): no sender would ever take them. The SQL of all
this is in `app.store.outbox`; what to do with an answer is decided here.

A receiver's URL often is its credential (a secret in the path, a token in the query), so it
is shown only as its origin (`receiver_origin`), in answers and in every log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from app import __version__
from app.alerts.notices import Notices
from app.clock import Clock
from app.store import outbox
from app.store.outbox import Claimed, Outcome
from app.store.writer import Writer
from app.tasks import all_of, keep_gauge

log = logging.getLogger(__name__)

BATCH = 50
"""Deliveries one sender claims at a time."""
LEASE = timedelta(seconds=60)
"""How long a claim keeps other senders (and processes) off a delivery."""
TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 3600.0
POLL_SECONDS = 1.0
"""How often an idle sender looks for due deliveries (notices wake it sooner)."""


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: doubling from 5 s up to
    an hour, with jitter so that many deliveries failing together do not retry together."""
    # The exponent is capped first: manual retries let attempts grow without bound.
    base = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** min(max(0, attempts - 1), 30))
    delay = base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_SECONDS))
    return delay


DEFAULT_PORTS = {"http": 80, "https": 443}


def receiver_origin(url: str) -> str:
    """How a receiver is shown wherever people see it (answers, logs, errors): its origin,
    `scheme://host[:port]`, and nothing of its path, query, fragment or user info. Slack-,
    Teams- and Zapier-style receivers carry their secret in the path, others a token in the
    query. The port shows unless it is the scheme's default, as browsers show an origin; an
    IPv6 host keeps its brackets."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname  # hostname: lower case, no user info
    if not scheme or not host:
        return "<not a URL>"  # never the text itself: it may be all secret
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # out of range: WEBHOOK_URLS refuses it, an old row may hold it
        port = None
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST gave: a status (None: no answer), an error text, a Retry-After."""

    delivery: Claimed
    status: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def outcome_of(attempt: Attempt, now: datetime) -> Outcome:
    """Delivered, retried later with backoff, or failed once past its deadline."""
    delivery = attempt.delivery
    tries = delivery.attempts + 1
    if attempt.ok:
        state, next_at = "delivered", now
    elif now >= delivery.deadline_at:
        state, next_at = "failed", now
    else:
        delay = timedelta(seconds=retry_delay(tries, attempt.retry_after))
        state, next_at = "pending", now + delay
    return Outcome(delivery.id, state, tries, next_at, attempt.status, attempt.error)


async def fail_removed_receivers(writer: Writer, urls: Sequence[str], now: datetime) -> None:
    """At start-up: the pending deliveries of receivers no longer in `WEBHOOK_URLS` fail
    (`receiver_removed`), as no sender will ever take them. Receivers are compared by their
    whole URL, as the senders claim by it; two of them may share an origin."""
    failed = await writer.run_plan(
        lambda dialect: outbox.fail_removed_receivers(dialect, urls, now)
    )
    for url, count in failed.items():
        log.warning(
            "%d pending webhook deliveries to %s marked failed (%s): the receiver is no "
            "longer in WEBHOOK_URLS",
            count,
            receiver_origin(url),
            outbox.RECEIVER_REMOVED,
        )


def retry_after_seconds(response: httpx.Response, now: datetime) -> float | None:
    """A `Retry-After` header in seconds from `now` (it may be seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class Sender:
    """Delivers the outbox to every receiver of `WEBHOOK_URLS` (see the module docstring)."""

    def __init__(
        self,
        *,
        writer: Writer,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        secret: str,
        urls: Sequence[str],
        notices: Notices,
        clock: Clock,
        on_attempt: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.writer = writer
        self.sessions = sessions
        self.http = http
        self.signer = Webhook(secret)
        self.urls = list(urls)
        self.notices = notices
        self.clock = clock
        self.on_attempt = on_attempt

    async def run(self) -> None:
        log.info(
            "webhooks go to %s", ", ".join(receiver_origin(url) for url in self.urls) or "nobody"
        )
        await all_of(*(self.run_url(url) for url in self.urls))

    async def run_url(self, url: str) -> None:
        """Deliver to `url` forever: what is due now, then wait for a notice or the poll."""
        while True:
            seen = self.notices.count
            try:
                sent = await self.deliver_due(url)
            except Exception:  # the database may be away: try again at the next poll
                log.exception("webhook deliveries to %s failed", receiver_origin(url))
                sent = 0
            if sent < BATCH:
                await self.notices.wait(POLL_SECONDS, since=seen)

    async def deliver_due(self, url: str) -> int:
        """One round for `url`: claim what is due, send it, record the answers."""
        now = self.clock()
        claimed = await self.writer.run_plan(
            lambda dialect: outbox.claim(dialect, url, now, BATCH, LEASE)
        )
        if not claimed:
            return 0
        attempts = await asyncio.gather(*(self._send(url, c) for c in claimed))
        done = self.clock()
        outcomes = [outcome_of(a, done) for a in attempts]
        await self.writer.run_plan(lambda dialect: outbox.record(dialect, outcomes, done))
        return len(claimed)

    async def _send(self, url: str, delivery: Claimed) -> Attempt:
        msg_id = str(delivery.event_id)
        sent_at = datetime.now(UTC)  # the receiver checks it against its own clock
        headers = {
            "content-type": "application/json",
            "user-agent": f"jobs-gateway/{__version__}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self.signer.sign(msg_id, sent_at, delivery.body),
        }
        try:
            response = await self.http.post(
                url, content=delivery.body.encode(), headers=headers, timeout=TIMEOUT_SECONDS
            )
        except httpx.TimeoutException:
            attempt = Attempt(delivery, None, f"no answer within {TIMEOUT_SECONDS:g} s")
        except Exception as exc:  # httpx's errors, and anything else a bad address raises
            attempt = Attempt(delivery, None, f"{type(exc).__name__}: could not reach the receiver")
        else:
            error = None if response.is_success else f"the receiver answered {response.status_code}"
            attempt = Attempt(
                delivery,
                response.status_code,
                error,
                retry_after_seconds(response, sent_at) if not response.is_success else None,
            )
        if not attempt.ok:
            log.warning(
                "webhook %s to %s: %s (attempt %d)",
                msg_id,
                receiver_origin(url),
                attempt.error,
                delivery.attempts + 1,
            )
        if self.on_attempt is not None:
            self.on_attempt("delivered" if attempt.ok else "failed", attempt.ok)
        return attempt


async def watch_backlog(
    sessions: async_sessionmaker[AsyncSession], gauge: Any, every: float = 15.0
) -> None:
    """Keep the webhook backlog gauge (pending deliveries) current, forever."""

    async def count() -> int:
        async with sessions() as session:
            return await outbox.pending_deliveries(session)

    await keep_gauge(gauge, count, "the webhook backlog", every)
