"""`create_app(settings)`: the FastAPI app; its lifespan owns every resource it opens.

Nothing happens at import time. The lifespan migrates the database, opens one
`httpx.AsyncClient` for the upstream (or, with DEMO, for the built-in simulator, in
process), builds the refresher, and closes all of it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import fastapi_offline
import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.access.keys import KeyBook
from app.access.ratelimit import RateLimits
from app.alert_rules import Rules
from app.alerts import digest, webhooks
from app.alerts.notices import Notices
from app.alerts.sweeps import run_sweeps
from app.api import (
    alerts,
    customers,
    deliveries,
    errors,
    events,
    export,
    jobs,
    maintenance,
    meta,
    objects,
    runs,
    summary,
)
from app.api import tickets as tickets_api
from app.api.answers import AnswerCache, FastReads, FastReadsMiddleware
from app.api.common import add_routes
from app.api.deps import Services
from app.api.middleware import HeadAsGet, RequestIdMiddleware, RequestLimits, RequestMetrics
from app.board import pages as board
from app.clock import Clock, utcnow
from app.config import Settings
from app.integrations import connectwise, tickets
from app.metrics import Metrics, watch_loop_lag
from app.refresh import Refresher, schedule
from app.refresh.leasing import process_holder
from app.refresh.replicas import Bus
from app.refresh.runs import RefreshRuns
from app.store import db, outage
from app.store.retention import run_retention
from app.store.stage import purge_orphan_stage
from app.store.telling import FeedConfig, Told
from app.store.tickets import PSA_RECEIVER
from app.store.writer import Writer
from app.tasks import Supervisor
from app.upstream.auth import ClientAssertion, TokenProvider
from app.upstream.breaker import CircuitBreaker
from app.upstream.client import AvePointClient, rate_limiter_for

DESCRIPTION = """
Every customer's AvePoint backup jobs in one place: fanned out over the partner's customers,
every page walked, codes turned into names, durations into seconds, sizes into bytes; cached
and kept in a database, so `GET /jobs?status=failed` answers across all customers at once.

Send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`: one of `API_KEYS`, or
one made with `jobs-gateway keys create` (which may be limited to some customers: for it, the
others do not exist). Past a key's rate limit, a 429 says when to come back. Every answer says
how current each customer's data is (`sources`); one failing customer never fails a request.
"""

log = logging.getLogger(__name__)

SIMULATOR_URL = "http://simulator.invalid"

_DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

DOCS_HEADERS = {
    # Everything from this origin (no CDN); Swagger UI's page starts it with an inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Security headers of the Swagger UI page: where a stored key is typed, nothing may frame
it or load code from elsewhere."""

CORS_REQUEST_HEADERS = [
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "If-None-Match",
    "X-Request-ID",
]


@dataclass(frozen=True)
class Upstream:
    """Where the upstream is and who we are to it."""

    base_url: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    transport: httpx.AsyncBaseTransport | None  # None: the network
    # Certificate authentication; when set, it is used instead of the secret.
    client_assertion: ClientAssertion | None = field(default=None, repr=False)


def upstream_of(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> Upstream:
    """The configured AvePoint upstream or, with DEMO, the built-in simulator in process."""
    if settings.demo:
        from app.simulator import Simulator, SimulatorConfig, create_simulator_app

        config = SimulatorConfig(seed=settings.demo_seed, customers=settings.demo_customers)
        return Upstream(
            base_url=SIMULATOR_URL,
            token_url=f"{SIMULATOR_URL}/connect/token",
            client_id=config.client_id,
            client_secret=config.client_secret,
            transport=transport or httpx.ASGITransport(app=create_simulator_app(Simulator(config))),
        )
    secret = settings.avepoint_client_secret
    certificate, key = settings.avepoint_certificate_file, settings.avepoint_private_key_file
    # The certificate wins over a secret set too: AvePoint recommends it. A file that cannot
    # sign is a ConfigError naming its variable.
    assertion = ClientAssertion.from_files(certificate, key) if certificate and key else None
    return Upstream(
        base_url=settings.avepoint_base_url,
        token_url=settings.avepoint_token_url,
        client_id=settings.avepoint_client_id or "",
        client_secret=secret.get_secret_value() if secret and assertion is None else "",
        transport=transport,
        client_assertion=assertion,
    )


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    background: bool = True,
    warm: bool = False,
    psa_transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Services]:
    """Everything the service runs on, opened in order and closed in reverse. With
    `background` (a server, not a one-off command) the background tasks run too, under one
    supervisor; with `warm`, every customer is refreshed at once."""
    engine = db.create_engine(settings.database_url)
    try:
        await db.migrate(engine)
        writer = Writer.for_engine(engine)
        await tidy_if_writable(writer, settings, clock(), background)
        upstream = upstream_of(settings, transport)
        async with (
            upstream_http(settings, upstream) as http,
            webhook_http(settings, background) as sender_http,
            psa_http(settings, background, psa_transport) as desk_http,
        ):
            services = await build_services(settings, engine, writer, http, upstream, clock, sleep)
            tasks = Supervisor()
            services.runs.spawn = tasks.spawn
            if background:
                start_background(services, tasks, sender_http)
                if desk_http is not None:
                    tasks.spawn(
                        tickets.watch_held(services.sessions, services.metrics.tickets_held)
                    )
                    tasks.spawn(desk_of(services, desk_http).run())
            if warm:
                tasks.spawn(schedule.warm(services.refresher))
            try:
                yield services
            finally:
                await tasks.aclose()
                await services.refresher.aclose()
                with contextlib.suppress(Exception):  # best effort: `keys list` shows it
                    await services.keys.flush_used(writer)
                writer.close()
    finally:
        await engine.dispose()


@asynccontextmanager
async def upstream_http(settings: Settings, upstream: Upstream) -> AsyncIterator[httpx.AsyncClient]:
    """The process's one client to the upstream, with explicit timeout and limits."""
    concurrency = settings.upstream_concurrency
    async with httpx.AsyncClient(
        transport=upstream.transport,
        timeout=httpx.Timeout(settings.upstream_timeout_seconds),
        limits=httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency),
        headers={"User-Agent": f"jobs-gateway/{__version__}"},
    ) as http:
        yield http


@asynccontextmanager
async def webhook_http(
    settings: Settings, background: bool
) -> AsyncIterator[httpx.AsyncClient | None]:
    """The webhook senders' client, when there are receivers to send to."""
    if not (background and settings.webhook_urls and settings.webhook_secret):
        yield None
        return
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(webhooks.TIMEOUT_SECONDS), follow_redirects=False
    ) as http:
        yield http


@asynccontextmanager
async def psa_http(
    settings: Settings, background: bool, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[httpx.AsyncClient | None]:
    """The ticket desk's client to the PSA, in a server with `PSA` set."""
    if not (background and settings.psa):
        yield None
        return
    async with httpx.AsyncClient(
        transport=transport,
        timeout=connectwise.TIMEOUT,
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        follow_redirects=False,
    ) as http:
        yield http


def connector_of(settings: Settings, http: httpx.AsyncClient) -> connectwise.ConnectWise:
    """The PSA `PSA` names (ConnectWise, so far), with its account (`Settings.check` made
    sure it is whole)."""
    assert settings.connectwise_public_key is not None
    assert settings.connectwise_private_key is not None
    account = connectwise.ConnectWiseAccount(
        url=settings.connectwise_url or "",
        company=settings.connectwise_company or "",
        public_key=settings.connectwise_public_key,
        private_key=settings.connectwise_private_key,
        client_id=settings.connectwise_client_id or "",
        board=settings.connectwise_board,
        open_status=settings.connectwise_open_status,
        closed_status=settings.connectwise_closed_status,
    )
    return connectwise.ConnectWise(account, http, requests_per_hour=settings.psa_requests_per_hour)


def desk_of(services: Services, http: httpx.AsyncClient) -> tickets.Desk:
    settings = services.settings
    return tickets.Desk(
        writer=services.writer,
        sessions=services.sessions,
        connector=connector_of(settings, http),
        config=tickets.DeskConfig(
            min_severity=settings.psa_min_severity,
            max_new_per_hour=settings.psa_max_new_tickets_per_hour,
            board_url=settings.public_url.rstrip("/") + "/board",
        ),
        notices=services.notices,
        clock=services.clock,
        on_request=lambda outcome: services.metrics.psa_requests.labels(outcome).inc(),
    )


async def build_services(
    settings: Settings,
    engine: AsyncEngine,
    writer: Writer,
    http: httpx.AsyncClient,
    upstream: Upstream,
    clock: Clock,
    sleep: Callable[[float], Awaitable[None]],
) -> Services:
    """The services a request may need, with the stored state loaded."""
    metrics = Metrics()
    notices = Notices()
    sessions = writer.sessions
    feed_config = feed_config_of(settings)
    holder = process_holder()
    bus = Bus(
        settings.database_url,
        sessions,
        holder,
        notices.notify,
        listen=engine.dialect.name == "postgresql",
    )

    def on_told(told: Told) -> None:
        metrics.events_written.inc(told.events)
        notices.notify(told)
        if told.events:
            bus.events_written()

    refresher = Refresher(
        client=upstream_client(settings, http, upstream, metrics, sleep, clock),
        sessions=sessions,
        writer=writer,
        metrics=metrics,
        configured_customers=settings.customer_ids,
        ttl_seconds=settings.cache_ttl_seconds,
        stale_if_error_seconds=settings.stale_if_error_seconds,
        wait_seconds=settings.request_wait_seconds,
        interval_seconds=settings.refresh_interval,
        # A few more walks than requests in flight, so that the upstream is kept busy
        # while some walks normalize; each holds one customer's changed rows.
        walk_slots=settings.upstream_concurrency + 4,
        clock=clock,
        feed=feed_config,
        on_told=on_told,
        on_settled=bus.settled,
        holder=holder,
    )
    await refresher.load()
    metrics.oldest_fresh_age.set_function(refresher.oldest_snapshot_age)
    keys = KeyBook(
        settings.api_keys, required=settings.auth_required, disabled=settings.auth_disabled
    )
    await keys.reload(sessions)
    metrics.api_keys_live.set_function(lambda: keys.live)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        refresher=refresher,
        metrics=metrics,
        answers=AnswerCache(),
        fast=FastReads(),
        writer=writer,
        feed=feed_config,
        notices=notices,
        runs=RefreshRuns(refresher, clock),
        clock=clock,
        keys=keys,
        # Windows follow the service's clock, as everything else does (a test's clock too).
        limits=RateLimits(clock=lambda: clock().timestamp()),
        bus=bus,
        on_told=on_told,
    )


def upstream_client(
    settings: Settings,
    http: httpx.AsyncClient,
    upstream: Upstream,
    metrics: Metrics,
    sleep: Callable[[float], Awaitable[None]],
    clock: Clock,
) -> AvePointClient:
    """The AvePoint client: tokens, pace and breaker, one of each per process."""
    tokens = TokenProvider(
        http,
        token_url=upstream.token_url,
        client_id=upstream.client_id,
        client_secret=upstream.client_secret,
        client_assertion=upstream.client_assertion,
        scope=settings.avepoint_scope,
        wall_clock=lambda: clock().timestamp(),
    )
    return AvePointClient(
        http,
        base_url=upstream.base_url,
        tokens=tokens,
        concurrency=settings.upstream_concurrency,
        metrics=metrics.upstream_request,
        sleep=sleep,
        rate_limiter=rate_limiter_for(settings.upstream_rate_per_second),
        breaker=CircuitBreaker(
            on_state=metrics.upstream_breaker,
            on_refused=metrics.upstream_breaker_refused.inc,
        ),
    )


def start_background(
    services: Services, tasks: Supervisor, sender_http: httpx.AsyncClient | None
) -> None:
    """The tasks a server runs beside its requests, all under `tasks`."""
    settings, refresher, metrics = services.settings, services.refresher, services.metrics
    sessions, writer, clock = services.sessions, services.writer, services.clock
    tasks.spawn(webhooks.watch_backlog(sessions, metrics.webhook_backlog))
    # Other processes on the database (replicas, or `jobs-gateway refresh` beside this
    # one on a SQLite file): what they store shows here within 2 s.
    tasks.spawn(services.bus.run(refresher))
    # A revoked key is refused within RELOAD_SECONDS, by every replica.
    tasks.spawn(services.keys.run(sessions, writer))
    if services.engine.dialect.name == "postgresql":
        # Replicas add each other's requests to their counts (app.access.ratelimit).
        tasks.spawn(services.limits.share(services.engine, refresher.holder))
    tasks.spawn(watch_loop_lag(metrics))
    if settings.refresh_interval:
        tasks.spawn(schedule.run_background(refresher))
    # One process sweeps at a time (its lease), so "no result" is told once.
    tasks.spawn(
        run_sweeps(
            writer,
            sessions,
            services.feed,
            clock,
            on_told=services.on_told,
            holder=refresher.holder,
        )
    )
    if settings.digest_to and settings.smtp_url is not None:
        # Every server looks; the one that claims the day in the database sends it.
        tasks.spawn(
            digest.run_digests(
                writer,
                sessions,
                settings,
                clock,
                refresher.holder,
                refresher.name_of,
                lambda: stale_customers(refresher),
            )
        )
    if settings.retention_days > 0:
        # A purge of jobs moves their customers' data versions: cached answers follow.
        tasks.spawn(
            run_retention(writer, settings.retention_days, clock, on_jobs_purged=refresher.reload)
        )
    if sender_http is not None and settings.webhook_secret is not None:
        sender = webhooks.Sender(
            writer=writer,
            sessions=sessions,
            http=sender_http,
            secret=settings.webhook_secret.get_secret_value(),
            urls=settings.webhook_urls,
            notices=services.notices,
            clock=clock,
            on_attempt=metrics.webhook_attempt,
        )
        tasks.spawn(sender.run())


async def tidy_if_writable(
    writer: Writer, settings: Settings, now: datetime, background: bool
) -> None:
    """Start-up's writes: purge what killed refreshes staged and, in a server, fail the
    deliveries to receivers no longer configured. A database that may be read but not
    written (a SQLite file in a folder the service may not write) is served all the same:
    its answers are there, and only writes fail (refreshes with a source error of kind
    `database`)."""
    try:
        await purge_orphan_stage(writer, now)
        if background:
            # Before any sender starts: what no sender will take fails now, not never. Not in
            # one-off commands, whose environment may lack the server's WEBHOOK_URLS.
            # The ticket desk's receiver is no webhook: its work waits, whether PSA is on or not.
            kept = [*settings.webhook_urls, PSA_RECEIVER]
            await webhooks.fail_removed_receivers(writer, kept, now)
    except outage.DRIVER_ERRORS as exc:
        if not outage.unreachable(exc):
            raise
        log.warning(
            "%s; serving what it holds, refreshes fail until it can be written",
            outage.message(settings.database_url, exc),
        )


def stale_customers(refresher: Refresher) -> list[digest.StaleCustomer]:
    """The customers whose data is not current (stale or in error), for the digest."""
    out = []
    for cid in sorted(refresher.ledger.status):
        source = refresher.source(cid)
        if source.state in ("stale", "error"):
            out.append(
                digest.StaleCustomer(cid, refresher.name_of(cid), source.state, source.fetched_at)
            )
    return out


def feed_config_of(settings: Settings) -> FeedConfig:
    return FeedConfig(
        rules=Rules(frozenset(settings.alert_statuses), settings.overdue_hours),
        webhook_urls=tuple(settings.webhook_urls),
        webhook_events=frozenset(settings.webhook_events),
        psa_receiver=PSA_RECEIVER if settings.psa else None,
        zone=settings.zone,
    )


SERVER_GC_THRESHOLDS = (10_000, 10, 10)
"""The server's garbage collector runs its youngest pass every 10,000 new objects, not 700: a
cold refresh at 1,000 x 100 then pays one full pass instead of ten (each 0.1-0.4 s, a stall of
the event loop), and half the time in collections (bench/RESULTS.md)."""


def create_app(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    warm: bool = False,
    freeze_heap: bool = False,
    psa_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The app for these settings. Tests inject time (`clock`, and `sleep` for the upstream
    client's backoff) and replace the network (`transport`: respx or the simulator;
    `psa_transport`: a PSA stand-in).

    With `warm`, every customer is refreshed in the background as soon as the app starts.
    With `freeze_heap` (the server's app, one per process), what start-up built is kept out
    of every later garbage collection.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            settings,
            clock=clock,
            transport=transport,
            sleep=sleep,
            warm=warm,
            psa_transport=psa_transport,
        ) as services:
            app.state.services = services
            if freeze_heap:
                # What start-up built lives as long as the process: keep it out of every
                # garbage collection, whose full passes otherwise stall the loop under load.
                # Only where the process is the server: the full pass costs a tenth of a
                # second or more in a process that builds apps by the hundred (the tests).
                gc.collect()
                gc.freeze()
                gc.set_threshold(*SERVER_GC_THRESHOLDS)
            yield

    app = FastAPI(
        title="Jobs Gateway",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # A redirect to the slash-less path would be built from the Host header.
        redirect_slashes=False,
    )
    errors.install(app)
    app.add_middleware(FastReadsMiddleware)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestLimits)  # inside RequestId and CORS: its errors carry both
    app.add_middleware(RequestMetrics)
    if settings.cors_origins:
        # Preflights are answered here, before any key is asked for; an origin not listed
        # gets no allow header, so the browser keeps its page out.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=["ETag", "Cache-Status", "X-Request-ID", "Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestIdMiddleware)
    add_routes(
        app,
        export.router,
        jobs.router,
        customers.router,
        summary.router,
        events.router,
        alerts.router,
        objects.router,
        maintenance.router,
        deliveries.router,
        tickets_api.router,
        runs.router,
        meta.router,
    )
    board.install(app, settings)
    app.mount("/docs/assets", StaticFiles(directory=_DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Jobs Gateway",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
        )
        page.headers.update(DOCS_HEADERS)
        return page

    return app
