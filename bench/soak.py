"""A short soak: the service as users load it, with refreshes, events and webhooks meanwhile.

    python -m bench.soak                           # 200 clients, 30 s; SQLite, then PostgreSQL
    python -m bench.soak --seconds 5 --clients 50 --db sqlite --no-write   # a trial
    python -m bench.soak --report                  # rewrite the RESULTS.md section only

What runs where (2 cores), as in `bench/load.py`: the service (`python -m app serve`, one
uvicorn worker, a real process with its real settings) on core 0; the upstream stand-in
(`bench/standin.py`), the webhook receiver (`bench/webhook_receiver.py`), wrk and this script on
core 1. PostgreSQL is not pinned. Every database gets a fresh stand-in, receiver and service
and an empty database (a SQLite file, or a throwaway PostgreSQL database dropped afterwards).

The service runs with a short `CACHE_TTL_SECONDS` and `REFRESH_INTERVAL_SECONDS`, webhooks on
(`WEBHOOK_URLS` = the receiver, `WEBHOOK_EVENTS` = the alert events and `job.status_changed`),
`OVERDUE_HOURS=0` (the stand-in's jobs are from 2025: every key would be overdue, and no alert
would ever resolve), `RATE_LIMIT_PER_MINUTE` so high it never answers 429 (the limiter's cost
is in the figures, its refusals are not) and `UPSTREAM_RATE_PER_SECOND=0`.

Once the cold refresh is over, for `--seconds`:
- wrk, `--clients` connections, over a Lua script that takes the reads in turn:
  `/jobs?status=failed`, `/jobs?limit=100`, `/customers`, `/summary`, `/alerts?state=open`,
  `/events?after=0&limit=100`;
- every `--change-every` s the stand-in fails or recovers the newest job of `--change` more
  customers (`POST /change?customers=K&offset=N`, N growing: over every customer in turn), so
  the refreshes write events and open and resolve alerts;
- every `--refresh-every` s a `POST /refresh` of every customer, besides the background ones;
- the webhook sender delivers to the receiver, which verifies each signature.

Then: two more `POST /refresh` (the second starts after the first is over, so the stand-in's
last changes are stored, not joined to a walk older than them), every run followed to `done`,
the outbox waited on until `GET /webhooks/deliveries?state=pending` is empty, and the feed
compared with what the receiver recorded.

Verdicts (each PASS or FAIL; the run exits 1 on a FAIL or when something broke):
- **no errors**: wrk saw no non-2xx/3xx answer and no socket error; the service's log has no
  ERROR line and no traceback; every `POST /refresh` got its 202; the service stayed up.
- **nothing lost**: the outbox drained; every event of the `WEBHOOK_EVENTS` types in `/events`
  reached the receiver at least once, with a valid signature and the body `/events` shows; no
  delivery failed; every refresh run started with `POST /refresh` finished.

Figures: req/s and p50/p99 of the read mix, events written (in the soak and in all), deliveries
made, customer refreshes done, the service's peak RSS (and its RSS over time), the event
loop's worst lag and how much of core 0 other processes took meanwhile.

Writes `bench/results/soak.json` and the section "Soak: ..." of `bench/RESULTS.md` (only that
section: the rest of the file is kept; `python -m bench.load` regenerates the file without it,
`--report` puts it back). `--no-write` only prints.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS_DIR, table, write_results
from bench.load import freshness_of
from bench.loadkit import (
    API_KEY,
    LATENCY,
    LOAD_CORE,
    PYTHON,
    ROOT,
    SERVICE_CORE,
    Broken,
    Proc,
    Processes,
    core_ticks,
    database,
    free_port,
    load_errors,
    log,
    memory_mib,
    parse_wrk,
    process_ticks,
    service_get,
    start_run,
    wait_until_up,
)
from bench.loadreport import BUSY_MACHINE, describe_machine, git_state, markdown, ms

BENCH_DIR = ROOT / "bench"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"

READS = (
    "/jobs?status=failed",
    "/jobs?limit=100",
    "/customers",
    "/summary",
    "/alerts?state=open",
    "/events?after=0&limit=100",
)
WEBHOOK_EVENTS = ("alert.opened", "alert.updated", "alert.resolved", "job.status_changed")
# The highest RATE_LIMIT_PER_MINUTE the settings accept (app/config.py: le=10,000,000): wrk
# is one key asking some 400,000 times a minute, so the limiter counts but never refuses.
RATE_LIMIT_PER_MINUTE = 10_000_000
SECTION_PREFIX = "## Soak:"

# How long the cold refresh, the last refresh runs and the outbox may take.
COLD_DEADLINE_SECONDS = 300.0
RUNS_DEADLINE_SECONDS = 180.0


# -- the pieces --------------------------------------------------------------------------------


def service_env(
    args: argparse.Namespace, standin: str, database_url: str, receiver: str, secret: str
) -> dict[str, str]:
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
        CACHE_TTL_SECONDS=f"{args.ttl:g}",
        REFRESH_INTERVAL_SECONDS=f"{args.interval:g}",
        LOG_LEVEL=args.log_level,
        RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT_PER_MINUTE),
        UPSTREAM_RATE_PER_SECOND="0",
        OVERDUE_HOURS="0",
        WEBHOOK_URLS=receiver,
        WEBHOOK_SECRET=secret,
        WEBHOOK_EVENTS=",".join(WEBHOOK_EVENTS),
        PYTHONUNBUFFERED="1",
    )
    return env


def lua_script(paths: tuple[str, ...]) -> str:
    """wrk's script: each request the next read in turn; status codes counted per thread."""
    listed = ", ".join(json.dumps(p) for p in paths)
    return f"""-- bench/soak.py's read mix (generated)
local paths = {{{listed}}}
local i = 0
codes = {{}}
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
response = function(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end
local threads = {{}}
setup = function(thread)
  table.insert(threads, thread)
end
done = function(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("codes")) do
      io.write(string.format("status %d %d\\n", status, n))
    end
  end
end
"""


def run_wrk(url: str, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{args.clients}", f"-d{max(1, round(args.seconds))}s"]
    command += ["--latency", "--timeout", "30s", "-H", f"X-API-Key: {API_KEY}"]
    command += ["-s", str(script), url]
    if args.pin:
        command = ["taskset", "-c", str(LOAD_CORE), *command]
    done = subprocess.run(  # its own session: a Ctrl-C reaches us, and we stop it below
        command, capture_output=True, text=True, timeout=args.seconds + 120, start_new_session=True
    )
    if done.returncode != 0:
        raise Broken(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    result = parse_wrk(done.stdout)
    codes: Counter[str] = Counter()
    for status, n in re.findall(r"^status (\d+) (\d+)$", done.stdout, re.M):
        codes[status] += int(n)
    result["statuses"] = dict(sorted(codes.items()))
    result["output"] = done.stdout
    return result


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {"name{labels}": value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    return values


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(metrics: dict[str, float], name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric: (labels, value)."""
    out = []
    for key, value in metrics.items():
        base, _, labels = key.partition("{")
        if base == name:
            out.append((dict(_LABEL.findall(labels)), value))
    return out


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str, by: str
) -> dict[str, dict[str, Any]]:
    """A histogram's observations between two scrapes, per value of label `by`: count,
    mean, and the bucket bounds that hold the median and the 99th percentile."""
    old = {tuple(sorted(lb.items())): v for lb, v in samples(before, f"{name}_bucket")}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for labels, value in samples(after, f"{name}_bucket"):
        n = value - old.get(tuple(sorted(labels.items())), 0.0)
        bound = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets.setdefault(labels.get(by) or "all", []).append((bound, n))
    sums = {lb.get(by) or "all": v for lb, v in samples(after, f"{name}_sum")}
    sums_before = {lb.get(by) or "all": v for lb, v in samples(before, f"{name}_sum")}
    out: dict[str, dict[str, Any]] = {}
    for key, pairs in buckets.items():
        pairs.sort()
        count = pairs[-1][1] if pairs else 0.0
        if count <= 0:
            continue

        def bound_of(q: float, pairs: list[tuple[float, float]] = pairs, n: float = count) -> float:
            return next(b for b, c in pairs if c >= q * n)

        total = sums.get(key, 0.0) - sums_before.get(key, 0.0)
        out[key] = {
            "count": int(count),
            "mean_s": total / count,
            "p50_le_s": bound_of(0.5),
            "p99_le_s": bound_of(0.99),
            "over_1s": int(count - next((c for b, c in pairs if b >= 1.0), count)),
        }
    return out


def scan_log(path: Path) -> dict[str, Any]:
    """ERROR and CRITICAL lines, tracebacks and warnings in a process's log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"errors": 0, "tracebacks": 0, "warnings": 0, "error_lines": [], "warning_lines": []}
    errors = [x for x in lines if re.search(r"\b(ERROR|CRITICAL)\b", x)]
    tracebacks = [x for x in lines if x.startswith("Traceback")]
    warnings = [x for x in lines if re.search(r"\bWARNING\b", x)]
    return {
        "errors": len(errors),
        "tracebacks": len(tracebacks),
        "warnings": len(warnings),
        "error_lines": errors[:20],
        "warning_lines": warnings[:20],
        "warning_kinds": dict(Counter(_kind(x) for x in warnings).most_common(10)),
    }


def _kind(line: str) -> str:
    """A warning line without its time, numbers and ids: what kind of warning it is."""
    text = line.split(" WARNING ", 1)[-1]
    return re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "N", text)[:300]


# -- one database ------------------------------------------------------------------------------


@dataclass
class Live:
    """The running pieces of one soak, and what its background threads saw."""

    client: httpx.Client
    service: Proc
    service_url: str
    standin_url: str
    receiver_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    changes: int = 0
    change_errors: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    refresh_posts: int = 0
    refresh_errors: list[str] = field(default_factory=list)
    refresh_post_seconds: list[float] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)

    def get(self, path: str, timeout: float = 60.0) -> httpx.Response:
        return service_get(self.client, self.service, self.service_url + path, timeout)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics").text)

    def post_refresh(self, client: httpx.Client) -> None:
        started = time.monotonic()
        try:
            response = client.post(
                f"{self.service_url}/refresh", headers={"X-API-Key": API_KEY}, timeout=60
            )
        except httpx.HTTPError as exc:
            self.refresh_errors.append(f"POST /refresh failed: {exc!r}")
            return
        self.refresh_posts += 1
        self.refresh_post_seconds.append(time.monotonic() - started)
        if response.status_code != 202:
            self.refresh_errors.append(
                f"POST /refresh answered {response.status_code}: {response.text[:200]}"
            )
            return
        self.runs.append(response.json()["run_id"])


def every(stop: threading.Event, seconds: float, action: Any) -> None:
    """`action()` now and then every `seconds` (on a fixed schedule) until `stop` is set."""
    next_at = time.monotonic()
    while not stop.is_set():
        action()
        next_at += seconds
        stop.wait(max(0.0, next_at - time.monotonic()))


def churn(live: Live, args: argparse.Namespace) -> list[threading.Thread]:
    """The background work of the soak: stand-in changes, POST /refresh, RSS samples."""
    change_client, refresh_client = httpx.Client(), httpx.Client()
    offset = 0
    started = time.monotonic()

    def change() -> None:
        nonlocal offset
        url = f"{live.standin_url}/change?customers={args.change}&offset={offset}"
        try:
            response = change_client.post(url, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            live.change_errors.append(repr(exc))
        else:
            live.changes += len(response.json()["changed"])
        # Picks are spread over the customers; a shift of 1 reaches the ones in between.
        offset += 1

    def sample() -> None:
        rss = memory_mib(live.service.pid)["rss_mib"]
        live.rss.append((round(time.monotonic() - started, 1), rss))

    jobs = [
        (args.change_every, change, change_client),
        (args.refresh_every, lambda: live.post_refresh(refresh_client), refresh_client),
        (1.0, sample, None),
    ]
    threads = []
    for seconds, action, client in jobs:

        def body(seconds: float = seconds, action: Any = action, client: Any = client) -> None:
            try:
                # The first change and refresh come after one period: the load starts clean.
                if not live.stop.wait(seconds if client is not None else 0):
                    every(live.stop, seconds, action)
            finally:
                if client is not None:
                    client.close()

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def wait_cold(live: Live, customers: int) -> dict[str, Any]:
    """Until every customer is fresh after the start-up refresh."""
    started = time.monotonic()
    deadline = started + COLD_DEADLINE_SECONDS
    while True:
        fr = freshness_of(live.get("/jobs?limit=1").json())
        if fr["customers"] == customers and fr["fresh"] == customers:
            return {"seconds": time.monotonic() - started, **fr}
        if time.monotonic() > deadline:
            raise Broken(f"the cold refresh was not over after {COLD_DEADLINE_SECONDS:.0f} s: {fr}")
        time.sleep(0.25)


def follow_runs(live: Live, deadline: float) -> dict[str, Any]:
    """Every run of POST /refresh followed until it is done (or the deadline passes)."""
    states: Counter[str] = Counter()
    customers: Counter[str] = Counter()
    unfinished: list[str] = []
    errors: list[str] = []
    for run_id in live.runs:
        while True:
            body = live.get(f"/refresh/{run_id}").json()
            if body["state"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        states[body["state"]] += 1
        if body["state"] != "done":
            unfinished.append(run_id)
        for c in body["customers"]:
            customers[c["state"]] += 1
            if c["state"] == "error" and len(errors) < 10:
                errors.append(f"run {run_id}, customer {c['customer_id']}: {c['error']}")
    return {
        "runs": len(live.runs),
        "states": dict(states),
        "unfinished": unfinished,
        "customer_states": dict(customers),
        "customer_errors": errors,
    }


def pending_deliveries(live: Live) -> int:
    return len(live.get("/webhooks/deliveries?state=pending&limit=500").json()["items"])


def drain(live: Live, timeout: float) -> tuple[bool, float]:
    """Wait until the outbox holds nothing pending: (drained, seconds waited)."""
    started = time.monotonic()
    while pending_deliveries(live):
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started
        time.sleep(0.25)
    return True, time.monotonic() - started


def all_events(live: Live, after: int = 0) -> list[dict[str, Any]]:
    """Every event of the feed after `after`, oldest first."""
    events: list[dict[str, Any]] = []
    while True:
        page = live.get(f"/events?after={after}&limit=1000").json()
        events += page["items"]
        if len(page["items"]) < 1000:
            return events
        after = int(page["next_cursor"])


def count_deliveries(live: Live, state: str) -> int:
    total, cursor = 0, None
    while True:
        path = f"/webhooks/deliveries?state={state}&limit=500"
        page = live.get(path + (f"&cursor={cursor}" if cursor else "")).json()
        total += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return total


def compare(events: list[dict[str, Any]], received_file: Path) -> dict[str, Any]:
    """The feed against what the receiver recorded: at least once, signed, the same body."""
    wanted = {e["id"]: e for e in events if e["type"] in WEBHOOK_EVENTS}
    known = {e["id"] for e in events}
    posts = []
    with contextlib.suppress(OSError):
        for line in received_file.read_text(encoding="utf-8").splitlines():
            posts.append(json.loads(line))
    valid = [p for p in posts if p["valid"]]
    invalid = [p for p in posts if not p["valid"]]
    got: Counter[int] = Counter()
    mismatched: list[int] = []
    wrong_id: list[str] = []
    first_at: dict[int, float] = {}
    for p in valid:
        try:
            event_id = int(p["webhook_id"])
        except (TypeError, ValueError):
            wrong_id.append(str(p["webhook_id"]))
            continue
        got[event_id] += 1
        first_at.setdefault(event_id, p["at"])
        if event_id in wanted and p["event"] != wanted[event_id]:
            mismatched.append(event_id)
        elif event_id not in known or (p["event"] or {}).get("id") != event_id:
            wrong_id.append(str(event_id))
    missing = sorted(set(wanted) - set(got))
    # In order per alert_key: the first arrivals of a key's events, by event id.
    order_violations = 0
    last_of_key: dict[str, int] = {}
    for event_id in sorted(first_at, key=lambda i: first_at[i]):
        event = wanted.get(event_id)
        if event is None or not event.get("alert_key"):
            continue
        key = event["alert_key"]
        if last_of_key.get(key, 0) > event_id:
            order_violations += 1
        last_of_key[key] = max(last_of_key.get(key, 0), event_id)
    return {
        "expected": len(wanted),
        "expected_by_type": dict(Counter(e["type"] for e in wanted.values())),
        "posts": len(posts),
        "valid_posts": len(valid),
        "invalid_signatures": len(invalid),
        "invalid_examples": [p["error"] for p in invalid[:5]],
        "received_unique": len(got),
        "duplicates": sum(n - 1 for n in got.values()),
        "missing": len(missing),
        "missing_ids": missing[:50],
        "body_mismatches": len(mismatched),
        "body_mismatch_ids": mismatched[:20],
        "unexpected": len(wrong_id),
        "unexpected_ids": wrong_id[:20],
        "order_violations": order_violations,
    }


def metric_delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def soak(
    db: str, args: argparse.Namespace, procs: Processes, client: httpx.Client
) -> dict[str, Any]:
    result: dict[str, Any] = {"db": db, "errors": []}
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    mine: list[Proc] = []
    live: Live | None = None
    threads: list[threading.Thread] = []
    try:
        with database(db, workdir, args.postgres_url) as database_url:
            try:
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                port = free_port()
                argv = [PYTHON, "-m", "bench.standin", "--port", str(port)]
                argv += ["--customers", str(args.customers), "--jobs", str(args.jobs)]
                argv += ["--latency", str(LATENCY)]
                standin = procs.start(f"standin-{db}-{port}", argv, core=LOAD_CORE, env=env)
                mine.append(standin)
                standin_url = f"http://127.0.0.1:{port}"

                secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
                received = workdir / "received.jsonl"
                port = free_port()
                argv = [PYTHON, "-m", "bench.webhook_receiver", "--port", str(port)]
                argv += ["--out", str(received)]
                receiver = procs.start(
                    f"receiver-{db}-{port}",
                    argv,
                    core=LOAD_CORE,
                    env={**env, "WEBHOOK_SECRET": secret},
                )
                mine.append(receiver)
                receiver_url = f"http://127.0.0.1:{port}"
                wait_until_up(client, f"{standin_url}/stats", standin)
                wait_until_up(client, f"{receiver_url}/stats", receiver)

                port = free_port()
                argv = [PYTHON, "-m", "app", "serve", "--port", str(port)]
                env = service_env(args, standin_url, database_url, f"{receiver_url}/hook", secret)
                service = procs.start(f"service-{db}-{port}", argv, core=SERVICE_CORE, env=env)
                mine.append(service)
                service_url = f"http://127.0.0.1:{port}"
                wait_until_up(client, f"{service_url}/healthz", service, seconds=120)
                live = Live(client, service, service_url, standin_url, receiver_url)

                cold = wait_cold(live, args.customers)
                result["cold"] = cold
                log(f"    cold refresh over after {cold['seconds']:.1f} s")
                result["rss_after_cold_mib"] = memory_mib(service.pid)["rss_mib"]
                before = live.metrics()
                standin_before = client.get(f"{standin_url}/stats", timeout=10).json()
                events_before = all_events(live)
                first_soak_id = max((e["id"] for e in events_before), default=0)

                script = workdir / "soak.lua"
                script.write_text(lua_script(READS), encoding="utf-8")
                threads = churn(live, args)
                log(f"    wrk -c{args.clients} for {args.seconds:g} s, refreshes and changes")
                core_before, pid_before = core_ticks(SERVICE_CORE), process_ticks(service.pid)
                load_started = time.monotonic()
                load = run_wrk(service_url + "/", script, args)
                load["seconds"] = time.monotonic() - load_started
                core_after, pid_after = core_ticks(SERVICE_CORE), process_ticks(service.pid)
                live.stop.set()
                for thread in threads:
                    thread.join(30)
                total = max(1, core_after[1] - core_before[1])
                load["core0_service"] = (pid_after - pid_before) / total
                load["core0_others"] = max(
                    0.0, (core_after[0] - core_before[0] - pid_after + pid_before) / total
                )
                after_load = live.metrics()
                last_load_id = max(
                    (e["id"] for e in all_events(live, first_soak_id)), default=first_soak_id
                )
                standin_after = client.get(f"{standin_url}/stats", timeout=10).json()
                result["load"] = {k: v for k, v in load.items() if k != "output"}
                # Where the time went, from the service's own metrics over the load.
                result["routes"] = histogram_delta(
                    before, after_load, "jobs_gateway_http_request_seconds", "route"
                )
                result["refresh_seconds"] = histogram_delta(
                    before, after_load, "jobs_gateway_refresh_seconds", "outcome"
                )
                result["cache_lookups"] = {
                    lb.get("result", ""): v
                    - before.get(
                        f'jobs_gateway_cache_lookups_total{{result="{lb.get("result")}"}}', 0
                    )
                    for lb, v in samples(after_load, "jobs_gateway_cache_lookups_total")
                }
                log(
                    f"    {load['rps']:,.0f} req/s, p50 {ms(load.get('p50_s'))}, p99 "
                    f"{ms(load['p99_s'])}, {load_errors(load)} errors; "
                    f"statuses {load['statuses']}; service {load['core0_service']:.0%} "
                    f"of core 0, others {load['core0_others']:.0%}"
                )

                # The stand-in is still now: two more runs store its last changes.
                tail = time.monotonic()
                for _ in range(2):
                    live.post_refresh(client)
                    follow_runs_one(live, live.runs[-1] if live.runs else None)
                deadline = time.monotonic() + RUNS_DEADLINE_SECONDS
                runs = follow_runs(live, deadline)
                result["refresh_runs"] = runs
                runs_over = time.monotonic() - tail
                drained, waited = drain(live, args.drain_timeout)
                events = all_events(live)
                if drained:  # the events just read, delivered too
                    drained, more = drain(live, args.drain_timeout)
                    waited += more
                result["drain"] = {
                    "drained": drained,
                    "seconds_after_load": time.monotonic() - tail,
                    "runs_over_after_load": runs_over,
                    "seconds_waiting_on_outbox": waited,
                    "pending_left": 0 if drained else pending_deliveries(live),
                }
                final = live.metrics()
                result["receiver_stats"] = client.get(f"{receiver_url}/stats", timeout=10).json()
                result["webhooks"] = compare(events, received)
                result["deliveries"] = {
                    state: count_deliveries(live, state) for state in ("delivered", "failed")
                }
                soak_events = [e for e in events if e["id"] > first_soak_id]
                during = [e for e in soak_events if e["id"] <= last_load_id]
                result["events"] = {
                    "total": len(events),
                    "by_type": dict(Counter(e["type"] for e in events)),
                    "in_soak": len(soak_events),
                    "in_soak_by_type": dict(Counter(e["type"] for e in soak_events)),
                    "during_load": len(during),
                    "first_soak_id": first_soak_id,
                    "last_id": max((e["id"] for e in events), default=0),
                }
                result["refreshes"] = {
                    "during_load": {
                        outcome: metric_delta(
                            before,
                            after_load,
                            f'jobs_gateway_refreshes_total{{outcome="{outcome}"}}',
                        )
                        for outcome in ("success", "error")
                    },
                    "total": {
                        outcome: final.get(
                            f'jobs_gateway_refreshes_total{{outcome="{outcome}"}}', 0
                        )
                        for outcome in ("success", "error")
                    },
                    "standin_jobs_requests_during_load": standin_after["jobs_requests"]
                    - standin_before["jobs_requests"],
                    "standin_changes": live.changes,
                    "refresh_posts": live.refresh_posts,
                    "refresh_post_max_s": max(live.refresh_post_seconds, default=0.0),
                }
                result["webhook_attempts"] = {
                    outcome: final.get(
                        f'jobs_gateway_webhook_attempts_total{{outcome="{outcome}"}}', 0
                    )
                    for outcome in ("delivered", "failed")
                }
                result["loop_lag_max_s"] = final.get("jobs_gateway_event_loop_lag_max_seconds")
                result["memory"] = memory_mib(service.pid)
                rss = [v for _, v in live.rss]
                result["rss_samples"] = live.rss
                result["rss_during_load_mib"] = {
                    "first": rss[0] if rss else None,
                    "last": rss[-1] if rss else None,
                    "max": max(rss, default=None),
                }
                result["alive"] = service.alive()
            finally:
                if live is not None:
                    live.stop.set()
                for proc in reversed(mine):
                    was_alive = proc.alive()
                    stopping = time.monotonic()
                    procs.stop(proc)
                    if proc.name.startswith("service"):
                        result["shutdown"] = {
                            "was_alive": was_alive,
                            "exit_code": proc.popen.returncode,
                            "seconds": round(time.monotonic() - stopping, 2),
                        }
                for proc in mine:
                    scanned = scan_log(proc.log)
                    result.setdefault("logs", {})[proc.name.split("-")[0]] = scanned
    except (Broken, httpx.HTTPError, subprocess.SubprocessError, OSError, KeyError) as exc:
        result["errors"].append(str(exc) if isinstance(exc, Broken) else repr(exc))
        log(f"    BROKEN: {exc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if live is not None:
        result["change_errors"] = live.change_errors[:20]
        result["refresh_post_errors"] = live.refresh_errors[:20]
    result["verdicts"] = verdicts(result)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def follow_runs_one(live: Live, run_id: str | None) -> None:
    """Wait for one run to be done (the next one must start after it)."""
    if run_id is None:
        return
    deadline = time.monotonic() + RUNS_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if live.get(f"/refresh/{run_id}").json()["state"] == "done":
            return
        time.sleep(0.25)


def verdicts(r: dict[str, Any]) -> dict[str, Any]:
    """no errors / nothing lost, each with what made it fail."""
    errors: list[str] = list(r["errors"])
    lost: list[str] = []
    load = r.get("load")
    if load is None:
        errors.append("no load was measured")
    else:
        if load["non_2xx_3xx"]:
            errors.append(f"wrk: {load['non_2xx_3xx']} non-2xx/3xx answers ({load['statuses']})")
        socket = sum(load["socket_errors"].values())
        if socket:
            errors.append(f"wrk: {socket} socket errors {load['socket_errors']}")
    service_log = (r.get("logs") or {}).get("service")
    if service_log is None:
        errors.append("the service's log was not read")
    elif service_log["errors"] or service_log["tracebacks"]:
        errors.append(
            f"service log: {service_log['errors']} ERROR lines, "
            f"{service_log['tracebacks']} tracebacks"
        )
    if r.get("refresh_post_errors"):
        errors.append(f"POST /refresh: {len(r['refresh_post_errors'])} failed")
    if r.get("change_errors"):
        errors.append(f"stand-in /change: {len(r['change_errors'])} failed")
    if r.get("alive") is False:
        errors.append("the service died")
    drain = r.get("drain")
    if drain is None:
        lost.append("the outbox was not checked")
    elif not drain["drained"]:
        lost.append(f"{drain['pending_left']} deliveries still pending")
    hooks = r.get("webhooks")
    if hooks is None:
        lost.append("the deliveries were not compared with the feed")
    else:
        for key, what in (
            ("missing", "events never received"),
            ("invalid_signatures", "deliveries with an invalid signature"),
            ("body_mismatches", "deliveries whose body differs from /events"),
            ("unexpected", "deliveries of no such event"),
        ):
            if hooks[key]:
                lost.append(f"{hooks[key]} {what}")
    if (r.get("deliveries") or {}).get("failed"):
        lost.append(f"{r['deliveries']['failed']} deliveries failed")
    runs = r.get("refresh_runs")
    if runs is None:
        lost.append("the refresh runs were not followed")
    elif runs["unfinished"]:
        lost.append(f"{len(runs['unfinished'])} of {runs['runs']} refresh runs did not finish")
    return {
        "no_errors": not errors,
        "nothing_lost": not lost,
        "error_reasons": errors,
        "lost_reasons": lost,
    }


# -- the report ----------------------------------------------------------------------------------


def verdict_text(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def complete(r: dict[str, Any]) -> bool:
    """Whether a run got as far as its figures (a broken one stops where it broke)."""
    keys = ("load", "events", "webhooks", "deliveries", "refresh_runs", "drain", "refreshes")
    return all(k in r for k in (*keys, "memory", "rss_during_load_mib", "logs"))


def figure_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [
        [
            "db",
            "req/s",
            "p50",
            "p99",
            "errors (wrk / log)",
            "events (soak / all)",
            "deliveries (received / dupes)",
            "refreshes (/s)",
            "POST /refresh runs",
            "outbox drained",
            "peak RSS",
            "others on core 0",
            "no errors",
            "nothing lost",
        ]
    ]
    for r in runs:
        load, v = r.get("load"), r["verdicts"]
        if load is None or not complete(r):
            rows.append([r["db"], *(["—"] * 11), verdict_text(v["no_errors"]), verdict_text(False)])
            continue
        log_ = r["logs"]["service"]
        hooks, runs_ = r["webhooks"], r["refresh_runs"]
        refreshes = r["refreshes"]
        rows.append(
            [
                r["db"],
                f"{load['rps']:,.0f}",
                ms(load.get("p50_s")),
                ms(load["p99_s"]),
                f"{load_errors(load)} / {log_['errors'] + log_['tracebacks']}",
                f"{r['events']['in_soak']:,} / {r['events']['total']:,}",
                f"{hooks['received_unique']:,} of {hooks['expected']:,} / {hooks['duplicates']}",
                f"{refreshes['during_load']['success']:,.0f} "
                f"({refreshes['during_load']['success'] / load['seconds']:.1f})"
                + (
                    f" ({refreshes['during_load']['error']:,.0f} failed)"
                    if refreshes["during_load"]["error"]
                    else ""
                ),
                f"{runs_['states'].get('done', 0)} of {runs_['runs']} done "
                f"({r['drain']['runs_over_after_load']:.1f} s)",
                f"{r['drain']['seconds_waiting_on_outbox']:.1f} s after the last run"
                if r["drain"]["drained"]
                else f"no: {r['drain']['pending_left']} pending",
                f"{r['memory']['peak_rss_mib']:.0f} MiB",
                f"{load['core0_others']:.0%}",
                verdict_text(v["no_errors"]),
                verdict_text(v["nothing_lost"]),
            ]
        )
    return rows


def section(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    title = (
        f"{SECTION_PREFIX} {s['clients']} clients, {s['seconds']:g} s, refreshes and webhooks "
        "(issue 9)"
    )
    lines = [
        title,
        "",
        f"`python -m bench.soak {' '.join(results['argv'])}`".replace(" `", "`")
        + f" at {m['at']}, git {results['git']}. Written by `bench/soak.py` (`--report` "
        "rewrites this section from `results/soak.json`); the rest of this file is "
        "`bench/load.py`'s.",
        "",
        f"One service (core 0) over {s['customers']} customers × {s['jobs']} jobs of the stand-in "
        f"(50 ms per request), `CACHE_TTL_SECONDS={s['ttl']:g}`, "
        f"`REFRESH_INTERVAL_SECONDS={s['interval']:g}`, `OVERDUE_HOURS=0`, "
        f"`RATE_LIMIT_PER_MINUTE={RATE_LIMIT_PER_MINUTE:,}` (never refuses), "
        "`UPSTREAM_RATE_PER_SECOND=0`, `LOG_LEVEL=" + s["log_level"] + "`, webhooks "
        f"(`{','.join(WEBHOOK_EVENTS)}`) to `bench/webhook_receiver.py`, which verifies each "
        f"signature with `standardwebhooks`. After the cold refresh, for {s['seconds']:g} s: "
        f"`wrk -t1 -c{s['clients']} --timeout 30s` (core 1) over "
        + ", ".join(f"`{p}`" for p in READS)
        + f" in turn; every {s['change_every']:g} s the stand-in fails or recovers the newest "
        f"job of {s['change']} more customers; every {s['refresh_every']:g} s a `POST /refresh`"
        " of every customer. Then two more `POST /refresh`, every run followed to `done`, the "
        "outbox waited on until nothing is pending, and `/events` compared with what the "
        "receiver got.",
        "",
        markdown(figure_rows(results["runs"])),
        "",
        "*events*: written after the cold refresh (its `job.created` and first alerts are in "
        "*all*). *deliveries*: distinct events of the webhook types the receiver got, with a "
        "valid signature and the body `/events` shows, of those in `/events`; dupes = repeats "
        "(at least once). *refreshes*: customer refreshes that succeeded during the load "
        "(`jobs_gateway_refreshes_total`), and per second. *POST /refresh runs*: those "
        "finished, and when the last one was over after the load. *outbox drained*: when "
        "`GET /webhooks/deliveries?state=pending` was empty after that. *peak RSS*: the "
        "service's VmHWM at the end.",
        "",
    ]
    busiest = max((r["load"]["core0_others"] for r in results["runs"] if r.get("load")), default=0)
    if busiest > BUSY_MACHINE:
        lines += [
            f"**The machine was shared**: other processes took up to {busiest:.0%} of core 0 "
            "during the load; read the rates as rough.",
            "",
        ]
    for r in results["runs"]:
        notes = details(r, results["settings"])
        if notes:
            lines += [f"{r['db']}:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines).rstrip() + "\n"


def details(r: dict[str, Any], settings: dict[str, Any] | None = None) -> list[str]:
    """What to say about one run besides the table: the reasons of a FAIL, then figures."""
    v = r["verdicts"]
    notes = [f"error: {e}" for e in v["error_reasons"]]
    notes += [f"lost: {e}" for e in v["lost_reasons"]]
    service_log = (r.get("logs") or {}).get("service") or {}
    for line in service_log.get("error_lines", [])[:5]:
        notes.append(f"service log: `{line[:300]}`")
    if not complete(r):
        return notes
    ev, hooks, refreshes = r["events"], r["webhooks"], r["refreshes"]
    notes.append(
        "events written after the cold refresh: "
        + ", ".join(f"{n:,} {t}" for t, n in sorted(ev["in_soak_by_type"].items()))
        + f"; of the webhook types in the whole feed: {hooks['expected']:,} "
        f"({', '.join(f'{n:,} {t}' for t, n in sorted(hooks['expected_by_type'].items()))})"
    )
    notes.append(
        f"webhooks: {hooks['posts']:,} POSTs received, {hooks['invalid_signatures']} with a bad "
        f"signature, {hooks['duplicates']} repeats, {hooks['missing']} events never received, "
        f"{hooks['order_violations']} out of order per alert_key; the outbox has "
        f"{r['deliveries']['delivered']:,} delivered and {r['deliveries']['failed']} failed "
        f"deliveries; the service counted {r['webhook_attempts']['delivered']:,.0f} delivered "
        f"and {r['webhook_attempts']['failed']:,.0f} failed attempts"
    )
    runs = r["refresh_runs"]
    if settings and settings.get("interval"):
        scheduled = settings["customers"] / settings["interval"]
        done = refreshes["during_load"]["success"] / r["load"]["seconds"]
        notes.append(
            f"the background refresh asks for {scheduled:.0f} customer refreshes a second "
            f"({settings['customers']} customers every {settings['interval']:g} s): "
            f"{done:.1f} a second were done during the load ({done / scheduled:.0%})"
        )
    notes.append(
        f"refreshes: {refreshes['standin_changes']:,} stand-in changes; "
        f"{refreshes['refresh_posts']} `POST /refresh` (slowest answer "
        f"{ms(refreshes['refresh_post_max_s'])}), runs {runs['states']}, their customers "
        f"{runs['customer_states']}; the stand-in served "
        f"{refreshes['standin_jobs_requests_during_load']:,} jobs pages during the load"
    )
    rss = r["rss_during_load_mib"]
    if rss["first"] is not None:
        notes.append(
            f"service RSS: {r['rss_after_cold_mib']:.0f} MiB after the cold refresh, "
            f"{rss['first']:.0f} → {rss['last']:.0f} MiB during the load (max "
            f"{rss['max']:.0f}), peak {r['memory']['peak_rss_mib']:.0f} MiB; event loop's "
            f"worst lag {ms(r['loop_lag_max_s'])}; service {r['load']['core0_service']:.0%} "
            "of core 0 during the load"
        )
    routes = r.get("routes") or {}
    if routes:
        notes.append(
            "by route, from the service's own histogram during the load (count, mean, p99 as "
            "a bucket bound, answers over 1 s): "
            + "; ".join(
                f"`{route}` {x['count']:,}, {ms(x['mean_s'])}, ≤ {_bound(x['p99_le_s'])}, "
                f"{x['over_1s']:,}"
                for route, x in sorted(routes.items(), key=lambda kv: -kv[1]["mean_s"])
            )
        )
    took = (r.get("refresh_seconds") or {}).get("all")
    if took:
        notes.append(
            f"a customer's refresh during the load took {ms(took['mean_s'])} on average "
            f"(p99 ≤ {_bound(took['p99_le_s'])}; the stand-in answers in 50 ms); cache "
            f"lookups {r.get('cache_lookups')}"
        )
    if service_log.get("warnings"):
        kinds = "; ".join(f"{n}× `{k}`" for k, n in service_log["warning_kinds"].items())
        notes.append(f"service log: {service_log['warnings']} WARNING lines: {kinds}")
    shutdown = r.get("shutdown")
    if shutdown:
        notes.append(
            f"SIGTERM at the end: exit code {shutdown['exit_code']} after "
            f"{shutdown['seconds']:.1f} s"
        )
    return notes


def _bound(seconds: float) -> str:
    return "∞" if seconds == float("inf") else ms(seconds)


def replace_section(text: str, new: str) -> str:
    """`text` with its soak section replaced by `new`, or `new` appended."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, x in enumerate(lines) if x.startswith(SECTION_PREFIX)), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + new
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + new + ("\n" + rest if rest else "")


def print_report(results: dict[str, Any]) -> None:
    log("\n" + table(figure_rows(results["runs"])))
    for r in results["runs"]:
        log(f"\n{r['db']}:")
        for note in details(r, results["settings"]):
            log(f"  - {note}")


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="of load (default 30)")
    parser.add_argument("--clients", type=int, default=200, help="wrk connections (default 200)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=POSTGRES_ADMIN_URL, help="an existing database")
    parser.add_argument("--customers", type=int, default=100, help="stand-in customers")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per customer")
    parser.add_argument("--ttl", type=float, default=10.0, help="CACHE_TTL_SECONDS (10)")
    parser.add_argument("--interval", type=float, default=4.0, help="REFRESH_INTERVAL_SECONDS (4)")
    parser.add_argument(
        "--refresh-every", type=float, default=5.0, help="seconds between POST /refresh (5)"
    )
    parser.add_argument(
        "--change-every", type=float, default=1.0, help="seconds between stand-in changes (1)"
    )
    parser.add_argument("--change", type=int, default=5, help="customers changed each time (5)")
    parser.add_argument("--log-level", default="WARNING", help="the service's LOG_LEVEL")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds the outbox may take to drain"
    )
    parser.add_argument("--no-write", action="store_true", help="print only (trial runs)")
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: rewrite the RESULTS.md section from results/soak.json",
    )
    args = parser.parse_args()
    if args.report:
        stored: dict[str, Any] = json.loads((RESULTS_DIR / "soak.json").read_text("utf-8"))
        print_report(stored)
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), section(stored)))
        log("\nwrote the soak section of bench/RESULTS.md")
        return 0
    try:
        args.pin, dbs, postgres = start_run(args.db, args.postgres_url)
    except Broken as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1

    results: dict[str, Any] = {
        "argv": sys.argv[1:],
        "machine": describe_machine(postgres),
        "git": git_state(),
        "settings": {
            "seconds": args.seconds,
            "clients": args.clients,
            "customers": args.customers,
            "jobs": args.jobs,
            "ttl": args.ttl,
            "interval": args.interval,
            "refresh_every": args.refresh_every,
            "change_every": args.change_every,
            "change": args.change,
            "log_level": args.log_level,
            "latency_s": LATENCY,
            "reads": list(READS),
            "webhook_events": list(WEBHOOK_EVENTS),
            "rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
            "pinned": args.pin,
        },
        "runs": [],
    }
    logs = Path(tempfile.mkdtemp(prefix="bench-soak-logs-"))
    procs = Processes(logs, args.pin)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        with httpx.Client() as client:
            for db in dbs:
                log(
                    f"{db}: {args.customers} customers × {args.jobs} jobs, {args.clients} "
                    f"clients, {args.seconds:g} s"
                )
                results["runs"].append(soak(db, args, procs, client))
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        procs.stop_all()

    print_report(results)
    if not args.no_write:
        path = write_results("soak", results)
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), section(results)))
        log(f"\nwrote {path.relative_to(ROOT)} and the soak section of bench/RESULTS.md")
    failed = [
        r
        for r in results["runs"]
        if not all(r["verdicts"][k] for k in ("no_errors", "nothing_lost"))
    ]
    for r in failed:
        reasons = r["verdicts"]["error_reasons"] + r["verdicts"]["lost_reasons"]
        print(f"FAILED: {r['db']}: {'; '.join(reasons)}", file=sys.stderr)
    if failed:
        log(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
