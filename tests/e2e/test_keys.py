"""Keys as an operator manages them: `jobs-gateway keys ...` on the command line, against the
database of running `serve` processes, with no restart; and a key's rate limit held across
two replicas on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import free_port, start, stop, wait_until_up

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    sim = Simulator(SimulatorConfig(seed=5, customers=3, jobs_per_customer=20))
    with simulator_over_http(sim) as base:
        yield base, sim


def keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def made(env: dict[str, str], *args: str) -> str:
    """`keys create ...`: the key, alone on the last line of standard output."""
    result = keys(env, "create", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # the key and nothing else on standard output
    assert lines[-1].startswith("jgw_") and " " not in lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module's requests: each new one loads the CA bundle, a twentieth of
    a second of CPU taken from the servers under test."""
    with httpx.Client(timeout=10) as client:
        yield client


def status(http: httpx.Client, base: str, key: str, path: str = "/customers") -> int:
    return http.get(f"{base}{path}", headers={"X-API-Key": key}).status_code


def live_keys(base: str) -> int:
    """The made keys a server knows, as its /metrics tells."""
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    [line] = [ln for ln in metrics.splitlines() if ln.startswith("jobs_gateway_api_keys_live ")]
    return int(float(line.split()[1]))


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_keys_made_and_revoked_on_the_command_line_reach_a_running_server(
    db: str,
    upstream: tuple[str, Simulator],
    http: httpx.Client,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    database = (
        f"sqlite:///{tmp_path}/keys.db"
        if db == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    # No API_KEYS at all: a key made with `keys create` is what lets the service start.
    env = serve_env(upstream[0], database, "", REFRESH_INTERVAL_SECONDS="0")
    first = made(env, "first-psa")
    port = free_port()
    process = start(["serve", "--port", str(port)], env)
    log = ""
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/readyz", process)
        assert status(http, base, first) == 200
        assert status(http, base, "jgw_000000000000_forged") == 401

        customers = http.get(f"{base}/customers", headers={"X-API-Key": first}).json()["items"]
        own = customers[0]["customer_id"]
        scoped = made(env, "one-customer", "--customers", own, "--rate-per-minute", "1000")
        # The curl line pasted right after `keys create`: its very first request is answered.
        seen = httpx.get(f"{base}/customers", headers={"X-API-Key": scoped}, timeout=10)
        assert seen.status_code == 200, seen.text
        assert [c["customer_id"] for c in seen.json()["items"]] == [own]
        assert live_keys(base) == 2

        listing = keys(env, "list")
        assert listing.returncode == 0
        assert "first-psa" in listing.stdout and "one-customer" in listing.stdout
        assert first not in listing.stdout and scoped not in listing.stdout

        revoked = keys(env, "revoke", "one-customer")
        assert revoked.returncode == 0, revoked.stderr
        # The server learns of it by reading the keys again (every RELOAD_SECONDS): once it
        # has, the key is refused, the first time it is tried.
        deadline = time.monotonic() + 60  # a guard against a hang, not a measure
        while live_keys(base) != 1:
            assert time.monotonic() < deadline, "the server never read the revocation"
            time.sleep(0.1)
        assert status(http, base, scoped) == 401
        assert status(http, base, first) == 200
        again = keys(env, "revoke", "one-customer")
        assert again.returncode == 1 and "no live key" in again.stderr
    finally:
        log = stop(process)
    assert first not in log and scoped not in log and "demo-secret" not in log


def test_start_up_without_api_keys_or_a_made_key_names_both_ways(
    upstream: tuple[str, Simulator], tmp_path: Path
) -> None:
    env = serve_env(upstream[0], f"sqlite:///{tmp_path}/none.db", "")
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "API_KEYS" in lines[0] and "keys create" in lines[0]


@pytest.mark.postgres
def test_a_keys_rate_limit_holds_for_the_sum_of_two_replicas(
    upstream: tuple[str, Simulator], postgres_database: str
) -> None:
    """Two processes on one database, a key allowed 60 requests a minute, 120 requests sent
    to both in turn: about 60 get through in all (app.access.ratelimit states the tolerance), not
    60 each (which would be all 120)."""
    env = serve_env(upstream[0], postgres_database, "full-key", REFRESH_INTERVAL_SECONDS="0")
    key = made(env, "limited", "--rate-per-minute", "60")
    ports = [free_port(), free_port()]
    processes = [start(["serve", "--port", str(p)], env) for p in ports]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base, process in zip(bases, processes, strict=True):
            wait_until_up(f"{base}/readyz", process)
        # Both processes read the key at start-up: it was made before them.
        # The whole run inside one minute window: it takes 3-4 s, or twice that under load.
        if int(time.time()) % 60 > 52:
            time.sleep(61 - time.time() % 60)
        admitted = 0
        with httpx.Client(headers={"X-API-Key": key}, timeout=10) as client:
            for n in range(120):
                response = client.get(f"{bases[n % 2]}/enums")
                assert response.status_code in (200, 429), response.text
                if response.status_code == 200:
                    admitted += 1
                else:
                    assert int(response.headers["retry-after"]) >= 1
                time.sleep(0.02)
        assert 60 <= admitted <= 75, admitted  # 60 each would be all 120
    finally:
        for process in processes:
            stop(process)
