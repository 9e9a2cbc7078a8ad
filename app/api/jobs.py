"""`GET /jobs` across every customer, and `GET /jobs/{customer_id}/{job_id}` with its history.

A listing is answered from memory when it can: the encoded items are kept under the query,
the page and the data version of the customers it covers (`app.api.answers`), and the ETag
names the same things plus the state of every customer that is not fresh, so a 304 needs no
database query and a repeated read costs its bytes.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app.access.keys import Principal
from app.api import schemas
from app.api.common import covered, scope, servable, source_out, visible
from app.api.deps import Authorized, PrincipalDep, RefresherDep, SafeParams, Services, ServicesDep
from app.api.errors import InvalidParameter, NotFound
from app.api.etags import dumps, etag_of, json_answer, matches, not_modified
from app.api.filters import JobFilters, JobFiltersDep
from app.api.params import decode_cursor, encode_cursor, shorten
from app.clock import iso
from app.store import repo

router = APIRouter(tags=["jobs"], dependencies=[Authorized, SafeParams])

MaxAge = Annotated[
    int | None,
    Query(
        ge=0,
        le=10_000_000,
        description="Seconds; older data is refreshed first (and waited for). 0 forces a refresh.",
    ),
]


def job_out(row: repo.JobRow, customer_name: str | None) -> dict[str, Any]:
    """A stored job as the API serves it (the shape of `schemas.Job`), built without pydantic:
    this is the hot path of every listing."""
    return {
        "id": f"{row.customer_id}:{row.job_id}",
        "customer_id": row.customer_id,
        "customer_name": customer_name,
        "job_id": row.job_id,
        "name": row.name,
        "job_type": row.job_type,
        "job_type_code": row.job_type_code,
        "module": row.module,
        "module_code": row.module_code,
        "status": row.status,
        "status_code": row.status_code,
        "counts": {
            "total": row.total_count,
            "failed": row.failed_count,
            "successful": row.successful_count,
            "skipped": row.skipped_count,
            "warning": row.warning_count,
        },
        "backup_size_bytes": row.backup_size_bytes,
        "start_time": iso(row.start_time),
        "end_time": iso(row.end_time),
        "duration_seconds": row.duration_seconds,
        "last_modified": iso(row.last_modified),
        "fetched_at": iso(row.last_seen_at),
    }


@router.get(
    "/jobs",
    operation_id="list_jobs",
    summary="Jobs across every customer",
    response_model=schemas.JobPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def list_jobs(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    filters: JobFiltersDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Jobs per page.")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=2000, description="next_cursor of the previous page.")
    ] = None,
    max_age: MaxAge = None,
) -> Response:
    position = decode_cursor(cursor, filters.key) if cursor else None
    answer = functools.partial(
        answer_jobs,
        svc,
        principal,
        filters,
        limit=limit,
        cursor=cursor,
        position=position,
        max_age=max_age,
    )
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_jobs(
    svc: Services,
    principal: Principal,
    filters: JobFilters,
    headers: Headers,
    *,
    limit: int,
    cursor: str | None,
    position: list[Any] | None,
    max_age: int | None,
) -> Response:
    """A page of `/jobs` for validated parameters: from memory when the data has not moved."""
    refresher = svc.refresher
    in_scope, named = await covered(refresher, filters.customer_ids, principal)
    freshness = await refresher.ensure(in_scope, max_age=max_age, everyone=named is None)
    errors = freshness.errors
    version = refresher.version_of(named)
    key = ("jobs", filters.key, principal.customers, cursor, limit, version, errors)
    etag = etag_of(key, freshness.view.tag)
    if matches(headers, etag):
        return not_modified(etag, freshness)
    page: tuple[bytes, str | None] | None = svc.answers.get(key)
    if page is None:
        readable = servable(in_scope, named, errors)
        query = filters.query(readable, limit=limit, after=tuple(position) if position else None)

        async def build() -> tuple[bytes, str | None]:
            try:
                async with svc.sessions() as session:
                    rows = await repo.query_jobs(session, query)
            except repo.InvalidCursor:
                raise InvalidParameter("cursor: not a cursor this endpoint issued") from None
            next_cursor = None
            if len(rows) > limit:
                rows = rows[:limit]
                next_cursor = encode_cursor(repo.keyset_of(rows[-1], filters.sort), filters.key)
            items = dumps([job_out(r, refresher.name_of(r.customer_id)) for r in rows])
            built = (items, next_cursor)
            if refresher.version_of(named) == version:  # no refresh landed while we read
                svc.answers.put(key, built, len(items))
            return built

        page = await svc.answers.build_once(key, build)
    items, next_cursor = page
    content = b"".join(
        (
            b'{"items":',
            items,
            b',"next_cursor":',
            dumps(next_cursor),
            b',"freshness":',
            dumps(freshness.view.summary),
            b',"sources":',
            dumps([source_out(s) for s in freshness.sources]),
            b"}",
        )
    )
    return json_answer(content, etag, freshness)


@router.get(
    "/jobs/{customer_id}/{job_id}",
    operation_id="get_job",
    summary="One job, with its status history",
    response_model=schemas.JobDetail,
    responses=schemas.error_responses(304, 401, 404, 422, 503),
)
async def get_job(
    request: Request,
    customer_id: str,
    job_id: str,
    refresher: RefresherDep,
    svc: ServicesDep,
    principal: PrincipalDep,
    max_age: MaxAge = None,
) -> Response:
    known = await scope(refresher, None, principal)
    if customer_id not in known or not visible(principal, customer_id):
        raise NotFound(f"no customer {shorten(customer_id)!r} (see GET /customers)")
    freshness = await refresher.ensure([customer_id], max_age=max_age)
    async with svc.sessions() as session:
        row = await repo.get_job(session, customer_id, job_id)
        history = await repo.job_history(session, customer_id, job_id) if row else []
    if row is None:
        raise NotFound(f"no job {shorten(job_id)!r} for customer {customer_id!r}")
    source = source_out(
        freshness.sources[0] if freshness.sources else refresher.source(customer_id)
    )
    detail = job_out(row, refresher.name_of(customer_id)) | {
        "history": [
            {
                "status": h.status,
                "status_code": h.status_code,
                "previous_status": h.previous_status,
                "previous_status_code": h.previous_status_code,
                "at": iso(h.changed_at),
            }
            for h in history
        ],
        "source": source,
    }
    without_age = {**detail, "source": {**source, "age_seconds": None}}
    etag = etag_of("job", dumps(without_age))
    if matches(request.headers, etag):
        return not_modified(etag, freshness)
    return json_answer(dumps(detail), etag, freshness)
