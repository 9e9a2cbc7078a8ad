"""The daily digest: what a technician reads first in the morning, by email.

`compose` gathers every protected object that is not `ok` (failure, no result, warning;
retired objects are left out), grouped by customer, worst first, with days in state and
last success, the customers whose data is stale, and a link to the board; `message` makes
one email of it, plain text and HTML (inline styles, no scripts, no remote images).

`send_if_due` runs every half minute in every server: once `DIGEST_AT` has passed in
`TIMEZONE`, the process that claims the day in the database (`app.store.digests`) sends it;
every other process, and this one after a restart, finds the day claimed and sends nothing.
SMTP goes through `SMTP_URL`; its credentials never reach a log line or an error.
"""

from __future__ import annotations

import asyncio
import html
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.alerts.objects import Judged, Judging, judge_objects
from app.clock import Clock, iso
from app.config import Settings
from app.store import digests
from app.store.writer import Writer

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0
"""How often a server looks whether the day's digest is due."""

RANK = {"failure": 0, "no_result": 1, "warning": 2}
"""Worst first: a failure, then no result, then a warning."""
LABEL = {"failure": "Failure", "no_result": "No result", "warning": "Warning"}
COLOUR = {"failure": "#b00020", "no_result": "#8a4b00", "warning": "#7a6400"}


@dataclass(frozen=True, slots=True)
class StaleCustomer:
    customer_id: str
    name: str | None
    state: str  # stale or error
    fetched_at: datetime | None


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    job_type: str
    module: str
    state: str
    days_in_state: int
    last_success_at: datetime | None


@dataclass(frozen=True, slots=True)
class CustomerProblems:
    customer_id: str
    name: str | None
    problems: list[Problem]


@dataclass(frozen=True, slots=True)
class Digest:
    day: str  # YYYY-MM-DD in TIMEZONE
    customers: list[CustomerProblems]
    stale: list[StaleCustomer]
    board_url: str

    @property
    def subject(self) -> str:
        count = sum(len(c.problems) for c in self.customers)
        if not count and not self.stale:
            return f"Backups {self.day}: all good"
        return (
            f"Backups {self.day}: {count} object(s) need attention at "
            f"{len(self.customers)} customer(s)"
            + (f", {len(self.stale)} customer(s) stale" if self.stale else "")
        )


def local_day(now: datetime, settings: Settings) -> str:
    return now.astimezone(settings.zone).date().isoformat()


def group(
    judged: Sequence[Judged], name_of: Callable[[str], str | None], now: datetime
) -> list[CustomerProblems]:
    """The objects not ok (nor retired), by customer, worst first."""
    by_customer: dict[str, list[Problem]] = {}
    for j in judged:
        state = j.assessment.state
        if state not in RANK:
            continue
        cid, job_type, module = j.obj
        by_customer.setdefault(cid, []).append(
            Problem(
                key=":".join(j.obj),
                job_type=job_type,
                module=module,
                state=state,
                days_in_state=j.assessment.days_in_state(now),
                last_success_at=j.assessment.last_success_at,
            )
        )
    out = [
        CustomerProblems(
            cid, name_of(cid), sorted(ps, key=lambda p: (RANK[p.state], -p.days_in_state, p.key))
        )
        for cid, ps in by_customer.items()
    ]
    out.sort(
        key=lambda c: (
            min(RANK[p.state] for p in c.problems),
            -len(c.problems),
            (c.name or c.customer_id).lower(),
        )
    )
    return out


async def compose(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    name_of: Callable[[str], str | None],
    stale: Sequence[StaleCustomer],
) -> Digest:
    """The digest of the data as stored now."""
    judging = Judging(frozenset(settings.alert_statuses), settings.zone)
    judged = await judge_objects(session, None, judging, now)
    board = settings.public_url.rstrip("/") + "/board"
    return Digest(local_day(now, settings), group(judged, name_of, now), list(stale), board)


def _since(moment: datetime | None) -> str:
    return iso(moment) or "never"


def text_of(d: Digest) -> str:
    lines = [d.subject, ""]
    if not d.customers:
        lines.append("Every protected object is ok.")
    for c in d.customers:
        lines.append(f"{c.name or c.customer_id} ({c.customer_id})")
        for p in c.problems:
            lines.append(
                f"  - {LABEL[p.state]}: {p.job_type} / {p.module}, "
                f"{p.days_in_state} day(s) in state, last success {_since(p.last_success_at)}"
            )
        lines.append("")
    if d.stale:
        lines.append("Customers whose data is stale:")
        for s in d.stale:
            lines.append(
                f"  - {s.name or s.customer_id} ({s.customer_id}): {s.state}, "
                f"last fetched {_since(s.fetched_at)}"
            )
        lines.append("")
    lines.append(f"The board: {d.board_url}")
    return "\n".join(lines) + "\n"


def html_of(d: Digest) -> str:
    e = html.escape
    cell = "padding:4px 8px;border-bottom:1px solid #ddd;text-align:left"
    parts = [
        '<!DOCTYPE html><html><body style="font-family:Arial,Helvetica,sans-serif;'
        'color:#1a1a1a;background:#ffffff">',
        f'<h1 style="font-size:18px">{e(d.subject)}</h1>',
    ]
    if not d.customers:
        parts.append("<p>Every protected object is ok.</p>")
    for c in d.customers:
        parts.append(
            f'<h2 style="font-size:16px;margin-bottom:4px">{e(c.name or c.customer_id)} '
            f'<span style="color:#666;font-weight:normal">({e(c.customer_id)})</span></h2>'
        )
        parts.append('<table style="border-collapse:collapse" cellpadding="0" cellspacing="0">')
        parts.append(
            f'<tr><th style="{cell}">State</th><th style="{cell}">Job type / module</th>'
            f'<th style="{cell}">Days in state</th><th style="{cell}">Last success</th></tr>'
        )
        for p in c.problems:
            # The state is written out, never shown by colour alone.
            parts.append(
                f'<tr><td style="{cell};color:{COLOUR[p.state]};font-weight:bold">'
                f"{e(LABEL[p.state])}</td>"
                f'<td style="{cell}">{e(p.job_type)} / {e(p.module)}</td>'
                f'<td style="{cell}">{p.days_in_state}</td>'
                f'<td style="{cell}">{e(_since(p.last_success_at))}</td></tr>'
            )
        parts.append("</table>")
    if d.stale:
        parts.append('<h2 style="font-size:16px">Customers whose data is stale</h2><ul>')
        for s in d.stale:
            parts.append(
                f"<li>{e(s.name or s.customer_id)} ({e(s.customer_id)}): {e(s.state)}, "
                f"last fetched {e(_since(s.fetched_at))}</li>"
            )
        parts.append("</ul>")
    parts.append(f'<p><a href="{e(d.board_url)}" style="color:#0b57d0">Open the board</a></p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def message(d: Digest, settings: Settings) -> EmailMessage:
    """One email: the plain text, and the HTML as its alternative."""
    msg = EmailMessage()
    msg["Subject"] = d.subject
    msg["From"] = settings.digest_from or f"jobs-gateway@{socket.getfqdn()}"
    msg["To"] = ", ".join(settings.digest_to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="jobs-gateway")
    msg.set_content(text_of(d))
    msg.add_alternative(html_of(d), subtype="html")
    return msg


def smtp_options(url: str) -> dict[str, Any]:
    """aiosmtplib's options for an SMTP_URL (checked by `Settings`)."""
    parts = urlsplit(url)
    tls = parts.scheme == "smtps"
    options: dict[str, Any] = {
        "hostname": parts.hostname,
        "port": parts.port or (465 if tls else 587 if parts.scheme == "smtp+starttls" else 25),
        "use_tls": tls,
        # smtp://: STARTTLS when the server offers it (a local relay may not);
        # smtp+starttls://: required.
        "start_tls": True if parts.scheme == "smtp+starttls" else None,
        "timeout": 30,
    }
    if parts.username:
        options["username"] = unquote(parts.username)
        options["password"] = unquote(parts.password or "")
    return options


def where(url: str) -> str:
    """The SMTP server as logs may name it: host and port, never credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}".rstrip(":")


async def send(msg: EmailMessage, settings: Settings) -> None:
    """Send `msg` to DIGEST_TO through SMTP_URL; a failure raises `DigestNotSent`, whose
    message names the server but never the credentials."""
    assert settings.smtp_url is not None
    url = settings.smtp_url.get_secret_value()
    import aiosmtplib  # here: only a process with SMTP_URL sends (70 ms to import)

    try:
        await aiosmtplib.send(msg, recipients=settings.digest_to, **smtp_options(url))
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        kind = type(exc).__name__
        code = getattr(exc, "code", None)
        raise DigestNotSent(
            f"the digest could not be sent through {where(url)}: {kind}"
            + (f" {code}" if code else "")
        ) from None


class DigestNotSent(Exception):
    """The SMTP server refused or could not be reached (the message names it, no secret)."""


def due(now: datetime, settings: Settings) -> bool:
    """Whether today's digest time (DIGEST_AT in TIMEZONE) has come."""
    hours, minutes = (int(x) for x in settings.digest_at.split(":"))
    return now.astimezone(settings.zone).time() >= time(hours, minutes)


async def send_if_due(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    holder: str,
    name_of: Callable[[str], str | None],
    stale: Callable[[], Sequence[StaleCustomer]],
) -> bool:
    """Send today's digest if it is due and no process sent it yet; whether this one did."""
    now = clock()
    if not (settings.digest_to and settings.smtp_url and due(now, settings)):
        return False
    day = local_day(now, settings)
    if not await writer.run_plan(lambda d: digests.claim(d, day, holder, now)):
        return False
    try:
        async with sessions() as session:
            digest = await compose(session, settings, now, name_of, stale())
        await send(message(digest, settings), settings)
    except BaseException:
        await writer.run_plan(lambda d: digests.release(d, day, holder))
        raise
    log.info("the digest of %s went to %d recipient(s)", day, len(settings.digest_to))
    return True


async def run_digests(
    writer: Writer,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Clock,
    holder: str,
    name_of: Callable[[str], str | None],
    stale: Callable[[], Sequence[StaleCustomer]],
    every: float = CHECK_SECONDS,
) -> None:
    """`send_if_due` every `every` seconds, forever."""
    while True:
        try:
            await send_if_due(writer, sessions, settings, clock, holder, name_of, stale)
        except DigestNotSent as exc:
            log.warning("%s; trying again in %.0f s", exc, every)
        except Exception:  # the database may be away for a while: try again next time
            log.exception("the digest check failed")
        await asyncio.sleep(every)
