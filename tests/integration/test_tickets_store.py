"""The store's side of PSA tickets on both databases: the mapping, a ticket row's round trip,
and the storm guard's count shared by two processes (two engines on one database) taking
slots at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import tickets
from app.store.db import create_engine
from app.store.tickets import TicketRow
from app.store.writer import Writer

T0 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[Writer]:
    w = Writer.for_engine(engine)
    yield w
    w.close()


@pytest.fixture
async def other_writer(database_url: str) -> AsyncIterator[Writer]:
    """Another process, as far as the database can tell."""
    engine = create_engine(database_url)
    w = Writer.for_engine(engine)
    yield w
    w.close()
    await engine.dispose()


async def open_alerts(engine: AsyncEngine, count: int) -> list[int]:
    async with engine.begin() as conn:
        for n in range(count):
            await conn.execute(
                text(
                    "INSERT INTO alerts (alert_key, customer_id, job_type, module, state, "
                    "reason, severity, opened_at, consecutive_failures, updated_at) VALUES "
                    "(:key, :cid, 'exchange_online', 'mailbox', 'open', 'failed', 'warning', "
                    ":at, 1, :at)"
                ),
                {"key": f"c{n}:exchange_online:mailbox", "cid": f"c{n}", "at": T0},
            )
        rows = await conn.execute(text("SELECT id FROM alerts ORDER BY id"))
        return [int(r[0]) for r in rows]


async def test_a_mapping_is_kept_by_id_replaced_and_removed(writer: Writer) -> None:
    await writer.run_plan(lambda d: tickets.map_company(d, "c1", "250", T0))
    await writer.run_plan(lambda d: tickets.map_company(d, "c1", "251", T0))
    assert await writer.run_plan(lambda d: tickets.company_of(d, "c1")) == "251"
    assert await writer.run_plan(tickets.mappings) == [("c1", "251", T0)]
    assert await writer.run_plan(lambda d: tickets.unmap_company(d, "c1")) is True
    assert await writer.run_plan(lambda d: tickets.unmap_company(d, "c1")) is False
    assert await writer.run_plan(lambda d: tickets.company_of(d, "c1")) is None


async def test_a_ticket_row_round_trips_and_lists_by_state_and_customer(
    engine: AsyncEngine, writer: Writer
) -> None:
    [a, b] = await open_alerts(engine, 2)
    row = TicketRow(a, "c0:exchange_online:mailbox", "c0", "250", "1001", "open", opened_at=T0)
    await writer.run_plan(lambda d: tickets.save(d, row, T0))
    unmapped = TicketRow(b, "c1:exchange_online:mailbox", "c1", None, None, "unmapped")
    await writer.run_plan(lambda d: tickets.save(d, unmapped, T0))
    got = await writer.run_plan(lambda d: tickets.ticket_of(d, a))
    assert got is not None and got.but(id=None) == row
    listed = await writer.run_plan(lambda d: tickets.list_tickets(d, "unmapped", None, None, 10))
    assert [t.alert_id for t in listed] == [b]
    listed = await writer.run_plan(lambda d: tickets.list_tickets(d, None, ["c0"], None, 10))
    assert [t.alert_id for t in listed] == [a]
    assert await writer.run_plan(lambda d: tickets.list_tickets(d, None, [], None, 10)) == []


async def test_two_processes_share_the_hours_new_ticket_slots(
    engine: AsyncEngine, writer: Writer, other_writer: Writer
) -> None:
    ids = await open_alerts(engine, 8)
    for n, alert_id in enumerate(ids):
        row = TicketRow(alert_id, f"c{n}:exchange_online:mailbox", f"c{n}", "250", None, "open")
        await writer.run_plan(lambda d, row=row: tickets.save(d, row, T0))  # type: ignore[misc]
    writers = [writer, other_writer]
    slots = await asyncio.gather(
        *(
            writers[n % 2].run_plan(
                lambda d, alert_id=alert_id: tickets.reserve(d, alert_id, T0, 3)  # type: ignore[misc]
            )
            for n, alert_id in enumerate(ids)
        )
    )
    assert sum(s.granted for s in slots) == 3
    assert {s.free_at for s in slots if not s.granted} == {T0 + timedelta(hours=1)}
    # A slot taken is kept: the same ticket's retry is not counted again.
    granted = [alert_id for alert_id, s in zip(ids, slots, strict=True) if s.granted]
    again = await writer.run_plan(lambda d: tickets.reserve(d, granted[0], T0, 3))
    assert again.granted
    # An hour on, the slots are free again.
    later = T0 + timedelta(hours=1, seconds=1)
    held = [alert_id for alert_id, s in zip(ids, slots, strict=True) if not s.granted]
    assert (await writer.run_plan(lambda d: tickets.reserve(d, held[0], later, 3))).granted
