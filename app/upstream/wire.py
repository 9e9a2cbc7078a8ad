"""Tolerant models of the AvePoint payloads, and the helpers that read them.

Both batch endpoints answer the same page envelope::

    {"data": [...], "metadata": {"pageIndex": 1, "pageSize": 100, "totalCount": 2}}

Unknown fields are ignored and missing metadata becomes None; `totalCount` may arrive as a
number, a string of digits or `"N/A"`. Job rows stay plain dicts because the store keeps
the raw JSON; only a body that is not JSON, or not that envelope, is an error
(`UpstreamMalformed`).

Pages are decoded by msgspec in C: the envelope first, with each row kept as its own bytes
(`PageEnvelope.raw`, what the store can keep as the raw row without encoding it again),
then each row into a dict. A body msgspec refuses (not JSON to it, `NaN`, a number past
a float's range, a lone surrogate) takes the general path (`json.loads`), which reads what
it can exactly as before and names what it cannot.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from pydantic import BaseModel, ConfigDict

from app.normalize import job_id_of, text
from app.upstream.errors import UpstreamMalformed


def count_or_none(value: Any) -> int | None:
    """A non-negative whole number from an int, float or digit string; anything else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    elif isinstance(value, str):
        stripped = value.strip()
        # The length bound keeps int() clear of its digit limit on hostile input.
        readable = stripped.isascii() and stripped.isdigit() and len(stripped) <= 18
        value = int(stripped) if readable else None
    return value if isinstance(value, int) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class PageMetadata:
    """The envelope's `metadata`; every field None when absent or unreadable."""

    page_index: int | None = None
    page_size: int | None = None
    total_count: int | None = None

    @classmethod
    def of(cls, metadata: Any) -> PageMetadata:
        if not isinstance(metadata, dict) or not metadata:
            return _NO_METADATA

        def field(alias: str, name: str) -> int | None:
            # The upstream's camelCase name, else the field's own (as the pydantic model
            # this replaced accepted both).
            return count_or_none(metadata[alias] if alias in metadata else metadata.get(name))

        return cls(
            field("pageIndex", "page_index"),
            field("pageSize", "page_size"),
            field("totalCount", "total_count"),
        )


_NO_METADATA = PageMetadata()


@dataclass(frozen=True, slots=True)
class PageEnvelope:
    """One page: its rows as plain dicts, and its metadata.

    `raw`, when given, holds each row's JSON exactly as the upstream sent it (`raw[i]` is
    the bytes of `data[i]`); None when the page took the general path.
    """

    data: list[dict[str, Any]]
    metadata: PageMetadata = _NO_METADATA
    raw: list[bytes] | None = None


class _RawPage(msgspec.Struct):
    """The envelope as the fast path reads it: rows left as their bytes."""

    data: list[msgspec.Raw] | msgspec.UnsetType | None = msgspec.UNSET
    metadata: Any = None


_PAGE = msgspec.json.Decoder(_RawPage)
_ROW = msgspec.json.Decoder()


class UpstreamCustomer(BaseModel):
    """A customer of the partner, as far as this service needs one."""

    model_config = ConfigDict(frozen=True)

    id: str
    organization: str | None = None


def parse_page(
    content: bytes,
    *,
    customer_id: str | None = None,
    page: int | None = None,
    status: int | None = None,
    request_id: str | None = None,
) -> PageEnvelope:
    """The page envelope in `content`, or UpstreamMalformed naming the context."""

    fast = _fast_page(content)
    if fast is not None:
        return fast

    def malformed(reason: str) -> UpstreamMalformed:
        return UpstreamMalformed(
            f"AvePoint answered with {reason}",
            customer_id=customer_id,
            page=page,
            status=status,
            request_id=request_id,
        )

    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise malformed("a body that is not JSON") from None
    if not isinstance(body, dict):
        raise malformed(f"a JSON {type(body).__name__} instead of a page object")
    if "data" not in body:
        raise malformed("an object without 'data' instead of a page")
    # `"data": null` is how some APIs of the family say "nothing here": an empty page.
    data = body["data"] if body["data"] is not None else []
    if not isinstance(data, list):
        raise malformed("a page whose 'data' is not a list")
    if not all(isinstance(row, dict) for row in data):
        raise malformed("a page whose 'data' holds something other than objects")
    return PageEnvelope(data=data, metadata=PageMetadata.of(body.get("metadata")))


def _fast_page(content: bytes) -> PageEnvelope | None:
    """The page by msgspec, or None: anything it refuses (or that is not a page of objects)
    is left to the general path, which reads it or names the fault."""
    try:
        page = _PAGE.decode(content)
        if page.data is msgspec.UNSET:
            return None
        if page.data is None:
            return PageEnvelope(data=[], metadata=PageMetadata.of(page.metadata), raw=[])
        raw = [bytes(row) for row in page.data]
        rows = [_ROW.decode(row) for row in raw]
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    for row in rows:
        if type(row) is not dict:
            return None
    return PageEnvelope(data=rows, metadata=PageMetadata.of(page.metadata), raw=raw)


def customer_of(row: Mapping[str, Any]) -> UpstreamCustomer | None:
    """The customer in one `customers/batch` row; None when it has no usable id."""
    raw_id = row.get("id")
    customer_id = text(raw_id) if not isinstance(raw_id, bool) else None
    if customer_id is None:
        return None
    return UpstreamCustomer(id=customer_id, organization=text(row.get("organization")))


def unique_jobs(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with repeated jobIds dropped (the first one seen wins).

    A job can show up on two pages when the upstream list shifts while we walk it. Rows
    without a usable jobId are all kept: the caller counts them as skipped, and the
    meaning of "usable" is the one `normalize` uses.
    """
    seen: set[str] = set()
    unique = []
    for row in rows:
        job_id = job_id_of(row)
        if job_id is not None:
            if job_id in seen:
                continue
            seen.add(job_id)
        unique.append(row)
    return unique


# Header names seen for the request id across AvePoint's gateways and common proxies;
# httpx looks headers up case-insensitively.
REQUEST_ID_HEADERS = (
    "request-id",
    "x-request-id",
    "x-ms-request-id",
    "x-correlation-id",
    "correlation-id",
    "apim-request-id",
    "x-amzn-requestid",
    "x-trace-id",
)


def request_id_of(headers: httpx.Headers) -> str | None:
    """The upstream's request id, made safe to log: printable ASCII, at most 128 chars."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            cleaned = "".join(ch for ch in value.strip() if ch.isascii() and ch.isprintable())
            if cleaned:
                return cleaned[:128]
    return None


def is_transient(exc: httpx.RequestError) -> bool:
    """Whether a transport failure may pass: timeouts, network and protocol hiccups do; a
    bad URL, a local protocol misuse or an undecodable body will not."""
    return isinstance(
        exc,
        httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError,
    )


def retry_after_of(headers: httpx.Headers, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta seconds or an HTTP date.

    An HTTP date is measured against the response's own Date header when it has one, so
    a skewed local clock does not stretch or cut the wait; `now` is the fallback.
    """
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(headers.get("date", "")) or now
    return max(0.0, (when - reference).total_seconds())


_DELTA_SECONDS = re.compile(r"\d{1,10}(?:\.\d{1,6})?")


def _http_date(value: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
