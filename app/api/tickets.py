"""`GET /tickets`: each alert's PSA ticket, or why it has none (held, failed, unmapped)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from app.api import schemas
from app.api.common import customers_of
from app.api.deps import Authorized, PrincipalDep, SafeParams, ServicesDep
from app.api.etags import dumps
from app.api.params import CustomerIds, IdCursor, id_cursor, split_values
from app.clock import iso
from app.store import tickets
from app.store.tickets import TicketRow

router = APIRouter(tags=["tickets"], dependencies=[Authorized, SafeParams])


def ticket_out(row: TicketRow) -> dict[str, Any]:
    return {
        "alert_key": row.alert_key,
        "customer_id": row.customer_id,
        "company_id": row.company_id,
        "ticket_id": row.ticket_id,
        "state": row.state,
        "opened_at": iso(row.opened_at),
        "closed_at": iso(row.closed_at),
        "last_error": row.last_error,
    }


@router.get(
    "/tickets",
    operation_id="list_tickets",
    summary="PSA tickets, newest first: one per alert that reached the PSA",
    response_model=schemas.TicketPage,
    responses=schemas.error_responses(401, 422, 503),
)
async def list_tickets(
    svc: ServicesDep,
    principal: PrincipalDep,
    state: Annotated[
        Literal["open", "closed", "held", "failed", "unmapped"] | None,
        Query(description="Only tickets in this state."),
    ] = None,
    customer_id: CustomerIds = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Tickets per page.")] = 100,
    cursor: IdCursor = None,
) -> Response:
    before = id_cursor(cursor)
    customers = await customers_of(svc, principal, split_values(customer_id) or None)
    dialect = svc.engine.dialect.name
    async with svc.sessions() as session:
        rows = await tickets.read(
            session, tickets.list_tickets(dialect, state, customers, before, limit)
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = str(rows[-1].id)
    content = dumps({"items": [ticket_out(r) for r in rows], "next_cursor": next_cursor})
    return Response(content, media_type="application/json")
