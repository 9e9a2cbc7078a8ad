"""`GET /jobs` across every customer, and `GET /jobs/{customer_id}/{job_id}` with its history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.openapi.models import Example

from app import catalog
from app.api import schemas
from app.api.caching import conditional_json
from app.api.deps import Authorized, RefresherDep, SafeParams, SessionDep
from app.api.errors import InvalidParameter, NotFound, Unavailable
from app.api.params import (
    Rfc3339,
    decode_cursor,
    encode_cursor,
    enum_filter,
    fingerprint,
    shorten,
    split_values,
)
from app.clock import iso
from app.refresh import DiscoveryFailed, Freshness, Refresher, Source
from app.store import repo

router = APIRouter(tags=["jobs"], dependencies=[Authorized, SafeParams])

Sort = Literal[
    "start_time", "-start_time", "last_modified", "-last_modified", "duration", "-duration"
]

_MANY = "Repeatable or comma-separated names (see GET /enums)."


def _examples(*names: str) -> dict[str, Example]:
    """Swagger UI's choices for an enum filter: each name alone, and all of them at once."""
    choices: dict[str, Example] = {n: {"summary": n, "value": [n]} for n in names}
    choices["several"] = {"summary": " or ".join(names), "value": list(names)}
    return choices


def job_out(row: repo.JobRow) -> dict[str, Any]:
    """A stored job as the API serves it (the shape of `schemas.Job`), built without pydantic:
    this is the hot path of every listing."""
    return {
        "id": f"{row.customer_id}:{row.job_id}",
        "customer_id": row.customer_id,
        "customer_name": row.customer_name,
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


def source_out(source: Source) -> dict[str, Any]:
    error = source.error
    return {
        "customer_id": source.customer_id,
        "state": source.state,
        "fetched_at": iso(source.fetched_at),
        "age_seconds": source.age_seconds,
        "error": (
            {"kind": error.kind, "message": error.message, "upstream_status": error.upstream_status}
            if error
            else None
        ),
    }


async def scope(refresher: Refresher, customer_ids: list[str] | None) -> list[str]:
    """The customers a request covers: all of the partner's, or the ones it names."""
    try:
        known = await refresher.customer_ids()
    except DiscoveryFailed as exc:
        raise Unavailable(
            f"the customer list could not be fetched from the upstream ({exc}); "
            "set CUSTOMER_IDS or try again later",
            headers={"Retry-After": "10"},
        ) from None
    if not customer_ids:
        return known
    known_set = set(known)
    for cid in customer_ids:
        if cid not in known_set:
            raise InvalidParameter(
                f"customer_id: {shorten(cid)!r} is not one of this partner's customers "
                "(see GET /customers)"
            )
    return customer_ids


def _aware(name: str, value: datetime | None) -> datetime | None:
    """An RFC 3339 time as aware UTC (without an offset: UTC); 422 when it has no UTC form."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidParameter(f"{name}: {value.isoformat()} is out of range") from None


@router.get(
    "/jobs",
    operation_id="list_jobs",
    summary="Jobs across every customer",
    response_model=schemas.JobPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def list_jobs(
    request: Request,
    refresher: RefresherDep,
    session: SessionDep,
    status: Annotated[
        list[str] | None,
        Query(description=_MANY, openapi_examples=_examples("failed", "failed_to_start")),
    ] = None,
    job_type: Annotated[
        list[str] | None,
        Query(description=_MANY, openapi_examples=_examples("microsoft_365", "google_workspace")),
    ] = None,
    module: Annotated[
        list[str] | None,
        Query(description=_MANY, openapi_examples=_examples("exchange_online", "onedrive")),
    ] = None,
    customer_id: Annotated[
        list[str] | None, Query(description="Repeatable or comma-separated ids.")
    ] = None,
    start_after: Annotated[
        Rfc3339 | None, Query(description="RFC 3339; jobs that started after this.")
    ] = None,
    start_before: Annotated[
        Rfc3339 | None, Query(description="RFC 3339; jobs that started before this.")
    ] = None,
    modified_since: Annotated[
        Rfc3339 | None, Query(description="RFC 3339; jobs modified at or after this.")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="The job's name contains this.")
    ] = None,
    sort: Annotated[
        Sort, Query(description="A field; a leading `-` sorts descending.")
    ] = "-start_time",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=2000, description="next_cursor of the previous page.")
    ] = None,
    max_age: Annotated[
        int | None,
        Query(
            ge=0,
            le=10_000_000,
            description="Seconds; older data is refreshed first. 0 forces a refresh.",
        ),
    ] = None,
) -> Response:
    statuses = enum_filter("status", status, catalog.STATUS)
    job_types = enum_filter("job_type", job_type, catalog.JOB_TYPE)
    modules = enum_filter("module", module, catalog.MODULE)
    customers = split_values(customer_id) or None
    after, before, since = (
        _aware("start_after", start_after),
        _aware("start_before", start_before),
        _aware("modified_since", modified_since),
    )
    fp = fingerprint(
        status=statuses,
        job_type=job_types,
        module=modules,
        customer_id=customers,
        start_after=after,
        start_before=before,
        modified_since=since,
        q=q,
        sort=sort,
    )
    position = decode_cursor(cursor, fp) if cursor else None
    in_scope = await scope(refresher, customers)
    freshness = await refresher.ensure(in_scope, max_age=max_age)
    query = repo.JobQuery(
        customer_ids=freshness.servable,
        statuses=statuses,
        job_types=job_types,
        modules=modules,
        start_after=after,
        start_before=before,
        modified_since=since,
        q=q,
        sort=sort,
        limit=limit,
        after=tuple(position) if position else None,
    )
    try:
        rows = await repo.query_jobs(session, query)
    except repo.InvalidCursor:
        raise InvalidParameter("cursor: not a cursor this endpoint issued") from None
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(repo.keyset_of(rows[-1], sort), fp)
    body = {
        "items": [job_out(r) for r in rows],
        "next_cursor": next_cursor,
        "sources": [source_out(s) for s in freshness.sources],
    }
    return conditional_json(request, body, freshness)


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
    session: SessionDep,
    max_age: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
) -> Response:
    known = await scope(refresher, None)
    if customer_id not in known:
        raise NotFound(f"no customer {shorten(customer_id)!r} (see GET /customers)")
    freshness: Freshness = await refresher.ensure([customer_id], max_age=max_age)
    row = await repo.get_job(session, customer_id, job_id)
    history = await repo.job_history(session, customer_id, job_id) if row else []
    if row is None:
        raise NotFound(f"no job {shorten(job_id)!r} for customer {customer_id!r}")
    detail = job_out(row) | {
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
        "source": source_out(freshness.sources[0]),
    }
    return conditional_json(request, detail, freshness)
