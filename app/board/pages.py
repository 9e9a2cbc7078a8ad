"""The board's pages: `/` -> `/board`, the overview worst first, the open alerts, a
customer, and a job with its history (`app.board.forms` has what changes something)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app import catalog, expectations
from app.api.common import add_routes, scope, visible
from app.api.errors import ApiError, InvalidParameter, NotFound
from app.api.jobs import job_out
from app.api.objects import object_query
from app.api.params import shorten
from app.board import forms, views
from app.board.filters import GRID_PAGE_ROWS, Filters, GridFilters, matches
from app.board.frame import (
    HERE,
    Board,
    Visit,
    error_page,
    live_page,
    live_part,
    quick_key,
    serve_live,
    to_login,
    visit_of,
)
from app.board.sessions import Sessions
from app.clock import iso
from app.config import Settings
from app.store import repo

router = APIRouter(include_in_schema=False)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the board to an app: its routes, static files and state."""
    app.state.board = Board(
        templates=jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        ),
        sessions=Sessions(settings),
        settings=settings,
    )
    add_routes(app, router, forms.router)
    app.mount("/board/static", StaticFiles(directory=HERE / "static"), name="board-static")


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/board", status_code=307)


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values else None


@router.get("/board")
async def overview_page(request: Request) -> Response:
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    svc = visit.svc
    frame: dict[str, Any] = {
        "title": "Overview",
        "nav": "overview",
        "filter_fields": ("q", "state", "severity", "job_type", "module"),
        "action": "/board",
    }
    try:
        filters = Filters.of(request)
        frame["filters"] = filters.form()
        quick = quick_key(visit, "overview", filters)
        kept: tuple[str, str, datetime | None] | None = svc.answers.get(quick)
        if kept is not None and (kept[2] is None or svc.clock() < kept[2]):
            return serve_live(visit, kept[0], kept[1], **frame)
        named = _listed(filters.customer)
        in_scope = await scope(svc.refresher, named, visit.principal)
        data = await views.overview(
            svc,
            visit.principal,
            customer_ids=named,
            job_types=_listed(filters.job_type),
            modules=_listed(filters.module),
        )
    except ApiError as exc:
        return error_page(visit, request, exc)

    async def build() -> dict[str, Any]:
        return _overview_context(data, filters, iso(svc.clock()) or "")

    key: tuple[Any, ...] = (
        "board",
        "overview",
        visit.principal.customers,
        filters,
        data.etag,
        data.as_of,
    )
    minute = int(svc.clock().timestamp() // 60)  # objects turn "no result" with time
    key += (svc.notices.count, len(data.alerts), minute)
    html, version = await live_part(visit, "overview.html", key, build)
    if quick_key(visit, "overview", filters) == quick:  # nothing moved while it was built
        everyone = visit.principal.customers is None and not filters.customer
        view = svc.refresher.view(in_scope, everyone=everyone)
        svc.answers.put(quick, (html, version, view.valid_until), len(html))
    return serve_live(visit, html, version, **frame)


def _in_state(row: views.CustomerRow, state: str) -> bool:
    """Whether a customer is in a state of the overview's filter: its condition, or one
    of its objects' (`failure`, `no_result`), or a window muting some (`in_maintenance`)."""
    if state == "in_maintenance":
        return row.in_maintenance > 0
    if state in views.OBJECT_FILTERS:
        return row.objects.get(state, 0) > 0
    return row.condition == state


def _overview_context(data: views.Overview, filters: Filters, now: str) -> dict[str, Any]:
    rows = [
        r
        for r in data.rows
        if matches(filters.q, r.name, r.customer_id)
        and (not filters.state or any(_in_state(r, s) for s in filters.state))
        and (
            not filters.severity
            or ("critical" in filters.severity and r.critical)
            or ("warning" in filters.severity and r.warning)
        )
    ]
    tally = {c: 0 for c in views.CONDITIONS}
    for r in rows:
        tally[r.condition] += 1
    return {
        "rows": rows,
        "total": len(data.rows),
        "tally": tally,
        "conditions": views.CONDITION_TEXT,
        "object_text": views.OBJECT_TEXT,
        "as_of": data.as_of or now,
        "freshness": data.freshness,
        "filtered": filters.active,
    }


@router.get("/board/grid")
async def grid_page(request: Request) -> Response:
    """Objects by business day, from the kept answer of `/grid`: by default only the
    objects not ok (a toggle shows all), GRID_PAGE_ROWS a page."""
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    svc = visit.svc
    frame: dict[str, Any] = {
        "title": "Grid",
        "nav": "grid",
        "filter_fields": ("state", "job_type", "module", "days"),
        "action": "/board/grid",
    }
    try:
        gf = GridFilters.of(request)
        frame["filters"] = gf.form()
        states = gf.state
        if states is None and gf.show == "problems":
            states = tuple(s for s in views.OBJECT_STATES if s not in ("ok", "retired"))
        query, named = await object_query(
            svc,
            visit.principal,
            _listed(gf.customer),
            _listed(gf.job_type),
            _listed(gf.module),
            _listed(states),
        )
        data = await views.grid(svc, query, gf.days)
    except ApiError as exc:
        return error_page(visit, request, exc)
    items: list[dict[str, Any]] = data["items"]
    pages = max(1, -(-len(items) // GRID_PAGE_ROWS))
    page = min(gf.page, pages)
    shown = items[(page - 1) * GRID_PAGE_ROWS : page * GRID_PAGE_ROWS]

    async def build() -> dict[str, Any]:
        return {
            "rows": [_labelled(r) for r in shown],
            "days": data["days"],
            "total": len(items),
            "shown": len(shown),
            "show": gf.show,
            "page": page,
            "pages": pages,
            "prev_link": gf.link(page=page - 1),
            "next_link": gf.link(page=page + 1),
            "all_link": gf.link(show="all", page=""),
            "problems_link": gf.link(show="", page=""),
            "cell_text": views.CELL_TEXT,
            "object_text": views.OBJECT_TEXT,
            "as_of": iso(svc.clock()) or "",
        }

    # What the kept `/grid` answer depends on (its data versions, alert and expectation
    # changes, the minute), so the part is rendered once per change, not per poll.
    minute = int(svc.clock().timestamp() // 60)
    key: tuple[Any, ...] = ("board", "grid", visit.principal.customers, gf, data["days"][-1])
    key += (svc.refresher.version_of(named), svc.notices.count, minute, page)
    return await live_page(visit, "grid.html", key, build, **frame)


@router.get("/board/alerts")
async def alerts_page(request: Request) -> Response:
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    svc = visit.svc
    try:
        filters = Filters.of(request)
        if filters.customer:
            await scope(svc.refresher, list(filters.customer), visit.principal)
        alerts = await views.open_alerts(
            svc,
            visit.principal,
            customer_ids=_listed(filters.customer),
            job_types=_listed(filters.job_type),
            modules=_listed(filters.module),
            severities=_listed(filters.severity),
        )
        in_scope = await scope(svc.refresher, None, visit.principal)
        everyone = visit.principal.customers is None and not filters.customer
        ticket_of = await views.alert_tickets(
            svc, None if everyone else _listed(filters.customer) or in_scope
        )
    except ApiError as exc:
        return error_page(visit, request, exc)
    view = svc.refresher.view(in_scope, everyone=visit.principal.customers is None)
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")

    async def build() -> dict[str, Any]:
        now = iso(svc.clock()) or ""
        return {
            "alerts": _alert_rows(svc.refresher.name_of, alerts, filters.q, now, ticket_of),
            "as_of": iso(view.oldest_fetched_at) or now,
            "hours": forms.SNOOZE_HOURS,
            "back": back,
        }

    minute = int(svc.clock().timestamp() // 60)  # "snoozed until" passes with time
    key: tuple[Any, ...] = (
        "board",
        "alerts",
        visit.principal.customers,
        filters,
        svc.notices.count,
        view.tag,
    )
    key += (iso(view.oldest_fetched_at), len(alerts), minute, _tickets_tag(ticket_of))
    return await live_page(
        visit,
        "alerts.html",
        key,
        build,
        title="Open alerts",
        nav="alerts",
        filters=filters.form(),
        filter_fields=("q", "severity", "job_type", "module"),
        action="/board/alerts",
    )


def _tickets_tag(ticket_of: dict[str, dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    """What a page's tickets show, to key its rendered part."""
    return tuple(sorted((k, t["state"], t["ticket_id"] or "") for k, t in ticket_of.items()))


def _alert_rows(
    name_of: Callable[[str], str | None],
    alerts: list[dict[str, Any]],
    q: str | None,
    now: str,
    ticket_of: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Open alerts as the page lists them: critical first, snoozed after, oldest first."""
    rows = []
    for a in alerts:
        name = name_of(a["customer_id"]) or a["customer_id"]
        if not matches(q, name, a["alert_key"], a["job_type"], a["module"]):
            continue
        rows.append(
            _labelled(a)
            | {
                "customer_name": name,
                "snoozed": bool(a["snoozed_until"]) and a["snoozed_until"] > now,
                "ticket": ticket_of.get(a["alert_key"]),
            }
        )
    rows.sort(key=lambda a: (a["severity"] != "critical", a["snoozed"], a["opened_at"] or ""))
    return rows


def _labelled(item: dict[str, Any]) -> dict[str, Any]:
    """An alert or a job, with the catalog's labels of its job type, module (and status)."""
    labels = {
        "job_type_label": views.label_of(catalog.JOB_TYPE, item["job_type"]),
        "module_label": views.label_of(catalog.MODULE, item["module"]),
    }
    if "status" in item:
        labels["status_label"] = views.label_of(catalog.STATUS, item["status"])
    return item | labels


async def _customer_or_404(visit: Visit, customer_id: str) -> None:
    known = await scope(visit.svc.refresher, None, visit.principal)
    if customer_id not in known or not visible(visit.principal, customer_id):
        # For a key limited to some customers, the others do not exist.
        raise NotFound(f"no customer {shorten(customer_id)!r}")


def _objects_with_cells(objs: list[dict[str, Any]], grid: dict[str, Any]) -> list[dict[str, Any]]:
    """A customer's objects, each with its labels and its row of the grid (none retired)."""
    cells = {item["key"]: item["cells"] for item in grid["items"]}
    return [_labelled(o) | {"cells": cells.get(o["key"], [])} for o in objs]


def _day(request: Request) -> date | None:
    """The `day` of a customer page (a grid cell's link): a business day, YYYY-MM-DD."""
    raw = (request.query_params.get("day") or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(f"day: {shorten(raw)!r} is not a date (YYYY-MM-DD)") from None


@router.get("/board/customers/{customer_id}")
async def customer_page(request: Request, customer_id: str) -> Response:
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    svc, principal = visit.svc, visit.principal
    try:
        await _customer_or_404(visit, customer_id)
        filters = Filters.of(request)
        day = _day(request)
        kinds: dict[str, Any] = {
            "job_types": _listed(filters.job_type),
            "modules": _listed(filters.module),
        }
        data = await views.overview(svc, principal, customer_ids=[customer_id], **kinds)
        failures = sorted(svc.feed.rules.statuses)
        problems = await views.jobs_of(
            svc, principal, customer_id, statuses=failures, limit=20, **kinds
        )
        recent = await views.jobs_of(svc, principal, customer_id, limit=25, **kinds)
        query, _ = await object_query(
            svc, principal, [customer_id], kinds["job_types"], kinds["modules"], None
        )
        objs = await views.objects_of(svc, query)
        grid = await views.grid(svc, query, 14)
        windows = await views.windows_in_effect(svc, [customer_id])
        ticket_of = await views.alert_tickets(svc, [customer_id])
        on_day = None
        if day is not None:  # a grid cell's jobs: those that started on its business day
            s = svc.settings
            start = expectations.day_start(day, s.zone, s.day_start_hour)
            between = (start, start + timedelta(days=1))
            on_day = await views.jobs_of(
                svc, principal, customer_id, between=between, limit=100, **kinds
            )
    except ApiError as exc:
        return error_page(visit, request, exc)
    name = svc.refresher.name_of(customer_id) or customer_id

    async def build() -> dict[str, Any]:
        return {
            "customer_id": customer_id,
            "name": name,
            "row": data.rows[0] if data.rows else None,
            "conditions": views.CONDITION_TEXT,
            "alerts": [
                _labelled(a) | {"ticket": ticket_of.get(a["alert_key"])} for a in data.alerts
            ],
            "problems": [_labelled(j) for j in problems],
            "recent": [_labelled(j) for j in recent],
            "objects": _objects_with_cells(objs, grid),
            "days": grid["days"],
            "windows": windows,
            "object_text": views.OBJECT_TEXT,
            "cell_text": views.CELL_TEXT,
            "day": day.isoformat() if day else None,
            "on_day": [_labelled(j) for j in on_day or ()],
            "as_of": data.as_of or iso(svc.clock()),
        }

    key: tuple[Any, ...] = (
        "board",
        "customer",
        customer_id,
        principal.customers,
        filters,
        data.etag,
    )
    minute = int(svc.clock().timestamp() // 60)  # objects turn "no result" with time
    key += (data.as_of, svc.notices.count, len(data.alerts), day, minute)
    key += (tuple(w["id"] for w in windows), _tickets_tag(ticket_of))
    return await live_page(
        visit,
        "customer.html",
        key,
        build,
        title=name,
        nav="overview",
        filters=filters.form(),
        filter_fields=("job_type", "module"),
        action=f"/board/customers/{customer_id}",
    )


@router.get("/board/jobs/{customer_id}/{job_id}")
async def job_page(request: Request, customer_id: str, job_id: str) -> Response:
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    svc = visit.svc
    try:
        await _customer_or_404(visit, customer_id)
        await svc.refresher.ensure([customer_id])
        async with svc.sessions() as session:
            row = await repo.get_job(session, customer_id, job_id)
            history = await repo.job_history(session, customer_id, job_id) if row else []
        if row is None:
            raise NotFound(f"no job {shorten(job_id)!r} for this customer")
    except ApiError as exc:
        return error_page(visit, request, exc)
    source = svc.refresher.source(customer_id)
    name = svc.refresher.name_of(customer_id) or customer_id
    job = _labelled(job_out(row, name))

    async def build() -> dict[str, Any]:
        return {
            "job": job,
            "name": name,
            "history": [
                {
                    "at": iso(h.changed_at),
                    "from": views.label_of(catalog.STATUS, h.previous_status)
                    if h.previous_status
                    else None,
                    "to": views.label_of(catalog.STATUS, h.status),
                    "to_name": h.status,
                }
                for h in history
            ],
            "source": source,
            "as_of": iso(source.fetched_at) or iso(svc.clock()),
        }

    key: tuple[Any, ...] = (
        "board",
        "job",
        customer_id,
        job_id,
        job["last_modified"],
        job["fetched_at"],
    )
    key += (len(history), source.state, iso(source.fetched_at))
    return await live_page(
        visit, "job.html", key, build, title=f"Job {job_id}", nav="overview", filters=None
    )
