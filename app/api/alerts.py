"""`GET /alerts` and `POST /alerts/{alert_key}/snooze`.

A listing is kept in memory under its query and the count of this process's notices, which
moves whenever alerts change here (a refresh, the overdue sweep, a snooze).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app import catalog
from app.access.keys import Principal
from app.alert_rules import AlertState
from app.api import schemas
from app.api.common import customers_of, visible
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.errors import NotFound
from app.api.etags import dumps
from app.api.filters import JobTypes, Modules
from app.api.params import (
    CustomerIds,
    IdCursor,
    choice_filter,
    enum_filter,
    id_cursor,
    shorten,
    split_values,
)
from app.store import alerts as stored_alerts

router = APIRouter(tags=["alerts"], dependencies=[Authorized, SafeParams])


@router.get(
    "/alerts",
    operation_id="list_alerts",
    summary="Alerts: one per problem of one customer + job type + module, newest first",
    response_model=schemas.AlertPage,
    responses=schemas.error_responses(401, 422, 503),
)
async def list_alerts(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    state: Annotated[
        Literal["open", "resolved"] | None, Query(description="Open or resolved; both if absent.")
    ] = None,
    customer_id: CustomerIds = None,
    job_type: JobTypes = None,
    module: Modules = None,
    severity: Annotated[
        list[str] | None,
        Query(
            description="warning, critical; repeatable or comma-separated.",
            json_schema_extra={"items": {"type": "string", "enum": ["warning", "critical"]}},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Alerts per page.")] = 100,
    cursor: IdCursor = None,
) -> Response:
    severities = choice_filter("severity", severity, ("warning", "critical"))
    customers = await customers_of(svc, principal, split_values(customer_id) or None)
    query = stored_alerts.AlertQuery(
        state=state,
        customer_ids=_tuple(customers),
        # Alerts keep the catalog's primary names: an alias is asked as the name it stands for.
        job_types=_primary(catalog.JOB_TYPE, enum_filter("job_type", job_type, catalog.JOB_TYPE)),
        modules=_primary(catalog.MODULE, enum_filter("module", module, catalog.MODULE)),
        severities=_tuple(severities),
        before=id_cursor(cursor),
        limit=limit,
    )
    answer = functools.partial(answer_alerts, svc, query)
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


def _primary(cat: catalog.Catalog, names: list[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    return tuple(sorted({cat.name(code) for n in names for code in cat.codes(n)} | set(names)))


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None


async def answer_alerts(
    svc: Services, query: stored_alerts.AlertQuery, headers: Headers
) -> Response:
    key = ("alerts", query, svc.notices.count)
    content: bytes | None = svc.answers.get(key)
    if content is None:
        async with svc.sessions() as session:
            alerts = await stored_alerts.list_alerts(session, query)
        next_cursor = None
        if len(alerts) > query.limit:
            alerts = alerts[: query.limit]
            next_cursor = str(alerts[-1].id)
        content = dumps(
            {"items": [stored_alerts.alert_out(a) for a in alerts], "next_cursor": next_cursor}
        )
        svc.answers.put(key, content, len(content))
    return Response(content, media_type="application/json")


@router.post(
    "/alerts/{alert_key}/snooze",
    operation_id="snooze_alert",
    summary="Mute an open alert for webhooks and health until a time",
    response_model=schemas.Alert,
    responses=schemas.error_responses(401, 404, 422, 503),
)
async def snooze_alert(
    svc: ServicesDep,
    principal: PrincipalDep,
    alert_key: str,
    body: schemas.Snooze,
) -> Response:
    alert = await snooze(svc, principal, alert_key, body.until, body.reason)
    if alert is None:
        raise NotFound(
            f"no open alert with key {shorten(alert_key)!r} "
            "(keys are customer_id:job_type:module; see GET /alerts?state=open)"
        )
    return Response(dumps(stored_alerts.alert_out(alert)), media_type="application/json")


async def snooze(
    svc: Services, principal: Principal, alert_key: str, until: datetime, reason: str | None
) -> AlertState | None:
    """Snooze the open alert of `alert_key` until `until` (aware UTC; a past time lifts the
    snooze), here and for the other processes; None when the key has no open alert it may
    see (the API's 404, the board's error page)."""
    now = svc.clock()
    # The key is customer_id:job_type:module, and names have no colon: the customer is what
    # comes before the last two. For a key limited to some customers, the others' alerts
    # do not exist.
    if not visible(principal, alert_key.rsplit(":", 2)[0]):
        return None
    alert = await svc.writer.run_plan(
        lambda dialect: stored_alerts.snooze(dialect, alert_key, until, reason, now)
    )
    if alert is not None:
        svc.changed()
    return alert
