"""The middleware of the API, outermost first as `create_app` installs it:

- `RequestIdMiddleware`: every request has an id (`X-Request-ID`), every response says it,
  every log line carries it;
- `RequestMetrics`: counts and times every request by method, route template and status;
- `RequestLimits`: what a request may send (query and body sizes, a slow body);
- `HeadAsGet`: HEAD wherever GET works;
- the fast path for remembered reads is `app.api.answers.FastReadsMiddleware`, innermost.

## Request ids
`X-Request-ID`: every request has an id, every response says it, every log line carries it.

`RequestIdMiddleware` is the outermost of our middlewares, so that everything inside it
(FastReads answers, 304s, errors, unknown routes) is answered with the header and logs with
the id. The id is the client's `X-Request-ID` when it is sane (1 to 128 printable ASCII
characters, no spaces), otherwise a new one (uuid4, hex): a value that could break a log
line or a header is never echoed. It lives in `app.logs.REQUEST_ID` while the request is
answered; uvicorn's access line is written while the response starts, so it has it too.

## Request limits
What a request may send, answered with the error envelope when it sends more.

    query string over MAX_QUERY_BYTES                   414 uri_too_long
    body over MAX_BODY_BYTES, by its Content-Length     413 too_large      before it is read
    body over MAX_BODY_BYTES, counted as it streams     413 too_large      (chunked bodies)
    body not complete BODY_TIMEOUT_SECONDS after the    408 request_timeout
      app began to read it

413 and 408 close the connection, so the rest of an unwanted body is not read. When a body
breaks a limit while the app is reading it, the app's own answer (FastAPI calls a body it
could not read a 400) is replaced by the limit's; a response already started cannot be
replaced, and the server drops the connection instead.

The request head (its size, and the time it may take to arrive) is bounded by the server:
see `app.server`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import UNEXPECTED, TooLarge, UriTooLong, envelope
from app.logs import REQUEST_ID

if TYPE_CHECKING:
    from app.api.deps import Services

HEADER = b"x-request-id"
MAX_LENGTH = 128
_SANE = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_LENGTH)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's id when it is sane, else a new one."""
    for name, value in headers:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return value
            break
    return uuid.uuid4().hex.encode()


class RequestIdMiddleware:
    """Sets the request id for everything inside and adds it to the response's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = request_id_of(scope["headers"])
        header = (HEADER, value)
        token = REQUEST_ID.set(value.decode("ascii"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # A copy: a response object may hand out the same header list every time.
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's outermost layer, outside this one, logs an unexpected error and
            # would send the 500 envelope of `app.api.errors` without the header: it is sent
            # from here instead. The id is not reset, so that its line and the server's carry
            # it (the server runs each request in a task of its own: nothing else sees it).
            if not started:
                response = envelope(500, "internal", UNEXPECTED)
                await response(scope, receive, send_with_id)
            raise
        REQUEST_ID.reset(token)


MAX_BODY_BYTES = 64 * 1024
"""Our request bodies are small JSON objects (a refresh's customer ids, a snooze)."""

MAX_QUERY_BYTES = 8 * 1024
"""Room for every filter of /jobs with long lists of ids; what proxies commonly allow."""

BODY_TIMEOUT_SECONDS = 10.0
"""A body this small arrives in milliseconds: a client that takes longer holds a connection
and a task for nothing (a slow-body attack)."""

REQUEST_TIMEOUT = (408, "request_timeout")

CLOSE = {"Connection": "close"}


class BodyRefused(Exception):
    """Raised from `receive` inside the app once its body broke a limit."""


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The largest Content-Length the request declares; None without a readable one (the
    server refuses a malformed one before the app sees it)."""
    lengths = [int(v) for k, v in headers if k == b"content-length" and v.strip().isdigit()]
    return max(lengths) if lengths else None


class RequestLimits:
    """Pure ASGI: the limits above, for every HTTP request. The limits are arguments so that
    tests can make them small."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int | None = None,
        max_query_bytes: int | None = None,
        body_timeout_seconds: float | None = None,
    ) -> None:
        self.app = app
        # Read when the app is built, not at import: tests may lower the module's values.
        self.max_body_bytes = MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
        self.max_query_bytes = MAX_QUERY_BYTES if max_query_bytes is None else max_query_bytes
        self.body_timeout_seconds = (
            BODY_TIMEOUT_SECONDS if body_timeout_seconds is None else body_timeout_seconds
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if len(query) > self.max_query_bytes:
            response = envelope(
                UriTooLong.status,
                UriTooLong.error,
                f"the query string is {len(query)} bytes, more than the {self.max_query_bytes} "
                "this API takes; send fewer or shorter filter values, or split the request",
            )
            await response(scope, receive, send)
            return
        length = declared_length(scope["headers"])
        if length is not None and length > self.max_body_bytes:
            await self._too_large(scope, receive, send, f"{length} bytes")
            return
        if not length and not any(k == b"transfer-encoding" for k, _ in scope["headers"]):
            # No body at all (every GET): nothing to watch, and no wrapper to pay for on the
            # cached read path.
            await self.app(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        deadline: float | None = None
        received = 0
        body_done = False
        refusal: str | None = None  # "too_large" or "timeout", once the body broke a limit
        started = False

        async def limited_receive() -> Message:
            nonlocal deadline, received, body_done, refusal
            if body_done:
                # Only a disconnect is left to hear about, whenever it comes.
                return await receive()
            if refusal is not None:
                raise BodyRefused(refusal)
            if deadline is None:
                deadline = loop.time() + self.body_timeout_seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                refusal = "timeout"
                raise BodyRefused(refusal) from None
            if message["type"] != "http.request":
                body_done = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                refusal = "too_large"
                raise BodyRefused(refusal)
            body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal is not None and not started:
                return  # the app's answer to a body it could not read: ours replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # The app may let the refusal through, or another error that followed from it.
            if refusal is None:
                raise
        if refusal is None or started:
            # A refused body after the response started: returning with it unfinished makes
            # the server close the connection, which is all that is left to do.
            return
        if refusal == "too_large":
            await self._too_large(scope, receive, send, f"more than {self.max_body_bytes} bytes")
            return
        response = envelope(
            *REQUEST_TIMEOUT,
            f"the request body did not arrive within {self.body_timeout_seconds:g} seconds; "
            "send it at once",
            headers=CLOSE,
        )
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        response = envelope(
            TooLarge.status,
            TooLarge.error,
            f"the request body is {size}, more than the {self.max_body_bytes} this API takes",
            headers=CLOSE,
        )
        await response(scope, receive, send)


class HeadAsGet:
    """HEAD wherever GET works (uptime checks use it): routed as GET, sent without a body.

    The route matched is copied back to the caller's scope, for `RequestMetrics` outside;
    the method is not changed there, as the server still has to send no body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        child = {**scope, "method": "GET"}
        try:
            await self.app(child, receive, without_body)
        finally:
            if "route" in child:
                scope["route"] = child["route"]


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        method = scope["method"]  # before HeadAsGet routes a HEAD as GET
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            svc: Services | None = getattr(scope["app"].state, "services", None)
            if svc is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                svc.metrics.http_requests.labels(method, route, str(status)).inc()
                svc.metrics.http_latency.labels(route).observe(time.perf_counter() - began)
