"""The service as users load it: real processes over HTTP, many clients at once.

    python -m bench.load                    # everything, SQLite and PostgreSQL (`make bench`)
    python -m bench.load --quick            # one small size, short loads: a smoke run (~1 min)
    python -m bench.load --db sqlite --only speed

What runs where (the machine has 2 cores): the service (`python -m app serve`, a real process
with its real settings) and, later, the baseline run on core 0; the upstream stand-in
(`bench/standin.py`, 50 ms per jobs request), wrk and this script run on core 1. PostgreSQL
is not pinned. Only one of service and baseline is under load at a time.

Every target is a ratio against a baseline measured in the same run, never a timing:

- Cold refresh. A fresh service with an empty database refreshes every customer (on its own
  at start-up, or, for a service that does not, after one `GET /jobs?max_age=0`). The walk
  is the stand-in's last jobs response minus its first jobs request; the ideal is
  pages / UPSTREAM_CONCURRENCY x latency (pages = C x ceil(J/100), and never less than the
  two round trips a customer of more than one page needs). Target: walk <= 1.25 x ideal,
  and no customer in `error` once the walk is over.
- Cached reads. `GET /jobs?status=failed&limit=100` and `GET /customers` (and, at 100 x
  1,000, `GET /summary`, `GET /events?limit=100` and `GET /alerts?state=open`), at c=32 from wrk
  (after a warm-up), against `bench/baseline.py`: a bare FastAPI endpoint on the same
  uvicorn settings serving the very bytes the service answered. Service and baseline take
  turns (3 rounds each by default), so a drift in the machine's other load moves both.
  Targets: req/s >= 0.5 x baseline, p99 <= 2 x baseline.
- Memory. The service's peak RSS (VmHWM) after the refresh and the read load. Target:
  <= 200 MiB at 1,000 customers x 1,000 jobs.
- Growth. The cached /jobs rate and the peak RSS at 10, 100 and 1,000 customers x 100 jobs.
  Proposed target: the rate at 1,000 customers >= 0.5 x the rate at 10.

The upstream concurrency matters only for the refresh, so reads are measured in the c=32 runs.
With each measurement goes how much of core 0 other processes took meanwhile: on a shared
machine that is the noise to read the numbers against. `--profile` adds one unmeasured /jobs
load with py-spy attached and summarizes where the service's time goes.

The machinery (processes, wrk, /proc, databases) is in `bench/loadkit.py`, the tables and
`RESULTS.md` in `bench/loadreport.py`. Prints a table, writes `bench/results/load.json` and
`bench/RESULTS.md` (`--quick`: `bench/results/load_quick.json` only). Every process it starts
is stopped (process groups, try/finally, Ctrl-C and SIGTERM included). Exits 1 only when
something is broken (a process did not start or died, a request failed, wrk saw errors,
customers were lost), never because a ratio missed its target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS_DIR, table, write_results
from bench.loadkit import (
    ALERTS_READ,
    API_KEY,
    CUSTOMERS_READ,
    EVENTS_READ,
    JOBS_READ,
    LATENCY,
    LOAD_CORE,
    PYTHON,
    ROOT,
    SERVICE_CORE,
    SUMMARY_READ,
    WRK_CONNECTIONS,
    Broken,
    Proc,
    Processes,
    core_ticks,
    database,
    free_port,
    load_errors,
    log,
    memory_mib,
    process_ticks,
    service_get,
    start_run,
    wait_until_up,
    wrk,
)
from bench.loadreport import (
    describe_machine,
    git_state,
    ms,
    report,
    sections,
    service_frames,
    size_of,
    summarize_profile,
)

BENCH_DIR = ROOT / "bench"
PAGE_SIZE = 100
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
# py-spy's collapsed stacks (large: not results to commit).
PROFILES_DIR = Path(tempfile.gettempdir()) / "bench-load-profiles"

# The stand-in counts as idle once nothing was in flight for this long.
SETTLE_SECONDS = 1.0
# A cold refresh not over after DEADLINE_SECONDS + --deadline-factor x its ideal ends the
# case as broken: so a run always ends, and in about the time it should take.
DEADLINE_SECONDS = 120.0
DEADLINE_FACTOR = 20.0
# With customers in `error`, wait this long idle before believing the walk is over.
SETTLE_WITH_ERRORS_SECONDS = 5.0
# After the walk, how long lost customers get to come back (recorded, not a target).
RECOVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Case:
    """One fresh service: C customers x J jobs at an upstream concurrency, and what to read."""

    customers: int
    jobs: int
    concurrency: int
    reads: tuple[str, ...]
    roles: tuple[str, ...]

    @property
    def pages(self) -> int:
        return self.customers * max(1, math.ceil(self.jobs / PAGE_SIZE))

    @property
    def ideal(self) -> float:
        # A customer's pages after the first need its totalCount: two round trips at least.
        depth = 2 if self.jobs > PAGE_SIZE else 1
        return max(self.pages / self.concurrency, depth) * LATENCY

    @property
    def label(self) -> str:
        return f"{self.customers:,} × {self.jobs:,}"


FEEDS = (SUMMARY_READ, EVENTS_READ, ALERTS_READ)


def plan(only: str | None, quick: bool) -> list[Case]:
    if quick:
        return [Case(50, 200, 8, (JOBS_READ, CUSTOMERS_READ, *FEEDS), ("quick",))]
    both = (JOBS_READ, CUSTOMERS_READ)
    cases: dict[tuple[int, int, int], Case] = {}

    def add(customers: int, jobs: int, concurrency: int, reads: tuple[str, ...], role: str) -> None:
        key = (customers, jobs, concurrency)
        old = cases.get(key)
        if old is None:
            cases[key] = Case(customers, jobs, concurrency, reads, (role,))
        else:
            merged = tuple(dict.fromkeys((*old.reads, *reads)))
            cases[key] = Case(customers, jobs, concurrency, merged, (*old.roles, role))

    if only in (None, "growth"):
        add(10, 100, 32, (JOBS_READ,), "growth")
        add(100, 100, 32, (JOBS_READ,), "growth")
        add(1000, 100, 32, (JOBS_READ,), "growth")
    if only in (None, "speed"):
        for customers, jobs in ((100, 1000), (1000, 100)):
            add(customers, jobs, 8, (), "speed")
            add(customers, jobs, 32, both, "speed")
        # The integrations' reads, at the size the issue names, against the same targets.
        add(100, 1000, 32, FEEDS, "speed")
    if only in (None, "memory"):
        add(1000, 1000, 32, both, "memory")
    return list(cases.values())


# -- one case --------------------------------------------------------------------------------


def service_env(standin: str, database_url: str, concurrency: int) -> dict[str, str]:
    # Nothing of the caller's environment but the basics: no stray DATABASE_URL or DEMO.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        AVEPOINT_BASE_URL=standin,
        AVEPOINT_TOKEN_URL=f"{standin}/connect/token",
        AVEPOINT_CLIENT_ID="bench-client",
        AVEPOINT_CLIENT_SECRET="bench-secret",
        API_KEYS=API_KEY,
        DATABASE_URL=database_url,
        UPSTREAM_CONCURRENCY=str(concurrency),
        CACHE_TTL_SECONDS="3600",
        LOG_LEVEL="WARNING",
        # wrk is one key asking thousands of times a minute: a limit too high to reach, so
        # that the limiter's cost is in the figures but no request is refused.
        RATE_LIMIT_PER_MINUTE="10000000",
        # The cold refresh measures the walk against concurrency x latency, not a pace.
        UPSTREAM_RATE_PER_SECOND="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def freshness_of(body: dict[str, Any]) -> dict[str, Any]:
    """The `freshness` summary (new contract), or one made from `sources` (one per customer)."""
    summary = body.get("freshness")
    if isinstance(summary, dict):
        return {
            "shape": "freshness",
            **{k: int(summary.get(k) or 0) for k in ("customers", "fresh", "stale")},
            **{k: int(summary.get(k) or 0) for k in ("refreshing", "error")},
        }
    counts = {"fresh": 0, "stale": 0, "refreshing": 0, "error": 0}
    sources = body.get("sources") or []
    for source in sources:
        state = source.get("state")
        counts[state] = counts.get(state, 0) + 1
    return {"shape": "sources", "customers": len(sources), **counts}


@dataclass
class Run:
    """The live parts of one case: its processes and where they answer."""

    procs: Processes
    client: httpx.Client
    standin_url: str
    service_url: str
    service: Proc
    standin: Proc
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        response = self.client.get(f"{self.standin_url}/stats", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def service_get(self, path: str, timeout: float = 120.0) -> httpx.Response:
        return service_get(self.client, self.service, self.service_url + path, timeout)

    def freshness(self) -> dict[str, Any]:
        return freshness_of(self.service_get("/jobs?limit=1").json())


def cold_refresh(run: Run, case: Case, deadline: float) -> dict[str, Any]:
    """Wait for the start-up refresh (or trigger it), then until the walk is over."""
    # A service that refreshes at start-up asks for the customer list, then for pages.
    triggered: dict[str, Any] = {}
    core_before, service_before = core_ticks(SERVICE_CORE), process_ticks(run.service.pid)
    standin_before = process_ticks(run.standin.pid)
    waited_until = time.monotonic() + 3.0
    while time.monotonic() < waited_until:
        s = run.stats()
        if s["jobs_requests"]:
            break
        if s["customers_requests"]:
            waited_until = max(waited_until, time.monotonic() + 0.5)
        time.sleep(0.1)
    if not run.stats()["jobs_requests"]:

        def trigger() -> None:
            try:
                run.service_get("/jobs?limit=1&max_age=0", timeout=900)
            except Broken as exc:
                triggered["error"] = str(exc)
            else:
                triggered["done"] = True

        threading.Thread(target=trigger, name="trigger", daemon=True).start()
        triggered["started"] = True
        run.notes.append("the service did not refresh on its own: triggered with max_age=0")

    first: tuple[dict[str, Any], dict[str, Any]] | None = None
    while True:
        if time.monotonic() > deadline:
            s, fr = run.stats(), run.freshness()
            raise Broken(
                f"the cold refresh was not over by its deadline: the stand-in was asked for "
                f"{s['jobs_requests']:,} pages ({case.pages:,} hold the jobs), "
                f"{s['in_flight']} in flight; {fr['fresh']} of {case.customers} customers "
                f"fresh, {fr['refreshing']} refreshing, {fr['error']} in error"
            )
        if "error" in triggered:
            raise Broken(f"the triggering request failed: {triggered['error']}")
        s = run.stats()
        idle_for = s["now_mono"] - (s["last_response_mono"] or s["now_mono"])
        if not s["jobs_requests"] or s["in_flight"] or idle_for < SETTLE_SECONDS:
            time.sleep(0.25)
            continue
        fr = run.freshness()
        accounted = (
            fr["customers"] == case.customers
            and fr["refreshing"] == 0
            and fr["fresh"] + fr["stale"] + fr["error"] == fr["customers"]
        )
        after = run.stats()
        quiet = after["jobs_requests"] == s["jobs_requests"]
        if accounted and quiet and (fr["error"] == 0 or idle_for >= SETTLE_WITH_ERRORS_SECONDS):
            first = (s, fr)
            break
        time.sleep(0.25)

    s, fr = first
    core_after, service_after = core_ticks(SERVICE_CORE), process_ticks(run.service.pid)
    standin_after = process_ticks(run.standin.pid)
    ticks = max(1, core_after[1] - core_before[1])
    walk = s["last_response_mono"] - s["first_request_mono"]
    # The same ideal for the requests the service did make (it may ask for an empty page
    # after a full last one): how well it pipelines them, apart from how many it makes.
    depth = 2 if s["jobs_requests"] > case.customers else 1
    made_ideal = max(s["jobs_requests"] / case.concurrency, depth) * LATENCY
    result: dict[str, Any] = {
        "walk_s": walk,
        "ideal_s": case.ideal,
        "ratio": walk / case.ideal,
        "requests_ideal_s": made_ideal,
        "requests_ratio": walk / made_ideal,
        "pages": case.pages,
        "jobs_requests": s["jobs_requests"],
        "jobs_by_status": s["jobs_by_status"],
        "max_in_flight": s["max_in_flight"],
        "customers": fr["customers"],
        "served": fr["fresh"] + fr["stale"],
        "lost": fr["error"],
        "shape": fr["shape"],
        "triggered": bool(triggered),
        # Of core 0 from start-up to the end of the walk: a service near 100% is CPU-bound.
        "core0_service": (service_after - service_before) / ticks,
        "core0_others": max(
            0.0, (core_after[0] - core_before[0] - service_after + service_before) / ticks
        ),
        # Of core 1, the stand-in's share: far from 100%, it is not what the walk waits on.
        "standin_cpu": (standin_after - standin_before) / ticks,
    }
    if fr["error"]:
        # Recorded as lost; also say whether they come back once the backoff ends.
        until = min(deadline, time.monotonic() + RECOVERY_SECONDS)
        later = fr
        while time.monotonic() < until and later["error"]:
            time.sleep(1.0)
            later = run.freshness()
        result["error_after_recovery_wait"] = later["error"]
    return result


def measure(url: str, seconds: float, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run, and how core 0 was shared meanwhile: the process under load vs others."""
    core_before, pid_before = core_ticks(SERVICE_CORE), process_ticks(pid)
    result = wrk(url, seconds, args.pin)
    core_after, pid_after = core_ticks(SERVICE_CORE), process_ticks(pid)
    total = max(1, core_after[1] - core_before[1])
    busy = (core_after[0] - core_before[0]) / total
    mine = (pid_after - pid_before) / total
    result["core0_process"] = mine
    result["core0_others"] = max(0.0, busy - mine)
    return result


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds (req/s, latencies), errors summed, every round kept."""
    median_of = statistics.median
    return {
        "rps": median_of(r["rps"] for r in rounds),
        **{
            key: median_of(r[key] for r in rounds)
            for key in ("p50_s", "p75_s", "p90_s", "p99_s")
            if all(key in r for r in rounds)
        },
        "requests": sum(r["requests"] for r in rounds),
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in rounds),
        "socket_errors": {
            kind: sum(r["socket_errors"][kind] for r in rounds)
            for kind in ("connect", "read", "write", "timeout")
        },
        "core0_process": median_of(r["core0_process"] for r in rounds),
        "core0_others": max(r["core0_others"] for r in rounds),
        "rounds": rounds,
    }


def read_load(run: Run, case: Case, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """wrk against the service and against the baseline serving the same bytes, in turns.

    Each side gets a warm-up, then `rounds` alternating runs (service, baseline, service,
    ...): a machine whose other load drifts during the measurement then moves both sides,
    and the ratios are the medians of the per-round ratios.
    """
    results: dict[str, Any] = {}
    baselines: dict[str, tuple[Proc, str]] = {}
    try:
        for n, path in enumerate(case.reads):
            response = run.service_get(path)
            body = workdir / f"body-{n}.json"
            body.write_bytes(response.content)
            items = response.json().get("items")
            results[path] = {
                "body_bytes": len(response.content),
                "items": len(items) if isinstance(items, list) else None,
            }
            port = free_port()
            argv = [PYTHON, "-m", "bench.baseline", "--port", str(port)]
            argv += ["--path", path.split("?", 1)[0], "--body", str(body)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            baseline = run.procs.start(f"baseline-{port}", argv, core=SERVICE_CORE, env=env)
            baselines[path] = (baseline, f"http://127.0.0.1:{port}{path}")
        for baseline, url in baselines.values():
            wait_until_up(run.client, url, baseline)

        seconds = max(1.0, math.ceil(args.duration / args.rounds))
        for path, (baseline, baseline_url) in baselines.items():
            service_url = run.service_url + path
            wrk(service_url, args.warmup, args.pin)
            wrk(baseline_url, args.warmup, args.pin)
            service_rounds, baseline_rounds = [], []
            for _ in range(args.rounds):
                service_rounds.append(measure(service_url, seconds, run.service.pid, args))
                baseline_rounds.append(measure(baseline_url, seconds, baseline.pid, args))
            read = results[path]
            read["service"] = s = combine(service_rounds)
            read["baseline"] = b = combine(baseline_rounds)
            pairs = list(zip(service_rounds, baseline_rounds, strict=True))
            read["rps_ratio"] = statistics.median(x["rps"] / y["rps"] for x, y in pairs)
            read["p99_ratio"] = statistics.median(x["p99_s"] / y["p99_s"] for x, y in pairs)
            read["baseline_peak_rss_mib"] = memory_mib(baseline.pid)["peak_rss_mib"]
            log(
                f"    {path}: service {s['rps']:,.0f} req/s p99 {ms(s['p99_s'])}, baseline "
                f"{b['rps']:,.0f} req/s p99 {ms(b['p99_s'])} -> ×{read['rps_ratio']:.3f} req/s, "
                f"×{read['p99_ratio']:.1f} p99 (others on core 0: up to "
                f"{max(s['core0_others'], b['core0_others']):.0%})"
            )
            if args.profile and path == JOBS_READ:
                read["profile"] = profile(run, path, args)
    finally:
        for baseline, _ in baselines.values():
            run.procs.stop(baseline)
    return results


def profile(run: Run, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """py-spy samples the service during one more (unmeasured) wrk run of `path`."""
    spy = Path(PYTHON).parent / "py-spy"
    if not spy.exists():
        raise Broken(f"--profile needs py-spy at {spy} (pip install py-spy into the venv)")
    name = f"profile-{run.service.name}"
    PROFILES_DIR.mkdir(parents=True, exist_ok=True)
    raw = PROFILES_DIR / f"{name}.txt"
    seconds = max(1, round(args.duration))
    command = [str(spy), "record", "--pid", str(run.service.pid), "--duration", str(seconds)]
    # --gil: only the thread holding the GIL, i.e. where the Python time goes, not threads
    # waiting on a lock or the event loop waiting on its sockets.
    command += ["--rate", "200", "--gil", "--full-filenames", "--format", "raw"]
    command += ["--output", str(raw)]
    if args.pin:
        command = ["taskset", "-c", str(LOAD_CORE), *command]
    sampler = run.procs.start(name, command, core=LOAD_CORE)
    try:
        time.sleep(0.5)  # let it attach
        wrk(run.service_url + path, seconds, args.pin)
        sampler.popen.wait(30)
    finally:
        run.procs.stop(sampler)
    summary = summarize_profile(raw.read_text() if raw.exists() else "")
    summary["raw"] = str(raw)
    log(f"    profile of {path} ({summary['samples']} samples), own time by function:")
    for frame, share in summary["self"][:12]:
        log(f"      {share:6.1%}  {frame}")
    log("    inclusive time of the service's own functions:")
    for frame, share in service_frames(summary)[:12]:
        log(f"      {share:6.1%}  {frame}")
    return summary


def run_case(
    db: str, case: Case, args: argparse.Namespace, procs: Processes, client: httpx.Client
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "db": db,
        "customers": case.customers,
        "jobs": case.jobs,
        "concurrency": case.concurrency,
        "roles": list(case.roles),
        "errors": [],
    }
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    mine: list[Proc] = []
    service: Proc | None = None
    try:
        with database(db, workdir, args.postgres_url) as database_url:
            port = free_port()
            argv = [PYTHON, "-m", "bench.standin", "--port", str(port)]
            argv += ["--customers", str(case.customers), "--jobs", str(case.jobs)]
            argv += ["--latency", str(LATENCY)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            standin = procs.start(f"standin-{port}", argv, core=LOAD_CORE, env=env)
            mine.append(standin)
            standin_url = f"http://127.0.0.1:{port}"
            wait_until_up(client, f"{standin_url}/stats", standin)

            port = free_port()
            argv = [PYTHON, "-m", "app", "serve", "--port", str(port)]
            env = service_env(standin_url, database_url, case.concurrency)
            service = procs.start(f"service-{db}-{port}", argv, core=SERVICE_CORE, env=env)
            mine.append(service)
            service_url = f"http://127.0.0.1:{port}"
            wait_until_up(client, f"{service_url}/healthz", service, seconds=120)
            result["service_pid"] = service.pid
            run = Run(procs, client, standin_url, service_url, service, standin)

            deadline = time.monotonic() + DEADLINE_SECONDS + args.deadline_factor * case.ideal
            cold = cold_refresh(run, case, deadline)
            result["cold"] = cold
            log(
                f"    cold refresh: {cold['walk_s']:.2f} s = ×{cold['ratio']:.2f} ideal "
                f"{cold['ideal_s']:.2f} s; {cold['served']}/{cold['customers']} served, "
                f"{cold['lost']} lost; {cold['jobs_requests']} requests, "
                f"max {cold['max_in_flight']} in flight ({cold['shape']}); service busy "
                f"{cold['core0_service']:.0%} of core 0, others {cold['core0_others']:.0%}, "
                f"stand-in {cold['standin_cpu']:.0%} of core 1"
            )
            if cold["lost"]:
                result["errors"].append(f"{cold['lost']} customers lost in the cold refresh")
            result["memory_after_refresh"] = memory_mib(service.pid)
            if case.reads:
                result["reads"] = read_load(run, case, args, workdir)
                for path, read in result["reads"].items():
                    for who in ("service", "baseline"):
                        bad = load_errors(read[who])
                        if bad:
                            result["errors"].append(f"wrk saw {bad} errors from the {who} ({path})")
            result["memory"] = memory_mib(service.pid)
            log(
                f"    peak RSS {result['memory']['peak_rss_mib']:.0f} MiB "
                f"(after the refresh {result['memory_after_refresh']['peak_rss_mib']:.0f} MiB)"
            )
            result["notes"] = run.notes
            for note in run.notes:
                log(f"    note: {note}")
            if not service.alive():
                raise Broken(f"the service exited:\n{service.tail()}")
    except (Broken, httpx.HTTPError, subprocess.SubprocessError, OSError) as exc:
        result["errors"].append(str(exc) if isinstance(exc, Broken) else repr(exc))
        log(f"    BROKEN: {exc}")
        if "memory" not in result and service is not None and service.alive():
            result["memory_at_failure"] = memory_mib(service.pid)
    finally:
        for proc in reversed(mine):
            procs.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# -- main ------------------------------------------------------------------------------------


def print_tables(runs: list[dict[str, Any]]) -> None:
    for title, rows in sections(runs):
        log(f"\n{title}\n{table(rows)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--only", choices=("speed", "memory", "growth"))
    parser.add_argument("--quick", action="store_true", help="one small size, short loads")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL, help="an existing database")
    parser.add_argument(
        "--duration", type=float, help="seconds of load per side and endpoint (default 12)"
    )
    parser.add_argument("--warmup", type=float, help="seconds of each warm-up (default 2)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="service/baseline turns the duration is cut into"
    )
    parser.add_argument(
        "--deadline-factor",
        type=float,
        default=DEADLINE_FACTOR,
        help=f"a cold refresh may take {DEADLINE_SECONDS:.0f} s + this x its ideal "
        f"(default {DEADLINE_FACTOR:.0f})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample the service with py-spy during one more /jobs load (not measured)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: print the tables and rewrite RESULTS.md from results/load.json",
    )
    args = parser.parse_args()
    if args.report:
        results = json.loads((RESULTS_DIR / "load.json").read_text(encoding="utf-8"))
        print_tables(results["runs"])
        (BENCH_DIR / "RESULTS.md").write_text(report(results), encoding="utf-8")
        log("\nwrote bench/RESULTS.md")
        return 0
    args.duration = args.duration or (3.0 if args.quick else 12.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    try:
        args.pin, dbs, postgres = start_run(args.db, args.postgres_url)
    except Broken as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1

    cases = plan(args.only, args.quick)
    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "machine": describe_machine(postgres),
        "git": git_state(),
        "settings": {
            "latency_s": LATENCY,
            "wrk_connections": WRK_CONNECTIONS,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "pinned": args.pin,
        },
        "runs": [],
    }
    logs = Path(tempfile.mkdtemp(prefix="bench-load-logs-"))
    procs = Processes(logs, args.pin)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        with httpx.Client() as client:
            for db in dbs:
                for case in cases:
                    log(
                        f"{db}: {case.label} jobs, concurrency {case.concurrency} "
                        f"({', '.join(case.roles)})"
                    )
                    results["runs"].append(run_case(db, case, args, procs, client))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process started")
    finally:
        procs.stop_all()
    if interrupted:
        return 130

    print_tables(results["runs"])
    name = "load_quick" if args.quick else "load"
    path = write_results(name, results)
    log(f"\nwrote {path.relative_to(ROOT)}")
    if not args.quick:
        (BENCH_DIR / "RESULTS.md").write_text(report(results), encoding="utf-8")
        log("wrote bench/RESULTS.md")
    problems = [(r, e) for r in results["runs"] for e in r["errors"]]
    for r, e in problems:
        print(f"FAILED: {r['db']} {size_of(r)} c={r['concurrency']}: {e}", file=sys.stderr)
    if problems:
        log(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
