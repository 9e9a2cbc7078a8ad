"""Who is asking, and whether they may now: the keys a request offers, and the per-key rate
limit. Used by the routes' dependency (`app.api.deps`) and by the fast path for remembered
reads (`app.api.answers`), which answers before routing."""

from __future__ import annotations

import math

from starlette.datastructures import Headers
from starlette.types import Scope

from app.access.keys import ANYONE, Principal
from app.access.ratelimit import RateLimits
from app.api.errors import RateLimited
from app.config import Settings
from app.metrics import Metrics


def rate_limited(
    limits: RateLimits, metrics: Metrics, settings: Settings, principal: Principal, scope: Scope
) -> RateLimited | None:
    """Count the request against its key's limit; the 429 to answer when it is past it."""
    limit = principal.rate_per_minute
    if limit is None:
        limit = settings.rate_limit_per_minute
    if limit <= 0:
        return None
    identity = principal.identity
    if principal is ANYONE:  # no keys: count per client address instead
        client = scope.get("client")
        identity = f"addr:{client[0] if client else '-'}"
    wait = limits.hit(identity, limit)
    if wait is None:
        return None
    seconds = max(1, math.ceil(wait))
    metrics.rate_limited.inc()
    return RateLimited(
        f"more than {limit} requests a minute with this API key; try again in {seconds} s "
        "(Retry-After)",
        headers={"Retry-After": str(seconds)},
    )


def offered_keys(headers: Headers) -> list[str]:
    """The keys a request offers: `Authorization: Bearer <key>` and `X-API-Key`."""
    offered = []
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        offered.append(credentials.strip())
    if key := headers.get("x-api-key"):
        offered.append(key)
    return offered
