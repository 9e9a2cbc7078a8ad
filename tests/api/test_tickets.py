"""Tickets in ConnectWise PSA as an MSP meets them: alerts of mapped customers become tickets
in the ConnectWise stand-in (tests/connectwise.py, in process), notes follow the alert, the
ticket closes on recovery; held by the storm guard, waiting out a snooze, unmapped, failed with
ConnectWise's own words; and `GET /tickets` scoped like everything else.

The desk's scheduling runs on the FakeClock: a test moves it past a retry's time and wakes the
desk (`Notices`) rather than waiting. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import text

from app.access import keys
from app.api.deps import Services
from app.main import create_app
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from app.store import tickets
from app.store.plans import from_driver
from tests import connectwise as cw
from tests.api.conftest import API_KEY, Sleeps, settings_for
from tests.clock import FakeClock

FINISHED, FAILED = 2, 3
CW_URL = "http://cw.test"
Items = list[dict[str, Any]]
Gateway = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def psa_settings(**more: Any) -> dict[str, Any]:
    return {
        "psa": "connectwise",
        "connectwise_url": CW_URL,
        "connectwise_company": cw.COMPANY,
        "connectwise_public_key": cw.PUBLIC,
        "connectwise_private_key": cw.PRIVATE,
        "connectwise_client_id": cw.CLIENT_ID,
        **more,
    }


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Customers whose only jobs are the ones a test puts in place."""
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


@pytest.fixture
def standin() -> cw.StandIn:
    return cw.StandIn()


@pytest.fixture
def desk_gateway(
    database_url: str, clock: FakeClock, sim: Simulator, sleeps: Sleeps, standin: cw.StandIn
) -> Gateway:
    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = settings_for(database_url, **{**psa_settings(), **overrides})
        app = create_app(
            settings,
            clock=clock,
            transport=httpx.ASGITransport(app=create_simulator_app(sim)),
            sleep=sleeps.sleep,
            psa_transport=httpx.ASGITransport(app=standin.app),
        )
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


def services(api: httpx.AsyncClient) -> Services:
    svc: Services = api._transport.app.state.services  # type: ignore[attr-defined]
    return svc


def key_of(customer: str) -> str:
    return f"{customer}:microsoft_365:microsoft_365_groups"  # put_job's default type/module


async def map_customer(api: httpx.AsyncClient, customer: str, company: int) -> None:
    svc = services(api)
    await svc.writer.run_plan(lambda d: tickets.map_company(d, customer, str(company), svc.clock()))


async def refresh(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs", params={"max_age": 0})
    assert response.status_code == 200, response.text


async def listing(api: httpx.AsyncClient, **params: Any) -> Items:
    response = await api.get("/tickets", params=params)
    assert response.status_code == 200, response.text
    items: Items = response.json()["items"]
    return items


async def until(
    api: httpx.AsyncClient,
    done: Callable[[Items], bool],
    *,
    clock: FakeClock | None = None,
    step: float = 0,
    seconds: float = 30.0,
) -> Items:
    """The tickets, once `done` holds for them; polled with short real sleeps (`seconds` only
    guards against waiting forever). Each round may move the clock by `step` and wakes the
    desk."""
    deadline = time.monotonic() + seconds
    while True:
        items = await listing(api)
        if done(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"tickets not as expected within {seconds} s: {items}")
        if clock is not None:
            clock.advance(step)
        services(api).notices.notify()
        await asyncio.sleep(0.05)


async def waiting_until(api: httpx.AsyncClient, key: str, until_at: datetime) -> None:
    """Until the desk has worked the alert's ticket work and put it off to `until_at`: every
    pending delivery of it is due then, none sooner."""
    deadline = time.monotonic() + 30
    while True:
        async with services(api).sessions() as session:
            rows = (
                await session.execute(
                    text(
                        "SELECT next_attempt_at FROM webhook_deliveries "
                        "WHERE url = :url AND alert_key = :key AND state = 'pending'"
                    ),
                    {"url": tickets.PSA_RECEIVER, "key": key},
                )
            ).all()
        due = [from_driver(r[0]) for r in rows]
        if due and all(t is not None and t >= until_at for t in due):
            return
        assert time.monotonic() < deadline, f"ticket work of {key} not put off: {due}"
        services(api).notices.notify()
        await asyncio.sleep(0.05)


def state_is(state: str, count: int = 1) -> Callable[[Items], bool]:
    """At least `count` tickets in `state` (`open` with a ticket id: one being opened has
    none yet)."""
    return lambda items: (
        sum(t["state"] == state and (state != "open" or bool(t["ticket_id"])) for t in items)
        >= count
    )


async def test_one_alerts_life_opens_a_ticket_adds_notes_and_closes_it(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    # Events tell times to the second: the desk still finds the alert opened mid-second.
    clock.advance(0.654321)
    async with desk_gateway() as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now - timedelta(hours=3))
        await refresh(api)
        [t] = await until(api, state_is("open"))
        assert (t["alert_key"], t["customer_id"], t["company_id"]) == (
            key_of(customer),
            customer,
            "250",
        )
        [ticket] = standin.tickets.values()
        assert t["ticket_id"] == str(ticket["id"])
        assert len(ticket["summary"]) <= 100
        [job] = (await api.get("/jobs")).json()["items"]
        assert ticket["summary"] == (
            f"Backups failing for {job['customer_name']}: microsoft_365 / microsoft_365_groups"
        )
        assert ticket["company"] == {"id": 250}
        assert standin.status_of(ticket["id"]) == "New"
        assert ticket["externalXRef"].startswith("jobs-gateway:")
        description = ticket["initialDescription"]
        assert "Job j1; name" in description and "status failed" in description
        assert "started" in description and "items: total" in description

        clock.advance(3600)
        sim.put_job(customer, "j2", status=FAILED, start=clock.now - timedelta(hours=2))
        await refresh(api)
        await until(api, lambda _: len(standin.notes[ticket["id"]]) >= 1)
        clock.advance(3600)
        sim.put_job(customer, "j3", status=FAILED, start=clock.now - timedelta(hours=1))
        await refresh(api)  # the third failure: critical
        await until(api, lambda _: len(standin.notes[ticket["id"]]) >= 2)
        notes = [n["text"] for n in standin.notes[ticket["id"]]]
        assert "j2" in notes[0] and "critical" in notes[1]

        sim.put_job(customer, "j4", status=FINISHED, start=clock.now)
        await refresh(api)
        [closed] = await until(api, state_is("closed"))
        assert closed["closed_at"] is not None and closed["ticket_id"] == t["ticket_id"]
        assert standin.status_of(ticket["id"]) == "Closed"
        assert standin.notes[ticket["id"]][-1]["resolutionFlag"] is True
        assert standin.creates() == 1
        assert (await listing(api, state="open")) == []
        # The budget one alert's life spends: the board and its statuses once per process,
        # then a create, a note per change, and a resolution note and a status patch.
        assert [m for m, _ in standin.requests] == [
            "GET",
            "GET",
            "POST",
            "POST",
            "POST",
            "POST",
            "PATCH",
        ]


async def test_a_create_whose_answer_was_lost_is_found_not_created_again(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    standin.lose_next_create = 1
    async with desk_gateway() as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        [failed] = await until(api, state_is("failed"))
        assert "502" in failed["last_error"]
        [t] = await until(api, state_is("open"), clock=clock, step=60)
        assert standin.creates() == 1 and len(standin.tickets) == 1
        assert t["ticket_id"] == str(next(iter(standin.tickets)))
        assert ("GET", cw.ROOT + "/service/tickets") in standin.requests


async def test_a_429_is_retried_after_its_retry_after(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    standin.fail_next["POST /service/tickets"] = [(429, {"Retry-After": "600"})]
    async with desk_gateway() as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        [failed] = await until(api, state_is("failed"))
        assert "429" in failed["last_error"]
        clock.advance(300)  # not yet: Retry-After asked for 600 s
        services(api).notices.notify()
        await asyncio.sleep(0.2)
        assert standin.creates() == 1
        [t] = await until(api, state_is("open"), clock=clock, step=400)
        assert standin.creates() == 2 and t["last_error"] is None


async def test_a_400_fails_the_ticket_with_connectwises_own_errors(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    async with desk_gateway() as api:
        await map_customer(api, customer, 999)  # no such company in ConnectWise
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        [t] = await until(api, state_is("failed"))
        assert t["last_error"] == (
            "ConnectWise answered 400: ticket object is invalid; company: Company not found"
        )
        clock.advance(3600)
        services(api).notices.notify()
        await asyncio.sleep(0.2)
        assert standin.creates() == 1  # never retried: ConnectWise will not take it


async def test_wrong_keys_say_what_to_fix_and_never_show_the_keys(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    async with desk_gateway(connectwise_private_key="wrong-private-key") as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        [t] = await until(api, state_is("failed"))
        assert "401" in t["last_error"] and "CONNECTWISE_PRIVATE_KEY" in t["last_error"]
        text = (await api.get("/tickets")).text + (await api.get("/metrics")).text
        assert "wrong-private-key" not in text and cw.PUBLIC not in text


async def test_a_customer_with_no_mapping_gets_no_ticket_and_shows_unmapped(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    async with desk_gateway() as api:
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        [t] = await until(api, state_is("unmapped"))
        assert (t["company_id"], t["ticket_id"]) == (None, None)
        assert standin.creates() == 0
        # Mapped later: the alert's next change opens its ticket.
        await map_customer(api, customer, 251)
        clock.advance(3600)
        sim.put_job(customer, "j2", status=FAILED, start=clock.now)
        await refresh(api)
        [t] = await until(api, state_is("open"))
        assert t["company_id"] == "251"


async def test_the_storm_guard_holds_tickets_past_the_hourly_limit_and_release_opens_them(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    first, second = sim.customer_ids()
    async with desk_gateway(psa_max_new_tickets_per_hour=1) as api:
        await map_customer(api, first, 250)
        await map_customer(api, second, 251)
        sim.put_job(first, "a1", status=FAILED, start=clock.now)
        sim.put_job(second, "b1", status=FAILED, start=clock.now)
        await refresh(api)
        items = await until(api, lambda i: state_is("open")(i) and state_is("held")(i))
        assert standin.creates() == 1
        [held] = [t for t in items if t["state"] == "held"]
        assert held["ticket_id"] is None
        svc = services(api)
        assert await svc.writer.run_plan(tickets.count_held) == 1
        # `psa release` lets it open now, past the guard.
        await svc.writer.run_plan(lambda d: tickets.release(d, None, svc.clock()))
        await until(api, state_is("open", 2))
        assert standin.creates() == 2


async def test_a_held_ticket_opens_when_the_hour_has_room_again(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    first, second = sim.customer_ids()
    async with desk_gateway(psa_max_new_tickets_per_hour=1) as api:
        await map_customer(api, first, 250)
        await map_customer(api, second, 251)
        sim.put_job(first, "a1", status=FAILED, start=clock.now)
        sim.put_job(second, "b1", status=FAILED, start=clock.now)
        await refresh(api)
        await until(api, lambda i: state_is("open")(i) and state_is("held")(i))
        await until(api, state_is("open", 2), clock=clock, step=600)
        assert standin.creates() == 2


async def test_an_alert_that_recovers_while_held_never_opens_a_ticket(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    first, second = sim.customer_ids()
    async with desk_gateway(psa_max_new_tickets_per_hour=1) as api:
        await map_customer(api, first, 250)
        await map_customer(api, second, 251)
        sim.put_job(first, "a1", status=FAILED, start=clock.now - timedelta(hours=1))
        sim.put_job(second, "b1", status=FAILED, start=clock.now - timedelta(hours=1))
        await refresh(api)
        items = await until(api, lambda i: state_is("open")(i) and state_is("held")(i))
        [held] = [t for t in items if t["state"] == "held"]
        held_customer = held["customer_id"]
        sim.put_job(held_customer, "ok", status=FINISHED, start=clock.now)
        await refresh(api)
        await until(api, lambda i: len(i) == 1, clock=clock, step=600)
        assert standin.creates() == 1


async def test_a_snoozed_alert_opens_its_ticket_only_once_the_snooze_ends(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    key = key_of(customer)
    async with desk_gateway(psa_min_severity="critical") as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now - timedelta(hours=3))
        await refresh(api)  # a warning: below PSA_MIN_SEVERITY
        until_at = clock.now + timedelta(hours=2)
        response = await api.post(
            f"/alerts/{key}/snooze",
            json={"until": until_at.isoformat().replace("+00:00", "Z"), "reason": "known"},
        )
        assert response.status_code == 200, response.text
        for n in (2, 3):
            clock.advance(60)
            sim.put_job(customer, f"j{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
            await refresh(api)  # critical from the third failure, but snoozed
        await waiting_until(api, key, until_at)  # the desk saw the snooze and waits
        assert standin.creates() == 0 and await listing(api) == []
        [t] = await until(api, state_is("open"), clock=clock, step=1800)
        assert services(api).clock() >= until_at
        assert standin.creates() == 1 and t["alert_key"] == key


async def test_a_pending_ticket_survives_a_restart(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    standin.fail_next["POST /service/tickets"] = [(503, {})]
    async with desk_gateway() as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now)
        await refresh(api)
        await until(api, state_is("failed"))
    clock.advance(3600)
    async with desk_gateway() as api:
        [t] = await until(api, state_is("open"), clock=clock, step=60)
        assert len(standin.tickets) == 1 and t["ticket_id"] == str(next(iter(standin.tickets)))


async def test_a_key_limited_to_some_customers_sees_only_their_tickets(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    own, other = sim.customer_ids()
    async with desk_gateway() as api:
        for cid in (own, other):
            sim.put_job(cid, f"fail-{cid[:4]}", status=FAILED, start=clock.now)
        await refresh(api)
        await until(api, state_is("unmapped", 2))
        svc = services(api)
        key = await keys.create_key(
            svc.writer, "limited", customers=[own], rate_per_minute=None, now=svc.clock()
        )
        await svc.keys.reload(svc.sessions)
        limited = {"X-API-Key": key}
        response = await api.get("/tickets", headers=limited)
        assert [t["customer_id"] for t in response.json()["items"]] == [own]
        response = await api.get("/tickets", params={"customer_id": other}, headers=limited)
        assert response.status_code == 422, response.text
        response = await api.get("/tickets", params={"state": "bogus"})
        assert response.status_code == 422
        assert response.json()["error"]


async def test_after_a_create_that_timed_out_the_ticket_is_looked_up_by_external_ref(
    database_url: str, clock: FakeClock, sim: Simulator, sleeps: Sleeps
) -> None:
    """respx as ConnectWise: the first create gets no answer in time (it landed all the same);
    the retry asks for the ticket by `externalXRef`, finds it, and creates nothing."""
    customer = sim.customer_ids()[0]
    root = CW_URL + cw.ROOT
    settings = settings_for(database_url, **psa_settings())
    app = create_app(
        settings,
        clock=clock,
        transport=httpx.ASGITransport(app=create_simulator_app(sim)),
        sleep=sleeps.sleep,
    )
    with respx.mock(assert_all_mocked=True) as mock:
        mock.get(f"{root}/service/boards").respond(json=[{"id": 1, "name": "Help Desk"}])
        mock.get(f"{root}/service/boards/1/statuses").respond(json=[{"id": 10, "name": "New"}])
        create = mock.post(f"{root}/service/tickets").mock(
            side_effect=httpx.ReadTimeout("no answer")
        )
        find = mock.get(f"{root}/service/tickets").respond(json=[{"id": 777}])
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://gateway.test",
                headers={"X-API-Key": API_KEY},
            ) as api,
        ):
            await map_customer(api, customer, 250)
            sim.put_job(customer, "j1", status=FAILED, start=clock.now)
            await refresh(api)
            [failed] = await until(api, state_is("failed"))
            assert "no answer" in failed["last_error"]
            [t] = await until(api, state_is("open"), clock=clock, step=60)
    assert t["ticket_id"] == "777"
    assert create.call_count == 1
    ref = json.loads(create.calls.last.request.content)["externalXRef"]
    assert find.calls.last.request.url.params["conditions"] == f'externalXRef="{ref}"'


async def test_lifting_a_snooze_opens_the_waiting_ticket_at_once(
    desk_gateway: Gateway, sim: Simulator, clock: FakeClock, standin: cw.StandIn
) -> None:
    customer = sim.customer_ids()[0]
    key = key_of(customer)

    async def snooze(until: str) -> None:
        response = await api.post(f"/alerts/{key}/snooze", json={"until": until})
        assert response.status_code == 200, response.text

    async with desk_gateway(psa_min_severity="critical") as api:
        await map_customer(api, customer, 250)
        sim.put_job(customer, "j1", status=FAILED, start=clock.now - timedelta(hours=3))
        await refresh(api)
        await snooze((clock.now + timedelta(days=7)).isoformat().replace("+00:00", "Z"))
        for n in (2, 3):
            sim.put_job(customer, f"j{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
            await refresh(api)
        services(api).notices.notify()
        await asyncio.sleep(0.2)
        assert standin.creates() == 0
        await snooze("2000-01-01T00:00:00Z")  # lifted: no need to wait out the week
        await until(api, state_is("open"))
        assert standin.creates() == 1
