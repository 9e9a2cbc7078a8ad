"""`AnswerCache.build_once`: many clients missing the same answer at once share one build."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.api.answers import AnswerCache


async def test_callers_of_one_key_share_one_build_and_other_keys_build_their_own() -> None:
    cache = AnswerCache()
    builds: list[str] = []
    gate = asyncio.Event()

    def builder(key: str) -> Callable[[], Awaitable[str]]:
        async def build() -> str:
            builds.append(key)
            await gate.wait()
            return f"answer of {key}"

        return build

    waiters = [asyncio.create_task(cache.build_once("a", builder("a"))) for _ in range(50)]
    other = asyncio.create_task(cache.build_once("b", builder("b")))
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {"answer of a"}
    assert await other == "answer of b"
    assert sorted(builds) == ["a", "b"]
    # Done: the next miss builds again (what is kept is for `put` to say).
    gate.set()
    assert await cache.build_once("a", builder("a")) == "answer of a"
    assert builds.count("a") == 2


async def test_a_failed_build_fails_every_waiter_and_the_next_caller_tries_again() -> None:
    cache = AnswerCache()
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise ValueError("the database went away")

    waiters = [asyncio.create_task(cache.build_once("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    for waiter in waiters:
        with pytest.raises(ValueError, match="went away"):
            await waiter

    async def working() -> str:
        return "fine"

    assert await cache.build_once("k", working) == "fine"


async def test_a_caller_that_goes_away_does_not_cancel_the_build_for_the_others() -> None:
    cache = AnswerCache()
    gate = asyncio.Event()

    async def build() -> str:
        await gate.wait()
        return "done"

    leaving = asyncio.create_task(cache.build_once("k", build))
    staying = asyncio.create_task(cache.build_once("k", build))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gate.set()
    assert await staying == "done"
