"""The service's own endpoints: health, readiness, metrics, docs without a CDN, OpenAPI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]


async def test_health_and_readiness(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"} | {"detail": None}
    ready = await api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


async def test_metrics_count_requests_refreshes_and_the_cache(api: httpx.AsyncClient) -> None:
    await api.get("/jobs")
    await api.get("/jobs")
    text = (await api.get("/metrics")).text
    assert 'jobs_gateway_http_requests_total{method="GET",route="/jobs",status="200"} 2.0' in text
    assert 'jobs_gateway_refreshes_total{outcome="success"} 4.0' in text
    assert 'jobs_gateway_cache_lookups_total{result="hit"} 4.0' in text
    assert 'jobs_gateway_cache_lookups_total{result="miss"} 4.0' in text
    assert 'jobs_gateway_upstream_requests_total{outcome="ok"}' in text
    assert "jobs_gateway_upstream_request_seconds_bucket" in text


async def test_swagger_ui_is_served_without_any_cdn(api: httpx.AsyncClient) -> None:
    page = await api.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "https://" not in page.text
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page.text
        served = await api.get(asset)
        assert served.status_code == 200 and len(served.content) > 10_000


def test_the_committed_openapi_is_what_the_app_generates() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == create_app(Settings(_env_file=None, demo=True)).openapi()


def test_every_route_declares_its_errors() -> None:
    document = create_app(Settings(_env_file=None, demo=True)).openapi()
    for path in ("/jobs", "/jobs/{customer_id}/{job_id}", "/customers"):
        responses = document["paths"][path]["get"]["responses"]
        assert {"401", "422"} <= set(responses), path
    # /jobs shows Swagger UI users what to type: examples on its enum filters, a job example.
    parameters = {p["name"]: p for p in document["paths"]["/jobs"]["get"]["parameters"]}
    for name in ("status", "job_type", "module"):
        assert parameters[name]["examples"], name
    assert document["components"]["schemas"]["Job"]["example"]["status"] == "failed"
