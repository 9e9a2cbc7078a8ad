"""The board's routes: `/` -> `/board`, the overview, alerts (with snoozing), a customer, a
job, sign-in and sign-out, and the vendored static files.

Each page is a frame (header, filters, sign-out form) around a live part, `#live`. The live
part is rendered once per data version and kept in the answer cache; htmx asks for it again
every `POLL_SECONDS` with the version it shows (`v`), and gets 204 while it is the same, so
an open board costs a dictionary lookup a poll, and a change shows within seconds without a
reload. Without JavaScript every page is plain HTML and forms, and a reload shows what is new.

Board pages carry a Content-Security-Policy that allows only their own origin (no inline
script or style at all), and are never cached by the browser.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup

from app import catalog
from app.access.keys import ANYONE, Principal
from app.api.common import scope, visible
from app.api.deps import Services
from app.api.errors import ApiError, InvalidParameter, NotFound
from app.api.guard import rate_limited
from app.api.params import enum_filter, shorten, split_values
from app.board import views
from app.board.sessions import COOKIE, CSRF_FIELD, DEMO, DEMO_SUBJECT, Session, Sessions
from app.clock import iso
from app.config import Settings
from app.store import feed, repo

HERE = Path(__file__).parent
HTMX_VERSION = "2.0.11"
POLL_SECONDS = 2
CSRF_SLOT = "__board_csrf__"
"""Stands for the session's CSRF token in a cached live part (the part is shared by
sessions; the token is put in per response)."""

SNOOZE_HOURS = (1, 4, 24, 72, 168)
FORM_TYPE = "application/x-www-form-urlencoded"
SEVERITIES = ("critical", "warning")

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


@dataclass
class Board:
    """What the board needs besides the services: its templates and its sessions."""

    templates: jinja2.Environment
    sessions: Sessions
    settings: Settings


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
    app.include_router(router)
    app.mount("/board/static", StaticFiles(directory=HERE / "static"), name="board-static")


@dataclass
class Visit:
    """One request to the board by someone signed in."""

    request: Request
    svc: Services
    board: Board
    principal: Principal
    session: Session
    new_cookie: bool

    @property
    def csrf(self) -> str:
        return self.board.sessions.csrf_token(self.session)


# -- sessions ------------------------------------------------------------------------------


def _board(request: Request) -> Board:
    board: Board = request.app.state.board
    return board


def _services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _session(request: Request) -> Session | None:
    svc = _services(request)
    return _board(request).sessions.read(request.cookies.get(COOKIE), svc.clock())


def _visit(request: Request) -> Visit | None:
    """Who is signed in: None when nobody is (and the board does not open signed in)."""
    svc, board = _services(request), _board(request)
    session = _session(request)
    if session is not None and session.subject is not None:
        principal = board.sessions.principal_of(session.subject, svc.keys)
        if principal is not None:
            return Visit(request, svc, board, principal, session, new_cookie=False)
    if board.sessions.opens_signed_in or not svc.keys.required:
        # DEMO (or no key needed at all): the board opens signed in.
        session = board.sessions.signed_in(DEMO_SUBJECT, svc.clock())
        principal = DEMO if svc.keys.required else ANYONE
        return Visit(request, svc, board, principal, session, new_cookie=True)
    return None


def _set_cookie(response: Response, request: Request, board: Board, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        board.sessions.encode(session),
        max_age=board.sessions.seconds if session.subject is not None else None,
        path="/board",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/board/login?" + urlencode({"next": target})
    if request.headers.get("hx-request"):
        # A poll of a page whose sign-in ended: the whole page goes to the sign-in.
        return Response(status_code=204, headers={"HX-Redirect": location, **HEADERS})
    return RedirectResponse(location, status_code=303, headers=HEADERS)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a board page of this origin, nothing else."""
    if value and value.startswith("/board") and not value.startswith("//") and "\\" not in value:
        return value
    return "/board"


# -- rendering -----------------------------------------------------------------------------


def _html(
    board: Board,
    template: str,
    *,
    status: int = 200,
    visit: Visit | None = None,
    session: Session | None = None,
    **context: Any,
) -> HTMLResponse:
    settings = board.settings
    page = board.templates.get_template(template).render(
        demo=settings.demo,
        visit=visit,
        who=_who(visit) if visit else None,
        csrf=visit.csrf if visit else (board.sessions.csrf_token(session) if session else ""),
        htmx_version=HTMX_VERSION,
        session_hours=settings.board_session_hours,
        **context,
    )
    response = HTMLResponse(page, status_code=status, headers=HEADERS)
    if visit is not None and visit.new_cookie:
        _set_cookie(response, visit.request, board, visit.session)
    return response


def _who(visit: Visit) -> str:
    p = visit.principal
    if p is DEMO:
        return "the demo"
    if p is ANYONE:
        return "anyone (no key needed)"
    if p.name == "API_KEYS":
        return "a key of API_KEYS"
    return f"key {p.name!r}"


def _error(visit: Visit | None, request: Request, exc: ApiError) -> HTMLResponse:
    return _html(
        _board(request),
        "error.html",
        status=exc.status,
        visit=visit,
        title={404: "Not found", 422: "Not a filter the board knows"}.get(exc.status, "Error"),
        detail=exc.detail,
    )


async def _live_page(
    visit: Visit,
    template: str,
    key: tuple[Any, ...],
    build: Callable[[], Awaitable[dict[str, Any]]],
    **frame: Any,
) -> Response:
    """A page with a live part: the part from the cache (or built), 204 to a poll that
    shows it already, the part alone to a poll that does not, else the whole page."""
    html, version = await _live_part(visit, template, key, build)
    return _serve_live(visit, html, version, **frame)


async def _live_part(
    visit: Visit,
    template: str,
    key: tuple[Any, ...],
    build: Callable[[], Awaitable[dict[str, Any]]],
) -> tuple[str, str]:
    """The live part for `key`, rendered once (with a slot for the CSRF token), and its
    version: a digest of it, which polls send back."""
    svc = visit.svc
    cached: tuple[str, str] | None = svc.answers.get(key)
    if cached is None:
        context = await build()
        html = visit.board.templates.get_template(template).render(csrf_slot=CSRF_SLOT, **context)
        cached = (html, hashlib.sha256(html.encode()).hexdigest()[:16])
        svc.answers.put(key, cached, len(html))
    return cached


def _serve_live(visit: Visit, html: str, version: str, **frame: Any) -> Response:
    request = visit.request
    if request.headers.get("hx-request") and request.query_params.get("v") == version:
        return Response(status_code=204, headers=HEADERS)
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "v"]
    poll = f"{request.url.path}?{urlencode([*query, ('v', version)])}"
    live = visit.board.templates.get_template("live.html").render(
        poll=poll,
        poll_seconds=POLL_SECONDS,
        part=Markup(html.replace(CSRF_SLOT, visit.csrf)),  # noqa: S704 (rendered, escaped)
    )
    if request.headers.get("hx-request"):
        return HTMLResponse(live, headers=HEADERS)
    return _html(visit.board, "page.html", visit=visit, live=Markup(live), **frame)  # noqa: S704


def _quick_key(visit: Visit, page: str, filters: Filters) -> tuple[Any, ...]:
    """What a page's live part depends on, read from memory alone: every customer's data
    version and state (the ledger's epoch), this process's alert changes (and those other
    processes told it of), and the minute ("hours since" moves with it). While it holds, and
    no customer went stale with time, the part kept under it is served without reading
    anything, so an open board (a poll every 2 s, 1,000 customers) costs a lookup."""
    refresher = visit.svc.refresher
    minute = int(visit.svc.clock().timestamp() // 60)
    return (
        "board-quick",
        page,
        visit.principal.customers,
        filters,
        refresher.version_of(None),
        refresher.epoch,
        visit.svc.notices.count,
        minute,
    )


# -- filters -------------------------------------------------------------------------------


def _many(request: Request, name: str) -> list[str] | None:
    return split_values(request.query_params.getlist(name)) or None


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> list[str] | None:
    values = _many(request, name)
    for value in values or ():
        if value not in allowed:
            raise InvalidParameter(f"{name}: {shorten(value)!r} is not one of {', '.join(allowed)}")
    return values


def _text(request: Request, name: str) -> str | None:
    value = (request.query_params.get(name) or "").strip()
    if len(value) > 200:
        raise InvalidParameter(f"{name}: at most 200 characters")
    return value or None


@dataclass(frozen=True)
class Filters:
    """The filters of a board page, as the URL holds them (so a view can be shared)."""

    customer: tuple[str, ...] | None
    state: tuple[str, ...] | None
    job_type: tuple[str, ...] | None
    module: tuple[str, ...] | None
    severity: tuple[str, ...] | None
    q: str | None

    @classmethod
    def of(cls, request: Request) -> Filters:
        def t(values: list[str] | None) -> tuple[str, ...] | None:
            return tuple(values) if values else None

        job_types = enum_filter("job_type", _many(request, "job_type"), catalog.JOB_TYPE)
        modules = enum_filter("module", _many(request, "module"), catalog.MODULE)
        return cls(
            customer=t(_many(request, "customer")),
            state=t(_choice(request, "state", views.CONDITIONS)),
            job_type=t(job_types),
            module=t(modules),
            severity=t(_choice(request, "severity", SEVERITIES)),
            q=_text(request, "q"),
        )

    @property
    def active(self) -> bool:
        return any(getattr(self, f) for f in ("customer", "state", "job_type", "module", "q")) or (
            self.severity is not None
        )

    def form(self) -> dict[str, Any]:
        """The filter form's choices, with what is chosen."""
        return {
            "q": self.q or "",
            "state": [
                (c, views.CONDITION_TEXT[c][1], c in (self.state or ())) for c in views.CONDITIONS
            ],
            "severity": [(s, s, s in (self.severity or ())) for s in SEVERITIES],
            "job_type": [
                (e.name, e.label, e.name in (self.job_type or ())) for e in catalog.JOB_TYPE.entries
            ],
            "module": [
                (e.name, e.label, e.name in (self.module or ())) for e in catalog.MODULE.entries
            ],
            "customer": list(self.customer or ()),
        }


def _matches(q: str | None, *texts: str | None) -> bool:
    if not q:
        return True
    needle = q.casefold()
    return any(needle in (t or "").casefold() for t in texts)


# -- pages ---------------------------------------------------------------------------------


@router.get("/")
async def root() -> Response:
    return RedirectResponse("/board", status_code=307)


@router.get("/board")
async def overview_page(request: Request) -> Response:
    visit = _visit(request)
    if visit is None:
        return _to_login(request)
    frame: dict[str, Any] = {
        "title": "Overview",
        "nav": "overview",
        "filter_fields": ("q", "state", "severity", "job_type", "module"),
        "action": "/board",
    }
    try:
        filters = Filters.of(request)
        frame["filters"] = filters.form()
        quick = _quick_key(visit, "overview", filters)
        kept: tuple[str, str, datetime | None] | None = visit.svc.answers.get(quick)
        if kept is not None and (kept[2] is None or visit.svc.clock() < kept[2]):
            return _serve_live(visit, kept[0], kept[1], **frame)
        if filters.customer:
            await scope(visit.svc.refresher, list(filters.customer), visit.principal)
        data = await views.overview(
            visit.svc,
            visit.principal,
            customer_ids=list(filters.customer) if filters.customer else None,
            job_types=list(filters.job_type) if filters.job_type else None,
            modules=list(filters.module) if filters.module else None,
        )
    except ApiError as exc:
        return _error(visit, request, exc)

    async def build() -> dict[str, Any]:
        rows = [
            r
            for r in data.rows
            if _matches(filters.q, r.name, r.customer_id)
            and (not filters.state or r.condition in filters.state)
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
            "as_of": data.as_of or iso(visit.svc.clock()),
            "freshness": data.freshness,
            "filtered": filters.active,
        }

    key = (
        "board",
        "overview",
        visit.principal.customers,
        filters,
        data.etag,
        data.as_of,
        visit.svc.notices.count,
        len(data.alerts),
    )
    html, version = await _live_part(visit, "overview.html", key, build)
    if _quick_key(visit, "overview", filters) == quick:  # nothing moved while it was built
        named = list(filters.customer) if filters.customer else None
        in_scope = await scope(visit.svc.refresher, named, visit.principal)
        everyone = visit.principal.customers is None and not filters.customer
        view = visit.svc.refresher.view(in_scope, everyone=everyone)
        visit.svc.answers.put(quick, (html, version, view.valid_until), len(html))
    return _serve_live(visit, html, version, **frame)


@router.get("/board/alerts")
async def alerts_page(request: Request) -> Response:
    visit = _visit(request)
    if visit is None:
        return _to_login(request)
    svc = visit.svc
    try:
        filters = Filters.of(request)
        if filters.customer:
            await scope(svc.refresher, list(filters.customer), visit.principal)
        alerts = await views.open_alerts(
            svc,
            visit.principal,
            customer_ids=list(filters.customer) if filters.customer else None,
            job_types=list(filters.job_type) if filters.job_type else None,
            modules=list(filters.module) if filters.module else None,
            severities=list(filters.severity) if filters.severity else None,
        )
        in_scope = await scope(svc.refresher, None, visit.principal)
    except ApiError as exc:
        return _error(visit, request, exc)
    view = svc.refresher.view(in_scope, everyone=visit.principal.customers is None)

    async def build() -> dict[str, Any]:
        now = iso(svc.clock()) or ""
        rows = []
        for a in alerts:
            name = svc.refresher.name_of(a["customer_id"]) or a["customer_id"]
            if not _matches(filters.q, name, a["alert_key"], a["job_type"], a["module"]):
                continue
            rows.append(
                a
                | {
                    "customer_name": name,
                    "job_type_label": views.label_of(catalog.JOB_TYPE, a["job_type"]),
                    "module_label": views.label_of(catalog.MODULE, a["module"]),
                    "snoozed": bool(a["snoozed_until"]) and a["snoozed_until"] > now,
                }
            )
        rows.sort(key=lambda a: (a["severity"] != "critical", a["snoozed"], a["opened_at"] or ""))
        return {
            "alerts": rows,
            "as_of": iso(view.oldest_fetched_at) or now,
            "hours": SNOOZE_HOURS,
            "back": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        }

    key = (
        "board",
        "alerts",
        visit.principal.customers,
        filters,
        svc.notices.count,
        view.tag,
        iso(view.oldest_fetched_at),
        len(alerts),
        int(svc.clock().timestamp() // 60),
    )
    return await _live_page(
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


async def _customer_or_404(visit: Visit, customer_id: str) -> None:
    known = await scope(visit.svc.refresher, None, visit.principal)
    if customer_id not in known or not visible(visit.principal, customer_id):
        # For a key limited to some customers, the others do not exist.
        raise NotFound(f"no customer {shorten(customer_id)!r}")


@router.get("/board/customers/{customer_id}")
async def customer_page(request: Request, customer_id: str) -> Response:
    visit = _visit(request)
    if visit is None:
        return _to_login(request)
    svc = visit.svc
    try:
        await _customer_or_404(visit, customer_id)
        filters = Filters.of(request)
        job_types = list(filters.job_type) if filters.job_type else None
        modules = list(filters.module) if filters.module else None
        data = await views.overview(
            svc, visit.principal, customer_ids=[customer_id], job_types=job_types, modules=modules
        )
        problems = await views.jobs_of(
            svc,
            visit.principal,
            customer_id,
            statuses=sorted(svc.feed.rules.statuses),
            job_types=job_types,
            modules=modules,
            limit=20,
        )
        recent = await views.jobs_of(
            svc, visit.principal, customer_id, job_types=job_types, modules=modules, limit=25
        )
    except ApiError as exc:
        return _error(visit, request, exc)
    name = svc.refresher.name_of(customer_id) or customer_id

    async def build() -> dict[str, Any]:
        row = data.rows[0] if data.rows else None
        alerts = [
            a
            | {
                "job_type_label": views.label_of(catalog.JOB_TYPE, a["job_type"]),
                "module_label": views.label_of(catalog.MODULE, a["module"]),
            }
            for a in data.alerts
        ]
        return {
            "customer_id": customer_id,
            "name": name,
            "row": row,
            "conditions": views.CONDITION_TEXT,
            "alerts": alerts,
            "problems": [_job_view(j) for j in problems],
            "recent": [_job_view(j) for j in recent],
            "as_of": data.as_of or iso(svc.clock()),
        }

    key = (
        "board",
        "customer",
        customer_id,
        visit.principal.customers,
        filters,
        data.etag,
        data.as_of,
        svc.notices.count,
        len(data.alerts),
    )
    return await _live_page(
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


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    return job | {
        "job_type_label": views.label_of(catalog.JOB_TYPE, job["job_type"]),
        "module_label": views.label_of(catalog.MODULE, job["module"]),
        "status_label": views.label_of(catalog.STATUS, job["status"]),
    }


@router.get("/board/jobs/{customer_id}/{job_id}")
async def job_page(request: Request, customer_id: str, job_id: str) -> Response:
    visit = _visit(request)
    if visit is None:
        return _to_login(request)
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
        return _error(visit, request, exc)
    source = svc.refresher.source(customer_id)
    name = svc.refresher.name_of(customer_id) or customer_id
    changes = [(h.changed_at, h.previous_status, h.status) for h in history]

    async def build() -> dict[str, Any]:
        from app.api.jobs import job_out

        job = _job_view(job_out(row, name))
        return {
            "job": job,
            "name": name,
            "history": [
                {
                    "at": iso(at),
                    "from": views.label_of(catalog.STATUS, before) if before else None,
                    "to": views.label_of(catalog.STATUS, after),
                    "to_name": after,
                }
                for at, before, after in changes
            ],
            "source": source,
            "as_of": iso(source.fetched_at) or iso(svc.clock()),
        }

    key = (
        "board",
        "job",
        customer_id,
        job_id,
        iso(row.last_modified),
        iso(row.last_seen_at),
        len(changes),
        source.state,
        iso(source.fetched_at),
    )
    return await _live_page(
        visit, "job.html", key, build, title=f"Job {job_id}", nav="overview", filters=None
    )


# -- changes: snooze, sign in, sign out -----------------------------------------------------


MAX_FORM_BYTES = 16_384


async def _form(request: Request) -> dict[str, str]:
    """A board form's fields (urlencoded, as browsers send them; the first of each name).
    Anything else, or anything larger than a board form could be, reads as empty, so its
    CSRF check fails."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPE):
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def _refused(request: Request, visit: Visit | None) -> HTMLResponse:
    return _html(
        _board(request),
        "error.html",
        status=403,
        visit=visit,
        title="This form has expired",
        detail=(
            "The form's security token is missing or belongs to another sign-in, so nothing "
            "was changed. Go back, reload the page and try again."
        ),
    )


@router.post("/board/alerts/{alert_key}/snooze")
async def snooze(request: Request, alert_key: str) -> Response:
    visit = _visit(request)
    if visit is None:
        return _to_login(request)
    form = await _form(request)
    if visit.new_cookie or not visit.board.sessions.csrf_ok(visit.session, form.get(CSRF_FIELD)):
        return _refused(request, visit)
    svc = visit.svc
    try:
        hours = int(form.get("hours", ""))
    except ValueError:
        hours = 0
    if hours not in SNOOZE_HOURS and hours != 0:
        return _error(
            visit,
            request,
            InvalidParameter(
                f"hours: one of {', '.join(map(str, SNOOZE_HOURS))} (or 0 to lift the snooze)"
            ),
        )
    reason = (form.get("reason") or "").strip()[:500] or None
    now = svc.clock()
    until = now + timedelta(hours=hours)
    customer_id = alert_key.rsplit(":", 2)[0]
    alert = (
        await svc.writer.run_plan(
            lambda dialect: feed.snooze(dialect, alert_key, until, reason, now)
        )
        if visible(visit.principal, customer_id)
        else None
    )
    if alert is None:
        return _error(visit, request, NotFound(f"no open alert {shorten(alert_key)!r}"))
    svc.notices.notify()
    return RedirectResponse(_safe_next(form.get("back")), status_code=303, headers=HEADERS)


@router.get("/board/login")
async def login_page(request: Request) -> Response:
    board = _board(request)
    session = _session(request) or board.sessions.anonymous()
    response = _html(
        board,
        "login.html",
        session=session,
        title="Sign in",
        next=_safe_next(request.query_params.get("next")),
        message=None,
        opens_signed_in=board.sessions.opens_signed_in,
    )
    _set_cookie(response, request, board, session)
    return response


@router.post("/board/login")
async def login(request: Request) -> Response:
    board, svc = _board(request), _services(request)
    session = _session(request)
    form = await _form(request)
    target = _safe_next(form.get("next"))
    if not board.sessions.csrf_ok(session, form.get(CSRF_FIELD)):
        return _refused(request, None)
    # Guesses are counted per client address, as requests without a key are.
    wait = rate_limited(svc.limits, svc.metrics, svc.settings, ANYONE, request.scope)
    key = (form.get("key") or "").strip()
    principal = None
    if wait is None and key:
        principal = svc.keys.authenticate([key])
        if principal is None:
            principal = await svc.keys.look_up([key], svc.sessions)
    if principal is None:
        message = (
            "Too many attempts: wait a minute and try again."
            if wait is not None
            else "That key is not valid. Paste an API key: one of API_KEYS, or one made "
            "with jobs-gateway keys create."
        )
        return _html(
            board,
            "login.html",
            status=429 if wait is not None else 401,
            session=session,
            title="Sign in",
            next=target,
            message=message,
            opens_signed_in=board.sessions.opens_signed_in,
        )
    fresh = board.sessions.signed_in(board.sessions.subject_of(principal, key), svc.clock())
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    _set_cookie(response, request, board, fresh)
    return response


@router.post("/board/logout")
async def logout(request: Request) -> Response:
    board = _board(request)
    session = _session(request)
    form = await _form(request)
    if not board.sessions.csrf_ok(session, form.get(CSRF_FIELD)):
        return _refused(request, _visit(request))
    response = RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    _set_cookie(response, request, board, board.sessions.anonymous())
    return response
