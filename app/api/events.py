"""`GET /events`: the change feed, oldest first, from a cursor; `wait` makes it a long poll.

The feed reads the highest event id first and then the events up to it, so a cursor handed
out never passes an event that commits later (ids are handed out in commit order, see
`app.store.telling`). A page is kept in memory under its query and the count of this process's
notices, which moves whenever this process writes events.

A cursor older than what retention kept answers 410 `cursor_expired` with `oldest_cursor`,
a long poll too: the client learns that it missed events. Without `after`, a client starts
at the oldest event kept, which is no error. A kept page stays true after a purge: it holds
every event after its cursor as they were, so serving it skips nothing.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from app.api import schemas
from app.api.common import customers_of
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.params import MAX_ID, CustomerIds, choice_filter, split_values
from app.config import EVENT_TYPES
from app.store import events

router = APIRouter(tags=["events"], dependencies=[Authorized, SafeParams])

"""How often a long poll looks at the database for events other processes wrote."""


@router.get(
    "/events",
    operation_id="list_events",
    summary="The change feed: job and alert events, oldest first",
    response_model=schemas.EventPage,
    responses=schemas.error_responses(401, 410, 422, 503),
)
async def list_events(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_ID,
            description=(
                "next_cursor of the last page: events after it. Leave it out to start at the "
                "oldest event kept; a cursor older than what retention kept is a 410."
            ),
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 100,
    type: Annotated[
        list[str] | None,
        Query(
            description="Event types, repeatable or comma-separated.",
            json_schema_extra={"items": {"type": "string", "enum": list(EVENT_TYPES)}},
        ),
    ] = None,
    customer_id: CustomerIds = None,
    wait: Annotated[
        float,
        Query(ge=0, le=30, description="Seconds to hold the request until an event arrives."),
    ] = 0,
) -> Response:
    types = choice_filter("type", type, EVENT_TYPES)
    customers = await customers_of(svc, principal, split_values(customer_id) or None)
    answer = functools.partial(
        answer_events,
        svc,
        after=after,
        limit=limit,
        types=types,
        customers=customers,
        wait=wait,
    )
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_events(
    svc: Services,
    headers: Headers,
    *,
    after: int | None,
    limit: int,
    types: list[str] | None,
    customers: list[str] | None,
    wait: float,
) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        seen = svc.notices.count
        key = (
            "events",
            after,
            limit,
            types and tuple(types),
            None if customers is None else tuple(customers),
        )
        versioned = (*key, seen)
        page: tuple[bytes, int] | None = svc.answers.get(versioned)
        if page is None:
            try:
                # Waiters woken by one notice share one query per query string.
                page = await svc.answers.build_once(
                    versioned, functools.partial(_page, svc, after, limit, types, customers)
                )
            except events.CursorExpired as expired:
                return _expired(expired)
            if page[1]:
                # A page with events stays true (ids are handed out in commit order); an
                # empty one does not once another process writes, so it is always read.
                svc.answers.put(versioned, page, len(page[0]))
        content, count = page
        remaining = deadline - loop.time()
        if count or remaining <= 0 or svc.stopping:
            return Response(content, media_type="application/json")
        # An idle long poll reads nothing: it waits for a notice, which comes with this
        # process's own writes at once, and with other processes' within a look of the
        # database (`app.refresh.replicas`: one query per process, not one per waiter).
        await svc.notices.wait(remaining, since=seen)


async def _page(
    svc: Services,
    after: int | None,
    limit: int,
    types: list[str] | None,
    customers: list[str] | None,
) -> tuple[bytes, int]:
    async with svc.sessions() as session:
        page = await events.read_feed(
            session, after=after, limit=limit, types=types, customer_ids=customers
        )
    items = ",".join(
        events.event_json(r.id, r.type, r.at, r.customer_id, r.job_id, r.alert_key, r.data)
        for r in page.rows
    )
    return f'{{"items":[{items}],"next_cursor":"{page.cursor}"}}'.encode(), len(page.rows)


def _expired(expired: events.CursorExpired) -> Response:
    return JSONResponse(
        {
            "error": "cursor_expired",
            "detail": (
                f"after: events after {expired.after} were purged by retention "
                f"(RETENTION_DAYS), up to {expired.oldest}, so this cursor would skip them; "
                "read on with after=oldest_cursor, and catch up on what changed meanwhile "
                "from GET /alerts and GET /jobs"
            ),
            "oldest_cursor": str(expired.oldest),
        },
        status_code=410,
    )
