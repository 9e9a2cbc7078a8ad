"""`GET /summary`: the morning view. Jobs grouped by customer, status, job type or module,
with the filters of `/jobs`: counts, the last success, hours since, the 7-day success rate,
and per customer a health score.

Health (0..100), per customer, is the sum of three parts:
- recency, 40: full when the last success started at most 24 hours ago, falling in a straight
  line to 0 at 72 hours (0 with no success at all);
- the 7-day success rate, 40 × `success_rate_7d` (0 when nothing finished in 7 days);
- alerts, 20: less 10 per open critical alert and 5 per open warning, down to 0; snoozed
  alerts do not count.

Served from memory like `/jobs`: the database's aggregates are kept under the filters and
the data version of the customers covered (and the minute, as "7 days" and "hours since"
move with time); the answer is rebuilt from them when a customer's state or an alert moves.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app import catalog
from app.access.keys import Principal
from app.api import schemas
from app.api.common import covered, servable, source_out
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.etags import dumps, etag_of, json_answer, matches, not_modified
from app.api.filters import JobFilters, JobFiltersDep
from app.api.jobs import MaxAge
from app.clock import iso
from app.store import alerts as stored_alerts
from app.store import repo

router = APIRouter(tags=["summary"], dependencies=[Authorized, SafeParams])

GroupBy = Literal["customer", "status", "job_type", "module"]
WINDOW = timedelta(days=7)
RECENT_HOURS = 24.0
GONE_HOURS = 72.0

_CATALOG_OF = {"status": catalog.STATUS, "job_type": catalog.JOB_TYPE, "module": catalog.MODULE}


def health(
    hours_since_success: float | None, success_rate_7d: float | None, open_alerts: dict[str, int]
) -> int:
    """The documented health score (module docstring)."""
    if hours_since_success is None:
        recency = 0.0
    elif hours_since_success <= RECENT_HOURS:
        recency = 40.0
    else:
        left = (GONE_HOURS - hours_since_success) / (GONE_HOURS - RECENT_HOURS)
        recency = 40.0 * max(0.0, left)
    rate = 40.0 * (success_rate_7d or 0.0)
    alerts = max(0, 20 - 10 * open_alerts.get("critical", 0) - 5 * open_alerts.get("warning", 0))
    return round(recency + rate + alerts)


def _label(group_by: GroupBy, key: str, svc: Services) -> str | None:
    if group_by == "customer":
        return svc.refresher.name_of(key)
    cat = _CATALOG_OF[group_by]
    codes = cat.codes(key)
    return cat.label(min(codes)) if codes else None


@router.get(
    "/summary",
    operation_id="get_summary",
    summary="The morning view: jobs grouped, with last success, 7-day rate and health",
    response_model=schemas.SummaryPage,
    responses=schemas.error_responses(304, 401, 422, 503),
)
async def get_summary(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    filters: JobFiltersDep,
    group_by: Annotated[GroupBy, Query(description="How to group the jobs.")] = "customer",
    max_age: MaxAge = None,
) -> Response:
    answer = functools.partial(
        answer_summary, svc, principal, filters, group_by=group_by, max_age=max_age
    )
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_summary(
    svc: Services,
    principal: Principal,
    filters: JobFilters,
    headers: Headers,
    *,
    group_by: GroupBy,
    max_age: int | None,
) -> Response:
    refresher = svc.refresher
    in_scope, named = await covered(refresher, filters.customer_ids, principal)
    freshness = await refresher.ensure(in_scope, max_age=max_age, everyone=named is None)
    errors = freshness.errors
    now = svc.clock()
    minute = int(now.timestamp() // 60)
    version = refresher.version_of(named)
    stats_key = ("summary", filters.key, principal.customers, group_by, version, errors, minute)
    key = (stats_key, refresher.epoch, svc.notices.count)
    cached: tuple[bytes, str] | None = svc.answers.get(key)
    if cached is None:
        readable = servable(in_scope, named, errors)
        query = filters.query(readable, limit=1, after=None)
        since = datetime.fromtimestamp(minute * 60, now.tzinfo) - WINDOW

        async def build_stats() -> dict[str, repo.GroupStats]:
            async with svc.sessions() as session:
                built = await repo.summarize(
                    session,
                    query,
                    group_by,
                    since=since,
                    failures=sorted(svc.feed.rules.statuses),
                )
            if refresher.version_of(named) == version:
                svc.answers.put(stats_key, built, 200 * len(built) + 100)
            return built

        async def build() -> tuple[bytes, str]:
            stats: dict[str, repo.GroupStats] | None = svc.answers.get(stats_key)
            if stats is None:
                stats = await svc.answers.build_once(stats_key, build_stats)
            alerts: dict[str, dict[str, int]] = {}
            if group_by == "customer":
                async with svc.sessions() as session:
                    alerts = await stored_alerts.open_alert_counts(session, now)
            encoded = dumps(_items(svc, filters, group_by, in_scope, stats, alerts, now))
            # The tag names the items themselves: the keys above move every minute (and with
            # every refresh), the answer only when something in it does.
            built = (encoded, etag_of(encoded))
            svc.answers.put(key, built, len(encoded))
            return built

        cached = await svc.answers.build_once(key, build)
    items, digest = cached
    etag = etag_of(digest, freshness.view.tag)
    if matches(headers, etag):
        return not_modified(etag, freshness)
    content = b"".join(
        (
            b'{"group_by":',
            dumps(group_by),
            b',"items":',
            items,
            b',"next_cursor":null,"freshness":',
            dumps(freshness.view.summary),
            b',"sources":',
            dumps([source_out(s) for s in freshness.sources]),
            b"}",
        )
    )
    return json_answer(content, etag, freshness)


def _narrowed(filters: JobFilters) -> bool:
    """Whether the filters select jobs (not only customers): then a customer without a
    matching job is left out rather than shown empty."""
    return any(
        v is not None
        for v in (
            filters.statuses,
            filters.job_types,
            filters.modules,
            filters.start_after,
            filters.start_before,
            filters.modified_since,
            filters.q,
        )
    )


def _items(
    svc: Services,
    filters: JobFilters,
    group_by: GroupBy,
    in_scope: list[str],
    stats: dict[str, repo.GroupStats],
    alerts: dict[str, dict[str, int]],
    now: datetime,
) -> list[dict[str, Any]]:
    keys = list(stats)
    if group_by == "customer" and not _narrowed(filters):
        keys = list(dict.fromkeys([*in_scope, *keys]))  # a customer with no job at all too
    if group_by == "customer":
        keys = [k for k in keys if k in set(in_scope)]
    items = []
    for key in keys:
        g = stats.get(key) or repo.GroupStats({})
        hours = None
        if g.last_success_at is not None:
            hours = round(max(0.0, (now - g.last_success_at).total_seconds()) / 3600, 1)
        rate = round(g.successes_7d / g.outcomes_7d, 4) if g.outcomes_7d else None
        item: dict[str, Any] = {
            "key": key,
            "label": _label(group_by, key, svc),
            "counts": dict(sorted(g.counts.items())),
            "total": sum(g.counts.values()),
            "last_success_at": iso(g.last_success_at),
            "hours_since_success": hours,
            "success_rate_7d": rate,
        }
        if group_by == "customer":
            open_alerts = alerts.get(key, {})
            item["health"] = health(hours, rate, open_alerts)
            item["open_alerts"] = {
                "critical": open_alerts.get("critical", 0),
                "warning": open_alerts.get("warning", 0),
            }
            source = svc.refresher.source(key)
            item["freshness"] = {
                "customers": 1,
                **{s: int(source.state == s) for s in ("fresh", "stale", "refreshing", "error")},
                "oldest_fetched_at": iso(source.fetched_at),
            }
        items.append(item)
    if group_by == "customer":
        # Worst first, so a frontend shows what needs attention at the top.
        items.sort(key=lambda i: (i["health"], i["key"]))
    else:
        items.sort(key=lambda i: i["key"])
    return items
