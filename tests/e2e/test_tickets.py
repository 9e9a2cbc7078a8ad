"""Tickets end to end: real `serve` processes (and `psa` commands) against the simulator and the
ConnectWise stand-in (tests/connectwise.py), both served over HTTP from this test's process so
that their knobs and what they received are in reach.

- one alert's life: `psa map`, `psa list`, `psa check`; a ticket opens, gets a note, closes;
- a restart while ticket work is pending (ConnectWise down, then back);
- two replicas on PostgreSQL open one ticket per alert;
- the storm guard holds what passes the hourly limit, the metric shows it, `psa release`
  opens them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests import connectwise as cw
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port, start, stop, wait_until_up

pytestmark = pytest.mark.e2e

KEY = "e2e-tickets-key"
FAILED, FINISHED = 3, 2
GUARD_SECONDS = 90.0  # how long a wait may take before the test fails: never reached when well


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    sim = Simulator(SimulatorConfig(seed=3, customers=4, jobs_per_customer=0))
    with simulator_over_http(sim) as base:
        yield base, sim


@pytest.fixture
def standin() -> Iterator[tuple[cw.StandIn, cw.Served]]:
    s = cw.StandIn()
    served = cw.Served(s)
    try:
        yield s, served
    finally:
        served.stop()


def psa_env(base: str, database_url: str, cw_url: str, **more: str) -> dict[str, str]:
    return serve_env(
        base,
        database_url,
        KEY,
        CACHE_TTL_SECONDS="3600",
        REFRESH_INTERVAL_SECONDS="0",
        PSA="connectwise",
        CONNECTWISE_URL=cw_url,
        CONNECTWISE_COMPANY=cw.COMPANY,
        CONNECTWISE_PUBLIC_KEY=cw.PUBLIC,
        CONNECTWISE_PRIVATE_KEY=cw.PRIVATE,
        CONNECTWISE_CLIENT_ID=cw.CLIENT_ID,
        **more,
    )


def psa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "psa", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def psa_at_once(env: dict[str, str], *commands: tuple[str, ...]) -> list[int]:
    """`psa` commands run side by side (as a script mapping many customers would), each in a
    process of its own; their exit codes, what a failed one printed in the failure. The first
    to start migrates, the others wait."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app", "psa", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    printed = [process.communicate(timeout=60)[1] for process in processes]
    codes = [process.returncode for process in processes]
    assert codes == [0] * len(codes), printed
    return codes


def serving(env: dict[str, str], count: int = 1) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """`count` serve processes, started at once (on a database already migrated), ready."""
    bases = [f"http://127.0.0.1:{free_port()}" for _ in range(count)]
    processes = [start(["serve", "--port", base.rsplit(":", 1)[1]], env) for base in bases]
    try:
        for base, process in zip(bases, processes, strict=True):
            wait_until_up(f"{base}/readyz", process)
    except BaseException:
        for process in processes:
            stop(process)
        raise
    return list(zip(bases, processes, strict=True))


def stopped(process: subprocess.Popen[bytes]) -> str:
    log = stop(process)
    assert cw.PRIVATE not in log and cw.PUBLIC not in log
    return log


def refresh(http: httpx.Client, base: str) -> None:
    response = http.get(base + "/jobs", params={"max_age": 0})
    assert response.status_code == 200, response.text


def until(
    http: httpx.Client, base: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """GET /tickets until `done` holds (short real sleeps; the guard only stops a test that
    would wait forever)."""
    deadline = time.monotonic() + GUARD_SECONDS
    while True:
        response = http.get(base + "/tickets")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        if done(items):
            return items
        assert time.monotonic() < deadline, f"tickets not as expected: {items}"
        time.sleep(0.1)


def states(*wanted: str) -> Callable[[list[dict[str, Any]]], bool]:
    """The tickets' states are `wanted` (`open` with a ticket id: one being opened has none
    yet)."""

    def shown(t: dict[str, Any]) -> str:
        return "opening" if t["state"] == "open" and not t["ticket_id"] else str(t["state"])

    return lambda items: sorted(map(shown, items)) == sorted(wanted)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30, headers={"X-API-Key": KEY}) as client:
        yield client


def test_one_alerts_life_and_a_restart_while_ticket_work_is_pending(
    tmp_path: Path,
    upstream: tuple[str, Simulator],
    standin: tuple[cw.StandIn, cw.Served],
    http: httpx.Client,
) -> None:
    base_url, sim = upstream
    s, served = standin
    env = psa_env(base_url, f"sqlite:///{tmp_path}/tickets.db", served.url)
    first, second = sim.customer_ids()[:2]

    # Mapping by id, and the check.
    assert psa(env, "map", first, "250").returncode == 0
    assert psa(env, "map", second, "999").returncode == 0
    listed = psa(env, "list", "--json")
    mapped = {
        m["customer_id"]: m["company_id"] for m in map(json.loads, listed.stdout.splitlines())
    }
    assert mapped == {first: "250", second: "999"}
    check = psa(env, "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert check.stdout.strip().startswith("company 999: ConnectWise has no such company")
    assert len(check.stdout.strip().splitlines()) == 1
    assert psa(env, "map", second, "251").returncode == 0
    check = psa(env, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    wrong = psa(env | {"CONNECTWISE_CLOSED_STATUS": "Done"}, "check")
    assert wrong.returncode == 1 and wrong.stdout.startswith("CONNECTWISE_CLOSED_STATUS:")
    assert cw.PRIVATE not in check.stdout + wrong.stdout + wrong.stderr

    [(base, process)] = serving(env)
    try:
        sim.put_job(first, "j1", status=FAILED, start=sim.now() - timedelta(hours=2))
        refresh(http, base)
        [t] = until(http, base, states("open"))
        ticket_id = int(t["ticket_id"])
        assert s.tickets[ticket_id]["company"] == {"id": 250}
        sim.put_job(first, "j2", status=FAILED, start=sim.now() - timedelta(hours=1))
        refresh(http, base)
        until(http, base, lambda _: len(s.notes[ticket_id]) == 1)
        sim.put_job(first, "j3", status=FINISHED, start=sim.now())
        refresh(http, base)
        until(http, base, states("closed"))
        assert s.status_of(ticket_id) == "Closed"

        # ConnectWise goes away; an alert opens meanwhile and its ticket waits.
        served.stop()
        sim.put_job(second, "k1", status=FAILED, start=sim.now())
        refresh(http, base)
        until(http, base, states("closed", "failed"))
    finally:
        stopped(process)
    served = cw.Served(s)  # back, on another port
    env = env | {"CONNECTWISE_URL": served.url}
    [(base, process)] = serving(env)
    try:
        items = until(http, base, states("closed", "open"))
        assert {t["customer_id"] for t in items if t["state"] == "open"} == {second}
        assert len(s.tickets) == 2
    finally:
        stopped(process)
        served.stop()


@pytest.mark.postgres
def test_two_replicas_open_one_ticket_per_alert(
    upstream: tuple[str, Simulator],
    standin: tuple[cw.StandIn, cw.Served],
    postgres_database: str,
    http: httpx.Client,
) -> None:
    base_url, sim = upstream
    s, served = standin
    env = psa_env(base_url, postgres_database, served.url)
    customers = sim.customer_ids()
    maps = [("map", cid, str(250 + n % 3)) for n, cid in enumerate(customers)]
    assert psa_at_once(env, *maps) == [0] * len(customers)
    # `psa map` migrated the database: both replicas may start together.
    (a, pa), (b, pb) = serving(env, 2)
    try:
        for cid in customers:
            sim.put_job(cid, "f1", status=FAILED, start=sim.now())
        refresh(http, a)
        refresh(http, b)
        until(http, a, states(*["open"] * len(customers)))
        refs = [t["externalXRef"] for t in s.tickets.values()]
        assert len(refs) == len(set(refs)) == len(customers)
        assert s.creates() == len(customers)
        # Recovery, told through the other replica, closes each once.
        for cid in customers:
            sim.put_job(cid, "ok", status=FINISHED, start=sim.now())
        refresh(http, b)
        until(http, b, states(*["closed"] * len(customers)))
        assert all(len(notes) == 1 for notes in s.notes.values())
    finally:
        stopped(pa)
        stopped(pb)


def test_the_storm_guard_holds_new_tickets_and_psa_release_opens_them(
    tmp_path: Path,
    upstream: tuple[str, Simulator],
    standin: tuple[cw.StandIn, cw.Served],
    http: httpx.Client,
) -> None:
    base_url, sim = upstream
    s, served = standin
    env = psa_env(
        base_url, f"sqlite:///{tmp_path}/storm.db", served.url, PSA_MAX_NEW_TICKETS_PER_HOUR="2"
    )
    customers = sim.customer_ids()
    assert psa_at_once(env, *(("map", cid, "250") for cid in customers)) == [0] * len(customers)
    [(base, process)] = serving(env)
    try:
        for cid in customers:
            sim.put_job(cid, "f1", status=FAILED, start=sim.now())
        refresh(http, base)
        until(http, base, states("open", "open", "held", "held"))
        assert s.creates() == 2
        deadline = time.monotonic() + GUARD_SECONDS
        while "jobs_gateway_tickets_held 2.0" not in http.get(base + "/metrics").text:
            assert time.monotonic() < deadline, "the held gauge never showed the storm"
            time.sleep(0.2)
        released = psa(env, "release")
        assert released.returncode == 0 and "released 2" in released.stdout
        until(http, base, states("open", "open", "open", "open"))
        assert s.creates() == 4
    finally:
        stopped(process)
