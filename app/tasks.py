"""The process's background tasks, supervised in one place.

`Supervisor.spawn` starts a task that lives until the process stops (or until it ends by
itself); a failure is logged, never lost. `aclose` cancels them all and waits for them, in
the service's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger("app.tasks")


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)
        return task

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def all_of(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """`asyncio.gather` of `coros` that, when stopped, stops them and waits until each has
    ended (a plain gather's children may still be closing a session when it returns)."""
    # Named after their coroutines (`Bus._look`): a task dump, or a test, tells them apart.
    tasks = [asyncio.create_task(coro, name=getattr(coro, "__qualname__", None)) for coro in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def log_failure(task: asyncio.Task[Any]) -> None:
    """Retrieve a task's exception, so that none is lost unlogged."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not getattr(exc, "quiet", False):
        log.error("background task %s failed", task.get_name(), exc_info=exc)


async def keep_gauge(
    gauge: Any, count: Callable[[], Awaitable[int]], what: str, every: float
) -> None:
    """Set `gauge` to `count()` every `every` seconds, forever; a count that fails (the
    database may be away for a while) is logged and taken again next time."""
    while True:
        try:
            gauge.set(await count())
        except Exception as exc:
            log.info("could not count %s: %s", what, type(exc).__name__)
        await asyncio.sleep(every)
