"""Dependencies as `Annotated` aliases, so that route functions stay thin.

Every dependency is `async def`: FastAPI runs a plain `def` in a thread pool, and the hop
costs more than the work on the cached read path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.access.keys import KeyBook, Principal
from app.access.ratelimit import RateLimits
from app.alerts.notices import Notices
from app.api.answers import AnswerCache, FastReads
from app.api.errors import InvalidParameter, Unauthorized
from app.api.guard import rate_limited
from app.clock import Clock
from app.config import Settings
from app.metrics import Metrics
from app.refresh import Refresher
from app.refresh.replicas import Bus
from app.refresh.runs import RefreshRuns
from app.store.telling import FeedConfig, Told
from app.store.writer import Writer


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
    keys: KeyBook
    limits: RateLimits
    bus: Bus
    on_told: Callable[[Told], None]  # a write told events: notices, metrics, other processes
    stopping: bool = False  # SIGTERM came: not ready, long polls answer now

    def changed(self) -> None:
        """A write that tells no event changed what answers show (a snooze, an expectation,
        a maintenance window, a retried delivery): this process's kept answers move now, the
        other processes' at once on PostgreSQL (NOTIFY), else at their next look."""
        self.notices.notify()
        self.bus.events_written()

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

_KEY_HELP = "An API key: one of API_KEYS, or one made with `jobs-gateway keys create`."
_bearer = HTTPBearer(auto_error=False, description=_KEY_HELP)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description=_KEY_HELP)


async def require_key(
    request: Request,
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """Who is asking: 401 without a valid key, 429 past the key's rate limit."""
    state = request.scope.setdefault("state", {})
    known: Principal | None = state.get("principal")
    if known is not None:  # FastReadsMiddleware checked and counted this request already
        return known
    offered = [k for k in (bearer.credentials if bearer else None, header_key) if k]
    principal = svc.keys.authenticate(offered)
    if principal is None and offered:  # maybe a key made since the keys were last read
        principal = await svc.keys.look_up(offered, svc.sessions)
    if principal is None:
        detail = (
            "the API key is not valid"
            if offered
            else "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
        raise Unauthorized(detail, headers={"WWW-Authenticate": "Bearer"})
    wait = rate_limited(svc.limits, svc.metrics, svc.settings, principal, request.scope)
    if wait is not None:
        raise wait
    state["principal"] = principal
    return principal


Authorized = Depends(require_key)
PrincipalDep = Annotated[Principal, Depends(require_key)]


async def reject_nul(request: Request) -> None:
    """422 for a NUL character in any parameter: no database stores one (PostgreSQL
    refuses it), and no id, name or cursor of ours contains one."""
    for name, value in (*request.query_params.multi_items(), *request.path_params.items()):
        if "\x00" in str(value):
            raise InvalidParameter(f"{name}: must not contain a NUL character")


SafeParams = Depends(reject_nul)
