"""Endpoints about the service itself: `/enums`, `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app import catalog
from app.api import schemas
from app.api.deps import Authorized, ServicesDep
from app.store import db, outage

router = APIRouter()


def _entries(cat: catalog.Catalog) -> list[schemas.EnumEntry]:
    return [schemas.EnumEntry(code=e.code, name=e.name, label=e.label) for e in cat.entries]


@router.get(
    "/enums",
    operation_id="list_enums",
    summary="Every catalog: code, name and label",
    response_model=schemas.Enums,
    responses=schemas.error_responses(401),
    dependencies=[Authorized],
    tags=["jobs"],
)
async def enums() -> schemas.Enums:
    return schemas.Enums(
        status=_entries(catalog.STATUS),
        job_type=_entries(catalog.JOB_TYPE),
        module=_entries(catalog.MODULE),
    )


@router.get(
    "/healthz",
    tags=["service"],
    operation_id="healthz",
    summary="Alive",
    response_model=schemas.Health,
)
async def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    tags=["service"],
    operation_id="readyz",
    summary="Ready: the database answers and its migrations are current",
    response_model=schemas.Health,
    responses={503: {"model": schemas.Health, "description": "Not ready."}},
)
async def readyz(svc: ServicesDep) -> Response:
    if svc.stopping:
        # A load balancer sends no more requests here; those in flight are finished.
        return JSONResponse({"status": "unavailable", "detail": "stopping"}, status_code=503)
    url = svc.settings.database_url
    try:
        current = await db.migrations_at_head(svc.engine)
    except Exception as exc:  # any failure to ask the database means: not ready
        detail = (
            outage.message(url, exc)
            if outage.unreachable(exc)
            else f"the database ({outage.where(url)}) failed: {outage.cause(exc)}"
        )
        return JSONResponse({"status": "unavailable", "detail": detail}, status_code=503)
    if not current:
        return JSONResponse(
            {
                "status": "unavailable",
                "detail": f"the database ({outage.where(url)}) is reachable but its migrations "
                "are not current; run `jobs-gateway migrate`",
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok", "detail": None})


@router.get(
    "/metrics",
    tags=["service"],
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(svc: ServicesDep) -> Response:
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
