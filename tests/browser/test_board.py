"""The board in a real browser (Chromium), from a person's point of view: signing in and out,
the overview worst first, a stale customer marked, a filter that survives a reload, a new
failure appearing without a reload, snoozing, a forged POST refused, a scoped key, nothing
loaded from elsewhere, no console error, and the page readable with JavaScript off.

Assertions wait on conditions (Playwright's `expect` retries until its timeout); none waits
on the clock.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.browser.conftest import Stack
from tests.e2e.test_serve import KEY

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

FAILED = 3
LIVE_TIMEOUT_MS = 20_000
"""How long a change may take to show without a reload: the board's 5 s, with room for a
busy CI machine (a refresh every second, a poll every two)."""


@pytest.fixture
def context(chromium_browser: Any) -> Iterator[Any]:
    ctx = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()


@dataclasses.dataclass
class Watched:
    """A page, and what it did: requests, console errors, uncaught errors."""

    page: Any
    requests: list[str]
    errors: list[str]


@pytest.fixture
def watched(context: Any) -> Watched:
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return Watched(page, requests, errors)


def sign_in(page: Any, base: str, key: str = KEY, path: str = "/board") -> None:
    page.goto(f"{base}{path}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(base) + r"/board(?!/login)"))  # signed in


def rows(page: Any) -> Any:
    return page.locator("tbody tr[data-customer-id]")


def expect(value: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(value)


def test_signing_in_and_out(stack: Stack, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{stack.base}/board")
    expect(page).to_have_url(re.compile(r"/board/login\?next="))
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{stack.base}/board")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_text("Signed in as a key of API_KEYS")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{stack.base}/board/login")
    page.goto(f"{stack.base}/board/alerts")
    expect(page).to_have_url(re.compile(r"/board/login\?next=%2Fboard%2Falerts"))


def test_the_overview_lists_every_customer_worst_first(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    expect(rows(page)).to_have_count(len(stack.sim.customer_ids()))
    listed = rows(page).evaluate_all("rs => rs.map(r => r.dataset.customerId)")
    assert sorted(listed) == sorted(stack.sim.customer_ids())
    order = ["no_data", "failing", "stale", "warning", "ok"]
    states = rows(page).evaluate_all("rs => rs.map(r => r.dataset.state)")
    assert states == sorted(states, key=order.index)
    as_of = page.locator("[data-as-of]").first.get_attribute("data-as-of")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", as_of or "")
    expect(page.get_by_text("Data as of")).to_be_visible()
    # Times in the browser's timezone, UTC on hover.
    first_time = page.locator("time[datetime]").first
    expect(first_time).to_have_attribute("title", re.compile(r"UTC$"))


def test_a_new_failure_appears_without_a_reload(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    ok_rows = page.locator('tbody tr[data-state="ok"]')
    expect(ok_rows.first).to_be_visible()
    cid = ok_rows.first.get_attribute("data-customer-id")
    assert cid
    page.evaluate("window.__same_page = true")
    stack.sim.put_job(cid, "fresh-failure", status=FAILED, start=datetime.now(UTC))
    row = page.locator(f'tbody tr[data-customer-id="{cid}"]')
    expect(row).not_to_have_attribute("data-state", "ok", timeout=LIVE_TIMEOUT_MS)
    expect(row).to_contain_text("warning")
    assert page.evaluate("window.__same_page") is True  # no reload happened


def test_a_stale_customer_is_marked_with_its_error(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    cid = stack.sim.customer_ids()[-1]
    config = stack.sim.config
    stack.sim.config = dataclasses.replace(config, failing_customers=frozenset({cid}))
    try:
        row = page.locator(f'tbody tr[data-customer-id="{cid}"]')
        # Its state says stale unless an alert says worse (the simulated history can leave
        # a critical "no result"): the data column says stale either way.
        expect(row).to_have_attribute(
            "data-state", re.compile("^(stale|failing)$"), timeout=LIVE_TIMEOUT_MS
        )
        expect(row).to_contain_text("⚠ stale since", timeout=LIVE_TIMEOUT_MS)
        expect(row).to_contain_text("HTTP 500")
        expect(page.get_by_text("not all current")).to_be_visible()
    finally:
        stack.sim.config = config
    expect(row).not_to_contain_text("⚠ stale since", timeout=LIVE_TIMEOUT_MS)


def test_a_filter_in_the_url_survives_a_reload(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    expect(rows(page).last).to_be_visible()
    best = rows(page).last.get_attribute("data-state") or "ok"  # some customer has it
    page.get_by_label("State").select_option(best)
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(rf"[?&]state={best}"))
    page.reload()
    expect(page.get_by_label("State")).to_have_value(best)
    states = rows(page).evaluate_all("rs => rs.map(r => r.dataset.state)")
    assert states and set(states) == {best}
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)  # a bookmarked or shared view opens the same
    expect(other.get_by_label("State")).to_have_value(best)


def test_snoozing_from_the_page(stack: Stack, watched: Watched) -> None:
    cid = stack.sim.customer_ids()[0]
    stack.sim.put_job(cid, "snooze-me", status=FAILED, start=datetime.now(UTC), module=310)
    page = watched.page
    sign_in(page, stack.base, path="/board/alerts")
    key = f"{cid}:microsoft_365:power_bi"
    row = page.locator(f'tr[data-key="{key}"]')
    expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    row.get_by_label("For").select_option("4")
    row.get_by_label("Reason").fill("mailbox moving")
    row.get_by_role("button", name=re.compile("^Snooze")).click()
    row = page.locator(f'tr[data-key="{key}"]')
    expect(row).to_have_attribute("data-snoozed", "true")
    expect(row).to_contain_text("snoozed until")
    expect(row).to_contain_text("mailbox moving")


def test_a_post_without_its_csrf_token_is_refused(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    # The browser's own cookies, a form without its token: refused, nothing changes.
    response = page.request.post(f"{stack.base}/board/logout", form={"next": "/board"})
    assert response.status == 403
    response = page.request.post(
        f"{stack.base}/board/logout", form={"csrf": "0" * 64}, max_redirects=0
    )
    assert response.status == 403
    page.reload()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_a_scoped_key_sees_only_its_customer(stack: Stack, watched: Watched) -> None:
    mine, other = stack.sim.customer_ids()[:2]
    made = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "board-scoped", "--customers", mine],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stdout.splitlines()[-1]
    page = watched.page
    sign_in(page, stack.base, key=key)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-customer-id", mine)
    expect(page.get_by_text("sees 1 customer")).to_be_visible()
    response = page.goto(f"{stack.base}/board/customers/{other}")
    assert response is not None and response.status == 404
    response = page.goto(f"{stack.base}/board/customers/{mine}")
    assert response is not None and response.status == 200
    page.goto(f"{stack.base}/board/alerts")
    assert other not in page.content()


def test_a_revoked_key_ends_an_open_board_within_seconds(stack: Stack, watched: Watched) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "board-night-shift"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    page = watched.page
    sign_in(page, stack.base, key=made.stdout.splitlines()[-1])
    expect(page.get_by_text("Signed in as key 'board-night-shift'")).to_be_visible()
    subprocess.run(
        [sys.executable, "-m", "app", "keys", "revoke", "board-night-shift"],
        env=stack.env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    # The open page's next poll after the server reread its keys sends it to sign in.
    expect(page).to_have_url(re.compile(r"/board/login\?next="), timeout=LIVE_TIMEOUT_MS)


def test_nothing_leaves_the_origin_and_no_console_error(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    cid = rows(page).first.get_attribute("data-customer-id")
    page.locator(f'tr[data-customer-id="{cid}"] th a').click()
    expect(page.locator(f'section[data-customer-id="{cid}"]')).to_be_visible()
    job = page.locator("tr[data-job-id] a").first
    job.click()
    expect(page.get_by_role("heading", name="Status history")).to_be_visible()
    page.goto(f"{stack.base}/board/alerts")
    expect(page.get_by_role("heading", name="Open alerts")).to_be_visible()
    # Stay long enough for polls to go out and come back.
    with page.expect_response(lambda r: r.request.headers.get("hx-request") == "true"):
        pass
    assert watched.requests
    outside = [u for u in watched.requests if not u.startswith(stack.base) and u != "data:,"]
    assert outside == []
    assert watched.errors == []


def test_the_board_is_reachable_by_keyboard(stack: Stack, watched: Watched) -> None:
    page = watched.page
    sign_in(page, stack.base)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    first = rows(page).first.locator("th a")
    for _ in range(30):  # nav, sign-out, the filters' labelled fields, then the table
        page.keyboard.press("Tab")
        if first.evaluate("el => el === document.activeElement"):
            break
    expect(first).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("section[data-customer-id]")).to_be_visible()


def test_the_board_is_readable_with_javascript_off(stack: Stack, chromium_browser: Any) -> None:
    ctx = chromium_browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        sign_in(page, stack.base)  # the forms work without scripts
        expect(rows(page)).to_have_count(len(stack.sim.customer_ids()))
        expect(page.locator("time[datetime]").first).to_contain_text("UTC")
        page.get_by_label("State").select_option("ok")
        page.get_by_role("button", name="Apply").click()
        expect(page).to_have_url(re.compile(r"state=ok"))
        page.get_by_role("link", name="Alerts").click()
        expect(page.get_by_role("heading", name="Open alerts")).to_be_visible()
    finally:
        ctx.close()


# -- the grid, objects and tickets ----------------------------------------------------------------


def test_the_grid_has_a_cell_per_day_oldest_first_and_a_click_opens_that_days_jobs(
    stack: Stack, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, stack.base, path="/board/grid?show=all")
    page.get_by_role("link", name="Grid").first.wait_for()
    grid_rows = page.locator("tbody tr[data-key]")
    expect(grid_rows.first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    today = datetime.now(UTC).date().isoformat()  # TIMEZONE is UTC, days start at 00:00
    for dates in grid_rows.evaluate_all(
        "rs => rs.map(r => [...r.querySelectorAll('td[data-date]')].map(c => c.dataset.date))"
    ):
        assert len(dates) == 14 and dates == sorted(dates) and dates[-1] == today
    results = page.locator("td[data-result]").evaluate_all("cs => cs.map(c => c.dataset.result)")
    assert set(results) <= {"success", "warning", "failure", "no_result", "maintenance", "none"}
    expect(page.get_by_role("list", name="Legend")).to_contain_text("no result")
    row = page.locator("tbody tr[data-key]:has(td[data-date] a)").first  # a day with jobs
    cid = row.get_attribute("data-customer-id")
    cell = row.locator("td[data-date]:has(a)").last
    day = cell.get_attribute("data-date")
    cell.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/board/customers/{cid}\?.*day={day}"))
    expect(page.get_by_role("heading", name=f"Jobs started on {day}")).to_be_visible()
    expect(page.locator("#day-title + table tbody tr[data-job-id]").first).to_be_visible()


def test_the_overview_shows_object_states_and_the_customer_page_its_objects(
    stack: Stack, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, stack.base)
    expect(rows(page).first).to_be_visible()
    expect(page.get_by_role("columnheader", name=re.compile("^Objects"))).to_contain_text(
        "∅ no result"
    )
    objects = rows(page).locator("td:nth-child(5)").all_inner_texts()
    counted = re.compile(r"—|([✖∅⚠✓–] \d+(, )?)+( ‖ maintenance)?")
    assert objects and all(counted.fullmatch(t.strip()) for t in objects), objects
    cid = rows(page).first.get_attribute("data-customer-id")
    rows(page).first.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name="Protected objects")).to_be_visible()
    objects = page.locator(f'tbody tr[data-key^="{cid}:"][data-state]')
    expect(objects.first).to_be_visible()
    expect(objects.first.locator("td[data-date]")).to_have_count(14)


def put_ticket(stack: Stack, alert_key: str, state: str, ticket_id: str | None) -> None:
    """A ticket row in the serve process's database, written by the store's own plans."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from app.store import db, tickets
    from app.store.plans import run_async

    async def write() -> None:
        engine = db.create_engine(stack.env["DATABASE_URL"])
        try:
            async with engine.begin() as conn:
                alert = await run_async(conn, tickets.alert_of("sqlite", alert_key, None))
                assert alert is not None and alert.id is not None
                row = tickets.TicketRow(
                    alert_id=alert.id,
                    alert_key=alert_key,
                    customer_id=alert.customer_id,
                    company_id="19",
                    ticket_id=ticket_id,
                    state=state,
                )
                await run_async(conn, tickets.save("sqlite", row, datetime.now(UTC)))
        finally:
            await engine.dispose()

    # Playwright's sync API holds an event loop on this thread: the write runs on another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(write())).result()


def test_an_alert_row_shows_its_ticket(stack: Stack, watched: Watched) -> None:
    cid = stack.sim.customer_ids()[1]
    stack.sim.put_job(cid, "ticket-me", status=FAILED, start=datetime.now(UTC), module=310)
    page = watched.page
    sign_in(page, stack.base, path="/board/alerts")
    key = f"{cid}:microsoft_365:power_bi"
    row = page.locator(f'tr[data-key="{key}"]')
    expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    put_ticket(stack, key, "open", "4242")
    ticket = page.locator(f'tr[data-key="{key}"] [data-ticket-state]')
    expect(ticket).to_have_attribute("data-ticket-state", "open", timeout=LIVE_TIMEOUT_MS)
    expect(ticket).to_have_attribute("data-ticket-id", "4242")
    expect(ticket).to_contain_text("#4242 open")
