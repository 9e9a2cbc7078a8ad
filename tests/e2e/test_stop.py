"""SIGTERM stops a real `serve` process cleanly: not ready at once, the requests in flight
answered, leases handed back, exit status 0 within 10 seconds; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url

from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.conftest import _admin
from tests.e2e.test_serve import free_port, start, wait_until_up

pytestmark = pytest.mark.e2e

KEY = "e2e-stop-key"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/stop.db"
        return
    admin = request.getfixturevalue("postgres_url")
    name = f"jobs_gateway_stop_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    """The simulator over HTTP, answering each jobs page after 0.5 s."""
    sim = Simulator(SimulatorConfig(seed=3, customers=4, latency_seconds=0.5))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_simulator_app(sim),
            host="127.0.0.1",
            port=port,
            log_level=None,
            log_config=None,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    env |= {
        "AVEPOINT_BASE_URL": slow_upstream,
        "AVEPOINT_TOKEN_URL": f"{slow_upstream}/connect/token",
        "AVEPOINT_CLIENT_ID": "demo-client",
        "AVEPOINT_CLIENT_SECRET": "demo-secret",
        "API_KEYS": KEY,
        "DATABASE_URL": database,
        "CACHE_TTL_SECONDS": "3600",
        "REFRESH_INTERVAL_SECONDS": "0",
    }
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    env |= {
        "AVEPOINT_BASE_URL": slow_upstream,
        "AVEPOINT_TOKEN_URL": f"{slow_upstream}/connect/token",
        "AVEPOINT_CLIENT_ID": "demo-client",
        "AVEPOINT_CLIENT_SECRET": "demo-secret",
        "API_KEYS": KEY,
        "DATABASE_URL": database,
    }
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
