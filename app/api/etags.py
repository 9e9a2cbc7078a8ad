"""HTTP caching headers: `ETag` / `If-None-Match` and `Cache-Status` (RFC 9211)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Response
from starlette.datastructures import Headers

from app.refresh import Freshness

CACHE_NAME = "jobs-gateway"


def cache_status(freshness: Freshness) -> str:
    """The RFC 9211 `Cache-Status` of an answer (the README has the table).

    Not forwarded (nothing was asked of the upstream for this request):
    - every customer fresh: `hit; ttl=<seconds left>`
    - some served from older data: `hit; ttl=<seconds>; detail=stale`
    - some customers with nothing to serve (failing, backed off): `detail=partial`, no `hit`

    Forwarded (the request waited on refreshes):
    - at least one stored new data, all served: `fwd=miss; stored`
    - old data served, as the refresh failed or is still running: `fwd=stale`
    - some customers with nothing to serve: `fwd=miss` with `detail=partial` (and `stored`
      when the others' refreshes stored new data)
    with `fwd-status=<status>` when a refresh failed with one.
    """
    parts = [CACHE_NAME]
    counts = freshness.view.counts
    partial = counts["error"] > 0
    ttl = freshness.ttl_left
    if not freshness.forwarded:
        if not partial:
            parts.append("hit")
            if ttl is not None:
                parts.append(f"ttl={ttl}")
            if counts["stale"] or counts["refreshing"]:
                parts.append("detail=stale")
        else:
            parts.append("detail=partial")
        return "; ".join(parts)
    stale = (counts["stale"] or counts["refreshing"]) and not partial
    parts.append("fwd=stale" if stale else "fwd=miss")
    if freshness.upstream_status is not None:
        parts.append(f"fwd-status={freshness.upstream_status}")
    if freshness.stored and not stale:
        parts.append("stored")
    if partial:
        parts.append("detail=partial")
    return "; ".join(parts)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def etag_of(*parts: object) -> str:
    """A strong ETag naming what an answer was built from (not its bytes)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=16)
    return f'"{digest.hexdigest()}"'


def matches(headers: Headers, etag: str) -> bool:
    header = headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def headers_for(etag: str, freshness: Freshness) -> dict[str, str]:
    return {"ETag": etag, "Cache-Status": cache_status(freshness), "Cache-Control": "no-cache"}


def not_modified(etag: str, freshness: Freshness) -> Response:
    return Response(status_code=304, headers=headers_for(etag, freshness))


def json_answer(content: bytes, etag: str, freshness: Freshness) -> Response:
    return Response(content, media_type="application/json", headers=headers_for(etag, freshness))
