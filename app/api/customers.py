"""`GET /customers`: every customer in scope, how current its data is, and its jobs by status.

Job counts come from the store once per data version of the page's customers; the answer,
whose sources carry ages, is built at most once a second.
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app.access.keys import Principal
from app.api import schemas
from app.api.common import scope, source_out
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.etags import dumps, etag_of, json_answer, matches, not_modified
from app.api.params import decode_cursor, encode_cursor, fingerprint
from app.store import repo

router = APIRouter(tags=["customers"], dependencies=[Authorized, SafeParams])

_FINGERPRINT = fingerprint(endpoint="customers")


@router.get(
    "/customers",
    operation_id="list_customers",
    summary="Customers, with freshness and job counts by status",
    response_model=schemas.CustomerPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def list_customers(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    max_age: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
) -> Response:
    after = decode_cursor(cursor, _FINGERPRINT, size=1)[0] if cursor else None
    answer = functools.partial(
        answer_customers,
        svc,
        principal,
        limit=limit,
        cursor=cursor,
        after=after,
        max_age=max_age,
    )
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_customers(
    svc: Services,
    principal: Principal,
    headers: Headers,
    *,
    limit: int,
    cursor: str | None,
    after: object,
    max_age: int | None,
) -> Response:
    """A page of `/customers` for validated parameters."""
    refresher = svc.refresher
    everyone = await scope(refresher, None, principal)
    ids = sorted(everyone)
    if after is not None:
        ids = [cid for cid in ids if cid > str(after)]
    page, more = ids[:limit], len(ids) > limit
    # The freshness of the whole scope is kept in memory; an explicit max_age refreshes
    # (and waits for) this page's customers only.
    freshness = (
        await refresher.ensure(page, max_age=max_age)
        if max_age is not None
        else await refresher.ensure(everyone, everyone=principal.customers is None)
    )
    version = refresher.version_of(page)
    counts_key = ("customer-counts", tuple(page), version)
    counts: dict[str, dict[str, int]] | None = svc.answers.get(counts_key)
    if counts is None:
        async with svc.sessions() as session:
            counts = await repo.status_counts(session, page)
        if refresher.version_of(page) == version:
            svc.answers.put(counts_key, counts, 64 * len(page))
    now_second = int(freshness.now.timestamp())
    key = ("customers", principal.customers, cursor, limit, version, refresher.epoch, now_second)
    answer: tuple[bytes, str] | None = svc.answers.get(key)
    if answer is None:
        sources = [refresher.source(cid) for cid in page]
        items = [
            {
                "customer_id": s.customer_id,
                "customer_name": refresher.name_of(s.customer_id),
                "source": source_out(s),
                # Nothing of a customer in error is served, so nothing of it is counted.
                "counts": counts.get(s.customer_id, {}) if s.state != "error" else {},
            }
            for s in sources
        ]
        next_cursor = encode_cursor([page[-1]], _FINGERPRINT) if more and page else None
        body = {"items": items, "next_cursor": next_cursor}
        content = dumps(body)
        etag = etag_of(
            "customers",
            cursor,
            limit,
            version,
            [(s.customer_id, s.state, s.fetched_at, s.error) for s in sources],
        )
        answer = (content, etag)
        svc.answers.put(key, answer, len(content))
    content, etag = answer
    if matches(headers, etag):
        return not_modified(etag, freshness)
    return json_answer(content, etag, freshness)
