"""`GET /customers`: every customer in scope, how current its data is, and its jobs by status.

Job counts come from the store once per data version of the page's customers; the answer,
whose sources carry ages, is built at most once a second. A kept answer is found without
touching every customer: the customers a key sees, in order, are kept per generation of the
customer list (`Scoped`), and the answer under that generation, the ledger's epoch (which
moves with any customer's data version, name or state) and the second (ages, and states that
time alone moves on).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app.access.keys import Principal
from app.api import schemas
from app.api.common import listing, source_out
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.etags import dumps, etag_of, json_answer, matches, not_modified
from app.api.params import decode_cursor, encode_cursor, fingerprint
from app.refresh import Listing
from app.store import repo

router = APIRouter(tags=["customers"], dependencies=[Authorized, SafeParams])

_FINGERPRINT = fingerprint(endpoint="customers")


@router.get(
    "/customers",
    operation_id="list_customers",
    summary="Customers, with freshness and job counts by status",
    response_model=schemas.CustomerPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def list_customers(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    max_age: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
) -> Response:
    after = decode_cursor(cursor, _FINGERPRINT, size=1)[0] if cursor else None
    answer = functools.partial(
        answer_customers,
        svc,
        principal,
        limit=limit,
        cursor=cursor,
        after=after,
        max_age=max_age,
    )
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


@dataclass(frozen=True, slots=True)
class Scoped:
    """The customers a key sees, of one generation of the customer list."""

    in_scope: Sequence[str]  # in the directory's order (the order views are built in)
    ordered: list[str]  # sorted by id: the pages' order

    def page(self, after: object, limit: int) -> tuple[list[str], bool]:
        """The ids after the cursor's (all with none), at most `limit`, and whether more follow."""
        start = 0 if after is None else bisect.bisect_right(self.ordered, str(after))
        page = self.ordered[start : start + limit]
        return page, len(self.ordered) > start + limit


def scope_key(known: Listing, principal: Principal) -> tuple[str, int, frozenset[str] | None]:
    """What names the customers `principal` sees in this generation of the list."""
    return ("customer-scope", known.generation, principal.customers)


def scoped(svc: Services, known: Listing, principal: Principal) -> Scoped:
    """The customers `principal` sees: kept per generation of the list, since sorting and
    filtering every customer on every request cost more than the rest of a kept answer."""
    key = scope_key(known, principal)
    kept: Scoped | None = svc.answers.get(key)
    if kept is None:
        allowed = principal.customers
        in_scope = known.ids if allowed is None else [c for c in known.ids if c in allowed]
        kept = Scoped(in_scope, sorted(in_scope))
        svc.answers.put(key, kept, 16 * len(in_scope) + 64)
    return kept


async def answer_customers(
    svc: Services,
    principal: Principal,
    headers: Headers,
    *,
    limit: int,
    cursor: str | None,
    after: object,
    max_age: int | None,
) -> Response:
    """A page of `/customers` for validated parameters."""
    refresher = svc.refresher
    known = await listing(refresher)
    mine = scoped(svc, known, principal)
    # The freshness of the whole scope is kept in memory; an explicit max_age refreshes
    # (and waits for) this page's customers only.
    if max_age is not None:
        freshness = await refresher.ensure(mine.page(after, limit)[0], max_age=max_age)
    else:
        # A key limited to some customers keeps its view under the key of its scope.
        everyone = principal.customers is None
        kept = None if everyone else scope_key(known, principal)
        freshness = await refresher.ensure(mine.in_scope, everyone=everyone, kept=kept)
    now_second = int(freshness.now.timestamp())
    # The epoch moves with every change of any customer's data version, name or state; the
    # second with the ages. Taken before the counts are read: should a refresh land
    # meanwhile, the answer built from them is kept under the epoch nobody asks for again.
    key = (
        "customers",
        principal.customers,
        cursor,
        limit,
        known.generation,
        refresher.epoch,
        now_second,
    )
    answer: tuple[bytes, str] | None = svc.answers.get(key)
    if answer is None:
        page, more = mine.page(after, limit)
        answer = await build_answer(svc, page, more, cursor, limit)
        svc.answers.put(key, answer, len(answer[0]))
    content, etag = answer
    if matches(headers, etag):
        return not_modified(etag, freshness)
    return json_answer(content, etag, freshness)


async def build_answer(
    svc: Services, page: list[str], more: bool, cursor: str | None, limit: int
) -> tuple[bytes, str]:
    """The encoded page and its ETag, from the ledger as it is now and the stored counts."""
    refresher = svc.refresher
    version = refresher.version_of(page)
    counts_key = ("customer-counts", tuple(page), version)
    counts: dict[str, dict[str, int]] | None = svc.answers.get(counts_key)
    if counts is None:
        async with svc.sessions() as session:
            counts = await repo.status_counts(session, page)
        if refresher.version_of(page) == version:
            svc.answers.put(counts_key, counts, 64 * len(page))
    sources = [refresher.source(cid) for cid in page]
    items = [
        {
            "customer_id": s.customer_id,
            "customer_name": refresher.name_of(s.customer_id),
            "source": source_out(s),
            # Nothing of a customer in error is served, so nothing of it is counted.
            "counts": counts.get(s.customer_id, {}) if s.state != "error" else {},
        }
        for s in sources
    ]
    next_cursor = encode_cursor([page[-1]], _FINGERPRINT) if more and page else None
    content = dumps({"items": items, "next_cursor": next_cursor})
    etag = etag_of(
        "customers",
        cursor,
        limit,
        version,
        [(s.customer_id, s.state, s.fetched_at, s.error) for s in sources],
    )
    return content, etag
