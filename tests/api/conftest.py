"""The API as clients meet it: a real app (lifespan, database) in front of the simulator.

Every test runs on a SQLite file and on PostgreSQL (`database_url`, tests/conftest.py).

`gateway(**settings)` builds an app with the given settings and yields an `httpx.AsyncClient`
that talks to it in process; the simulator `sim` is the upstream, and `clock` drives both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from app.api.deps import Services
from app.config import Settings
from app.main import create_app
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.clock import FakeClock

API_KEY = "test-key-0123456789"
UPSTREAM = "http://upstream.test"

Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def settings_for(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "avepoint_base_url": UPSTREAM,
        "avepoint_token_url": f"{UPSTREAM}/connect/token",
        "avepoint_client_id": "demo-client",
        "avepoint_client_secret": "demo-secret",
        "database_url": database_url,
        "api_keys": API_KEY,
        "customer_ids": "",
        "demo": False,
        "auth_disabled": False,
        "cache_ttl_seconds": 300,
        "stale_if_error_seconds": 86400,
        "request_wait_seconds": 10,
        "upstream_concurrency": 8,
        # Requests drive the refreshes here; tests of the background refresh turn it on.
        "refresh_interval_seconds": 0,
        # No pace on the simulator (tests/unit/test_upstream_breaker.py tests the pace).
        "upstream_rate_per_second": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def services_of(client: httpx.AsyncClient) -> Services:
    """The services of the app a `gateway` client talks to (its store, keys, clock)."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    svc: Services = transport.app.state.services  # type: ignore[attr-defined]
    return svc


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=7, customers=4), clock=clock)


class Sleeps:
    """The upstream client's backoff sleeps, recorded instead of waited for."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.seconds: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def sleeps(clock: FakeClock) -> Sleeps:
    return Sleeps(clock)


@pytest.fixture
def gateway(database_url: str, clock: FakeClock, sim: Simulator, sleeps: Sleeps) -> Gateway:
    @asynccontextmanager
    async def make(
        *, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = settings_for(database_url, **overrides)
        upstream = transport or httpx.ASGITransport(app=create_simulator_app(sim))
        app = create_app(settings, clock=clock, transport=upstream, sleep=sleeps.sleep)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://gateway.test",
                headers={"X-API-Key": API_KEY},
            ) as client,
        ):
            yield client

    return make


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway() as client:
        yield client
