"""The AvePoint side of the gateway: tokens (auth), pages and retries (client), payload
models (wire) and the typed failures (errors)."""

from app.upstream.auth import TokenProvider
from app.upstream.client import AvePointClient, JobsFetch, JobsPage, RetryPolicy
from app.upstream.errors import (
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamStatusError,
    UpstreamTimeout,
)
from app.upstream.wire import UpstreamCustomer

__all__ = [
    "AvePointClient",
    "JobsFetch",
    "JobsPage",
    "RetryPolicy",
    "TokenProvider",
    "UpstreamAuthError",
    "UpstreamConnectionError",
    "UpstreamCustomer",
    "UpstreamError",
    "UpstreamMalformed",
    "UpstreamRateLimited",
    "UpstreamStatusError",
    "UpstreamTimeout",
]
