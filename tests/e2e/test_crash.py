"""`kill -9` mid-refresh leaves nothing half-written (CONTRACT.md, Persistence).

A real `jobs-gateway serve` process refreshes every customer of the simulator (served over
HTTP from this test's process, so that its data and counters are at hand) into SQLite or
PostgreSQL, and is killed with SIGKILL while the refresh writes: some customers committed,
others mid-walk, some with changed rows spilled to `job_stage`. After each kill the database
is read directly, before and after `serve` is started again on it:

- SQLite's `PRAGMA integrity_check` is `ok`;
- every customer's `job_count` is its number of jobs; every job, history row and job event
  carries the time of one of its customer's successful snapshots (a committed merge);
- each stored job was told once by `job.created`, no job was told that is not stored, each
  status change was told once, history and events agree, alert rows and alert events agree;
- what was committed before the kill is still there (snapshots, jobs, events), and the feed
  read after a restart begins with every event read before it;
- rows the dead refresh staged are not in `jobs` and not served; a start-up purges them once
  they are older than `ORPHAN_STAGE_AGE`;
- on PostgreSQL the dead process's leases expire within `LEASE_SECONDS` of the kill, and the
  restarted process hands them back at start-up, so its refresh walks every customer;
- the restarted process is ready, replays the events the database holds, refreshes every
  customer, serves exactly the stored jobs, and stops with exit code 0 on SIGTERM.

Between rounds the simulator's data changes (new jobs, then status changes of many), so later
rounds write updates, status-change events and alerts, not only inserts.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import functools
import io
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from app.clock import iso
from app.refresh import LEASE_SECONDS
from app.simulator import Simulator, SimulatorConfig
from app.store.merge import MEMORY_ROWS
from app.store.stage import ORPHAN_STAGE_AGE
from tests.conftest import SecretScan
from tests.databases import asyncpg_dsn
from tests.e2e.conftest import simulator_over_http
from tests.e2e.test_serve import KEY, free_port, start

pytestmark = pytest.mark.e2e

CUSTOMERS = 16
# Enough that a walk of the simulator's own jobs outlasts the test's look every 20 ms, so a
# kill lands mid-refresh; the HEAVY customers' scripted jobs make the long walks that spill.
# (1,000 each wrote four times the rows for the same kills, and a third of the suite's time.)
JOBS_PER_CUSTOMER = 250
HEAVY = 2  # customers with SCRIPTED more jobs of the test's making
SCRIPTED = 2_100  # more than MEMORY_ROWS: their creation, and each change of them, spills
LIGHT_SCRIPTED = 10  # jobs of the test's making in each other customer, from round 2
PARTIAL_KILL = 4  # round 1 is killed once this many customers committed
SLACK = timedelta(seconds=2)  # between the test's clock at the kill and the server's

assert SCRIPTED > MEMORY_ROWS


# -- the processes ---------------------------------------------------------------------------

_OUTPUT: dict[int, tuple[threading.Thread, list[bytes]]] = {}


def _drain(stream: IO[bytes], chunks: list[bytes]) -> None:
    for line in iter(stream.readline, b""):
        chunks.append(line)


def launch(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """`jobs-gateway serve`, its output read as it comes (a full pipe would block it)."""
    process = start(["serve", "--port", str(port)], env)
    assert process.stdout is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(process.stdout, chunks), daemon=True)
    reader.start()
    _OUTPUT[process.pid] = (reader, chunks)
    return process


def output_of(process: subprocess.Popen[bytes]) -> str:
    """Everything the (ended) process printed."""
    reader, chunks = _OUTPUT.pop(process.pid)
    reader.join(10)
    if process.stdout is not None:
        process.stdout.close()
    return b"".join(chunks).decode(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, as an orchestrator stops it; what it printed."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return output_of(process)


def crash(process: subprocess.Popen[bytes]) -> str:
    """SIGKILL, and reaped: a process that is gone, not a zombie that still has its pid."""
    process.kill()
    process.wait()
    return output_of(process)


def wait_ready(base: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=2) as client:  # one for every look (tests/e2e/test_serve.py)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {process.returncode}:\n{output_of(process)}"
                )
            try:
                if client.get(f"{base}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"{base}/readyz did not answer 200 in {seconds}s")


@pytest.fixture
def upstream() -> Iterator[tuple[str, Simulator]]:
    """The simulator over HTTP, from this process: enough rows that a refresh writes a while."""
    config = SimulatorConfig(
        seed=23, customers=CUSTOMERS, jobs_per_customer=JOBS_PER_CUSTOMER, latency_seconds=0.01
    )
    sim = Simulator(config)
    with simulator_over_http(sim) as base:
        yield base, sim


# -- the database, read directly -------------------------------------------------------------


class Store:
    """The gateway's database as this test reads it: sqlite3, or asyncpg."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith("postgresql")
        self.path = url.removeprefix("sqlite:///")

    def read(self, *statements: tuple[str, Sequence[Any]]) -> list[list[tuple[Any, ...]]]:
        """The statements' rows, all read from one snapshot of the database."""
        if self.postgres:
            return asyncio.run(self._postgres(statements, write=False))
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("BEGIN")
            return [conn.execute(sql, params).fetchall() for sql, params in statements]
        finally:
            conn.close()

    def one(self, sql: str, *params: Any) -> Any:
        return self.read((sql, params))[0][0][0]

    def write(self, sql: str, *params: Any) -> None:
        if self.postgres:
            asyncio.run(self._postgres([(sql, params)], write=True))
            return
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute(sql, params)
        finally:
            conn.close()

    def time(self, value: datetime) -> Any:
        """A time as the store keeps it: naive UTC text on SQLite."""
        if self.postgres:
            return value
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    async def _postgres(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, write: bool
    ) -> list[list[tuple[Any, ...]]]:
        conn = await asyncpg.connect(asyncpg_dsn(self.url), timeout=10)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=not write):
                out = []
                for sql, params in statements:
                    numbered = _numbered(sql)
                    out.append([tuple(r) for r in await conn.fetch(numbered, *params)])
                return out
        finally:
            await conn.close()


def _numbered(sql: str) -> str:
    """`?` marks as asyncpg's `$1`, `$2`, ..."""
    marks = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(marks)}", sql)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'crash.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    try:
        yield Store(url)
    finally:
        # What was read of this store is of no use to the next test: let it go.
        when.cache_clear()
        as_shown.cache_clear()


# Each round reads the whole store again, mostly the same times and events as before: each
# stored value is converted once (a pure function of it), not once per reading.
@functools.cache
def when(value: Any) -> datetime:
    """A stored time, aware UTC (SQLite gives naive text)."""
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# (id, type, at, customer_id, job_id, alert_key, data): an event as /events shows it
Event = tuple[int, str, str | None, str, str | None, str | None, Any]


@functools.cache
def as_shown(
    eid: int, type_: str, at: Any, cid: str, jid: str | None, key: str | None, data: str
) -> Event:
    """A stored event as /events shows it."""
    return (eid, type_, iso(when(at)), cid, jid, key, json.loads(data))


@dataclass
class Stored:
    """What the database holds, read in one snapshot (and found consistent)."""

    successes: dict[str, set[int]]  # customer -> ids of its successful snapshots
    jobs: dict[str, int]  # customer -> jobs stored
    job_rows: dict[tuple[str, str], tuple[str, int | None, str | None]]  # -> status, hash, seen
    events: list[Event]
    stage: set[tuple[str, str, str, int, str]]  # stage id, customer, job id, hash, status
    leases: list[tuple[str, str, datetime]]  # customer, holder, expires_at

    @property
    def stage_ids(self) -> set[str]:
        return {s[0] for s in self.stage}


def read_store(store: Store, where: str) -> Stored:
    """The database's state, every invariant of a refresh that is committed whole or not at
    all checked on it; `where` names the moment in the failures."""
    (
        customers,
        snapshots,
        jobs,
        history,
        history_times,
        events,
        alerts,
        stage,
        leases,
    ) = store.read(
        ("SELECT id, job_count, data_version FROM customers", ()),
        ("SELECT id, customer_id, outcome, finished_at FROM snapshots", ()),
        (
            "SELECT customer_id, job_id, status, content_hash, first_seen_at, last_seen_at, "
            "unreported_since FROM jobs",
            (),
        ),
        ("SELECT customer_id, job_id, COUNT(*) FROM job_status_history GROUP BY 1, 2", ()),
        ("SELECT DISTINCT customer_id, changed_at FROM job_status_history", ()),
        ("SELECT id, type, at, customer_id, job_id, alert_key, data FROM events ORDER BY id", ()),
        ("SELECT alert_key, state FROM alerts", ()),
        ("SELECT stage_id, customer_id, job_id, content_hash, status FROM job_stage", ()),
        (
            "SELECT customer_id, holder, expires_at FROM refresh_leases"
            if store.postgres
            else "SELECT 1 WHERE 0 = 1",
            (),
        ),
    )
    successes: dict[str, set[int]] = defaultdict(set)
    success_times: dict[str, set[datetime]] = defaultdict(set)
    for sid, cid, outcome, finished in snapshots:
        if outcome == "success":
            successes[cid].add(sid)
            success_times[cid].add(when(finished))

    # The job count the merge wrote is the count of jobs; jobs come with their snapshot.
    counts = Counter(cid for cid, *_ in jobs)
    for cid, job_count, version in customers:
        assert job_count == counts[cid], (
            f"{where}: customer {cid} says {job_count} jobs, has {counts[cid]}"
        )
        if counts[cid]:
            assert successes[cid], f"{where}: customer {cid} has jobs but no successful snapshot"
            assert version > 0, f"{where}: customer {cid} has jobs at data version {version}"
    assert set(counts) <= {c[0] for c in customers}, f"{where}: jobs of unknown customers"

    # Every job was written by a committed merge: its times are a successful snapshot's.
    job_rows = {}
    for cid, jid, status, digest, first, last, unreported in jobs:
        times = success_times[cid]
        assert when(first) in times and when(last) in times, (
            f"{where}: job {cid}:{jid} seen at {first}..{last}, no successful snapshot then"
        )
        assert unreported is None or when(unreported) in times, f"{where}: {cid}:{jid}"
        job_rows[(cid, jid)] = (status, digest, iso(when(last)))
    for cid, changed_at in history_times:
        assert when(changed_at) in success_times[cid], (
            f"{where}: history of customer {cid} at {changed_at}, no successful snapshot then"
        )

    # The feed: ids only grow; each stored job created once, each status change told once.
    out = [as_shown(*row) for row in events]
    ids = [e[0] for e in out]
    assert ids == sorted(set(ids)), f"{where}: event ids repeat or go back"
    created = Counter((e[3], e[4]) for e in out if e[1] == "job.created")
    changed = Counter(
        (e[3], e[4], json.dumps(e[6], sort_keys=True)) for e in out if e[1] == "job.status_changed"
    )
    twice = [k for k, n in created.items() if n > 1]
    assert not twice, f"{where}: {len(twice)} jobs created twice in the feed, e.g. {twice[:3]}"
    missing = set(job_rows) - set(created)
    assert not missing, (
        f"{where}: {len(missing)} stored jobs never told, e.g. {sorted(missing)[:3]}"
    )
    ghosts = set(created) - set(job_rows)
    assert not ghosts, f"{where}: {len(ghosts)} jobs told but not stored, e.g. {sorted(ghosts)[:3]}"
    retold = [k for k, n in changed.items() if n > 1]
    assert not retold, f"{where}: {len(retold)} status changes told twice, e.g. {retold[:2]}"
    # A job event is told at its snapshot's time (to the second, as /events shows it).
    success_at = {cid: {iso(t) for t in times} for cid, times in success_times.items()}
    latest: dict[tuple[str, str], str] = {}
    for e in out:
        if e[1] in ("job.created", "job.status_changed"):
            assert e[2] in success_at.get(e[3], ()), (
                f"{where}: event {e[0]} at {e[2]}, no successful snapshot of {e[3]} then"
            )
            latest[(e[3], str(e[4]))] = e[6]["job"]["status"]
    told_changes = Counter((e[3], e[4]) for e in out if e[1] == "job.status_changed")
    for cid, jid, n in history:
        assert n == 1 + told_changes[(cid, jid)], (
            f"{where}: job {cid}:{jid} has {n} history rows and "
            f"{told_changes[(cid, jid)]} status changes told"
        )
    assert sum(n for *_, n in history) == len(job_rows) + sum(told_changes.values())
    wrong = [k for k, (status, *_) in job_rows.items() if latest.get(k) != status]
    assert not wrong, f"{where}: {len(wrong)} jobs whose status the feed tells otherwise"

    # Alerts and their events are written together.
    opened = Counter(e[5] for e in out if e[1] == "alert.opened")
    resolved = Counter(e[5] for e in out if e[1] == "alert.resolved")
    assert Counter(key for key, _ in alerts) == opened, f"{where}: alerts and alert.opened differ"
    assert Counter(key for key, state in alerts if state == "resolved") == resolved, (
        f"{where}: resolved alerts and alert.resolved differ"
    )

    return Stored(
        successes=dict(successes),
        jobs=dict(counts),
        job_rows=job_rows,
        events=out,
        stage={(s, c, j, h, st) for s, c, j, h, st in stage},
        leases=[(c, h, when(x)) for c, h, x in leases],
    )


@dataclass
class BeforeKill:
    """What was committed a moment before the kill: it must all still be there."""

    successes: dict[str, set[int]]
    jobs: dict[str, int]
    last_event: int
    events: int


def read_before_kill(store: Store) -> BeforeKill:
    snapshots, jobs, events = store.read(
        ("SELECT id, customer_id FROM snapshots WHERE outcome = 'success'", ()),
        ("SELECT customer_id, COUNT(*) FROM jobs GROUP BY customer_id", ()),
        ("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM events", ()),
    )
    successes: dict[str, set[int]] = defaultdict(set)
    for sid, cid in snapshots:
        successes[cid].add(sid)
    return BeforeKill(dict(successes), dict(jobs), events[0][0], events[0][1])


def assert_kept(before: BeforeKill | Stored, now: Stored, where: str) -> None:
    """Everything committed `before` is still there."""
    for cid, ids in before.successes.items():
        assert ids <= now.successes.get(cid, set()), f"{where}: snapshots of {cid} lost"
    for cid, count in before.jobs.items():
        assert now.jobs.get(cid, 0) >= count, f"{where}: {cid} had {count} jobs, now fewer"
    if isinstance(before, Stored):
        assert now.events[: len(before.events)] == before.events, f"{where}: the feed changed"
    else:
        kept = [e for e in now.events if e[0] <= before.last_event]
        assert len(kept) == before.events, f"{where}: committed events lost"


# -- the gateway, over HTTP ------------------------------------------------------------------


def read_events(store: Store) -> list[Event]:
    """The events the database holds, as /events shows them."""
    (rows,) = store.read(
        ("SELECT id, type, at, customer_id, job_id, alert_key, data FROM events ORDER BY id", ())
    )
    return [as_shown(*row) for row in rows]


def feed(client: httpx.Client, after: int = 0) -> list[Event]:
    """Every event `/events` replays after `after`."""
    out: list[Event] = []
    while True:
        response = client.get("/events", params={"after": after, "limit": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        out += [
            (e["id"], e["type"], e["at"], e["customer_id"], e["job_id"], e["alert_key"], e["data"])
            for e in body["items"]
        ]
        if not body["items"]:
            ids = [e[0] for e in out]
            assert ids == sorted(set(ids)) and all(i > 0 for i in ids), "ids must only grow"
            return out
        after = int(body["next_cursor"])


def served(client: httpx.Client, customer_ids: Sequence[str] | None = None) -> dict[str, tuple]:
    """Every job `/jobs.csv` serves: id -> (status, fetched_at)."""
    params = {"customer_id": ",".join(customer_ids)} if customer_ids else {}
    response = client.get("/jobs.csv", params=params)
    assert response.status_code == 200, response.text
    rows = csv.DictReader(io.StringIO(response.text))
    return {r["id"]: (r["status"], r["fetched_at"]) for r in rows}


def stored_jobs(stored: Stored, customer_ids: set[str] | None = None) -> dict[str, tuple]:
    return {
        f"{cid}:{jid}": (status, seen)
        for (cid, jid), (status, _, seen) in stored.job_rows.items()
        if customer_ids is None or cid in customer_ids
    }


def assert_feed_between(low: list[Event], feed_: list[Event], high: list[Event]) -> None:
    """The feed replays what the database held before (`low`) and holds now (`high`)."""
    assert feed_[: len(low)] == low, "the feed does not replay the events stored before"
    assert high[: len(feed_)] == feed_, "the feed tells what the database does not hold"


# -- the rounds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One refresh killed: once `committed` customers committed in it, or (`staged`) once it
    staged rows, or after `seconds` (at the latest, and with neither); the simulator's data
    `change`d before it."""

    name: str
    seconds: float
    change: Callable[[Simulator, list[str], datetime], None]
    committed: int | None = None
    staged: bool = False
    slow: float = 0.0  # seconds more for each page of the HEAVY customers, until the kill


def put_scripted(heavy: int, light: int | None) -> Callable[[Simulator, list[str], datetime], None]:
    """Every job of the test's making with status `heavy` (HEAVY customers) or `light`
    (the others; None: none yet)."""

    def change(sim: Simulator, ids: list[str], start: datetime) -> None:
        for n, cid in enumerate(ids):
            many = n < HEAVY
            if not many and light is None:
                continue
            for i in range(SCRIPTED if many else LIGHT_SCRIPTED):
                sim.put_job(
                    cid,
                    f"FBCRASH{i:05d}",
                    status=heavy if many else light,
                    start=start + timedelta(seconds=i),
                    name=f"Crash test {i}",
                )

    return change


ROUNDS = (
    # The heavy customers' walks take 12 s at least here: the kill lands before they commit,
    # however fast the others commit (SQLite's writer commits waiting merges together).
    Round(
        "cold store, killed once a few committed",
        30,
        put_scripted(1, None),
        PARTIAL_KILL,
        slow=0.5,
    ),
    Round("new jobs, killed after 0.5 s", 0.5, put_scripted(1, 1)),
    Round("status changes, killed once some are staged", 15, put_scripted(3, 2), staged=True),
    Round("status changes again, killed at half", 15, put_scripted(2, 3), CUSTOMERS // 2),
)


def dead_leases(stored: Stored, pid: int) -> list[tuple[str, str, datetime]]:
    """The leases held by the process `pid` (holders are `host:pid:nonce`)."""
    return [
        lease
        for lease in stored.leases
        if lease[1].count(":") == 2 and lease[1].split(":")[1] == str(pid)
    ]


def printed_so_far(process: subprocess.Popen[bytes]) -> str:
    """What the (running) process printed until now."""
    return b"".join(_OUTPUT[process.pid][1]).decode(errors="replace")


def assert_dead_leases_released(
    store: Store, dead: int, process: subprocess.Popen[bytes], where: str
) -> None:
    """The restarted `process` handed back the leases of the dead one at start-up (looked at
    for a moment: a start-up that answers /readyz has done it already)."""
    left = -1
    for _ in range(20):
        left = store.one("SELECT COUNT(*) FROM refresh_leases WHERE holder LIKE ?", f"%:{dead}:%")
        if left == 0:
            return
        time.sleep(0.1)
    try:
        os.kill(dead, 0)
        seen = "a process with that pid exists"
    except ProcessLookupError:
        seen = "no process has that pid"
    said = [line for line in printed_so_far(process).splitlines() if "lease" in line.lower()]
    raise AssertionError(
        f"{where}: {left} leases of the dead process {dead} ({seen}) outlive the restart of "
        f"serve as process {process.pid}, which said: {said}"
    )


@dataclass
class Report:
    kills: list[str] = field(default_factory=list)
    staged_left: int = 0


def kill_mid_refresh(
    store: Store,
    client: httpx.Client,
    process: subprocess.Popen[bytes],
    round_: Round,
) -> tuple[BeforeKill, datetime, int, str]:
    """Start a refresh of every customer and kill the process while it writes."""
    first = store.one("SELECT COALESCE(MAX(id), 0) FROM snapshots")
    staged_before = store.one("SELECT COUNT(*) FROM job_stage")
    response = client.post("/refresh")
    assert response.status_code == 202, response.text
    began = time.monotonic()
    if round_.committed is None and not round_.staged:
        time.sleep(round_.seconds)
    while time.monotonic() - began < round_.seconds:
        (done,), (staged,) = (
            rows[0]
            for rows in store.read(
                ("SELECT COUNT(*) FROM snapshots WHERE id > ? AND outcome = 'success'", (first,)),
                ("SELECT COUNT(*) FROM job_stage", ()),
            )
        )
        if (
            done == CUSTOMERS
            or (round_.staged and staged > staged_before)
            or (round_.committed is not None and done >= round_.committed)
        ):
            break
        time.sleep(0.02)
    before = read_before_kill(store)
    killed_at = datetime.now(UTC)
    output = crash(process)
    return before, killed_at, first, output


def test_kill_9_mid_refresh_leaves_nothing_half_written(
    store: Store, upstream: tuple[str, Simulator], secret_scan: SecretScan
) -> None:
    base, sim = upstream
    ids = sim.customer_ids()
    # The test's jobs end minutes before now, whatever the time of day: started hours before,
    # they could predate the moment the objects' learned schedules say a result is due, and
    # a finished job would then not resolve an alert held open as "no result".
    scripted_start = sim.now() - timedelta(seconds=SCRIPTED) - timedelta(minutes=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVEPOINT_", "DEMO"))}
    env |= {
        "AVEPOINT_BASE_URL": base,
        "AVEPOINT_TOKEN_URL": f"{base}/connect/token",
        "AVEPOINT_CLIENT_ID": "demo-client",
        "AVEPOINT_CLIENT_SECRET": "demo-secret",
        "API_KEYS": KEY,
        "DATABASE_URL": store.url,
        "CUSTOMER_IDS": "",
        "CACHE_TTL_SECONDS": "3600",
        "REFRESH_INTERVAL_SECONDS": "0",
        "REQUEST_WAIT_SECONDS": "20",
        "UPSTREAM_CONCURRENCY": "8",
        "LOG_LEVEL": "INFO",
    }
    headers = {"X-API-Key": KEY}
    report = Report()
    previous: Stored | None = None
    port = free_port()
    process = launch(env, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        for number, round_ in enumerate(ROUNDS, 1):
            where = f"round {number} ({round_.name})"
            round_.change(sim, ids, scripted_start)
            sim.config = dataclasses.replace(
                sim.config,
                slow_customers=frozenset(ids[:HEAVY]),
                slow_latency_seconds=round_.slow,
            )
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
                before, killed_at, first, output = kill_mid_refresh(store, client, process, round_)
            sim.config = dataclasses.replace(sim.config, slow_latency_seconds=0.0)
            secret_scan.output(output, f"the serve process killed in {where}")
            dead = process.pid

            # The database as the kill left it.
            if not store.postgres:
                assert store.read(("PRAGMA integrity_check", ()))[0] == [("ok",)]
            after_kill = read_store(store, f"{where}, after the kill")
            assert_kept(before, after_kill, f"{where}, after the kill")
            if previous is not None:
                assert_kept(previous, after_kill, f"{where}, after the kill")
            committed = {
                cid for cid, sids in after_kill.successes.items() if any(s > first for s in sids)
            }
            old_stage = previous.stage_ids if previous is not None else set()
            new_stage = {s for s in after_kill.stage if s[0] not in old_stage}
            # What the dead refresh staged is not in `jobs`: those rows differ from the stored.
            for _, cid, jid, digest, _ in new_stage:
                stored = after_kill.job_rows.get((cid, jid))
                assert stored is None or stored[1] != digest, f"{where}: staged {cid}:{jid} stored"
            report.staged_left += len(new_stage)
            report.kills.append(
                f"{where}: {len(committed)}/{CUSTOMERS} committed, "
                f"{len(new_stage)} staged rows left"
            )
            if store.postgres:
                report.kills[-1] += f", {len(dead_leases(after_kill, dead))} leases left"
            if number == 1:
                assert 0 < len(committed) < CUSTOMERS, report.kills[-1]
            if store.postgres:
                mine = dead_leases(after_kill, dead)
                for cid, holder, expires_at in mine:
                    assert expires_at <= killed_at + timedelta(seconds=LEASE_SECONDS) + SLACK, (
                        f"{where}: the lease of {cid} held by {holder} outlives the kill"
                    )
                # Walks under way held their leases when the process died, and only they:
                # a customer still queued for a walk slot holds none (a lease is taken when
                # its walk really starts, so it never runs down in a queue). The sweep's
                # lease (`~sweep`) is the process's too, and expires like them.
                walked = {lease[0] for lease in mine if not lease[0].startswith("~")}
                assert walked <= set(ids), where
            if number == len(ROUNDS):
                # An hour passes for the rows the dead refreshes staged: start-up purges them.
                old = datetime.now(UTC) - ORPHAN_STAGE_AGE - timedelta(minutes=5)
                store.write("UPDATE job_stage SET staged_at = ?", store.time(old))

            # serve again, on the same database.
            port = free_port()
            process = launch(env, port)
            wait_ready(f"http://127.0.0.1:{port}", process)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60
            ) as client:
                if store.postgres:
                    assert_dead_leases_released(store, dead, process, where)
                    said = printed_so_far(process)
                    handed = re.findall(rf"handed back (\d+) leases of [^:\s]+:{dead}:", said)
                    report.kills[-1] += f", {'+'.join(handed) or 'no'} handed back at start-up"
                stage_now = store.one("SELECT COUNT(*) FROM job_stage")
                if number == len(ROUNDS):
                    assert stage_now == 0, f"{where}: start-up left old staged rows"
                else:
                    assert stage_now == len(after_kill.stage), f"{where}: staged rows purged early"
                # The restarted process serves what was committed, and nothing staged.
                replayed = feed(client)
                assert_feed_between(after_kill.events, replayed, read_events(store))
                kept = set(after_kill.successes)
                response = client.get("/jobs", params={"customer_id": ",".join(sorted(kept))})
                assert response.status_code == 200, response.text
                assert response.json()["freshness"]["fresh"] == len(kept), where
                assert served(client, sorted(kept)) == stored_jobs(after_kill, kept), where
                # Jobs staged with another status than stored are served as stored.
                differ = sorted(
                    (cid, jid, status)
                    for _, cid, jid, _, status in new_stage
                    if cid in kept and after_kill.job_rows.get((cid, jid), (status,))[0] != status
                )
                for cid, jid, status in differ[:: max(1, len(differ) // 10)]:
                    job = client.get(f"/jobs/{cid}/{jid}")
                    assert job.status_code == 200, job.text
                    assert job.json()["status"] == after_kill.job_rows[(cid, jid)][0], (
                        f"{where}: {cid}:{jid} is served as staged ({status})"
                    )
                report.kills[-1] += f" ({len(differ)} of them another status than stored)"

                # A new refresh of every customer: none is kept from it by a dead lease.
                sim.stats.reset()
                response = client.get("/jobs", params={"max_age": 0, "limit": 1})
                assert response.status_code == 200, response.text
                walked = set(sim.stats.walks)
                assert walked == set(ids), f"{where}: not walked: {sorted(set(ids) - walked)}"
                freshness = response.json()["freshness"]
                assert freshness["fresh"] == CUSTOMERS, f"{where}: {freshness}"
                replayed += feed(client, replayed[-1][0] if replayed else 0)
                refreshed = read_store(store, f"{where}, after the restart's refresh")
                assert_kept(after_kill, refreshed, f"{where}, after the restart's refresh")
                assert_feed_between(after_kill.events, replayed, refreshed.events)
                assert set(refreshed.jobs) == set(ids)
                assert served(client) == stored_jobs(refreshed), where
                previous = refreshed
        # The end: a clean stop.
        output = stop(process)
        assert process.returncode == 0, f"SIGTERM ended serve with {process.returncode}:\n{output}"
        # The rounds wrote what they were meant to: inserts, status changes, alerts, and
        # some kill left a refresh's staged rows behind.
        assert previous is not None
        told = Counter(e[1] for e in previous.events)
        assert told["job.status_changed"] >= 2 * HEAVY * SCRIPTED, told
        assert told["alert.opened"] and told["alert.resolved"], told
        assert report.staged_left > 0, f"no kill left staged rows behind: {report.kills}"
        print("\n".join([*report.kills, str(dict(told))]))
    finally:
        if process.poll() is None:
            stop(process)
