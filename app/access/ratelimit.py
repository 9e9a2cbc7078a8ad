"""Per-key request limits: fixed one-minute windows, shared across replicas through PostgreSQL.

`RateLimits.hit(identity, per_minute)` decides a request on the spot, from memory: the
`limits` library's `FixedWindowRateLimiter` over `WindowCounts` (the library's storage
interface over a plain dict: see its docstring for why not the library's `MemoryStorage`),
one counter per identity and window. Windows are aligned to the clock
(window = int(now // 60)) and the window number is one of the limiter's identifiers, so
every process counts the same minute under the same window; an identity's counter of the
window it leaves is dropped. A refused request is told the seconds left in its window
(`Retry-After`).

`RateLimits.share(engine, holder)` is a background loop that makes the processes on one
PostgreSQL database count together. Every `interval` it runs one short transaction:

1. one upsert batch of the hits this process admitted since its last round (only when
   there were any) into `rate_counts(window, identity, holder, hits)`, adding to its row;
2. one SELECT of the current window's rows of the other holders, summed per identity; what
   grew since the last round is added to the local counter of that identity and window
   (`storage.incr(..., amount=...)`), so the local decision counts the others too.

Once a window, the rows of windows before the previous one are deleted. A database error
is logged (one line, no statement, no parameters) and the round is tried again after the
next interval; the hits it did not write are kept and written then. Requests never wait on
the database, and never fail because of it.

Tolerance. A hit admitted by one process is counted by every other process within
`2 × interval + 4 × (the duration of one round)`: its process writes it in its next round
(which starts at most an interval plus the rest of a running round later, and takes a round),
and another process reads it in its first round that starts after that write (the same
again). So for one identity in one window, the requests admitted by all processes together
exceed the limit by at most what the processes other than the one that admitted last
admitted during that lag before the last admission. With the default interval of 0.25 s
and rounds of a few milliseconds that is about half a second of the other replicas' traffic
of the identity: two replicas each admitting 20 requests a second of one key end at most
about 10 over its limit. A single process is exact. A hit is counted at least once: a round
whose commit fails is written again, so an unknown commit outcome can only count twice,
which is stricter, never looser. Further, as with every fixed window:

- a client may send up to the limit at the end of one window and again at the start of the
  next (two limits within a minute, never more than one limit per window);
- processes whose clocks disagree by s seconds disagree on where windows start by s seconds;
- while the database cannot be reached, each process enforces the limit alone, so the sum
  may reach (number of processes) × limit until the database is back.

Sharing is for PostgreSQL only: on SQLite there is one process, `share` returns at once and
`hit` alone is exact.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import ratelimits

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
"""The length of a window: limits are per minute, aligned to the clock."""

ROUND_TIMEOUT_SECONDS = 5.0
"""A round that takes longer is abandoned (and tried again): a hung connection must not stop
the sharing for good."""

REPORT_EVERY_SECONDS = 60.0
"""While rounds keep failing, how often the failure is logged again."""


class WindowCounts(Storage):
    """The `limits` storage interface over a dict, expired lazily, with no thread.

    The library's `MemoryStorage` expires its keys from a `threading.Timer` it starts again
    every 10 ms while any key lives: a thread that wants the GIL about a hundred times a
    second, in a process whose every request is counted. Measured on the cached read path
    (bench/load.py, quick run) it cost a third of the requests per second. Here a key past
    its expiry reads as 0 and starts again on its next `incr`, and `RateLimits` clears an
    identity's key of the window it leaves, so nothing accumulates.
    """

    STORAGE_SCHEME = ["jobs-gateway-window-counts"]  # noqa: RUF012 (the base class's shape)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._counts: dict[str, int] = {}
        self._expiry: dict[str, float] = {}

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int | float, amount: int = 1) -> int:
        now = time.time()
        if self._expiry.get(key, 0.0) <= now:
            self._counts[key] = 0
            self._expiry[key] = now + expiry
        self._counts[key] += amount
        return self._counts[key]

    def get(self, key: str) -> int:
        if self._expiry.get(key, 0.0) <= time.time():
            return 0
        return self._counts.get(key, 0)

    def get_expiry(self, key: str) -> float:
        return self._expiry.get(key, time.time())

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        cleared = len(self._counts)
        self._counts.clear()
        self._expiry.clear()
        return cleared

    def clear(self, key: str) -> None:
        self._counts.pop(key, None)
        self._expiry.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(slots=True)
class _Count:
    """This process's counter of one identity in one window, under one limit."""

    window: int
    per_minute: int
    item: RateLimitItemPerMinute
    window_id: str  # the window number: the limiter's second identifier
    key: str  # the limiter's storage key of (identity, window) under `item`
    own: int = 0  # requests this process admitted in the window
    others: int = 0  # the other processes' hits added to the storage counter so far


class RateLimits:
    """Per-identity request limits per minute; see the module docstring.

    `hit` is thread-safe (a sync dependency may call it from FastAPI's thread pool) and does
    no I/O; `share` runs on the event loop.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._storage = WindowCounts()
        self._limiter = FixedWindowRateLimiter(self._storage)
        self._lock = threading.Lock()
        self._items: dict[int, RateLimitItemPerMinute] = {}
        self._counts: dict[str, _Count] = {}
        # Admitted hits not yet written to the database, by (window, identity).
        self._unsent: Counter[tuple[int, str]] = Counter()
        self._unsent_pruned = 0  # the window whose older unsent hits were dropped
        # The other processes' hits of `_others_window`, per identity, as last read.
        self._others_window = -1
        self._others: dict[str, int] = {}

    # -- the request path ------------------------------------------------------------------

    def hit(self, identity: str, per_minute: int) -> float | None:
        """Count one request of `identity` (e.g. "key:nightly-psa"); None when allowed,
        else the seconds until it may come back (for Retry-After, >= 1 when rounded up).
        per_minute <= 0: no limit, nothing counted. Must be fast: it runs on every request
        (a dict lookup or two; no I/O, no await)."""
        if per_minute <= 0:
            return None
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            count = self._counts.get(identity)
            if count is None or count.window != window or count.per_minute != per_minute:
                count = self._begin(identity, window, per_minute)
            if not self._limiter.hit(count.item, identity, count.window_id):
                # > 0 since now < (window + 1) * WINDOW_SECONDS.
                return (window + 1) * WINDOW_SECONDS - now
            count.own += 1
            self._unsent[(window, identity)] += 1
        return None

    def _begin(self, identity: str, window: int, per_minute: int) -> _Count:
        """A new counter: the identity's first request of a window, or its limit changed."""
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        window_id = str(window)
        count = _Count(window, per_minute, item, window_id, item.key_for(identity, window_id))
        previous = self._counts.get(identity)
        if previous is not None and previous.window != window:
            self._storage.clear(previous.key)  # a window left behind is never asked again
        if previous is not None and previous.window == window:
            # The limit changed within the window: what was admitted still counts (and a
            # counter this limit had earlier in the window starts over from it).
            count.own = previous.own
            self._storage.clear(count.key)
        if window == self._others_window:
            count.others = self._others.get(identity, 0)
        if start := count.own + count.others:
            self._storage.incr(count.key, item.get_expiry(), amount=start)
        self._counts[identity] = count
        if window > self._unsent_pruned:
            # Without `share` (SQLite) nothing drains the unsent hits: drop the old ones.
            self._unsent_pruned = window
            for key in [k for k in self._unsent if k[0] < window - 1]:
                del self._unsent[key]
        return count

    # -- sharing with the other processes --------------------------------------------------

    async def share(self, engine: AsyncEngine, holder: str, *, interval: float = 0.25) -> None:
        """Run forever (a background task, cancelled on shutdown): every `interval`, write this
        process's new hits to `rate_counts` and add the other processes' new hits of the current
        window to the local counts, so that across replicas on PostgreSQL the limit holds for the
        sum of the processes within a stated tolerance. A database error is logged (without
        secrets) and retried next round; it never stops the loop or the requests.

        `holder` names this process and must be unique among the processes (as the refresh
        leases' holder is). On any database but PostgreSQL (SQLite: one process) there is
        nobody to share with, and this returns at once.
        """
        if engine.dialect.name != "postgresql":
            return
        cleaned = -1  # the window whose old rows were deleted
        failures = 0
        reported_at = 0.0
        while True:
            try:
                async with asyncio.timeout(max(ROUND_TIMEOUT_SECONDS, interval)):
                    window = await self._round(engine, holder)
                    if window != cleaned:
                        await self._clean(engine, window)
                        cleaned = window
            except Exception as exc:  # never stops the loop; CancelledError does
                failures += 1
                if failures == 1 or time.monotonic() - reported_at >= REPORT_EVERY_SECONDS:
                    reported_at = time.monotonic()
                    log.warning(
                        "rate limits: could not share request counts through the database "
                        "(%s; %d round(s) failed so far); each process limits alone until "
                        "it works again",
                        _describe(exc),
                        failures,
                    )
            else:
                if failures:
                    log.info(
                        "rate limits: sharing request counts again after %d failed round(s)",
                        failures,
                    )
                    failures = 0
            await asyncio.sleep(interval)

    async def _round(self, engine: AsyncEngine, holder: str) -> int:
        """Write the new hits, read the others' of the current window; returns that window."""
        window = int(self._clock() // WINDOW_SECONDS)
        with self._lock:
            batch, self._unsent = self._unsent, Counter()
        fresh = {key: hits for key, hits in batch.items() if key[0] >= window - 1}
        try:  # older windows are deleted anyway
            totals = await ratelimits.exchange(engine, holder, window, fresh)
        except BaseException:
            # Not written: keep the hits for the next round.
            with self._lock:
                for key, hits in batch.items():
                    if key[0] >= window - 1:
                        self._unsent[key] += hits
            raise
        with self._lock:
            self._apply(window, totals)
        return window

    def _apply(self, window: int, totals: Mapping[str, int]) -> None:
        """Add what the other processes admitted since the last round to the local counters."""
        self._others_window = window
        self._others = dict(totals)
        for identity, total in totals.items():
            count = self._counts.get(identity)
            if count is not None and count.window == window and total > count.others:
                self._storage.incr(count.key, count.item.get_expiry(), amount=total - count.others)
                count.others = total

    async def _clean(self, engine: AsyncEngine, window: int) -> None:
        await ratelimits.forget_before(engine, window - 1)


def _describe(exc: BaseException) -> str:
    """The exception's type and the first line of its message: never the statement or its
    parameters (SQLAlchemy appends both on further lines)."""
    lines = str(exc).strip().splitlines()
    detail = lines[0][:200] if lines else ""
    if not detail and isinstance(exc, TimeoutError):
        detail = "the database did not answer in time"
    if detail.startswith("("):  # SQLAlchemy's "(driver.ErrorClass) message" names it already
        return detail
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
