"""What changes something on the board: snoozing an alert, signing in and out. Every form
carries the session's CSRF token; a POST without it changes nothing."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.access.keys import ANYONE
from app.api.alerts import snooze as snooze_alert
from app.api.errors import InvalidParameter, NotFound
from app.api.guard import rate_limited
from app.api.params import shorten
from app.board.frame import (
    HEADERS,
    Visit,
    board_of,
    error_page,
    render,
    safe_next,
    services_of,
    session_of,
    set_cookie,
    to_login,
    visit_of,
)
from app.board.sessions import CSRF_FIELD

router = APIRouter(include_in_schema=False)

SNOOZE_HOURS = (1, 4, 24, 72, 168)
FORM_TYPE = "application/x-www-form-urlencoded"


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


def refused(request: Request, visit: Visit | None) -> HTMLResponse:
    return render(
        board_of(request),
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
    visit = visit_of(request)
    if visit is None:
        return to_login(request)
    form = await _form(request)
    if visit.new_cookie or not visit.board.sessions.csrf_ok(visit.session, form.get(CSRF_FIELD)):
        return refused(request, visit)
    svc = visit.svc
    try:
        hours = int(form.get("hours", ""))
    except ValueError:
        hours = 0
    if hours not in SNOOZE_HOURS and hours != 0:
        return error_page(
            visit,
            request,
            InvalidParameter(
                f"hours: one of {', '.join(map(str, SNOOZE_HOURS))} (or 0 to lift the snooze)"
            ),
        )
    reason = (form.get("reason") or "").strip()[:500] or None
    until = svc.clock() + timedelta(hours=hours)
    if await snooze_alert(svc, visit.principal, alert_key, until, reason) is None:
        return error_page(visit, request, NotFound(f"no open alert {shorten(alert_key)!r}"))
    return RedirectResponse(safe_next(form.get("back")), status_code=303, headers=HEADERS)


@router.get("/board/login")
async def login_page(request: Request) -> Response:
    board = board_of(request)
    session = session_of(request) or board.sessions.anonymous()
    response = render(
        board,
        "login.html",
        session=session,
        title="Sign in",
        next=safe_next(request.query_params.get("next")),
        message=None,
        opens_signed_in=board.sessions.opens_signed_in,
    )
    set_cookie(response, request, board, session)
    return response


@router.post("/board/login")
async def login(request: Request) -> Response:
    board, svc = board_of(request), services_of(request)
    session = session_of(request)
    form = await _form(request)
    target = safe_next(form.get("next"))
    if not board.sessions.csrf_ok(session, form.get(CSRF_FIELD)):
        return refused(request, None)
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
        return render(
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
    set_cookie(response, request, board, fresh)
    return response


@router.post("/board/logout")
async def logout(request: Request) -> Response:
    board = board_of(request)
    session = session_of(request)
    form = await _form(request)
    if not board.sessions.csrf_ok(session, form.get(CSRF_FIELD)):
        return refused(request, visit_of(request))
    response = RedirectResponse("/board/login", status_code=303, headers=HEADERS)
    set_cookie(response, request, board, board.sessions.anonymous())
    return response
