"""What a browser meets: CORS for the origins of CORS_ORIGINS only, and a Swagger UI page
that nothing may frame or feed code from elsewhere."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.api.conftest import API_KEY, Gateway

ALLOWED = "https://portal.example.com"


async def test_a_preflight_from_a_listed_origin_is_allowed_without_a_key(
    gateway: Gateway,
) -> None:
    async with gateway(cors_origins=f"{ALLOWED},http://localhost:3000") as api:
        response = await api.options(
            "/jobs",
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-api-key",
                "X-API-Key": "",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
        # The real request then reads the headers a frontend needs.
        response = await api.get("/jobs", headers={"Origin": ALLOWED})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ALLOWED
        exposed = response.headers["access-control-expose-headers"].lower()
        assert {"etag", "cache-status", "x-request-id"} <= set(exposed.split(", "))


@pytest.mark.parametrize("origins", ["", ALLOWED])
async def test_other_origins_get_no_allow_header(gateway: Gateway, origins: str) -> None:
    async with gateway(cors_origins=origins) as api:
        preflight = await api.options(
            "/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        response = await api.get("/jobs", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code == 200  # the API answers; the browser withholds it


@pytest.mark.parametrize(
    "origin", ["portal.example.com", "https://portal.example.com/app", "ftp://x"]
)
def test_cors_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(_env_file=None, demo=True, cors_origins=origin)


async def test_the_docs_page_carries_security_headers(api: httpx.AsyncClient) -> None:
    page = await api.get("/docs")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert API_KEY not in page.text
