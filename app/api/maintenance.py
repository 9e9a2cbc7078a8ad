"""`POST /maintenance`, `GET /maintenance` and `DELETE /maintenance/{id}`.

A window mutes its customers (`app.store.maintenance.in_maintenance`); when one is deleted, its
customers are judged again at once, so a problem it held back opens its alert now rather
than at the next sweep (one that simply ends is released by the sweep).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api import schemas
from app.api.common import customers_of, scope, visible
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.errors import InvalidParameter, NotFound
from app.api.etags import dumps
from app.api.params import RowId, split_values
from app.clock import iso
from app.store import maintenance, objects, sweep
from app.store.maintenance import Window

router = APIRouter(tags=["maintenance"], dependencies=[Authorized, SafeParams])


def window_out(w: Window, now: datetime) -> dict[str, Any]:
    return {
        "id": w.id,
        "customer_id": w.customer_id,
        "starts_at": iso(w.starts_at),
        "ends_at": iso(w.ends_at),
        "reason": w.reason,
        "created_at": iso(w.created_at),
        "active": w.starts_at <= now < w.ends_at,
    }


@router.post(
    "/maintenance",
    operation_id="create_maintenance",
    summary="Start or plan a maintenance window: no alert opens, nothing is sent",
    status_code=201,
    response_model=schemas.Maintenance,
    responses=schemas.error_responses(401, 422, 503),
)
async def create_maintenance(
    svc: ServicesDep, principal: PrincipalDep, body: schemas.MaintenanceIn
) -> Response:
    if body.ends_at <= body.starts_at:
        raise InvalidParameter("ends_at: must be after starts_at")
    if body.customer_id is None:
        if principal.customers is not None:
            raise InvalidParameter(
                "customer_id: a key limited to some customers must name one of them"
            )
    else:
        await scope(svc.refresher, [body.customer_id], principal)  # 422 when not its own
    now = svc.clock()
    async with svc.writer.transaction() as session:
        window = await maintenance.create(
            session, body.customer_id, body.starts_at, body.ends_at, body.reason, now
        )
    svc.changed()
    return Response(dumps(window_out(window, now)), status_code=201, media_type="application/json")


@router.get(
    "/maintenance",
    operation_id="list_maintenance",
    summary="Maintenance windows, latest start first",
    response_model=schemas.MaintenancePage,
    responses=schemas.error_responses(401, 422, 503),
)
async def list_maintenance(
    svc: ServicesDep,
    principal: PrincipalDep,
    customer_id: Annotated[
        list[str] | None,
        Query(description="Repeatable or comma-separated; windows of every customer too."),
    ] = None,
) -> Response:
    customers = await customers_of(svc, principal, split_values(customer_id) or None)
    async with svc.sessions() as session:
        windows = await maintenance.list_windows(session, customers)
    now = svc.clock()
    return Response(
        dumps({"items": [window_out(w, now) for w in windows], "next_cursor": None}),
        media_type="application/json",
    )


@router.delete(
    "/maintenance/{window_id}",
    operation_id="delete_maintenance",
    summary="End a maintenance window now (or drop a planned one)",
    status_code=204,
    responses=schemas.error_responses(401, 404, 422, 503),
)
async def delete_maintenance(
    svc: ServicesDep,
    principal: PrincipalDep,
    window_id: RowId,
) -> Response:
    async with svc.sessions() as session:
        window = await maintenance.get(session, window_id)
    # A key limited to some customers may delete its customers' windows only.
    mine = window is not None and (
        principal.customers is None
        or (window.customer_id is not None and visible(principal, window.customer_id))
    )
    if window is None or not mine:
        raise NotFound(f"no maintenance window {window_id} (see GET /maintenance)")
    async with svc.writer.transaction() as session:
        await maintenance.remove(session, window_id)
    await release(svc, window)
    return Response(status_code=204)


async def release(svc: Services, window: Window) -> None:
    """Judge the window's customers now: what it held back opens."""
    now = svc.clock()
    if window.customer_id is not None:
        customers = [window.customer_id]
    else:
        async with svc.sessions() as session:
            customers = await objects.customer_ids(session)
    for cid in customers:
        told = await svc.writer.run_plan(
            lambda d, cid=cid: sweep.sweep_customer(d, cid, now, svc.feed)  # type: ignore[misc]
        )
        svc.on_told(told)
    svc.changed()
