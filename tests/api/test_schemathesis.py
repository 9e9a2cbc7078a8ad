"""Every operation of the app's own OpenAPI document, fuzzed by schemathesis in process.

The app is built as tests/api/conftest.py builds it (the simulator as the upstream, in
process; an API key set, and sent with every request) and its lifespan runs: schemathesis
starts it on its first request and this module's fixture ends it. Valid and invalid inputs
are generated for each operation, and every answer is checked: never a 5xx, a status the
document declares, a body that matches the document's schema for it, and invalid input
refused with a 4xx.

Deterministic (derandomized, no example database) and capped, so the whole module stays
well within CI's time: MAX_EXAMPLES generated cases per operation, besides the examples and
boundary values of the coverage phase.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from app.main import create_app
from app.simulator import Simulator, SimulatorConfig, create_simulator_app
from tests.api.conftest import API_KEY, settings_for
from tests.clock import FakeClock

MAX_EXAMPLES = 25
"""Generated cases per operation (fuzzing phase); measured to keep the module under 90 s on
two cores."""

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    negative_data_rejection,
]

LONG_POLL_SECONDS = 0.05
"""`GET /events?wait=` holds a request for up to 30 real seconds when no event comes: a
valid `wait` is shortened to this, so that the operation is fuzzed like any other without
waiting. The shape of its answer does not depend on the wait (tests/api/test_events.py
covers the long poll)."""


async def _no_sleep(seconds: float) -> None:
    """The upstream client's backoff, not waited for."""


class InProcess:
    """The ASGI app schemathesis calls: the app this module's fixture built.

    The operations are collected from the document at import, when no database exists yet;
    the app that answers them is built (and its lifespan run) only when the tests run.
    """

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the app_under_test fixture builds the app"
        await self.app(scope, receive, send)


IN_PROCESS = InProcess()

REJECTIONS = schemathesis.Config().projects.get_default().checks.negative_data_rejection
"""What negative_data_rejection takes for a refusal by default: 400, 401, 404, 422, ..."""

CONFIG = schemathesis.Config.from_dict(
    {
        "headers": {"X-API-Key": API_KEY},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        # Invalid input must be refused with a 4xx. Besides schemathesis' list, 413 and 414
        # are such refusals: `app.api.middleware` refuses a body or a query string too large
        # before looking at what is in it (a long invalid `cursor` is refused as too long).
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [*REJECTIONS.expected_statuses, "413", "414"]
            }
        },
    }
)

# The app's own OpenAPI document: building an app opens nothing, only its lifespan does.
schema = schemathesis.openapi.from_dict(
    create_app(settings_for("sqlite://")).openapi(), config=CONFIG
)
schema.app = IN_PROCESS


@pytest.fixture(scope="module")
def app_under_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    database = tmp_path_factory.mktemp("schemathesis") / "store.sqlite"
    clock = FakeClock()
    sim = Simulator(SimulatorConfig(seed=7, customers=4), clock=clock)
    settings = settings_for(
        f"sqlite:///{database}",
        # Hundreds of requests a minute with one key: a rate limit would answer most of them.
        rate_limit_per_minute=0,
    )
    app = create_app(
        settings,
        clock=clock,
        transport=httpx.ASGITransport(app=create_simulator_app(sim)),
        sleep=_no_sleep,
    )
    IN_PROCESS.app = app
    try:
        yield  # schemathesis starts the lifespan with its first request
    finally:
        asgi.shutdown_lifespans()  # the lifespan's shutdown: engine, clients, background tasks
        IN_PROCESS.app = None
    assert hasattr(app.state, "services"), "the lifespan did not run"


@pytest.mark.usefixtures("app_under_test")
@schema.parametrize()
def test_every_operation(case: schemathesis.Case[Any]) -> None:
    if case.operation.label == "GET /events" and isinstance(case.query, dict):
        wait = case.query.get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 30:
            case.query["wait"] = min(wait, LONG_POLL_SECONDS)
    case.call_and_validate(checks=CHECKS)


# -- What schemathesis found, kept as plain cases -----------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        # A number is not an RFC 3339 time, in whatever form pydantic would read it as one.
        ("/jobs", {"start_after": "2.2218374606640465e-72"}, "start_after"),
        ("/jobs", {"modified_since": ".5"}, "modified_since"),
        ("/summary", {"start_before": "+1.5e3"}, "start_before"),
        # An empty value of a filter of names is refused, not read as no filter.
        ("/summary", {"job_type": ["", ""]}, "job_type"),
        ("/jobs", {"status": "failed,"}, "status"),
        ("/jobs.csv", {"module": ""}, "module"),
        ("/alerts", {"job_type": " "}, "job_type"),
    ],
)
async def test_found_parameters_are_422(
    api: httpx.AsyncClient, path: str, params: dict[str, object], named: str
) -> None:
    response = await api.get(path, params=params)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert body["detail"].startswith(f"{named}:")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xff\xfeu", "not UTF-8"),  # FastAPI's own answer was an undocumented 400
        (b"[" * 60_000, "nested too deeply"),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_422(
    api: httpx.AsyncClient, body: bytes, says: str
) -> None:
    response = await api.post(
        "/alerts/a:b:c/snooze", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_parameter"
    assert says in response.json()["detail"]
