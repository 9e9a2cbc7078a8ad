"""The change feed and alerts as a PSA integration meets them: the simulator's jobs go
through failure, further failures, recovery, an overdue key and a running job, and the
feed tells each change once, in order, whatever cursor it is read from.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.api import events as events_api
from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway, services_of
from tests.clock import FakeClock

HOUR = 3600.0
FINISHED, FAILED, RUNNING, CANCELED = 2, 3, 1, 8
EXCHANGE = {"job_type": 7, "module": 303}  # microsoft_365 / exchange_online


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Two customers whose only jobs are the ones a test puts in place."""
    return Simulator(SimulatorConfig(seed=7, customers=2, jobs_per_customer=0), clock=clock)


@pytest.fixture
def customer(sim: Simulator) -> str:
    return sim.customer_ids()[0]


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(cache_ttl_seconds=60) as client:
        yield client


async def refresh(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs", params={"max_age": 0})
    assert response.status_code == 200, response.text


async def events(api: httpx.AsyncClient, **params: Any) -> tuple[list[dict[str, Any]], str]:
    response = await api.get("/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["items"], body["next_cursor"]


def kinds(items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["job_id"]) for e in items]


async def open_alerts(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/alerts", params={"state": "open"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_failure_opens_an_alert_further_failures_raise_it_and_a_success_resolves_it(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    t0 = clock.now - timedelta(hours=2)
    sim.put_job(customer, "ok-1", status=FINISHED, start=t0, **EXCHANGE)
    await refresh(api)
    first, cursor = await events(api)
    assert kinds(first) == [("job.created", "ok-1")]
    assert first[0]["alert_key"] == f"{customer}:microsoft_365:exchange_online"
    assert first[0]["data"]["job"]["status"] == "finished"
    assert await open_alerts(api) == []

    # A run starts: a new job, but running is not finished, so no alert.
    clock.advance(HOUR)
    sim.put_job(customer, "run-2", status=RUNNING, start=clock.now, **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.created", "run-2")]
    assert items[0]["data"]["job"]["status"] == "running"
    assert await open_alerts(api) == []

    # It fails: the job's status changes and an alert opens, a warning.
    clock.advance(HOUR)
    sim.put_job(customer, "run-2", status=FAILED, start=clock.now - timedelta(hours=1), **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.status_changed", "run-2"), ("alert.opened", "run-2")]
    assert items[0]["data"]["from"] == "running"
    assert items[0]["data"]["to"] == "failed"
    alert = items[1]["data"]["alert"]
    assert alert["state"] == "open"
    assert alert["reason"] == "failed"
    assert alert["severity"] == "warning"
    assert alert["consecutive_failures"] == 1
    assert alert["last_success_at"] == t0.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert items[1]["data"]["job"]["job_id"] == "run-2"
    [listed] = await open_alerts(api)
    assert listed == alert

    # A second failure: counted, still a warning, so no alert event.
    clock.advance(HOUR)
    sim.put_job(customer, "fail-3", status=FAILED, start=clock.now, **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.created", "fail-3")]
    [listed] = await open_alerts(api)
    assert listed["consecutive_failures"] == 2
    assert listed["severity"] == "warning"
    assert listed["last_job_id"] == "fail-3"

    # The third: critical, told as alert.updated so a PSA can raise the ticket's priority.
    clock.advance(HOUR)
    sim.put_job(customer, "fail-4", status=FAILED, start=clock.now, **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.created", "fail-4"), ("alert.updated", "fail-4")]
    assert items[1]["data"]["alert"]["severity"] == "critical"
    assert items[1]["data"]["previous_severity"] == "warning"
    assert items[1]["data"]["alert"]["consecutive_failures"] == 3

    # A canceled run changes nothing about the alert.
    clock.advance(HOUR)
    sim.put_job(customer, "cancel-5", status=CANCELED, start=clock.now, **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.created", "cancel-5")]
    [listed] = await open_alerts(api)
    assert listed["consecutive_failures"] == 3

    # A success resolves it.
    clock.advance(HOUR)
    sim.put_job(customer, "ok-6", status=FINISHED, start=clock.now, **EXCHANGE)
    await refresh(api)
    items, cursor = await events(api, after=cursor)
    assert kinds(items) == [("job.created", "ok-6"), ("alert.resolved", "ok-6")]
    resolved = items[1]["data"]["alert"]
    assert resolved["state"] == "resolved"
    assert resolved["resolved_at"] is not None
    assert resolved["consecutive_failures"] == 0
    assert resolved["first_failure_at"] is None
    assert await open_alerts(api) == []
    response = await api.get("/alerts", params={"state": "resolved"})
    [old] = response.json()["items"]
    assert old["alert_key"] == alert["alert_key"]
    assert old["opened_at"] == alert["opened_at"]

    # A refresh that sees nothing new tells nothing.
    clock.advance(HOUR)
    await refresh(api)
    items, _ = await events(api, after=cursor)
    assert items == []


async def test_an_overdue_key_opens_a_critical_alert_and_a_success_resolves_it(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    sim.put_job(customer, "ok-1", status=FINISHED, start=clock.now - timedelta(hours=1))
    async with gateway(overdue_hours=36) as api:
        await refresh(api)
        _, cursor = await events(api)
        svc = api._transport.app.state.services  # type: ignore[attr-defined]
        from app.alerts.sweeps import sweep_overdue

        clock.advance(34 * HOUR)
        assert await sweep_overdue(svc.writer, svc.sessions, svc.feed, svc.clock) == 0
        # A run in progress is not a result: the key is still overdue once 36 hours pass.
        sim.put_job(customer, "run-2", status=RUNNING, start=clock.now)
        await refresh(api)
        clock.advance(2 * HOUR)
        assert await sweep_overdue(svc.writer, svc.sessions, svc.feed, svc.clock) == 1
        items, cursor = await events(api, after=cursor)
        assert kinds(items) == [("job.created", "run-2"), ("alert.opened", "ok-1")]
        alert = items[1]["data"]["alert"]
        assert alert["reason"] == "overdue"
        assert alert["severity"] == "critical"
        assert alert["consecutive_failures"] == 0
        # Sweeping again finds it open already: nothing more.
        assert await sweep_overdue(svc.writer, svc.sessions, svc.feed, svc.clock) == 0

        sim.put_job(customer, "run-2", status=FINISHED, start=clock.now - timedelta(hours=2))
        await refresh(api)
        items, _ = await events(api, after=cursor)
        assert kinds(items) == [("job.status_changed", "run-2"), ("alert.resolved", "run-2")]


async def test_the_first_snapshot_tells_every_job_and_opens_what_it_already_shows(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    start = clock.now - timedelta(hours=10)
    for n in range(3):
        sim.put_job(customer, f"f{n}", status=FAILED, start=start + timedelta(hours=n))
    sim.put_job(customer, "ok", status=FINISHED, start=start, **EXCHANGE)
    await refresh(api)
    items, _ = await events(api)
    created = [e for e in items if e["type"] == "job.created"]
    assert sorted(e["job_id"] for e in created) == ["f0", "f1", "f2", "ok"]
    opened = [e for e in items if e["type"] == "alert.opened"]
    assert len(opened) == 1
    alert = opened[0]["data"]["alert"]
    assert alert["severity"] == "critical"  # three failures in a row already
    assert alert["consecutive_failures"] == 3
    assert alert["module"] == "microsoft_365_groups"
    # Events come after the jobs they are about: job events first, then the alert.
    assert items[-1]["type"] == "alert.opened"


async def test_replay_from_any_cursor_gives_the_same_events_in_the_same_order(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    for n in range(6):
        sim.put_job(customer, f"j{n}", status=(FAILED, FINISHED)[n % 2], start=clock.now)
        await refresh(api)
        clock.advance(HOUR)
    everything, last = await events(api)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for after in (0, ids[0], ids[3], ids[-2]):
        replay, _ = await events(api, after=after)
        assert replay == [e for e in everything if e["id"] > after]
    # Paged in twos, the pages put together are the feed.
    paged: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        page, cursor = await events(api, after=cursor, limit=2)
        if not page:
            break
        paged += page
    assert paged == everything
    assert cursor == last


async def test_filters_by_type_and_customer(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first, second = sim.customer_ids()
    sim.put_job(first, "a", status=FAILED, start=clock.now)
    sim.put_job(second, "b", status=FINISHED, start=clock.now)
    await refresh(api)
    items, cursor = await events(api, type="alert.opened")
    assert kinds(items) == [("alert.opened", "a")]
    items, _ = await events(api, customer_id=second)
    assert kinds(items) == [("job.created", "b")]
    items, _ = await events(api, type="job.created,alert.opened", customer_id=first)
    assert [e["type"] for e in items] == ["job.created", "alert.opened"]
    # A filter that matches nothing still moves the cursor to what it has looked at.
    items, moved = await events(api, type="alert.resolved")
    assert items == []
    assert int(moved) >= int(cursor)


async def test_a_long_poll_hears_of_a_failure_as_soon_as_it_is_stored(
    api: httpx.AsyncClient,
    sim: Simulator,
    clock: FakeClock,
    customer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await refresh(api)
    _, cursor = await events(api)
    notices = services_of(api).notices
    waiting = asyncio.Event()
    woken: list[bool] = []
    wait = notices.wait

    async def watched(seconds: float, since: int | None = None) -> bool:
        waiting.set()
        woken.append(await wait(seconds, since))
        return woken[-1]

    monkeypatch.setattr(notices, "wait", watched)
    # The poll looks at the database only when a notice wakes it: what answers it is the
    # write's own notice, never its `wait` running out.
    poll = asyncio.create_task(api.get("/events", params={"after": cursor, "wait": 30}))
    await asyncio.wait_for(waiting.wait(), 30)  # a failure guard: it waits at once
    assert not poll.done()
    sim.put_job(customer, "late", status=FAILED, start=clock.now)
    await refresh(api)
    # A failure guard well inside the poll's own 30 s: it answers when the notice comes.
    response = await asyncio.wait_for(poll, 25)
    assert woken and woken[-1] is True, "the poll's wait ran out: the write did not wake it"
    assert [e["type"] for e in response.json()["items"]][:1] == ["job.created"]


async def test_many_long_polls_woken_by_one_write_share_one_read_of_the_feed(
    api: httpx.AsyncClient, sim: Simulator, customer: str, clock: FakeClock
) -> None:
    await refresh(api)
    _, cursor = await events(api)
    svc = services_of(api)
    waiting = 0
    wait = svc.notices.wait

    async def counted(seconds: float, since: int | None = None) -> bool:
        nonlocal waiting
        waiting += 1
        return await wait(seconds, since)

    svc.notices.wait = counted  # type: ignore[method-assign]
    reads = 0
    page = events_api._page

    async def read(*args: Any) -> tuple[bytes, int]:
        nonlocal reads
        reads += 1
        return await page(*args)

    polls = [
        asyncio.create_task(api.get("/events", params={"after": cursor, "wait": 30}))
        for _ in range(20)
    ]
    for _ in range(3000):  # a failure guard: all twenty are waiting soon
        if waiting >= 20:
            break
        await asyncio.sleep(0.01)
    assert waiting >= 20
    before = reads
    events_api._page = read  # type: ignore[assignment]
    try:
        sim.put_job(customer, "late", status=FAILED, start=clock.now)
        await refresh(api)
        answers = await asyncio.wait_for(asyncio.gather(*polls), 25)
    finally:
        events_api._page = page  # type: ignore[assignment]
    assert all(r.json()["items"][0]["job_id"] == "late" for r in answers)
    # One read of the feed answered all twenty (none of them polls the database by itself).
    assert reads - before == 1


async def test_a_long_poll_with_nothing_new_answers_empty_when_its_wait_is_up(
    api: httpx.AsyncClient,
) -> None:
    await refresh(api)
    response = await api.get("/events", params={"wait": 0.3})
    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": "0"}


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"wait": "31"}, "wait"),
        ({"type": "job.deleted"}, "type"),
        ({"customer_id": "nobody"}, "customer_id"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    api: httpx.AsyncClient, params: dict[str, str], names: str
) -> None:
    response = await api.get("/events", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_parameter"
    assert names in response.json()["detail"]


async def test_alerts_filter_by_customer_job_type_module_and_severity(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first, second = sim.customer_ids()
    sim.put_job(first, "a", status=FAILED, start=clock.now, **EXCHANGE)
    sim.put_job(second, "b", status=FAILED, start=clock.now)
    await refresh(api)
    assert len(await open_alerts(api)) == 2

    async def keys(**params: str) -> list[str]:
        response = await api.get("/alerts", params=params)
        assert response.status_code == 200, response.text
        return [a["alert_key"] for a in response.json()["items"]]

    assert await keys(customer_id=first) == [f"{first}:microsoft_365:exchange_online"]
    assert await keys(module="microsoft_365_groups") == [
        f"{second}:microsoft_365:microsoft_365_groups"
    ]
    assert len(await keys(job_type="microsoft_365", severity="warning")) == 2
    assert await keys(severity="critical") == []
    assert await keys(state="resolved") == []
    page = (await api.get("/alerts", params={"limit": 1})).json()
    assert len(page["items"]) == 1
    rest = (await api.get("/alerts", params={"cursor": page["next_cursor"]})).json()
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None
    for bad in ({"state": "closed"}, {"module": "floppy"}, {"cursor": "abc"}, {"severity": "x"}):
        response = await api.get("/alerts", params=bad)
        assert response.status_code == 422, bad


async def test_a_snooze_is_listed_on_the_alert_and_lifted_by_a_past_time(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    sim.put_job(customer, "a", status=FAILED, start=clock.now)
    await refresh(api)
    [alert] = await open_alerts(api)
    key = alert["alert_key"]
    until = (clock.now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = await api.post(
        f"/alerts/{key}/snooze", json={"until": until, "reason": "mailbox decommissioned"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["snoozed_until"] == until
    assert response.json()["snooze_reason"] == "mailbox decommissioned"
    [listed] = await open_alerts(api)
    assert listed["snoozed_until"] == until
    # Events are still written while snoozed.
    _, cursor = await events(api)
    for n in range(2):
        clock.advance(HOUR)
        sim.put_job(customer, f"f{n}", status=FAILED, start=clock.now)
    await refresh(api)
    items, _ = await events(api, after=cursor)
    assert [e["type"] for e in items] == ["job.created", "job.created", "alert.updated"]
    assert items[-1]["data"]["alert"]["snoozed_until"] == until

    response = await api.post(f"/alerts/{key}/snooze", json={"until": "2000-01-01T00:00:00Z"})
    assert response.status_code == 200
    assert response.json()["snoozed_until"] is None


@pytest.mark.parametrize(
    ("key", "body", "status"),
    [
        ("nobody:microsoft_365:onedrive", {"until": "2030-01-01T00:00:00Z"}, 404),
        ("k", {"until": "soon"}, 422),
        ("k", {"until": "2030-01-01T00:00:00"}, 422),
        ("k", {}, 422),
        ("k", {"until": "2030-01-01T00:00:00Z", "extra": 1}, 422),
        ("k", {"until": "2030-01-01T00:00:00Z", "reason": "x" * 501}, 422),
    ],
)
async def test_snoozing_what_is_not_there_or_badly_is_a_clear_4xx(
    api: httpx.AsyncClient, key: str, body: dict[str, Any], status: int
) -> None:
    response = await api.post(f"/alerts/{key}/snooze", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize(
    "until",
    [
        0,  # read as 1970 by pydantic's default (schemathesis, ST201)
        1893456000,
        1.5,
        "1893456000",
        True,
        None,
        ["2030-01-01T00:00:00Z"],
        {"at": "2030-01-01T00:00:00Z"},
        "2030-01-01",  # a date alone: midnight where?
        "2030-01-01T00:00",  # no seconds, no offset
        "2030-01-01T00:00:00",  # no offset: its zone would be a guess
        "2030-01-01T00:00:00+0100",
        "2030-13-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-01T00:00:00+24:00",
        "0001-01-01T00:00:00+14:00",  # no UTC form
        "tomorrow",
        "",
    ],
)
async def test_a_snooze_until_anything_but_an_rfc_3339_string_with_offset_is_422(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str, until: Any
) -> None:
    sim.put_job(customer, "a", status=FAILED, start=clock.now)
    await refresh(api)
    [alert] = await open_alerts(api)
    response = await api.post(f"/alerts/{alert['alert_key']}/snooze", json={"until": until})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert body["detail"].startswith("until: ")
    assert "2030-01-01T00:00:00Z" in body["detail"] or "out of range" in body["detail"]
    [unchanged] = await open_alerts(api)
    assert unchanged["snoozed_until"] is None


@pytest.mark.parametrize(
    ("until", "stored"),
    [
        ("2030-01-01T01:00:00+01:00", "2030-01-01T00:00:00Z"),
        ("2029-12-31t19:00:00.250-05:00", "2030-01-01T00:00:00Z"),
        ("2030-01-01 00:00:00z", "2030-01-01T00:00:00Z"),
    ],
)
async def test_a_snooze_until_takes_any_offset_and_is_told_in_utc(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str, until: str, stored: str
) -> None:
    sim.put_job(customer, "a", status=FAILED, start=clock.now)
    await refresh(api)
    [alert] = await open_alerts(api)
    response = await api.post(f"/alerts/{alert['alert_key']}/snooze", json={"until": until})
    assert response.status_code == 200, response.text
    assert response.json()["snoozed_until"] == stored


async def test_a_failed_refresh_tells_nothing_and_keeps_the_alerts(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    import dataclasses

    sim.put_job(customer, "a", status=FAILED, start=clock.now)
    await refresh(api)
    _, cursor = await events(api)
    sim.put_job(customer, "b", status=FINISHED, start=clock.now + timedelta(minutes=1))
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({customer}))
    clock.advance(120)
    await refresh(api)
    items, _ = await events(api, after=cursor)
    assert items == []
    assert len(await open_alerts(api)) == 1


# -- a cursor older than what retention kept -------------------------------------------------

DAY = 24 * HOUR


async def purge(api: httpx.AsyncClient, days: float = 90) -> dict[str, int]:
    """The hourly retention purge, run now on the app's own store."""
    from app.store.retention import purge as purge_store

    svc = services_of(api)
    return await purge_store(svc.writer, svc.clock(), days)


async def test_a_cursor_older_than_retention_is_410_with_where_to_read_on_from(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    sim.put_job(customer, "old-1", status=FAILED, start=clock.now)
    sim.put_job(customer, "old-2", status=FINISHED, start=clock.now, **EXCHANGE)
    async with gateway(cache_ttl_seconds=60) as api:
        await refresh(api)
        old, _ = await events(api)
        assert len(old) == 3  # two job.created and an alert.opened
        behind = str(old[0]["id"])  # a client that read one event, then went away

        clock.advance(100 * DAY)
        sim.put_job(customer, "new", status=FINISHED, start=clock.now)
        await refresh(api)
        assert (await purge(api))["events"] == 3

        response = await api.get("/events", params={"after": behind})
        assert response.status_code == 410, response.text
        body = response.json()
        assert set(body) == {"error", "detail", "oldest_cursor"}
        assert body["error"] == "cursor_expired"
        assert behind in body["detail"] and "oldest_cursor" in body["detail"]
        assert body["oldest_cursor"] == str(old[-1]["id"])

        # From oldest_cursor on, nothing is missing and nothing was purged.
        kept, cursor = await events(api, after=body["oldest_cursor"])
        assert kinds(kept) == [("job.created", "new"), ("alert.resolved", "new")]
        # A client starting out (no cursor) reads from the oldest event kept: no error.
        assert await events(api) == (kept, cursor)
        # An explicit cursor of 0 says "I have read nothing": events were purged since.
        zero = await api.get("/events", params={"after": "0"})
        assert zero.status_code == 410
        assert zero.json()["oldest_cursor"] == body["oldest_cursor"]
        # A long poll is told at once, rather than waiting and then skipping.
        poll = await api.get("/events", params={"after": behind, "wait": 30})
        assert poll.status_code == 410
        assert poll.json() == body
        # Filters change nothing: the cursor is behind whatever was asked for.
        filtered = await api.get("/events", params={"after": behind, "type": "alert.opened"})
        assert filtered.status_code == 410
        # And the OpenAPI document says so.
        documented = (await api.get("/openapi.json")).json()["paths"]["/events"]["get"]
        schema = documented["responses"]["410"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/CursorExpiredBody"}


async def test_every_replica_tells_an_expired_cursor_after_one_of_them_purged(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customer: str
) -> None:
    sim.put_job(customer, "old", status=FINISHED, start=clock.now)
    async with gateway() as first, gateway() as second:
        await refresh(first)
        clock.advance(100 * DAY)
        assert (await purge(first))["events"] == 1
        # Every event went: the other replica knows from the database alone.
        response = await second.get("/events", params={"after": "0", "wait": 30})
        assert response.status_code == 410, response.text
        assert response.json()["oldest_cursor"] == "1"
        assert await events(second) == ([], "1")
        assert await events(second, after="1") == ([], "1")
