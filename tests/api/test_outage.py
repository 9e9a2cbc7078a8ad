"""PostgreSQL going away under a running service: an outage of writes, not of answers.

The app reaches PostgreSQL through a TCP proxy the test holds (`TcpProxy`). Cutting it closes
its listener and every connection through it, as a database that stops does: connections in
use break, new ones are refused. Then every answer is either one kept in memory (200, its
`sources` saying the customers could not be refreshed, with an error of kind `database`) or
503 `database_unavailable` naming the database, never a 500; `/readyz` says the database
cannot be reached. Restoring the proxy brings every answer back, without a restart.

On both databases: a driver error that says the database is away is a 503, any other one
(a bug) still the 500 envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.main import create_app
from app.simulator import Simulator, create_simulator_app
from app.store import repo
from tests.api.conftest import API_KEY, Sleeps, settings_for
from tests.clock import FakeClock
from tests.databases import admin as _admin

PASSWORD = "pw-s3cret"  # PostgreSQL trusts the test's connections; it must never be shown
DEADLINE_SECONDS = 60.0  # a failure guard only: the conditions are polled, never timed


class TcpProxy:
    """A TCP proxy on a loopback port to `host:port`, cut and restored on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.target = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Listen (again, on the same port once it has one)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every connection: the database is gone."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for stream in list(self._streams):
            stream.transport.abort()
        self._streams.clear()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        except OSError:
            writer.transport.abort()
            return
        self._streams.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._pipes.difference_update(pipes)
            for stream in (writer, up_writer):
                self._streams.discard(stream)
                stream.transport.abort()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


@pytest.fixture
async def proxied_postgres(postgres_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """A fresh PostgreSQL database and a URL that reaches it through a `TcpProxy` (with a
    password in it, which PostgreSQL ignores and no answer or log may show)."""
    admin = make_url(postgres_url)
    name = f"jobs_gateway_test_{uuid.uuid4().hex[:16]}"
    await _admin(postgres_url, f'CREATE DATABASE "{name}"')
    proxy = TcpProxy(admin.host or "127.0.0.1", admin.port or 5432)
    await proxy.open()
    url = admin.set(
        host="127.0.0.1", port=proxy.port, database=name, password=PASSWORD
    ).render_as_string(hide_password=False)
    try:
        yield url, proxy
    finally:
        await proxy.cut()
        await _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def served(
    proxied_postgres: tuple[str, TcpProxy], clock: FakeClock, sim: Simulator, sleeps: Sleeps
) -> AsyncIterator[tuple[httpx.AsyncClient, TcpProxy]]:
    url, proxy = proxied_postgres
    app = create_app(
        settings_for(url),
        clock=clock,
        transport=httpx.ASGITransport(app=create_simulator_app(sim)),
        sleep=sleeps.sleep,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.test",
            headers={"X-API-Key": API_KEY},
        ) as client,
    ):
        yield client, proxy


def assert_database_unavailable(response: httpx.Response, proxy: TcpProxy) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "database_unavailable"
    assert f"the database (postgresql, 127.0.0.1:{proxy.port}) cannot be reached" in body["detail"]
    assert "answers kept in memory are still served" in body["detail"]
    assert PASSWORD not in body["detail"]
    assert int(response.headers["retry-after"]) > 0


def assert_kept_or_unavailable(response: httpx.Response, proxy: TcpProxy) -> None:
    """A kept answer, or the 503 of an answer that needs the database: never a 500."""
    if response.status_code != 200:
        assert_database_unavailable(response, proxy)


async def until(check: Any, what: str) -> None:
    """Poll `check()` until it holds; the deadline only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while not await check():
        assert loop.time() < deadline, f"{what} within {DEADLINE_SECONDS} s"
        await asyncio.sleep(0.05)


# Answers a client had before the outage: kept in memory, they may be served during it.
KEPT = ["/jobs?max_age=0", "/jobs", "/customers", "/summary", "/alerts", "/events"]
# Queries nobody asked before: they need the database.
NEW = ["/jobs?status=failed&limit=7", "/alerts?state=open", "/events?after=1&limit=3"]


@pytest.mark.postgres
async def test_postgres_going_away_is_503_or_a_kept_answer_and_it_recovers(
    served: tuple[httpx.AsyncClient, TcpProxy], sim: Simulator, clock: FakeClock
) -> None:
    api, proxy = served
    before = {path: await api.get(path) for path in KEPT}
    assert {path: r.status_code for path, r in before.items()} == dict.fromkeys(KEPT, 200)
    assert (await api.get("/readyz")).status_code == 200

    await proxy.cut()

    ready = await api.get("/readyz")
    assert ready.status_code == 503
    detail = ready.json()["detail"]
    assert f"the database (postgresql, 127.0.0.1:{proxy.port}) cannot be reached" in detail
    assert "migrat" not in detail
    assert PASSWORD not in detail

    # The forced refresh fails on the database: the kept answer is served, every customer
    # stale with an error of kind `database`.
    forced = await api.get("/jobs?max_age=0")
    assert forced.status_code == 200, forced.text
    body = forced.json()
    assert body["items"] == before["/jobs?max_age=0"].json()["items"]
    assert {s["customer_id"] for s in body["sources"]} == set(sim.customer_ids())
    assert {(s["state"], s["error"]["kind"]) for s in body["sources"]} == {("stale", "database")}
    # ... and is backed off: asked again at once, nothing is tried (no loop of failures).
    again = await api.get("/jobs?max_age=0")
    assert again.status_code == 200
    assert "fwd=" not in again.headers["cache-status"]

    for path in KEPT:
        assert_kept_or_unavailable(await api.get(path), proxy)
    for path in NEW:
        assert_database_unavailable(await api.get(path), proxy)
    assert_database_unavailable(
        await api.post(
            f"/alerts/{sim.customer_ids()[0]}:microsoft_365:exchange_online/snooze",
            json={"until": "2030-01-01T00:00:00Z", "reason": "outage"},
        ),
        proxy,
    )
    run = await api.post("/refresh")
    assert run.status_code == 202

    async def run_done() -> bool:
        return bool((await api.get(run.headers["location"])).json()["state"] == "done")

    await until(run_done, "the refresh run ends")
    outcome = (await api.get(run.headers["location"])).json()
    assert {c["state"] for c in outcome["customers"]} == {"error"}

    await proxy.open()

    async def ready_again() -> bool:
        return (await api.get("/readyz")).status_code == 200

    await until(ready_again, "/readyz answers 200 once the database is back")
    for path in [*KEPT, *NEW]:
        response = await api.get(path)
        assert response.status_code == 200, (path, response.text)
    clock.advance(600)  # past every customer's backoff

    async def stored_again() -> bool:
        forced = await api.get("/jobs?max_age=0")
        assert forced.status_code == 200, forced.text
        return forced.json()["sources"] == []

    await until(stored_again, "a forced refresh stores again once the database is back")


async def _failing_query(*_: object, error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
        sqlite3.OperationalError("unable to open database file"),
        DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True),
    ],
    ids=["refused", "sqlite-cannot-open", "connection-invalidated"],
)
async def test_a_database_that_cannot_be_reached_is_503_naming_it(
    api: httpx.AsyncClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    monkeypatch.setattr(repo, "query_jobs", functools.partial(_failing_query, error=error))
    response = await api.get("/jobs?status=failed")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "database_unavailable"
    url = make_url(database_url)
    named = (
        f"(sqlite, {url.database})"
        if url.get_backend_name() == "sqlite"
        else f"(postgresql, {url.host}:{url.port})"
    )
    assert f"the database {named} cannot be reached" in response.json()["detail"]
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT ...", {}, Exception("duplicate key")),
        sqlite3.OperationalError("no such table: jobs"),
        OSError(2, "No such file or directory"),
    ],
    ids=["integrity", "sqlite-no-such-table", "enoent"],
)
async def test_any_other_driver_error_is_still_a_500(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    monkeypatch.setattr(repo, "query_jobs", functools.partial(_failing_query, error=error))
    response = await api.get("/jobs?status=failed")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "detail": "an unexpected error occurred; it has been logged",
    }
