"""`create_app(settings)`: the FastAPI app; its lifespan owns every resource it opens.

Nothing happens at import time. The lifespan migrates the database, opens one
`httpx.AsyncClient` for the upstream (or, with DEMO, for the built-in simulator, in
process), builds the refresher, and closes all of it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import fastapi_offline
import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__, webhooks
from app.alerting import Notices, run_sweeps
from app.alerts import Rules
from app.api import alerts, customers, deliveries, errors, events, export, jobs, meta, runs, summary
from app.api.answers import AnswerCache, FastReads, FastReadsMiddleware
from app.api.deps import Services
from app.api.limits import RequestLimits
from app.api.requestid import RequestIdMiddleware
from app.clock import Clock, utcnow
from app.config import Settings
from app.keys import KeyBook
from app.metrics import Metrics, watch_loop_lag
from app.ratelimit import RateLimits
from app.refresh import Refresher
from app.replicas import Bus
from app.runs import RefreshRuns
from app.store import db
from app.store.feed import FeedConfig, Told
from app.store.ingest import Writer, purge_orphan_stage
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
) -> AsyncIterator[Services]:
    """Everything the service runs on, opened in order and closed in reverse. With
    `background` (a server, not a one-off command) the background refresh runs too."""
    metrics = Metrics()
    engine = db.create_engine(settings.database_url)
    try:
        await db.migrate(engine)
        sessions = db.session_factory(engine)
        writer = Writer.for_engine(engine)
        await purge_orphan_stage(writer, clock())
        upstream = upstream_of(settings, transport)
        concurrency = settings.upstream_concurrency
        feed_config = feed_config_of(settings)
        notices = Notices()

        bus: Bus | None = None

        def on_told(told: Told) -> None:
            metrics.events_written.inc(told.events)
            notices.notify(told)
            if bus is not None and told.events:
                bus.events_written()

        async with httpx.AsyncClient(
            transport=upstream.transport,
            timeout=httpx.Timeout(settings.upstream_timeout_seconds),
            limits=httpx.Limits(
                max_connections=concurrency + 2, max_keepalive_connections=concurrency
            ),
            headers={"User-Agent": f"jobs-gateway/{__version__}"},
        ) as http:
            tokens = TokenProvider(
                http,
                token_url=upstream.token_url,
                client_id=upstream.client_id,
                client_secret=upstream.client_secret,
                client_assertion=upstream.client_assertion,
                scope=settings.avepoint_scope,
                wall_clock=lambda: clock().timestamp(),
            )
            client = AvePointClient(
                http,
                base_url=upstream.base_url,
                tokens=tokens,
                concurrency=concurrency,
                metrics=metrics.upstream_request,
                sleep=sleep,
                # One of each per process, shared by every customer's requests.
                rate_limiter=rate_limiter_for(settings.upstream_rate_per_second),
                breaker=CircuitBreaker(
                    on_state=metrics.upstream_breaker,
                    on_refused=metrics.upstream_breaker_refused.inc,
                ),
            )
            refresher = Refresher(
                client=client,
                sessions=sessions,
                writer=writer,
                metrics=metrics,
                configured_customers=settings.customer_ids,
                ttl_seconds=settings.cache_ttl_seconds,
                stale_if_error_seconds=settings.stale_if_error_seconds,
                wait_seconds=settings.request_wait_seconds,
                interval_seconds=settings.refresh_interval,
                # A few more walks than requests in flight, so that the upstream is kept
                # busy while some walks normalize; each holds one customer's changed rows.
                walk_slots=concurrency + 4,
                clock=clock,
                feed=feed_config,
                on_told=on_told,
                shared=engine.dialect.name == "postgresql",
            )
            await refresher.load()
            metrics.oldest_fresh_age.set_function(refresher.oldest_snapshot_age)
            if background:
                refresher.spawn(webhooks.watch_backlog(sessions, metrics.webhook_backlog))
            if background and refresher.shared:
                bus = Bus(settings.database_url, sessions, refresher, notices.notify)
                refresher.on_settled = bus.settled
                refresher.spawn(bus.run())
            runs = RefreshRuns(refresher, clock)
            keys = KeyBook(
                settings.api_keys,
                required=settings.auth_required,
                disabled=settings.auth_disabled,
            )
            await keys.reload(sessions)
            metrics.api_keys_live.set_function(lambda: keys.live)
            limits = RateLimits()
            if background:
                # A revoked key is refused within RELOAD_SECONDS, by every replica.
                refresher.spawn(keys.run(sessions, writer))
            if background and refresher.shared:
                # Replicas add each other's requests to their counts (app.ratelimit).
                refresher.spawn(limits.share(engine, refresher.holder))
            refresher.spawn(watch_loop_lag(metrics))
            if background and settings.refresh_interval:
                refresher.spawn(refresher.run_background())
            if background:
                refresher.spawn(run_sweeps(writer, sessions, feed_config, clock, on_told=on_told))
            if background and settings.retention_days > 0:
                from app.retention import run_retention

                # A purge of jobs moves their customers' data versions: cached answers follow.
                refresher.spawn(
                    run_retention(
                        writer, settings.retention_days, clock, on_jobs_purged=refresher.reload
                    )
                )
            sender_http: httpx.AsyncClient | None = None
            if background and settings.webhook_urls and settings.webhook_secret:
                sender_http = httpx.AsyncClient(
                    timeout=httpx.Timeout(webhooks.TIMEOUT_SECONDS),
                    follow_redirects=False,
                )
                sender = webhooks.Sender(
                    writer=writer,
                    sessions=sessions,
                    http=sender_http,
                    secret=settings.webhook_secret.get_secret_value(),
                    urls=settings.webhook_urls,
                    notices=notices,
                    clock=clock,
                    on_attempt=metrics.webhook_attempt,
                )
                refresher.spawn(sender.run())
            try:
                yield Services(
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
                    runs=runs,
                    clock=clock,
                    keys=keys,
                    limits=limits,
                )
            finally:
                await refresher.aclose()
                with contextlib.suppress(Exception):  # best effort: `keys list` shows it
                    await keys.flush_used(writer)
                if sender_http is not None:
                    await sender_http.aclose()
                writer.close()
    finally:
        await engine.dispose()


def feed_config_of(settings: Settings) -> FeedConfig:
    return FeedConfig(
        rules=Rules(frozenset(settings.alert_statuses), settings.overdue_hours),
        webhook_urls=tuple(settings.webhook_urls),
        webhook_events=frozenset(settings.webhook_events),
    )


class HeadAsGet:
    """HEAD wherever GET works (uptime checks use it): routed as GET, sent without a body.

    The route matched is copied back to the caller's scope, for `RequestMetrics` outside;
    the method is not changed there, as the server still has to send no body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        child = {**scope, "method": "GET"}
        try:
            await self.app(child, receive, without_body)
        finally:
            if "route" in child:
                scope["route"] = child["route"]


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        method = scope["method"]  # before HeadAsGet routes a HEAD as GET
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            svc: Services | None = getattr(scope["app"].state, "services", None)
            if svc is not None:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                svc.metrics.http_requests.labels(method, route, str(status)).inc()
                svc.metrics.http_latency.labels(route).observe(time.perf_counter() - began)


def create_app(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    warm: bool = False,
    freeze_heap: bool = False,
) -> FastAPI:
    """The app for these settings. Tests inject time (`clock`, and `sleep` for the upstream
    client's backoff) and replace the network (`transport`: respx or the simulator).

    With `warm`, every customer is refreshed in the background as soon as the app starts.
    With `freeze_heap` (the server's app, one per process), what start-up built is kept out
    of every later garbage collection.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            settings, clock=clock, transport=transport, sleep=sleep
        ) as services:
            app.state.services = services
            if freeze_heap:
                # What start-up built lives as long as the process: keep it out of every
                # garbage collection, whose full passes otherwise stall the loop under load.
                # Only where the process is the server: the full pass costs a tenth of a
                # second or more in a process that builds apps by the hundred (the tests).
                gc.collect()
                gc.freeze()
            if warm:
                services.refresher.warm()
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
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=["ETag", "Cache-Status", "X-Request-ID", "Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(RequestIdMiddleware)
    app.include_router(export.router)
    app.include_router(jobs.router)
    app.include_router(customers.router)
    app.include_router(summary.router)
    app.include_router(events.router)
    app.include_router(alerts.router)
    app.include_router(deliveries.router)
    app.include_router(runs.router)
    app.include_router(meta.router)
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
