"""`JobFilters`: the filters and sort of a job listing, parsed once for every endpoint that
lists jobs. It yields the store's query and `key`, the fingerprint that cursors and cached
answers are bound to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query

from app import catalog
from app.api.errors import InvalidParameter
from app.api.params import CustomerIds, enum_filter, fingerprint, split_values
from app.api.times import QueryTime
from app.store import repo

Sort = Literal[
    "start_time", "-start_time", "last_modified", "-last_modified", "duration", "-duration"
]

_MANY = "Repeatable or comma-separated names (GET /enums lists them)."


def _choices(cat: catalog.Catalog, description: str) -> Any:
    """An enum filter: Swagger UI offers the names as a multi-select with nothing chosen,
    so "Try it out" sends only what the person picked."""
    return Query(
        description=f"{description} {_MANY}",
        json_schema_extra={"items": {"type": "string", "enum": cat.names()}},
    )


Statuses = Annotated[list[str] | None, _choices(catalog.STATUS, "Job statuses.")]
JobTypes = Annotated[list[str] | None, _choices(catalog.JOB_TYPE, "Job types.")]
Modules = Annotated[list[str] | None, _choices(catalog.MODULE, "Modules.")]
"""The enum filters of every listing that takes them."""


def _aware(name: str, value: datetime | None) -> datetime | None:
    """An RFC 3339 time as aware UTC (without an offset: UTC); 422 when it has no UTC form."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidParameter(f"{name}: {value.isoformat()} is out of range") from None


class JobFilters:
    """The filters and sort of `/jobs` (and of every listing of jobs), parsed."""

    def __init__(
        self,
        *,
        status: list[str] | None,
        job_type: list[str] | None,
        module: list[str] | None,
        customer_id: list[str] | None,
        start_after: datetime | None,
        start_before: datetime | None,
        modified_since: datetime | None,
        q: str | None,
        sort: repo.JobSort,
    ) -> None:
        self.statuses = enum_filter("status", status, catalog.STATUS)
        self.job_types = enum_filter("job_type", job_type, catalog.JOB_TYPE)
        self.modules = enum_filter("module", module, catalog.MODULE)
        self.customer_ids = split_values(customer_id) or None
        self.start_after = _aware("start_after", start_after)
        self.start_before = _aware("start_before", start_before)
        self.modified_since = _aware("modified_since", modified_since)
        self.q = q or None
        self.sort: repo.JobSort = sort
        self.key = fingerprint(
            status=self.statuses,
            job_type=self.job_types,
            module=self.modules,
            customer_id=self.customer_ids,
            start_after=self.start_after,
            start_before=self.start_before,
            modified_since=self.modified_since,
            q=self.q,
            sort=self.sort,
        )

    def query(
        self, customer_ids: list[str] | None, *, limit: int, after: repo.Keyset | None
    ) -> repo.JobQuery:
        return repo.JobQuery(
            customer_ids=customer_ids,
            statuses=self.statuses,
            job_types=self.job_types,
            modules=self.modules,
            start_after=self.start_after,
            start_before=self.start_before,
            modified_since=self.modified_since,
            q=self.q,
            sort=self.sort,
            limit=limit,
            after=after,
        )


async def job_filters(
    status: Statuses = None,
    job_type: JobTypes = None,
    module: Modules = None,
    customer_id: CustomerIds = None,
    start_after: Annotated[
        QueryTime | None,
        Query(description="RFC 3339; jobs that started strictly after this time."),
    ] = None,
    start_before: Annotated[
        QueryTime | None,
        Query(description="RFC 3339; jobs that started strictly before this time."),
    ] = None,
    modified_since: Annotated[
        QueryTime | None, Query(description="RFC 3339; jobs modified at or after this time.")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="The job's name contains this.")
    ] = None,
    sort: Annotated[
        Sort, Query(description="A field; a leading `-` sorts descending.")
    ] = "-start_time",
) -> JobFilters:
    """The query parameters of a job listing (async: no thread-pool hop per request)."""
    return JobFilters(
        status=status,
        job_type=job_type,
        module=module,
        customer_id=customer_id,
        start_after=start_after,
        start_before=start_before,
        modified_since=modified_since,
        q=q,
        sort=sort,
    )


JobFiltersDep = Annotated[JobFilters, Depends(job_filters)]
