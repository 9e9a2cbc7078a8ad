"""Webhooks as a PSA's receiver meets them: real HTTP receivers on loopback (the README's
`examples/receiver.py` as a process, and a receiver thread whose answers a test scripts) get
the feed's events, signed as Standard Webhooks says, at least once, in order per alert key,
retried while they fail, and kept in the database's outbox across a restart.

Scheduling runs on the FakeClock (`next_attempt_at`): a test moves it past a retry's time and
wakes the sender (`Notices`) rather than waiting. The signature's timestamp is real time.
Every API test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from app.access import keys
from app.alerts import webhooks
from app.alerts.webhooks import receiver_origin, retry_delay
from app.api.deps import Services
from app.logs import QUIET_LOGGERS
from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway, settings_for
from tests.clock import FakeClock

HOUR = 3600.0
FINISHED, FAILED, RUNNING = 2, 3, 1
RECEIVER = Path(__file__).resolve().parents[2] / "examples" / "receiver.py"
Items = list[dict[str, Any]]


# -- receivers ----------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on (a dead receiver, or one that comes up later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class Receiver:
    """A receiver in a thread of the test: `answers` (status, headers) go to the first
    requests, `status` to the others; with `hang`, requests get no answer until `stop`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.status = 204
        self.hang = False
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    status, extra = (
                        receiver.answers.pop(0) if receiver.answers else (receiver.status, {})
                    )
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Request(self.path, headers, body, status))
                if receiver.hang:
                    receiver.released.wait()
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.origin = f"http://127.0.0.1:{self.port}"  # how answers and logs show it
        self.url = f"{self.origin}/hook"
        # A short poll: `stop` waits for it.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def types(self, status: int | None = None) -> list[str]:
        return [r.event["type"] for r in self.requests if status is None or r.status == status]

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    started: list[Receiver] = []

    def start() -> Receiver:
        started.append(Receiver())
        return started[-1]

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def receiver(receivers: Callable[[], Receiver]) -> Receiver:
    return receivers()


@dataclass
class Example:
    """`examples/receiver.py` running as a process; what it printed is in `out`."""

    process: subprocess.Popen[bytes]
    port: int
    out: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(secret: str, port: int | None = None) -> Example:
        port = port or free_port()
        out, err = tmp_path / f"receiver-{port}.out", tmp_path / f"receiver-{port}.err"
        env = {**os.environ, "WEBHOOK_SECRET": secret, "PORT": str(port)}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(RECEIVER)], env=env, stdout=stdout, stderr=stderr
            )
        started.append(process)
        deadline = time.monotonic() + 60  # a failure guard: a loaded machine starts slowly
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the example receiver exited:\n{err.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return Example(process, port, out)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the example receiver did not listen in 60 s") from None
                time.sleep(0.05)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the gateway side -----------------------------------------------------------------------


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Customers whose only jobs are the ones a test puts in place."""
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


@pytest.fixture
def customer(sim: Simulator) -> str:
    return sim.customer_ids()[0]


@pytest.fixture
def secret() -> str:
    return new_secret()


def hooks(urls: str, secret: str, **more: Any) -> dict[str, Any]:
    return {"webhook_urls": urls, "webhook_secret": secret, **more}


def services(api: httpx.AsyncClient) -> Services:
    svc: Services = api._transport.app.state.services  # type: ignore[attr-defined]
    return svc


def key_of(customer: str) -> str:
    return f"{customer}:microsoft_365:microsoft_365_groups"  # put_job's default type/module


async def refresh(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs", params={"max_age": 0})
    assert response.status_code == 200, response.text


async def feed(api: httpx.AsyncClient, **params: Any) -> tuple[Items, str]:
    """The events as GET /events shows them, and the answer's text."""
    response = await api.get("/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    items: Items = response.json()["items"]
    return items, response.text


async def deliveries(api: httpx.AsyncClient, **params: Any) -> Items:
    response = await api.get("/webhooks/deliveries", params=params)
    assert response.status_code == 200, response.text
    items: Items = response.json()["items"]
    return sorted(items, key=lambda d: d["id"])  # oldest first


async def until(
    api: httpx.AsyncClient,
    done: Callable[[Items], bool],
    *,
    clock: FakeClock | None = None,
    step: float = 0,
    wake: bool = True,
    seconds: float = 30.0,
) -> Items:
    """The deliveries, once `done` holds for them; polled with short real sleeps (`seconds`
    only guards against waiting forever). Each round may move the clock by `step` (so that
    retries come due) and wake the sender."""
    deadline = time.monotonic() + seconds
    while True:
        items = await deliveries(api)
        if done(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries not as expected within {seconds} s: {items}")
        if clock is not None:
            clock.advance(step)
        if wake:
            services(api).notices.notify()
        await asyncio.sleep(0.05)


async def a_sender_round(api: httpx.AsyncClient, seconds: float = 30.0) -> None:
    """Wake the (one) sender and return once it has looked for due deliveries: a round that
    began after the wake-up has ended, so what was due has been sent."""
    notices = services(api).notices
    woken = notices.count + 1
    rounds: list[int] = []
    wait = notices.wait

    async def counted(seconds: float, since: int | None = None) -> bool:
        if since is not None and since >= woken:  # it read the count after the wake-up
            rounds.append(since)
        return await wait(seconds, since)

    notices.wait = counted  # type: ignore[method-assign]
    try:
        notices.notify()
        deadline = time.monotonic() + seconds
        while not rounds:
            assert time.monotonic() < deadline, f"the sender did not look within {seconds} s"
            await asyncio.sleep(0.01)
    finally:
        del notices.wait


def delivered(count: int) -> Callable[[Items], bool]:
    return lambda items: sum(d["state"] == "delivered" for d in items) >= count


def attempted(count: int = 1) -> Callable[[Items], bool]:
    return lambda items: bool(items) and items[0]["attempts"] >= count


def at(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what is sent ---------------------------------------------------------------------------


async def test_an_alert_opening_reaches_the_example_receiver_verified_once(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    example: Callable[..., Example],
) -> None:
    rx = example(secret)
    async with gateway(**hooks(rx.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, delivered(1))
        [opened], text = await feed(api, type="alert.opened")
        assert d["event_id"] == opened["id"]
        assert d["event_type"] == "alert.opened"
        assert (d["attempts"], d["last_status"], d["last_error"]) == (1, 204, None)
        assert d["delivered_at"] == z(clock.now)
        assert d["next_attempt_at"] is None
        # The receiver verified the signature and printed the event as the feed shows it.
        [line] = rx.lines()
        assert line in text
        assert json.loads(line) == opened
        assert opened["alert_key"] == key_of(customer)

    async with httpx.AsyncClient() as client:
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": str(opened["id"]),
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(secret).sign(str(opened["id"]), sent_at, line),
        }
        # At least once: the same webhook-id again is acknowledged and not handled twice.
        again = await client.post(rx.url, content=line, headers=headers)
        assert again.status_code == 204
        assert rx.lines() == [line]
        # Another body, or another secret's signature, is refused.
        forged = await client.post(
            rx.url, content=line.replace("warning", "critical"), headers=headers
        )
        assert forged.status_code == 400
        other = Webhook(new_secret()).sign(str(opened["id"]), sent_at, line)
        stranger = await client.post(
            rx.url, content=line, headers={**headers, "webhook-signature": other}
        )
        assert stranger.status_code == 400
        unsigned = await client.post(rx.url, content=line)
        assert unsigned.status_code == 400
        assert rx.lines() == [line]


async def test_the_post_is_signed_as_standard_webhooks_says_and_is_the_feeds_event(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    before = int(time.time())
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, delivered(1))
        events, text = await feed(api)
        # job.created is in the feed, but not among the default WEBHOOK_EVENTS.
        assert [e["type"] for e in events] == ["job.created", "alert.opened"]
        opened = events[1]
        assert d["event_id"] == opened["id"]

    [request] = receiver.requests
    assert request.path == "/hook"
    h = request.headers
    assert h["webhook-id"] == str(opened["id"])
    assert h["content-type"] == "application/json"
    assert h["user-agent"].startswith("jobs-gateway/")
    # Real time (when it was sent), not the FakeClock's.
    assert before <= int(h["webhook-timestamp"]) <= time.time()
    version, _, signature = h["webhook-signature"].partition(",")
    assert version == "v1"
    assert len(base64.b64decode(signature)) == 32  # HMAC-SHA256
    assert Webhook(secret).verify(request.body, h) == opened
    assert request.body.decode() in text  # byte for byte as GET /events shows it
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace(b"warning", b"critical"), h)


async def test_webhook_events_chooses_the_types_that_are_sent(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    settings = hooks(receiver.url, secret, webhook_events="job.created,alert.opened")
    async with gateway(**settings) as api:
        sim.put_job(customer, "run-1", status=RUNNING, start=clock.now)
        await refresh(api)
        sim.put_job(customer, "run-1", status=FAILED, start=clock.now)
        await refresh(api)
        items = await until(api, delivered(2))
        events, _ = await feed(api)
    assert [e["type"] for e in events] == ["job.created", "job.status_changed", "alert.opened"]
    assert [d["event_type"] for d in items] == ["job.created", "alert.opened"]
    assert receiver.types() == ["job.created", "alert.opened"]
    assert [r.event for r in receiver.requests] == [events[0], events[2]]


# -- retries ------------------------------------------------------------------------------


async def test_a_failing_receiver_gets_retried_with_backoff_until_it_answers(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    receiver.answers = [(500, {}), (503, {"Retry-After": "120"})]
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, attempted(1))
        assert d["state"] == "pending"
        assert (d["last_status"], d["last_error"]) == (500, "the receiver answered 500")
        assert d["last_attempt_at"] == z(clock.now)
        assert d["delivered_at"] is None
        # The first retry comes 2.5 to 5 s later (doubling from 5 s, with jitter).
        assert clock.now < at(d["next_attempt_at"]) <= clock.now + timedelta(seconds=5)

        clock.advance(5)
        [d] = await until(api, attempted(2))
        assert (d["state"], d["last_status"]) == ("pending", 503)
        # Retry-After is honoured: no sooner than the receiver asked.
        assert at(d["next_attempt_at"]) == clock.now + timedelta(seconds=120)
        clock.advance(60)
        await a_sender_round(api)
        assert len(receiver.requests) == 2  # not due yet

        clock.advance(60)
        [d] = await until(api, delivered(1))
        assert (d["attempts"], d["last_status"], d["last_error"]) == (3, 204, None)
        assert d["delivered_at"] == z(clock.now)
        assert d["next_attempt_at"] is None
    assert [r.status for r in receiver.requests] == [500, 503, 204]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1  # one message


async def test_past_its_deadline_a_delivery_fails_and_a_retry_sends_it_again(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    receiver.status = 500
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, attempted(1))
        assert d["deadline_at"] == z(clock.now + timedelta(hours=24))

        pending = await api.post(f"/webhooks/deliveries/{d['id']}/retry")
        assert pending.status_code == 409, pending.text
        assert pending.json()["error"] == "conflict"
        unknown = await api.post("/webhooks/deliveries/987654/retry")
        assert unknown.status_code == 404, unknown.text
        assert unknown.json()["error"] == "not_found"

        clock.advance(25 * HOUR)
        [d] = await until(api, lambda items: items[0]["state"] == "failed")
        assert (d["attempts"], d["last_status"]) == (2, 500)
        assert d["next_attempt_at"] is None
        assert d["delivered_at"] is None
        assert await deliveries(api, state="pending") == []

        receiver.status = 204
        retried = await api.post(f"/webhooks/deliveries/{d['id']}/retry")
        assert retried.status_code == 200, retried.text
        body = retried.json()
        assert body["state"] == "pending"
        assert body["deadline_at"] == z(clock.now + timedelta(hours=24))
        [d] = await until(api, delivered(1))
        assert (d["attempts"], d["last_status"]) == (3, 204)
    assert [r.status for r in receiver.requests] == [500, 500, 204]


async def test_a_keys_events_arrive_in_order_even_when_the_first_one_fails_for_a_while(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    receiver.answers = [(500, {}), (500, {})]
    async with gateway(**hooks(receiver.url, secret)) as api:
        for n, status in enumerate((FAILED, FAILED, FAILED, FINISHED)):
            sim.put_job(customer, f"j{n}", status=status, start=clock.now - timedelta(hours=4 - n))
            await refresh(api)
        items = await until(api, attempted(1))
        types = ["alert.opened", "alert.updated", "alert.resolved"]
        assert [d["event_type"] for d in items] == types
        # Due, but behind the key's first delivery, which waits for its retry.
        assert [(d["state"], d["attempts"]) for d in items[1:]] == [("pending", 0)] * 2
        assert receiver.types() == ["alert.opened"]

        items = await until(api, delivered(3), clock=clock, step=10)
    assert receiver.types() == ["alert.opened"] * 3 + types[1:]
    assert receiver.types(204) == types
    assert [r.status for r in receiver.requests] == [500, 500, 204, 204, 204]
    assert [d["attempts"] for d in items] == [3, 1, 1]


async def test_a_receiver_that_is_down_never_delays_another(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receivers: Callable[[], Receiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hanging receiver's request stays unanswered for the whole test, and an idle sender
    # looks for work only when a notice wakes it.
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 3600.0)
    monkeypatch.setattr(webhooks, "POLL_SECONDS", 3600.0)
    hanging, live = receivers(), receivers()
    hanging.hang = True  # takes the POST and never answers
    dead = f"http://127.0.0.1:{free_port()}/hook"  # refuses the connection
    async with gateway(**hooks(f"{dead},{hanging.url},{live.url}", secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        # No nudging: the refresh's notice alone starts every receiver's sender.
        items = await until(
            api, lambda items: delivered(1)(items) and bool(hanging.requests), wake=False
        )
        by_origin = {d["url"]: d for d in items}
        assert by_origin[live.origin]["state"] == "delivered"
        assert len(hanging.requests) == 1
        # Delivered while the hanging receiver still has its request: not after it.
        assert by_origin[hanging.origin]["attempts"] == 0
        dead_origin = dead.removesuffix("/hook")
        items = await until(
            api, lambda items: {d["url"]: d for d in items}[dead_origin]["attempts"] > 0
        )
        d = {d["url"]: d for d in items}[dead_origin]
        assert d["state"] == "pending"
        assert d["last_status"] is None
        assert d["last_error"] == "ConnectError: could not reach the receiver"
    assert live.types() == ["alert.opened"]


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks, "TIMEOUT_SECONDS", 0.3)
    receiver.hang = True
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, attempted(1))
        assert (d["state"], d["last_status"]) == ("pending", None)
        assert d["last_error"] == "no answer within 0.3 s"
        assert at(d["next_attempt_at"]) > clock.now


async def test_a_pending_delivery_survives_a_restart(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    example: Callable[..., Example],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    async with gateway(**hooks(url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        [d] = await until(api, attempted(1))
        assert (d["state"], d["last_status"]) == ("pending", None)
        [opened], _ = await feed(api, type="alert.opened")

    rx = example(secret, port=port)
    clock.advance(10)
    async with gateway(**hooks(url, secret)) as api:
        [after] = await until(api, delivered(1))
        assert (after["id"], after["attempts"]) == (d["id"], 2)
        assert (await feed(api, type="alert.opened"))[0] == [opened]
    assert [json.loads(line) for line in rx.lines()] == [opened]


async def test_the_deliveries_listing_and_logs_show_no_credentials_or_query(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="app")
    live = f"http://alice:pw-live-7q@127.0.0.1:{receiver.port}/hook?token=tok-live-3k"
    dead_port = free_port()
    dead = f"http://bob:pw-dead-5x@127.0.0.1:{dead_port}/down?token=tok-dead-9m"
    async with gateway(**hooks(f"{live},{dead}", secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        items = await until(
            api, lambda items: delivered(1)(items) and min(d["attempts"] for d in items) >= 1
        )
        assert {d["url"] for d in items} == {
            f"http://127.0.0.1:{dead_port}",
            f"http://127.0.0.1:{receiver.port}",
        }
        listing = await api.get("/webhooks/deliveries")
        one = next(d for d in items if d["state"] == "delivered")
        again = await api.post(f"/webhooks/deliveries/{one['id']}/retry")  # a delivered one
        assert again.status_code == 200, again.text
        assert again.json()["url"] == f"http://127.0.0.1:{receiver.port}"
        for text in (listing.text, again.text, caplog.text):
            for word in ("alice", "bob", "pw-", "tok-", "token", "/down", "/hook"):
                assert word not in text
    assert f"http://127.0.0.1:{dead_port}: " in caplog.text  # the failure is logged, safely
    # The receiver itself gets the URL as configured.
    request = receiver.requests[0]
    assert request.path == "/hook?token=tok-live-3k"
    assert (
        request.headers["authorization"]
        == "Basic " + base64.b64encode(b"alice:pw-live-7q").decode()
    )


PATH_SECRET = "B000-path-secret-4f"  # tests/conftest.py scans every log line for these
QUERY_TOKEN = "tok-query-8v"


def slack_style(origin: str) -> str:
    """A receiver as Slack, Teams and Zapier hand them out: its path is the credential."""
    return f"{origin}/services/T000/{PATH_SECRET}?token={QUERY_TOKEN}"


async def test_a_receiver_whose_path_is_its_secret_is_shown_by_origin_only_even_failing(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receivers: Callable[[], Receiver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything the process logs, but for the libraries a server quiets (app.logs): httpx
    # prints every URL it requests. (The last call sets the level of caplog's handler.)
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)
    caplog.set_level(logging.DEBUG)
    live, failing = receivers(), receivers()
    failing.status = 500
    dead = f"http://127.0.0.1:{free_port()}"  # refuses the connection
    origins = [live.origin, failing.origin, dead]
    async with gateway(**hooks(",".join(slack_style(o) for o in origins), secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        items = await until(
            api, lambda items: delivered(1)(items) and all(d["attempts"] >= 1 for d in items)
        )
        assert sorted(d["url"] for d in items) == sorted(origins)
        by_origin = {d["url"]: d for d in items}
        assert by_origin[failing.origin]["last_error"] == "the receiver answered 500"
        listing = await api.get("/webhooks/deliveries")
        again = await api.post(f"/webhooks/deliveries/{by_origin[live.origin]['id']}/retry")
        assert again.status_code == 200, again.text
        assert again.json()["url"] == live.origin
        pending = await api.post(f"/webhooks/deliveries/{by_origin[failing.origin]['id']}/retry")
        assert pending.status_code == 409, pending.text
        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
    logged = caplog.text
    for text in (listing.text, again.text, pending.text, metrics.text, logged):
        for word in (PATH_SECRET, QUERY_TOKEN, "/services", "token="):
            assert word not in text
    # The receivers and their failures are logged, by origin.
    assert f"webhooks go to {', '.join(origins)}" in logged
    assert f"to {failing.origin}: the receiver answered 500" in logged
    assert f"to {dead}: ConnectError: could not reach the receiver" in logged
    # The receiver itself gets the URL as configured.
    assert live.requests[0].path == f"/services/T000/{PATH_SECRET}?token={QUERY_TOKEN}"


async def test_at_start_up_a_removed_receivers_deliveries_fail_and_a_kept_ones_are_sent(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    # Two receivers of one origin: only their whole URLs tell them apart.
    kept, removed = f"{receiver.origin}/kept", f"{receiver.origin}/removed?token=tok-gone-2w"
    receiver.status = 500
    async with gateway(**hooks(f"{kept},{removed}", secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        before = await until(
            api, lambda items: len(items) == 2 and all(d["attempts"] == 1 for d in items)
        )
        assert [(d["url"], d["state"]) for d in before] == [(receiver.origin, "pending")] * 2
    kept_id, removed_id = (d["id"] for d in before)  # one per receiver, as WEBHOOK_URLS lists
    assert sorted(r.path for r in receiver.requests) == ["/kept", "/removed?token=tok-gone-2w"]

    receiver.status = 204
    clock.advance(10)  # the kept one's retry is due
    async with gateway(**hooks(kept, secret)) as api:
        items = await until(api, delivered(1))
        by_id = {d["id"]: d for d in items}
        assert (by_id[kept_id]["state"], by_id[kept_id]["attempts"]) == ("delivered", 2)
        gone = by_id[removed_id]
        assert (gone["state"], gone["last_error"]) == ("failed", "receiver_removed")
        assert (gone["attempts"], gone["next_attempt_at"], gone["delivered_at"]) == (1, None, None)
        assert await deliveries(api, state="pending") == []
        # Sending it again would leave it pending for good: no sender takes it.
        retry = await api.post(f"/webhooks/deliveries/{removed_id}/retry")
        assert retry.status_code == 409, retry.text
        assert retry.json() == {
            "error": "conflict",
            "detail": f"delivery {removed_id} cannot be sent again: its receiver "
            f"{receiver.origin} is no longer in WEBHOOK_URLS",
        }
    assert [r.path for r in receiver.requests[2:]] == ["/kept"]  # nothing more to the other
    assert (
        f"1 pending webhook deliveries to {receiver.origin} marked failed (receiver_removed)"
        in caplog.text
    )
    assert "/removed" not in caplog.text
    assert "tok-gone-2w" not in caplog.text


async def test_with_no_receivers_left_every_pending_delivery_fails_at_start_up(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    receiver.status = 500
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "fail-1", status=FAILED, start=clock.now)
        await refresh(api)
        await until(api, attempted(1))
    async with gateway() as api:
        [d] = await deliveries(api)
        assert (d["state"], d["last_error"], d["attempts"]) == ("failed", "receiver_removed", 1)


async def test_a_key_limited_to_some_customers_sees_and_retries_only_their_deliveries(
    gateway: Gateway, sim: Simulator, clock: FakeClock, secret: str, receiver: Receiver
) -> None:
    own, other = sim.customer_ids()
    async with gateway(**hooks(receiver.url, secret)) as api:
        for cid in (own, other):
            sim.put_job(cid, f"fail-{cid[:4]}", status=FAILED, start=clock.now)
        await refresh(api)
        everyone = await until(api, delivered(2))
        assert sorted(d["customer_id"] for d in everyone) == sorted([own, other])
        svc = services(api)
        key = await keys.create_key(
            svc.writer, "own-only", customers=[own], rate_per_minute=None, now=svc.clock()
        )
        await svc.keys.reload(svc.sessions)
        scoped = {"X-API-Key": key}

        for params in ({}, {"state": "delivered"}, {"customer_id": own}):
            listing = await api.get("/webhooks/deliveries", params=params, headers=scoped)
            assert listing.status_code == 200, listing.text
            assert [d["customer_id"] for d in listing.json()["items"]] == [own], params
            assert other not in listing.text
        # Another customer is, for this key, unknown.
        named = await api.get("/webhooks/deliveries", params={"customer_id": other}, headers=scoped)
        assert named.status_code == 422, named.text
        mine, theirs = (next(d for d in everyone if d["customer_id"] == c) for c in (own, other))
        refused = await api.post(f"/webhooks/deliveries/{theirs['id']}/retry", headers=scoped)
        assert refused.status_code == 404, refused.text
        retried = await api.post(f"/webhooks/deliveries/{mine['id']}/retry", headers=scoped)
        assert retried.status_code == 200, retried.text


async def test_a_snoozed_alerts_updates_are_not_sent_but_its_resolution_is(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "j0", status=FAILED, start=clock.now - timedelta(hours=4))
        await refresh(api)
        await until(api, delivered(1))
        snooze = {"until": z(clock.now + timedelta(days=1)), "reason": "planned maintenance"}
        response = await api.post(f"/alerts/{key_of(customer)}/snooze", json=snooze)
        assert response.status_code == 200, response.text

        for n in (1, 2):  # the third failure makes it critical: alert.updated
            sim.put_job(customer, f"j{n}", status=FAILED, start=clock.now - timedelta(hours=4 - n))
            await refresh(api)
        sim.put_job(customer, "j3", status=FINISHED, start=clock.now - timedelta(hours=1))
        await refresh(api)
        items = await until(api, delivered(2))
        events, _ = await feed(api, type="alert.opened,alert.updated,alert.resolved")
    assert [e["type"] for e in events] == ["alert.opened", "alert.updated", "alert.resolved"]
    assert [d["event_type"] for d in items] == ["alert.opened", "alert.resolved"]
    assert receiver.types() == ["alert.opened", "alert.resolved"]


async def test_a_snooze_that_ran_out_mutes_nothing(
    gateway: Gateway,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    secret: str,
    receiver: Receiver,
) -> None:
    start = clock.now
    async with gateway(**hooks(receiver.url, secret)) as api:
        sim.put_job(customer, "j0", status=FAILED, start=start - timedelta(hours=4))
        await refresh(api)
        await until(api, delivered(1))
        snooze = {"until": z(start + timedelta(hours=1)), "reason": "a quick fix"}
        response = await api.post(f"/alerts/{key_of(customer)}/snooze", json=snooze)
        assert response.status_code == 200, response.text

        clock.advance(2 * HOUR)  # the snooze ran out an hour ago; the key still fails
        for n in (1, 2):  # the third failure makes it critical: alert.updated
            sim.put_job(customer, f"j{n}", status=FAILED, start=start - timedelta(hours=4 - n))
            await refresh(api)
        items = await until(api, delivered(2))
    assert [d["event_type"] for d in items] == ["alert.opened", "alert.updated"]
    assert receiver.types() == ["alert.opened", "alert.updated"]


# -- the pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "base"),
    [(0, 5), (1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)],
)
def test_retry_delay_doubles_from_5_seconds_to_an_hour_with_jitter(
    attempts: int, base: float
) -> None:
    delays = [retry_delay(attempts) for _ in range(200)]
    assert all(base / 2 <= d <= base for d in delays)
    assert len(set(delays)) > 100  # jittered: failures together do not retry together


def test_retry_delay_honours_retry_after_up_to_an_hour() -> None:
    assert retry_delay(1, 120.0) == 120.0
    assert 2.5 <= retry_delay(1, 1.0) <= 5.0  # a shorter Retry-After keeps the backoff
    assert retry_delay(1, 86400.0) == 3600.0
    assert 1800.0 <= retry_delay(20, 60.0) <= 3600.0


def test_retry_delay_stays_capped_however_many_attempts() -> None:
    assert retry_delay(2000) <= 3600.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://hooks.example.test:8443/services/T000/B000/XXXXSECRET?token=abc",
            "https://hooks.example.test:8443",
        ),
        ("http://user:pw@127.0.0.1:9000/hook?token=s3cret#top", "http://127.0.0.1:9000"),
        ("https://psa.example/webhooks/jobs", "https://psa.example"),
        ("https://:tok@PSA.Example:8443/in?a=1&b=2", "https://psa.example:8443"),
        ("HTTPS://psa.example:443/in", "https://psa.example"),  # the default port, as browsers
        ("http://psa.example:80/in", "http://psa.example"),
        ("http://psa.example:443/in", "http://psa.example:443"),
        ("https://psa.example:80/in", "https://psa.example:80"),
        ("http://psa.example", "http://psa.example"),
        ("http://psa.example#frag/ment", "http://psa.example"),
        ("http://u:p@[::1]:9000/h?x=1", "http://[::1]:9000"),
        ("https://[2001:DB8::1]/h", "https://[2001:db8::1]"),
    ],
)
def test_a_receiver_is_shown_as_its_origin_only(url: str, shown: str) -> None:
    assert receiver_origin(url) == shown


@pytest.mark.parametrize(
    "url", ["", "not a url", "/relative/SECRET", "http:///SECRET", "https://h:99999/SECRET"]
)
def test_what_is_not_a_receiver_url_shows_none_of_its_text(url: str) -> None:
    shown = receiver_origin(url)
    assert "SECRET" not in shown
    assert shown in ("<not a URL>", "https://h")


def test_a_webhook_url_with_an_impossible_port_stops_start_up() -> None:
    with pytest.raises(ValidationError, match="webhook_urls"):
        settings_for(
            "sqlite:///unused.sqlite",
            webhook_urls="http://127.0.0.1:99999/hook",
            webhook_secret=new_secret(),
        )
