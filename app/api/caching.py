"""HTTP caching headers: `ETag` / `If-None-Match` and `Cache-Status` (RFC 9211)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request, Response

from app.refresh import CacheResult, Freshness

CACHE_NAME = "jobs-gateway"


def cache_status(freshness: Freshness) -> str:
    """`jobs-gateway; hit`, `jobs-gateway; fwd=miss` or `jobs-gateway; fwd=stale`."""
    result: CacheResult = freshness.cache
    if result == "hit":
        return f"{CACHE_NAME}; hit"
    if result == "miss":
        return f"{CACHE_NAME}; fwd=miss; stored"
    return f"{CACHE_NAME}; fwd=stale"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _without_age(value: Any) -> Any:
    """A source (or list of them) without `age_seconds`, which changes with the clock alone."""
    if isinstance(value, list):
        return [_without_age(v) for v in value]
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "age_seconds"}
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
        tagged.append(
            f"{key}={_dumps(_without_age(value))}" if key in {"sources", "source"} else text
        )
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
