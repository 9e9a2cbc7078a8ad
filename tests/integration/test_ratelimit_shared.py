"""`RateLimits.share`: replicas on one PostgreSQL database hold a key's limit together.

Each test plays two or three processes: `RateLimits` instances with holders of their own,
each sharing through an engine of its own, with one injected clock that stays inside one
window. Nothing here waits a fixed time: a test waits until a process has counted what is
stored (`counted_everything`, seen through the database), or until rounds have failed (seen
through the engine's events), with deadlines that only guard against waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access import ratelimit
from app.access.ratelimit import RateLimits
from app.store.db import create_engine

POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

WINDOW = 29_000_000
NOW = WINDOW * 60 + 5.0  # 5 s into the window, for the whole test
INTERVAL = 0.05
GUARD_SECONDS = 60.0  # how long a wait may take before the test fails: never reached when well
IDENTITY = "key:nightly-psa"
# An identity of its own, hit only to see a process's round go by (`counted_everything`).
HEARTBEAT = "key:heartbeat"
A, B, C = "host-a:1:aaaa", "host-b:2:bbbb", "host-c:3:cccc"


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


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {GUARD_SECONDS} s"
        await asyncio.sleep(INTERVAL / 2)


async def stored_hits(engine: AsyncEngine, identity: str = IDENTITY) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text('SELECT holder, hits FROM rate_counts WHERE "window" = :w AND identity = :i'),
            {"w": WINDOW, "i": identity},
        )
        return {holder: int(hits) for holder, hits in rows}


async def stored_are(engine: AsyncEngine, expected: dict[str, int]) -> None:
    async def holds() -> bool:
        return await stored_hits(engine) == expected

    await eventually(holds, f"stored hits {expected}")


async def counted_everything(limits: RateLimits, engine: AsyncEngine, holder: str) -> None:
    """Return once `limits` has counted every hit stored before the call.

    A heartbeat hit is written by the process's next round, which then reads the others'
    rows in the same transaction; the round after that begins only once the first has
    added what it read. So when a second heartbeat is stored, the first round is counted.
    """
    for _ in range(2):
        before = (await stored_hits(engine, HEARTBEAT)).get(holder, 0)
        assert limits.hit(HEARTBEAT, 1_000_000) is None

        async def written(before: int = before) -> bool:
            return (await stored_hits(engine, HEARTBEAT)).get(holder, 0) > before

        await eventually(written, f"a round of {holder}")


def failed_statements(engine: AsyncEngine) -> list[object]:
    """Grows by one for each statement of `engine` that fails (a round fails at its first)."""
    seen: list[object] = []
    event.listen(engine.sync_engine, "handle_error", seen.append)
    return seen


def connection_attempts(engine: AsyncEngine) -> list[object]:
    """Grows by one each time `engine` tries to connect (a round on an unreachable database
    fails there)."""
    seen: list[object] = []
    event.listen(engine.sync_engine, "do_connect", lambda *args: seen.append(args))
    return seen


def admitted(limits: RateLimits, per_minute: int, requests: int) -> list[bool]:
    return [limits.hit(IDENTITY, per_minute) is None for _ in range(requests)]


@POSTGRES_ONLY
async def test_two_replicas_hold_the_limit_together(
    engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    a, b = RateLimits(clock=clock), RateLimits(clock=clock)
    async with sharing((a, engine, A), (b, other_engine, B)):
        assert admitted(a, 100, 60) == [True] * 60
        await stored_are(engine, {A: 60})
        await counted_everything(b, other_engine, B)
        # b alone would admit 100: it counts a's 60.
        assert admitted(b, 100, 41) == [True] * 40 + [False]
        await stored_are(engine, {A: 60, B: 40})
        await counted_everything(a, engine, A)
        assert a.hit(IDENTITY, 100) is not None


@POSTGRES_ONLY
async def test_replicas_admitting_at_once_exceed_the_limit_by_at_most_what_was_not_counted(
    engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    # Both send requests alternately, and between two of their countings each admits at most
    # BURST: together they may exceed the limit by what the other had not counted yet, never
    # more; each alone would admit the whole limit, 2 x 100 together.
    limit, burst = 100, 15
    a, b = RateLimits(clock=clock), RateLimits(clock=clock)
    count = {"a": 0, "b": 0}
    async with sharing((a, engine, A), (b, other_engine, B)):
        for _ in range(2 * limit // burst + 2):
            for _ in range(burst):
                for name, limits in (("a", a), ("b", b)):
                    count[name] += limits.hit(IDENTITY, limit) is None
                await asyncio.sleep(0)  # rounds may run in between, or not
            await counted_everything(a, engine, A)
            await counted_everything(b, other_engine, B)
        # Every process now knows every hit: both refuse.
        assert a.hit(IDENTITY, limit) is not None
        assert b.hit(IDENTITY, limit) is not None
        # The rows tell what each process admitted.
        assert await stored_hits(engine) == {A: count["a"], B: count["b"]}
    assert count["a"] and count["b"]
    assert limit <= count["a"] + count["b"] <= limit + burst, count


@POSTGRES_ONLY
async def test_a_process_that_starts_late_counts_what_the_others_admitted(
    engine: AsyncEngine, other_engine: AsyncEngine
) -> None:
    a, late = RateLimits(clock=clock), RateLimits(clock=clock)
    async with sharing((a, engine, A)):
        assert admitted(a, 50, 35) == [True] * 35
        await stored_are(engine, {A: 35})
        async with sharing((late, other_engine, C)):
            await counted_everything(late, other_engine, C)
            # `late` never saw this key before, yet counts the others' 35.
            assert admitted(late, 50, 16) == [True] * 15 + [False]
            await stored_are(engine, {A: 35, C: 15})
            await counted_everything(a, engine, A)
            assert a.hit(IDENTITY, 50) is not None


@POSTGRES_ONLY
async def test_a_database_failure_leaves_hits_working_and_sharing_resumes(
    engine: AsyncEngine,
    other_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="app.access.ratelimit")
    # "Once, then once a minute": however slow this machine, the minute never runs out here.
    monkeypatch.setattr(ratelimit, "REPORT_EVERY_SECONDS", 3600.0)
    a, b = RateLimits(clock=clock), RateLimits(clock=clock)
    failed = {A: failed_statements(engine), B: failed_statements(other_engine)}
    async with sharing((a, engine, A), (b, other_engine, B)):
        await counted_everything(a, engine, A)
        await counted_everything(b, other_engine, B)
        assert failed == {A: [], B: []}
        async with engine.begin() as connection:  # every round fails from now on
            await connection.execute(text("ALTER TABLE rate_counts RENAME TO rate_counts_away"))
        # Requests go on, decided locally, while no round succeeds.
        assert admitted(a, 100, 30) == [True] * 30

        async def rounds_failed() -> bool:
            return len(failed[A]) >= 3 and len(failed[B]) >= 3

        await eventually(rounds_failed, "three failed rounds of each process")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, "logged every round"  # once each (a and b)
        for record in warnings:  # one line: neither the statement nor its parameters
            assert "\n" not in record.getMessage()
            assert "SELECT" not in record.getMessage()
            assert IDENTITY not in record.getMessage()

        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE rate_counts_away RENAME TO rate_counts"))
        # The hits admitted during the failure were kept and are written now.
        await stored_are(engine, {A: 30})
        await counted_everything(b, other_engine, B)
        assert admitted(b, 100, 71) == [True] * 70 + [False]

        async def said_again() -> bool:
            return any(
                "again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            )

        await eventually(said_again, "the log line that sharing works again")


async def test_an_unreachable_database_is_logged_without_secrets_and_never_stops_hits(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="app.access.ratelimit")
    monkeypatch.setattr(ratelimit, "REPORT_EVERY_SECONDS", 3600.0)
    engine = create_engine("postgresql://gateway:pw-s3cret@127.0.0.1:1/jobs")
    attempts = connection_attempts(engine)
    limits = RateLimits(clock=clock)
    try:
        async with sharing((limits, engine, A)):
            assert admitted(limits, 3, 4) == [True] * 3 + [False]

            async def rounds_failed() -> bool:
                return len(attempts) >= 3

            await eventually(rounds_failed, "three failed rounds")
            assert admitted(limits, 3, 1) == [False]
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
    async with sharing((limits, engine, A)):
        await counted_everything(limits, engine, A)  # its first round cleaned up, too
        # The current window's rows of others count here; the previous window's are kept.
        assert [limits.hit(IDENTITY, 10) is None for _ in range(4)] == [True] * 3 + [False]
    async with engine.connect() as connection:
        windows = (await connection.execute(text('SELECT "window" FROM rate_counts'))).scalars()
        assert sorted(set(windows)) == [WINDOW - 1, WINDOW]


@SQLITE_ONLY
async def test_share_returns_at_once_on_sqlite(engine: AsyncEngine) -> None:
    limits = RateLimits(clock=clock)
    # Returns: the deadline only keeps a loop that never ends from hanging the suite.
    await asyncio.wait_for(limits.share(engine, A, interval=INTERVAL), GUARD_SECONDS)
    assert limits.hit(IDENTITY, 1) is None
    assert limits.hit(IDENTITY, 1) is not None
