"""OAuth2 client-credentials tokens for the AvePoint Graph API.

`TokenProvider` asks the identity server for a token, keeps it until shortly before it
expires, and makes concurrent callers share one token request. `renew` replaces a token
the API has refused (401), unless another caller already did. Any failure is an
`UpstreamAuthError` whose message never holds the secret or a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from pydantic import SecretStr

from app.upstream.errors import UpstreamAuthError
from app.upstream.wire import count_or_none, is_transient, request_id_of, retry_after_of

logger = logging.getLogger("app.upstream")

# expires_in is optional in OAuth2; without it, assume a short life and let a 401 renew.
DEFAULT_EXPIRES_IN = 300.0

# The OAuth2 error codes are short snake_case words; anything else in the body is not
# repeated, since an error body is opaque and might echo what we sent.
_OAUTH_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class TokenProvider:
    """Bearer tokens for one registered app, cached and shared between tasks."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str | SecretStr,
        scope: str,
        clock: Callable[[], float] = time.monotonic,
        early_refresh_seconds: float = 60,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        self._scope = scope
        self._clock = clock
        self._early_refresh_seconds = early_refresh_seconds
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        # Bumped after every token request, so tasks that queued behind a request can
        # tell that it happened and share its outcome instead of sending their own.
        self._generation = 0
        self._failure: UpstreamAuthError | None = None

    def __repr__(self) -> str:
        return f"TokenProvider(token_url={self._token_url!r}, client_id={self._client_id!r})"

    async def token(self) -> str:
        """A token good for at least `early_refresh_seconds` more (as far as we know)."""
        current = self._fresh()
        if current is not None:
            return current
        return await self._refresh(stale=None)

    async def renew(self, stale: str) -> str:
        """A token other than `stale`: fetched now, unless another task already did."""
        return await self._refresh(stale=stale)

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        return None

    async def _refresh(self, *, stale: str | None) -> str:
        generation = self._generation
        async with self._lock:
            if self._generation != generation and self._failure is not None:
                # The request we queued behind just failed: asking again at once would
                # only hammer a failing identity server once per waiting task.
                raise self._failure.copy()
            current = self._fresh()
            if current is not None and current != stale:
                return current
            try:
                token, expires_in = await self._request()
            except UpstreamAuthError as error:
                self._failure = error
                raise
            except BaseException:
                # Cancelled (or a bug): nothing to share, so the waiters try themselves.
                self._failure = None
                raise
            finally:
                self._generation += 1
            self._failure = None
            self._token = token
            lifetime = max(expires_in - self._early_refresh_seconds, expires_in / 2)
            self._refresh_at = self._clock() + lifetime
            logger.info("AvePoint token obtained; it expires in %.0fs", expires_in)
            return token

    async def _request(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "scope": self._scope,
        }
        try:
            response = await self._http.post(
                self._token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.TimeoutException:
            # `from None`: the httpx error carries the request, whose body holds the secret.
            raise UpstreamAuthError("AvePoint token request timed out", retriable=True) from None
        except httpx.RequestError as exc:
            raise UpstreamAuthError(
                f"AvePoint token endpoint unreachable ({type(exc).__name__})",
                retriable=is_transient(exc),
            ) from None

        request_id = request_id_of(response.headers)
        status = response.status_code
        if status != 200:
            retriable = status in (408, 429) or status >= 500
            raise UpstreamAuthError(
                f"AvePoint token endpoint refused the client credentials{_oauth_error(response)}"
                if status in (400, 401, 403)
                else f"AvePoint token endpoint failed with HTTP {status}",
                status=status,
                request_id=request_id,
                retriable=retriable,
                retry_after=(
                    retry_after_of(response.headers, now=datetime.now(UTC)) if retriable else None
                ),
            )
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        access_token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(access_token, str) or not access_token.strip():
            raise UpstreamAuthError(
                "AvePoint token endpoint answered without an access_token",
                status=status,
                request_id=request_id,
            )
        expires_in = count_or_none(body.get("expires_in")) if isinstance(body, dict) else None
        return access_token.strip(), (
            float(expires_in) if expires_in is not None else DEFAULT_EXPIRES_IN
        )


def _oauth_error(response: httpx.Response) -> str:
    """': invalid_client' from an OAuth2 error body, or '' when there is none."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and _OAUTH_ERROR_CODE.fullmatch(code):
        return f": {code}"
    return ""
