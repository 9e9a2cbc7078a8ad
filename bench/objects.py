"""`GET /objects` and `GET /grid?days=31` at 1,000 customers x 20 objects, against a bare
endpoint.

    .venv/bin/python -m bench.objects                        # 1,000 x 20 (~6 min)
    .venv/bin/python -m bench.objects --customers 200 --objects 5 --seconds 4

The simulator as its own process (`jobs-gateway simulate --plans-per-customer 20
--history-days 14`: every customer has exactly 20 protected objects, most run about daily,
two weeks of history to learn from), and a real `serve` process against it (SQLite, the
upstream pace off), pinned to core 0 when `taskset` is there, refreshed once.
Each path is read once (its answer is then kept), its bytes are handed to `bench/baseline.py`
(a bare FastAPI endpoint on the same uvicorn settings, on the same core), and wrk on core 1
loads the service and the baseline in alternating turns. Targets (issue 16): req/s >= 0.5 x
the baseline's, p99 <= 2 x its p99. Results go to `bench/results/objects.json` and
`bench/RESULTS-objects.md`. Tests never assert timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.board import pinned, start_service, wait_refreshed
from bench.common import machine, median, table, write_results
from bench.loadkit import API_KEY, free_port, wrk

BENCH = Path(__file__).parent
PATHS = ("/objects", "/grid?days=31")


def start_baseline(path: str, body: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    route = path.split("?")[0]
    process = subprocess.Popen(
        [
            *pinned(0),
            sys.executable,
            "-m",
            "bench.baseline",
            "--port",
            str(port),
            "--path",
            route,
            "--body",
            str(body),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=5) as client:
        for _ in range(100):
            try:
                if client.get(base + path).status_code == 200:
                    return process, base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise SystemExit("the baseline did not start")


def start_upstream(customers: int, objects: int) -> tuple[subprocess.Popen[bytes], str]:
    """The simulator on core 1 (idle once the service has walked it)."""
    port = free_port()
    process = subprocess.Popen(
        [
            *pinned(1),
            sys.executable,
            "-m",
            "app",
            "simulate",
            "--port",
            str(port),
            "--customers",
            str(customers),
            "--plans-per-customer",
            str(objects),
            "--history-days",
            "14",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def measure(customers: int, objects: int, seconds: float, rounds: int) -> dict[str, Any]:
    pin = bool(pinned(0))
    out: dict[str, Any] = {"customers": customers, "objects_per_customer": objects, "reads": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream, upstream_url = start_upstream(customers, objects)
        service, base = start_service(customers, workdir, API_KEY, upstream_url)
        try:
            wait_refreshed(base, customers, time.monotonic() + 600, API_KEY)
            with httpx.Client(timeout=300, headers={"X-API-Key": API_KEY}) as client:
                for path in PATHS:
                    body = client.get(base + path).content  # built once, then kept
                    items = len(httpx.Response(200, content=body).json()["items"])
                    (workdir / "body").write_bytes(body)
                    baseline, bare = start_baseline(path, workdir / "body")
                    try:
                        wrk(base + path, 2, pin)  # warm-ups
                        wrk(bare + path, 2, pin)
                        mine: list[dict[str, Any]] = []
                        theirs: list[dict[str, Any]] = []
                        for _ in range(rounds):
                            mine.append(wrk(base + path, seconds, pin))
                            theirs.append(wrk(bare + path, seconds, pin))
                    finally:
                        baseline.terminate()
                        baseline.wait(10)
                    rps = median([m["rps"] for m in mine])
                    bare_rps = median([t["rps"] for t in theirs])
                    p99 = median([m["p99_s"] * 1000 for m in mine])
                    bare_p99 = median([t["p99_s"] * 1000 for t in theirs])
                    out["reads"].append(
                        {
                            "path": path,
                            "objects": items,
                            "bytes": len(body),
                            "rps": rps,
                            "baseline_rps": bare_rps,
                            "p99_ms": p99,
                            "baseline_p99_ms": bare_p99,
                        }
                    )
        finally:
            service.terminate()
            service.wait(30)
            upstream.terminate()
            upstream.wait(30)
    return out


def report(result: dict[str, Any], seconds: float, rounds: int) -> str:
    rows = []
    for r in result["reads"]:
        ratio = r["rps"] / r["baseline_rps"]
        p99 = r["p99_ms"] / r["baseline_p99_ms"]
        rows.append(
            [
                f"`{r['path']}`",
                f"{r['objects']:,}",
                f"{r['bytes'] / 1024:,.0f} KB",
                f"{r['rps']:,.0f}",
                f"{r['baseline_rps']:,.0f}",
                f"{ratio:.2f} {'PASS' if ratio >= 0.5 else 'MISS'}",
                f"{r['p99_ms']:.1f} ms",
                f"{r['baseline_p99_ms']:.1f} ms",
                f"{p99:.2f} {'PASS' if p99 <= 2 else 'MISS'}",
            ]
        )
    head = [
        "read",
        "objects",
        "answer",
        "req/s",
        "bare req/s",
        "× bare (≥ 0.5)",
        "p99",
        "bare p99",
        "× bare (≤ 2)",
    ]
    return (
        "# /objects and /grid under load (`python -m bench.objects`)\n\n"
        f"{', '.join(f'{k} {v}' for k, v in machine().items())}\n\n"
        f"{result['customers']:,} customers x {result['objects_per_customer']} objects "
        "(the simulator, 14 days of history), refreshed once; wrk -c32 on core 1, "
        f"{rounds} turns of {seconds:g} s per side, medians. Written by `bench/objects.py`.\n\n"
        + table([head, *rows])
        + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--objects", type=int, default=20, help="protected objects per customer")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.customers, args.objects, args.seconds, args.rounds)
    write_results("objects", result)
    text = report(result, args.seconds, args.rounds)
    (BENCH / "RESULTS-objects.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
