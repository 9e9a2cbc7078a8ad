"""The morning digest, received by a real SMTP server (aiosmtpd, in a thread of the test):
sent once a day with two app instances on one database, plain text and HTML in one
message, printed by `compose`, and never naming the SMTP credentials.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from app.alerts import digest
from app.main import stale_customers
from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

FINISHED, FAILED = 2, 3
GROUPS = {"job_type": 7, "module": 304}
EXCHANGE = {"job_type": 7, "module": 303}
PASSWORD = "digest-smtp-password-123"


class Inbox:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=check,
        auth_require_tls=False,  # a local test server: no certificate
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


def at_3(clock: FakeClock, days_ago: int) -> datetime:
    return clock.now.replace(hour=3, minute=0, second=0) - timedelta(days=days_ago)


def digest_settings(port: int, **more: Any) -> dict[str, Any]:
    return {
        "digest_to": "noc@msp.example, lead@msp.example",
        "digest_from": "backups@msp.example",
        "digest_at": "07:30",
        "smtp_url": f"smtp://digest:{PASSWORD}@127.0.0.1:{port}",
        "public_url": "https://gateway.msp.example",
        "timezone": "Europe/Amsterdam",
        **more,
    }


async def test_the_digest_is_sent_once_with_two_instances_and_has_both_parts(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    smtp: tuple[Inbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, port = smtp
    failing, quiet = sim.customer_ids()
    for n in range(1, 6):
        sim.put_job(failing, f"ok{n}", status=FINISHED, start=at_3(clock, n), **GROUPS)
        sim.put_job(quiet, f"q{n}", status=FINISHED, start=at_3(clock, n + 2), **EXCHANGE)
    sim.put_job(failing, "fail", status=FAILED, start=at_3(clock, 0), **GROUPS)
    settings = digest_settings(port)
    clock.now = clock.now.replace(hour=6, minute=0)  # 07:00 in Amsterdam: not yet
    async with gateway(**settings) as one, gateway(**settings) as two:
        assert (await one.get("/jobs", params={"max_age": 0})).status_code == 200
        instances = [services_of(one), services_of(two)]
        sent = [
            await digest.send_if_due(
                svc.writer, svc.sessions, svc.settings, svc.clock, svc.refresher.holder,
                svc.refresher.name_of, lambda svc=svc: stale_customers(svc.refresher),
            )
            for svc in instances
        ]  # fmt: skip
        assert sent == [False, False]
        clock.now = clock.now.replace(hour=6, minute=31)  # 07:31: due
        assert (await one.get("/jobs", params={"max_age": 0})).status_code == 200
        for _ in range(2):  # each instance looks twice, as their timers would
            for svc in instances:
                sent.append(
                    await digest.send_if_due(
                        svc.writer, svc.sessions, svc.settings, svc.clock, svc.refresher.holder,
                        svc.refresher.name_of, lambda svc=svc: stale_customers(svc.refresher),
                    )
                )  # fmt: skip
    assert sent.count(True) == 1
    [msg] = inbox.messages
    assert sorted(inbox.recipients[0]) == ["lead@msp.example", "noc@msp.example"]
    assert msg["From"] == "backups@msp.example"
    assert msg["Subject"] == "Backups 2026-11-29: 2 object(s) need attention at 2 customer(s)"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    page = msg.get_body(("html",))
    assert text is not None and page is not None
    plain = text.get_content()
    assert "Failure: microsoft_365 / microsoft_365_groups" in plain
    assert "last success 2026-11-28T03:00:00Z" in plain
    assert "No result: microsoft_365 / exchange_online" in plain
    assert plain.index("Failure") < plain.index("No result")  # worst first
    assert "https://gateway.msp.example/board" in plain
    markup = page.get_content()
    assert "<script" not in markup and "<img" not in markup and "<link" not in markup
    assert 'style="' in markup and "Open the board" in markup
    assert PASSWORD not in caplog.text


async def test_a_refused_send_gives_the_day_back_and_never_names_the_password(
    gateway: Gateway, sim: Simulator, clock: FakeClock, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    # Nothing listens on the port the URL names: refused at once. (A server refusing the
    # password would do too, but aiosmtpd leaves aiosmtplib waiting for its answer until the
    # 30 s timeout.)
    closed = free_port()
    settings = digest_settings(port, smtp_url=f"smtp://digest:{PASSWORD}@127.0.0.1:{closed}")
    async with gateway(**settings) as api:  # its own timer may try first: both are refused
        svc = services_of(api)

        async def attempt() -> bool:
            return await digest.send_if_due(
                svc.writer, svc.sessions, svc.settings, svc.clock, svc.refresher.holder,
                svc.refresher.name_of, lambda: [],
            )  # fmt: skip

        with pytest.raises(digest.DigestNotSent) as refused:
            await attempt()
        assert PASSWORD not in str(refused.value)
        assert "127.0.0.1" in str(refused.value)
        # The day was given back: with the server's port the next look sends it.
        svc.settings.smtp_url = SecretStr(f"smtp://digest:{PASSWORD}@127.0.0.1:{port}")
        assert await attempt() is True
        assert await attempt() is False
    assert len(inbox.messages) == 1
    assert "all good" in str(inbox.messages[0]["Subject"])
