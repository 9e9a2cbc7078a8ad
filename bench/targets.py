"""Every speed target of issue 15 in one run, each as a ratio to a baseline of the same run.

    python -m bench.targets                        # both sizes, both databases, 1,000 x 1,000
    python -m bench.targets --db sqlite --size 1000x100 --no-big     # one case
    python -m bench.targets --quick                # short loads: a smoke run
    python -m bench.targets --size 1000x100 --no-big --reads-only --read /customers
                                                   # one cached read per database

The processes and cores of `bench.load` and `bench.cold` (`bench/loadkit.py`): the service (a
real `python -m app serve`) alone on core 0, the stand-in (`bench/standin.py`), wrk, the long
polls and this script on core 1; a fresh database, stand-in and service per case, the
upstream pace off (`UPSTREAM_RATE_PER_SECOND=0`), `UPSTREAM_CONCURRENCY=8`, 50 ms pages at
100 x 1,000 and 20 ms at 1,000 x 100 (the issue's sizes). Per case, on one service:

1. cold refresh: the walk (the stand-in's last jobs response - its first jobs request)
   against the fair ideal (the requests the contract's walk makes / 8 x latency), target
   <= 1.5; jobs/s (jobs / walk), target >= 20,000; the service's CPU per job from /proc, and
   CPU / ideal (the walk's ratio on a core of its own once CPU-bound: the figure that does
   not move with others' load);
2. cached reads: `/jobs?status=failed&limit=100` and `/customers` against `bench/baseline.py`
   serving the same bytes, in turns (`bench.load.read_load`): req/s >= 0.5 x, p99 <= 2 x;
3. reads while a refresh ingests changes: the stand-in changes 10% of every customer's
   jobs (`POST /change?share=0.1`), `POST /refresh` starts a refresh of every customer,
   and wrk reads `/jobs?status=failed&limit=100` meanwhile: p99 <= 100 ms (the window wrk
   ran and how much of it the refresh covered are reported);
4. event-loop stalls: `jobs_gateway_event_loop_lag_max_seconds` (the worst since start-up)
   after the cold refresh and after the changed one, target <= 50 ms; and how many of the
   loop's 0.1 s probes lagged more than 50 ms (histogram deltas) in each;
5. idle long polls: 1,000 `GET /events?after=<the newest>&wait=25` held open (raw sockets,
   re-asked when one ends empty) while wrk reads `/jobs?status=failed&limit=100`, in turns
   with no polls held: req/s with them >= 0.9 x without, p99 with them <= 50 ms; then one
   customer changes and is refreshed, and every waiter must hear it: the last answer within
   1 s of the first (the first is the event becoming visible to the process);
6. memory: SQLite at 1,000 x 1,000 (c=32, as `bench.load`'s memory case) finishes and its
   peak RSS (VmHWM, after a read of each path) stays <= 200 MiB.

With each figure goes the share of core 0 other processes took meanwhile: the machine is
shared, and a large share means the wall-clock ratios are pessimistic (CPU / ideal is not).
Never a timing assertion: exits 1 only when something broke (a process died, a request
failed, a customer was lost, a deadline passed). Writes `bench/results/targets.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.cold import CLOCK_TICKS, Size, metric, thread_ticks
from bench.common import machine, write_results
from bench.load import POSTGRES_ADMIN_URL, Case, Run, cold_refresh, measure, read_load, service_env
from bench.loadkit import (
    API_KEY,
    CUSTOMERS_READ,
    JOBS_READ,
    LOAD_CORE,
    PYTHON,
    ROOT,
    SERVICE_CORE,
    Broken,
    Processes,
    core_ticks,
    database,
    free_port,
    load_errors,
    log,
    memory_mib,
    postgres_version,
    process_ticks,
    start_run,
    wait_until_up,
    wrk,
)
from bench.loadreport import git_state

SIZES = {
    "100x1000": Size(100, 1000, 0.05),
    "1000x100": Size(1000, 100, 0.02),
}
BIG = Size(1000, 1000, 0.05)
BIG_CONCURRENCY = 32
CONCURRENCY = 8
CHANGED_SHARE = 0.1
WAITERS = 1000
WAIT_SECONDS = 25
LAG_BUCKET = 0.05  # the stall target, and a bucket of the loop-lag histogram

TARGETS = {
    "cold_ratio": 1.5,
    "jobs_per_s": 20_000,
    "max_stall_s": 0.05,
    "p99_during_refresh_s": 0.1,
    "read_rps_ratio": 0.5,
    "read_p99_ratio": 2.0,
    "polls_rps_ratio": 0.9,
    "polls_p99_s": 0.05,
    "heard_spread_s": 1.0,
    "big_peak_rss_mib": 200.0,
}


# -- the pieces ------------------------------------------------------------------------------


def lag_over(metrics_text: str, bound: float = LAG_BUCKET) -> tuple[int, int]:
    """(probes that lagged more than `bound`, probes) from the loop-lag histogram."""
    count = metric(metrics_text, "jobs_gateway_event_loop_lag_seconds_count") or 0.0
    under = None
    for line in metrics_text.splitlines():
        if line.startswith("jobs_gateway_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            if le != "+Inf" and abs(float(le) - bound) < 1e-9:
                under = float(line.split()[-1])
    if under is None:
        return -1, int(count)
    return int(count - under), int(count)


def stall_now(run: Run) -> float:
    """The worst event-loop lag the service saw since start-up, so far."""
    text = run.client.get(f"{run.service_url}/metrics", timeout=30).text
    return metric(text, "jobs_gateway_event_loop_lag_max_seconds") or 0.0


def newest_cursor(run: Run) -> str:
    """The feed's newest cursor: page through `/events` to its end."""
    after: str | None = None
    while True:
        path = "/events?limit=1000" + (f"&after={after}" if after else "")
        body = run.service_get(path).json()
        after = body.get("next_cursor") or after
        if not body["items"]:
            assert after is not None, "the feed is empty"
            return after


class Waiters:
    """`n` idle long polls on the service, held open in a thread of this script (raw
    HTTP/1.1 on keep-alive sockets, so that 1,000 of them cost this process little); a poll
    that ends empty is asked again. Records when each answer with events came."""

    def __init__(self, port: int, path: str, n: int) -> None:
        self.port, self.path, self.n = port, path, n
        self.heard: list[float] = []  # monotonic times of answers that carried events
        self.empty = 0  # polls that ended empty (and were asked again)
        self.errors: list[str] = []
        self.open = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="waiters", daemon=True)
        self._ready = threading.Event()

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise Broken(f"only {self.open} of {self.n} long polls were open after {timeout} s")
        if self.errors:
            raise Broken(f"long polls failed: {self.errors[:3]}")

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\n\r\n"
        ).encode()
        opened = asyncio.Event()
        tasks = [asyncio.create_task(self._poll(request, opened)) for _ in range(self.n)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, request: bytes, opened: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)
        except OSError as exc:
            self.errors.append(f"connect: {exc}")
            self._ready.set()
            return
        writer.write(request)
        await writer.drain()
        self.open += 1
        if self.open == self.n:
            # Every request is sent; give the service a moment to take them all in.
            self._loop.call_later(1.0, self._ready.set)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                status = int(head.split(b" ", 2)[1])
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if status != 200:
                    self.errors.append(f"HTTP {status}: {body[:200]!r}")
                    return
                if json.loads(body)["items"]:
                    self.heard.append(time.monotonic())
                    return
                self.empty += 1
                writer.write(request)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()


def reads_with_polls(run: Run, port: int, cursor: str, args: argparse.Namespace) -> dict[str, Any]:
    """Cached reads with no polls held, then with `WAITERS` held, in turns; then whether
    every waiter hears a new event."""
    url = run.service_url + JOBS_READ
    path = f"/events?after={cursor}&wait={WAIT_SECONDS}&limit=100"
    without: list[dict[str, Any]] = []
    with_polls: list[dict[str, Any]] = []
    heard: dict[str, Any] = {}
    wrk(url, args.warmup, args.pin)
    for turn in range(args.rounds):
        without.append(measure(url, args.turn_seconds, run.service.pid, args))
        waiters = Waiters(int(run.service_url.rsplit(":", 1)[1]), path, WAITERS)
        waiters.start()
        try:
            with_polls.append(measure(url, args.turn_seconds, run.service.pid, args))
            if turn == args.rounds - 1:
                heard = hear_new_event(run, waiters)
            if waiters.errors:
                raise Broken(f"long polls failed: {waiters.errors[:3]}")
        finally:
            waiters.stop()
    pairs = list(zip(with_polls, without, strict=True))
    return {
        "without": without,
        "with": with_polls,
        "rps_without": statistics.median(r["rps"] for r in without),
        "rps_with": statistics.median(r["rps"] for r in with_polls),
        "rps_ratio": statistics.median(w["rps"] / o["rps"] for w, o in pairs),
        "p99_without_s": statistics.median(r["p99_s"] for r in without),
        "p99_with_s": statistics.median(r["p99_s"] for r in with_polls),
        "errors": sum(load_errors(r) for r in [*without, *with_polls]),
        "others_cpu": max(r["core0_others"] for r in [*without, *with_polls]),
        **heard,
    }


def hear_new_event(run: Run, waiters: Waiters) -> dict[str, Any]:
    """One customer changes and is refreshed: when did each waiter hear of it?"""
    changed = run.client.post(f"{run.standin_url}/change?customers=1").json()["changed"]
    asked = time.monotonic()
    response = run.client.post(
        f"{run.service_url}/refresh",
        json={"customer_ids": changed},
        headers={"X-API-Key": API_KEY},
        timeout=60,
    )
    if response.status_code != 202:
        raise Broken(f"POST /refresh answered {response.status_code}: {response.text[:200]}")
    deadline = time.monotonic() + 30
    while len(waiters.heard) < WAITERS and time.monotonic() < deadline and not waiters.errors:
        time.sleep(0.05)
    heard = sorted(waiters.heard)
    return {
        "waiters": WAITERS,
        "heard": len(heard),
        "heard_spread_s": heard[-1] - heard[0] if heard else None,
        "heard_first_after_ask_s": heard[0] - asked if heard else None,
        "empty_polls": waiters.empty,
    }


def run_refresh(run: Run) -> dict[str, Any]:
    response = run.client.post(
        f"{run.service_url}/refresh", headers={"X-API-Key": API_KEY}, timeout=60
    )
    if response.status_code != 202:
        raise Broken(f"POST /refresh answered {response.status_code}: {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def refresh_done(run: Run, run_id: str) -> bool:
    body = run.service_get(f"/refresh/{run_id}").json()
    return bool(body["state"] == "done")


def reads_during_refresh(
    run: Run, size: Size, cold_walk: float, args: argparse.Namespace
) -> dict[str, Any]:
    """10% of every customer's jobs change; a refresh of every customer ingests them while
    wrk reads `/jobs?status=failed&limit=100`."""
    before = run.client.get(f"{run.service_url}/metrics", timeout=30).text
    changed = run.client.post(
        f"{run.standin_url}/change?customers={size.customers}&share={CHANGED_SHARE}", timeout=300
    ).json()["changed"]
    ticks_before = process_ticks(run.service.pid)
    started = time.monotonic()
    refresh = run_refresh(run)
    result: dict[str, Any] = {}
    # wrk runs about as long as the refresh will: the cold walk's time, at least 3 s.
    seconds = max(3.0, round(cold_walk))
    done_at: list[float] = []

    def follow() -> None:
        while time.monotonic() < started + 900:
            try:
                if refresh_done(run, refresh["run_id"]):
                    done_at.append(time.monotonic())
                    return
            except Broken:
                pass
            time.sleep(0.1)

    follower = threading.Thread(target=follow, name="follow", daemon=True)
    follower.start()
    read = measure(run.service_url + JOBS_READ, seconds, run.service.pid, args)
    wrk_ended = time.monotonic()
    follower.join(900)
    if not done_at:
        raise Broken("the refresh of the changed jobs did not finish within 900 s")
    ticks = process_ticks(run.service.pid) - ticks_before
    after = run.client.get(f"{run.service_url}/metrics", timeout=30).text
    over_before, probes_before = lag_over(before)
    over_after, probes_after = lag_over(after)
    refresh_s = done_at[0] - started
    jobs_changed = len(changed) * max(1, int(size.jobs * CHANGED_SHARE + 0.999))
    result.update(
        customers_changed=len(changed),
        jobs_changed=jobs_changed,
        refresh_s=refresh_s,
        wrk_s=wrk_ended - started,
        refresh_share_of_wrk=min(refresh_s, wrk_ended - started) / (wrk_ended - started),
        rps=read["rps"],
        p99_s=read["p99_s"],
        p50_s=read.get("p50_s"),
        errors=load_errors(read),
        others_cpu=read["core0_others"],
        service_cpu_s=ticks / CLOCK_TICKS,
        stalls_over_50ms=over_after - over_before,
        probes=probes_after - probes_before,
        max_stall_s=metric(after, "jobs_gateway_event_loop_lag_max_seconds"),
    )
    return result


# -- one case --------------------------------------------------------------------------------


def start_case(
    db: str,
    size: Size,
    concurrency: int,
    procs: Processes,
    client: httpx.Client,
    database_url: str,
    extra_env: dict[str, str],
) -> Run:
    port = free_port()
    argv = [PYTHON, "-m", "bench.standin", "--port", str(port)]
    argv += ["--customers", str(size.customers), "--jobs", str(size.jobs)]
    argv += ["--latency", str(size.latency)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    standin = procs.start(f"standin-{port}", argv, core=LOAD_CORE, env=env)
    standin_url = f"http://127.0.0.1:{port}"
    wait_until_up(client, f"{standin_url}/stats", standin)
    port = free_port()
    argv = [PYTHON, "-m", "app", "serve", "--port", str(port)]
    env = service_env(standin_url, database_url, concurrency)
    env.update(extra_env)
    service = procs.start(f"service-{db}-{port}", argv, core=SERVICE_CORE, env=env)
    service_url = f"http://127.0.0.1:{port}"
    wait_until_up(client, f"{service_url}/healthz", service, seconds=120)
    return Run(procs, client, standin_url, service_url, service, standin)


def cold(run: Run, size: Size, concurrency: int) -> dict[str, Any]:
    case = Case(size.customers, size.jobs, concurrency, (), ("cold",))
    ticks_before = process_ticks(run.service.pid)
    threads_before = thread_ticks(run.service.pid)
    ideal = size.ideal(concurrency)
    deadline = time.monotonic() + 120 + 20 * ideal
    walk = cold_refresh(run, case, deadline)
    ticks = process_ticks(run.service.pid) - ticks_before
    threads = thread_ticks(run.service.pid)
    loop_ticks = threads.get(run.service.pid, 0) - threads_before.get(run.service.pid, 0)
    metrics_text = run.client.get(f"{run.service_url}/metrics", timeout=30).text
    jobs = size.customers * size.jobs
    over, probes = lag_over(metrics_text)
    return {
        "walk_s": walk["walk_s"],
        "ideal_s": ideal,
        "ratio": walk["walk_s"] / ideal,
        "jobs_per_s": jobs / walk["walk_s"],
        "cpu_us_per_job": ticks / CLOCK_TICKS / jobs * 1e6,
        "loop_cpu_us_per_job": loop_ticks / CLOCK_TICKS / jobs * 1e6,
        "cpu_ratio": ticks / CLOCK_TICKS / ideal,
        "service_cpu": walk["core0_service"],
        "others_cpu": walk["core0_others"],
        "requests": walk["jobs_requests"],
        "fair_requests": size.requests,
        "lost": walk["lost"],
        "max_stall_s": metric(metrics_text, "jobs_gateway_event_loop_lag_max_seconds"),
        "stalls_over_50ms": over,
        "probes": probes,
        "peak_rss_mib": memory_mib(run.service.pid)["peak_rss_mib"],
    }


def one_case(
    db: str, size: Size, args: argparse.Namespace, procs: Processes, client: httpx.Client
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "db": db,
        "customers": size.customers,
        "jobs": size.jobs,
        "latency_s": size.latency,
        "concurrency": CONCURRENCY,
        "errors": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-targets-"))
    run: Run | None = None
    try:
        with database(db, workdir, args.postgres_url) as database_url:
            run = start_case(db, size, CONCURRENCY, procs, client, database_url, args.env)
            log(f"  cold refresh ({size.latency * 1000:.0f} ms pages)")
            result["cold"] = c = cold(run, size, CONCURRENCY)
            log(
                f"    walk {c['walk_s']:.2f} s = {c['ratio']:.2f} x fair ideal, "
                f"{c['jobs_per_s']:,.0f} jobs/s, CPU {c['cpu_us_per_job']:.0f} us/job "
                f"(CPU / ideal {c['cpu_ratio']:.2f}), "
                f"max stall {(c['max_stall_s'] or 0) * 1000:.0f} ms, "
                f"others on core 0 {c['others_cpu']:.0%}"
            )
            if c["lost"]:
                raise Broken(f"{c['lost']} customers lost in the cold refresh")
            log("  cached reads vs the bare baseline")
            case = Case(size.customers, size.jobs, CONCURRENCY, tuple(args.read), ())
            result["reads"] = read_load(run, case, args, workdir)
            result["max_stall_after_reads_s"] = stall_now(run)
            if args.reads_only:
                result["peak_rss_mib"] = memory_mib(run.service.pid)["peak_rss_mib"]
                if not run.service.alive():
                    raise Broken(f"the service exited:\n{run.service.tail()}")
                return result
            cursor = newest_cursor(run)
            log("  idle long polls")
            port = int(run.service_url.rsplit(":", 1)[1])
            result["polls"] = p = reads_with_polls(run, port, cursor, args)
            log(
                f"    {WAITERS} polls: {p['rps_with']:,.0f} vs {p['rps_without']:,.0f} req/s "
                f"(x{p['rps_ratio']:.3f}), p99 {p['p99_with_s'] * 1000:.1f} ms vs "
                f"{p['p99_without_s'] * 1000:.1f} ms; heard by {p.get('heard')} of {WAITERS}, "
                f"spread {(p.get('heard_spread_s') or 0) * 1000:.0f} ms"
            )
            p["max_stall_after_s"] = stall_now(run)
            log(f"    max event-loop stall so far: {p['max_stall_after_s'] * 1000:.0f} ms")
            log("  reads while a refresh ingests 10% changed jobs")
            result["during"] = d = reads_during_refresh(run, size, c["walk_s"], args)
            log(
                f"    refresh {d['refresh_s']:.2f} s of wrk's {d['wrk_s']:.2f} s: "
                f"{d['rps']:,.0f} req/s, p99 {d['p99_s'] * 1000:.1f} ms; "
                f"{d['stalls_over_50ms']} of {d['probes']} loop probes over 50 ms, "
                f"others on core 0 {d['others_cpu']:.0%}"
            )
            result["peak_rss_mib"] = memory_mib(run.service.pid)["peak_rss_mib"]
            if not run.service.alive():
                raise Broken(f"the service exited:\n{run.service.tail()}")
    except (Broken, httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"    BROKEN: {exc}")
    finally:
        if run is not None:
            procs.stop(run.service)
            procs.stop(run.standin)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def big_case(args: argparse.Namespace, procs: Processes, client: httpx.Client) -> dict[str, Any]:
    """SQLite at 1,000 x 1,000: the cold refresh finishes; peak RSS after a read of each path."""
    size = BIG
    result: dict[str, Any] = {
        "db": "sqlite",
        "customers": size.customers,
        "jobs": size.jobs,
        "concurrency": BIG_CONCURRENCY,
        "errors": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-targets-big-"))
    run: Run | None = None
    try:
        with database("sqlite", workdir, args.postgres_url) as database_url:
            run = start_case("sqlite", size, BIG_CONCURRENCY, procs, client, database_url, args.env)
            result["cold"] = c = cold(run, size, BIG_CONCURRENCY)
            if c["lost"]:
                raise Broken(f"{c['lost']} customers lost in the cold refresh")
            for path in (JOBS_READ, CUSTOMERS_READ):
                run.service_get(path)
            wrk(run.service_url + JOBS_READ, 3, args.pin)
            result["peak_rss_mib"] = memory_mib(run.service.pid)["peak_rss_mib"]
            log(
                f"    walk {c['walk_s']:.1f} s ({c['ratio']:.2f} x ideal, "
                f"{c['jobs_per_s']:,.0f} jobs/s), peak RSS {result['peak_rss_mib']:.0f} MiB"
            )
    except (Broken, httpx.HTTPError, OSError) as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"    BROKEN: {exc}")
    finally:
        if run is not None:
            procs.stop(run.service)
            procs.stop(run.standin)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- the report --------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("PASS" if ok else "MISS")


def rows_of(r: dict[str, Any]) -> list[list[str]]:
    """The table rows of one case: target, value, baseline of the same run, verdict."""
    if "cold" not in r:
        return [["cold refresh", "broken", "", "", "; ".join(r["errors"])]]
    c, out = r["cold"], []
    t = TARGETS
    out.append(
        [
            "cold refresh × fair ideal",
            f"{c['ratio']:.2f} ({c['walk_s']:.2f} s)",
            f"ideal {c['ideal_s']:.2f} s",
            verdict(c["ratio"] <= t["cold_ratio"]),
            f"CPU ÷ ideal {c['cpu_ratio']:.2f}; others {c['others_cpu']:.0%} of core 0",
        ]
    )
    out.append(
        [
            "ingest jobs/s",
            f"{c['jobs_per_s']:,.0f}",
            "",
            verdict(c["jobs_per_s"] >= t["jobs_per_s"]),
            f"CPU {c['cpu_us_per_job']:.0f} µs/job ({c['loop_cpu_us_per_job']:.0f} event loop); "
            f"20k/s needs 50",
        ]
    )
    stall = c["max_stall_s"] or 0.0
    out.append(
        [
            "max event-loop stall, cold",
            f"{stall * 1000:.0f} ms",
            "",
            verdict(stall <= t["max_stall_s"]),
            f"{c['stalls_over_50ms']} of {c['probes']} probes over 50 ms",
        ]
    )
    for path, read in r.get("reads", {}).items():
        if "service" not in read:
            continue
        s, b = read["service"], read["baseline"]
        out.append(
            [
                f"cached {path} req/s × bare",
                f"{read['rps_ratio']:.2f} ({s['rps']:,.0f})",
                f"{b['rps']:,.0f}",
                verdict(read["rps_ratio"] >= t["read_rps_ratio"]),
                f"others up to {max(s['core0_others'], b['core0_others']):.0%}",
            ]
        )
        out.append(
            [
                f"cached {path} p99 × bare",
                f"{read['p99_ratio']:.2f} ({s['p99_s'] * 1000:.1f} ms)",
                f"{b['p99_s'] * 1000:.1f} ms",
                verdict(read["p99_ratio"] <= t["read_p99_ratio"]),
                "",
            ]
        )
    p = r.get("polls")
    if p:
        out.append(
            [
                f"{WAITERS} idle long polls: req/s × none",
                f"{p['rps_ratio']:.3f} ({p['rps_with']:,.0f})",
                f"{p['rps_without']:,.0f}",
                verdict(p["rps_ratio"] >= t["polls_rps_ratio"]),
                f"others up to {p['others_cpu']:.0%}",
            ]
        )
        out.append(
            [
                f"{WAITERS} idle long polls: p99",
                f"{p['p99_with_s'] * 1000:.1f} ms",
                f"{p['p99_without_s'] * 1000:.1f} ms",
                verdict(p["p99_with_s"] <= t["polls_p99_s"]),
                "",
            ]
        )
        spread = p.get("heard_spread_s")
        out.append(
            [
                "every waiter hears a new event",
                f"{p.get('heard')} of {WAITERS}, last "
                f"{(spread or 0) * 1000:.0f} ms after the first",
                "",
                verdict(
                    p.get("heard") == WAITERS
                    and spread is not None
                    and spread <= t["heard_spread_s"]
                ),
                f"first {(p.get('heard_first_after_ask_s') or 0) * 1000:.0f} ms "
                "after POST /refresh",
            ]
        )
    d = r.get("during")
    if d:
        out.append(
            [
                "p99 of cached reads during a refresh of 10% changed jobs",
                f"{d['p99_s'] * 1000:.1f} ms ({d['rps']:,.0f} req/s)",
                "",
                verdict(d["p99_s"] <= t["p99_during_refresh_s"]),
                f"refresh {d['refresh_s']:.1f} s of wrk's {d['wrk_s']:.1f} s; "
                f"others {d['others_cpu']:.0%}",
            ]
        )
        stall = d["max_stall_s"] or 0.0
        out.append(
            [
                "max event-loop stall, so far",
                f"{stall * 1000:.0f} ms",
                "",
                verdict(stall <= t["max_stall_s"]),
                f"{d['stalls_over_50ms']} of {d['probes']} probes over 50 ms "
                "during the changed refresh",
            ]
        )
    if r.get("peak_rss_mib"):
        out.append(["peak RSS", f"{r['peak_rss_mib']:.0f} MiB", "", "—", ""])
    return out


HEADER = ["target", "value", "baseline (same run)", "verdict", "notes"]


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table (what RESULTS.md takes as it is)."""
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in body)])


def report(results: dict[str, Any]) -> str:
    parts = []
    for r in results["cases"]:
        title = f"{r['db']}, {r['customers']:,} × {r['jobs']:,}"
        if "latency_s" in r:
            title += f" ({r['latency_s'] * 1000:.0f} ms pages, concurrency {r['concurrency']})"
        parts.append(f"**{title}**\n\n" + markdown([HEADER, *rows_of(r)]))
    big = results.get("big")
    if big:
        if "cold" in big:
            c = big["cold"]
            rss = big.get("peak_rss_mib") or float("nan")
            rows = [
                [
                    "SQLite 1,000 × 1,000 finishes, peak RSS",
                    f"{rss:.0f} MiB (walk {c['walk_s']:.1f} s, {c['ratio']:.2f} × ideal, "
                    f"{c['jobs_per_s']:,.0f} jobs/s)",
                    "≤ 200 MiB",
                    verdict(rss <= TARGETS["big_peak_rss_mib"]),
                    f"concurrency {BIG_CONCURRENCY}; CPU {c['cpu_us_per_job']:.0f} µs/job; "
                    f"others {c['others_cpu']:.0%}",
                ]
            ]
        else:
            rows = [["SQLite 1,000 × 1,000", "broken", "", "MISS", "; ".join(big["errors"])]]
        parts.append("**sqlite, 1,000 × 1,000 (memory)**\n\n" + markdown([HEADER, *rows]))
    return "\n\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--size", choices=(*SIZES, "both", "none"), default="both", help="none: only 1,000 x 1,000"
    )
    parser.add_argument("--no-big", action="store_true", help="skip SQLite 1,000 x 1,000")
    parser.add_argument("--quick", action="store_true", help="1 s warm-ups, 2 turns of 2 s")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL)
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra service setting"
    )
    parser.add_argument("--name", default="targets", help="results/NAME.json")
    parser.add_argument(
        "--read",
        action="append",
        choices=(JOBS_READ, CUSTOMERS_READ),
        help="a cached read to load (repeatable; default both)",
    )
    parser.add_argument(
        "--reads-only",
        action="store_true",
        help="after the cold refresh only the cached reads: no long polls, no changed refresh",
    )
    args = parser.parse_args()
    args.read = args.read or [JOBS_READ, CUSTOMERS_READ]
    args.env = dict(item.split("=", 1) for item in args.env)
    # What `bench.load.read_load` and `measure` read.
    args.warmup, args.rounds, args.duration = (1.0, 2, 4.0) if args.quick else (2.0, 3, 12.0)
    args.turn_seconds = args.duration / args.rounds
    args.profile = False
    try:
        args.pin, dbs, postgres = start_run(args.db, args.postgres_url)
    except Broken as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    if "postgres" in dbs and postgres_version(args.postgres_url) is None:
        print(f"FAILED: PostgreSQL does not answer at {args.postgres_url}", file=sys.stderr)
        return 1
    if args.size in ("both", "none"):
        sizes = list(SIZES.values()) if args.size == "both" else []
    else:
        sizes = [SIZES[args.size]]
    logs = Path(tempfile.mkdtemp(prefix="bench-targets-logs-"))
    procs = Processes(logs, args.pin)
    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "machine": {**machine(), "postgres": postgres},
        "git": git_state(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "targets": TARGETS,
        "cases": [],
    }
    core_before = core_ticks(SERVICE_CORE)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        with httpx.Client() as client:
            for db in dbs:
                for size in sizes:
                    log(f"{db}: {size.label} jobs")
                    results["cases"].append(one_case(db, size, args, procs, client))
            if not args.no_big and "sqlite" in dbs:
                log("sqlite: 1,000 × 1,000 jobs (memory)")
                results["big"] = big_case(args, procs, client)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        procs.stop_all()
    core_after = core_ticks(SERVICE_CORE)
    results["core0_busy"] = (core_after[0] - core_before[0]) / max(
        1, core_after[1] - core_before[1]
    )
    results["report"] = report(results)
    log("\n" + results["report"])
    path = write_results(args.name, results)
    log(f"\nwrote {path.relative_to(ROOT)}")
    broken = [
        e for r in [*results["cases"], results.get("big") or {"errors": []}] for e in r["errors"]
    ]
    for e in broken:
        print(f"FAILED: {e}", file=sys.stderr)
    if broken:
        log(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
