"""`RateLimits.share`: replicas on one PostgreSQL database hold a key's limit together.

Each test plays two or three processes: `RateLimits` instances with holders of their own,
each sharing through an engine of its own, with one injected clock that stays inside one
window while the rounds run in real time (intervals of 0.05 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.ratelimit import RateLimits
from app.store.db import create_engine

POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

WINDOW = 29_000_000
NOW = WINDOW * 60 + 5.0  # 5 s into the window, for the whole test
INTERVAL = 0.05
ROUND_SLACK = 0.1  # what one round may take on a busy machine (a few ms when idle)
# The module's tolerance: a hit reaches another process within 2 × interval + 4 rounds.
LAG = 2 * INTERVAL + 4 * ROUND_SLACK
IDENTITY = "key:nightly-psa"


def clock() -> float:
    return NOW


@asynccontextmanager
async def sharing(*processes: tuple[RateLimits, AsyncEngine, str]) -> AsyncIterator[None]:
    """`share` of each (limits, engine, holder) running in the background, cancelled after."""
    tasks = [
        asyncio.create_task(limits.share(engine, holder, interval=INTERVAL))
        for limits, engine, holder in processes
    ]
    try:
        yield
        for task in tasks:
            assert not task.done(), "share stopped"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def other_engine(database_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """A second process's engine on the same (migrated) database."""
    other = create_engine(database_url)
    try:
        yield other
    finally:
        await other.dispose()


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "not within the time given"
        await asyncio.sleep(INTERVAL / 2)


async def stored_hits(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text('SELECT holder, hits FROM rate_counts WHERE "window" = :w AND identity = :i'),
            {"w": WINDOW, "i": IDENTITY},
        )
        return {holder: int(hits) for holder, hits in rows}


async def settle() -> None:
    """Long enough for every hit to be written by one process and read by the others."""
    await asyncio.sleep(LAG + 2 * INTERVAL)


@POSTGRES_ONLY
async def test_two_replicas_hold_the_limit_together(
    engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    limit = 100
    a, b = RateLimits(clock=clock), RateLimits(clock=clock)
    admitted: dict[str, list[float]] = {"a": [], "b": []}
    async with sharing((a, engine, "host-a:1:aaaa"), (b, other_engine, "host-b:2:bbbb")):
        # Both send one request every 10 ms, alternately, for 1.2 s: each alone would admit
        # the whole limit, 2 × 100 together.
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            for name, limits in (("a", a), ("b", b)):
                if limits.hit(IDENTITY, limit) is None:
                    admitted[name].append(time.monotonic())
            await asyncio.sleep(0.01)
        await settle()
        # Every process now knows every hit: both refuse.
        assert a.hit(IDENTITY, limit) is not None
        assert b.hit(IDENTITY, limit) is not None
        # The rows tell what each process admitted.
        assert await stored_hits(engine) == {
            "host-a:1:aaaa": len(admitted["a"]),
            "host-b:2:bbbb": len(admitted["b"]),
        }

    total = len(admitted["a"]) + len(admitted["b"])
    assert admitted["a"]
    assert admitted["b"]
    assert limit <= total <= limit * 1.5, admitted
    # The stated tolerance: the excess is at most what the process that did not admit last
    # admitted in the last LAG seconds before the last admission.
    last_name, last = max(((n, t[-1]) for n, t in admitted.items()), key=lambda x: x[1])
    other = "b" if last_name == "a" else "a"
    in_lag = sum(1 for t in admitted[other] if t > last - LAG)
    assert total - limit <= in_lag, (total, in_lag)


@POSTGRES_ONLY
async def test_a_process_that_starts_late_counts_what_the_others_admitted(
    engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    a, late = RateLimits(clock=clock), RateLimits(clock=clock)
    async with sharing((a, engine, "host-a:1:aaaa")):
        assert all(a.hit(IDENTITY, 50) is None for _ in range(35))
        await settle()
        async with sharing((late, other_engine, "host-c:3:cccc")):
            await settle()
            # `late` never saw this key before, yet counts the others' 35.
            assert [late.hit(IDENTITY, 50) is None for _ in range(16)] == [True] * 15 + [False]
            await settle()
            assert a.hit(IDENTITY, 50) is not None


@POSTGRES_ONLY
async def test_a_database_failure_leaves_hits_working_and_sharing_resumes(
    engine: AsyncEngine, other_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.access.ratelimit")
    a, b = RateLimits(clock=clock), RateLimits(clock=clock)
    async with sharing((a, engine, "host-a:1:aaaa"), (b, other_engine, "host-b:2:bbbb")):
        await settle()
        async with engine.begin() as connection:  # every round fails from now on
            await connection.execute(text("ALTER TABLE rate_counts RENAME TO rate_counts_away"))
        await asyncio.sleep(3 * INTERVAL)
        # Requests go on, decided locally, while no round succeeds.
        assert all(a.hit(IDENTITY, 100) is None for _ in range(30))
        await asyncio.sleep(6 * INTERVAL)
        failed = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert failed, "the failure was not logged"
        assert len(failed) <= 2, "logged every round"  # once (a and b), then once a minute
        for record in failed:  # one line: neither the statement nor its parameters
            assert "\n" not in record.getMessage()
            assert "SELECT" not in record.getMessage()
            assert IDENTITY not in record.getMessage()

        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE rate_counts_away RENAME TO rate_counts"))

        async def written() -> bool:
            return (await stored_hits(engine)).get("host-a:1:aaaa") == 30

        # The hits admitted during the failure were kept and are written now.
        await eventually(written)
        await settle()
        assert [b.hit(IDENTITY, 100) is None for _ in range(71)] == [True] * 70 + [False]
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_an_unreachable_database_is_logged_without_secrets_and_never_stops_hits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.access.ratelimit")
    engine = create_engine("postgresql://gateway:pw-s3cret@127.0.0.1:1/jobs")
    limits = RateLimits(clock=clock)
    try:
        async with sharing((limits, engine, "host-a:1:aaaa")):
            await asyncio.sleep(5 * INTERVAL)
            assert [limits.hit(IDENTITY, 3) is None for _ in range(4)] == [True] * 3 + [False]
            await asyncio.sleep(2 * INTERVAL)
    finally:
        await engine.dispose()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.access.ratelimit"]
    assert len(lines) == 1, lines  # once, not every round
    assert "could not share" in lines[0]
    assert "pw-s3cret" not in lines[0]
    assert all(r.exc_info is None for r in caplog.records if r.name == "app.access.ratelimit")


@POSTGRES_ONLY
async def test_rows_of_past_windows_are_deleted(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                'INSERT INTO rate_counts ("window", identity, holder, hits) '
                "VALUES (:w - 5, :i, 'gone', 7), (:w - 2, :i, 'gone', 7), "
                "(:w - 1, :i, 'gone', 7), (:w, :i, 'gone', 7)"
            ),
            {"w": WINDOW, "i": IDENTITY},
        )
    limits = RateLimits(clock=clock)
    async with sharing((limits, engine, "host-a:1:aaaa")):
        await settle()
        # The current window's rows of others count here; the previous window's are kept.
        assert [limits.hit(IDENTITY, 10) is None for _ in range(4)] == [True] * 3 + [False]
    async with engine.connect() as connection:
        windows = (await connection.execute(text('SELECT "window" FROM rate_counts'))).scalars()
        assert sorted(set(windows)) == [WINDOW - 1, WINDOW]


@SQLITE_ONLY
async def test_share_returns_at_once_on_sqlite(engine: AsyncEngine) -> None:
    limits = RateLimits(clock=clock)
    await asyncio.wait_for(limits.share(engine, "host-a:1:aaaa", interval=INTERVAL), 1.0)
    assert limits.hit(IDENTITY, 1) is None
    assert limits.hit(IDENTITY, 1) is not None
