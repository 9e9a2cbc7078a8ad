"""`GET /objects`, `PUT /objects/{key}/expectation` and `GET /grid`.

An answer is kept in memory (`app.api.answers`) under its query, the key's customers, the
data versions of the customers it covers and this process's notice count (it moves with every
alert or object change, every expectation set and maintenance window, here or in another
process), and for `/grid` the business day. What time alone changes (`valid_until`: an object
turning "no result", a day more in its state, a maintenance window starting or ending) is
shown within `KEEP_AT_LEAST`, the sweep's round, in which `object.no_result` is told too: at
20,000 objects some object's day count moves every few seconds, and an answer rebuilt for
each would be rebuilt for nearly every request. `KEEP_AT_MOST` bounds the rest. An answer
that time made old is still served while one rebuild runs behind it; an answer whose data
moved is rebuilt first. A repeated read costs its bytes and no query; a rebuild judges and
encodes off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import Headers

from app import catalog, expectations
from app.access.keys import Principal
from app.alert_rules import alert_key
from app.alerts.objects import (
    Judged,
    Judging,
    grid_cells,
    judge_objects,
    object_out,
    valid_until,
)
from app.alerts.sweeps import SWEEP_SECONDS
from app.api import schemas
from app.api.alerts import _primary
from app.api.common import covered, visible
from app.api.deps import Authorized, PrincipalDep, SafeParams, Services, ServicesDep
from app.api.errors import NotFound
from app.api.etags import dumps
from app.api.filters import JobTypes, Modules
from app.api.params import CustomerIds, choice_filter, enum_filter, shorten, split_values
from app.store import objects, sweep

log = logging.getLogger(__name__)

router = APIRouter(tags=["objects"], dependencies=[Authorized, SafeParams])

STATES = ("ok", "warning", "failure", "no_result", "retired")
KEEP_AT_MOST = timedelta(minutes=5)
"""The longest an answer is kept while nothing this process hears of moves."""
KEEP_AT_LEAST = timedelta(seconds=SWEEP_SECONDS)
"""The shortest: what time alone changes shows within the sweep's round."""


@dataclass(frozen=True, slots=True)
class ObjectQuery:
    """The filters of `/objects` and `/grid` (hashable: it keys kept answers)."""

    customer_ids: tuple[str, ...] | None
    job_types: tuple[str, ...] | None
    modules: tuple[str, ...] | None
    states: tuple[str, ...] | None

    def keeps(self, obj: tuple[str, str, str]) -> bool:
        _, job_type, module = obj
        return (self.job_types is None or job_type in self.job_types) and (
            self.modules is None or module in self.modules
        )


States = Annotated[
    list[str] | None,
    Query(
        description="ok, warning, failure, no_result, retired; repeatable or comma-separated.",
        json_schema_extra={"items": {"type": "string", "enum": list(STATES)}},
    ),
]


async def object_query(
    svc: Services,
    principal: Principal,
    customer_id: list[str] | None,
    job_type: list[str] | None,
    module: list[str] | None,
    state: list[str] | None,
) -> tuple[ObjectQuery, list[str] | None]:
    states = choice_filter("state", state, STATES)
    _, named = await covered(svc.refresher, split_values(customer_id) or None, principal)
    query = ObjectQuery(
        customer_ids=tuple(named) if named is not None else None,
        job_types=_primary(catalog.JOB_TYPE, enum_filter("job_type", job_type, catalog.JOB_TYPE)),
        modules=_primary(catalog.MODULE, enum_filter("module", module, catalog.MODULE)),
        states=tuple(states) if states else None,
    )
    return query, named


def judging_of(svc: Services) -> Judging:
    s = svc.settings
    return Judging(
        failures=frozenset(s.alert_statuses),
        zone=s.zone,
        day_start_hour=s.day_start_hour,
        day_result_rule=s.day_result_rule,
    )


async def _judged(
    svc: Services, query: ObjectQuery, judging: Judging, now: datetime
) -> list[Judged]:
    async with svc.sessions() as session:
        judged = await judge_objects(session, query.customer_ids, judging, now, query.keeps)
    if query.states is not None:
        judged = [j for j in judged if j.assessment.state in query.states]
    return judged


def _key(svc: Services, kind: str, query: ObjectQuery, *more: object) -> tuple[object, ...]:
    names = list(query.customer_ids) if query.customer_ids is not None else None
    version = svc.refresher.version_of(names)
    return (kind, query, *more, version, svc.notices.count)


def _rebuilt(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not rebuild a kept answer", exc_info=future.exception())


async def _answer(
    svc: Services,
    key: tuple[object, ...],
    query: ObjectQuery,
    judging: Judging,
    encode: Callable[[list[Judged], datetime], dict[str, Any]],
) -> Response:
    """The answer kept under `key`; else built once (concurrent misses share the build):
    `query`'s objects judged, `encode(judged, now)` encoded off the loop, and kept until
    `valid_until`. A kept answer that time alone made old is served while it is rebuilt."""

    async def build() -> bytes:
        now = svc.clock()
        judged = await _judged(svc, query, judging, now)
        # Both walk every object: off the loop.
        content, until = await asyncio.to_thread(
            lambda: (dumps(encode(judged, now)), valid_until(judged, now, KEEP_AT_MOST))
        )
        svc.answers.put(key, (max(until, now + KEEP_AT_LEAST), content), len(content))
        return content

    kept = svc.answers.get(key)
    if kept is None:
        content = await svc.answers.build_once(key, build)
    else:
        if svc.clock() >= kept[0] and not svc.answers.building(key):
            svc.answers.start_build(key, build).add_done_callback(_rebuilt)
        content = kept[1]
    return Response(content, media_type="application/json")


@router.get(
    "/objects",
    operation_id="list_objects",
    summary="Protected objects (customer + job type + module) and their expected results",
    response_model=schemas.ObjectPage,
    responses=schemas.error_responses(401, 422, 503),
)
async def list_objects(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    customer_id: CustomerIds = None,
    job_type: JobTypes = None,
    module: Modules = None,
    state: States = None,
) -> Response:
    query, _ = await object_query(svc, principal, customer_id, job_type, module, state)
    answer = functools.partial(answer_objects, svc, query)
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_objects(svc: Services, query: ObjectQuery, headers: Headers) -> Response:
    name = svc.refresher.name_of

    def encode(judged: list[Judged], now: datetime) -> dict[str, Any]:
        items = [object_out(j, name(j.obj[0]), now) for j in judged]
        return {"items": items, "next_cursor": None}

    return await _answer(svc, _key(svc, "objects", query), query, judging_of(svc), encode)


@router.get(
    "/grid",
    operation_id="get_grid",
    summary="Objects by business day: each day's result",
    response_model=schemas.Grid,
    responses=schemas.error_responses(401, 422, 503),
)
async def get_grid(
    request: Request,
    svc: ServicesDep,
    principal: PrincipalDep,
    days: Annotated[int, Query(ge=1, le=92, description="Business days, the last is today.")] = 14,
    customer_id: CustomerIds = None,
    job_type: JobTypes = None,
    module: Modules = None,
    state: States = None,
) -> Response:
    query, _ = await object_query(svc, principal, customer_id, job_type, module, state)
    answer = functools.partial(answer_grid, svc, query, days)
    response = await answer(request.headers)
    svc.fast.remember(request.scope, principal.customers, answer)
    return response


async def answer_grid(svc: Services, query: ObjectQuery, count: int, headers: Headers) -> Response:
    judging = judging_of(svc)
    day_list = expectations.business_days(svc.clock(), count, judging.zone, judging.day_start_hour)
    name = svc.refresher.name_of

    def encode(judged: list[Judged], now: datetime) -> dict[str, Any]:
        items = [
            {
                "key": alert_key(*j.obj),
                "customer_id": j.obj[0],
                "customer_name": name(j.obj[0]),
                "job_type": j.obj[1],
                "module": j.obj[2],
                "state": j.assessment.state,
                "cells": grid_cells(j, day_list, judging, now),
            }
            for j in judged
            if not j.stored.setting.retired  # a retired object leaves the grid
        ]
        return {"days": [d.isoformat() for d in day_list], "items": items}

    key = _key(svc, "grid", query, count, day_list[-1])
    return await _answer(svc, key, query, judging, encode)


@router.put(
    "/objects/{key}/expectation",
    operation_id="set_expectation",
    summary="Set an object's expectation, hand it back to learning, or retire the object",
    response_model=schemas.ProtectedObject,
    responses=schemas.error_responses(401, 404, 422, 503),
)
async def set_expectation(
    svc: ServicesDep,
    principal: PrincipalDep,
    key: str,
    body: schemas.ExpectationIn,
) -> Response:
    parts = [*key.rsplit(":", 2), "", ""][:3]  # a key without two colons: no object
    obj = (parts[0], parts[1], parts[2])
    exists = False
    if all(parts) and visible(principal, obj[0]):
        async with svc.sessions() as session:
            exists = await objects.object_exists(session, obj)
    if not exists:
        raise NotFound(
            f"no object with key {shorten(key)!r} "
            "(keys are customer_id:job_type:module; see GET /objects)"
        )
    now = svc.clock()
    setting = expectations.Setting(
        every_hours=body.every_hours,
        days=tuple(d for d in expectations.WEEKDAYS if d in body.days) if body.days else None,
        grace_hours=body.grace_hours,
        treat_warning_as_success=body.treat_warning_as_success,
        retired=body.retired,
    )
    await svc.writer.run_plan(lambda d: objects.put_setting(d, key, obj, setting, now))
    # Its alert and "no result" follow the new expectation at once, not at the next sweep.
    told = await svc.writer.run_plan(lambda d: sweep.sweep_customer(d, obj[0], now, svc.feed))
    svc.on_told(told)
    svc.changed()
    query = ObjectQuery((obj[0],), (obj[1],), (obj[2],), None)
    judged = [j for j in await _judged(svc, query, judging_of(svc), now) if j.obj == obj]
    return Response(
        dumps(object_out(judged[0], svc.refresher.name_of(obj[0]), now)),
        media_type="application/json",
    )
