"""Dependencies as `Annotated` aliases, so that route functions stay thin.

Every dependency is `async def`: FastAPI runs a plain `def` in a thread pool, and the hop
costs more than the work on the cached read path.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.datastructures import Headers

from app.alerting import Notices
from app.api.answers import AnswerCache, FastReads
from app.api.errors import InvalidParameter, Unauthorized
from app.clock import Clock
from app.config import Settings
from app.metrics import Metrics
from app.refresh import Refresher
from app.runs import RefreshRuns
from app.store.feed import FeedConfig
from app.store.ingest import Writer


@dataclass
class Services:
    """What the lifespan opens and closes: everything a request may need."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    refresher: Refresher
    metrics: Metrics
    answers: AnswerCache
    fast: FastReads
    writer: Writer
    feed: FeedConfig
    notices: Notices
    runs: RefreshRuns
    clock: Clock
    stopping: bool = False  # SIGTERM came: not ready, long polls answer now

    def stop(self) -> None:
        """The process is stopping: say so on /readyz and let long polls go."""
        self.stopping = True
        self.notices.notify()


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


async def session(svc: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with svc.sessions() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(session)]


async def refresher(svc: ServicesDep) -> Refresher:
    return svc.refresher


RefresherDep = Annotated[Refresher, Depends(refresher)]

_bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from API_KEYS.")


async def require_key(
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key)],
) -> None:
    """401 unless the request carries one of API_KEYS (compared in constant time)."""
    offered = [k for k in (bearer.credentials if bearer else None, header_key) if k]
    if key_accepted(svc.settings, offered):
        return
    detail = (
        "the API key is not valid"
        if offered
        else "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    )
    raise Unauthorized(detail, headers={"WWW-Authenticate": "Bearer"})


Authorized = Depends(require_key)


def key_accepted(settings: Settings, offered: list[str]) -> bool:
    """Whether one of the offered keys is one of API_KEYS (or no key is needed at all)."""
    if not settings.auth_required:
        return True
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    for candidate in offered:
        given = candidate.encode()
        # Compare against every key, always, so timing tells nothing about which matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, key)
        if matched:
            return True
    return False


def offered_keys(headers: Headers) -> list[str]:
    """The keys a request offers: `Authorization: Bearer <key>` and `X-API-Key`."""
    offered = []
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        offered.append(credentials.strip())
    if key := headers.get("x-api-key"):
        offered.append(key)
    return offered


async def reject_nul(request: Request) -> None:
    """422 for a NUL character in any parameter: no database stores one (PostgreSQL
    refuses it), and no id, name or cursor of ours contains one."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if "\x00" in str(value):
            raise InvalidParameter(f"{name}: must not contain a NUL character")


SafeParams = Depends(reject_nul)
