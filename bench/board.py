"""The board under load, as a NOC wall and a team of technicians make it.

    .venv/bin/python -m bench.board                 # 50 and 1,000 customers (~3 min)
    .venv/bin/python -m bench.board --customers 1000 --seconds 10

For each size: a real `serve` process in DEMO (the built-in simulator, customers of varied
sizes), pinned to core 0 when `taskset` is there, refreshed once; then `--clients` clients
at once on core 1 load `/board`, `/board/alerts`, `/board/grid` and the live part's
polls, each with the board's session cookie. It reports
- the server's median and p99 per page, from the service's own histogram
  (`jobs_gateway_http_request_seconds{route}`, interpolated within its buckets), and what
  the clients saw (which includes their own queueing);
- the HTML of `/board` in bytes, and a whole page's weight with its assets (htmx, the
  stylesheet, the script).

Targets (issue 17): server median <= 50 ms per page under load; `/board` HTML <= 300 KB at
1,000 customers; a whole page <= 150 KB at 50 customers. Results go to
`bench/results/board.json` and `bench/RESULTS-board.md`. Tests never assert timings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, median, percentile, table, write_results

KEY = "bench-key-0123456789"
PAGES = ("/board", "/board/alerts", "/board/grid")
ASSETS = ("/board/static/htmx.min.js", "/board/static/board.css", "/board/static/board.js")
HERE = Path(__file__).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() else []


def start_service(
    customers: int, workdir: Path, key: str = KEY, upstream: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`serve` on core 0: in DEMO, or against `upstream` (a simulator process) with the
    upstream pace off."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    if upstream is None:
        env |= {"DEMO": "true", "DEMO_CUSTOMERS": str(customers)}
    else:
        env |= {
            "AVEPOINT_BASE_URL": upstream,
            "AVEPOINT_TOKEN_URL": f"{upstream}/connect/token",
            "AVEPOINT_CLIENT_ID": "demo-client",
            "AVEPOINT_CLIENT_SECRET": "demo-secret",
            "UPSTREAM_RATE_PER_SECOND": "0",
        }
    env |= {
        "API_KEYS": key,
        "DATABASE_URL": f"sqlite:///{workdir}/board.db",
        "CACHE_TTL_SECONDS": "3600",  # nothing refreshes during the load
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_MINUTE": "0",
    }
    process = subprocess.Popen(
        [*pinned(0), sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_refreshed(base: str, customers: int, deadline: float, key: str = KEY) -> None:
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            try:
                body = client.get(
                    f"{base}/jobs", params={"limit": 1}, headers={"X-API-Key": key}
                ).json()
                freshness = body.get("freshness", {})
                if freshness.get("customers") == customers and freshness.get("fresh") == customers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
    raise SystemExit(f"{customers} customers were not refreshed in time")


def histogram(metrics: str, route: str) -> dict[float, float]:
    """Cumulative bucket counts of one route's latency histogram."""
    buckets: dict[float, float] = {}
    pattern = re.compile(
        r'^jobs_gateway_http_request_seconds_bucket\{le="([^"]+)",route="'
        + re.escape(route)
        + r'"\} (\S+)$'
    )
    for line in metrics.splitlines():
        found = pattern.match(line)
        if found:
            le = float("inf") if found.group(1) == "+Inf" else float(found.group(1))
            buckets[le] = float(found.group(2))
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of what was observed between two scrapes, linear within buckets."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    low, below = 0.0, 0.0
    for edge, cumulative in zip(edges, counts, strict=True):
        if cumulative >= target:
            if edge == float("inf"):
                return low
            inside = cumulative - below
            return low + (edge - low) * ((target - below) / inside if inside else 0)
        low, below = edge, cumulative
    return None


async def load(base: str, cookie: str, seconds: float, clients: int) -> dict[str, list[float]]:
    """`clients` at once for `seconds`: each asks the pages in turn, and a poll of each."""
    seen: dict[str, list[float]] = {p: [] for p in (*PAGES, "poll")}
    deadline = time.monotonic() + seconds
    headers = {"Cookie": f"jgw_board={cookie}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as c:
        polls: dict[str, str] = {}
        for page in PAGES:
            html = (await c.get(page)).text
            found = re.search(r'hx-get="([^"]+)"', html)
            assert found, page
            polls[page] = found.group(1).replace("&amp;", "&")

        async def client(n: int) -> None:
            i = n
            while time.monotonic() < deadline:
                page = PAGES[i % len(PAGES)]
                began = time.perf_counter()
                response = await c.get(page)
                seen[page].append(time.perf_counter() - began)
                assert response.status_code == 200, response.status_code
                began = time.perf_counter()
                response = await c.get(polls[page], headers={"HX-Request": "true"})
                seen["poll"].append(time.perf_counter() - began)
                assert response.status_code in (200, 204), response.status_code
                i += 1

        await asyncio.gather(*(client(n) for n in range(clients)))
    return seen


def measure(customers: int, seconds: float, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        process, base = start_service(customers, workdir)
        try:
            began = time.monotonic()
            wait_refreshed(base, customers, began + 600)
            refreshed = time.monotonic() - began
            with httpx.Client(base_url=base, timeout=60) as client:
                first = client.get("/board")
                cookie = first.cookies["jgw_board"]
                html = len(first.content)
                grid_html = len(client.get("/board/grid").content)
                assets = sum(len(client.get(a).content) for a in ASSETS)
                before = client.get("/metrics").text
            # The clients run on the other core, as a browser would on its own machine.
            if shutil.which("taskset"):
                os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
            seen = asyncio.run(load(base, cookie, seconds, clients))
            with httpx.Client(base_url=base, timeout=60) as client:
                after = client.get("/metrics").text
        finally:
            process.terminate()
            process.wait(15)
    server = {}
    for route in PAGES:
        b, a = histogram(before, route), histogram(after, route)
        server[route] = {"p50_ms": _ms(quantile(b, a, 0.5)), "p99_ms": _ms(quantile(b, a, 0.99))}
    return {
        "customers": customers,
        "refresh_seconds": round(refreshed, 1),
        "html_bytes": html,
        "grid_html_bytes": grid_html,
        "assets_bytes": assets,
        "page_weight_bytes": html + assets,
        "server": server,
        "clients": {
            name: {
                "requests": len(values),
                "p50_ms": round(median(values) * 1000, 1),
                "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            }
            for name, values in seen.items()
            if values
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def report(results: list[dict[str, Any]], clients: int, seconds: float) -> str:
    rows = [
        ["customers", "page", "server p50", "server p99", "client p50", "client p99", "requests"]
    ]
    for r in results:
        for page in (*PAGES, "poll"):
            server = r["server"].get(page, {})
            client = r["clients"].get(page, {})
            rows.append(
                [
                    str(r["customers"]),
                    page,
                    f"{server.get('p50_ms', '—')} ms" if server else "(in the pages)",
                    f"{server.get('p99_ms', '—')} ms" if server else "",
                    f"{client.get('p50_ms')} ms",
                    f"{client.get('p99_ms')} ms",
                    str(client.get("requests")),
                ]
            )
    sizes = [["customers", "/board HTML", "/board/grid HTML", "assets", "whole page", "targets"]]
    for r in results:
        sizes.append(
            [
                str(r["customers"]),
                f"{r['html_bytes'] / 1024:.0f} KB",
                f"{r['grid_html_bytes'] / 1024:.0f} KB",
                f"{r['assets_bytes'] / 1024:.0f} KB",
                f"{r['page_weight_bytes'] / 1024:.0f} KB",
                "HTML <= 300 KB at 1,000; page <= 150 KB at 50",
            ]
        )
    return "\n".join(
        [
            "# The board under load (`python -m bench.board`)",
            "",
            f"{clients} clients at once for {seconds:g} s per size, each asking `/board`, "
            "`/board/alerts`, `/board/grid` (objects not ok, the default) and a poll of the "
            "live part in turn, with a session cookie; the "
            "service in DEMO on core 0, the clients on core 1. Server times come from the "
            "service's own histogram (`jobs_gateway_http_request_seconds`, interpolated "
            "within buckets); client times include the clients' queueing. Target: server "
            "median <= 50 ms per page.",
            "",
            table(rows),
            "",
            table(sizes),
            "",
            f"Machine: {machine()}",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, action="append")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    sizes = args.customers or [50, 1000]
    results = [measure(n, args.seconds, args.clients) for n in sizes]
    write_results("board", {"clients": args.clients, "seconds": args.seconds, "runs": results})
    text = report(results, args.clients, args.seconds)
    (HERE / "RESULTS-board.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
