"""The filters of a board page, as the URL holds them, so a view can be bookmarked and
shared: customer, state, severity, job type, module, and a search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from app import catalog
from app.api.errors import InvalidParameter
from app.api.params import enum_filter, shorten, split_values
from app.board import views

SEVERITIES = ("critical", "warning")


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
            state=t(_choice(request, "state", views.OVERVIEW_STATES)),
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
                (c, views.FILTER_TEXT[c][1], c in (self.state or ())) for c in views.OVERVIEW_STATES
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


def matches(q: str | None, *texts: str | None) -> bool:
    if not q:
        return True
    needle = q.casefold()
    return any(needle in (t or "").casefold() for t in texts)


GRID_SHOWS = ("problems", "all")
GRID_PAGE_ROWS = 100
"""Objects a grid page shows at most; the rest are on the next pages."""


def _number(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = (request.query_params.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdecimal() or not low <= int(raw) <= high:
        raise InvalidParameter(f"{name}: {shorten(raw)!r} is not a whole number {low}..{high}")
    return int(raw)


@dataclass(frozen=True)
class GridFilters:
    """The grid's URL: the filters of `/objects`, `days`, which objects (`show`: those not
    ok, the default, or all) and the page."""

    customer: tuple[str, ...] | None
    job_type: tuple[str, ...] | None
    module: tuple[str, ...] | None
    state: tuple[str, ...] | None
    days: int
    show: str
    page: int

    @classmethod
    def of(cls, request: Request) -> GridFilters:
        def t(values: list[str] | None) -> tuple[str, ...] | None:
            return tuple(values) if values else None

        shows = _choice(request, "show", GRID_SHOWS)
        return cls(
            customer=t(_many(request, "customer")),
            job_type=t(enum_filter("job_type", _many(request, "job_type"), catalog.JOB_TYPE)),
            module=t(enum_filter("module", _many(request, "module"), catalog.MODULE)),
            state=t(_choice(request, "state", views.OBJECT_STATES)),
            days=_number(request, "days", 14, 1, 92),
            show=shows[-1] if shows else "problems",
            page=_number(request, "page", 1, 1, 10_000),
        )

    def form(self) -> dict[str, Any]:
        return {
            "q": "",
            "state": [
                (s, views.OBJECT_TEXT[s][1], s in (self.state or ()))
                for s in views.OBJECT_STATES
                if s != "retired"  # a retired object leaves the grid
            ],
            "severity": [],
            "job_type": [
                (e.name, e.label, e.name in (self.job_type or ())) for e in catalog.JOB_TYPE.entries
            ],
            "module": [
                (e.name, e.label, e.name in (self.module or ())) for e in catalog.MODULE.entries
            ],
            "customer": list(self.customer or ()),
            "days": self.days,
            "show": self.show,
        }

    def link(self, **changes: Any) -> str:
        """This grid's URL with some of its parameters changed."""
        values = {
            "customer": ",".join(self.customer or ()),
            "job_type": ",".join(self.job_type or ()),
            "module": ",".join(self.module or ()),
            "state": ",".join(self.state or ()),
            "days": self.days if self.days != 14 else "",
            "show": self.show if self.show != "problems" else "",
            "page": self.page if self.page != 1 else "",
        } | changes
        query = urlencode([(k, v) for k, v in values.items() if v not in ("", None)])
        return "/board/grid" + (f"?{query}" if query else "")
