"""The API's shapes (pydantic), separate from the tables: what clients build on."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.clock import iso

UtcTime = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str, when_used="json"),
    Field(json_schema_extra={"example": "2025-09-11T03:21:16Z"}),
]


class ErrorBody(BaseModel):
    error: str = Field(
        description="A short machine word: unauthorized, not_found, invalid_parameter, ..."
    )
    detail: str = Field(description="What went wrong and how to fix it.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "error": "invalid_parameter",
                "detail": "status: unknown value 'broken'; allowed: running, finished, failed, ...",
            }
        }
    )


class Counts(BaseModel):
    total: int | None
    failed: int | None
    successful: int | None
    skipped: int | None
    warning: int | None


class Job(BaseModel):
    id: str = Field(description="`<customer_id>:<job_id>`, unique across customers.")
    customer_id: str
    customer_name: str | None
    job_id: str
    name: str | None
    job_type: str
    job_type_code: int | None
    module: str
    module_code: int | None
    status: str
    status_code: int | None
    counts: Counts
    backup_size_bytes: int | None = Field(description="Bytes, 1 KB = 1024 B.")
    start_time: UtcTime | None
    end_time: UtcTime | None
    duration_seconds: int | None
    last_modified: UtcTime | None
    fetched_at: UtcTime = Field(
        description=(
            "When the gateway fetched the job as shown (a refresh that finds it unchanged does "
            "not rewrite it); `freshness` and `sources` say how current each customer is."
        )
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3:FB20250911032116214502",
                "customer_id": "caf9d1e2-2cc6-4a1b-b04b-794c11aa5ea3",
                "customer_name": "Contoso",
                "job_id": "FB20250911032116214502",
                "name": None,
                "job_type": "microsoft_365",
                "job_type_code": 7,
                "module": "microsoft_365_groups",
                "module_code": 304,
                "status": "failed",
                "status_code": 3,
                "counts": {
                    "total": 2323,
                    "failed": 0,
                    "successful": 2323,
                    "skipped": 0,
                    "warning": 0,
                },
                "backup_size_bytes": 0,
                "start_time": "2025-09-11T03:21:16Z",
                "end_time": "2025-09-11T03:38:56Z",
                "duration_seconds": 1059,
                "last_modified": "2025-09-11T03:38:57Z",
                "fetched_at": "2026-11-29T08:00:00Z",
            }
        }
    )


class SourceErrorBody(BaseModel):
    kind: str = Field(
        description="timeout, connection, http_status, rate_limited, auth, malformed, ..."
    )
    message: str
    upstream_status: int | None


class Source(BaseModel):
    customer_id: str
    state: Literal["fresh", "stale", "refreshing", "error"]
    fetched_at: UtcTime | None = Field(
        description="When this customer's last good snapshot was taken."
    )
    age_seconds: int | None
    error: SourceErrorBody | None


class FreshnessSummary(BaseModel):
    """How current the whole answer is, over every customer the request covered."""

    customers: int = Field(description="Customers the request covered.")
    fresh: int
    stale: int
    refreshing: int
    error: int
    oldest_fetched_at: UtcTime | None = Field(
        description="The oldest snapshot any part of the answer comes from."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "customers": 12,
                "fresh": 11,
                "stale": 1,
                "refreshing": 0,
                "error": 0,
                "oldest_fetched_at": "2026-11-29T07:55:00Z",
            }
        }
    )


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last."
    )
    freshness: FreshnessSummary
    sources: list[Source] = Field(
        description=(
            "Only the customers whose part of the answer is not fresh: an empty list means a "
            "complete, fresh answer."
        )
    )


class HistoryEntry(BaseModel):
    status: str
    status_code: int | None
    previous_status: str | None
    previous_status_code: int | None
    at: UtcTime


class JobDetail(Job):
    history: list[HistoryEntry] = Field(description="The job's status changes, oldest first.")
    source: Source


class Customer(BaseModel):
    customer_id: str
    customer_name: str | None = Field(description="The upstream's `organization`.")
    source: Source
    counts: dict[str, int] = Field(description="Jobs by status name.")


class CustomerPage(BaseModel):
    items: list[Customer]
    next_cursor: str | None


class EnumEntry(BaseModel):
    code: int
    name: str
    label: str


class Enums(BaseModel):
    status: list[EnumEntry]
    job_type: list[EnumEntry]
    module: list[EnumEntry]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error envelope at the given statuses."""
    descriptions = {
        304: "Not modified: the answer's ETag matches If-None-Match.",
        401: "No valid API key (Authorization: Bearer <key> or X-API-Key).",
        404: "Not found.",
        422: "A bad parameter: the detail names it (and lists allowed values for enums).",
        503: "The upstream or the database is unavailable and nothing could be served.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status == 304:
            out[status] = {"description": descriptions[status]}
        else:
            out[status] = {"model": ErrorBody, "description": descriptions[status]}
    return out
