"""What the end-to-end tests share: the simulator over HTTP from the test's own process (so
its counters and knobs are in reach), a fresh PostgreSQL database, and a `serve` environment.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn

from app.simulator import Simulator, create_simulator_app
from tests.databases import PostgresDatabases
from tests.e2e.test_serve import free_port, start, stop, wait_until_up


@contextmanager
def simulator_over_http(sim: Simulator) -> Iterator[str]:
    """`sim` served on a free loopback port in a thread; yields its base URL."""
    port = free_port()
    # No logging config and no levels: uvicorn leaves the process's logging alone.
    config = uvicorn.Config(
        create_simulator_app(sim), host="127.0.0.1", port=port, log_level=None, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def serve_env(upstream: str, database_url: str, key: str, **settings: str) -> dict[str, str]:
    """The environment of a `serve` process against `upstream` (the simulator)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    return env | {
        "AVEPOINT_BASE_URL": upstream,
        "AVEPOINT_TOKEN_URL": f"{upstream}/connect/token",
        "AVEPOINT_CLIENT_ID": "demo-client",
        "AVEPOINT_CLIENT_SECRET": "demo-secret",
        "API_KEYS": key,
        "DATABASE_URL": database_url,
        "CUSTOMER_IDS": "",
        **settings,
    }


@pytest.fixture
def postgres_database(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for processes to share, which `serve` migrates as
    it would in production (dropped afterwards)."""
    url = postgres_databases.take_empty()
    try:
        yield url
    finally:
        postgres_databases.give_back(url)


@contextmanager
def two_processes(env: dict[str, str]) -> Iterator[list[str]]:
    """Two `serve` processes with `env`, up and ready; yields their base URLs."""
    ports = [free_port(), free_port()]
    processes = [start(["serve", "--port", str(p)], env) for p in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_up(f"http://127.0.0.1:{port}/readyz", process, seconds=60)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for log in [stop(p) for p in processes]:
            assert "demo-secret" not in log
