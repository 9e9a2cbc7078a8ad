"""The simulated partner's data: its customers and their backup-job rows, in the wire format.

Everything here is a pure function of `SimulatorConfig` and the moment asked about. A
customer has a handful of backup plans (a job type + module on a schedule); a plan's runs
fall on a fixed grid counted from `EPOCH`, and each run's facts (start, duration, outcome,
counts, size) come from a `random.Random` seeded by (seed, customer, plan, run number). So
a later `now` shows the same history plus the runs started since, a run still going at
`now` is `Running` and later gets its final status, and the same seed and `now` give the
same rows in any process.

Rows are dicts exactly as the upstream sends them: three integer codes, every other field a
string that may be `"N/A"`. A customer's first row is the all-`"N/A"` placeholder seen
live.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# The schedules' origin. A fixed grid (rather than one counted back from `now`) is what
# keeps a run's identity and outcome the same whenever it is looked at.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
NA = "N/A"
MAX_PAGE_SIZE = 100

_KB = 1024
_MB = 1024**2
_GB = 1024**3
_TB = 1024**4

# Per customer and history window, when `jobs_per_customer` is None.
_JOBS_PER_WEEK = (20, 250)
_MIN_INTERVAL = 3600
_MAX_INTERVAL = 2 * 86400
# A failure streak lasts this many runs at most: long enough for alerts to open, short
# enough that they resolve inside the default seven-day window.
_MAX_STREAK = 5

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Runs a customer's history keeps beyond twice those listed before dropping old ones.
SPARE_RUNS = 4096


def seeded_rng(key: str) -> random.Random:
    """A generator of its own for `key`: no global random state, the same draws everywhere.

    A string seed is hashed with SHA-512 by `random`, so unlike `hash()` it is stable
    across processes and `PYTHONHASHSEED`.
    """
    return random.Random(key)  # noqa: S311 - simulated data, not security


@dataclass(frozen=True)
class SimulatorConfig:
    """What the simulated upstream holds, and how badly it behaves.

    The fault knobs name customers by id; ids depend only on `seed` and the customer's
    position, so `Simulator(SimulatorConfig(seed=s)).customer_ids()` tells them in advance.
    """

    seed: int = 42
    customers: int = 12
    # None: varied, realistic counts over `history_days` (about 20..250 rows a week). A
    # number: exactly that many rows per customer (the placeholder included, so 500 is five
    # full pages of 100) of its newest runs, whatever the window; for benchmarks.
    jobs_per_customer: int | None = None
    history_days: int = 7
    # None: a handful of plans (protected objects) per customer, varied. A number: exactly
    # that many, each a different job type + module (at most `len(WORKLOADS)`), the
    # customer's runs spread over them (so most run about daily); for benchmarks of
    # `/objects` and `/grid`.
    plans_per_customer: int | None = None
    client_id: str = "demo-client"
    client_secret: str = "demo-secret"  # noqa: S105 - the simulator's own demo credential
    token_ttl_seconds: int = 3600  # `expires_in`; older tokens get 401 from the API
    latency_seconds: float = 0.0  # added to every customers and jobs response
    # These customers' jobs responses take `slow_latency_seconds` more each: their walks are
    # the long ones, for a test that must catch a refresh while they are under way.
    slow_customers: frozenset[str] = frozenset()
    slow_latency_seconds: float = 0.0
    error_rate: float = 0.0  # chance of a 503 per customers or jobs request, seeded dice
    failing_customers: frozenset[str] = frozenset()  # always 500
    rate_limit_every: int = 0  # every Nth jobs request gets 429 + Retry-After: 1; 0 = off
    malformed_customers: frozenset[str] = frozenset()  # 200 with a body that is no page
    forbidden_customers: frozenset[str] = frozenset()  # 403: outside the app's scope
    # metadata.totalCount under-reports (half the real count, never less than page 1
    # holds), on the jobs and customers endpoints: only a walk that goes on past a full
    # last promised page to a short or empty one sees every row.
    low_total_count: bool = False
    # These customers' job rows carry odd text in `name` (a lone surrogate, a NUL, an
    # emoji, Arabic and Hebrew), and one row a `totalCount` of the JSON number 1e400.
    odd_text_customers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        plans = self.plans_per_customer
        if plans is not None and not 1 <= plans <= len(WORKLOADS):
            raise ValueError(f"plans_per_customer must be 1..{len(WORKLOADS)}, got {plans}")


@dataclass(frozen=True, slots=True)
class Plan:
    """One backup plan of a customer: what it protects and how it runs."""

    index: int
    job_type: int
    module: int
    name: str
    prefix: str
    interval: int  # seconds between scheduled starts
    offset: int  # seconds from EPOCH to the first grid point
    start_jitter: int  # a run starts up to this many seconds after its grid point
    typical_duration: int
    typical_objects: int
    typical_size: int | None  # bytes per run; None: the plan reports no size (scans)
    size_in_mb: bool  # small sizes written as "512 MB" rather than "0.5 GB"
    failure_rate: float  # chance a run opens a failure streak


@dataclass(frozen=True, slots=True)
class Customer:
    index: int
    id: str
    organization: str
    domain: str
    country: str
    management_mode: int
    tenants: tuple[tuple[str, str], ...]
    plans: tuple[Plan, ...]


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a plan, as it will be once over; `row_at` says how it looks meanwhile."""

    plan: Plan
    number: int
    start: datetime
    duration: int
    final_status: int
    job_id: str
    total: int
    failed: int
    skipped: int
    warning: int
    counts_known: bool
    size: str
    # Built once: a finished run's row never changes, and rebuilding every row whenever the
    # clock ticks would make the simulator, not the gateway, the bottleneck of a benchmark.
    final_row: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "final_row", self._final_row())

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration)

    def row_at(self, now: datetime) -> dict[str, Any]:
        """The row at `now` (at or after the start); shared when finished, so do not change it."""
        return self._running_row(now) if now < self.end else self.final_row

    def _final_row(self) -> dict[str, Any]:
        successful = max(self.total - self.failed - self.skipped, 0)
        return _row(
            job_type=self.plan.job_type,
            module=self.plan.module,
            status=self.final_status,
            job_id=self.job_id,
            name=self.plan.name,
            counts=(self.total, self.failed, successful, self.skipped, self.warning)
            if self.counts_known
            else None,
            size=self.size,
            start=format_time(self.start),
            end=format_time(self.end),
            duration=format_duration(self.duration),
            modified=format_time(self.end + timedelta(seconds=1)),
        )

    def _running_row(self, now: datetime) -> dict[str, Any]:
        elapsed = int((now - self.start).total_seconds())
        done = self.total * elapsed // max(self.duration, 1)
        # The upstream touches a running job as it progresses; a one-minute heartbeat keeps
        # the row the same within a minute (stable pages) yet moving over time.
        heartbeat = self.start + timedelta(seconds=elapsed - elapsed % 60)
        return _row(
            job_type=self.plan.job_type,
            module=self.plan.module,
            status=1,
            job_id=self.job_id,
            name=self.plan.name,
            counts=(self.total, 0, done, 0, 0),
            size=NA,
            start=format_time(self.start),
            end=NA,
            duration=NA,
            modified=format_time(heartbeat),
        )


def _row(
    *,
    job_type: int,
    module: int,
    status: int,
    job_id: str,
    name: str,
    counts: tuple[int, int, int, int, int] | None,
    size: str,
    start: str,
    end: str,
    duration: str,
    modified: str,
) -> dict[str, Any]:
    # Keys in the order the upstream's sample shows them.
    total, failed, successful, skipped, warning = (
        (str(c) for c in counts) if counts is not None else (NA,) * 5
    )
    return {
        "jobType": job_type,
        "jobModule": module,
        "status": status,
        "jobId": job_id,
        "name": name,
        "totalCount": total,
        "failedCount": failed,
        "successfulCount": successful,
        "skippedCount": skipped,
        "warningCount": warning,
        "backupSize": size,
        "startTime": start,
        "endTime": end,
        "jobDuration": duration,
        "lastModifyTime": modified,
    }


def scripted_row(
    *,
    job_id: str,
    status: int,
    start: datetime,
    job_type: int = 7,
    module: int = 304,
    name: str = "Scripted backup",
    duration: int = 600,
) -> dict[str, Any]:
    """A job row a test puts in place (`Simulator.put_job`): running (status 1) rows have no
    end, duration or size yet."""
    running = status in (1, 6)
    end = start + timedelta(seconds=duration)
    return _row(
        job_type=job_type,
        module=module,
        status=status,
        job_id=job_id,
        name=name,
        counts=(10, 10 if status == 3 else 0, 0 if status == 3 else 10, 0, 0),
        size=NA if running else "1 GB",
        start=format_time(start),
        end=NA if running else format_time(end),
        duration=NA if running else format_duration(duration),
        modified=format_time(start if running else end + timedelta(seconds=1)),
    )


def placeholder_row() -> dict[str, Any]:
    """The row the live API puts first for a customer: codes 0 and every string N/A."""
    return _row(
        job_type=0,
        module=0,
        status=0,
        job_id=NA,
        name=NA,
        counts=None,
        size=NA,
        start=NA,
        end=NA,
        duration=NA,
        modified=NA,
    )


# --- rough edges ---------------------------------------------------------------------------

# Names the odd-text customers' rows carry, in turn. Sent JSON-escaped (as the upstream's
# System.Text.Json does with anything outside ASCII), so the lone surrogate arrives as the
# text \ud800, which json.loads reads as a lone surrogate that UTF-8 cannot encode.
ODD_NAMES = (
    "\ud800",  # a lone (high) surrogate
    "Nightly\u0000backup",  # a NUL inside
    "Mailboxes \U0001f4be\u2705",  # emoji outside the BMP and inside it
    # Arabic, right to left: "daily backup"
    "\u0646\u0633\u062e \u0627\u062d\u062a\u064a\u0627\u0637\u064a \u064a\u0648\u0645\u064a",
    # Hebrew, right to left, with a right-to-left mark: "daily backup (Teams)"
    "\u05d2\u05d9\u05d1\u05d5\u05d9 \u05d9\u05d5\u05de\u05d9 \u200f(Teams)",
)
# The JSON number 1e400: json.loads reads it as float("inf"); the app writes it back as
# 1e400, since JSON has no Infinity.
HUGE_COUNT = math.inf


def with_odd_text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` whose names are `ODD_NAMES` in turn (the placeholder row aside),
    and whose first such row has a `totalCount` of 1e400. `rows` is left as it was."""
    odd: list[dict[str, Any]] = []
    turn = 0
    for row in rows:
        if row["jobId"] == NA:
            odd.append(row)
            continue
        changed = dict(row, name=ODD_NAMES[turn % len(ODD_NAMES)])
        if turn == 0:
            changed["totalCount"] = HUGE_COUNT
        odd.append(changed)
        turn += 1
    return odd


def reported_total(count: int, page_size: int, *, low: bool) -> int:
    """The `metadata.totalCount` of a listing of `count` rows: `count`, or with `low` half
    of it, never less than a first page of `page_size` holds."""
    if not low:
        return count
    return max(count // 2, min(count, page_size))


# --- wire formats -------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def format_duration(seconds: int) -> str:
    """`0` -> `"0 S"`, `38` -> `"38s"`, `1059` -> `"17m39s"`, `7510` -> `"2h5m10s"`."""
    if seconds <= 0:
        return "0 S"  # sic: the live API's zero
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def format_size(size: int, *, in_mb: bool = False) -> str:
    """Bytes as the upstream writes them: `"0 GB"`, `"0.84 GB"`, `"512 MB"`, `"1.5 TB"`."""
    if size >= _TB:
        return f"{_trim(size / _TB)} TB"
    if in_mb and size < _GB:
        return f"{max(round(size / _MB), 1) if size else 0} MB"
    return f"{_trim(size / _GB)} GB"


def _trim(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --- customers ----------------------------------------------------------------------------

_ORGANIZATIONS = (
    "Contoso",
    "Fabrikam",
    "Northwind Traders",
    "Adventure Works Cycles",
    "Tailspin Toys",
    "Wide World Importers",
    "Litware",
    "Woodgrove Bank",
    "Proseware",
    "Alpine Ski House",
    "Coho Winery",
    "Fourth Coffee",
    "Lamna Healthcare",
    "Margie's Travel",
    "Trey Research",
    "Wingtip Toys",
    "Blue Yonder Airlines",
    "Humongous Insurance",
    "Lucerne Publishing",
    "Relecloud",
    "VanArsdel",
    "Southridge Video",
    "Consolidated Messenger",
    "City Power & Light",
    "Bellows College",
    "Munson's Pickles and Preserves",
    "Nod Publishers",
    "A. Datum Corporation",
    "Tailwind Traders",
    "Graphic Design Institute",
    "Hanover Logistics",
    "Meridian Dental Group",
    "Brightwater Utilities",
    "Kestrel Engineering",
    "Oakridge Legal LLP",
    "Harbor & Pine Architects",
    "Summit Credit Union",
    "Greenfield Schools",
    "Redwood Clinics",
    "Bluefin Marine",
)
# Appended, in turn, when a seed asks for more customers than there are names.
_NAME_SUFFIXES = ("Europe", "APAC", "Holdings", "Americas", "Labs", "Services")
_COUNTRIES = (
    "United States",
    "United States",
    "United Kingdom",
    "Germany",
    "Netherlands",
    "Australia",
    "Canada",
    "Japan",
    "Singapore",
    "France",
)


def build_customers(config: SimulatorConfig) -> tuple[Customer, ...]:
    """The partner's customers; customer i is the same whatever `config.customers` is."""
    plans = config.plans_per_customer
    names_rng = seeded_rng(f"{config.seed}:organizations")
    names = list(_ORGANIZATIONS)
    names_rng.shuffle(names)
    return tuple(
        _build_customer(config.seed, i, _organization(names, i), plans)
        for i in range(config.customers)
    )


def _organization(names: list[str], index: int) -> str:
    round_, position = divmod(index, len(names))
    if round_ == 0:
        return names[position]
    return f"{names[position]} {_NAME_SUFFIXES[(round_ - 1) % len(_NAME_SUFFIXES)]}"


def _build_customer(seed: int, index: int, organization: str, plans_wanted: int | None) -> Customer:
    rng = seeded_rng(f"{seed}:customer:{index}")
    customer_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    slug = "".join(ch for ch in organization.lower() if ch.isalnum())
    workloads = (
        _workloads(rng) if plans_wanted is None else sorted(rng.sample(WORKLOADS, plans_wanted))
    )
    jobs_per_week = rng.randint(*_JOBS_PER_WEEK)
    # Spread the customer's weekly runs over its plans, then jitter each plan's interval so
    # plans do not all tick together.
    mean_interval = len(workloads) * 7 * 86400 / jobs_per_week
    named = rng.random() < 0.4
    plans = []
    for plan_index, (job_type, module) in enumerate(workloads):
        interval = _clamp(
            round(mean_interval * rng.uniform(0.7, 1.4) / 900) * 900, _MIN_INTERVAL, _MAX_INTERVAL
        )
        plans.append(_build_plan(rng, plan_index, job_type, module, interval, named))
    tenants = [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"{slug}.onmicrosoft.com")]
    if any(p.job_type in (10, 11) for p in plans):
        tenants.append((f"C0{rng.getrandbits(32):08x}", f"{slug}.com"))
    return Customer(
        index=index,
        id=customer_id,
        organization=organization,
        domain=f"{slug}.com",
        country=rng.choice(_COUNTRIES),
        management_mode=1 if rng.random() < 0.8 else 0,
        tenants=tuple(tenants),
        plans=tuple(plans),
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


WORKLOADS = (
    *((7, m) for m in (302, 303, 304, 305, 308)),
    *((11, m) for m in (501, 502, 503, 504, 505)),
    *((12, m) for m in (356, 359, 362)),
    (15, 0),
    (16, 401),
    (16, 550),
    (0, 302),
    (0, 305),
    (10, 504),
    (10, 505),
)
"""Every (job type, module) pair a customer's plans are drawn from."""


def _workloads(rng: random.Random) -> list[tuple[int, int]]:
    """(job type, module) pairs that make sense together for one customer."""
    m365 = [302, 303, 304, 305, 308]
    chosen = [(7, m) for m in sorted(rng.sample(m365, rng.randint(2, 5)))]
    google = rng.random() < 0.3
    if google:
        chosen += [
            (11, m) for m in sorted(rng.sample([501, 502, 503, 504, 505], rng.randint(2, 4)))
        ]
    if rng.random() < 0.25:
        chosen += [(12, m) for m in sorted(rng.sample([356, 359, 362], rng.randint(1, 3)))]
    if rng.random() < 0.15:
        chosen.append((15, 0))
    if rng.random() < 0.2:
        chosen.append((16, rng.choice([401, 550])))
    if rng.random() < 0.35:
        chosen.append((0, rng.choice([302, 305])))
    if google and rng.random() < 0.5:
        chosen.append((10, rng.choice([504, 505])))
    return chosen


# Typical run length range (seconds) and objects range, by job type; IaaS runs are long.
_DURATION_RANGE = {0: (20, 300), 10: (20, 300), 7: (60, 3600), 11: (60, 1800), 12: (600, 14400)}
_OBJECTS_RANGE = {0: (50, 20000), 10: (50, 10000), 12: (1, 40), 15: (1000, 200000)}
_SIZE_RANGE = {12: (5 * _GB, 2 * _TB), 15: (10 * _MB, 2 * _GB)}
_PREFIX = {0: "SC", 10: "SC"}  # only "FB" has been seen live; scans get their own for variety
_PLAN_NAMES = {
    302: "SharePoint sites",
    303: "Mailboxes",
    304: "Groups and sites",
    305: "OneDrive accounts",
    308: "Teams",
    356: "Azure VMs",
    359: "Storage accounts",
    362: "Azure SQL databases",
    401: "Dynamics 365 org",
    550: "Dynamics CRM",
    501: "Gmail",
    502: "Calendars",
    503: "Contacts",
    504: "Drive",
    505: "Shared drives",
}


def _build_plan(
    rng: random.Random, index: int, job_type: int, module: int, interval: int, named: bool
) -> Plan:
    low, high = _DURATION_RANGE.get(job_type, (60, 2700))
    typical_duration = min(_log_uniform(rng, low, high), interval * 6 // 10)
    objects_low, objects_high = _OBJECTS_RANGE.get(job_type, (10, 20000))
    scan = job_type in (0, 10)
    size_low, size_high = _SIZE_RANGE.get(job_type, (20 * _MB, 20 * _GB))
    label = "Salesforce org" if job_type == 15 else _PLAN_NAMES.get(module, "Backup")
    name = NA
    if named and rng.random() < 0.6:
        name = f"{label} - {'scan' if scan else 'daily' if interval >= 86400 else 'backup'}"
    return Plan(
        index=index,
        job_type=job_type,
        module=module,
        name=name,
        prefix=_PREFIX.get(job_type, "FB"),
        interval=interval,
        offset=rng.randrange(interval),
        start_jitter=min(interval // 10, 180),
        typical_duration=typical_duration,
        typical_objects=_log_uniform(rng, objects_low, objects_high),
        typical_size=None if scan else _log_uniform(rng, size_low, size_high),
        size_in_mb=rng.random() < 0.3,
        # Most plans rarely fail; a few are flaky, so the demo has alerts to show.
        failure_rate=0.08 if rng.random() < 0.15 else 0.015,
    )


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


# --- runs ---------------------------------------------------------------------------------


def _unit(key: str) -> tuple[float, int]:
    """A uniform draw in [0, 1) and a spare integer, from `key` alone; cheaper than a Random."""
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8]) / 2**64, int.from_bytes(digest[8:])


def _final_status(rng: random.Random, failing: bool) -> int:
    draw = rng.random()
    if failing:
        return 3 if draw < 0.85 else 7
    for status, upto in ((2, 0.86), (4, 0.95), (3, 0.97), (7, 0.98), (8, 0.99), (10, 0.995)):
        if draw < upto:
            return status
    return 5


class History:
    """One customer's runs, each built once from its own seed and kept while still listed.

    A run is identified by (plan index, number): its grid point is
    `EPOCH + plan.offset + number * plan.interval`.
    """

    def __init__(self, customer: Customer) -> None:
        self.customer = customer
        self._runs: dict[tuple[int, int], Run] = {}
        self._streaks: dict[tuple[int, int], int] = {}

    def rows(self, config: SimulatorConfig, now: datetime) -> list[dict[str, Any]]:
        """Every row the upstream lists at `now`: the placeholder, then newest first.

        The rows of finished runs are shared between calls: read them, never change them.
        """
        now = now.astimezone(UTC).replace(microsecond=0)
        if config.jobs_per_customer == 0:
            return []
        if config.jobs_per_customer is None:
            runs = self._since(now - timedelta(days=config.history_days), now)
        else:
            runs = self._newest(now, config.jobs_per_customer - 1)
        self._forget_older_than(runs[-1].start if runs else now, keep=len(runs))
        return [placeholder_row(), *(run.row_at(now) for run in runs)]

    def _since(self, since: datetime, now: datetime) -> list[Run]:
        runs = [r for p in self.customer.plans for r in self._plan_runs(p, since, now)]
        # Ties (two plans starting in the same second) are broken by plan, so the order, and
        # with it every page, is stable for a fixed `now`.
        return sorted(runs, key=lambda r: (r.start, -r.plan.index), reverse=True)

    def _newest(self, now: datetime, count: int) -> list[Run]:
        if count <= 0:
            return []
        per_second = sum(1 / p.interval for p in self.customer.plans)
        window = timedelta(seconds=count / per_second * 1.2 + _MAX_INTERVAL)
        while True:
            runs = self._since(now - window, now)
            if len(runs) >= count:
                return runs[:count]
            window *= 2

    def _plan_runs(self, plan: Plan, since: datetime, now: datetime) -> list[Run]:
        first = math.floor((since - EPOCH).total_seconds() - plan.offset) // plan.interval
        last = math.floor((now - EPOCH).total_seconds() - plan.offset) // plan.interval
        runs = []
        for number in range(last, first - 1, -1):
            run = self.run(plan, number)
            if since <= run.start <= now:
                runs.append(run)
        return runs

    def _forget_older_than(self, oldest: datetime, keep: int) -> None:
        # The window only moves forward in practice; runs that left it are dropped so a
        # long-running simulator does not grow. An earlier `now` just rebuilds them.
        if len(self._runs) > 2 * keep + SPARE_RUNS:
            self._runs = {k: r for k, r in self._runs.items() if r.start >= oldest}
            self._streaks.clear()

    def run(self, plan: Plan, number: int) -> Run:
        key = (plan.index, number)
        run = self._runs.get(key)
        if run is None:
            run = self._build_run(plan, number)
            self._runs[key] = run
        return run

    def _opens_streak(self, plan: Plan, number: int) -> int:
        """How many runs (this one first) a failure streak opened by this run lasts; 0: none."""
        key = (plan.index, number)
        length = self._streaks.get(key)
        if length is None:
            draw, spare = _unit(f"{self.customer.id}:{plan.index}:{number}:streak")
            length = 0 if draw >= plan.failure_rate else (1, 1, 2, 2, 3, 3, 4, 5)[spare % 8]
            self._streaks[key] = length
        return length

    def _in_streak(self, plan: Plan, number: int) -> bool:
        return any(self._opens_streak(plan, number - back) > back for back in range(_MAX_STREAK))

    def _build_run(self, plan: Plan, number: int) -> Run:
        # The customer id already carries the config's seed.
        rng = seeded_rng(f"{self.customer.id}:{plan.index}:{number}:run")
        grid = EPOCH + timedelta(seconds=plan.offset + number * plan.interval)
        start = grid + timedelta(seconds=rng.randrange(plan.start_jitter + 1))
        status = _final_status(rng, self._in_streak(plan, number))
        total = max(round(plan.typical_objects * rng.uniform(0.97, 1.03)), 1)
        duration = max(round(plan.typical_duration * rng.uniform(0.5, 1.6)), 5)
        failed = skipped = warning = 0
        counts_known = True
        size_bytes: int | None = None
        if plan.typical_size is not None and rng.random() >= 0.2:  # 1 in 5: nothing changed
            size_bytes = round(plan.typical_size * rng.uniform(0.1, 2.5))
        if status in (7, 5):  # never started: nothing processed, nothing took time
            duration = 0
            counts_known = status == 7
            total = 0
            size_bytes = None
        elif status == 3:
            how = rng.random()
            if how < 0.5:
                failed = max(round(total * rng.uniform(0.05, 1.0)), 1)
            elif how < 0.75:
                total = 0
                duration = rng.randint(1, 90)
            # else: the live sample's oddity, a failed job with nothing counted as failed
            size_bytes = None
        elif status == 4:
            failed = max(round(total * rng.uniform(0.001, 0.05)), 1)
            warning = rng.randint(0, max(total // 50, 1))
        elif status in (8, 10):
            duration = max(round(duration * rng.uniform(0.1, 0.7)), 1)
            total = round(total * rng.uniform(0.1, 0.7))
            size_bytes = None
        if status == 2 and rng.random() < 0.1:
            skipped = rng.randint(1, max(total // 100, 1))
        if plan.typical_size is None:
            size = NA
        elif size_bytes is None:
            size = NA if status in (5, 7, 8, 10) or rng.random() < 0.5 else "0 GB"
        else:
            size = format_size(size_bytes, in_mb=plan.size_in_mb)
        job_id = f"{plan.prefix}{start:%Y%m%d%H%M%S}{rng.randrange(10_000):04d}{plan.index:02d}"
        return Run(
            plan=plan,
            number=number,
            start=start,
            duration=duration,
            final_status=status,
            job_id=job_id,
            total=total,
            failed=min(failed, total),
            skipped=skipped,
            warning=warning,
            counts_known=counts_known,
            size=size,
        )


def customer_job_status(rows: list[dict[str, Any]]) -> int:
    """The customers endpoint's `jobStatus`, from each plan's latest finished run.

    1 Working, 2 Failed, 4 Multiple issues found, 5 Finished with exception.
    """
    latest: dict[tuple[int, int], int] = {}
    for row in rows:
        if row["jobId"] == NA or row["status"] == 1:
            continue
        latest.setdefault((row["jobType"], row["jobModule"]), row["status"])
    failing = sum(1 for s in latest.values() if s in (3, 7))
    if failing > 1:
        return 4
    if failing == 1:
        return 2
    if any(s == 4 for s in latest.values()):
        return 5
    return 1


def customer_wire(customer: Customer, job_status: int) -> dict[str, Any]:
    return {
        "id": customer.id,
        "organization": customer.organization,
        "ownerEmail": f"it-admin@{customer.domain}",
        "jobStatus": job_status,
        "countryOrRegion": customer.country,
        "managementMode": customer.management_mode,
        "tenants": [{"id": tid, "name": name} for tid, name in customer.tenants],
    }
