"""The commit room: walks done fetching wait to be written while the rows they hold fit."""

from __future__ import annotations

import asyncio

import pytest

from app.refresh.walk import CommitRoom


async def test_walks_enter_while_their_rows_fit_and_in_turn_once_they_do_not() -> None:
    room = CommitRoom(100)
    await room.take(60)
    await room.take(40)
    later = asyncio.create_task(room.take(30))
    last = asyncio.create_task(room.take(1))
    await asyncio.sleep(0)
    assert not later.done() and not last.done(), "full: both wait, the small one behind"
    room.give(60)
    await asyncio.wait_for(asyncio.gather(later, last), 5)
    assert room.used == 40 + 30 + 1


async def test_a_walk_larger_than_the_room_enters_an_empty_one() -> None:
    room = CommitRoom(100)
    await asyncio.wait_for(room.take(500), 5)
    waiting = asyncio.create_task(room.take(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    room.give(500)
    await asyncio.wait_for(waiting, 5)
    assert room.used == 1


async def test_a_walk_stopped_while_it_waits_takes_no_room() -> None:
    room = CommitRoom(10)
    await room.take(10)
    stopped = asyncio.create_task(room.take(5))
    after = asyncio.create_task(room.take(5))
    await asyncio.sleep(0)
    stopped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopped
    room.give(10)
    await asyncio.wait_for(after, 5)
    assert room.used == 5
