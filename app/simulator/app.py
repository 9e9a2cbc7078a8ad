"""The simulated upstream as an ASGI app: the token, customers and jobs endpoints.

Paths, parameters and payloads are the upstream's (see `shared/reference/`). Where the
upstream documents nothing, the app answers the way an ASP.NET Core API behind an
IdentityServer does: query names and JSON property names are matched case-insensitively,
a bad parameter gets a 400 problem document, a 401 has an empty body and a
`WWW-Authenticate` header. Every response carries a `request-id` header.

An API request is checked in this order: latency, bearer token (401), rate limit (429) and
random unavailability (503), parameters (400), then the customer: forbidden (403), failing
(500), unknown (404), malformed page, and finally its page.

Pages are written as System.Text.Json writes them by default: anything outside ASCII
escaped, so the odd-text customers' lone surrogate goes out as the six characters
`\\ud800`, and their infinite count as the JSON number `1e400`. With `low_total_count` a
page's `metadata.totalCount` under-reports (see `reported_total`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.simulator.data import MAX_PAGE_SIZE, reported_total
from app.simulator.faults import (
    ENDPOINT_CUSTOMERS,
    ENDPOINT_JOBS,
    ENDPOINT_TOKEN,
    Fault,
    Malformed,
    RequestRecord,
)
from app.simulator.state import DEFAULT_SCOPE, Simulator

TOKEN_PATH = "/connect/token"  # noqa: S105 - a path, not a secret
CUSTOMERS_PATH = "/partner/external/v3/general/customers/batch"
JOBS_PATH = "/partner/external/v3/general/customers/{customer_id}/avpt-products/jobs/batch"
REQUEST_ID_HEADER = "request-id"
DEFAULT_PAGE_SIZE = 50

_REQUEST_ID_KEY = "simulator.request_id"


class BadRequest(Exception):
    """A parameter the upstream would refuse with 400; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class RequestIdMiddleware:
    """Gives every response, errors and unknown paths included, a fresh `request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[_REQUEST_ID_KEY] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


Handler = Callable[[Request], Awaitable[Response]]


def create_simulator_app(sim: Simulator) -> Starlette:
    """An ASGI app that speaks the upstream's token, customers and jobs endpoints."""

    def counted(endpoint: str, handler: Handler, *, api: bool = True) -> Handler:
        # One place for what every request gets: the in-flight gauge, the latency knob
        # (API endpoints only), and a record in `sim.stats`.
        async def wrapped(request: Request) -> Response:
            sim.stats.enter()
            try:
                config = sim.config
                if api and config.latency_seconds > 0:
                    await asyncio.sleep(config.latency_seconds)
                if api and request.path_params.get("customer_id") in config.slow_customers:
                    await asyncio.sleep(config.slow_latency_seconds)
                response = await handler(request)
            finally:
                sim.stats.leave()
            page_index, page_size = _paging_or_none(request) if api else (None, None)
            sim.stats.record(
                RequestRecord(
                    endpoint=endpoint,
                    status=response.status_code,
                    request_id=str(request.scope.get(_REQUEST_ID_KEY, "")),
                    at=sim.now(),
                    customer_id=request.path_params.get("customer_id"),
                    page_index=page_index,
                    page_size=page_size,
                )
            )
            return response

        return wrapped

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = _basic_credentials(request.headers.get("authorization"))
        if basic is not None:
            client_id, client_secret = basic
        access_token = sim.issue_token(client_id, client_secret)
        if access_token is None:
            return _oauth_error("invalid_client")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error("unsupported_grant_type")
        return JSONResponse(
            {
                "access_token": access_token,
                "expires_in": sim.config.token_ttl_seconds,
                "token_type": "Bearer",
                "scope": form.get("scope") or DEFAULT_SCOPE,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def refusal(request: Request, endpoint: str) -> Response | None:
        """The 401, 429 or 503 a request meets before its parameters are read."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sim.token_is_valid(credential.strip()):
            challenge = 'Bearer error="invalid_token"' if credential else "Bearer"
            return Response(status_code=401, headers={"WWW-Authenticate": challenge})
        fault = sim.gateway_fault(endpoint)
        if fault is Fault.RATE_LIMITED:
            return JSONResponse(
                {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        if fault is Fault.UNAVAILABLE:
            return PlainTextResponse("Service Unavailable", status_code=503)
        return None

    async def customers(request: Request) -> Response:
        refused = refusal(request, ENDPOINT_CUSTOMERS)
        if refused is not None:
            return refused
        try:
            page_index, page_size = _paging(request)
            body = await _json_body(request)
            wanted = _string_list(body, "customerIds")
        except BadRequest as exc:
            return _problem(exc)
        everyone = sim.customers()
        if wanted is not None:
            everyone = [c for c in everyone if c["id"] in frozenset(wanted)]
        return _page(everyone, page_index, page_size, low_total=sim.config.low_total_count)

    async def jobs(request: Request) -> Response:
        refused = refusal(request, ENDPOINT_JOBS)
        if refused is not None:
            return refused
        customer_id = str(request.path_params["customer_id"])
        try:
            page_index, page_size = _paging(request)
            body = await _json_body(request)
            job_type = _int_field(body, "jobType")
            job_module = _int_field(body, "jobModule")
        except BadRequest as exc:
            return _problem(exc)
        fault = sim.customer_fault(customer_id)
        if fault is Fault.FORBIDDEN:
            return _api_error(403, "Forbidden", "The customer is outside the app's scope.")
        if fault is Fault.SERVER_ERROR:
            return _api_error(500, "InternalServerError", "An unexpected error occurred.")
        if not sim.is_customer(customer_id):
            return _api_error(404, "NotFound", f"Customer {customer_id} was not found.")
        rows = [
            row
            for row in sim.rows(customer_id)
            if (job_type is None or row["jobType"] == job_type)
            and (job_module is None or row["jobModule"] == job_module)
        ]
        if fault is Fault.MALFORMED:
            return _malformed(sim.next_malformed(customer_id), rows, page_index, page_size)
        return _page(rows, page_index, page_size, low_total=sim.config.low_total_count)

    routes = [
        Route(TOKEN_PATH, counted(ENDPOINT_TOKEN, token, api=False), methods=["POST"]),
        Route(CUSTOMERS_PATH, counted(ENDPOINT_CUSTOMERS, customers), methods=["POST"]),
        Route(JOBS_PATH, counted(ENDPOINT_JOBS, jobs), methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(RequestIdMiddleware)])
    app.state.simulator = sim
    return app


def run_simulator(host: str, port: int, sim: Simulator) -> None:
    """Serve the simulator over HTTP until interrupted (`jobs-gateway simulate`)."""
    import uvicorn  # here, not at the top: only the CLI's `simulate` needs a server

    uvicorn.run(create_simulator_app(sim), host=host, port=port, log_level="info")


# --- requests -----------------------------------------------------------------------------


def _query(request: Request) -> dict[str, str]:
    # ASP.NET Core binds query parameters case-insensitively; so does the simulator.
    return {key.lower(): value for key, value in request.query_params.items()}


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _paging(request: Request) -> tuple[int, int]:
    query = _query(request)
    values = []
    for field, default, high in (
        ("pageIndex", 1, None),
        ("pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    ):
        raw = query.get(field.lower())
        value = default if raw is None or raw == "" else _int_or_none(raw)
        if value is None:
            raise BadRequest(field, f"The value '{raw}' is not valid for {field}.")
        if value < 1 or (high is not None and value > high):
            limit = f"between 1 and {high}" if high is not None else "at least 1"
            raise BadRequest(field, f"{field} must be {limit}.")
        values.append(value)
    return values[0], values[1]


def _paging_or_none(request: Request) -> tuple[int | None, int | None]:
    try:
        return _paging(request)
    except BadRequest:
        return None, None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest("$", "The request body is not valid JSON.") from exc
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("$", "The request body must be a JSON object.")
    # System.Text.Json's web defaults match property names case-insensitively.
    return {str(key).lower(): value for key, value in body.items()}


def _int_field(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field.lower())
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(field, f"The JSON value could not be converted to {field}.")
    return value


def _string_list(body: Mapping[str, Any], field: str) -> list[str] | None:
    value = body.get(field.lower())
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(field, f"{field} must be a list of strings.")
    return value


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """client_secret_basic: the credentials as an HTTP Basic header (RFC 6749 2.3.1)."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    return (unquote(client_id), unquote(client_secret)) if sep else None


# --- responses ----------------------------------------------------------------------------


def _page(
    rows: list[dict[str, Any]], page_index: int, page_size: int, *, low_total: bool = False
) -> Response:
    start = (page_index - 1) * page_size
    total = reported_total(len(rows), page_size, low=low_total)
    return Response(
        _wire_json(
            {
                "data": rows[start : start + page_size],
                "metadata": {"pageIndex": page_index, "pageSize": page_size, "totalCount": total},
            }
        ),
        media_type="application/json",
    )


def _wire_json(content: Any) -> bytes:
    """Compact JSON with everything outside ASCII escaped (a lone surrogate included, which
    UTF-8 could not carry); an infinite number is written as 1e400 (or -1e400)."""
    try:
        text = _dumps(content)
    except ValueError:  # an infinite float: JSON has no Infinity, but 1e400 reads as one
        marker = f"simulator-huge-number-{uuid.uuid4().hex}"
        text = (
            _dumps(_mark_infinities(content, marker))
            .replace(json.dumps(marker), "1e400")
            .replace(json.dumps("-" + marker), "-1e400")
        )
    return text.encode("ascii")


def _dumps(content: Any) -> str:
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _mark_infinities(value: Any, marker: str) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return marker if value > 0 else "-" + marker
    if isinstance(value, dict):
        return {key: _mark_infinities(item, marker) for key, item in value.items()}
    if isinstance(value, list):
        return [_mark_infinities(item, marker) for item in value]
    return value


def _malformed(
    kind: Malformed, rows: list[dict[str, Any]], page_index: int, page_size: int
) -> Response:
    if kind is Malformed.TRUNCATED_JSON:
        whole = bytes(_page(rows, page_index, page_size).body)
        return Response(whole[: max(len(whole) // 2, 1)], media_type="application/json")
    if kind is Malformed.HTML:
        return Response(
            "<html><head><title>Service maintenance</title></head>"
            "<body><h1>We'll be back soon.</h1></body></html>",
            media_type="text/html",
        )
    return JSONResponse({"data": "N/A", "metadata": None})


def _oauth_error(error: str) -> JSONResponse:
    return JSONResponse(
        {"error": error},
        status_code=400,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _problem(exc: BadRequest) -> JSONResponse:
    return JSONResponse(
        {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.",
            "status": 400,
            "errors": {exc.field: [exc.message]},
        },
        status_code=400,
        media_type="application/problem+json",
    )


def _api_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)
