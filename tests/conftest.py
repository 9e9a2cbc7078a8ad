"""Fixtures every suite shares: fresh databases of each backend; and a scan of every log
line of the session for secrets.

`database_url` is a database at the newest schema, fresh for every test: a SQLite file in
`tmp_path`, or a PostgreSQL database created for the test and dropped after it. Both are
copies of a template the migrations built once (tests/databases.py tells how), so the app's
start-up finds nothing to migrate. `empty_database_url` is an empty one, for the tests of the
migrations themselves. PostgreSQL comes from TEST_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test, a database used only to create and drop the
others). When it is unreachable the PostgreSQL variants are skipped with the reason, or fail
when JOBS_GATEWAY_REQUIRE_POSTGRES=1 (as in CI).
"""

from __future__ import annotations

import compileall
import gc
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from app.logs import JsonFormatter
from app.store.db import safe_url
from tests.databases import (
    PostgresDatabases,
    asyncpg_dsn,
    build_sqlite_template,
    copy_sqlite,
    ensure_postgres_template,
    run_apart,
)

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


async def _probe(url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The admin URL of a reachable PostgreSQL, or a skip (a failure when it is required)."""
    url = postgres_admin_url()
    try:
        run_apart(lambda: _probe(url))
    except Exception as exc:
        reason = (
            f"PostgreSQL at {safe_url(url)} is unreachable ({type(exc).__name__}: {exc}); "
            "start one or point TEST_POSTGRES_URL at one"
        )
        if os.environ.get("JOBS_GATEWAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (JOBS_GATEWAY_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL test databases (tests/databases.py)."""
    template = run_apart(lambda: ensure_postgres_template(postgres_url))
    databases = PostgresDatabases(postgres_url, template)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the migrations built, for every test to copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "store.sqlite"
    return run_apart(lambda: build_sqlite_template(path))


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the newest schema (plain URL, as DATABASE_URL would give it)."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        yield copy_sqlite(template, tmp_path / "db" / "store.sqlite")
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.take()
    try:
        yield url
    finally:
        databases.give_back(url)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: no table, not even Alembic's."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'store.sqlite'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.take_empty()
    try:
        yield url
    finally:
        databases.give_back(url)


# -- No secret in any log line of the suite --------------------------------------------------
#
# For the whole session a handler on the root logger keeps every line our code and the
# libraries log (formatted as LOG_FORMAT=json prints them, extras and tracebacks included;
# the `app` loggers at DEBUG, so that every line the service could print is seen); e2e tests
# add what their server processes printed. At the end the lines are searched for the secrets
# the suite uses, for webhook secrets and bearer tokens of any value, and for every token the
# simulator issued: a hit fails the session and names the secret and the logger.

KNOWN_SECRETS: dict[str, str] = {
    "demo-secret": "the simulator's client secret",
    "very-secret-client-secret-42": "the client secret of the upstream client's tests",
    "wrong-secret-s3cr3t": "the client secret of tests/api/test_errors.py",
    "a-secret-value": "the client secret of tests/e2e/test_serve.py",
    "test-key-0123456789": "the API key of tests/api",
    "e2e-key-not-secret": "the API key of tests/e2e",
    "bench-key-0123456789": "the API key of the benchmarks",
    "pw-live-7q": "a webhook URL's password",
    "pw-dead-5x": "a webhook URL's password",
    "tok-live-3k": "a webhook URL's query token",
    "tok-dead-9m": "a webhook URL's query token",
    "B000-path-secret-4f": "a webhook URL's path (Slack-style)",
    "tok-query-8v": "a webhook URL's query token",
    "tok-gone-2w": "a removed webhook URL's query token",
    "B000-param-secret-6d": "a webhook URL in a statement's parameters",
    "pw-s3cret": "a DATABASE_URL's password",
}
SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    # Standard Webhooks secrets are `whsec_<base64>`.
    "a webhook secret": re.compile(r"whsec_[A-Za-z0-9+/]{8,}"),
    # An Authorization header's value; a digit tells a credential from prose ("Bearer <key>").
    "a bearer token": re.compile(r"Bearer\s+(?=[A-Za-z0-9._~+/-]*[0-9])[A-Za-z0-9._~+/-]{8,}"),
}
_TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_-]{8,}")  # what secrets.token_urlsafe() gives


@dataclass(frozen=True)
class Leak:
    what: str  # which secret, in words: never its value
    source: str  # the logger, or the process whose output it was
    line: str  # the line, the secret masked

    def __str__(self) -> str:
        return f"{self.what} in a line of {self.source}: {self.line[:300]}"


class SecretScan:
    """Log lines and process output, searched for secrets by `leaks()`."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.secrets = dict(KNOWN_SECRETS if secrets is None else secrets)
        self.tokens: set[str] = set()  # the simulator's bearer tokens
        self.lines: list[tuple[str, str]] = []  # (logger or process, line)
        self.handler = _Lines(self)

    def output(self, text: str, source: str) -> None:
        """A process's stdout and stderr, e.g. a server an e2e test started."""
        self.lines.extend((source, line) for line in text.splitlines())

    def leaks(self) -> list[Leak]:
        found = []
        lengths = {len(token) for token in self.tokens}
        for source, line in self.lines:
            hits = [(f"{what} ({s!r})", s) for s, what in self.secrets.items() if s in line]
            hits += [
                (what, m.group()) for what, p in SECRET_PATTERNS.items() for m in p.finditer(line)
            ]
            if lengths:
                hits += [
                    ("a token the simulator issued", t) for t in self._tokens_in(line, lengths)
                ]
            hits = list(dict.fromkeys(hits))  # a secret twice in a line is one leak
            masked = line
            for _, value in hits:
                masked = masked.replace(value, "<" + "*" * 8 + ">")
            found += [Leak(what, source, masked) for what, _ in hits]
        return found

    def _tokens_in(self, line: str, lengths: set[int]) -> set[str]:
        # A token is a run of URL-safe characters, maybe glued to others (a JSON line's
        # escaped newline, `\n`, before it): every window of a token's length is looked up.
        found = set()
        for run in _TOKEN_CHARACTERS.findall(line):
            for n in lengths:
                for start in range(len(run) - n + 1):
                    if run[start : start + n] in self.tokens:
                        found.add(run[start : start + n])
        return found


class _Lines(logging.Handler):
    def __init__(self, scan: SecretScan) -> None:
        super().__init__(logging.NOTSET)
        self.scan = scan
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            line = f"{record.msg!r} {record.args!r} {record.exc_text or ''}"
        self.scan.lines.append((record.name, line))


SECRET_SCAN = pytest.StashKey[SecretScan]()
WORKER_LEAKS = "jobs_gateway_secret_leaks"


class SecretScanPlugin:
    """Runs one `SecretScan` over the whole session (see above). Under pytest-xdist each
    worker scans what its tests logged, and the controller fails the session for all."""

    def __init__(self) -> None:
        self.scan = SecretScan()
        self.patches = pytest.MonkeyPatch()
        self.app_level = logging.NOTSET
        self.worker_leaks: list[str] = []  # with pytest-xdist: what the workers' scans found

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from app.simulator import Simulator

        scan = self.scan
        issue = Simulator.issue_token

        def issue_token(sim: Simulator, client_id: str | None, secret: str | None) -> str | None:
            token = issue(sim, client_id, secret)
            if token is not None:
                scan.tokens.add(token)
            return token

        self.patches.setattr(Simulator, "issue_token", issue_token)
        logging.getLogger().addHandler(scan.handler)
        app = logging.getLogger("app")
        self.app_level = app.level
        app.setLevel(logging.DEBUG)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """pytest-xdist, in the controller: a worker is done, with what its scan found."""
        self.worker_leaks += getattr(node, "workeroutput", {}).get(WORKER_LEAKS, [])

    # Before pytest-xdist's own, which sends the worker's output to the controller.
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        logging.getLogger().removeHandler(self.scan.handler)
        logging.getLogger("app").setLevel(self.app_level)
        self.patches.undo()
        leaks = [str(leak) for leak in self.scan.leaks()]
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # a pytest-xdist worker: the controller reports
            workeroutput[WORKER_LEAKS] = leaks
            return
        leaks += self.worker_leaks
        if not leaks:
            return
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        title = f"{len(leaks)} log line(s) hold a secret"
        lines = leaks[:50]
        if reporter is None:
            print("\n".join([title, *lines]), file=sys.stderr)
            return
        reporter.write_line("")  # the progress line may still be open
        reporter.write_sep("=", title, red=True, bold=True)
        for line in lines:
            reporter.write_line(line)


REPO_ROOT = Path(__file__).resolve().parents[1]
COMPILED_SOURCES = ("app", "migrations", "tests")


def compile_sources() -> None:
    """Byte-compile the checkout's own code (into its git-ignored `__pycache__/`s) before the
    workers start. With PYTHONDONTWRITEBYTECODE=1 (as in the Dockerfile, and on CI's
    machine) no process writes its bytecode, so every process the suite starts (the two
    workers, each `serve` and `simulate`, the migration subprocesses) compiled the ~100
    modules of `app` from source again: half a second of CPU each. Python still reads
    bytecode that exists; what is current is skipped here, by its timestamp."""
    for name in COMPILED_SOURCES:
        compileall.compile_dir(REPO_ROOT / name, quiet=1, workers=1)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # once, in the controller (or a run without xdist)
        compile_sources()
    plugin = SecretScanPlugin()
    config.stash[SECRET_SCAN] = plugin.scan
    config.pluginmanager.register(plugin, "jobs-gateway-secret-scan")


@pytest.fixture(scope="session")
def secret_scan(pytestconfig: pytest.Config) -> SecretScan:
    """The session's scan: e2e tests pass it what their server processes printed."""
    return pytestconfig.stash[SECRET_SCAN]


@pytest.fixture(autouse=True)
def _scan_what_e2e_servers_printed(request: pytest.FixtureRequest) -> None:
    """An e2e module that stops its processes with `stop(process) -> output` (as
    tests/e2e/test_serve.py does) has that output scanned too. The simulator's is not: it
    plays the identity server, and prints its demo credentials on purpose."""
    stop = getattr(request.module, "stop", None)
    if request.node.get_closest_marker("e2e") is None or not callable(stop):
        return
    scan = request.config.stash[SECRET_SCAN]

    def scanned_stop(process: subprocess.Popen[bytes]) -> Any:
        output = stop(process)
        args = list(process.args) if isinstance(process.args, list | tuple) else [process.args]
        if isinstance(output, str) and "simulate" not in args:
            scan.output(output, f"the process {' '.join(map(str, args[1:]))}")
        return output

    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(request.module, "stop", scanned_stop)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the session imported and collected lives as long as it: out of every later
    garbage collection, as `serve` keeps what its start-up built (app.main). Without it
    each full collection walks every module the suite imported, schemathesis' and
    hypothesis' included."""
    gc.collect()
    gc.freeze()


E2E_TESTS = "tests/e2e/"
BROWSER_TESTS = "tests/browser/"  # real server processes too, and a browser: e2e work

# The e2e work that takes longest, longest first (seconds of a run on a quiet 2-core machine).
# Each is a unit a worker takes whole: a module whose tests share module-scoped processes
# (E2E_WHOLE_MODULES: a server, a browser, an installed wheel) is one unit, any other e2e test
# (each parameter) is a unit of its own. E2e work not listed comes after the listed, and the
# in-process tests, a unit each, come last and fill in behind.
E2E_HEAVIEST_FIRST = (
    "tests/e2e/test_crash.py::test_kill_9_mid_refresh_leaves_nothing_half_written[postgres]",
    "tests/e2e/test_crash.py::test_kill_9_mid_refresh_leaves_nothing_half_written[sqlite]",
    "tests/e2e/test_packaging.py",  # one wheel, built and installed once (~20 s)
    "tests/e2e/test_tickets.py::test_one_alerts_life_and_a_restart_while_ticket_work_is_pending",
    "tests/e2e/test_keys.py::test_a_keys_rate_limit_holds_for_the_sum_of_two_replicas",
    "tests/e2e/test_replicas.py",
    "tests/e2e/test_beside.py",
    "tests/e2e/test_tickets.py",
    "tests/e2e/test_keys.py",
    "tests/e2e/test_outage_sqlite.py",
    "tests/e2e/test_stop.py",
    "tests/e2e/test_slow_clients.py",
)
E2E_LAST = "tests/browser/test_board.py"
"""After every other e2e unit: one server and one browser for all (~50 s), which wait on the
board's polls more than they work, so the other worker goes on to the in-process tests
meanwhile and the machine's two cores stay busy."""
E2E_WHOLE_MODULES = (
    "tests/browser/test_board.py",
    "tests/e2e/test_packaging.py",
    "tests/e2e/test_slow_clients.py",
)
# The in-process tests that take longest (5-40 s each where the rest take well under one),
# first among the in-process ones: queued in file order, one of them near the end left a
# worker busy alone while the other had finished.
IN_PROCESS_HEAVIEST_FIRST = (
    "tests/api/test_schemathesis.py",
    "tests/unit/test_logs.py::test_the_secret_scan_fails_the_session_however_it_runs",
    "tests/api/test_cache.py::test_a_hundred_customers_refreshed_at_once_lose_none",
    "tests/integration/test_store_query.py::test_every_filter_combination_in_every_sort",
    "tests/integration/test_migrations.py::test_alembic_command_line_upgrades_and_finds_no_drift",
    "tests/integration/test_store.py::test_ten_thousand_jobs_in_one_snapshot",
    "tests/unit/test_normalize.py::test_every_string_a_row_keeps_is_storable",
    "tests/integration/test_migrations.py::test_processes_migrating_at_once_take_turns",
    "tests/api/test_csv.py::test_every_job_once_and_in_order_across_many_batches",
    "tests/api/test_keys.py::test_a_scoped_key_cannot_reach_another_customer_through_any",
    "tests/integration/test_ratelimit_shared.py::test_replicas_admitting_at_once",
    "tests/api/test_service.py::test_try_it_out_works_with_the_prefilled_values",
    "tests/integration/test_ingest.py::test_one_writer_loses_no_customer_when_a_hundred",
)


def _work_unit(nodeid: str) -> str:
    """The unit of work of a test under `make test`: its module, for a module that shares
    module-scoped processes; else the test itself (its parameters included)."""
    module = nodeid.split("::", 1)[0]
    return module if module in E2E_WHOLE_MODULES else nodeid


def _work_rank(unit: str) -> int:
    """Where a unit goes in the queue: listed e2e work by its place, other e2e work after
    it, then E2E_LAST, then the listed in-process tests by their place, the other in-process
    tests last."""
    listed = len(E2E_HEAVIEST_FIRST)
    for rank, prefix in enumerate(E2E_HEAVIEST_FIRST):
        if unit.startswith(prefix):
            return rank
    if unit.startswith(E2E_LAST):
        return listed + 1
    if unit.startswith((E2E_TESTS, BROWSER_TESTS)):
        return listed
    for rank, prefix in enumerate(IN_PROCESS_HEAVIEST_FIRST, start=listed + 2):
        if unit.startswith(prefix):
            return rank
    return listed + 2 + len(IN_PROCESS_HEAVIEST_FIRST)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test` runs the suite on two pytest-xdist workers. Both take the e2e tests first,
    longest first, whenever they are free: two e2e tests run side by side (each starts its
    own processes, on free ports, with its own databases, and waits on conditions, not on
    the clock), as an e2e test ran beside the in-process tests before. Then the in-process
    tests, a test at a time, even out the end, so that both workers finish together.

    (`--dist loadgroup` would say the same with marks, but pytest-xdist 3.8 cannot rename
    the tests of pytest 9.2 into their groups.)"""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") != "load":
        return None

    class E2eFirst(LoadScopeScheduling):
        """Units of work (`_work_unit`), queued by `_work_rank` rather than by size."""

        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the queue is whole once the first unit is handed out
                self.ordered = True
                units = list(self.workqueue.items())
                self.workqueue.clear()
                for unit, tests in sorted(units, key=lambda item: _work_rank(item[0])):
                    self.workqueue[unit] = tests
            super()._assign_work_unit(node)

    return E2eFirst(config, log)
