"""The background refresh: every customer refreshed every `REFRESH_INTERVAL_SECONDS`
(jittered by the ledger as it settles), so that in normal operation reads never wait; and
the warm-up at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from app.refresh.directory import DiscoveryFailed
from app.refresh.refresher import Refresher

log = logging.getLogger("app.refresh")


def due(refresher: Refresher, customer_ids: Sequence[str], now: datetime) -> list[str]:
    """Customers the background refresh should take now."""
    ledger = refresher.ledger
    out = []
    for cid in customer_ids:
        status = ledger.of(cid)
        if refresher.in_flight(cid) or ledger.in_backoff(status, now):
            continue
        if status.last_success_at is None or status.due_at is None or now >= status.due_at:
            out.append(cid)
    return out


async def run_background(refresher: Refresher, tick: float | None = None) -> None:
    """Refresh every customer every interval, forever."""
    interval = refresher.ledger.interval
    pause = tick if tick is not None else max(0.5, min(interval / 10, 5.0))
    while True:
        try:
            ids = await refresher.customer_ids()
        except DiscoveryFailed as exc:
            log.info("background refresh waits for the customer list: %s", exc)
        else:
            for cid in due(refresher, ids, refresher.clock()):
                refresher.start(cid)
        await asyncio.sleep(pause)


async def warm(refresher: Refresher) -> None:
    """Refresh every customer once (at start-up)."""
    try:
        ids = await refresher.customer_ids()
    except DiscoveryFailed as exc:
        log.warning("warm-up skipped: %s", exc)
        return
    await asyncio.gather(*(refresher.refresh(cid) for cid in ids))
