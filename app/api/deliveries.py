"""`GET /webhooks/deliveries` and `POST /webhooks/deliveries/{delivery_id}/retry`: what the
outbox holds for the receivers of `WEBHOOK_URLS`, and sending one again."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from app.alerts.webhooks import receiver_origin
from app.api import schemas
from app.api.common import customers_of, visible
from app.api.deps import Authorized, PrincipalDep, SafeParams, ServicesDep
from app.api.errors import Conflict, NotFound
from app.api.etags import dumps
from app.api.params import CustomerIds, IdCursor, RowId, id_cursor, split_values
from app.clock import iso
from app.store import outbox

router = APIRouter(tags=["webhooks"], dependencies=[Authorized, SafeParams])


def delivery_out(row: dict[str, Any]) -> dict[str, Any]:
    pending = row["state"] == "pending"
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "url": receiver_origin(row["url"]),
        "alert_key": row["alert_key"],
        "customer_id": row["customer_id"],
        "state": row["state"],
        "attempts": row["attempts"],
        "created_at": iso(row["created_at"]),
        "next_attempt_at": iso(row["next_attempt_at"]) if pending else None,
        "deadline_at": iso(row["deadline_at"]),
        "last_attempt_at": iso(row["last_attempt_at"]),
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "delivered_at": iso(row["delivered_at"]),
    }


@router.get(
    "/webhooks/deliveries",
    operation_id="list_webhook_deliveries",
    summary="Webhook deliveries, newest first: pending, delivered and failed",
    response_model=schemas.DeliveryPage,
    responses=schemas.error_responses(401, 422, 503),
)
async def list_deliveries(
    svc: ServicesDep,
    principal: PrincipalDep,
    state: Annotated[
        Literal["pending", "delivered", "failed"] | None,
        Query(description="Only deliveries in this state."),
    ] = None,
    customer_id: CustomerIds = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Deliveries per page.")] = 100,
    cursor: IdCursor = None,
) -> Response:
    before = id_cursor(cursor)
    customers = await customers_of(svc, principal, split_values(customer_id) or None)
    async with svc.sessions() as session:
        rows = await outbox.list_deliveries(
            session, state=state, customer_ids=customers, before=before, limit=limit
        )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = str(rows[-1]["id"])
    content = dumps({"items": [delivery_out(r) for r in rows], "next_cursor": next_cursor})
    return Response(content, media_type="application/json")


@router.post(
    "/webhooks/deliveries/{delivery_id}/retry",
    operation_id="retry_webhook_delivery",
    summary="Send a failed (or delivered) delivery again",
    response_model=schemas.Delivery,
    responses=schemas.error_responses(401, 404, 409, 422, 503),
)
async def retry_delivery(
    svc: ServicesDep,
    principal: PrincipalDep,
    delivery_id: RowId,
) -> Response:
    now = svc.clock()
    window = svc.feed.delivery_window
    async with svc.sessions() as session:
        row = await outbox.get_delivery(session, delivery_id)
    # A key limited to some customers retries only their deliveries; the others' do not
    # exist for it.
    if row is None or not visible(principal, row["customer_id"]):
        raise NotFound(f"no webhook delivery {delivery_id} (see GET /webhooks/deliveries)")
    if row["url"] not in svc.feed.webhook_urls:
        # No sender would take it: it would stay pending until the next start-up fails it.
        raise Conflict(
            f"delivery {delivery_id} cannot be sent again: its receiver "
            f"{receiver_origin(row['url'])} is no longer in WEBHOOK_URLS"
        )
    before = await svc.writer.run_plan(
        lambda dialect: outbox.retry_delivery(dialect, delivery_id, now, window)
    )
    if before is None:
        raise NotFound(f"no webhook delivery {delivery_id} (see GET /webhooks/deliveries)")
    if before == "pending":
        raise Conflict(f"delivery {delivery_id} is pending already: it is sent when it is due")
    svc.changed()
    async with svc.sessions() as session:
        row = await outbox.get_delivery(session, delivery_id)
    if row is None:  # purged in between
        raise NotFound(f"no webhook delivery {delivery_id} (see GET /webhooks/deliveries)")
    return Response(dumps(delivery_out(row)), media_type="application/json")
