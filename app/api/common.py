"""What several routers share: how their routes join an app, the customers a request covers,
and how sources are shown."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI

from app.access.keys import Principal
from app.api.errors import InvalidParameter, Unavailable
from app.api.params import shorten
from app.clock import iso

if TYPE_CHECKING:
    from app.api.deps import Services
from app.refresh import DiscoveryFailed, Listing, Refresher, Source


def add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """The routers' routes, added to `app` as they are. `include_router` would wrap each
    router, and build every route's state again (its dependencies, its response model's
    validator) for every app, at the route's first request: 0.2 s of CPU per app, which a
    process that builds apps by the hundred (the tests) paid a thousand times. A router's
    routes are whole when declared: its tags and dependencies are theirs, and no app here
    adds a prefix or overrides a dependency."""
    for router in routers:
        app.router.routes.extend(router.routes)


async def listing(refresher: Refresher) -> Listing:
    """Every customer of the partner, with the generation of that list (503 when it cannot
    be had)."""
    try:
        return await refresher.customer_listing()
    except DiscoveryFailed as exc:
        raise Unavailable(
            f"the customer list could not be fetched from the upstream ({exc}); "
            "set CUSTOMER_IDS or try again later",
            headers={"Retry-After": "10"},
        ) from None


async def scope(
    refresher: Refresher, customer_ids: list[str] | None, principal: Principal
) -> list[str]:
    """The customers a request covers: all those its key may see, or the ones it names (422
    for one that is not the partner's, or that the key may not see: for a key limited to
    some customers, the others do not exist)."""
    known = list((await listing(refresher)).ids)
    if principal.customers is not None:
        known = [cid for cid in known if cid in principal.customers]
    if not customer_ids:
        return known
    known_set = set(known)
    for cid in customer_ids:
        if cid not in known_set:
            raise InvalidParameter(
                f"customer_id: {shorten(cid)!r} is not one of this partner's customers "
                "(see GET /customers)"
            )
    return customer_ids


async def covered(
    refresher: Refresher, customer_ids: list[str] | None, principal: Principal
) -> tuple[list[str], list[str] | None]:
    """`scope`, and the customers the request names for queries and data versions: None
    only for a key that sees every customer and names none (then: every customer, also
    those discovered later)."""
    in_scope = await scope(refresher, customer_ids, principal)
    if customer_ids is None and principal.customers is not None:
        return in_scope, in_scope
    return in_scope, customer_ids


async def customers_of(
    svc: Services, principal: Principal, named: list[str] | None
) -> list[str] | None:
    """The customers a listing of stored records (events, alerts, deliveries) is limited
    to: the ones named (each checked as `scope` does), else all the key may see (None: no
    limit)."""
    if named:
        await scope(svc.refresher, named, principal)
        return named
    return sorted(principal.customers) if principal.customers is not None else None


def servable(
    in_scope: list[str], named: list[str] | None, errors: Collection[str]
) -> list[str] | None:
    """The customers a query of stored jobs may read: those covered whose data is not in
    error (nothing of theirs is served). None: every customer, which a query need not name
    (only when `covered` gave no names and none is in error)."""
    if named is None and not errors:
        return None
    return [cid for cid in in_scope if cid not in errors]


def visible(principal: Principal, customer_id: str) -> bool:
    """Whether the key may see this customer at all."""
    return principal.customers is None or customer_id in principal.customers


def source_out(source: Source) -> dict[str, Any]:
    error = source.error
    return {
        "customer_id": source.customer_id,
        "state": source.state,
        "fetched_at": iso(source.fetched_at),
        "age_seconds": source.age_seconds,
        "error": (
            {"kind": error.kind, "message": error.message, "upstream_status": error.upstream_status}
            if error
            else None
        ),
    }
