"""The HTTP server: uvicorn, with a clean stop on SIGTERM and a bound on every request head.

On SIGTERM `/readyz` turns 503 at once and long polls answer; uvicorn stops accepting, lets
the requests in flight finish (at most `STOP_GRACE_SECONDS`), then runs the lifespan's
shutdown: refreshes in flight are cancelled (a commit under way finishes, anything else
rolls back), leases are handed back, and the process exits 0. uvicorn alone re-raises the
signal once stopped, which ends the process with -15 as if it had been killed; SIGINT
(Ctrl-C) keeps that behaviour.

uvicorn's httptools protocol has no time limit on a request head and no limit on its size:
a client that sends its head a byte at a time, or never finishes it (slowloris), holds a
connection for ever, and one that sends endless headers grows the process's memory.
`GuardedHttpToolsProtocol` closes a connection whose request head is not complete
`HEADER_TIMEOUT_SECONDS` after the connection opened or after the head's first byte (408
when some of it came), and answers a head larger than `MAX_HEAD_BYTES` with 431 (414 when
the request target alone is), closing the connection. Between requests uvicorn's keep-alive
timeout applies as before; bodies are bounded by `app.api.limits`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from http import HTTPStatus
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.errors import envelope

log = logging.getLogger("app.server")

STOP_GRACE_SECONDS = 6
"""How long requests in flight get after SIGTERM: with the lifespan's shutdown after them,
the stop stays within the 10 s an orchestrator gives before it sends SIGKILL."""

HEADER_TIMEOUT_SECONDS = 10.0
"""How long a request head may take to arrive; `HEADER_TIMEOUT_SECONDS` in the environment
overrides it (tests make it short)."""

HEADER_TIMEOUT_ENV = "HEADER_TIMEOUT_SECONDS"

MAX_HEAD_BYTES = 32 * 1024
"""The request target and headers together: room for a query string of the 8 KiB the API
takes (`app.api.limits`) and more headers than any client sends; nginx's default bound."""


def header_timeout_from_env() -> float:
    raw = os.environ.get(HEADER_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return HEADER_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise SystemExit(f"{HEADER_TIMEOUT_ENV}: must be a positive number of seconds, not {raw!r}")
    return value


class Refusal:
    """An error envelope that closes the connection: written to it whole while no request
    runs on it, or run as the ASGI app of a request whose head is complete."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        response = envelope(status, error, detail, headers={"Connection": "close"})
        self.status = status
        self.headers = response.raw_headers
        self.body = bytes(response.body)

    def raw(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.headers]
        return b"\r\n".join([*lines, b"", self.body])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def head_too_large(target_bytes: int) -> Refusal:
    if target_bytes > MAX_HEAD_BYTES:
        return Refusal(
            414,
            "uri_too_long",
            f"the request target is longer than the {MAX_HEAD_BYTES} bytes the server reads",
        )
    return Refusal(
        431,
        "headers_too_large",
        f"the request's headers are larger than the {MAX_HEAD_BYTES} bytes the server reads",
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head."""

    header_timeout_seconds = HEADER_TIMEOUT_SECONDS
    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_deadline: asyncio.TimerHandle | None = None  # set while a head is awaited
        self.head_bytes = 0  # received while it is awaited

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_done()
        super().connection_lost(exc)

    def await_head(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.header_timeout_seconds, self.head_late)

    def head_done(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
        self.head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # may begin a head, or complete one
        if self.head_deadline is None or self.transport.is_closing():
            return
        # Counted after parsing, so that only a head still incomplete is measured: a head
        # that completed here is measured exactly in `on_headers_complete`.
        self.head_bytes += len(data)
        if self.head_bytes > self.max_head_bytes:
            self.refuse(head_too_large(len(getattr(self, "url", b""))), "too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.await_head()  # a next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self.head_done()
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size <= self.max_head_bytes:
            super().on_headers_complete()
            return
        # Answered through uvicorn's own request cycle, which reads what is left of the
        # request and then closes the connection.
        app, self.app = self.app, head_too_large(len(self.url))
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        log.info("refused a request head of %d bytes from %s", size, self.peer())

    def head_late(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits on the response before it: the client is not the slow one.
            self.await_head()
            return
        if self.head_bytes == 0:
            self.transport.close()  # an idle connection: closed without a word, as keep-alive
            return
        answer = Refusal(
            408,
            "request_timeout",
            f"the request head did not arrive within {self.header_timeout_seconds:g} seconds",
        )
        self.refuse(answer, "late")

    def refuse(self, answer: Refusal, why: str) -> None:
        self.head_done()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer.raw())  # else a response is under way: no place for it
        self.transport.close()
        log.info("closed a connection from %s: its request head was %s", self.peer(), why)

    def peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def guarded_protocol(header_timeout_seconds: float) -> type[GuardedHttpToolsProtocol]:
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_seconds": header_timeout_seconds},
    )


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        if config.http in ("auto", "httptools"):
            config.http = guarded_protocol(header_timeout_from_env())
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self.app.state, "services", None)
        if services is not None:
            services.stop()
        if sig == signal.SIGTERM:
            self.should_exit = True  # asked to stop: a clean stop is a success
            return
        super().handle_exit(sig, frame)
