"""The cold refresh alone, at issue 15's sizes: quick, repeatable, with a profile if asked.

    python -m bench.cold                              # both sizes, both databases (~3 min)
    python -m bench.cold --db sqlite --size 100x1000  # one case
    python -m bench.cold --repeat 3                   # three runs of each case, medians
    python -m bench.cold --profile                    # py-spy over each walk (not timed)

The same processes and cores as `bench.load` (`bench/loadkit.py`): the service (a real
`python -m app serve`) alone on core 0, the stand-in (`bench/standin.py`) and this script
on core 1, a fresh database and a fresh stand-in per run, the upstream pace off
(`UPSTREAM_RATE_PER_SECOND=0`), `UPSTREAM_CONCURRENCY=8`. The sizes are the issue's:

| size | latency per jobs request | requests a walk makes |
|---|---|---|
| 100 customers x 1,000 jobs | 50 ms | 11 per customer (10 full pages, then the empty 11th) |
| 1,000 customers x 100 jobs | 20 ms | 2 per customer (a full page, then an empty one) |

What it reports, per run:
- walk: the stand-in's last jobs response minus its first jobs request;
- x fair ideal: walk / (the requests the contract's walk makes / concurrency x latency); the
  issue's target is at most 1.5;
- jobs/s: jobs stored / walk, the ingest rate end to end, walk included (target 20k);
- CPU/job: the service's CPU time (all threads, from /proc) over the walk / jobs: the cost
  the one core pays per job, the figure that decides the rest once the walk is CPU-bound;
  the event loop's thread's part (HTTP, parsing, normalizing, asyncpg) in brackets, the
  rest is other threads (the SQLite writer, aiosqlite's connections);
- CPU ÷ ideal: that CPU time / the fair ideal: the walk's ratio on a core of its own when it
  is CPU-bound, and the figure to read on a shared machine (others' load moves the walk,
  not the CPU a job costs);
- service CPU: the service's share of core 0 over the walk (near 100%: CPU-bound);
- max stall: the service's `jobs_gateway_event_loop_lag_max_seconds` at the end (target
  50 ms).

Never a timing assertion: it exits 1 only when something broke (a process died, a
customer was lost, the walk missed its deadline). Writes `bench/results/cold.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine, table, write_results
from bench.load import POSTGRES_ADMIN_URL, Case, Run, cold_refresh, service_env
from bench.loadkit import (
    LOAD_CORE,
    PYTHON,
    ROOT,
    SERVICE_CORE,
    Broken,
    Processes,
    database,
    free_port,
    log,
    memory_mib,
    postgres_version,
    process_ticks,
    wait_until_up,
)
from bench.loadreport import git_state, summarize_profile

PAGE_SIZE = 100
CONCURRENCY = 8
PROFILES_DIR = Path(tempfile.gettempdir()) / "bench-cold-profiles"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Size:
    customers: int
    jobs: int
    latency: float

    @property
    def label(self) -> str:
        return f"{self.customers:,} × {self.jobs:,}"

    @property
    def requests(self) -> int:
        """The jobs requests the contract's walk makes: every page that holds jobs, and one
        more past a full last page."""
        full, rest = divmod(self.jobs, PAGE_SIZE)
        per_customer = full + 1  # a short last page, or the empty page after a full one
        return self.customers * max(1, per_customer if rest or full else 1)

    def ideal(self, concurrency: int) -> float:
        return self.requests / concurrency * self.latency


SIZES = {
    "100x1000": Size(100, 1000, 0.05),
    "1000x100": Size(1000, 100, 0.02),
}


def thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each thread of a process so far (ticks), by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def one_run(
    db: str, size: Size, args: argparse.Namespace, procs: Processes, client: httpx.Client
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "db": db,
        "customers": size.customers,
        "jobs": size.jobs,
        "latency_s": size.latency,
        "concurrency": args.concurrency,
        "errors": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    mine = []
    try:
        with database(db, workdir, args.postgres_url) as database_url:
            port = free_port()
            argv = [PYTHON, "-m", "bench.standin", "--port", str(port)]
            argv += ["--customers", str(size.customers), "--jobs", str(size.jobs)]
            argv += ["--latency", str(size.latency)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            standin = procs.start(f"standin-{port}", argv, core=LOAD_CORE, env=env)
            mine.append(standin)
            standin_url = f"http://127.0.0.1:{port}"
            wait_until_up(client, f"{standin_url}/stats", standin)

            port = free_port()
            argv = [PYTHON, "-m", "app", "serve", "--port", str(port)]
            env = service_env(standin_url, database_url, args.concurrency)
            env.update(args.env)
            service = procs.start(f"service-{db}-{port}", argv, core=SERVICE_CORE, env=env)
            mine.append(service)
            service_url = f"http://127.0.0.1:{port}"
            wait_until_up(client, f"{service_url}/healthz", service, seconds=120)
            run = Run(procs, client, standin_url, service_url, service, standin)

            spy = None
            if args.profile:
                spy = start_profile(
                    procs, service.pid, f"{db}-{size.customers}x{size.jobs}", args.spy_args
                )
            case = Case(size.customers, size.jobs, args.concurrency, (), ("cold",))
            ticks_before = process_ticks(service.pid)
            threads_before = thread_ticks(service.pid)
            deadline = time.monotonic() + 120 + 20 * size.ideal(args.concurrency)
            cold = cold_refresh(run, case, deadline)
            ticks = process_ticks(service.pid) - ticks_before
            threads = thread_ticks(service.pid)
            # The event loop's thread is the process's first; the others are the SQLite
            # writer, aiosqlite's connections and the thread pool (threads that ended
            # meanwhile are in `ticks` only).
            loop_ticks = threads.get(service.pid, 0) - threads_before.get(service.pid, 0)
            # The busiest other thread that lived through the walk (the SQLite writer, on
            # SQLite); what remains is the short-lived ones (aiosqlite's connections).
            others = sorted(
                (
                    t - threads_before.get(tid, 0)
                    for tid, t in threads.items()
                    if tid != service.pid
                ),
                reverse=True,
            )
            busiest_ticks = others[0] if others else 0
            if spy is not None:
                result["profile"] = stop_profile(procs, spy)
            metrics = client.get(f"{service_url}/metrics", timeout=30).text
            walk = cold["walk_s"]
            jobs = size.customers * size.jobs
            ideal = size.ideal(args.concurrency)
            result.update(
                walk_s=walk,
                ideal_s=ideal,
                ratio=walk / ideal,
                jobs_per_s=jobs / walk,
                # Start-up to the end of the walk (a little idle before the first request
                # and after the last is in it too): an upper bound on the walk's CPU.
                cpu_us_per_job=ticks / CLOCK_TICKS / jobs * 1e6,
                # The service's CPU seconds against the ideal: what the walk would take on a
                # core of its own if it is CPU-bound; immune to others' load on the core.
                cpu_ratio=ticks / CLOCK_TICKS / ideal,
                loop_cpu_us_per_job=loop_ticks / CLOCK_TICKS / jobs * 1e6,
                busiest_thread_cpu_us_per_job=busiest_ticks / CLOCK_TICKS / jobs * 1e6,
                service_cpu=cold["core0_service"],
                others_cpu=cold["core0_others"],
                standin_cpu=cold["standin_cpu"],
                requests=cold["jobs_requests"],
                fair_requests=size.requests,
                max_in_flight=cold["max_in_flight"],
                lost=cold["lost"],
                max_stall_s=metric(metrics, "jobs_gateway_event_loop_lag_max_seconds"),
                peak_rss_mib=memory_mib(service.pid)["peak_rss_mib"],
            )
            if cold["lost"]:
                result["errors"].append(f"{cold['lost']} customers lost")
            if not service.alive():
                raise Broken(f"the service exited:\n{service.tail()}")
    except (Broken, httpx.HTTPError, OSError) as exc:
        result["errors"].append(str(exc))
        log(f"    BROKEN: {exc}")
    finally:
        for proc in reversed(mine):
            procs.stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def start_profile(procs: Processes, pid: int, name: str, extra: list[str]) -> Any:
    spy = Path(PYTHON).parent / "py-spy"
    if not spy.exists():
        raise Broken(f"--profile needs py-spy at {spy} (pip install py-spy into the venv)")
    PROFILES_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILES_DIR / f"{name}.txt"
    # Every thread (the SQLite writer's too), idle frames left out: where the CPU goes.
    command = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--threads", *extra]
    command += ["--full-filenames", "--format", "raw", "--output", str(out)]
    proc = procs.start(f"py-spy-{name}", command, core=LOAD_CORE)
    proc.out = out  # type: ignore[attr-defined]
    time.sleep(1.0)  # let it attach before the walk starts
    return proc


def stop_profile(procs: Processes, proc: Any) -> dict[str, Any]:
    # SIGINT makes py-spy write what it has.
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.popen.wait(30)
    finally:
        procs.stop(proc)
    raw = proc.out.read_text() if proc.out.exists() else ""
    summary = summarize_profile(raw, top=40)
    summary["raw"] = str(proc.out)
    log(f"    profile ({summary['samples']} samples; {proc.out}), own time by function:")
    for frame, part in summary["self"][:25]:
        log(f"      {part:6.1%}  {frame}")
    return summary


def fmt(r: dict[str, Any]) -> list[str]:
    if "walk_s" not in r:
        return [r["db"], f"{r['customers']:,} × {r['jobs']:,}", "broken", *[""] * 10]
    return [
        r["db"],
        f"{r['customers']:,} × {r['jobs']:,} ({r['latency_s'] * 1000:.0f} ms)",
        f"{r['walk_s']:.2f} s",
        f"{r['ideal_s']:.2f} s",
        f"{r['ratio']:.2f}",
        f"{r['jobs_per_s']:,.0f}",
        f"{r['cpu_us_per_job']:.0f} µs ({r['loop_cpu_us_per_job']:.0f} loop, "
        f"{r.get('busiest_thread_cpu_us_per_job', 0):.0f} next)",
        f"{r['cpu_ratio']:.2f}",
        f"{r['service_cpu']:.0%}",
        f"{(r['max_stall_s'] or 0) * 1000:.0f} ms",
        f"{r['requests']:,} / {r['fair_requests']:,}",
        f"{r['peak_rss_mib']:.0f} MiB",
        f"{r['others_cpu']:.0%}",
    ]


HEADER = [
    "db",
    "customers × jobs",
    "walk",
    "fair ideal",
    "× ideal",
    "jobs/s",
    "CPU/job (event loop's, busiest other thread's)",
    "CPU ÷ ideal",
    "service CPU",
    "max stall",
    "requests / fair",
    "peak RSS",
    "others on core 0",
]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (db, size): the run with the median walk (all runs are kept in the json)."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["db"], r["customers"], r["jobs"]), []).append(r)
    out = []
    for group in groups.values():
        ok = sorted((r for r in group if "walk_s" in r), key=lambda r: r["walk_s"])
        if not ok:
            out.append(group[0])
            continue
        median = dict(ok[(len(ok) - 1) // 2])
        median["walks_s"] = [r["walk_s"] for r in ok]
        median["ratio_median"] = statistics.median(r["ratio"] for r in ok)
        out.append(median)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--size", choices=(*SIZES, "both"), default="both")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument("--profile", action="store_true", help="py-spy over each walk")
    parser.add_argument(
        "--spy-arg", dest="spy_args", action="append", default=[], help="e.g. --spy-arg=--native"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra service setting"
    )
    parser.add_argument("--name", default="cold", help="results/NAME.json")
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    # As `loadkit.start_run`, without wrk (no read load here).
    cores = os.sched_getaffinity(0)
    args.pin = {SERVICE_CORE, LOAD_CORE} <= cores and shutil.which("taskset") is not None
    if args.pin:
        os.sched_setaffinity(0, {LOAD_CORE})
    else:
        log(f"warning: cores {SERVICE_CORE} and {LOAD_CORE} are not both available: not pinned")
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    postgres = postgres_version(args.postgres_url)
    if "postgres" in dbs and postgres is None:
        print(f"FAILED: PostgreSQL does not answer at {args.postgres_url}", file=sys.stderr)
        return 1
    sizes = list(SIZES.values()) if args.size == "both" else [SIZES[args.size]]
    logs = Path(tempfile.mkdtemp(prefix="bench-cold-logs-"))
    procs = Processes(logs, args.pin)
    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "machine": {**machine(), "postgres": postgres},
        "git": git_state(),
        "runs": [],
    }

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        with httpx.Client() as client:
            for _ in range(args.repeat):
                for db in dbs:
                    for size in sizes:
                        log(f"{db}: {size.label} jobs, {size.latency * 1000:.0f} ms pages")
                        r = one_run(db, size, args, procs, client)
                        if "walk_s" in r:
                            cells = zip(HEADER, fmt(r), strict=True)
                            log("    " + "  ".join(f"{h}: {v}" for h, v in cells))
                        results["runs"].append(r)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        procs.stop_all()
    summary = summarize(results["runs"])
    log("\n" + table([HEADER, *(fmt(r) for r in summary)]))
    path = write_results(args.name, results)
    log(f"\nwrote {path.relative_to(ROOT)}")
    broken = [e for r in results["runs"] for e in r["errors"]]
    for e in broken:
        print(f"FAILED: {e}", file=sys.stderr)
    if broken:
        log(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
