"""The walk: one customer's pages fetched, normalized and merged (fetch -> normalize -> store).

Walks stream: each page is hashed and normalized as it arrives and only the rows that changed
are kept (`app.store.merge`), written in one short transaction at the end. At most `slots`
customers are fetched at once, and those done fetching wait to be written while the rows
they hold fit in the commit room; the upstream client's semaphore bounds the requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.clock import Clock
from app.refresh.leasing import Leasing
from app.refresh.ledger import RefreshOutcome
from app.store import leases
from app.store.merge import Ingest, IngestResult, open_ingest
from app.store.snapshots import SnapshotRecord
from app.store.telling import FeedConfig, Told
from app.store.writer import Writer
from app.upstream.client import AvePointClient

log = logging.getLogger("app.refresh")

ROWS_PER_SLICE = 500
"""Rows normalized between two yields to the event loop (a page is 100; a misbehaving
upstream may send far more on one page)."""

COMMIT_ROWS = 5_000
"""Changed rows that walks done fetching may hold in memory while they wait for the writer;
a walk with more than that waits until the others are written: about five large customers
(memory: 1,000 x 1,000 stays as it was with four), or fifty small ones (on SQLite the walks
waiting are written together: `Writer.run_merge`)."""


class CommitRoom:
    """Room for walks that wait to be written, counted in the changed rows they hold: many
    small customers may wait together (and be committed together), few large ones."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.rows

    async def take(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self.used += n
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.give(n)  # granted, then cancelled before it woke
            raise

    def give(self, n: int) -> None:
        self.used -= n
        while self._waiters:
            wanted, granted = self._waiters[0]
            if granted.done():  # cancelled while it waited
                self._waiters.popleft()
                continue
            if not self._fits(wanted):
                break
            self._waiters.popleft()
            self.used += wanted
            granted.set_result(None)


class Walker:
    def __init__(
        self,
        *,
        client: AvePointClient,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        leasing: Leasing,
        clock: Clock,
        slots: int,
        feed: FeedConfig | None = None,
        on_told: Callable[[Told], None] | None = None,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.writer = writer
        self.leasing = leasing
        self.clock = clock
        self.feed = feed
        self.on_told = on_told
        self.slots = asyncio.Semaphore(max(1, slots))
        self.commit_room = CommitRoom(COMMIT_ROWS)
        self.walking: set[str] = set()  # customers whose walk holds a slot now

    async def run(self, cid: str, started: datetime, lease: leases.Lease) -> RefreshOutcome:
        """One walk of the customer's pages, staged as they come and merged at the end.

        A walk holds a walk slot while it fetches (its caller took it before the lease),
        then trades it for room among the walks waiting to be written (`CommitRoom`):
        other walks fetch while it waits for the writer, and the rows held in memory are at
        most the walk slots' and the commit room's together. A
        keeper renews its lease meanwhile, and stops it when the lease was lost; the merge
        checks the lease too.
        """
        release: Callable[[], None] = self.slots.release
        self.walking.add(cid)
        ingest: Ingest | None = None
        pages = 0
        request_id: str | None = None
        me = asyncio.current_task()
        assert me is not None
        committing = False
        keeper = asyncio.create_task(
            self.leasing.keep(cid, lease, me, lambda: committing), name=f"lease:{cid}"
        )
        try:
            async with self.sessions() as session:
                ingest = await open_ingest(
                    session, cid, started=lease.taken_at, lease=(self.leasing.holder, lease.token)
                )
            async for page in self.client.iter_job_pages(cid):
                pages += 1
                request_id = page.request_id or request_id
                rows, raw = page.rows, page.raw
                for start in range(0, len(rows), ROWS_PER_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    end = start + ROWS_PER_SLICE
                    ingest.add_page(rows[start:end], None if raw is None else raw[start:end])
                if ingest.must_spill:
                    await ingest.spill(self.writer, self.clock())
            snapshot = SnapshotRecord(
                customer_id=cid,
                started_at=started,
                finished_at=self.clock(),
                outcome="success",
                pages=pages,
                jobs_seen=len(ingest.seen),
                rows_skipped=ingest.rows_skipped,
                request_id=request_id,
            )
            held = len(ingest.pending)
            await self.commit_room.take(held)
            self.slots.release()
            release = functools.partial(self.commit_room.give, held)
            committing = True
            result: IngestResult = await ingest.commit(self.writer, snapshot, self.feed)
        except BaseException as exc:
            keeper.cancel()
            # The keeper stopped this walk (not its caller): it is a lost lease.
            lost = me in self.leasing.lost and isinstance(exc, asyncio.CancelledError)
            if lost:
                self.leasing.lost.discard(me)
                me.uncancel()
            if ingest is not None:
                try:
                    await asyncio.shield(ingest.discard(self.writer))
                except Exception:
                    log.exception("could not discard the staged rows of customer %s", cid)
            if lost:
                raise leases.LeaseLost(cid) from None
            raise
        finally:
            keeper.cancel()
            self.walking.discard(cid)
            release()
        if result.told.events and self.on_told is not None:
            self.on_told(result.told)
        log.info(
            "customer %s: %d jobs on %d pages, %d written", cid, result.jobs, pages, result.written
        )
        return RefreshOutcome(
            cid,
            ok=True,
            jobs=result.jobs,
            pages=pages,
            rows_skipped=result.rows_skipped,
            written=result.written,
            stored_at=snapshot.finished_at,
            data_version=result.data_version,
        )
