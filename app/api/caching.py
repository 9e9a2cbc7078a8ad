"""HTTP caching headers: `ETag` / `If-None-Match` and `Cache-Status` (RFC 9211)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request, Response

from app.refresh import CacheResult, Freshness

CACHE_NAME = "jobs-gateway"


def cache_status(freshness: Freshness) -> str:
    """The RFC 9211 `Cache-Status` of an answer.

    - all fresh from the store: `jobs-gateway; hit; ttl=<seconds left>`
    - old data served without asking the upstream (it is backing off):
      `jobs-gateway; hit; ttl=<negative>; detail=stale`
    - the upstream was asked and old data is served (it failed, or was too slow):
      `jobs-gateway; fwd=stale[; fwd-status=<status>]`
    - the upstream was asked and its answer is served: `jobs-gateway; fwd=miss; stored`
    """
    parts = [CACHE_NAME]
    ttl = freshness.ttl_left
    result: CacheResult = freshness.cache
    if not freshness.forwarded:
        parts.append("hit")
        if ttl is not None:
            parts.append(f"ttl={ttl}")
        if result == "stale":
            parts.append("detail=stale")
    else:
        parts.append(f"fwd={'stale' if result == 'stale' else 'miss'}")
        if freshness.upstream_status is not None:
            parts.append(f"fwd-status={freshness.upstream_status}")
        if result == "miss":
            parts.append("stored")
    return "; ".join(parts)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _without_age(value: Any) -> Any:
    """The value without any `age_seconds`, at any depth: it changes with the clock alone."""
    if isinstance(value, list):
        return [_without_age(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_age(v) for k, v in value.items() if k != "age_seconds"}
    return value


def render(body: dict[str, Any]) -> tuple[bytes, str]:
    """The JSON body and its strong ETag, each top-level part serialized once.

    The tag covers everything but the sources' `age_seconds`.
    """
    parts: list[str] = []
    tagged: list[str] = []
    for key, value in body.items():
        text = _dumps(value)
        parts.append(f"{_dumps(key)}:{text}")
        # Only parts that hold an age are rebuilt for the tag; job items never do.
        tagged.append(_dumps(_without_age(value)) if '"age_seconds"' in text else text)
    digest = hashlib.sha256("\x1f".join(tagged).encode()).hexdigest()[:32]
    return ("{" + ",".join(parts) + "}").encode(), f'"{digest}"'


def matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def conditional_json(request: Request, body: dict[str, Any], freshness: Freshness) -> Response:
    """The JSON answer with ETag and Cache-Status, or 304 when the client has it already."""
    content, etag = render(body)
    headers = {"ETag": etag, "Cache-Status": cache_status(freshness), "Cache-Control": "no-cache"}
    if matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type="application/json", headers=headers)
