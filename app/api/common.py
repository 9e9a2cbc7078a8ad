"""What several routers share: the customers a request covers, and how sources are shown."""

from __future__ import annotations

from typing import Any

from app.api.errors import InvalidParameter, Unavailable
from app.api.params import shorten
from app.clock import iso
from app.refresh import DiscoveryFailed, Refresher, Source


async def scope(refresher: Refresher, customer_ids: list[str] | None) -> list[str]:
    """The customers a request covers: all of the partner's, or the ones it names (422 for
    one that is not the partner's)."""
    try:
        known = await refresher.customer_ids()
    except DiscoveryFailed as exc:
        raise Unavailable(
            f"the customer list could not be fetched from the upstream ({exc}); "
            "set CUSTOMER_IDS or try again later",
            headers={"Retry-After": "10"},
        ) from None
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
