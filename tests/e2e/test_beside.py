"""Processes on one database see each other's writes within 2 s, on SQLite and PostgreSQL.

- `jobs-gateway refresh --customer X` beside a running `serve`: the job it stores shows in
  the service's answer to the same query, although that answer was kept in memory and the
  service itself will not refresh X for an hour.
- A snooze made through one `serve` process shows in the other's `/alerts`, although a
  snooze writes no event.

The waits below are guards against a hang, not timings: each loop ends as soon as the other
process shows the change.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http, two_processes

pytestmark = pytest.mark.e2e

KEY = "e2e-beside-key"
FINISHED, FAILED = 2, 3


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    sim = Simulator(SimulatorConfig(seed=3, customers=2, jobs_per_customer=0))
    for cid in sim.customer_ids():
        sim.put_job(cid, "nightly", status=FINISHED, start=sim.now() - timedelta(hours=2))
    with simulator_over_http(sim) as base:
        yield base, sim


@pytest.fixture
def database(database_url: str) -> str:
    """A fresh database at the newest schema, on SQLite and on PostgreSQL (tests/conftest.py):
    both processes may start at once, neither has migrations to run."""
    return database_url


@pytest.fixture
def env(upstream: tuple[str, Simulator], database: str) -> dict[str, str]:
    return serve_env(
        upstream[0],
        database,
        KEY,
        # The service never refreshes on its own here: what it shows, it heard.
        CACHE_TTL_SECONDS="3600",
        REFRESH_INTERVAL_SECONDS="0",
    )


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[list[str]]:
    """Two `serve` processes on the database, up and ready; yields their base URLs."""
    with two_processes(env) as bases:
        yield bases


def get(base: str, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base}{path}", params=params, headers={"X-API-Key": KEY}, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30  # a guard against a hang, not a timing
    while not check():
        assert time.monotonic() < deadline, f"never seen: {what}"
        time.sleep(0.1)


def failed_ids(base: str, cid: str) -> set[str]:
    body = get(base, "/jobs", status="failed", customer_id=cid)
    return {job["job_id"] for job in body["items"]}


def test_a_refresh_by_hand_shows_in_the_running_service(
    served: list[str], env: dict[str, str], upstream: tuple[str, Simulator]
) -> None:
    base = served[0]
    sim = upstream[1]
    cid = sim.customer_ids()[0]
    assert failed_ids(base, cid) == set()  # walked once, kept for an hour

    sim.put_job(cid, "tonight", status=FAILED, start=sim.now() - timedelta(minutes=30))
    done = subprocess.run(
        [sys.executable, "-m", "app", "refresh", "--customer", cid],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    eventually(lambda: failed_ids(base, cid) == {"tonight"}, "the job `refresh` stored")
    alerts = get(base, "/alerts", state="open", customer_id=cid)["items"]
    assert [a["last_job_id"] for a in alerts] == ["tonight"]


def test_a_snooze_through_one_process_shows_in_the_other(
    served: list[str], upstream: tuple[str, Simulator]
) -> None:
    one, other = served
    sim = upstream[1]
    cid = sim.customer_ids()[1]
    sim.put_job(cid, "broken", status=FAILED, start=sim.now() - timedelta(minutes=30))
    get(one, "/jobs", customer_id=cid, max_age=0)
    eventually(
        lambda: bool(get(other, "/alerts", state="open", customer_id=cid)["items"]),
        "the alert in the other process",
    )
    (alert,) = get(other, "/alerts", state="open", customer_id=cid)["items"]
    assert alert["snoozed_until"] is None

    snoozed = httpx.post(
        f"{one}/alerts/{alert['alert_key']}/snooze",
        json={"until": "2099-01-01T00:00:00Z", "reason": "known outage"},
        headers={"X-API-Key": KEY},
        timeout=30,
    )
    assert snoozed.status_code == 200, snoozed.text

    def seen() -> bool:
        items = get(other, "/alerts", state="open", customer_id=cid)["items"]
        return bool(items) and items[0]["snoozed_until"] == "2099-01-01T00:00:00Z"

    eventually(seen, "the snooze in the other process")


def test_an_expectation_and_a_maintenance_window_through_one_process_show_in_the_other(
    served: list[str], upstream: tuple[str, Simulator]
) -> None:
    """Neither writes an event; the other process's kept `/objects` answer moves anyway."""
    one, other = served
    sim = upstream[1]
    cid = sim.customer_ids()[0]

    def the_object() -> dict[str, Any]:
        (obj,) = get(other, "/objects", customer_id=cid)["items"]
        return obj

    get(one, "/jobs", customer_id=cid)
    eventually(lambda: bool(get(other, "/objects", customer_id=cid)["items"]), "the object")
    before = the_object()  # now kept in the other process's memory
    assert before["expected"]["source"] != "set"
    assert before["in_maintenance"] is False
    headers = {"X-API-Key": KEY}

    put = httpx.put(
        f"{one}/objects/{before['key']}/expectation",
        json={"every_hours": 24, "grace_hours": 2},
        headers=headers,
        timeout=30,
    )
    assert put.status_code == 200, put.text
    eventually(lambda: the_object()["expected"]["source"] == "set", "the expectation")
    assert the_object()["expected"]["grace_hours"] == 2

    now = sim.now()
    made = httpx.post(
        f"{one}/maintenance",
        json={
            "customer_id": cid,
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=3)).isoformat(),
            "reason": "patching",
        },
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    eventually(lambda: the_object()["in_maintenance"] is True, "the maintenance window")

    gone = httpx.delete(f"{one}/maintenance/{made.json()['id']}", headers=headers, timeout=30)
    assert gone.status_code == 204, gone.text
    eventually(lambda: the_object()["in_maintenance"] is False, "the window's deletion")
