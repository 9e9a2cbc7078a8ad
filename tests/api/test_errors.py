"""Errors: one envelope, the right status, no 500 and no secret for any input."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.simulator import Simulator
from tests.api.conftest import API_KEY, Gateway


def assert_envelope(response: httpx.Response, status: int, error: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert body["detail"]
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/jobs", "/customers", "/enums", "/jobs/a/b"])
async def test_401_without_a_valid_key(api: httpx.AsyncClient, path: str) -> None:
    missing = await api.get(path, headers={"X-API-Key": ""})
    assert_envelope(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await api.get(path, headers={"X-API-Key": "nope"})
    assert_envelope(wrong, 401, "unauthorized")


async def test_both_key_headers_are_accepted(api: httpx.AsyncClient) -> None:
    bearer = await api.get(
        "/enums", headers={"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"}
    )
    assert bearer.status_code == 200
    header = await api.get("/enums")
    assert header.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"])
async def test_open_endpoints_need_no_key(api: httpx.AsyncClient, path: str) -> None:
    response = await api.get(path, headers={"X-API-Key": ""})
    assert response.status_code == 200


async def test_404_for_unknown_job_customer_and_route(
    api: httpx.AsyncClient, sim: Simulator
) -> None:
    cid = sim.customer_ids()[0]
    assert_envelope(await api.get(f"/jobs/{cid}/NOPE"), 404, "not_found")
    assert_envelope(await api.get("/jobs/not-a-customer/NOPE"), 404, "not_found")
    assert_envelope(await api.get("/nothing-here"), 404, "not_found")


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"status": "broken"}, ["status", "failed", "finished_with_exception"]),
        ({"job_type": "m365"}, ["job_type", "microsoft_365", "iaas_paas"]),
        ({"module": "nope"}, ["module", "exchange_online"]),
        ({"sort": "name"}, ["sort"]),
        ({"limit": 0}, ["limit"]),
        ({"limit": 501}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"start_after": "last tuesday"}, ["start_after"]),
        ({"modified_since": "2025-13-01"}, ["modified_since"]),
        ({"start_after": "0001-01-01T00:00:00+14:00"}, ["start_after"]),
        ({"start_before": "0.5"}, ["start_before", "RFC 3339"]),
        ({"modified_since": "1700000000"}, ["modified_since", "RFC 3339"]),
        ({"start_before": "9999-12-31T23:59:59-14:00"}, ["start_before"]),
        ({"max_age": -1}, ["max_age"]),
        ({"cursor": "garbage!"}, ["cursor"]),
        ({"customer_id": "not-a-customer"}, ["customer_id"]),
    ],
)
async def test_422_names_the_parameter(
    api: httpx.AsyncClient, params: dict[str, object], names: list[str]
) -> None:
    body = assert_envelope(await api.get("/jobs", params=params), 422, "invalid_parameter")
    for name in names:
        assert name in body["detail"]


async def test_a_cursor_is_not_reused_with_other_filters(api: httpx.AsyncClient) -> None:
    cursor = (await api.get("/jobs", params={"limit": 2})).json()["next_cursor"]
    assert cursor
    body = assert_envelope(
        await api.get("/jobs", params={"limit": 2, "cursor": cursor, "status": "failed"}),
        422,
        "invalid_parameter",
    )
    assert "cursor" in body["detail"]


async def test_405_is_an_envelope_too(api: httpx.AsyncClient) -> None:
    assert_envelope(await api.delete("/jobs"), 405, "method_not_allowed")


@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    key=st.sampled_from(
        [
            "status",
            "job_type",
            "module",
            "customer_id",
            "start_after",
            "start_before",
            "modified_since",
            "q",
            "sort",
            "limit",
            "cursor",
            "max_age",
            "unknown_param",
        ]
    ),
    value=st.text(max_size=300),
)
async def test_no_input_gets_a_500(api: httpx.AsyncClient, key: str, value: str) -> None:
    response = await api.get("/jobs", params={key: value})
    assert response.status_code in {200, 422}, response.text
    if response.status_code == 422:
        assert response.json()["error"] == "invalid_parameter"


async def test_no_secret_reaches_a_response_or_a_log(
    gateway: Gateway, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ids = ",".join(sim.customer_ids())
    async with gateway(customer_ids=ids, avepoint_client_secret="wrong-secret-s3cr3t") as api:
        response = await api.get("/jobs")
        body = response.text
        metrics = (await api.get("/metrics")).text
        discovered = await gateway_without_ids(api)
    assert response.status_code == 200
    assert {s["error"]["kind"] for s in response.json()["sources"]} == {"auth"}
    for text in (body, metrics, discovered, caplog.text):
        assert "wrong-secret-s3cr3t" not in text
        assert API_KEY not in text


async def gateway_without_ids(api: httpx.AsyncClient) -> str:
    return (await api.get("/customers")).text


async def test_503_when_the_customer_list_cannot_be_had(gateway: Gateway) -> None:
    async with gateway(avepoint_client_secret="wrong") as api:
        body = assert_envelope(await api.get("/jobs"), 503, "unavailable")
    assert "CUSTOMER_IDS" in body["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/jobs?q=a%00b",
        "/jobs?customer_id=%00",
        "/jobs?status=%00",
        "/jobs/x%00/y",
        "/customers?cursor=%00",
    ],
)
async def test_a_nul_character_is_a_clear_422(api: httpx.AsyncClient, path: str) -> None:
    body = assert_envelope(await api.get(path), 422, "invalid_parameter")
    assert "NUL" in body["detail"]


async def test_a_forged_cursor_is_a_422_on_every_database(api: httpx.AsyncClient) -> None:
    import base64
    import json

    from app.api.params import fingerprint

    def forged(sort: str, position: list[object]) -> str:
        fp = fingerprint(
            status=None,
            job_type=None,
            module=None,
            customer_id=None,
            start_after=None,
            start_before=None,
            modified_since=None,
            q=None,
            sort=sort,
        )
        raw = json.dumps({"k": position, "f": fp}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    for sort, position in (
        ("-start_time", ["not a time", "c", "j"]),
        ("-start_time", [12, "c", "j"]),
        ("-start_time", ["2025-01-01T00:00:00", "c", "j"]),
        ("-start_time", ["2025-01-01T00:00:00Z", "c\x00", "j"]),
        ("duration", [10**30, "c", "j"]),
        ("duration", ["soon", "c", "j"]),
        ("-start_time", ["0001-01-01T00:00:00+14:00", "c", "j"]),
        ("last_modified", ["9999-12-31T23:59:59-05:00", "c", "j"]),
    ):
        response = await api.get("/jobs", params={"cursor": forged(sort, position), "sort": sort})
        assert_envelope(response, 422, "invalid_parameter")


async def test_a_deeply_nested_cursor_is_a_422(api: httpx.AsyncClient) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(b"[" * 1400).decode().rstrip("=")
    assert_envelope(await api.get("/jobs", params={"cursor": cursor}), 422, "invalid_parameter")


@pytest.mark.parametrize("path", ["/jobs?cursor=%00", "/jobs?status=nope", "/jobs/x%00/y"])
async def test_the_key_is_checked_before_any_parameter(api: httpx.AsyncClient, path: str) -> None:
    assert_envelope(await api.get(path, headers={"X-API-Key": ""}), 401, "unauthorized")


async def test_an_error_does_not_echo_a_huge_value(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs", params={"status": "x" * 7_000})
    body = assert_envelope(response, 422, "invalid_parameter")
    assert len(body["detail"]) < 2_000
    # Past 8 KiB the query string is refused whole, before any parameter is read.
    response = await api.get("/jobs", params={"status": "x" * 20_000})
    body = assert_envelope(response, 414, "uri_too_long")
    assert len(body["detail"]) < 300


async def test_a_trailing_slash_is_not_redirected_by_host(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs/", headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/jobs?limit=1"])
async def test_head_works_wherever_get_does(api: httpx.AsyncClient, path: str) -> None:
    get = await api.get(path)
    head = await api.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize("path", ["/alerts", "/webhooks/deliveries", "/tickets"])
async def test_a_cursor_of_a_digit_int_cannot_read_is_a_clear_422(
    api: httpx.AsyncClient, path: str
) -> None:
    """The cursor "²" is a digit to `str.isdigit` but no number to `int()`: it was a 500."""
    response = await api.get(path, params={"cursor": "\u00b2"})
    body = assert_envelope(response, 422, "invalid_parameter")
    assert "cursor" in body["detail"]
