"""Encoded answers kept in memory, so a repeated read costs its bytes and no query.

`AnswerCache`: keys name the query and the data versions it was built from (see
`app.refresh`): a refresh that changes a customer's data moves the versions of the answers
that customer is part of, so those keys are simply never asked for again, and the least
recently used entries make room for new ones. Nothing here expires by time.

`FastReads`: FastAPI validates every query parameter of every request, which costs more than
answering a cached read. A listing route, once it has validated a query string, remembers
how to answer it (`remember`): the ASGI middleware `FastReadsMiddleware` answers the same
path and query string again straight from there, after the same key check and rate limit,
and leaves anything it does not know, or cannot answer, to the full route. An answer is
remembered under the customers the key may see too: a key limited to some customers never
gets an answer built for a key that sees more.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import database_unavailable, envelope
from app.api.guard import offered_keys, rate_limited
from app.store import outage

T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_MAX_ENTRIES = 4096


class AnswerCache:
    """A least-recently-used map from a key to an encoded answer, bounded in bytes."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._building: dict[Hashable, asyncio.Future[Any]] = {}

    async def build_once(self, key: Hashable, build: Callable[[], Awaitable[T]]) -> T:
        """`await build()`, shared by every caller asking for `key` while it runs: when data
        changes under many clients, they all miss the same key at once, and one query
        answers them all instead of one each. A caller that goes away (a client that
        disconnects) does not cancel the build for the others."""
        result: T = await asyncio.shield(self.start_build(key, build))
        return result

    def start_build(self, key: Hashable, build: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The build of `key` running now, started if none is: `build_once` without the
        wait, for a kept answer rebuilt behind the one still served."""
        future = self._building.get(key)
        if future is None:
            future = asyncio.ensure_future(build())
            self._building[key] = future

            def done(f: asyncio.Future[Any]) -> None:
                self._building.pop(key, None)
                if not f.cancelled():
                    f.exception()  # retrieved: every waiter may have gone

            future.add_done_callback(done)
        return future

    def building(self, key: Hashable) -> bool:
        """Whether a build of `key` runs now."""
        return key in self._building

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep `value` (about `size` bytes); an answer larger than the whole cache is not kept."""
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


Answer = Callable[[Headers], Awaitable[Response]]
"""How to answer a validated query again: given the request's headers, the response."""

DEFAULT_FAST_ENTRIES = 1024


class FastReads:
    """Validated (path, query string) -> how to answer it, least recently used out first."""

    def __init__(self, max_entries: int = DEFAULT_FAST_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes, frozenset[str] | None], tuple[Any, Answer]] = (
            OrderedDict()
        )

    def remember(self, scope: Scope, customers: frozenset[str] | None, answer: Answer) -> None:
        """`answer` answers this path and query string for a key that sees `customers`
        (None: every customer)."""
        key = (scope["path"], scope["query_string"], customers)
        self._entries[key] = (scope.get("route"), answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, scope: Scope, customers: frozenset[str] | None) -> tuple[Any, Answer] | None:
        key = (scope["path"], scope["query_string"], customers)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry


class FastReadsMiddleware:
    """Answers GETs of remembered queries without routing them (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            response = await self._answer(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> Response | None:
        svc = getattr(scope["app"].state, "services", None)
        if svc is None or not svc.fast:
            return None
        headers = Headers(scope=scope)
        principal = svc.keys.authenticate(offered_keys(headers))
        if principal is None:
            return None  # the full route says why
        entry = svc.fast.lookup(scope, principal.customers)
        if entry is None:
            return None
        refused = rate_limited(svc.limits, svc.metrics, svc.settings, principal, scope)
        if refused is not None:
            return envelope(refused.status, refused.error, refused.detail, refused.headers)
        # Counted: should the full route answer after all, it does not count it again.
        scope.setdefault("state", {})["principal"] = principal
        route, answer = entry
        try:
            response: Response = await answer(headers)
        except Exception as exc:  # an error the route renders, e.g. the customer list is gone
            if outage.unreachable(exc):
                # The route would only ask the database again, and wait for it again.
                return database_unavailable(svc.settings.database_url, exc)
            return None
        scope["route"] = route
        return response
