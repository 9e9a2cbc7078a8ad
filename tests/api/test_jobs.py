"""GET /jobs as its users rely on it: every filter, sort and page against the simulator's data."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app import catalog
from app.api import schemas
from app.normalize import normalize_row
from app.simulator import Simulator
from tests.api.conftest import Gateway
from tests.clock import FakeClock


def upstream_jobs(sim: Simulator) -> list[dict[str, Any]]:
    """Every job the simulator holds now, normalized the way the gateway should serve it."""
    out = []
    for cid in sim.customer_ids():
        for row in sim.jobs(cid):
            job = normalize_row(cid, row)
            if job is not None:
                out.append(
                    {
                        "id": f"{cid}:{job.job_id}",
                        "status": job.status,
                        "job_type": job.job_type,
                        "module": job.module,
                        "customer_id": cid,
                        "start_time": job.start_time,
                        "last_modified": job.last_modified,
                        "duration": job.duration_seconds,
                        "name": job.name,
                    }
                )
    return out


async def all_items(api: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of a listing, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = await api.get("/jobs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the cursor never ended")


def fresh_summary(customers: int, fetched_at: datetime) -> dict[str, Any]:
    """`freshness` of an answer whose customers are all fresh, fetched at `fetched_at`."""
    return {
        "customers": customers,
        "fresh": customers,
        "stale": 0,
        "refreshing": 0,
        "error": 0,
        "oldest_fetched_at": fetched_at.isoformat().replace("+00:00", "Z"),
    }


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def test_failed_jobs_across_all_customers_match_the_upstream(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    response = await api.get("/jobs", params={"status": "failed", "limit": 500})
    assert response.status_code == 200
    body = response.json()
    expected = {j["id"] for j in upstream_jobs(sim) if j["status"] == "failed"}
    assert expected, "the simulator should hold failed jobs"
    assert {item["id"] for item in body["items"]} == expected
    # Every customer was covered and is fresh: nothing to list in `sources`.
    assert body["freshness"] == fresh_summary(len(sim.customer_ids()), clock.now)
    assert body["sources"] == []
    item = body["items"][0]
    assert item["status"] == "failed" and item["status_code"] == 3
    assert set(item) >= {
        "id",
        "customer_id",
        "customer_name",
        "job_id",
        "name",
        "job_type",
        "job_type_code",
        "module",
        "module_code",
        "status",
        "status_code",
        "counts",
        "backup_size_bytes",
        "start_time",
        "end_time",
        "duration_seconds",
        "last_modified",
        "fetched_at",
    }
    assert set(item["counts"]) == {"total", "failed", "successful", "skipped", "warning"}
    # What is served is exactly what the OpenAPI document promises.
    assert schemas.JobPage.model_validate(body).model_dump(mode="json") == body
    assert item["customer_name"], "names come from the customer listing"
    assert item["fetched_at"].endswith("Z") and len(item["fetched_at"]) == 20


async def test_the_placeholder_row_is_never_served(api: httpx.AsyncClient) -> None:
    items = await all_items(api, {"limit": 500})
    assert all(i["job_id"] != "N/A" for i in items)


@pytest.mark.parametrize(
    "params",
    [
        {"status": "finished"},
        {"status": ["failed", "finished_with_exception"]},
        {"status": "failed,running"},
        {"job_type": "microsoft_365"},
        {"module": "exchange_online,sharepoint_online"},
        {"status": "finished", "job_type": "microsoft_365", "module": "onedrive"},
    ],
)
async def test_enum_filters_and_their_combinations(
    api: httpx.AsyncClient, sim: Simulator, params: dict[str, Any]
) -> None:
    def wanted(key: str) -> set[str] | None:
        raw = params.get(key)
        if raw is None:
            return None
        values = raw if isinstance(raw, list) else [raw]
        return {v for value in values for v in value.split(",")}

    filters = {key: wanted(key) for key in ("status", "job_type", "module")}
    expected = {
        j["id"]
        for j in upstream_jobs(sim)
        if all(allowed is None or j[key] in allowed for key, allowed in filters.items())
    }
    items = await all_items(api, {**params, "limit": 500})
    assert {i["id"] for i in items} == expected
    assert expected, f"the simulator's data should cover {params}"


async def test_customer_filter_covers_only_that_customer(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    first, second = sim.customer_ids()[:2]
    body = (await api.get("/jobs", params={"customer_id": first, "limit": 500})).json()
    assert {i["customer_id"] for i in body["items"]} == {first}
    assert body["freshness"]["customers"] == 1
    assert body["freshness"]["fresh"] == 1
    assert body["sources"] == []
    assert set(sim.stats.walks) == {first}, "only the customer asked for is refreshed"
    both = await all_items(api, {"customer_id": [first, second], "limit": 100})
    assert {i["customer_id"] for i in both} == {first, second}
    body = (await api.get("/jobs", params={"customer_id": f"{first},{second}"})).json()
    assert body["freshness"]["customers"] == body["freshness"]["fresh"] == 2


async def test_time_filters(api: httpx.AsyncClient, sim: Simulator, clock: FakeClock) -> None:
    jobs = upstream_jobs(sim)
    after = clock.now - timedelta(days=2)
    before = clock.now - timedelta(days=1)
    items = await all_items(
        api,
        {
            "start_after": after.isoformat().replace("+00:00", "Z"),
            "start_before": before.isoformat(),
            "limit": 500,
        },
    )
    expected = {j["id"] for j in jobs if j["start_time"] and after <= j["start_time"] < before}
    assert expected
    assert {i["id"] for i in items} == expected
    since = clock.now - timedelta(hours=12)
    items = await all_items(api, {"modified_since": since.isoformat(), "limit": 500})
    assert {i["id"] for i in items} == {
        j["id"] for j in jobs if j["last_modified"] and j["last_modified"] >= since
    }


async def test_name_search(api: httpx.AsyncClient, sim: Simulator) -> None:
    named = [j for j in upstream_jobs(sim) if j["name"]]
    assert named, "the simulator names some jobs"
    word = named[0]["name"].split()[0]
    items = await all_items(api, {"q": word.upper(), "limit": 500})
    assert {i["id"] for i in items} == {j["id"] for j in named if word.lower() in j["name"].lower()}


@pytest.mark.parametrize(
    ("sort", "field"),
    [
        ("-start_time", "start_time"),
        ("start_time", "start_time"),
        ("last_modified", "last_modified"),
        ("-last_modified", "last_modified"),
        ("duration", "duration_seconds"),
        ("-duration", "duration_seconds"),
    ],
)
async def test_sorting_and_cursor_pagination_walk_every_job_once(
    api: httpx.AsyncClient, sim: Simulator, sort: str, field: str
) -> None:
    items = await all_items(api, {"sort": sort, "limit": 37})
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids))
    assert set(ids) == {j["id"] for j in upstream_jobs(sim)}
    values = [i[field] for i in items if i[field] is not None]
    descending = sort.startswith("-")
    assert values == sorted(values, reverse=descending)


async def test_default_sort_is_newest_start_first(api: httpx.AsyncClient) -> None:
    items = (await api.get("/jobs", params={"limit": 50})).json()["items"]
    starts = [ts(i["start_time"]) for i in items]
    assert starts == sorted(
        starts, key=lambda t: t or datetime.min.replace(tzinfo=UTC), reverse=True
    )
    assert len(items) == 50


async def test_cursor_stays_stable_while_a_refresh_writes(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    first = (await api.get("/jobs", params={"limit": 25})).json()
    seen = [i["id"] for i in first["items"]]
    before = {j["id"] for j in upstream_jobs(sim)}
    # Time passes: new runs start and running ones finish; a forced refresh writes them.
    clock.advance(6 * 3600)
    refreshed = (await api.get("/jobs", params={"limit": 1, "max_age": 0})).json()
    assert refreshed["freshness"] == fresh_summary(len(sim.customer_ids()), clock.now)
    assert refreshed["sources"] == []
    cursor = first["next_cursor"]
    while cursor:
        page = (await api.get("/jobs", params={"limit": 25, "cursor": cursor})).json()
        seen.extend(i["id"] for i in page["items"])
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "no job is served twice"
    # Every job that existed when the walk began is served (older ones are behind the cursor).
    assert before <= set(seen)


async def test_limit_and_last_page(api: httpx.AsyncClient, sim: Simulator) -> None:
    one = {"customer_id": sim.customer_ids()[0]}
    total = len(await all_items(api, {**one, "limit": 500}))
    assert 1 < total < 500
    body = (await api.get("/jobs", params={**one, "limit": total})).json()
    assert len(body["items"]) == total
    assert body["next_cursor"] is None
    body = (await api.get("/jobs", params={**one, "limit": total - 1})).json()
    assert len(body["items"]) == total - 1
    assert body["next_cursor"] is not None


async def test_unknown_codes_are_served_as_unknown(gateway: Gateway, sim: Simulator) -> None:
    cid = sim.customer_ids()[0]
    real_rows = sim.rows

    def rows(customer_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        out = [dict(r) for r in real_rows(customer_id, now)]
        if customer_id == cid:
            out.append(
                {
                    "jobId": "ODD1",
                    "jobType": 99,
                    "jobModule": 999,
                    "status": 77,
                    "name": "o\x00dd",
                    "totalCount": "N/A",
                    "jobDuration": "weird",
                    "backupSize": "lots",
                    "startTime": "03-14-2026T12:00:00Z",
                    "lastModifyTime": "garbage",
                }
            )
        return out

    sim.rows = rows  # type: ignore[method-assign]
    async with gateway() as api:
        body = (await api.get("/jobs", params={"status": "unknown"})).json()
        [item] = body["items"]
        assert item["job_id"] == "ODD1"
        assert (item["status"], item["status_code"]) == ("unknown", 77)
        assert item["name"] == "odd", "a NUL character is dropped, not stored"
        assert (item["job_type"], item["job_type_code"]) == ("unknown", 99)
        assert (item["module"], item["module_code"]) == ("unknown", 999)
        assert item["counts"]["total"] is None
        assert item["duration_seconds"] is None and item["backup_size_bytes"] is None
        assert item["start_time"] == "2026-03-14T12:00:00Z"
        assert item["last_modified"] is None


async def test_one_job_with_history(
    api: httpx.AsyncClient, sim: Simulator, clock: FakeClock
) -> None:
    running = (await api.get("/jobs", params={"status": "running", "limit": 1})).json()["items"]
    assert running, "the simulator has a running job now"
    job = running[0]
    path = f"/jobs/{job['customer_id']}/{job['job_id']}"
    detail = (await api.get(path)).json()
    assert schemas.JobDetail.model_validate(detail).model_dump(mode="json") == detail
    assert detail["id"] == job["id"]
    assert [h["status"] for h in detail["history"]] == ["running"]
    assert detail["source"]["customer_id"] == job["customer_id"]
    clock.advance(24 * 3600)
    later = (await api.get(path, params={"max_age": 0})).json()
    assert later["status"] != "running"
    assert [h["status"] for h in later["history"]] == ["running", later["status"]]
    assert later["history"][1]["previous_status"] == "running"


async def test_enums_list_every_catalog(api: httpx.AsyncClient) -> None:
    body = (await api.get("/enums")).json()
    assert {"code": 3, "name": "failed", "label": "Failed"} in body["status"]
    assert len(body["status"]) == len(catalog.STATUS.entries)
    assert len(body["job_type"]) == len(catalog.JOB_TYPE.entries)
    assert len(body["module"]) == len(catalog.MODULE.entries)


async def test_concurrent_requests_share_one_walk_per_customer(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    responses = await asyncio.gather(*(api.get("/jobs", params={"limit": 5}) for _ in range(20)))
    assert all(r.status_code == 200 for r in responses)
    assert sim.stats.walks == {cid: 1 for cid in sim.customer_ids()}


def test_times_are_utc_to_the_second_with_a_four_digit_year() -> None:
    from app.clock import iso

    assert iso(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    assert iso(datetime(2025, 9, 11, 5, 21, 16, 999_999, tzinfo=UTC)) == "2025-09-11T05:21:16Z"
    plus_two = datetime(2025, 9, 11, 5, 21, 16, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert iso(plus_two) == "2025-09-11T05:21:16Z"
