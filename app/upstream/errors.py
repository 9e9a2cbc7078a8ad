"""The typed failures of the AvePoint upstream, one small tree::

    UpstreamError                      kind "upstream" (never raised itself)
     ├── UpstreamAuthError             kind "auth": token endpoint failed, or 401 after renewal
     ├── UpstreamStatusError           kind "http_status": an HTTP status we cannot use
     │    └── UpstreamRateLimited      kind "rate_limited": 429
     ├── UpstreamTimeout               kind "timeout": the httpx timeout fired
     ├── UpstreamConnectionError       kind "connection": connect/read/protocol failure
     ├── UpstreamMalformed             kind "malformed": a body that is not the envelope
     └── UpstreamCircuitOpen           kind "circuit_open": not sent, the breaker is open

Every error names the customer, page, upstream status and upstream request id it is about
(each may be None), and says in `message` what happened in one sentence. An error whose
answer carried Retry-After keeps those seconds in `retry_after` (also after the client gave
up on them); `retry_at(now)` turns them into the moment to ask again. Messages are built
from those fields, fixed wording and at most an exception class name or an OAuth error
code; never from bodies, headers, tokens or secrets.

`UpstreamCircuitOpen` is the one failure that never reached the upstream: the circuit
breaker (`app.upstream.breaker`) refused the request because the upstream is failing for
everyone. Its `retry_after` is the seconds until the breaker lets a request through again,
so a caller that backs off on Retry-After backs off until then; its `status` is that of
the failure the breaker counted last (None after a timeout): what the upstream answers.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self


class UpstreamError(Exception):
    """Base of every upstream failure; catch this to catch them all."""

    kind: ClassVar[str] = "upstream"

    def __init__(
        self,
        summary: str,
        *,
        customer_id: str | None = None,
        page: int | None = None,
        status: int | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        retriable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.summary = summary
        self.customer_id = customer_id
        self.page = page
        self.status = status
        self.request_id = request_id
        self.attempts = attempts
        # Whether trying the same request again may succeed; the client's retry
        # policy reads this rather than keeping its own list of exception types.
        self.retriable = retriable
        # Seconds the upstream asked us to wait (Retry-After), when it said so.
        self.retry_after = retry_after
        self.message = describe(
            summary,
            customer_id=customer_id,
            page=page,
            status=status,
            request_id=request_id,
            attempts=attempts,
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by Exception's default pickling.
        return (functools.partial(type(self), **self._fields()), (self.summary,))

    def _fields(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "page": self.page,
            "status": self.status,
            "request_id": self.request_id,
            "attempts": self.attempts,
            "retriable": self.retriable,
            "retry_after": self.retry_after,
        }

    def replace(self, summary: str | None = None, **changes: Any) -> Self:
        """A fresh instance of the same class with some fields changed (the message follows)."""
        return type(self)(self.summary if summary is None else summary, **self._fields() | changes)

    def gave_up(self, attempts: int, reason: str | None = None) -> Self:
        """The same failure, told as the last of `attempts` tries (and why we stopped).

        Every field but the message and the attempts is kept, `retry_after` included: a
        caller that gave up on a long Retry-After still knows how long it asked for.
        """
        summary = self.summary if reason is None else f"{self.summary}; {reason}"
        return self.replace(summary, attempts=attempts)

    def retry_at(self, now: datetime) -> datetime | None:
        """When the upstream said it may be asked again: `now` plus its Retry-After.

        None when it sent no (usable) Retry-After; `now` is when the answer came, or as
        near to it as the caller knows.
        """
        seconds = self.retry_after
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return None
        try:
            return now + timedelta(seconds=seconds)
        except OverflowError:
            return None

    def copy(self) -> Self:
        """A fresh instance with the same fields, to raise in another task."""
        return self.replace()


class UpstreamAuthError(UpstreamError):
    """No usable token: the token endpoint refused or failed, or the API said 401 twice."""

    kind: ClassVar[str] = "auth"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a status we cannot use (after any retries)."""

    kind: ClassVar[str] = "http_status"


class UpstreamRateLimited(UpstreamStatusError):
    """429: the upstream's rate limit, still hit after the retries."""

    kind: ClassVar[str] = "rate_limited"


class UpstreamTimeout(UpstreamError):
    """The request did not finish within the HTTP client's timeout."""

    kind: ClassVar[str] = "timeout"


class UpstreamConnectionError(UpstreamError):
    """No usable connection: refused, reset, DNS, TLS or a protocol failure."""

    kind: ClassVar[str] = "connection"


class UpstreamMalformed(UpstreamError):
    """A 2xx answer whose body is not JSON or not the documented shape."""

    kind: ClassVar[str] = "malformed"


class UpstreamCircuitOpen(UpstreamError):
    """Not sent: the circuit breaker is open because the upstream fails for everyone."""

    kind: ClassVar[str] = "circuit_open"


def describe(
    summary: str,
    *,
    customer_id: str | None = None,
    page: int | None = None,
    status: int | None = None,
    request_id: str | None = None,
    attempts: int = 1,
) -> str:
    """`summary` followed by whatever context is known, e.g.

    "AvePoint jobs request failed with HTTP 503 (customer 'c1', page 2, status 503,
    request id 'r-9', 5 attempts)".
    """
    context = []
    if customer_id is not None:
        context.append(f"customer {customer_id!r}")
    if page is not None:
        context.append(f"page {page}")
    if status is not None:
        context.append(f"status {status}")
    if request_id is not None:
        context.append(f"request id {request_id!r}")
    if attempts > 1:
        context.append(f"{attempts} attempts")
    return f"{summary} ({', '.join(context)})" if context else summary


def upstream_fields(error: UpstreamError) -> dict[str, Any]:
    """The `extra` fields of a log line about an upstream failure: its kind, and the
    customer, page, status and upstream request id it names (the id is what AvePoint's
    support asks for). Its message names them too; it never holds a secret."""
    fields = {
        "error_kind": error.kind,
        "customer_id": error.customer_id,
        "page": error.page,
        "upstream_status": error.status,
        "upstream_request_id": error.request_id,
    }
    return {key: value for key, value in fields.items() if value is not None}
