"""The board as a person's browser meets it, over HTTP in process: signing in with a key of
either kind, the session cookie, CSRF tokens, a key's scope on every page and action, a
revoked key, DEMO opening signed in, filters in the URL, and the live part's polls.

Every test runs on SQLite and on PostgreSQL. What only a real browser shows (scripts,
swaps, the CSP enforced, no request leaving the origin) is in tests/browser.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.access import keys
from app.board.sessions import COOKIE
from app.simulator import Simulator, SimulatorConfig
from app.store import keys as stored_keys
from app.store import tickets
from tests.api.conftest import API_KEY, Gateway, services_of
from tests.clock import FakeClock

FINISHED, FAILED = 2, 3


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=11, customers=3, jobs_per_customer=5), clock=clock)


@asynccontextmanager
async def browser(gateway: Gateway, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no key of its own: it has only what the board's cookie gives it."""
    async with gateway(**settings) as api:
        await api.get("/jobs", params={"max_age": 0})  # every customer stored once
        api.headers.pop("X-API-Key")
        yield api


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, key: str, next_page: str = "/board") -> httpx.Response:
    page = await client.get("/board/login", params={"next": next_page})
    assert page.status_code == 200
    return await client.post(
        "/board/login", data={"key": key, "csrf": csrf_of(page.text), "next": next_page}
    )


def customers_listed(html: str) -> list[str]:
    return re.findall(r'<tr data-customer-id="([^"]+)"', html)


async def make_key(client: httpx.AsyncClient, name: str, customers: list[str] | None) -> str:
    svc = services_of(client)
    key = await keys.create_key(
        svc.writer, name, customers=customers, rate_per_minute=None, now=svc.clock()
    )
    await svc.keys.reload(svc.sessions)
    return key


def cookie_payload(client: httpx.AsyncClient) -> dict[str, Any]:
    value = client.cookies[COOKIE]
    body = value.split(".")[0]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


# -- signing in and out -------------------------------------------------------------------------


async def test_without_a_session_the_board_sends_the_browser_to_sign_in(gateway: Gateway) -> None:
    async with browser(gateway) as client:
        root = await client.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/board")
        for path in ("/board", "/board/alerts", "/board/customers/x", "/board/jobs/x/y"):
            response = await client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/board/login?next=")
        poll = await client.get("/board", headers={"HX-Request": "true"})
        assert poll.status_code == 204
        assert poll.headers["HX-Redirect"].startswith("/board/login")


async def test_signing_in_with_an_env_key_sets_a_signed_cookie_without_the_key(
    gateway: Gateway, sim: Simulator
) -> None:
    async with browser(gateway) as client:
        response = await sign_in(client, API_KEY, "/board/alerts?severity=critical")
        assert response.status_code == 303
        assert response.headers["location"] == "/board/alerts?severity=critical"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/board" in cookie
        assert "Max-Age=43200" in cookie  # BOARD_SESSION_HOURS, 12 by default
        assert "Secure" not in cookie  # plain http here; https below
        assert API_KEY not in cookie
        assert API_KEY not in json.dumps(cookie_payload(client))
        page = await client.get("/board")
        assert page.status_code == 200
        assert sorted(customers_listed(page.text)) == sorted(sim.customer_ids())
        assert "a key of API_KEYS" in page.text


async def test_a_wrong_key_or_a_missing_token_signs_nobody_in(gateway: Gateway) -> None:
    async with browser(gateway) as client:
        wrong = await sign_in(client, "not-the-key")
        assert wrong.status_code == 401
        assert "That key is not valid" in wrong.text
        assert "not-the-key" not in wrong.text
        assert (await client.get("/board")).status_code == 303
        tokenless = await client.post("/board/login", data={"key": API_KEY})
        assert tokenless.status_code == 403
        assert (await client.get("/board")).status_code == 303


async def test_signing_out_ends_the_session_and_needs_its_token(gateway: Gateway) -> None:
    async with browser(gateway) as client:
        await sign_in(client, API_KEY)
        page = await client.get("/board")
        refused = await client.post("/board/logout", data={})
        assert refused.status_code == 403
        assert (await client.get("/board")).status_code == 200
        out = await client.post("/board/logout", data={"csrf": csrf_of(page.text)})
        assert (out.status_code, out.headers["location"]) == (303, "/board/login")
        assert (await client.get("/board")).status_code == 303


async def test_a_session_lasts_board_session_hours(gateway: Gateway, clock: FakeClock) -> None:
    async with browser(gateway, board_session_hours=2) as client:
        response = await sign_in(client, API_KEY)
        assert "Max-Age=7200" in response.headers["set-cookie"]
        clock.advance(2 * 3600 - 60)
        assert (await client.get("/board")).status_code == 200
        clock.advance(120)
        assert (await client.get("/board")).status_code == 303


async def test_the_cookie_is_secure_over_https(gateway: Gateway) -> None:
    async with browser(gateway) as client:
        client.base_url = httpx.URL("https://gateway.test")
        response = await sign_in(client, API_KEY)
        assert "Secure" in response.headers["set-cookie"]


async def test_a_session_of_another_secret_is_refused(gateway: Gateway) -> None:
    async with browser(gateway, board_secret="one-secret") as client:
        await sign_in(client, API_KEY)
        assert (await client.get("/board")).status_code == 200
        cookie = client.cookies[COOKIE]
    async with browser(gateway, board_secret="another-secret") as client:
        client.cookies.set(COOKIE, cookie, path="/board")
        assert (await client.get("/board")).status_code == 303


# -- scope and revocation ---------------------------------------------------------------------


async def test_a_scoped_key_sees_its_customer_alone_on_every_page(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    mine, other, _ = sim.customer_ids()
    sim.put_job(mine, "mine-failed", status=FAILED, start=clock.now)
    sim.put_job(other, "other-failed", status=FAILED, start=clock.now)
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        key = await make_key(client, "front-desk", [mine])
        assert (await sign_in(client, key)).status_code == 303
        secret = key.split("_", 2)[2]  # jgw_<key id>_<secret>; the secret may hold "_" too
        assert secret not in json.dumps(cookie_payload(client))
        overview = await client.get("/board")
        assert customers_listed(overview.text) == [mine]
        assert other not in overview.text
        alerts = await client.get("/board/alerts")
        assert f'data-customer-id="{mine}"' in alerts.text
        assert other not in alerts.text
        assert (await client.get(f"/board/customers/{mine}")).status_code == 200
        assert (await client.get(f"/board/customers/{other}")).status_code == 404
        assert (await client.get(f"/board/jobs/{other}/other-failed")).status_code == 404
        assert (await client.get(f"/board/jobs/{mine}/mine-failed")).status_code == 200
        named = await client.get("/board", params={"customer": other})
        assert named.status_code == 422
        snooze = await client.post(
            f"/board/alerts/{other}:microsoft_365:microsoft_365_groups/snooze",
            data={"csrf": csrf_of(overview.text), "hours": "24"},
        )
        assert snooze.status_code == 404


async def test_a_revoked_key_ends_its_sessions(gateway: Gateway, sim: Simulator) -> None:
    async with browser(gateway) as client:
        key = await make_key(client, "night-shift", None)
        await sign_in(client, key)
        assert (await client.get("/board")).status_code == 200
        svc = services_of(client)
        assert await stored_keys.revoke(svc.writer, "night-shift", now=svc.clock())
        await svc.keys.reload(svc.sessions)  # what every server does every 2 s
        assert (await client.get("/board")).status_code == 303


# -- pages --------------------------------------------------------------------------------------


async def test_board_pages_carry_a_policy_of_their_own_origin_and_no_inline_code(
    gateway: Gateway, sim: Simulator
) -> None:
    cid = sim.customer_ids()[0]
    async with browser(gateway) as client:
        await sign_in(client, API_KEY)
        jobs = await client.get(
            "/jobs", params={"customer_id": cid}, headers={"X-API-Key": API_KEY}
        )
        job_id = jobs.json()["items"][0]["job_id"]
        for path in (
            "/board",
            "/board/alerts",
            f"/board/customers/{cid}",
            f"/board/jobs/{cid}/{job_id}",
            "/board/login",
        ):
            response = await client.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "script-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert response.headers["cache-control"] == "no-store"
            assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None, path
            assert " style=" not in response.text, path
            assert "http://" not in response.text and "https://" not in response.text, path
        htmx = await client.get("/board/static/htmx.min.js")
        assert htmx.status_code == 200 and 'version:"2.0.11"' in htmx.text


async def test_the_overview_lists_every_customer_worst_first_with_hooks(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    worst = sim.customer_ids()[2]
    for n in range(3):  # the third failure in a row makes the alert critical
        sim.put_job(worst, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        page = await client.get("/board")
        listed = customers_listed(page.text)
        assert sorted(listed) == sorted(sim.customer_ids())
        assert listed[0] == worst
        assert re.search(rf'data-customer-id="{worst}" data-state="failing"', page.text)
        assert re.search(r'data-as-of="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', page.text)
        assert "✖ failing" in page.text  # a word and a symbol, never colour alone


async def test_filters_live_in_the_url_and_bad_ones_are_a_clear_422(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    failing = sim.customer_ids()[1]
    for n in range(3):
        sim.put_job(failing, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        only = await client.get("/board", params={"state": "failing"})
        assert failing in customers_listed(only.text)
        assert all(
            s == "failing"
            for s in re.findall(r'data-customer-id="[^"]+" data-state="(\w+)"', only.text)
        )
        assert '<option value="failing" selected>' in only.text
        name = services_of(client).refresher.name_of(failing) or ""
        searched = await client.get("/board", params={"q": name[:5].lower()})
        assert failing in customers_listed(searched.text)
        critical = await client.get("/board/alerts", params={"severity": "critical"})
        assert f'data-customer-id="{failing}"' in critical.text
        for params in ({"state": "purple"}, {"severity": "loud"}, {"job_type": "floppy"}):
            bad = await client.get("/board", params=params)
            assert bad.status_code == 422, params
            assert "text/html" in bad.headers["content-type"]
            assert next(iter(params)) in bad.text


async def test_snoozing_from_the_page_needs_the_forms_token(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    cid = sim.customer_ids()[0]
    key = f"{cid}:microsoft_365:microsoft_365_groups"  # put_job's job type and module
    sim.put_job(cid, "fail-1", status=FAILED, start=clock.now)
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        page = await client.get("/board/alerts")
        assert f'data-key="{key}"' in page.text
        action = f"/board/alerts/{key}/snooze"
        forged = await client.post(action, data={"hours": "24"})
        assert forged.status_code == 403
        stolen = await client.post(action, data={"hours": "24", "csrf": "0" * 64})
        assert stolen.status_code == 403
        alerts = await client.get(
            "/alerts", params={"state": "open"}, headers={"X-API-Key": API_KEY}
        )
        [alert] = [a for a in alerts.json()["items"] if a["alert_key"] == key]
        assert alert["snoozed_until"] is None
        done = await client.post(
            action,
            data={
                "hours": "4",
                "reason": "vendor outage",
                "csrf": csrf_of(page.text),
                "back": "/board/alerts?severity=warning",
            },
        )
        assert (done.status_code, done.headers["location"]) == (
            303,
            "/board/alerts?severity=warning",
        )
        alerts = await client.get(
            "/alerts", params={"state": "open"}, headers={"X-API-Key": API_KEY}
        )
        [alert] = [a for a in alerts.json()["items"] if a["alert_key"] == key]
        assert alert["snoozed_until"] == (clock.now + timedelta(hours=4)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        after = await client.get("/board/alerts")
        assert "snoozed until" in after.text and "vendor outage" in after.text
        away = await client.post(
            action, data={"hours": "4", "csrf": csrf_of(page.text), "back": "https://evil.test/"}
        )
        assert away.headers["location"] == "/board"


async def test_a_job_page_shows_its_status_history(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    cid = sim.customer_ids()[0]
    sim.put_job(cid, "nightly", status=1, start=clock.now)
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        sim.put_job(cid, "nightly", status=FAILED, start=clock.now)
        clock.advance(600)
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        page = await client.get(f"/board/jobs/{cid}/nightly")
        assert page.status_code == 200
        assert 'data-job-id="nightly"' in page.text
        assert re.findall(r'<tr data-status="(\w+)">', page.text) == ["running", "failed"]
        assert (await client.get(f"/board/jobs/{cid}/no-such-job")).status_code == 404


async def test_the_live_part_answers_a_poll_with_204_until_something_changes(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    cid = sim.customer_ids()[0]
    async with browser(gateway) as client:
        await sign_in(client, API_KEY)
        page = await client.get("/board")
        poll = re.search(r'hx-get="([^"]+)"', page.text)
        assert poll
        url = poll.group(1).replace("&amp;", "&")
        same = await client.get(url, headers={"HX-Request": "true"})
        assert same.status_code == 204
        sim.put_job(cid, "new-failure", status=FAILED, start=clock.now)
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        changed = await client.get(url, headers={"HX-Request": "true"})
        assert changed.status_code == 200
        assert changed.text.lstrip().startswith('<div id="live"')
        assert "<html" not in changed.text
        assert re.search(rf'data-customer-id="{cid}" data-state="warning"', changed.text)


async def test_demo_opens_signed_in_and_says_so(gateway: Gateway) -> None:
    async with browser(gateway, demo=True) as client:
        page = await client.get("/board")
        assert page.status_code == 200
        assert "DEMO" in page.text and "opens signed in" in page.text
        assert "Max-Age=43200" in page.headers["set-cookie"]
        # Its session has a token like any other: a form without it is refused.
        again = await client.get("/board/alerts")
        assert csrf_of(again.text) == csrf_of(page.text)
        assert (await client.post("/board/logout", data={})).status_code == 403


# -- the grid ----------------------------------------------------------------------------------


def grid_rows(html: str) -> list[tuple[str, str]]:
    """(data-key, data-customer-id) of each row of a grid page."""
    return re.findall(r'<tr data-key="([^"]+)" data-customer-id="([^"]+)"', html)


def cells_of(html: str, key: str) -> list[tuple[str, str]]:
    """(data-date, data-result) of one object's cells, in the page's order."""
    row = html.split(f'<tr data-key="{key}"', 1)[1].split("</tr>", 1)[0]
    return re.findall(r'data-date="([^"]+)" data-result="([^"]+)"', row)


async def test_the_grid_shows_the_kept_grid_answer_with_a_cell_per_day(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    failing = sim.customer_ids()[0]
    for n in range(3):
        sim.put_job(failing, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        api = await client.get("/grid", headers={"X-API-Key": API_KEY})
        grid = api.json()
        page = await client.get("/board/grid", params={"show": "all"})
        assert page.status_code == 200
        assert 'href="/board/grid" aria-current="page"' in page.text  # in the nav
        rows = grid_rows(page.text)
        assert [k for k, _ in rows] == [i["key"] for i in grid["items"]]
        item = next(
            i
            for i in grid["items"]
            if i["customer_id"] == failing and i["cells"][-1]["result"] == "failure"
        )
        cells = cells_of(page.text, item["key"])
        assert [d for d, _ in cells] == grid["days"] and len(cells) == 14
        assert cells == [(c["date"], c["result"]) for c in item["cells"]]
        assert grid["days"] == sorted(grid["days"])  # oldest first, today last
        today = grid["days"][-1]
        assert cells[-1] == (today, "failure")
        kind = f"job_type={item['job_type']}&amp;module={item['module']}"
        link = f"/board/customers/{failing}?{kind}&amp;day={today}"
        assert link in page.text
        for symbol, word in (("✓", "success"), ("✖", "failure"), ("∅", "no result")):
            assert f"{symbol}</span> {word}" in page.text  # the legend: never colour alone
        day = await client.get(link.replace("&amp;", "&"))
        assert day.status_code == 200
        assert f"Jobs started on {today}" in day.text and 'data-job-id="fail-2"' in day.text


async def test_the_grid_shows_objects_not_ok_by_default_and_takes_the_filters_of_objects(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    failing = sim.customer_ids()[0]
    for n in range(3):
        sim.put_job(failing, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        await sign_in(client, API_KEY)
        everything = (await client.get("/grid", headers={"X-API-Key": API_KEY})).json()["items"]
        not_ok = [i["key"] for i in everything if i["state"] != "ok"]
        default = await client.get("/board/grid")
        assert [k for k, _ in grid_rows(default.text)] == not_ok
        assert 'data-state="ok"' not in default.text
        assert "show all" in default.text
        mine = await client.get("/board/grid", params={"customer": failing, "show": "all"})
        assert {c for _, c in grid_rows(mine.text)} == {failing}
        failures = await client.get("/board/grid", params={"state": "failure"})
        assert grid_rows(failures.text) and all(
            s == "failure" for s in re.findall(r'data-state="(\w+)"', failures.text)
        )
        week = await client.get("/board/grid", params={"days": "7", "customer": failing})
        item = grid_rows(week.text)[0][0]
        assert len(cells_of(week.text, item)) == 7
        for params in (
            {"days": "0"},
            {"days": "93"},
            {"days": "many"},
            {"days": "\u00b2"},  # a digit to str.isdigit, not to int()
            {"state": "purple"},
            {"show": "some"},
            {"job_type": "floppy"},
        ):
            bad = await client.get("/board/grid", params=params)
            assert bad.status_code == 422, params
            assert "text/html" in bad.headers["content-type"]
            assert next(iter(params)) in bad.text


async def test_a_scoped_key_sees_only_its_customers_rows_on_the_grid(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    mine, other, _ = sim.customer_ids()
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        key = await make_key(client, "front-desk", [mine])
        await sign_in(client, key)
        page = await client.get("/board/grid", params={"show": "all"})
        assert page.status_code == 200
        assert {c for _, c in grid_rows(page.text)} == {mine}
        assert other not in page.text
        named = await client.get("/board/grid", params={"customer": other})
        assert named.status_code == 422
        assert (
            await client.get(f"/board/customers/{other}", params={"day": "2026-01-01"})
        ).status_code == 404
        bad_day = await client.get(f"/board/customers/{mine}", params={"day": "yesterday"})
        assert bad_day.status_code == 422 and "day" in bad_day.text


# -- objects and maintenance on the overview and the customer page ------------------------------


async def test_the_overview_counts_objects_by_state_and_filters_on_them(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    failing, muted, _ = sim.customer_ids()
    for n in range(3):
        sim.put_job(failing, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        window = await client.post(
            "/maintenance",
            json={
                "customer_id": muted,
                "starts_at": (clock.now - timedelta(hours=1)).isoformat(),
                "ends_at": (clock.now + timedelta(hours=2)).isoformat(),
                "reason": "tenant migration",
            },
            headers={"X-API-Key": API_KEY},
        )
        assert window.status_code == 201
        objects = (await client.get("/objects", headers={"X-API-Key": API_KEY})).json()["items"]
        failures = sum(o["customer_id"] == failing and o["state"] == "failure" for o in objects)
        assert failures >= 1
        await sign_in(client, API_KEY)
        page = await client.get("/board")
        row = page.text.split(f'<tr data-customer-id="{failing}"', 1)[1].split("</tr>", 1)[0]
        assert f"✖ {failures}" in row
        other = page.text.split(f'<tr data-customer-id="{muted}"', 1)[1].split("</tr>", 1)[0]
        assert "‖ maintenance" in other
        only = await client.get("/board", params={"state": "failure"})
        with_failure = {o["customer_id"] for o in objects if o["state"] == "failure"}
        assert failing in with_failure and set(customers_listed(only.text)) == with_failure
        assert '<option value="failure" selected>' in only.text
        paused = await client.get("/board", params={"state": "in_maintenance"})
        assert customers_listed(paused.text) == [muted]
        customer = await client.get(f"/board/customers/{muted}")
        assert "‖ <strong>In maintenance</strong>" in customer.text
        assert "tenant migration" in customer.text


async def test_the_customer_page_shows_its_objects_with_expectations_and_grid_row(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    cid = sim.customer_ids()[0]
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        objects = (
            await client.get(
                "/objects", params={"customer_id": cid}, headers={"X-API-Key": API_KEY}
            )
        ).json()["items"]
        await sign_in(client, API_KEY)
        page = await client.get(f"/board/customers/{cid}")
        assert page.status_code == 200
        for obj in objects:
            assert (
                f'<tr data-key="{obj["key"]}" data-customer-id="{cid}" data-state="{obj["state"]}"'
                in page.text
            )
            cells = cells_of(page.text, obj["key"])
            assert len(cells) == 14 and [d for d, _ in cells] == sorted(d for d, _ in cells)
            assert f"({obj['expected']['source']})" in page.text
        assert "In maintenance" not in page.text


# -- tickets ------------------------------------------------------------------------------------


async def put_ticket(
    client: httpx.AsyncClient, alert_key: str, state: str, ticket: str | None
) -> None:
    """A ticket row for the open alert of `alert_key`, as the desk would have written it."""
    svc = services_of(client)
    dialect = svc.engine.dialect.name
    async with svc.sessions() as session:
        alert = await tickets.read(session, tickets.alert_of(dialect, alert_key, None))
    assert alert is not None and alert.id is not None
    row = tickets.TicketRow(
        alert_id=alert.id,
        alert_key=alert_key,
        customer_id=alert.customer_id,
        company_id="19" if state != "unmapped" else None,
        ticket_id=ticket,
        state=state,
    )
    await svc.writer.run_plan(lambda d: tickets.save(d, row, svc.clock()))
    svc.notices.notify()


async def test_alert_rows_show_their_ticket_state_and_id(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    ticketed, unmapped, _ = sim.customer_ids()
    for cid in (ticketed, unmapped):
        for n in range(3):
            sim.put_job(cid, f"fail-{n}", status=FAILED, start=clock.now - timedelta(hours=3 - n))
    async with browser(gateway) as client:
        await client.get("/jobs", params={"max_age": 0}, headers={"X-API-Key": API_KEY})
        alerts = (
            await client.get("/alerts", params={"state": "open"}, headers={"X-API-Key": API_KEY})
        ).json()["items"]
        first = next(a["alert_key"] for a in alerts if a["customer_id"] == ticketed)
        second = next(a["alert_key"] for a in alerts if a["customer_id"] == unmapped)
        await sign_in(client, API_KEY)
        before = await client.get("/board/alerts")
        assert 'data-ticket-state="none"' in before.text
        await put_ticket(client, first, "open", "4242")
        await put_ticket(client, second, "unmapped", None)
        page = await client.get("/board/alerts")
        row = page.text.split(f'<tr data-key="{first}"', 1)[1].split("</tr>", 1)[0]
        assert 'data-ticket-state="open" data-ticket-id="4242"' in row and "#4242 open" in row
        other = page.text.split(f'<tr data-key="{second}"', 1)[1].split("</tr>", 1)[0]
        assert 'data-ticket-state="unmapped"' in other
        assert "no ticket: customer not mapped to a PSA company" in other
        customer = await client.get(f"/board/customers/{ticketed}")
        assert 'data-ticket-id="4242"' in customer.text
