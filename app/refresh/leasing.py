"""Lease coordination: one walk of a customer at a time, across every process on the
database (replicas on PostgreSQL, or `jobs-gateway refresh` beside `serve` on one SQLite
file). The rows and their SQL are `app.store.leases`; this is the process's side of them:

- `take` when a walk really starts (it holds a walk slot), never before it queues;
- `keep` renews the lease every third of its life while the walk runs, and stops the walk
  (cancels it, recording it in `lost`) once another process has taken the lease over;
- `hand_back` after the walk: given back after a success, kept as a backoff after a failure;
- `release_dead` at start-up hands back the leases of this host's processes that are gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

from app.store import leases, outage
from app.store.writer import Writer

log = logging.getLogger("app.refresh")

LEASE_SECONDS = 120.0
"""How long a refresh lease lasts unless renewed (its keeper renews it every third)."""


def process_holder() -> str:
    """This process's name among the processes on the database: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leasing:
    def __init__(self, writer: Writer, holder: str, seconds: float = LEASE_SECONDS) -> None:
        self.writer = writer
        self.seconds = seconds
        self.holder = holder
        self.lost: set[asyncio.Task[Any]] = set()  # walks a keeper stopped

    async def take(self, cid: str) -> leases.Lease:
        return await self.writer.run_plan(lambda d: leases.take(d, cid, self.holder, self.seconds))

    async def peek(self, cid: str) -> leases.Lease | None:
        return await self.writer.run_plan(lambda d: leases.peek(d, cid))

    async def hand_back(self, cid: str, lease: leases.Lease, backoff_seconds: float) -> None:
        """Give the lease back, or keep it as a backoff for `backoff_seconds` (> 0)."""
        if backoff_seconds > 0:
            await self.writer.run_plan(
                lambda d: leases.back_off(d, cid, self.holder, lease.token, backoff_seconds)
            )
        else:
            await self.writer.run_plan(lambda d: leases.give_back(d, cid, self.holder, lease.token))

    async def keep(
        self,
        cid: str,
        lease: leases.Lease,
        walk: asyncio.Task[Any],
        committing: Callable[[], bool] = lambda: False,
    ) -> None:
        """Renew the walk's lease while it runs; when the lease was taken over, stop the
        walk (its merge would be refused anyway: `leases.check_and_give_back`). A walk that
        is `committing` is never stopped: its merge checks the lease itself, and gives it
        back in its transaction, so a renewal that finds no lease may only mean it stored."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                kept = await self.writer.run_plan(
                    lambda d: leases.extend(d, cid, self.holder, lease.token, self.seconds)
                )
            except Exception as exc:  # the database: try again; the commit checks anyway
                log.warning("could not renew the lease of customer %s: %s", cid, exc)
                continue
            if not kept:
                if committing():
                    return
                self.lost.add(walk)
                walk.cancel()
                return

    async def release_dead(self) -> None:
        """Hand back the leases of this host's processes that are gone (a restart after a
        crash need not wait for their expiry). A container restarted keeps its host name
        and its process id, so a lease of this very pid but another nonce is a past life."""
        host, pid, _ = self.holder.split(":")
        for holder in await self.writer.run_plan(lambda d: leases.holders_on(d, host)):
            parts = holder.split(":")
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            if holder == self.holder:
                continue
            other = int(parts[1])
            if other == int(pid) or not _alive(other):
                try:
                    count = await self.writer.run_plan(
                        lambda d, h=holder: leases.give_back_all(d, h)  # type: ignore[misc]
                    )
                except outage.DRIVER_ERRORS as exc:  # a store it may not write: they expire
                    log.warning(
                        "could not hand back the leases of %s: %s", holder, outage.cause(exc)
                    )
                    return
                log.info("handed back %d leases of %s, a process that is gone", count, holder)

    async def give_back_all(self) -> None:
        try:
            await self.writer.run_plan(lambda d: leases.give_back_all(d, self.holder))
        except Exception:  # they expire by themselves
            log.exception("could not hand back this process's leases")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
