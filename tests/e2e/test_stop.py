"""SIGTERM stops a real `serve` process cleanly: not ready at once, the requests in flight
answered, leases handed back, exit status 0 within 10 seconds; on SQLite and PostgreSQL."""

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


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    """The simulator over HTTP, answering each jobs page after 0.5 s."""
    with simulator_over_http(
        Simulator(SimulatorConfig(seed=3, customers=4, latency_seconds=0.5))
    ) as base:
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
    database: str, slow_upstream: str, secret_scan: object
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
            results[name] = httpx.get(base + path, headers=headers, timeout=15)

        # In flight when SIGTERM comes: a read waiting on refreshes (each page takes 0.5 s),
        # and a long poll of the change feed.
        readers = [
            threading.Thread(target=read, args=("jobs", "/jobs?max_age=0")),
            threading.Thread(target=read, args=("events", "/events?wait=25")),
        ]
        for t in readers:
            t.start()
        time.sleep(0.6)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            ready = httpx.get(f"{base}/readyz", timeout=2)
            assert ready.status_code == 503
            assert ready.json()["detail"] == "stopping"
        except httpx.TransportError:
            pass  # already no longer accepting: just as good for a load balancer
        out, _ = process.communicate(timeout=15)
        took = time.monotonic() - began
        for t in readers:
            t.join(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = out.decode(errors="replace")
    secret_scan.output(log, "serve (stopped)")  # type: ignore[attr-defined]
    assert process.returncode == 0, log[-3000:]
    assert took < 10, took
    assert results["jobs"].status_code == 200, results["jobs"].text
    assert results["events"].status_code == 200
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
