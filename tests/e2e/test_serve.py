"""End to end: a real `jobs-gateway serve` process in front of a real `jobs-gateway simulate`.

Both run as separate processes over HTTP on loopback, exactly as a user would start them;
the answer of `/jobs?status=failed` is checked against the simulator's own data.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.normalize import normalize_row
from app.simulator import Simulator, SimulatorConfig

pytestmark = pytest.mark.e2e

SEED, CUSTOMERS = 5, 6
KEY = "e2e-key-not-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    # One client for every look: each new one loads the CA bundle, a twentieth of a second
    # of CPU taken from the process that is starting.
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"process exited with {process.returncode}:\n{out}")
            try:
                if client.get(url).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up in {seconds}s")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out.decode(errors="replace")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    sim_port, gw_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    simulator = start(
        ["simulate", "--port", str(sim_port), "--customers", str(CUSTOMERS), "--seed", str(SEED)],
        env,
    )
    processes = [simulator]
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/docs", simulator)
        upstream = f"http://127.0.0.1:{sim_port}"
        env = env | {
            "AVEPOINT_BASE_URL": upstream,
            "AVEPOINT_TOKEN_URL": f"{upstream}/connect/token",
            "AVEPOINT_CLIENT_ID": "demo-client",
            "AVEPOINT_CLIENT_SECRET": "demo-secret",
            "API_KEYS": KEY,
            "DATABASE_URL": f"sqlite:///{tmp_path}/e2e.db",
            "CUSTOMER_IDS": "",
            "LOG_LEVEL": "INFO",
        }
        gateway = start(["serve", "--port", str(gw_port)], env)
        processes.append(gateway)
        wait_until_up(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        yield f"http://127.0.0.1:{gw_port}", env
    finally:
        logs = [stop(p) for p in reversed(processes)]
        assert "demo-secret" not in logs[0], "the client secret must never be logged"


def expected_failed(cid: str, since: datetime, at: datetime) -> tuple[set[str], set[str]]:
    """The customer's failed jobs in the simulator during the seconds its walks took (from
    `since` to `at`, as the snapshots tell, however slowly this machine ran them): those
    failed at some moment of them, and those failed throughout."""
    sim = Simulator(SimulatorConfig(seed=SEED, customers=CUSTOMERS))
    first = since.replace(microsecond=0)  # the simulator's clock counts whole seconds
    moments = [
        {
            f"{cid}:{job.job_id}"
            for row in sim.jobs(cid, now=first + timedelta(seconds=s))
            if (job := normalize_row(cid, row)) is not None and job.status == "failed"
        }
        for s in range(int((at - first).total_seconds()) + 1)
    ]
    return set.union(*moments), set.intersection(*moments)


def walks_began(database_url: str) -> dict[str, datetime]:
    """When each customer's first successful walk began, from the gateway's snapshots."""
    with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
        rows = db.execute(
            "SELECT customer_id, MIN(started_at) FROM snapshots WHERE outcome = 'success' "
            "GROUP BY customer_id"
        ).fetchall()
    return {cid: datetime.fromisoformat(began).replace(tzinfo=UTC) for cid, began in rows}


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_failed_jobs_over_real_http_match_the_simulator(stack: tuple[str, dict[str, str]]) -> None:
    base, env = stack
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
        assert c.get("/jobs").status_code == 200
        response = c.get("/jobs", params={"status": "failed", "limit": 500})
        assert response.status_code == 200
        body = response.json()
        # Every customer covered and fresh: no source is listed.
        assert body["freshness"]["customers"] == body["freshness"]["fresh"] == CUSTOMERS
        assert body["sources"] == []
        # When each customer's snapshot was taken: /customers has every customer's source.
        customers = c.get("/customers").json()["items"]
        assert {x["source"]["state"] for x in customers} == {"fresh"}
        fetched = {x["customer_id"]: utc(x["source"]["fetched_at"]) for x in customers}
        assert len(fetched) == CUSTOMERS
        assert body["freshness"]["oldest_fetched_at"] == min(
            x["source"]["fetched_at"] for x in customers
        )
        served: dict[str, set[str]] = {cid: set() for cid in fetched}
        for item in body["items"]:
            assert item["status"] == "failed"
            # A job is shown as some snapshot up to its customer's latest fetched it.
            assert utc(item["fetched_at"]) <= fetched[item["customer_id"]]
            served[item["customer_id"]].add(item["id"])
        began = walks_began(env["DATABASE_URL"])
        for cid, at in fetched.items():
            some_moment, throughout = expected_failed(cid, began[cid], at)
            assert throughout <= served[cid] <= some_moment, cid
        assert sum(map(len, served.values())) > 0
        # Unauthenticated and malformed requests get envelopes, not 500s.
        assert c.get("/jobs", headers={"Authorization": ""}).status_code == 401
        assert c.get("/jobs", params={"status": "exploded"}).status_code == 422
        docs = c.get("/docs")
        assert docs.status_code == 200 and "https://" not in docs.text


def refusal(**variables: str) -> str:
    """The one line `jobs-gateway serve` prints when it refuses to start with these settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO", "API_KEYS"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        env=env | variables,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_start_up_refuses_without_credentials(tmp_path: Path) -> None:
    line = refusal(DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    assert "AVEPOINT_CLIENT_ID" in line


def test_start_up_refuses_without_api_keys_outside_demo(tmp_path: Path) -> None:
    line = refusal(
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
        AVEPOINT_CLIENT_ID="id",
        AVEPOINT_CLIENT_SECRET="a-secret-value",
    )
    assert "API_KEYS" in line
    assert "a-secret-value" not in line


@pytest.mark.parametrize(
    "url", ["garbage", "mysql://user@127.0.0.1/db", "postgresql://u:pw-s3cret@127.0.0.1:1/x"]
)
def test_start_up_refuses_an_unusable_database_in_one_line(url: str) -> None:
    line = refusal(DEMO="true", DATABASE_URL=url)
    assert "DATABASE_URL" in line
    assert "pw-s3cret" not in line
