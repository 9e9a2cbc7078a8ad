"""`GET /jobs.csv`: every job `/jobs` would list for the same filters and sort, as one CSV
download with a header row and the nested counts flattened (`total_count`, ...).

The rows are read in keyset batches, each in a short session of its own, and written out as
they come, so an export of every job holds one batch in memory and no connection between
batches. Cells are made safe to open in a spreadsheet (`cell`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api import schemas
from app.api.common import covered, servable
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.etags import cache_status
from app.api.filters import JobFilters, JobFiltersDep
from app.api.jobs import MaxAge
from app.clock import iso
from app.store import repo

router = APIRouter(tags=["jobs"], dependencies=[Authorized, SafeParams])

BATCH_SIZE = 1000
"""Jobs read per query (and session) while an export streams."""

MEDIA_TYPE = "text/csv; charset=utf-8"

COLUMNS = (
    "id",
    "customer_id",
    "customer_name",
    "job_id",
    "name",
    "job_type",
    "job_type_code",
    "module",
    "module_code",
    "status",
    "status_code",
    "total_count",
    "failed_count",
    "successful_count",
    "skipped_count",
    "warning_count",
    "backup_size_bytes",
    "start_time",
    "end_time",
    "duration_seconds",
    "last_modified",
    "fetched_at",
)

_EXAMPLE = "\r\n".join(
    [
        ",".join(COLUMNS),
        "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3:FB20250911032116214502,"
        "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3,Contoso,FB20250911032116214502,,microsoft_365,7,"
        "microsoft_365_groups,304,failed,3,2323,0,2323,0,0,0,2025-09-11T03:21:16Z,"
        "2025-09-11T03:38:56Z,1059,2025-09-11T03:38:57Z,2026-11-29T08:00:00Z",
        "",
    ]
)

# A spreadsheet reads a cell that starts with one of these as a formula (or, for tab and
# carriage return, may shift it into one): upstream names are not ours to trust.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(text: str | None) -> str | None:
    """A text cell as a spreadsheet may safely open it: a leading `'` before a character that
    would start a formula. None stays None (an empty cell)."""
    if text and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def csv_row(row: repo.JobRow, customer_name: str | None) -> list[Any]:
    """One job in `COLUMNS` order: the fields of `schemas.Job`, its counts flattened."""
    return [
        cell(row.id),
        cell(row.customer_id),
        cell(customer_name),
        cell(row.job_id),
        cell(row.name),
        row.job_type,
        row.job_type_code,
        row.module,
        row.module_code,
        row.status,
        row.status_code,
        row.total_count,
        row.failed_count,
        row.successful_count,
        row.skipped_count,
        row.warning_count,
        row.backup_size_bytes,
        iso(row.start_time),
        iso(row.end_time),
        row.duration_seconds,
        iso(row.last_modified),
        iso(row.last_seen_at),
    ]


def encode(text: str) -> bytes:
    """UTF-8, with a lone surrogate (which UTF-8 cannot carry) as U+FFFD rather than an
    error halfway through a download; a high + low pair becomes its character, as the store
    keeps it (`app.normalize.clean`)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Only surrogates fail: UTF-16 pairs them up where it can and replaces the rest.
        paired = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return paired.encode("utf-8")


async def read_batch(
    svc: Services,
    filters: JobFilters,
    customer_ids: Sequence[str] | None,
    after: repo.Keyset | None,
) -> tuple[list[repo.JobRow], bool]:
    """Up to `BATCH_SIZE` jobs after `after`, and whether more follow."""
    query = filters.query(
        list(customer_ids) if customer_ids is not None else None, limit=BATCH_SIZE, after=after
    )
    async with svc.sessions() as session:
        rows = await repo.query_jobs(session, query)
    return rows[:BATCH_SIZE], len(rows) > BATCH_SIZE


async def csv_body(
    svc: Services,
    filters: JobFilters,
    customer_ids: Sequence[str] | None,
    first: tuple[list[repo.JobRow], bool],
) -> AsyncIterator[bytes]:
    """The header row, then every matching job, one chunk per batch."""
    name_of = svc.refresher.name_of
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    rows, more = first
    while True:
        writer.writerows(csv_row(row, name_of(row.customer_id)) for row in rows)
        yield encode(buffer.getvalue())
        buffer.seek(0)
        buffer.truncate()
        if not more:
            return
        rows, more = await read_batch(
            svc, filters, customer_ids, repo.keyset_of(rows[-1], filters.sort)
        )


@router.get(
    "/jobs.csv",
    operation_id="export_jobs_csv",
    summary="Every matching job as CSV",
    description=(
        "The filters and sort of `GET /jobs`, every matching job (no limit, streamed), one "
        "header row, the counts flattened (`total_count`, `failed_count`, ...). Times are UTC "
        "to the second, a null is an empty cell. A text cell that a spreadsheet would read as "
        "a formula starts with `'`. `Cache-Status` says how current the data is; `GET /jobs` "
        "names the customers that are not fresh."
    ),
    # A response class without a media type of its own: the OpenAPI then shows the 200 as
    # `text/csv` alone (from `responses`), and the error envelopes as the JSON they are.
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching job, one per row, after a header row.",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": _EXAMPLE}},
        },
        **schemas.error_responses(401, 422, 503),
    },
)
async def export_jobs_csv(
    svc: ServicesDep, principal: PrincipalDep, filters: JobFiltersDep, max_age: MaxAge = None
) -> StreamingResponse:
    refresher = svc.refresher
    in_scope, named = await covered(refresher, filters.customer_ids, principal)
    freshness = await refresher.ensure(in_scope, max_age=max_age, everyone=named is None)
    errors = freshness.errors
    readable = servable(in_scope, named, errors)
    # The first batch is read before the answer starts, so a database that fails now gives
    # an error response rather than a download cut short after its header row.
    first = await read_batch(svc, filters, readable, None)
    return StreamingResponse(
        csv_body(svc, filters, readable, first),
        media_type=MEDIA_TYPE,
        headers={
            "Content-Disposition": 'attachment; filename="jobs.csv"',
            "Cache-Status": cache_status(freshness),
            "Cache-Control": "no-cache",
        },
    )
