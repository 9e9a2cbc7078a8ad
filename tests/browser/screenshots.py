"""`make screenshots`: the README's pictures of the board, taken from the demo, so they stay
true. Starts `serve` in DEMO (a fresh SQLite file in a temporary folder), waits until every
customer is refreshed, and photographs the overview (light and dark), the open alerts and the grid
with Debian's Chromium into docs/.

    .venv/bin/python -m tests.browser.screenshots [--out docs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.browser.conftest import CHROMIUM_PATHS
from tests.e2e.test_serve import free_port

KEY = "demo-key"
SHOTS = (
    ("/board", "board.png", "light"),
    ("/board", "board-dark.png", "dark"),
    ("/board/alerts", "board-alerts.png", "light"),
    ("/board/grid", "board-grid.png", "light"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", type=Path)
    args = parser.parse_args()
    chromium = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
    if chromium is None:
        print("no Chromium: apt-get install chromium", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
        env |= {
            "DEMO": "true",
            "API_KEYS": KEY,
            "DATABASE_URL": f"sqlite:///{tmp}/demo.db",
            "LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)], env=env, cwd=tmp
        )
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        body = client.get(
                            f"{base}/jobs", params={"limit": 1}, headers={"X-API-Key": KEY}
                        ).json()
                        freshness = body["freshness"]
                        if freshness["customers"] and freshness["fresh"] == freshness["customers"]:
                            break
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                for path, name, scheme in SHOTS:
                    page = browser.new_page(
                        viewport={"width": 1280, "height": 800},
                        color_scheme=scheme,
                        timezone_id="UTC",
                    )
                    page.goto(f"{base}{path}")
                    page.wait_for_selector("[data-as-of]")
                    page.screenshot(path=str(args.out / name), full_page=False)
                    print(f"wrote {args.out / name}")
                    page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
