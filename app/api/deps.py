"""Dependencies as `Annotated` aliases, so that route functions stay thin."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api.errors import InvalidParameter, Unauthorized
from app.config import Settings
from app.metrics import Metrics
from app.refresh import Refresher


@dataclass
class Services:
    """What the lifespan opens and closes: everything a request may need."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    refresher: Refresher
    metrics: Metrics


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


async def session(svc: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with svc.sessions() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(session)]


def refresher(svc: ServicesDep) -> Refresher:
    return svc.refresher


RefresherDep = Annotated[Refresher, Depends(refresher)]

_bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from API_KEYS.")


def require_key(
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key)],
) -> None:
    """401 unless the request carries one of API_KEYS (compared in constant time)."""
    if not svc.settings.auth_required:
        return
    offered = [k for k in (bearer.credentials if bearer else None, header_key) if k]
    keys = [k.get_secret_value().encode() for k in svc.settings.api_keys]
    for candidate in offered:
        given = candidate.encode()
        # Compare against every key, always, so timing tells nothing about which matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, key)
        if matched:
            return
    detail = (
        "the API key is not valid"
        if offered
        else "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
    )
    raise Unauthorized(detail, headers={"WWW-Authenticate": "Bearer"})


Authorized = Depends(require_key)


def reject_nul(request: Request) -> None:
    """422 for a NUL character in any parameter: no database stores one (PostgreSQL
    refuses it), and no id, name or cursor of ours contains one."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if "\x00" in str(value):
            raise InvalidParameter(f"{name}: must not contain a NUL character")


SafeParams = Depends(reject_nul)
