"""Protected objects as an MSP technician meets them: learned schedules in `GET /objects`,
"no result" found by the sweep while the upstream is silent (and its recovery), expectations
set, handed back and retired, and the grid by business day.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from app.alerts.sweeps import sweep_overdue
from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

HOUR = 3600.0
FINISHED, FAILED, WARNING = 2, 3, 4
GROUPS = {"job_type": 7, "module": 304}  # microsoft_365 / microsoft_365_groups
EXCHANGE = {"job_type": 7, "module": 303}
ONEDRIVE = {"job_type": 7, "module": 305}
PROJECT = {"job_type": 7, "module": 306}


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


@pytest.fixture
def customer(sim: Simulator) -> str:
    return sim.customer_ids()[0]


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(cache_ttl_seconds=60) as client:
        yield client


def at_3(clock: FakeClock, days_ago: int) -> datetime:
    return clock.now.replace(hour=3, minute=0, second=0) - timedelta(days=days_ago)


def put_daily(
    sim: Simulator, clock: FakeClock, cid: str, prefix: str, days: int, **kind: int
) -> None:
    for n in range(days):
        sim.put_job(cid, f"{prefix}-{n}", status=FINISHED, start=at_3(clock, n), **kind)


async def refresh(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs", params={"max_age": 0})
    assert response.status_code == 200, response.text


async def objects(api: httpx.AsyncClient, **params: Any) -> dict[str, dict[str, Any]]:
    response = await api.get("/objects", params=params)
    assert response.status_code == 200, response.text
    return {o["module"]: o for o in response.json()["items"]}


async def events(api: httpx.AsyncClient, after: str | None = None) -> tuple[list[Any], str]:
    params: dict[str, Any] = {"limit": 1000}
    if after is not None:
        params["after"] = after
    response = await api.get("/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"], response.json()["next_cursor"]


async def sweep(api: httpx.AsyncClient) -> int:
    svc = services_of(api)
    return await sweep_overdue(
        svc.writer, svc.sessions, svc.feed, svc.clock, svc.on_told, holder=svc.refresher.holder
    )


async def test_schedules_are_learned_daily_4_hourly_weekly_and_through_a_burst(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "daily", 10, **GROUPS)
    for n in range(30):
        start = clock.now - timedelta(hours=1 + 4 * n)
        sim.put_job(customer, f"four-{n}", status=FINISHED, start=start, **EXCHANGE)
    for n in range(3):
        sim.put_job(
            customer, f"week-{n}", status=FINISHED, start=at_3(clock, 2 + 7 * n), **ONEDRIVE
        )
    put_daily(sim, clock, customer, "burst", 8, **PROJECT)
    for n in range(6):  # retries on one day
        start = at_3(clock, 3) + timedelta(minutes=10 * (n + 1))
        sim.put_job(customer, f"retry-{n}", status=FAILED, start=start, **PROJECT)
    await refresh(api)
    found = await objects(api)
    learned = {m: (o["expected"]["every_hours"], o["expected"]["source"]) for m, o in found.items()}
    assert learned == {
        "microsoft_365_groups": (24.0, "learned"),
        "exchange_online": (4.0, "learned"),
        "onedrive": (168.0, "learned"),
        "project_online": (24.0, "learned"),
    }
    daily = found["microsoft_365_groups"]
    assert daily["key"] == f"{customer}:microsoft_365:microsoft_365_groups"
    assert daily["state"] == "ok"
    assert daily["in_maintenance"] is False
    assert daily["last_result"]["job_id"] == "daily-0"
    assert daily["next_result_due_at"] == (at_3(clock, -1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert daily["expected"]["grace_hours"] == 6
    assert found["exchange_online"]["expected"]["grace_hours"] == 2
    assert found["project_online"]["failures_since_success"] == 0


async def test_no_result_on_the_timer_with_the_upstream_silent_and_its_recovery(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    await refresh(api)
    _, cursor = await events(api)
    key = f"{customer}:microsoft_365:microsoft_365_groups"

    clock.now = at_3(clock, -1) + timedelta(hours=5)  # due at 03:00, grace until 09:00
    assert await sweep(api) == 0
    clock.advance(2 * HOUR)  # 10:00: no result, and nobody asked the upstream
    assert await sweep(api) == 2
    items, cursor = await events(api, cursor)
    assert [(e["type"], e["alert_key"]) for e in items] == [
        ("object.no_result", key),
        ("alert.opened", key),
    ]
    assert items[1]["data"]["alert"]["reason"] == "no_result"
    assert items[1]["data"]["alert"]["severity"] == "critical"
    assert items[0]["data"]["object"]["expected"]["every_hours"] == 24.0
    assert (await objects(api))["microsoft_365_groups"]["state"] == "no_result"
    assert await sweep(api) == 0  # told once

    sim.put_job(customer, "late", status=FINISHED, start=clock.now - timedelta(minutes=5), **GROUPS)
    await refresh(api)
    items, _ = await events(api, cursor)
    assert [e["type"] for e in items] == ["job.created", "object.recovered", "alert.resolved"]
    found = (await objects(api))["microsoft_365_groups"]
    assert (found["state"], found["days_in_state"]) == ("ok", 0)


async def test_a_kept_answer_turns_no_result_when_time_alone_says_so(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    """/objects is kept while nothing moves, but not past the moment an object's due time
    and grace pass: with no sweep, no refresh and no event, the read then starts a rebuild
    (and may still get the kept answer while it runs), and the reads after say "no result"."""
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    await refresh(api)
    clock.now = at_3(clock, -1) + timedelta(hours=5)  # due at 03:00, grace until 09:00
    first = await api.get("/objects")
    answers = services_of(api).answers
    # Kept: served from memory, not judged again. The process's look at the database (every
    # half second) may still move the answers once for the refresh's own writes: a guard
    # against a hang, not a timing.
    for _ in range(1000):
        hits = answers.hits
        again = await api.get("/objects")
        if answers.hits > hits:
            break
        await asyncio.sleep(0.01)
    assert answers.hits > hits
    assert first.content == again.content
    assert (await objects(api))["microsoft_365_groups"]["state"] == "ok"
    clock.advance(HOUR - 60)  # 08:59: still within the grace, and the same answer
    assert (await api.get("/objects")).content == first.content
    clock.advance(120)  # 09:01: past the grace, two minutes on, and nothing else moved
    for _ in range(1000):  # a guard against a hang, not a timing: the rebuild's turns
        if (await objects(api))["microsoft_365_groups"]["state"] == "no_result":
            break
        await asyncio.sleep(0.01)
    assert (await objects(api))["microsoft_365_groups"]["state"] == "no_result"


async def test_what_time_alone_changes_shows_within_the_sweeps_round_not_per_request(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    """At 20,000 objects some object's day count moves every few seconds: an answer is kept
    for at least the sweep's round (a minute), so reads in between cost no rebuild."""
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    await refresh(api)
    clock.now = at_3(clock, -1) + timedelta(hours=8, minutes=59, seconds=50)  # grace ends in 10 s
    first = await api.get("/objects")
    clock.advance(30)  # the grace has passed, but within the round: still the kept answer
    assert (await api.get("/objects")).content == first.content


async def test_a_weekday_object_is_never_no_result_on_the_weekend(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    assert clock.now.weekday() == 6  # the tests' clock starts on a Sunday morning
    for n in range(1, 15):
        start = at_3(clock, n)
        if start.weekday() < 5:
            sim.put_job(customer, f"wd-{n}", status=FINISHED, start=start, **GROUPS)
    clock.now = at_3(clock, 1) + timedelta(hours=4)  # Saturday 07:00
    await refresh(api)
    found = (await objects(api))["microsoft_365_groups"]
    assert found["expected"]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    for _ in range(4):  # Saturday and Sunday, every 12 hours
        assert await sweep(api) == 0
        assert (await objects(api))["microsoft_365_groups"]["state"] == "ok"
        clock.advance(12 * HOUR)
    clock.advance(10 * HOUR)  # Monday 09:00 + 1 h: late
    assert await sweep(api) == 2
    assert (await objects(api))["microsoft_365_groups"]["state"] == "no_result"


async def test_set_handed_back_and_retired_expectations(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    sim.put_job(customer, "once", status=WARNING, start=at_3(clock, 0), **EXCHANGE)
    await refresh(api)
    key = f"{customer}:microsoft_365:microsoft_365_groups"

    response = await api.put(
        f"/objects/{key}/expectation",
        json={"every_hours": 48, "days": ["tue", "mon"], "grace_hours": 1},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expected"] == {
        "every_hours": 48.0,
        "days": ["mon", "tue"],
        "grace_hours": 1.0,
        "source": "set",
    }
    assert (await objects(api))["microsoft_365_groups"]["expected"]["source"] == "set"

    response = await api.put(f"/objects/{key}/expectation", json={"every_hours": None})
    assert response.json()["expected"]["source"] == "learned"
    assert response.json()["expected"]["every_hours"] == 24.0

    # Too few results to learn: none; treating its warning as a success makes it ok.
    found = (await objects(api))["exchange_online"]
    assert (found["state"], found["expected"]["source"]) == ("warning", "none")
    other = f"{customer}:microsoft_365:exchange_online"
    response = await api.put(
        f"/objects/{other}/expectation", json={"treat_warning_as_success": True}
    )
    assert (response.json()["state"], response.json()["treat_warning_as_success"]) == ("ok", True)
    alerts = (await api.get("/alerts", params={"state": "open"})).json()["items"]
    assert alerts == []  # its warning alert resolved with it

    response = await api.put(f"/objects/{key}/expectation", json={"retired": True})
    assert response.json()["state"] == "retired"
    assert list(await objects(api, state="retired")) == ["microsoft_365_groups"]
    grid = (await api.get("/grid", params={"days": 3})).json()
    assert [row["module"] for row in grid["items"]] == ["exchange_online"]
    clock.advance(72 * HOUR)  # a retired object is never "no result", nor alerted
    await sweep(api)
    alerts = (await api.get("/alerts", params={"state": "open"})).json()["items"]
    assert [(a["alert_key"], a["reason"]) for a in alerts] == [(other, "overdue")]
    assert (await objects(api))["microsoft_365_groups"]["state"] == "retired"


async def test_unknown_objects_and_bad_bodies_are_client_errors(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 3, **GROUPS)
    await refresh(api)
    for key in ("nope", f"{customer}:microsoft_365:onedrive", "x:microsoft_365:onedrive"):
        response = await api.put(f"/objects/{key}/expectation", json={})
        assert response.status_code == 404, key
        assert response.json()["error"] == "not_found"
    key = f"{customer}:microsoft_365:microsoft_365_groups"
    for body in ({"every_hours": 0}, {"days": ["someday"]}, {"grace_hours": -1}, {"x": 1}):
        response = await api.put(f"/objects/{key}/expectation", json=body)
        assert response.status_code == 422, body
    for params in ({"state": "bad"}, {"module": "bad"}, {"customer_id": "nobody"}):
        assert (await api.get("/objects", params=params)).status_code == 422
    assert (await api.get("/grid", params={"days": 93})).status_code == 422
    assert (await api.get("/grid", params={"days": 0})).status_code == 422


async def test_grid_days_and_the_worst_and_last_picks(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 5, **GROUPS)
    sim.put_job(
        customer, "fail", status=FAILED, start=at_3(clock, 0) - timedelta(hours=1), **GROUPS
    )
    for rule, today in (("worst", "failure"), ("last", "success")):
        async with gateway(day_result_rule=rule) as api:
            await refresh(api)
            response = await api.get("/grid", params={"days": 7})
            assert response.status_code == 200, response.text
            grid = response.json()
            assert grid["days"][-1] == clock.now.date().isoformat()
            assert len(grid["days"]) == 7
            [row] = grid["items"]
            cells = row["cells"]
            assert [c["result"] for c in cells] == ["none", "none"] + ["success"] * 4 + [today]
            assert cells[-1] == {"date": grid["days"][-1], "result": today, "jobs": 2}


async def test_grid_days_start_at_6_in_amsterdam_across_the_dst_change(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    # Sunday March 29 2026, 05:30 CEST (03:30 UTC): the day before the change still runs.
    clock.now = datetime.fromisoformat("2026-03-29T03:30:00+00:00")
    sim.put_job(customer, "before", status=FINISHED, start=clock.now - timedelta(hours=1), **GROUPS)
    async with gateway(timezone="Europe/Amsterdam", day_start_hour=6) as api:
        await refresh(api)
        grid = (await api.get("/grid", params={"days": 2})).json()
        assert grid["days"] == ["2026-03-27", "2026-03-28"]
        assert grid["items"][0]["cells"][-1]["result"] == "success"
        clock.advance(HOUR)  # 06:30 CEST: a new business day
        sim.put_job(customer, "after", status=FAILED, start=clock.now, **GROUPS)
        await refresh(api)
        grid = (await api.get("/grid", params={"days": 2})).json()
        assert grid["days"] == ["2026-03-28", "2026-03-29"]
        assert [c["result"] for c in grid["items"][0]["cells"]] == ["success", "failure"]


async def test_one_process_sweeps_at_a_time(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    await refresh(api)
    svc = services_of(api)
    assert await sweep(api) == 0  # this process holds the sweep's lease now
    clock.now = at_3(clock, -1) + timedelta(hours=7)
    other = await sweep_overdue(
        svc.writer, svc.sessions, svc.feed, svc.clock, holder="replica:2:other"
    )
    assert other == 0  # not its turn: the holder sweeps
    assert await sweep(api) == 2


async def test_object_events_can_be_chosen_for_webhooks(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    async with gateway(
        webhook_urls="http://127.0.0.1:9/hook",
        webhook_secret="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        webhook_events="object.no_result,object.recovered",
    ) as api:
        await refresh(api)
        clock.now = at_3(clock, -1) + timedelta(hours=7)
        assert await sweep(api) == 2
        sim.put_job(customer, "late", status=FINISHED, start=clock.now, **GROUPS)
        await refresh(api)
        response = await api.get("/webhooks/deliveries")
        assert response.status_code == 200, response.text
        types = sorted(d["event_type"] for d in response.json()["items"])
        assert types == ["object.no_result", "object.recovered"]


async def test_the_sweep_reads_a_customer_again_only_when_it_changed(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    from app.alerts.sweeps import LateWatch

    put_daily(sim, clock, customer, "d", 10, **GROUPS)
    await refresh(api)
    svc = services_of(api)
    watch = LateWatch()

    async def candidates() -> set[str]:
        async with svc.sessions() as session:
            return await watch.candidates(session, svc.feed, svc.clock())

    assert await candidates() == set()
    clock.now = at_3(clock, -1) + timedelta(hours=7)  # late now: time alone moved
    assert await candidates() == {customer}
    await sweep_overdue(
        svc.writer, svc.sessions, svc.feed, svc.clock, svc.on_told, svc.refresher.holder,
        watch=watch,
    )  # fmt: skip
    assert await candidates() == set()  # told: its row changed, and it was read again
    sim.put_job(customer, "late", status=FINISHED, start=clock.now, **GROUPS)
    await refresh(api)
    assert await candidates() == set()  # recovered in the refresh's own merge
