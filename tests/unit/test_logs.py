"""Logs a platform can read: JSON lines, request ids, upstream request ids, no secrets.

`app.logs` (formatters, `configure_logging`), `app.api.middleware` (X-Request-ID) on a real
app in front of the simulator, and the session's secret scan of tests/conftest.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.api import errors
from app.api.middleware import RequestIdMiddleware
from app.logs import (
    QUIET_LOGGERS,
    REQUEST_ID,
    TEXT_FORMAT,
    UVICORN_LOGGERS,
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
)
from app.main import create_app
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from app.upstream.errors import UpstreamStatusError, upstream_fields
from tests.api.conftest import API_KEY, settings_for
from tests.clock import FakeClock
from tests.conftest import SecretScan

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NEW_ID = re.compile(r"^[0-9a-f]{32}$")


class Records(logging.Handler):
    """Records of a logger, with the request id as the service's handlers add it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def recording(name: str, *, propagate: bool = True) -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger(name)
    handler = Records()
    level, was_propagating = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = propagate
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = was_propagating


def formatted(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    RequestIdFilter().filter(record)
    return formatter.format(record)


def record(msg: str = "customer %s: %d jobs", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("app.refresh", logging.INFO, __file__, 1, msg, args or ("c1", 3), None)
    made.__dict__.update(extra)
    return made


# -- formatters --------------------------------------------------------------------------------


def test_a_json_line_has_the_fields_and_the_extras() -> None:
    line = formatted(JsonFormatter(), record(customer_id="c1", upstream_request_id="up-1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert TIMESTAMP.match(entry.pop("ts"))
    assert entry == {
        "level": "INFO",
        "logger": "app.refresh",
        "msg": "customer c1: 3 jobs",
        "customer_id": "c1",
        "upstream_request_id": "up-1",
    }


def test_a_json_line_has_the_request_id_inside_a_request_only() -> None:
    token = REQUEST_ID.set("abc123")
    try:
        inside = json.loads(formatted(JsonFormatter(), record()))
    finally:
        REQUEST_ID.reset(token)
    outside = json.loads(formatted(JsonFormatter(), record()))
    assert inside["request_id"] == "abc123"
    assert "request_id" not in outside


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        failed = logging.LogRecord(
            "app.api", logging.ERROR, __file__, 1, "unexpected error", None, sys.exc_info()
        )
    line = formatted(JsonFormatter(), failed)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "unexpected error"
    assert entry["exc"].startswith("Traceback (most recent call last):\n")
    assert entry["exc"].endswith("ValueError: bad\nvalue")


def test_uvicorns_access_line_gets_its_parts_as_fields() -> None:
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/jobs?status=failed", "1.1", 200),
        None,
    )
    entry = json.loads(formatted(JsonFormatter(), access))
    assert entry["msg"] == '127.0.0.1:5000 - "GET /jobs?status=failed HTTP/1.1" 200'
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/jobs?status=failed", 200)


def test_extras_json_cannot_take_are_written_as_text() -> None:
    entry = json.loads(formatted(JsonFormatter(), record(odd={(1, 2): "x"}, when=object())))
    assert entry["odd"] == "{(1, 2): 'x'}"
    assert entry["msg"] == "customer c1: 3 jobs"


def test_text_lines_look_as_before_and_name_the_request_id_when_there_is_one() -> None:
    plain, ours = logging.Formatter(TEXT_FORMAT), TextFormatter(TEXT_FORMAT)
    same = record()  # one record: two would differ in their time under load
    assert formatted(ours, same) == plain.format(same)
    token = REQUEST_ID.set("abc123")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            failed = logging.LogRecord(
                "app.api", logging.ERROR, __file__, 1, "unexpected error", None, sys.exc_info()
            )
        text = formatted(ours, failed)
    finally:
        REQUEST_ID.reset(token)
    first, *rest = text.splitlines()
    assert first.endswith(" ERROR app.api unexpected error request_id=abc123")
    assert rest[0] == "Traceback (most recent call last):"


def test_upstream_fields_name_the_upstream_request_id() -> None:
    error = UpstreamStatusError(
        "AvePoint answered 503", customer_id="c1", status=503, request_id="r-9"
    )
    assert upstream_fields(error) == {
        "error_kind": "http_status",
        "customer_id": "c1",
        "upstream_status": 503,
        "upstream_request_id": "r-9",
    }


# -- configure_logging -------------------------------------------------------------------------


@pytest.fixture
def global_logging() -> Iterator[None]:
    """configure_logging changes the process's logging: put it back afterwards."""
    names = ["", *UVICORN_LOGGERS, *QUIET_LOGGERS, "app"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    propagate = {n: logging.getLogger(n).propagate for n in names}
    hooks = (sys.excepthook, threading.excepthook)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        sys.excepthook, threading.excepthook = hooks
        for name, (handlers, level) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate[name]


def redirect(logger: logging.Logger, stream: io.StringIO) -> None:
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(
            handler, "_jobs_gateway_handler", False
        ):
            handler.setStream(stream)


@pytest.mark.usefixtures("global_logging")
def test_with_json_every_line_is_json_warnings_and_uncaught_exceptions_too() -> None:
    configure_logging("INFO", "json")
    out = io.StringIO()
    redirect(logging.getLogger(), out)
    assert not logging.getLogger("uvicorn.access").handlers
    logging.getLogger("app.refresh").info("customer %s refreshed", "c1", extra={"jobs": 3})
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("httpx").info("HTTP Request: POST https://upstream/ (not shown)")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
    try:
        raise RuntimeError("crashed")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger"], e["level"]) for e in entries] == [
        ("app.refresh", "INFO"),
        ("uvicorn.error", "INFO"),
        ("py.warnings", "WARNING"),
        ("app", "CRITICAL"),
    ]
    assert entries[0]["jobs"] == 3
    assert "a deprecated thing" in entries[2]["msg"]
    assert entries[3]["msg"] == "uncaught exception"
    assert entries[3]["exc"].endswith("RuntimeError: crashed")


@pytest.mark.usefixtures("global_logging")
def test_with_text_uvicorn_keeps_its_look_and_configuring_again_replaces_only_ours() -> None:
    root = logging.getLogger()
    theirs = logging.NullHandler()
    root.addHandler(theirs)
    configure_logging("chatty", "json")  # an unknown level means INFO
    assert root.level == logging.INFO
    configure_logging("debug", "text")
    assert root.level == logging.DEBUG
    assert theirs in root.handlers
    assert sum(getattr(h, "_jobs_gateway_handler", False) for h in root.handlers) == 1
    access, out = logging.getLogger("uvicorn.access"), io.StringIO()
    redirect(access, out)
    token = REQUEST_ID.set("abc123")
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/healthz", "1.1", 200)
    finally:
        REQUEST_ID.reset(token)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # colours, on a terminal
    assert plain == 'INFO:     127.0.0.1:5000 - "GET /healthz HTTP/1.1" 200 OK request_id=abc123\n'
    assert sys.excepthook is sys.__excepthook__


# -- X-Request-ID on a real app ----------------------------------------------------------------


@pytest.fixture
def sim(clock: FakeClock) -> Simulator:
    return Simulator(SimulatorConfig(seed=11, customers=2), clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway.test",
            headers={"X-API-Key": API_KEY},
        ) as client,
    ):
        yield client


async def no_sleep(seconds: float) -> None:
    return None


async def test_every_answer_says_its_request_id_and_its_log_lines_carry_it(
    database_url: str, sim: Simulator, clock: FakeClock
) -> None:
    failing = sim.customer_ids()[0]
    sim.config = dataclasses.replace(sim.config, failing_customers=frozenset({failing}))
    app = create_app(
        settings_for(database_url),
        clock=clock,
        transport=httpx.ASGITransport(app=create_simulator_app(sim)),
        sleep=no_sleep,
    )
    with recording("app") as records:
        async with served(app) as api:
            first = await api.get("/jobs", headers={"X-Request-ID": "abc123"})
            assert first.status_code == 200
            assert first.headers["x-request-id"] == "abc123"
            logging.getLogger("app.test").info("between requests")
            # The same query again: FastReadsMiddleware answers it before routing.
            assert app.state.services.fast.lookup({"path": "/jobs", "query_string": b""}, None)
            again = await api.get("/jobs")
            etag = again.headers["etag"]
            answers = [
                again,
                await api.get("/jobs", headers={"If-None-Match": etag}),
                await api.head("/jobs"),
                await api.get("/no-such-route"),
                await api.get("/jobs", headers={"X-API-Key": "wrong"}),
                await api.get("/jobs", params={"status": "exploded"}),
            ]
    assert [a.status_code for a in answers] == [200, 304, 200, 404, 401, 422]
    ids = [a.headers["x-request-id"] for a in answers]
    assert all(NEW_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    # The failed refresh the first request waited for: its lines carry that request's id,
    # and the upstream's request id, in the text and as a field.
    failed = [r for r in records if r.getMessage().startswith(f"refresh of customer {failing}")]
    assert failed, [r.getMessage() for r in records]
    for line in failed:
        assert line.request_id == "abc123"  # type: ignore[attr-defined]
        upstream_id = line.upstream_request_id  # type: ignore[attr-defined]
        assert upstream_id and f"request id {upstream_id!r}" in line.getMessage()
        assert line.upstream_status == 500  # type: ignore[attr-defined]
    retries = [r for r in records if "; retry " in r.getMessage()]
    assert retries and all(r.upstream_request_id for r in retries)  # type: ignore[attr-defined]
    between = next(r for r in records if r.getMessage() == "between requests")
    assert between.request_id is None  # type: ignore[attr-defined]
    assert REQUEST_ID.get() is None


@pytest.mark.parametrize(
    "sent",
    [b"has space", b"x" * 129, b"caf\xc3\xa9", b"tab\tinside", b"", b'quote"\x7f'],
    ids=["space", "too-long", "non-ascii", "control", "empty", "del"],
)
async def test_an_insane_request_id_is_replaced_never_echoed(sent: bytes) -> None:
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as client:
        response = await client.get("/", headers=[(b"X-Request-ID", sent)])
        kept = await client.get("/", headers={"X-Request-ID": "A-b_c.1:2/" + "x" * 118})
    assert NEW_ID.match(response.headers["x-request-id"])
    assert kept.headers["x-request-id"] == "A-b_c.1:2/" + "x" * 118


async def test_an_unexpected_error_is_answered_with_the_request_id_and_logged_with_it() -> None:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with recording("app.api", propagate=False) as records:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://gateway.test",
        ) as client:
            response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    assert response.json() == {
        "error": "internal",
        "detail": "an unexpected error occurred; it has been logged",
    }
    (logged,) = records
    assert logged.getMessage() == "unexpected error on GET /boom"
    assert logged.request_id == "req-500"  # type: ignore[attr-defined]


# -- the session's secret scan -----------------------------------------------------------------


def test_the_secret_scan_reports_a_secret_in_a_log_line_and_in_process_output() -> None:
    scan = SecretScan()
    scan.tokens.add("Tok3n-issued-by-the-simulator-0123456789abc")
    logger = logging.getLogger("tests.leaky")
    logger.addHandler(scan.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the session's own scan must not see these lines
    try:
        logger.warning("token request with client secret %s", "demo-secret")
        logger.info("all is well", extra={"url": "http://hook.test/in"})
        logger.info("sent", extra={"headers": {"authorization": "Bearer sk-live-1234567890"}})
        try:
            raise ValueError("secret whsec_MDEyMzQ1Njc4OWFiY2RlZg== refused")
        except ValueError:
            logger.exception("webhook signing failed")
        logger.debug("header\nTok3n-issued-by-the-simulator-0123456789abc")
    finally:
        logger.removeHandler(scan.handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    scan.output("INFO: ready\nAPI_KEYS=test-key-0123456789\n", "the process serve")
    leaks = scan.leaks()
    assert [(leak.what, leak.source) for leak in leaks] == [
        ("the simulator's client secret ('demo-secret')", "tests.leaky"),
        ("a bearer token", "tests.leaky"),
        ("a webhook secret", "tests.leaky"),
        ("a token the simulator issued", "tests.leaky"),
        ("the API key of tests/api ('test-key-0123456789')", "the process serve"),
    ]
    # The report names the secret; the line it shows has it masked.
    assert "demo-secret" not in leaks[0].line and "<********>" in leaks[0].line
    assert "sk-live-1234567890" not in str(leaks[1])
    assert SecretScan().leaks() == []


def test_the_secret_scan_lets_prose_about_credentials_pass() -> None:
    scan = SecretScan()
    scan.output(
        "send the key as Authorization: Bearer <key>\n"
        "WEBHOOK_SECRET must be whsec_<base64>\n"
        "Bearer authentication failed\n",
        "the process serve",
    )
    assert scan.leaks() == []


LEAKY_SESSION = {
    "conftest.py": "from tests.conftest import pytest_configure  # the suite's secret scan\n",
    "test_leaky.py": (
        "import logging\n\n\n"
        "def test_logs_a_database_password():\n"
        "    logging.getLogger('app.leaky').warning('connecting with %s', 'pw-s3cret')\n\n\n"
        "def test_logs_nothing():\n"
        "    pass\n"
    ),
}


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["serial", "xdist"])
def test_the_secret_scan_fails_the_session_however_it_runs(
    workers: list[str], tmp_path: Path
) -> None:
    """`make test` runs the suite on pytest-xdist workers: a secret one of them logged fails
    the whole session, as in a session of one process."""
    for name, text in LEAKY_SESSION.items():
        (tmp_path / name).write_text(text)
    # Without the plugins these two tests do not use: schemathesis' and hypothesis' cost
    # each process of the session nearly four seconds of CPU to load.
    unused = ["-p", "no:schemathesis", "-p", "no:hypothesispytest"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *unused, *workers],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "1 log line(s) hold a secret" in result.stdout
    assert "a DATABASE_URL's password ('pw-s3cret') in a line of app.leaky" in result.stdout
    assert '"msg": "connecting with <********>"' in result.stdout  # the line, masked
