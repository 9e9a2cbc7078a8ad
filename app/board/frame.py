"""The frame of every board page: who is visiting (the session, `Visit`), the security
headers, rendering, and the live part.

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
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from app.access.keys import ANYONE, Principal
from app.api.deps import Services
from app.api.errors import ApiError
from app.board.filters import Filters
from app.board.sessions import COOKIE, DEMO, DEMO_SUBJECT, Session, Sessions
from app.config import Settings

HERE = Path(__file__).parent
HTMX_VERSION = "2.0.11"
POLL_SECONDS = 2
CSRF_SLOT = "__board_csrf__"
"""Stands for the session's CSRF token in a cached live part (the part is shared by
sessions; the token is put in per response)."""

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


@dataclass
class Board:
    """What the board needs besides the services: its templates and its sessions."""

    templates: jinja2.Environment
    sessions: Sessions
    settings: Settings


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


def board_of(request: Request) -> Board:
    board: Board = request.app.state.board
    return board


def services_of(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def session_of(request: Request) -> Session | None:
    svc = services_of(request)
    return board_of(request).sessions.read(request.cookies.get(COOKIE), svc.clock())


def visit_of(request: Request) -> Visit | None:
    """Who is signed in: None when nobody is (and the board does not open signed in)."""
    svc, board = services_of(request), board_of(request)
    session = session_of(request)
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


def set_cookie(response: Response, request: Request, board: Board, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        board.sessions.encode(session),
        max_age=board.sessions.seconds if session.subject is not None else None,
        path="/board",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/board/login?" + urlencode({"next": target})
    if request.headers.get("hx-request"):
        # A poll of a page whose sign-in ended: the whole page goes to the sign-in.
        return Response(status_code=204, headers={"HX-Redirect": location, **HEADERS})
    return RedirectResponse(location, status_code=303, headers=HEADERS)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a board page of this origin, nothing else."""
    if value and value.startswith("/board") and not value.startswith("//") and "\\" not in value:
        return value
    return "/board"


# -- rendering -----------------------------------------------------------------------------


def render(
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
        who=who_of(visit) if visit else None,
        csrf=visit.csrf if visit else (board.sessions.csrf_token(session) if session else ""),
        htmx_version=HTMX_VERSION,
        session_hours=settings.board_session_hours,
        **context,
    )
    response = HTMLResponse(page, status_code=status, headers=HEADERS)
    if visit is not None and visit.new_cookie:
        set_cookie(response, visit.request, board, visit.session)
    return response


def who_of(visit: Visit) -> str:
    p = visit.principal
    if p is DEMO:
        return "the demo"
    if p is ANYONE:
        return "anyone (no key needed)"
    if p.name == "API_KEYS":
        return "a key of API_KEYS"
    return f"key {p.name!r}"


def error_page(visit: Visit | None, request: Request, exc: ApiError) -> HTMLResponse:
    return render(
        board_of(request),
        "error.html",
        status=exc.status,
        visit=visit,
        title={404: "Not found", 422: "Not a filter the board knows"}.get(exc.status, "Error"),
        detail=exc.detail,
    )


async def live_page(
    visit: Visit,
    template: str,
    key: tuple[Any, ...],
    build: Callable[[], Awaitable[dict[str, Any]]],
    **frame: Any,
) -> Response:
    """A page with a live part: the part from the cache (or built), 204 to a poll that
    shows it already, the part alone to a poll that does not, else the whole page."""
    html, version = await live_part(visit, template, key, build)
    return serve_live(visit, html, version, **frame)


async def live_part(
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


def serve_live(visit: Visit, html: str, version: str, **frame: Any) -> Response:
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
    return render(visit.board, "page.html", visit=visit, live=Markup(live), **frame)  # noqa: S704


def quick_key(visit: Visit, page: str, filters: Filters) -> tuple[Any, ...]:
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
