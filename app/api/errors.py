"""One error envelope for every error: `{"error": "<kind>", "detail": "<what and how to fix>"}`.

    ApiError(status, error, detail)
    ├── Unauthorized        401 unauthorized
    ├── NotFound            404 not_found
    ├── Conflict            409 conflict
    ├── TooLarge            413 too_large
    ├── UriTooLong          414 uri_too_long
    ├── InvalidParameter    422 invalid_parameter
    ├── RateLimited         429 rate_limited
    └── Unavailable         503 unavailable

The change feed's `410 cursor_expired` (`app.api.events`) is the same envelope with one more
field, `oldest_cursor`: where the client can read on from.

Validation errors from FastAPI, Starlette's HTTP errors (unknown route, wrong method) and any
unexpected exception are turned into the same envelope; the last never shows a stack trace.

A database that cannot be reached or written (`app.store.outage.unreachable`) is not a bug:
the driver's error becomes 503 `database_unavailable`, naming the database (never its
credentials), with a Retry-After; any other error of the drivers stays a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.store import outage

log = logging.getLogger("app.api")

UNEXPECTED = "an unexpected error occurred; it has been logged"
"""The detail of every 500: what went wrong is in the log, never in the answer."""

DATABASE_RETRY_AFTER_SECONDS = 5
"""When a client may ask again after a 503 `database_unavailable`: a database restart or
fail-over takes seconds."""


class ApiError(Exception):
    status = 500
    error = "internal"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class Unauthorized(ApiError):
    status = 401
    error = "unauthorized"


class NotFound(ApiError):
    status = 404
    error = "not_found"


class Conflict(ApiError):
    status = 409
    error = "conflict"


class TooLarge(ApiError):
    status = 413
    error = "too_large"


class UriTooLong(ApiError):
    status = 414
    error = "uri_too_long"


class InvalidParameter(ApiError):
    status = 422
    error = "invalid_parameter"


class RateLimited(ApiError):
    status = 429
    error = "rate_limited"


class Unavailable(ApiError):
    status = 503
    error = "unavailable"


_STATUS_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    408: "request_timeout",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "rate_limited",
}


def envelope(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def database_unavailable(database_url: str | None, exc: BaseException) -> JSONResponse:
    """The 503 of an answer that needs the database while it cannot be reached."""
    where = outage.message(database_url, exc) if database_url else "the database cannot be reached"
    return envelope(
        503,
        "database_unavailable",
        f"{where}; answers kept in memory are still served",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def _database_url(app: Any) -> str | None:
    services = getattr(app.state, "services", None)
    return services.settings.database_url if services is not None else None


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"query", "path", "header", "body", "cookie"}:
        where, parts = parts[0], parts[1:]
        if where == "body" and not parts:
            return "request body"
    return ".".join(parts) or "request"


def validation_detail(exc: RequestValidationError) -> str:
    messages = []
    for err in exc.errors():
        name = _location(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "is invalid"))
        if err.get("type") == "json_invalid":
            # Its location is ("body", <character offset>): no field to name.
            position = err.get("loc", ("body", None))[-1]
            name = "request body"
            msg = "is not valid JSON" + (
                f" (at character {position})" if isinstance(position, int) else ""
            )
        messages.append(f"{name}: {msg}")
    return "; ".join(messages) or "the request is invalid"


BODY_UNREADABLE = "There was an error parsing the body"
"""FastAPI's detail of the 400 for a body it could not decode at all (not UTF-8 text, nested
too deeply): anything but a `json.JSONDecodeError`."""


def unreadable_body_detail(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "request body: is not valid JSON (it is not UTF-8 text)"
    if isinstance(cause, RecursionError):
        return "request body: is nested too deeply to be read"
    return "request body: is not valid JSON"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope(422, "invalid_parameter", validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = _STATUS_ERRORS.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else error.replace("_", " ")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.url.path}; see /docs for the API"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs"
        if exc.status_code == 400 and detail == BODY_UNREADABLE:
            # Invalid JSON is a 422 (`validation_detail`); a body that cannot even be decoded
            # is the same mistake, and gets the same answer.
            return envelope(422, "invalid_parameter", unreadable_body_detail(exc.__cause__))
        return envelope(exc.status_code, error, detail, dict(exc.headers or {}))

    async def driver_error(request: Request, exc: Exception) -> JSONResponse:
        # Here (not in the handler of Exception below) so that the answer is the whole story:
        # Starlette re-raises what reaches that one to the server after answering.
        if outage.unreachable(exc):
            log.warning(
                "%s %s answered 503: the database cannot be reached (%s)",
                request.method,
                request.url.path,
                outage.cause(exc),
            )
            return database_unavailable(_database_url(request.app), exc)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return envelope(500, "internal", UNEXPECTED)

    for kind in outage.DRIVER_ERRORS:
        app.add_exception_handler(kind, driver_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return envelope(500, "internal", UNEXPECTED)
