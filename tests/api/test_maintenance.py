"""Maintenance windows as a technician uses them: a window mutes a customer's alerts and
webhooks, a problem that outlasts it opens when it ends (or is deleted), objects and the
grid show it, and scoped keys stay in their customers.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app.alerts.sweeps import sweep_overdue
from app.clock import iso
from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

HOUR = 3600.0
FINISHED, FAILED = 2, 3
GROUPS = {"job_type": 7, "module": 304}
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret, not a real one


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


@pytest.fixture
def customer(sim: Simulator) -> str:
    return sim.customer_ids()[0]


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    # Deliveries are written to the outbox; nothing listens there (the sender only retries,
    # refused at once: a name to resolve could hold the loop's close on a DNS timeout).
    async with gateway(
        cache_ttl_seconds=60, webhook_urls="http://127.0.0.1:9/hook", webhook_secret=SECRET
    ) as client:
        yield client


def at_3(clock: FakeClock, days_ago: int) -> datetime:
    return clock.now.replace(hour=3, minute=0, second=0) - timedelta(days=days_ago)


async def refresh(api: httpx.AsyncClient) -> None:
    assert (await api.get("/jobs", params={"max_age": 0})).status_code == 200


async def open_alerts(api: httpx.AsyncClient) -> list[tuple[str, str]]:
    items = (await api.get("/alerts", params={"state": "open"})).json()["items"]
    return [(a["reason"], a["severity"]) for a in items]


async def delivered_types(api: httpx.AsyncClient) -> list[str]:
    response = await api.get("/webhooks/deliveries", params={"limit": 500})
    assert response.status_code == 200, response.text
    return sorted(d["event_type"] for d in response.json()["items"])


async def sweep(api: httpx.AsyncClient) -> int:
    svc = services_of(api)
    return await sweep_overdue(
        svc.writer, svc.sessions, svc.feed, svc.clock, svc.on_told, holder=svc.refresher.holder
    )


async def window(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/maintenance", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_window_mutes_an_alert_and_releases_it_when_it_ends(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    for n in range(5):
        sim.put_job(customer, f"d{n}", status=FINISHED, start=at_3(clock, n + 1), **GROUPS)
    await refresh(api)
    made = await window(
        api,
        customer_id=customer,
        starts_at=iso(clock.now),
        ends_at=iso(clock.now + timedelta(hours=4)),
        reason="tenant migration",
    )
    assert (made["customer_id"], made["active"], made["reason"]) == (
        customer,
        True,
        "tenant migration",
    )
    listed = (await api.get("/maintenance")).json()["items"]
    assert [w["id"] for w in listed] == [made["id"]]

    sim.put_job(customer, "fail", status=FAILED, start=clock.now - timedelta(minutes=1), **GROUPS)
    await refresh(api)
    assert await open_alerts(api) == []  # muted: no alert opens
    assert await delivered_types(api) == []  # and nothing goes to webhooks
    [obj] = (await api.get("/objects")).json()["items"]
    assert (obj["state"], obj["in_maintenance"]) == ("failure", True)
    assert await sweep(api) == 0  # still inside

    clock.advance(5 * HOUR)  # the window ended, the failure outlasted it
    assert await sweep(api) == 1, (await api.get("/events")).json()
    assert await open_alerts(api) == [("failed", "warning")]
    assert await delivered_types(api) == ["alert.opened"]
    [obj] = (await api.get("/objects")).json()["items"]
    assert obj["in_maintenance"] is False
    assert await sweep(api) == 0  # released once


async def test_deleting_a_window_releases_at_once_and_all_customers_windows(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    sim.put_job(customer, "ok", status=FINISHED, start=at_3(clock, 1), **GROUPS)
    await refresh(api)
    everyone = await window(
        api,
        customer_id=None,
        starts_at=iso(clock.now - timedelta(hours=1)),
        ends_at=iso(clock.now + timedelta(days=1)),
    )
    sim.put_job(customer, "fail", status=FAILED, start=clock.now - timedelta(minutes=1), **GROUPS)
    await refresh(api)
    assert await open_alerts(api) == []
    response = await api.delete(f"/maintenance/{everyone['id']}")
    assert response.status_code == 204
    assert await open_alerts(api) == [("failed", "warning")]
    assert (await api.get("/maintenance")).json()["items"] == []
    assert (await api.delete(f"/maintenance/{everyone['id']}")).status_code == 404


async def test_the_grid_shows_maintenance_on_a_day_without_results(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    for n in (0, 2, 3, 4, 5, 6):  # yesterday's run did not happen: it was maintenance
        sim.put_job(customer, f"d{n}", status=FINISHED, start=at_3(clock, n), **GROUPS)
    await refresh(api)
    await window(
        api,
        customer_id=customer,
        starts_at=iso(at_3(clock, 1) - timedelta(hours=1)),
        ends_at=iso(at_3(clock, 1) + timedelta(hours=12)),
    )
    grid = (await api.get("/grid", params={"days": 3})).json()
    assert [c["result"] for c in grid["items"][0]["cells"]] == [
        "success",
        "maintenance",
        "success",
    ]


async def test_bad_windows_are_client_errors(
    api: httpx.AsyncClient, clock: FakeClock, customer: str
) -> None:
    now = clock.now
    bad: list[dict[str, Any]] = [
        {"customer_id": customer, "starts_at": iso(now), "ends_at": iso(now)},
        {"customer_id": "nobody", "starts_at": iso(now), "ends_at": iso(now + timedelta(hours=1))},
        {"customer_id": None, "starts_at": "tomorrow", "ends_at": iso(now)},
        {"customer_id": None, "starts_at": 1700000000, "ends_at": iso(now)},
        {"starts_at": iso(now), "ends_at": iso(now + timedelta(hours=1)), "extra": 1},
    ]
    for body in bad:
        response = await api.post("/maintenance", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]
    assert (await api.delete("/maintenance/nope")).status_code == 422
    assert (await api.delete("/maintenance/0")).status_code == 422
    assert (await api.delete(f"/maintenance/{2**63}")).status_code == 422  # past any id
    assert (await api.delete("/maintenance/12345")).status_code == 404
