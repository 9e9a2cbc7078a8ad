"""SIGTERM stops a real `serve` process cleanly: not ready at once, the requests in flight
answered, a long poll let go, leases handed back, exit status 0; on SQLite and PostgreSQL.

How long a stop takes is not timed here (a loaded machine would fail that for nothing): the
server bounds it (`app.server.STOP_GRACE_SECONDS`), and the tests check what bounds it, such
as a long poll answering at once rather than when its wait is up."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port, start, wait_until_up

pytestmark = pytest.mark.e2e

KEY = "e2e-stop-key"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/stop.db"
    url: str = request.getfixturevalue("postgres_database")
    return url


GUARD_SECONDS = 60.0  # how long a wait may take before the test fails: never reached when well
POLL_WAIT = 30  # the longest `wait` of GET /events
STOP_GUARD = 25  # shorter than POLL_WAIT: a stop that waited for the poll's wait fails


@pytest.fixture
def slow_sim() -> Simulator:
    """The upstream, answering each API request after 0.5 s."""
    return Simulator(SimulatorConfig(seed=3, customers=4, latency_seconds=0.5))


@pytest.fixture
def slow_upstream(slow_sim: Simulator) -> Iterator[str]:
    """`slow_sim` over HTTP."""
    with simulator_over_http(slow_sim) as base:
        yield base


def _leases(database: str) -> int | None:
    if not database.startswith("postgresql"):
        return None
    import asyncpg  # type: ignore[import-untyped]

    async def count() -> int:
        dsn = make_url(database).set(drivername="postgresql").render_as_string(False)
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT COUNT(*) FROM refresh_leases"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_sigterm_finishes_what_is_in_flight_and_exits_0(
    database: str, slow_sim: Simulator, slow_upstream: str, secret_scan: object
) -> None:
    env = serve_env(
        slow_upstream, database, KEY, CACHE_TTL_SECONDS="3600", REFRESH_INTERVAL_SECONDS="0"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(["serve", "--port", str(port)], env)
    try:
        wait_until_up(f"{base}/readyz", process)
        headers = {"X-API-Key": KEY}
        results: dict[str, httpx.Response] = {}

        def read(name: str, path: str) -> None:
            results[name] = httpx.get(base + path, headers=headers, timeout=GUARD_SECONDS)

        # In flight when SIGTERM comes: a long poll of the change feed, and a read waiting
        # on refreshes (each upstream request takes 0.5 s). The poll asks for what no first
        # refresh tells (a resolution), so only the stop can end it before its wait is up.
        poll = f"/events?wait={POLL_WAIT}&type=alert.resolved"
        readers = [
            threading.Thread(target=read, args=("events", poll)),
            threading.Thread(target=read, args=("jobs", "/jobs?max_age=0")),
        ]
        for t in readers:
            t.start()
        deadline = time.monotonic() + GUARD_SECONDS
        while slow_sim.stats.in_flight == 0:  # the read's refresh is asking the upstream
            assert time.monotonic() < deadline, "the read never asked the upstream"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        try:
            ready = httpx.get(f"{base}/readyz", timeout=2)
            assert ready.status_code == 503
            assert ready.json()["detail"] == "stopping"
        except httpx.TransportError:
            pass  # already no longer accepting: just as good for a load balancer
        # It stops by itself, before the long poll's wait could be up: it let the poll go.
        out, _ = process.communicate(timeout=STOP_GUARD)
        for t in readers:
            t.join(GUARD_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = out.decode(errors="replace")
    secret_scan.output(log, "serve (stopped)")  # type: ignore[attr-defined]
    assert process.returncode == 0, log[-3000:]
    assert results["jobs"].status_code == 200, results["jobs"].text
    assert results["events"].status_code == 200
    assert results["events"].json()["items"] == []
    assert _leases(database) in (None, 0)
    assert "Traceback" not in log


def test_a_second_sigterm_changes_nothing(database: str, slow_upstream: str) -> None:
    """An orchestrator may repeat the signal: the stop stays clean."""
    env = serve_env(slow_upstream, database, KEY)
    port = free_port()
    process: subprocess.Popen[bytes] = start(["serve", "--port", str(port)], env)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/readyz", process)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
