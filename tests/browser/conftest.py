"""What the browser tests share: Debian's Chromium driven by Playwright, and a real `serve`
process in front of the simulator (served from this process, so tests can change its data).

The browser is the system's `chromium` package (`apt-get install chromium`), never one
Playwright downloads. Without it these tests skip with a reason, like PostgreSQL's; with
JOBS_GATEWAY_REQUIRE_BROWSER=1 (CI, `.ci/run`) they fail instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.simulator import Simulator, SimulatorConfig
from tests.conftest import SecretScan
from tests.e2e.conftest import serve_env, simulator_over_http
from tests.e2e.test_serve import KEY, free_port, start, stop, wait_until_up

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium() -> str:
    """The system's Chromium, or a skip (a failure where the browser is required)."""
    candidates = [os.environ.get("JOBS_GATEWAY_CHROMIUM") or "", *CHROMIUM_PATHS]
    found = next((p for p in candidates if p and Path(p).exists()), None) or shutil.which(
        "chromium"
    )
    reason = None
    if found is None:
        reason = "no Chromium: apt-get install chromium (the browser tests drive the system's)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if os.environ.get("JOBS_GATEWAY_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (JOBS_GATEWAY_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason)
    assert found is not None
    return found


@dataclass
class Stack:
    """A running gateway (`base`), the simulator behind it, and the environment of both."""

    base: str
    sim: Simulator
    env: dict[str, str]
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def browser_path() -> str:
    return chromium()


@pytest.fixture(scope="module")
def stack(
    browser_path: str, tmp_path_factory: pytest.TempPathFactory, secret_scan: SecretScan
) -> Iterator[Stack]:
    sim = Simulator(SimulatorConfig(seed=23, customers=5, jobs_per_customer=20))
    tmp = tmp_path_factory.mktemp("board")
    with simulator_over_http(sim) as upstream:
        env = serve_env(
            upstream,
            f"sqlite:///{tmp}/board.db",
            KEY,
            # Refreshed every second: a change upstream shows within seconds; a failing
            # customer goes stale once its data is older than the TTL.
            CACHE_TTL_SECONDS="6",
            REFRESH_INTERVAL_SECONDS="1",
            UPSTREAM_RATE_PER_SECOND="0",
            LOG_LEVEL="INFO",
        )
        port = free_port()
        process = start(["serve", "--port", str(port)], env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/healthz", process)
            yield Stack(base, sim, env, process)
        finally:
            secret_scan.output(stop(process), "the board's serve process")


@pytest.fixture(scope="module")
def chromium_browser(browser_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
