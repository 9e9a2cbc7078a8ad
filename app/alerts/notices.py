"""Notices: a signal that events (or alerts) changed, in this process or, as `app.refresh.replicas`
hears, in another. They wake long polls of `GET /events` and the webhook senders, and move
the answers built on alerts.
"""

from __future__ import annotations

import asyncio

from app.store.telling import Told


class Notices:
    """A signal that events were written in this process. Other processes' events are found
    by readers polling the database at a short interval (see `GET /events`)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.count = 0

    def notify(self, told: Told | None = None) -> None:
        if told is not None and not told.events:
            return
        self.count += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seconds: float, since: int | None = None) -> bool:
        """Whether a notice came within `seconds`; at once when one came after the caller
        read `count` as `since` (so a notice during the caller's work is not missed)."""
        if since is not None and self.count != since:
            return True
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        return True
