"""`GET /summary`, the morning view, as a frontend meets it: scripted jobs of three customers,
grouped by customer, status, job type or module, with the last success, the 7-day success rate
and the health score computed here from its documented formula.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.simulator import Simulator, SimulatorConfig
from tests.api.conftest import Gateway
from tests.clock import FakeClock

HOUR = 3600.0
RUNNING, FINISHED, FAILED, WITH_EXCEPTION, FAILED_TO_START, CANCELED = 1, 2, 3, 4, 7, 8
EXCHANGE: dict[str, Any] = {"job_type": 7, "module": 303}  # microsoft_365 / exchange_online
GROUPS: dict[str, Any] = {"job_type": 7, "module": 304}  # microsoft_365 / microsoft_365_groups
ONEDRIVE: dict[str, Any] = {"job_type": 7, "module": 305}  # microsoft_365 / onedrive


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_health(
    last_success: datetime | None,
    now: datetime,
    finished_7d: int,
    outcomes_7d: int,
    critical: int = 0,
    warning: int = 0,
) -> int:
    """The formula of app/api/summary.py's docstring, from the jobs themselves."""
    if last_success is None:
        recency = 0.0
    else:
        hours = (now - last_success).total_seconds() / 3600
        recency = 40.0 if hours <= 24 else 40.0 * max(0.0, (72 - hours) / 48)
    rate = 40.0 * (finished_7d / outcomes_7d) if outcomes_7d else 0.0
    alerts = max(0, 20 - 10 * critical - 5 * warning)
    total = recency + rate + alerts
    assert abs(total - round(total)) < 0.45, "a case too close to a rounding edge"
    return round(total)


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    """Three customers whose only jobs are the ones a test puts in place."""
    return Simulator(SimulatorConfig(seed=7, customers=3, jobs_per_customer=0), clock=clock)


@pytest.fixture
def customers(sim: Simulator) -> list[str]:
    return sim.customer_ids()


@pytest.fixture
def names(sim: Simulator) -> dict[str, str]:
    return {c["id"]: c["organization"] for c in sim.customers()}


@pytest.fixture
async def api(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    # No overdue alerts here: the tests that want alerts make them with failures.
    async with gateway(cache_ttl_seconds=60, overdue_hours=0) as client:
        yield client


async def summary(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/summary", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_key(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in body["items"]}


@contextmanager
def counting_queries(api: httpx.AsyncClient) -> Iterator[list[str]]:
    engine = api._transport.app.state.services.engine.sync_engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def record(*args: Any) -> None:
        # The bus's looks and reloads follow any refresh by half a second (it cannot tell this
        # process's snapshots from another's): they are not the request's.
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("Bus."):
            return
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def script_morning(sim: Simulator, customers: list[str], now: datetime) -> dict[str, Any]:
    """A: mixed results, last success 36 h ago, two open warnings. B: all well. C: no jobs."""
    a, b, _ = customers
    last_ok_a = now - timedelta(hours=36, minutes=2)
    for job_id, status, start, kind in [
        ("a-old-ok", FINISHED, now - timedelta(days=8), EXCHANGE),  # outside the 7 days
        ("a-old-fail", FAILED, now - timedelta(days=9), EXCHANGE),  # outside the 7 days
        ("a-ok", FINISHED, last_ok_a, EXCHANGE),
        ("a-fail", FAILED, now - timedelta(hours=20), EXCHANGE),
        ("a-exc", WITH_EXCEPTION, now - timedelta(hours=10), EXCHANGE),
        ("a-nostart", FAILED_TO_START, now - timedelta(hours=5), GROUPS),
        ("a-cancel", CANCELED, now - timedelta(hours=2), EXCHANGE),
        ("a-run", RUNNING, now - timedelta(hours=1), GROUPS),
    ]:
        sim.put_job(a, job_id, status=status, start=start, **kind)
    last_ok_b = now - timedelta(hours=2)
    sim.put_job(b, "b-ok-1", status=FINISHED, start=now - timedelta(hours=26), **EXCHANGE)
    sim.put_job(b, "b-ok-2", status=FINISHED, start=last_ok_b, **GROUPS)
    return {"last_ok_a": last_ok_a, "last_ok_b": last_ok_b}


async def test_grouped_by_customer_worst_health_first_with_counts_rates_and_labels(
    api: httpx.AsyncClient,
    sim: Simulator,
    clock: FakeClock,
    customers: list[str],
    names: dict[str, str],
) -> None:
    a, b, c = customers
    now = clock.now
    times = script_morning(sim, customers, now)
    body = await summary(api, max_age=0)
    assert body["group_by"] == "customer"
    assert body["next_cursor"] is None

    health_a = expected_health(times["last_ok_a"], now, 1, 4, warning=2)
    health_b = expected_health(times["last_ok_b"], now, 2, 2)
    health_c = expected_health(None, now, 0, 0)
    assert (health_a, health_b, health_c) == (50, 100, 20)  # the cases are what they say
    assert [i["key"] for i in body["items"]] == [c, a, b], "worst health first"

    items = by_key(body)
    item_a = items[a]
    assert item_a["label"] == names[a]
    assert item_a["counts"] == {
        "canceled": 1,
        "failed": 2,
        "failed_to_start": 1,
        "finished": 2,
        "finished_with_exception": 1,
        "running": 1,
    }
    assert item_a["total"] == 8
    assert item_a["last_success_at"] == iso(times["last_ok_a"])
    assert item_a["hours_since_success"] == 36.0  # 36 h 2 min, to 0.1 h
    # Of the finished jobs of the last 7 days (a-ok, a-fail, a-exc, a-nostart), one finished;
    # canceled and running are no outcome, the 8- and 9-day-old jobs are outside.
    assert item_a["success_rate_7d"] == 0.25
    assert item_a["health"] == health_a
    assert item_a["open_alerts"] == {"critical": 0, "warning": 2}

    item_b = items[b]
    assert item_b["label"] == names[b]
    assert item_b["counts"] == {"finished": 2}
    assert item_b["total"] == 2
    assert item_b["last_success_at"] == iso(times["last_ok_b"])
    assert item_b["hours_since_success"] == 2.0
    assert item_b["success_rate_7d"] == 1.0
    assert item_b["health"] == health_b

    # A customer without any job is shown, empty, when no filter selects jobs.
    assert items[c] == {
        "key": c,
        "label": names[c],
        "counts": {},
        "total": 0,
        "last_success_at": None,
        "hours_since_success": None,
        "success_rate_7d": None,
        "health": health_c,
        "open_alerts": {"critical": 0, "warning": 0},
        "freshness": {
            "customers": 1,
            "fresh": 1,
            "stale": 0,
            "refreshing": 0,
            "error": 0,
            "oldest_fetched_at": iso(now),
        },
    }
    assert body["freshness"] == {
        "customers": 3,
        "fresh": 3,
        "stale": 0,
        "refreshing": 0,
        "error": 0,
        "oldest_fetched_at": iso(now),
    }
    assert body["sources"] == []
    for item in body["items"]:
        assert item["freshness"]["fresh"] == 1
        assert item["freshness"]["oldest_fetched_at"] == iso(now)


async def test_hours_since_success_follow_the_clock(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a = customers[0]
    last_ok = clock.now - timedelta(hours=3, minutes=20)
    sim.put_job(a, "ok", status=FINISHED, start=last_ok, **EXCHANGE)
    first = by_key(await summary(api, customer_id=a, max_age=0))[a]
    assert first["hours_since_success"] == 3.3  # 3 h 20 min
    assert first["health"] == expected_health(last_ok, clock.now, 1, 1)
    clock.advance(25 * HOUR)  # 28 h 20 min: recency has started to fall
    later = by_key(await summary(api, customer_id=a))[a]
    assert later["hours_since_success"] == 28.3
    assert later["last_success_at"] == iso(last_ok)
    assert later["health"] == expected_health(last_ok, clock.now, 1, 1)
    assert later["health"] < first["health"]
    # Past 7 days the success no longer counts for the rate, but stays the last success.
    clock.advance(6 * 24 * HOUR)
    gone = by_key(await summary(api, customer_id=a))[a]
    assert gone["success_rate_7d"] is None
    assert gone["last_success_at"] == iso(last_ok)
    assert gone["hours_since_success"] == 172.3
    assert gone["health"] == expected_health(last_ok, clock.now, 0, 0) == 20


async def test_open_critical_alerts_lower_health_and_a_snoozed_alert_does_not_count(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a = customers[0]
    now = clock.now
    last_ok = now - timedelta(hours=1)
    sim.put_job(a, "ok", status=FINISHED, start=last_ok, **EXCHANGE)
    for n in range(3):  # critical
        sim.put_job(a, f"g{n}", status=FAILED, start=now - timedelta(hours=5 - n), **GROUPS)
    sim.put_job(a, "d0", status=FAILED, start=now - timedelta(hours=3), **ONEDRIVE)  # warning
    item = by_key(await summary(api, max_age=0))[a]
    assert item["success_rate_7d"] == 0.2
    assert item["open_alerts"] == {"critical": 1, "warning": 1}
    assert item["health"] == expected_health(last_ok, now, 1, 5, critical=1, warning=1) == 53

    # Snoozing the critical alert gives its 10 points back; the warning still costs 5.
    until = iso(now + timedelta(days=2))
    response = await api.post(
        f"/alerts/{a}:microsoft_365:microsoft_365_groups/snooze",
        json={"until": until, "reason": "tenant being migrated"},
    )
    assert response.status_code == 200, response.text
    item = by_key(await summary(api))[a]
    assert item["open_alerts"] == {"critical": 0, "warning": 1}
    assert item["health"] == expected_health(last_ok, now, 1, 5, warning=1) == 63

    # When the snooze runs out, it counts again.
    clock.advance(2 * 24 * HOUR + 60)
    item = by_key(await summary(api))[a]
    assert item["open_alerts"] == {"critical": 1, "warning": 1}
    assert item["health"] == expected_health(last_ok, clock.now, 1, 5, critical=1, warning=1)


async def test_alerts_take_the_health_down_to_zero_and_no_further(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a = customers[0]
    now = clock.now
    for kind in (EXCHANGE, GROUPS, ONEDRIVE):
        for n in range(3):
            sim.put_job(
                a,
                f"{kind['module']}-{n}",
                status=FAILED,
                start=now - timedelta(hours=4 - n),
                **kind,
            )
    item = by_key(await summary(api, max_age=0))[a]
    assert item["open_alerts"] == {"critical": 3, "warning": 0}
    assert item["success_rate_7d"] == 0.0
    assert item["health"] == 0


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (
            "status",
            {
                "canceled": ("Canceled", {"canceled": 1}, None, None),
                "failed": ("Failed", {"failed": 2}, None, 0.0),
                "failed_to_start": ("Failed to start", {"failed_to_start": 1}, None, 0.0),
                "finished": ("Finished", {"finished": 4}, "b-ok-2", 1.0),
                "finished_with_exception": (
                    "Finished with exception",
                    {"finished_with_exception": 1},
                    None,
                    0.0,
                ),
                "running": ("Running", {"running": 1}, None, None),
            },
        ),
        (
            "job_type",
            {
                "microsoft_365": (
                    "Microsoft 365",
                    {
                        "canceled": 1,
                        "failed": 2,
                        "failed_to_start": 1,
                        "finished": 4,
                        "finished_with_exception": 1,
                        "running": 1,
                    },
                    "b-ok-2",
                    0.5,  # a-ok, b-ok-1, b-ok-2 over those and three failures
                )
            },
        ),
        (
            "module",
            {
                "exchange_online": (
                    "Exchange Online",
                    {
                        "canceled": 1,
                        "failed": 2,
                        "finished": 3,
                        "finished_with_exception": 1,
                    },
                    "b-ok-1",
                    0.5,  # a-ok, b-ok-1 over those, a-fail and a-exc
                ),
                "microsoft_365_groups": (
                    "Microsoft 365 Groups",
                    {"failed_to_start": 1, "finished": 1, "running": 1},
                    "b-ok-2",
                    0.5,
                ),
            },
        ),
    ],
)
async def test_grouped_by_status_job_type_and_module_with_catalog_labels(
    api: httpx.AsyncClient,
    sim: Simulator,
    clock: FakeClock,
    customers: list[str],
    group_by: str,
    expected: dict[str, tuple[str, dict[str, int], str | None, float | None]],
) -> None:
    now = clock.now
    script_morning(sim, customers, now)
    starts = {"b-ok-1": now - timedelta(hours=26), "b-ok-2": now - timedelta(hours=2)}
    body = await summary(api, group_by=group_by, max_age=0)
    assert body["group_by"] == group_by
    assert [i["key"] for i in body["items"]] == sorted(expected)
    for item in body["items"]:
        label, counts, last_ok, rate = expected[item["key"]]
        assert item["label"] == label
        assert item["counts"] == counts
        assert item["total"] == sum(counts.values())
        assert item["last_success_at"] == (iso(starts[last_ok]) if last_ok else None)
        if last_ok:
            hours = round((now - starts[last_ok]).total_seconds() / 3600, 1)
            assert item["hours_since_success"] == hours
        else:
            assert item["hours_since_success"] is None
        assert item["success_rate_7d"] == rate
        # Health, alerts and freshness are a customer's, not a group's.
        assert item.get("health") is None
        assert item.get("freshness") is None
    assert body["freshness"]["customers"] == 3


async def test_the_jobs_filters_narrow_the_summary(
    api: httpx.AsyncClient,
    sim: Simulator,
    clock: FakeClock,
    customers: list[str],
    names: dict[str, str],
) -> None:
    a, b, c = customers
    now = clock.now
    sim.put_job(b, "b-fail", status=FAILED, start=now - timedelta(hours=30), **EXCHANGE)
    times = script_morning(sim, customers, now)
    await summary(api, max_age=0)

    # Only failed jobs: the customers without one are left out.
    failed = await summary(api, status="failed")
    items = by_key(failed)
    assert set(items) == {a, b}
    assert [i["key"] for i in failed["items"]] == sorted(
        items, key=lambda k: (items[k]["health"], k)
    )
    assert items[a]["counts"] == {"failed": 2}
    assert items[b]["counts"] == {"failed": 1}
    assert items[a]["last_success_at"] is None
    assert items[a]["success_rate_7d"] == 0.0
    assert failed["freshness"]["customers"] == 3

    # Two statuses, comma-separated.
    both = by_key(await summary(api, status="failed,finished"))
    assert both[a]["counts"] == {"failed": 2, "finished": 2}
    assert both[b]["counts"] == {"failed": 1, "finished": 2}

    # One customer: only it, also when it has no job.
    one = await summary(api, customer_id=b)
    assert [i["key"] for i in one["items"]] == [b]
    assert one["items"][0]["label"] == names[b]
    assert one["freshness"]["customers"] == 1
    empty = await summary(api, customer_id=c)
    assert [(i["key"], i["total"], i["counts"]) for i in empty["items"]] == [(c, 0, {})]

    # Jobs that started after a time: the older success and failures drop out.
    after = iso(now - timedelta(hours=12))
    recent = by_key(await summary(api, start_after=after))
    assert set(recent) == {a, b}, "a filter that selects jobs leaves out a customer without any"
    assert recent[a]["counts"] == {
        "canceled": 1,
        "failed_to_start": 1,
        "finished_with_exception": 1,
        "running": 1,
    }
    assert recent[a]["last_success_at"] is None
    assert recent[a]["success_rate_7d"] == 0.0
    assert recent[b]["counts"] == {"finished": 1}
    assert recent[b]["last_success_at"] == iso(times["last_ok_b"])

    # Filters and group_by together.
    by_status = by_key(
        await summary(api, group_by="status", customer_id=a, module="exchange_online")
    )
    assert {k: v["total"] for k, v in by_status.items()} == {
        "canceled": 1,
        "failed": 2,
        "finished": 2,
        "finished_with_exception": 1,
    }


async def test_a_failing_customer_is_served_stale_and_said_so(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a, b, _ = customers
    fetched = clock.now
    script_morning(sim, customers, clock.now)
    await summary(api, max_age=0)
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({b}))
    clock.advance(120)
    body = await summary(api, max_age=0)
    items = by_key(body)
    # Its last good jobs stay in the summary.
    assert items[b]["counts"] == {"finished": 2}
    assert items[b]["freshness"]["stale"] == 1
    assert items[b]["freshness"]["fresh"] == 0
    assert items[b]["freshness"]["oldest_fetched_at"] == iso(fetched)
    assert items[a]["freshness"]["fresh"] == 1
    assert items[a]["freshness"]["oldest_fetched_at"] == iso(clock.now)
    assert body["freshness"]["stale"] == 1
    assert body["freshness"]["fresh"] == 2
    assert body["freshness"]["oldest_fetched_at"] == iso(fetched)
    [source] = body["sources"]
    assert source["customer_id"] == b
    assert source["state"] == "stale"
    assert source["error"]["upstream_status"] == 500


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"group_by": "tenant"}, "group_by"),
        ({"group_by": ""}, "group_by"),
        ({"status": "broken"}, "status"),
        ({"module": "floppy"}, "module"),
        ({"customer_id": "nobody"}, "customer_id"),
        ({"start_after": "yesterday"}, "start_after"),
    ],
)
async def test_bad_parameters_are_422_naming_the_parameter(
    api: httpx.AsyncClient, params: dict[str, str], names: str
) -> None:
    response = await api.get("/summary", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "invalid_parameter"
    assert names in body["detail"]


async def test_a_bad_status_lists_the_allowed_names(api: httpx.AsyncClient) -> None:
    response = await api.get("/summary", params={"status": "broken"})
    assert response.status_code == 422
    assert "finished_with_exception" in response.json()["detail"]


async def test_401_without_a_valid_key(api: httpx.AsyncClient) -> None:
    for key in ("", "nope"):
        response = await api.get("/summary", headers={"X-API-Key": key})
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


async def test_etag_and_304_and_a_repeated_summary_asks_nothing_of_the_database(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    script_morning(sim, customers, clock.now)
    first = await api.get("/summary", params={"max_age": 0})
    assert first.status_code == 200
    etag = first.headers["etag"]
    with counting_queries(api) as statements:
        again = await api.get("/summary")
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["etag"] == etag
        assert statements == [], "a repeated summary is answered from memory"
        revalidated = await api.get("/summary", headers={"If-None-Match": etag})
        assert revalidated.status_code == 304
        assert revalidated.content == b""
        assert revalidated.headers["etag"] == etag
        assert statements == [], "a 304 needs no query"
    # Another grouping is another answer.
    other = await api.get("/summary", params={"group_by": "status"})
    assert other.headers["etag"] != etag
    # Once the data moves, the tag moves and the old one no longer matches.
    sim.put_job(customers[1], "b-fail", status=FAILED, start=clock.now, **EXCHANGE)
    clock.advance(61)
    moved = await api.get("/summary", headers={"If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.headers["etag"] != etag
    assert by_key(moved.json())[customers[1]]["counts"] == {"failed": 1, "finished": 2}


async def test_a_snooze_moves_the_cached_summary(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a = customers[0]
    sim.put_job(a, "f", status=FAILED, start=clock.now - timedelta(hours=1), **EXCHANGE)
    first = await api.get("/summary", params={"max_age": 0})
    assert by_key(first.json())[a]["open_alerts"] == {"critical": 0, "warning": 1}
    response = await api.post(
        f"/alerts/{a}:microsoft_365:exchange_online/snooze",
        json={"until": iso(clock.now + timedelta(hours=4))},
    )
    assert response.status_code == 200, response.text
    revalidated = await api.get("/summary", headers={"If-None-Match": first.headers["etag"]})
    assert revalidated.status_code == 200, "a snooze changes the answer"
    assert by_key(revalidated.json())[a]["open_alerts"] == {"critical": 0, "warning": 0}
    assert by_key(revalidated.json())[a]["health"] == by_key(first.json())[a]["health"] + 5


async def test_codes_the_catalog_does_not_know_are_grouped_as_unknown_without_a_label(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    a = customers[0]
    sim.put_job(a, "odd", status=99, start=clock.now - timedelta(hours=1), job_type=7, module=999)
    sim.put_job(a, "ok", status=FINISHED, start=clock.now - timedelta(hours=2), **EXCHANGE)
    statuses = by_key(await summary(api, group_by="status", max_age=0))
    assert statuses["unknown"]["label"] is None
    assert statuses["unknown"]["counts"] == {"unknown": 1}
    assert statuses["unknown"]["success_rate_7d"] is None  # not a finished job
    modules = by_key(await summary(api, group_by="module"))
    assert modules["unknown"]["label"] is None
    assert modules["unknown"]["total"] == 1
    assert modules["exchange_online"]["label"] == "Exchange Online"
    customer = by_key(await summary(api))[a]
    assert customer["counts"] == {"finished": 1, "unknown": 1}
    assert customer["success_rate_7d"] == 1.0


async def test_an_unchanged_summary_a_minute_later_still_gets_304(
    gateway: Gateway, sim: Simulator, clock: FakeClock, customers: list[str]
) -> None:
    sim.put_job(customers[0], "ok", status=FINISHED, start=clock.now - timedelta(hours=2))
    async with gateway(cache_ttl_seconds=3600, overdue_hours=0) as api:
        first = await api.get("/summary", params={"max_age": 0})
        assert first.status_code == 200
        clock.advance(61)  # inside the TTL, and 2.0 hours since the success either way
        again = await api.get("/summary")
        assert again.status_code == 200
        assert again.content == first.content, "the answer is unchanged"
        revalidated = await api.get("/summary", headers={"If-None-Match": first.headers["etag"]})
        assert revalidated.status_code == 304
