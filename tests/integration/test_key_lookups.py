"""The book of keys against a real store: a key the process does not know yet is looked up
once, within a budget, and a revocation is never undone by a look-up that read before it.

Every test runs on a SQLite file and on PostgreSQL. Time is a fake monotonic clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.access import keys
from app.store import keys as stored_keys
from app.store.db import session_factory
from app.store.writer import Writer

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
async def book(sessions: async_sessionmaker[AsyncSession], clock: Monotonic) -> keys.KeyBook:
    book = keys.KeyBook([], required=True, monotonic=clock)
    await book.reload(sessions)
    return book


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key ids looked up in the database, in order."""
    seen: list[str] = []
    read = stored_keys.stored_key

    async def counted(session: AsyncSession, key_id: str) -> stored_keys.StoredKey | None:
        seen.append(key_id)
        return await read(session, key_id)

    monkeypatch.setattr(stored_keys, "stored_key", counted)
    return seen


def made_up(n: int) -> str:
    return f"jgw_{n:012x}_{'s' * 43}"


async def test_made_up_keys_are_looked_up_within_the_budget_and_then_refused_unread(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    clock: Monotonic,
    reads: list[str],
) -> None:
    flood = [made_up(n) for n in range(100)]
    for key in flood:
        assert await book.look_up([key], sessions) is None
    assert len(reads) == keys.LOOKUP_BURST
    # The budget comes back with time, LOOKUPS_PER_SECOND a second.
    clock.now += 1
    for key in flood[keys.LOOKUP_BURST :]:
        assert await book.look_up([key], sessions) is None
    assert len(reads) == keys.LOOKUP_BURST + int(keys.LOOKUPS_PER_SECOND)
    # A key id found missing is not asked again for a while, budget or not.
    clock.now += 60
    reads.clear()
    assert await book.look_up([flood[0]], sessions) is None
    assert await book.look_up([flood[0]], sessions) is None
    clock.now += keys.MISS_SECONDS - 1
    assert await book.look_up([flood[0]], sessions) is None
    assert reads == [keys.key_id_of(flood[0])]
    clock.now += 2
    assert await book.look_up([flood[0]], sessions) is None
    assert len(reads) == 2


async def test_a_real_key_made_during_a_flood_works_once_its_look_up_has_budget(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    writer: Writer,
    clock: Monotonic,
) -> None:
    for n in range(keys.LOOKUP_BURST):
        await book.look_up([made_up(n)], sessions)
    key = await keys.create_key(writer, "psa", customers=None, rate_per_minute=None, now=NOW)
    assert await book.look_up([key], sessions) is None  # refused as any unknown key...
    clock.now += 1 / keys.LOOKUPS_PER_SECOND
    principal = await book.look_up([key], sessions)  # ...until a look-up is allowed
    assert principal is not None and principal.name == "psa"
    assert book.authenticate([key]) == principal  # known from then on, from memory


async def test_requests_for_one_new_key_at_once_share_one_read(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    writer: Writer,
    reads: list[str],
) -> None:
    key = await keys.create_key(writer, "psa", customers=["c1"], rate_per_minute=7, now=NOW)
    found = await asyncio.gather(*(book.look_up([key], sessions) for _ in range(25)))
    assert len(reads) == 1
    assert {p.name if p else None for p in found} == {"psa"}
    assert found[0] is not None and found[0].customers == frozenset({"c1"})
    assert found[0].rate_per_minute == 7


class Held:
    """`stored_keys.stored_key`, made to wait after its read until the test lets it go on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read = asyncio.Event()
        self.go_on = asyncio.Event()
        real = stored_keys.stored_key

        async def held(session: AsyncSession, key_id: str) -> stored_keys.StoredKey | None:
            found = await real(session, key_id)
            self.read.set()
            await self.go_on.wait()
            return found

        monkeypatch.setattr(stored_keys, "stored_key", held)


async def test_a_look_up_that_read_before_a_revocation_does_not_bring_the_key_back(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    writer: Writer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = await keys.create_key(writer, "psa", customers=None, rate_per_minute=None, now=NOW)
    held = Held(monkeypatch)
    looking = asyncio.create_task(book.look_up([key], sessions))
    await held.read.wait()  # it read the key live
    assert await stored_keys.revoke(writer, "psa", now=NOW)
    await book.reload(sessions)  # a reload that began after the look-up: it saw the revocation
    held.go_on.set()
    assert await looking is None
    assert book.authenticate([key]) is None
    assert book.live == 0


async def test_a_reload_that_read_before_a_look_up_does_not_drop_the_key_it_found(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    writer: Writer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read, go_on = asyncio.Event(), asyncio.Event()
    real = stored_keys.live_keys

    async def slow_reload(session: AsyncSession) -> list[stored_keys.StoredKey]:
        found = await real(session)  # read before the key exists
        read.set()
        await go_on.wait()
        return found

    monkeypatch.setattr(stored_keys, "live_keys", slow_reload)
    reloading = asyncio.create_task(book.reload(sessions))
    await read.wait()
    key = await keys.create_key(writer, "psa", customers=None, rate_per_minute=None, now=NOW)
    assert await book.look_up([key], sessions) is not None
    go_on.set()
    await reloading  # the older reload, without the key, applied after the look-up
    assert book.authenticate([key]) is not None
    assert book.live == 1


async def test_a_look_up_the_database_cannot_answer_is_refused_and_tried_again(
    book: keys.KeyBook,
    sessions: async_sessionmaker[AsyncSession],
    writer: Writer,
    clock: Monotonic,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = await keys.create_key(writer, "psa", customers=None, rate_per_minute=None, now=NOW)
    real = stored_keys.stored_key

    async def away(session: AsyncSession, key_id: str) -> Any:
        raise OSError("connection refused")

    monkeypatch.setattr(stored_keys, "stored_key", away)
    assert await book.look_up([key], sessions) is None
    monkeypatch.setattr(stored_keys, "stored_key", real)
    assert await book.look_up([key], sessions) is not None  # not remembered as a miss
