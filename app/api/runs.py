"""`POST /refresh` starts a refresh of some or every customer; `GET /refresh/{run_id}`
follows it customer by customer (see `app.runs`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Response

from app.api import schemas
from app.api.common import scope, visible
from app.api.deps import Authorized, PrincipalDep, SafeParams, ServicesDep
from app.api.errors import InvalidParameter, NotFound
from app.api.etags import dumps
from app.api.params import shorten

router = APIRouter(tags=["refresh"], dependencies=[Authorized, SafeParams])


@router.post(
    "/refresh",
    operation_id="start_refresh",
    summary="Refresh customers now; follow the run at its Location",
    status_code=202,
    response_model=schemas.RefreshStarted,
    responses=schemas.error_responses(401, 422, 503),
)
async def start_refresh(
    svc: ServicesDep,
    principal: PrincipalDep,
    body: Annotated[schemas.RefreshRequest | None, Body()] = None,
) -> Response:
    named = body.customer_ids if body is not None else None
    if named is not None:
        if not named:
            raise InvalidParameter("customer_ids: name at least one customer, or leave it out")
        for cid in named:
            if "\x00" in cid:
                raise InvalidParameter("customer_ids: must not contain a NUL character")
    customers = await scope(svc.refresher, list(named) if named else None, principal)
    run = svc.runs.start(customers)
    return Response(
        dumps({"run_id": run.run_id, "state": run.state}),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/refresh/{run.run_id}"},
    )


@router.get(
    "/refresh/{run_id}",
    operation_id="get_refresh_run",
    summary="A refresh run's progress and outcome, per customer",
    response_model=schemas.RefreshRun,
    responses=schemas.error_responses(401, 404, 422),
)
async def get_refresh_run(
    svc: ServicesDep,
    principal: PrincipalDep,
    run_id: Annotated[str, Path(max_length=100)],
) -> Response:
    run = svc.runs.get(run_id)
    # A key limited to some customers sees only the runs of its customers.
    if run is not None and not all(visible(principal, c) for c in run.customer_ids):
        run = None
    if run is None:
        raise NotFound(
            f"no refresh run {shorten(run_id)!r}: runs are kept in memory, the newest 200"
        )
    return Response(dumps(svc.runs.out(run)), media_type="application/json")
