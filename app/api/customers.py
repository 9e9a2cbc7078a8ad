"""`GET /customers`: every customer in scope, how current its data is, and its jobs by status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api import schemas
from app.api.caching import conditional_json
from app.api.deps import Authorized, RefresherDep, SafeParams, SessionDep
from app.api.jobs import scope, source_out
from app.api.params import decode_cursor, encode_cursor, fingerprint
from app.store import repo

router = APIRouter(tags=["customers"], dependencies=[Authorized, SafeParams])


@router.get(
    "/customers",
    operation_id="list_customers",
    summary="Customers, with freshness and job counts by status",
    response_model=schemas.CustomerPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def list_customers(
    request: Request,
    refresher: RefresherDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    max_age: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
) -> Response:
    fp = fingerprint(endpoint="customers")
    after = decode_cursor(cursor, fp, size=1)[0] if cursor else None
    ids = sorted(await scope(refresher, None))
    if after is not None:
        ids = [cid for cid in ids if cid > str(after)]
    page, more = ids[:limit], len(ids) > limit
    freshness = await refresher.ensure(page, max_age=max_age)
    counts = await repo.status_counts(session, freshness.servable)
    sources = {s.customer_id: s for s in freshness.sources}
    items = [
        {
            "customer_id": cid,
            "customer_name": freshness.names.get(cid),
            "source": source_out(sources[cid]),
            "counts": counts.get(cid, {}),
        }
        for cid in page
    ]
    body = {
        "items": items,
        "next_cursor": encode_cursor([page[-1]], fp) if more and page else None,
    }
    return conditional_json(request, body, freshness)
