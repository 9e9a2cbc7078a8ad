"""`X-Request-ID`: every request has an id, every response says it, every log line carries it.

`RequestIdMiddleware` is the outermost of our middlewares, so that everything inside it
(FastReads answers, 304s, errors, unknown routes) is answered with the header and logs with
the id. The id is the client's `X-Request-ID` when it is sane (1 to 128 printable ASCII
characters, no spaces), otherwise a new one (uuid4, hex): a value that could break a log
line or a header is never echoed. It lives in `app.logs.REQUEST_ID` while the request is
answered; uvicorn's access line is written while the response starts, so it has it too.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import UNEXPECTED, envelope
from app.logs import REQUEST_ID

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
