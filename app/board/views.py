"""What the board's pages show, built from the answers the API keeps in memory.

Every view asks the API's own answer functions (`/summary`, `/alerts`, `/jobs`, `/objects`,
`/grid`), which keep
their encoded answers under the data versions of the customers they cover: the board adds
no query of its own per customer, and a key's scope holds here exactly as in the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.datastructures import Headers

from app import catalog
from app.access.keys import Principal
from app.api.alerts import answer_alerts
from app.api.deps import Services
from app.api.filters import JobFilters
from app.api.jobs import answer_jobs
from app.api.maintenance import window_out
from app.api.objects import ObjectQuery, answer_grid, answer_objects, object_query
from app.api.summary import answer_summary
from app.api.tickets import ticket_out
from app.store import alerts as stored_alerts
from app.store import maintenance, tickets

NO_HEADERS = Headers()
MAX_ALERTS = 10_000
"""Open alerts a page reads at most (one query for all customers in scope)."""

CONDITIONS = ("no_data", "failing", "stale", "warning", "ok")
"""A customer's condition on the board, worst first (the overview's order)."""

OBJECT_FILTERS = ("failure", "no_result", "in_maintenance")
"""The overview's `state` may also name these: customers with an object in that state."""

OVERVIEW_STATES = CONDITIONS + OBJECT_FILTERS

CONDITION_TEXT = {
    "no_data": ("✖", "no data"),
    "failing": ("✖", "failing"),
    "stale": ("⚠", "stale"),
    "warning": ("⚠", "warning"),
    "ok": ("✓", "ok"),
}
"""Every state has a word and a symbol: never colour alone."""

FILTER_TEXT = CONDITION_TEXT | {
    "failure": ("✖", "with an object failing"),
    "no_result": ("∅", "with an object without result"),
    "in_maintenance": ("‖", "in maintenance"),
}


def label_of(cat: catalog.Catalog, name: str | None) -> str:
    """The catalog's label of a name (the name itself when the catalog has none)."""
    if not name:
        return "—"
    codes = cat.codes(name)
    return (cat.label(min(codes)) if codes else None) or name


@dataclass
class CustomerRow:
    """One customer on the overview."""

    customer_id: str
    name: str
    health: int
    condition: str
    source_state: str  # fresh, stale, refreshing, error
    fetched_at: str | None
    error: str | None
    critical: int
    warning: int
    objects: dict[str, int]  # protected objects by state (from `/objects`)
    in_maintenance: int  # objects a maintenance window mutes now
    last_success_at: str | None
    hours_since_success: float | None
    success_rate_7d: float | None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Overview:
    rows: list[CustomerRow]
    as_of: str | None
    freshness: dict[str, Any]
    alerts: list[dict[str, Any]]
    etag: str


def job_filters(
    *,
    customer_ids: list[str] | None = None,
    job_types: list[str] | None = None,
    modules: list[str] | None = None,
    statuses: list[str] | None = None,
    between: tuple[datetime, datetime] | None = None,
) -> JobFilters:
    """The API's job filters (each name checked: 422 for an unknown one)."""
    return JobFilters(
        status=statuses,
        job_type=job_types,
        module=modules,
        customer_id=customer_ids,
        start_after=between[0] if between else None,
        start_before=between[1] if between else None,
        modified_since=None,
        q=None,
        sort="-start_time",
    )


async def open_alerts(
    svc: Services,
    principal: Principal,
    *,
    customer_ids: list[str] | None = None,
    job_types: list[str] | None = None,
    modules: list[str] | None = None,
    severities: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every open alert in the key's scope (one cached answer of `/alerts`)."""
    scope = customer_ids
    if scope is None and principal.customers is not None:
        scope = sorted(principal.customers)
    elif scope is not None and principal.customers is not None:
        scope = [c for c in scope if c in principal.customers]
    query = stored_alerts.AlertQuery(
        state="open",
        customer_ids=tuple(scope) if scope is not None else None,
        job_types=tuple(job_types) if job_types else None,
        modules=tuple(modules) if modules else None,
        severities=tuple(severities) if severities else None,
        limit=MAX_ALERTS,
    )
    response = await answer_alerts(svc, query, NO_HEADERS)
    items: list[dict[str, Any]] = json.loads(bytes(response.body))["items"]
    return items


def condition_of(source_state: str, critical: int, warning: int) -> str:
    if source_state == "error":
        return "no_data"
    if critical:
        return "failing"
    if source_state == "stale":
        return "stale"
    if warning:
        return "warning"
    return "ok"


async def overview(
    svc: Services,
    principal: Principal,
    *,
    customer_ids: list[str] | None = None,
    job_types: list[str] | None = None,
    modules: list[str] | None = None,
) -> Overview:
    """Every customer in scope, worst first: condition, then health, then name."""
    filters = job_filters(customer_ids=customer_ids, job_types=job_types, modules=modules)
    response = await answer_summary(
        svc, principal, filters, NO_HEADERS, group_by="customer", max_age=None
    )
    body = json.loads(bytes(response.body))
    alerts = await open_alerts(
        svc, principal, customer_ids=customer_ids, job_types=job_types, modules=modules
    )
    query, _ = await object_query(svc, principal, customer_ids, job_types, modules, None)
    states: dict[str, dict[str, int]] = {}
    muted: dict[str, int] = {}
    for obj in await objects_of(svc, query):
        counts = states.setdefault(obj["customer_id"], {})
        counts[obj["state"]] = counts.get(obj["state"], 0) + 1
        if obj["in_maintenance"]:
            muted[obj["customer_id"]] = muted.get(obj["customer_id"], 0) + 1
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        by_customer.setdefault(alert["customer_id"], []).append(alert)
    refresher = svc.refresher
    rows = []
    for item in body["items"]:
        cid = item["key"]
        source = refresher.source(cid)
        mine = [a for a in by_customer.get(cid, ()) if not _snoozed(a, svc.clock())]
        critical = sum(a["severity"] == "critical" for a in mine)
        warning = sum(a["severity"] == "warning" for a in mine)
        error = source.error
        rows.append(
            CustomerRow(
                customer_id=cid,
                name=item["label"] or cid,
                health=item["health"],
                condition=condition_of(source.state, critical, warning),
                source_state=source.state,
                fetched_at=item["freshness"]["oldest_fetched_at"],
                error=f"{error.kind}: {error.message}" if error else None,
                critical=critical,
                warning=warning,
                objects=states.get(cid, {}),
                in_maintenance=muted.get(cid, 0),
                last_success_at=item["last_success_at"],
                hours_since_success=item["hours_since_success"],
                success_rate_7d=item["success_rate_7d"],
                counts=item["counts"],
            )
        )
    rank = {c: i for i, c in enumerate(CONDITIONS)}
    rows.sort(key=lambda r: (rank[r.condition], r.health, r.name.lower(), r.customer_id))
    return Overview(
        rows=rows,
        as_of=body["freshness"]["oldest_fetched_at"],
        freshness=body["freshness"],
        alerts=alerts,
        etag=response.headers.get("etag", ""),
    )


def _snoozed(alert: dict[str, Any], now: datetime) -> bool:
    until: str | None = alert.get("snoozed_until")
    return until is not None and until > now.strftime("%Y-%m-%dT%H:%M:%SZ")


async def jobs_of(
    svc: Services,
    principal: Principal,
    customer_id: str,
    *,
    statuses: list[str] | None = None,
    job_types: list[str] | None = None,
    modules: list[str] | None = None,
    between: tuple[datetime, datetime] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """A customer's newest jobs (one cached answer of `/jobs`), started `between` two
    moments when given."""
    filters = job_filters(
        customer_ids=[customer_id],
        statuses=statuses,
        job_types=job_types,
        modules=modules,
        between=between,
    )
    response = await answer_jobs(
        svc,
        principal,
        filters,
        NO_HEADERS,
        limit=limit,
        cursor=None,
        position=None,
        max_age=None,
    )
    items: list[dict[str, Any]] = json.loads(bytes(response.body))["items"]
    return items


CELL_TEXT = {
    "success": ("✓", "success"),
    "warning": ("⚠", "warning"),
    "failure": ("✖", "failure"),
    "no_result": ("∅", "no result"),
    "maintenance": ("‖", "maintenance"),
    "none": ("·", "nothing expected"),
}
"""A grid cell's result: a symbol and a word (the legend), never colour alone."""

OBJECT_STATES = ("failure", "no_result", "warning", "ok", "retired")
"""An object's state on the board, worst first."""

OBJECT_TEXT = {
    "failure": ("✖", "failure"),
    "no_result": ("∅", "no result"),
    "warning": ("⚠", "warning"),
    "ok": ("✓", "ok"),
    "retired": ("–", "retired"),
}


async def grid(svc: Services, query: ObjectQuery, days: int) -> dict[str, Any]:
    """Objects by business day: the kept answer of `/grid` for this query."""
    response = await answer_grid(svc, query, days, NO_HEADERS)
    body: dict[str, Any] = json.loads(bytes(response.body))
    return body


async def objects_of(svc: Services, query: ObjectQuery) -> list[dict[str, Any]]:
    """Protected objects: the kept answer of `/objects` for this query."""
    response = await answer_objects(svc, query, NO_HEADERS)
    items: list[dict[str, Any]] = json.loads(bytes(response.body))["items"]
    return items


async def windows_in_effect(svc: Services, customer_ids: list[str]) -> list[dict[str, Any]]:
    """The maintenance windows muting these customers now (theirs and every customer's)."""
    now = svc.clock()
    async with svc.sessions() as session:
        found = await maintenance.list_windows(session, customer_ids, ending_after=now)
    return [window_out(w, now) for w in found if w.starts_at <= now]


TICKETS_KEPT_SECONDS = 2
"""How long a page's tickets are kept: a ticket's change shows within it."""

TICKET_TEXT = {
    "open": "open",
    "closed": "closed",
    "held": "held back (too many new tickets this hour)",
    "failed": "failed",
    "unmapped": "no ticket: customer not mapped to a PSA company",
}
"""What the board says of an alert's ticket; `unmapped` plainly."""


async def alert_tickets(svc: Services, customer_ids: list[str] | None) -> dict[str, dict[str, Any]]:
    """The ticket of each open alert (by alert key) of these customers (None: all): one
    query for the whole page, kept for TICKETS_KEPT_SECONDS (the desk tells no notice when a
    ticket moves) or until an alert changes."""
    bucket = int(svc.clock().timestamp() // TICKETS_KEPT_SECONDS)
    names = tuple(customer_ids) if customer_ids is not None else None
    key = ("board-tickets", names, svc.notices.count, bucket)
    kept: dict[str, dict[str, Any]] | None = svc.answers.get(key)
    if kept is not None:
        return kept
    dialect = svc.engine.dialect.name
    async with svc.sessions() as session:
        rows = await tickets.read(session, tickets.open_alerts_tickets(dialect, customer_ids))
    found = {r.alert_key: ticket_out(r) | {"text": TICKET_TEXT[r.state]} for r in rows}
    svc.answers.put(key, found, 200 * len(found) + 100)
    return found
