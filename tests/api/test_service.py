"""The service's own endpoints: health, readiness, metrics, docs without a CDN, OpenAPI; and
what the server's app does at start-up that other apps do not."""

from __future__ import annotations

import base64
import gc
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.cli
import app.main
from app import catalog
from app.config import Settings
from app.main import create_app
from app.server import StoppingServer
from app.simulator import Simulator, create_simulator_app
from tests.api.conftest import Gateway, settings_for
from tests.clock import FakeClock

ROOT = Path(__file__).resolve().parents[2]


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"} | {"detail": None}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


async def test_metrics_count_requests_refreshes_and_the_cache(api: httpx.AsyncClient) -> None:
    await api.get("/jobs")  # waits on the refresh of every customer: one miss
    await api.get("/jobs")  # everything fresh, nothing asked of the upstream: one hit
    await api.head("/jobs")  # a hit too, counted under its route with its own method
    text = (await api.get("/metrics")).text
    assert 'jobs_gateway_http_requests_total{method="GET",route="/jobs",status="200"} 2.0' in text
    assert 'jobs_gateway_http_requests_total{method="HEAD",route="/jobs",status="200"} 1.0' in text
    assert 'route="unmatched"' not in text
    assert 'jobs_gateway_refreshes_total{outcome="success"} 4.0' in text
    # Once per request that asks for freshness, not once per customer.
    assert 'jobs_gateway_cache_lookups_total{result="hit"} 2.0' in text
    assert 'jobs_gateway_cache_lookups_total{result="miss"} 1.0' in text
    lookups = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("jobs_gateway_cache_lookups_total{")
    ]
    assert sum(lookups) == 3, "three requests asked for freshness: three lookups, none stale"
    assert 'jobs_gateway_upstream_requests_total{endpoint="jobs",outcome="ok",status="200"}' in text
    assert (
        'jobs_gateway_upstream_requests_total{endpoint="customers",outcome="ok",status="200"}'
        in (text)
    )
    assert 'jobs_gateway_upstream_request_seconds_bucket{endpoint="jobs"' in text
    # What an operator alerts on: per customer refreshes, the oldest snapshot, the webhook
    # backlog, the event loop, the leases (PostgreSQL replicas).
    customer = text.split('jobs_gateway_customer_refreshes_total{customer_id="', 1)[1][:36]
    assert (
        f'jobs_gateway_customer_refreshes_total{{customer_id="{customer}",outcome="success"}} 1.0'
        in text
    )
    assert f'jobs_gateway_customer_refresh_seconds{{customer_id="{customer}"}}' in text
    for name in (
        "jobs_gateway_oldest_snapshot_age_seconds",
        "jobs_gateway_webhook_backlog",
        "jobs_gateway_refresh_leases_held",
        "jobs_gateway_event_loop_lag_seconds_bucket",
        "jobs_gateway_events_total",
    ):
        assert f"\n{name}" in text, name


async def test_swagger_ui_is_served_without_any_cdn(api: httpx.AsyncClient) -> None:
    page = await api.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "https://" not in page.text
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page.text
        served = await api.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_only_the_servers_app_freezes_the_heap_once_started(
    database_url: str, sim: Simulator, clock: FakeClock
) -> None:
    """A full collection, `gc.freeze()` and rarer collections after start-up pay where one app
    lives as long as its process (`serve`), not in every app a process builds (the tests
    build hundreds)."""
    frozen, thresholds = gc.get_freeze_count(), gc.get_threshold()
    upstream = httpx.ASGITransport(app=create_simulator_app(sim))
    plain = create_app(settings_for(database_url), clock=clock, transport=upstream)
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold() == thresholds
    server = create_app(
        settings_for(database_url), clock=clock, transport=upstream, freeze_heap=True
    )
    try:
        async with server.router.lifespan_context(server):
            assert gc.get_freeze_count() > frozen
            assert gc.get_threshold() == app.main.SERVER_GC_THRESHOLDS
    finally:
        gc.unfreeze()  # the rest of the session collects as usual
        gc.set_threshold(*thresholds)


def test_serve_builds_the_app_that_freezes_its_heap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: dict[str, Any] = {}

    def recording_create_app(settings: Settings, **options: Any) -> Any:
        built.update(options)
        return create_app(settings, **options)

    monkeypatch.setattr(app.main, "create_app", recording_create_app)
    monkeypatch.setattr(app.cli, "configure_logging", lambda *args: None)  # the suite's own
    monkeypatch.setattr(StoppingServer, "run", lambda self, *args, **kwargs: None)
    settings = settings_for(f"sqlite:///{tmp_path / 'serve.sqlite'}")
    app.cli.run_server(settings, "127.0.0.1", 0)
    assert built["freeze_heap"] is True


def test_the_committed_openapi_is_what_the_app_generates() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == create_app(Settings(_env_file=None, demo=True)).openapi()


def test_every_route_declares_its_errors() -> None:
    document = create_app(Settings(_env_file=None, demo=True)).openapi()
    for path in ("/jobs", "/jobs/{customer_id}/{job_id}", "/customers"):
        responses = document["paths"][path]["get"]["responses"]
        assert {"401", "422"} <= set(responses), path
    # /jobs shows Swagger UI users what they may pick: each enum filter is an array whose
    # items list every accepted name (a multi-select), with nothing chosen beforehand (an
    # example would pre-fill "Try it out" and filter its answer down to nothing).
    parameters = {p["name"]: p for p in document["paths"]["/jobs"]["get"]["parameters"]}
    accepted = {"status": catalog.STATUS, "job_type": catalog.JOB_TYPE, "module": catalog.MODULE}
    for name, cat in accepted.items():
        parameter = parameters[name]
        schema = parameter["schema"]
        # Swagger UI takes the type of the first alternative (the second is null).
        assert schema["anyOf"][0] == {"type": "array", "items": {"type": "string"}}, name
        assert schema["items"]["enum"] == cat.names(), name
        for where in (parameter, schema):
            assert not {"example", "examples", "default"} & set(where), (name, where)
    assert "failed" in parameters["status"]["schema"]["items"]["enum"]
    assert "microsoft_365" in parameters["job_type"]["schema"]["items"]["enum"]
    assert {"teams_chat", "archiver", "azure_sql"} <= set(
        parameters["module"]["schema"]["items"]["enum"]
    )
    assert document["components"]["schemas"]["Job"]["example"]["status"] == "failed"


async def test_try_it_out_works_with_the_prefilled_values_of_every_operation(
    gateway: Gateway, sim: Simulator, clock: FakeClock
) -> None:
    """What Swagger UI pre-fills (parameter examples and defaults, the body's example) is
    valid for every operation: a user who presses Execute without editing gets an answer,
    not a 422. Path parameters Swagger UI cannot know are taken from the service's data."""
    customer = sim.customer_ids()[0]
    sim.put_job(customer, "try-it-out", status=3, start=clock.now)
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()
    async with gateway(webhook_urls="http://127.0.0.1:9/hook", webhook_secret=secret) as api:
        app = api._transport.app  # type: ignore[attr-defined]
        document = app.openapi()
        jobs = (await api.get("/jobs", params={"max_age": 0, "limit": 1})).json()["items"]
        alerts = (await api.get("/alerts", params={"state": "open"})).json()["items"]
        run = (await api.post("/refresh")).json()
        deliveries = (await api.get("/webhooks/deliveries")).json()["items"]
        window = await api.post(
            "/maintenance",
            json={"customer_id": None, "starts_at": "2030-01-01T00:00:00Z",
                  "ends_at": "2030-01-02T00:00:00Z"},
        )  # fmt: skip
        known = {
            "customer_id": jobs[0]["customer_id"],
            "job_id": jobs[0]["job_id"],
            "alert_key": alerts[0]["alert_key"],
            "run_id": run["run_id"],
            "delivery_id": deliveries[0]["id"],
            "key": alerts[0]["alert_key"],
            "window_id": window.json()["id"],
        }
        schemas = document["components"]["schemas"]
        for path, operations in document["paths"].items():
            for method, op in operations.items():
                query: dict[str, Any] = {}
                url = path
                for p in op.get("parameters", []):
                    value = _prefilled(p)
                    if p["in"] == "path":
                        url = url.replace("{" + p["name"] + "}", str(known[p["name"]]))
                    elif value is not None:
                        query[p["name"]] = value
                body = None
                content = op.get("requestBody", {}).get("content", {}).get("application/json")
                if content is not None:
                    body = _example(content["schema"], schemas)
                response = await api.request(method, url, params=query, json=body)
                # A delivery still pending cannot be retried: the one refusal that is about
                # the state of the data, not about what was filled in.
                allowed = {409} if path.endswith("/retry") else set()
                assert response.status_code < 400 or response.status_code in allowed, (
                    method,
                    path,
                    query,
                    body,
                    response.text,
                )


def _prefilled(parameter: dict[str, Any]) -> Any:
    if "example" in parameter:
        return parameter["example"]
    if parameter.get("examples"):
        first = next(iter(parameter["examples"].values()))
        return first.get("value")
    return parameter.get("schema", {}).get("default")


def _example(schema: dict[str, Any], schemas: dict[str, Any]) -> Any:
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            return schemas[option["$ref"].rsplit("/", 1)[1]].get("example")
    return schema.get("example")
