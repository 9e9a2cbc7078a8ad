"""Several processes on one database: each hears what the others stored, within 2 s.

On PostgreSQL, `Bus` listens on the channel `jobs_gateway` (LISTEN/NOTIFY) on a connection of
its own and publishes on it:

- `r|<holder>|<customer_id>` when a process has settled a refresh of that customer (stored
  new data, or a failure): the others reload that customer's state (`Refresher.reload`), so
  its freshness, version (and the answers and ETags built on it) agree everywhere at once;
- `e|<holder>` when a process has written events, or changed what answers show without an
  event (`Services.changed`: a snooze, an expectation, a maintenance window): the others
  wake their long polls and webhook senders, and move the answers built on alerts and
  objects.

A notification can be lost (a process dies between its commit and its NOTIFY, or the
connection drops), so `Bus` also looks at the database once a second: one cheap query for
the newest snapshot and event ids and the newest alert change; a move it did not hear of
reloads the customers concerned, or moves the answers built on events, alerts, expectations
and maintenance windows (a snooze, an expectation set or a window made writes no event, yet
every replica's `/alerts`, `/objects` and `/grid` must show it).

On SQLite there is no LISTEN, and the look is all there is: `jobs-gateway refresh` beside a
running `serve` on one file shows in the service's answers within a look.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.refresh.refresher import Refresher
from app.store import watermarks
from app.store.watermarks import CHANNEL
from app.tasks import all_of

log = logging.getLogger(__name__)

LOOK_SECONDS = 0.5
"""How often a process looks at the database for what others stored: long polls hear of
another process's events within it, every replica of a snooze within two."""
RECONNECT_SECONDS = 2.0


def asyncpg_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _set(event: asyncio.Event, *_: object) -> None:
    event.set()


def _terminate(connecting: asyncio.Future[Any]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().terminate()


class Bus:
    def __init__(
        self,
        database_url: str,
        sessions: async_sessionmaker[AsyncSession],
        holder: str,
        on_events: Callable[[], None],
        *,
        listen: bool = True,
    ) -> None:
        self.dsn = asyncpg_dsn(database_url) if listen else ""
        self.listen = listen
        self.sessions = sessions
        self.holder = holder
        self.on_events = on_events
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._seen: watermarks.Watermarks | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    # -- publishing ------------------------------------------------------------------------

    async def settled(self, customer_id: str) -> None:
        await self._notify(f"r|{self.holder}|{customer_id}")

    def events_written(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify(f"e|{self.holder}"))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _notify(self, payload: str) -> None:
        conn = self._conn
        if conn is None:
            return  # the others find it at their next look
        try:
            async with self._lock:
                await watermarks.notify(conn, payload)
        except Exception as exc:  # the connection is being replaced: the look covers it
            log.info("could not notify the other processes: %s", type(exc).__name__)

    # -- listening -------------------------------------------------------------------------

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # A holder is host:pid:nonce, so the fields are split by a bar.
        kind, _, rest = payload.partition("|")
        holder, _, customer_id = rest.partition("|")
        if holder == self.holder:
            return
        if kind == "r" and customer_id:
            self._pending.add(customer_id)
            self._wake.set()
        elif kind == "e":
            self.on_events()

    async def run(self, refresher: Refresher) -> None:
        """Listen (PostgreSQL, reconnecting when the connection drops) and look, forever;
        what moved is reloaded into `refresher`."""
        parts = [self._look(), self._apply(refresher)]
        if self.listen:
            parts.append(self._listen())
        # Stopped, the parts end before this does (a look closing its session included), so
        # nothing of the bus outlives the engine it reads through.
        await all_of(*parts)

    async def _listen(self) -> None:
        while True:
            conn: Any = None
            try:
                connecting = asyncio.ensure_future(asyncpg.connect(self.dsn, timeout=10))
                try:
                    conn = await asyncio.shield(connecting)
                except asyncio.CancelledError:
                    # Stopping while connecting: close the connection when it arrives.
                    connecting.add_done_callback(_terminate)
                    raise
                await conn.add_listener(CHANNEL, self._heard)
                self._conn = conn
                closed = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set, closed))
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection failed (%s); retrying", type(exc).__name__)
            finally:
                self._conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # at once: a cancelled close would leave it open
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _apply(self, refresher: Refresher) -> None:
        """Reload what the notifications named, in batches."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids, self._pending = sorted(self._pending), set()
            try:
                await refresher.reload(ids)
            except Exception:
                log.exception("could not reload customers another process refreshed")

    async def _look(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not look at the database: %s", type(exc).__name__)
            await asyncio.sleep(LOOK_SECONDS)

    async def look(self) -> None:
        """One look: the newest snapshot and event ids, alert change, expectation set and
        maintenance window; what moved unheard is reloaded, or moves the answers."""
        async with self.sessions() as session:
            marks = await watermarks.newest(session)
            seen = self._seen
            self._seen = marks
            if seen is None:
                return
            if marks.snapshots > seen.snapshots:
                moved = await watermarks.customers_stored_after(session, seen.snapshots)
                self._pending.update(moved)
                self._wake.set()
        if (
            marks.events > seen.events
            or marks.alerts != seen.alerts
            or marks.settings != seen.settings
        ):
            self.on_events()
