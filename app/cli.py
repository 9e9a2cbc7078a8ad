"""The `jobs-gateway` command: serve, demo, migrate, refresh, keys, digest, simulate, openapi."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.config import NO_KEY, ConfigError, Settings, load_settings
from app.logs import configure_logging

if TYPE_CHECKING:
    from app.refresh import RefreshOutcome
    from app.store import keys as stored_keys_module
    from app.store.writer import Writer

cli = typer.Typer(
    help="Jobs Gateway: every customer's AvePoint backup jobs in one API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

OPENAPI_PATH = Path("openapi/openapi.json")
DEMO_KEY = "demo-key"


def _json_logs() -> bool:
    """Whether LOG_FORMAT asks for JSON lines (then set up for them). Read directly: a
    refusal may come before the settings could be read at all."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() != "json":
        return False
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), "json")
    return True


def fail(message: str) -> NoReturn:
    if _json_logs():
        logging.getLogger("app.cli").error(message)
    else:
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def say(message: str) -> None:
    """A line for the person at the terminal; with LOG_FORMAT=json, a log line like any."""
    if _json_logs():
        logging.getLogger("app.cli").info(Text.from_markup(message).plain)
    else:
        out.print(message)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        settings = load_settings(**overrides)
        settings.check()
        if settings.avepoint_certificate_file and settings.avepoint_private_key_file:
            from app.upstream.auth import ClientAssertion

            # Read now, so a bad key or certificate is one line here, not a failed start-up.
            ClientAssertion.from_files(
                settings.avepoint_certificate_file, settings.avepoint_private_key_file
            )
    except ConfigError as exc:
        fail(str(exc))
    return settings


def migrate_or_exit(settings: Settings) -> None:
    from app.store import db

    try:
        asyncio.run(db.migrate(settings.database_url))
    except db.DatabaseUnavailable as exc:
        fail(str(exc))


@contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection while a server starts: what its imports and its app build
    lives as long as the process, and the full passes Python runs as the heap grows only
    walk it again and again (a fifth of a start-up's CPU). The lifespan collects once and
    freezes what start-up built (`create_app(freeze_heap=True)`)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_server(settings: Settings, host: str, port: int, *, warm: bool = False) -> None:
    with collection_paused():
        import uvicorn

        from app.main import create_app
        from app.server import STOP_GRACE_SECONDS, StoppingServer

        if settings.needs_stored_key:
            # Before logging is set up, so that a refusal is its one line and nothing else.
            migrate_or_exit(settings)
            if not asyncio.run(_live_keys(settings)):
                fail(NO_KEY)
        configure_logging(settings.log_level, settings.log_format)
        migrate_or_exit(settings)
        app = create_app(settings, warm=warm, freeze_heap=True)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            # app.logs configured uvicorn's loggers already, in LOG_FORMAT.
            log_config=None,
            proxy_headers=True,
            server_header=False,
            # SIGTERM: requests in flight get this long; the lifespan's shutdown follows, and
            # the whole stop stays within the 10 s an orchestrator gives before SIGKILL.
            timeout_graceful_shutdown=STOP_GRACE_SECONDS,
        )
    StoppingServer(config, app).run()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Apply migrations, then serve the API."""
    run_server(settings_or_exit(), host, port)


@cli.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve with the built-in simulator and a fresh SQLite file: real data in seconds."""
    path = Path("data/demo.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    keys = os.environ.get("API_KEYS") or DEMO_KEY
    settings = settings_or_exit(demo=True, database_url=f"sqlite:///./{path}", api_keys=keys)
    key = settings.api_keys[0].get_secret_value()
    shown = key if keys == DEMO_KEY else "<one of your API_KEYS>"
    url = f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{port}"  # noqa: S104
    say(
        f"[bold]Jobs Gateway demo[/]: {settings.demo_customers} simulated customers, "
        f"database {path}"
    )
    say(f"  The board:   {url}/board   (opens signed in: the demo)")
    say(f"  Swagger UI:  {url}/docs   (Authorize with the key {shown})")
    say(f"  Try:         curl -H 'X-API-Key: {shown}' '{url}/jobs?status=failed&limit=5'")
    say("  Stop with Ctrl+C.\n")
    run_server(settings, host, port, warm=True)


@cli.command()
def migrate() -> None:
    """Apply the database migrations (DATABASE_URL) and exit."""
    settings = load_settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    migrate_or_exit(settings)
    say("database is at the latest migration")


def load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


@cli.command()
def refresh(
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", help="A customer id; repeatable. Default: all."),
    ] = None,
) -> None:
    """Refresh customers from the upstream now and store the snapshots."""
    settings = settings_or_exit()
    configure_logging("WARNING", settings.log_format)
    migrate_or_exit(settings)
    outcomes = asyncio.run(_refresh(settings, customer or []))
    table = Table(title="Refresh")
    table.add_column("customer", overflow="fold", min_width=36)
    for column in ("outcome", "jobs", "pages", "skipped rows", "error"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        error = f"{o.error.kind}: {o.error.message}" if o.error else ""
        table.add_row(
            o.customer_id,
            "ok" if o.ok else "[red]failed[/]",
            str(o.jobs),
            str(o.pages),
            str(o.rows_skipped),
            error,
        )
    out.print(table)
    if outcomes and not any(o.ok for o in outcomes):
        raise typer.Exit(1)


async def _refresh(settings: Settings, customers: list[str]) -> list[RefreshOutcome]:
    from app.main import open_services
    from app.refresh import DiscoveryFailed

    async with open_services(settings, background=False) as services:
        refresher = services.refresher
        try:
            ids = customers or await refresher.customer_ids()
        except DiscoveryFailed as exc:
            fail(f"the customer list could not be fetched: {exc}")
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
            disable=not sys.stderr.isatty(),
        ) as progress:
            overall = progress.add_task("customers", total=len(ids))
            # One line per customer in flight; as many as the upstream is asked at once.
            slots = asyncio.Semaphore(settings.upstream_concurrency)

            async def one(cid: str) -> RefreshOutcome:
                async with slots:
                    line = progress.add_task(f"  {cid}", total=None)
                    outcome = await refresher.refresh(cid)
                    progress.remove_task(line)
                progress.advance(overall)
                return outcome

            # gather keeps the order of `ids`, whatever order the refreshes finish in.
            return list(await asyncio.gather(*(one(cid) for cid in ids)))


keys_cli = typer.Typer(
    help="API keys kept in the database: made, listed and revoked without a restart.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. the integration's.")],
    customers: Annotated[
        str | None,
        typer.Option(help="Comma-separated customer ids the key may see. Default: every one."),
    ] = None,
    rate_per_minute: Annotated[
        int | None,
        typer.Option(
            help="Requests a minute for this key (0: no limit). Default: RATE_LIMIT_PER_MINUTE.",
            min=0,
        ),
    ] = None,
) -> None:
    """Make a new API key, store only its hash, and print the key once, on the last line."""
    from app.access import keys

    settings = _keys_settings()
    scope = [c.strip() for c in customers.split(",")] if customers is not None else None
    try:
        key, unknown = asyncio.run(_create_key(settings, name, scope, rate_per_minute))
    except keys.KeyRefused as exc:
        fail(str(exc))
    rate = (
        f"{rate_per_minute} requests a minute"
        if rate_per_minute
        else "no rate limit"
        if rate_per_minute == 0
        else f"RATE_LIMIT_PER_MINUTE ({settings.rate_limit_per_minute} a minute)"
    )
    err.print(f"made key {name.strip()!r}: {keys.scope_text(scope)}; {rate}", highlight=False)
    if unknown:
        err.print(
            f"[yellow]note:[/] not (yet) a known customer: {', '.join(unknown)}",
            highlight=False,
        )
    err.print("Keep it now: it is shown only this once. Send it as 'X-API-Key: <key>'.")
    # Alone on the last line of standard output, for `| tail -n 1`.
    print(key)


@asynccontextmanager
async def _key_store(settings: Settings) -> AsyncIterator[Writer]:
    """The database's writer (and, through it, sessions) for one `keys` command."""
    from app.store import db
    from app.store.writer import Writer

    engine = db.create_engine(settings.database_url)
    writer = Writer.for_engine(engine)
    try:
        yield writer
    finally:
        writer.close()
        await engine.dispose()


def _keys_settings() -> Settings:
    """What every `keys` command starts with: the settings, quiet logs, a current schema."""
    settings = load_settings_or_exit()
    configure_logging("WARNING", settings.log_format)
    migrate_or_exit(settings)
    return settings


async def _create_key(
    settings: Settings, name: str, scope: list[str] | None, rate: int | None
) -> tuple[str, list[str]]:
    from app.access import keys
    from app.clock import utcnow
    from app.store import repo

    async with _key_store(settings) as writer:
        key = await keys.create_key(
            writer, name, customers=scope, rate_per_minute=rate, now=utcnow()
        )
        unknown: list[str] = []
        if scope:
            async with writer.sessions() as session:
                known = await repo.known_customer_ids(session)
            unknown = [c for c in scope if c and c not in known]
        return key, unknown


@keys_cli.command("list")
def keys_list(
    show_revoked: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one key each.")] = False,
) -> None:
    """The keys: name, scope, rate limit, created and last used. Never the key."""
    from app.access import keys

    settings = _keys_settings()
    infos = asyncio.run(_list_keys(settings, show_revoked))
    if as_json:
        for info in infos:
            print(json.dumps(keys.describe(info)))
        return
    table = Table(title="API keys (API_KEYS not shown)")
    for column in ("name", "customers", "rate / min", "created", "last used"):
        table.add_column(column, overflow="fold")
    if show_revoked:
        table.add_column("revoked", overflow="fold")
    for info in infos:
        row = [
            info.name,
            keys.scope_text(info.customers),
            "default" if info.rate_per_minute is None else str(info.rate_per_minute or "none"),
            f"{info.created_at:%Y-%m-%d %H:%M:%S}Z",
            f"{info.last_used_at:%Y-%m-%d %H:%M:%S}Z" if info.last_used_at else "never",
        ]
        if show_revoked:
            row.append(f"{info.revoked_at:%Y-%m-%d %H:%M:%S}Z" if info.revoked_at else "")
        table.add_row(*row)
    out.print(table)


async def _list_keys(settings: Settings, revoked: bool) -> list[stored_keys_module.KeyInfo]:
    from app.store import keys as stored_keys

    async with _key_store(settings) as writer, writer.sessions() as session:
        return await stored_keys.list_keys(session, revoked=revoked)


@keys_cli.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The name of the key to revoke.")],
) -> None:
    """Revoke a key: running servers refuse it within seconds, without a restart."""
    from app.access import keys

    settings = _keys_settings()
    if not asyncio.run(_revoke_key(settings, name)):
        fail(f"no live key named {name!r} (see `jobs-gateway keys list`)")
    say(f"revoked key {name!r}: running servers refuse it within {keys.RELOAD_SECONDS:g} seconds")


async def _revoke_key(settings: Settings, name: str) -> bool:
    from app.clock import utcnow
    from app.store import keys as stored_keys

    async with _key_store(settings) as writer:
        return await stored_keys.revoke(writer, name, now=utcnow())


async def _live_keys(settings: Settings) -> int:
    from app.store import keys as stored_keys

    async with _key_store(settings) as writer, writer.sessions() as session:
        return len(await stored_keys.live_keys(session))


@cli.command()
def digest(
    send: Annotated[bool, typer.Option("--send", help="Send it now to DIGEST_TO.")] = False,
) -> None:
    """Print today's digest (its plain text), or send it now with --send."""
    settings = load_settings_or_exit()
    if send and not (settings.digest_to and settings.smtp_url):
        fail("DIGEST_TO and SMTP_URL must be set to send the digest")
    try:
        text = asyncio.run(_digest(settings, send))
    except ConfigError as exc:
        fail(str(exc))
    out.print(text, markup=False, highlight=False, end="")


async def _digest(settings: Settings, send: bool) -> str:
    from app.alerts import digest as digest_module
    from app.main import open_services, stale_customers

    async with open_services(settings, background=False) as services:
        refresher = services.refresher
        async with services.sessions() as session:
            made = await digest_module.compose(
                session,
                settings,
                services.clock(),
                refresher.name_of,
                stale_customers(refresher),
            )
        if not send:
            return digest_module.text_of(made)
        try:
            await digest_module.send(digest_module.message(made, settings), settings)
        except digest_module.DigestNotSent as exc:
            raise ConfigError(str(exc)) from None
        return f"sent the digest of {made.day} to {', '.join(settings.digest_to)}\n"


@cli.command()
def simulate(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    customers: Annotated[int, typer.Option(help="How many customers.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 42,
    jobs_per_customer: Annotated[int | None, typer.Option(help="Exact jobs per customer.")] = None,
    plans_per_customer: Annotated[
        int | None,
        typer.Option(help="Exact protected objects (job type + module) per customer, 1..20."),
    ] = None,
    history_days: Annotated[int, typer.Option(help="Days of history each customer has.")] = 7,
    latency: Annotated[float, typer.Option(help="Seconds added to every API answer.")] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Chance of a 503 per request.")] = 0.0,
    rate_limit_every: Annotated[int, typer.Option(help="Every Nth jobs request answers 429.")] = 0,
    token_ttl: Annotated[int, typer.Option(help="Token lifetime in seconds.")] = 3600,
    failing_customer: Annotated[
        list[str] | None, typer.Option(help="A customer id that always fails; repeatable.")
    ] = None,
) -> None:
    """Serve the built-in upstream simulator alone (token, customers and jobs endpoints)."""
    from app.simulator import Simulator, SimulatorConfig, run_simulator

    config = SimulatorConfig(
        seed=seed,
        customers=customers,
        jobs_per_customer=jobs_per_customer,
        plans_per_customer=plans_per_customer,
        history_days=history_days,
        latency_seconds=latency,
        error_rate=error_rate,
        rate_limit_every=rate_limit_every,
        token_ttl_seconds=token_ttl,
        failing_customers=frozenset(failing_customer or ()),
    )
    out.print(
        f"simulator on http://{host}:{port}  client id {config.client_id!r}, "
        f"client secret {config.client_secret!r}"
    )
    run_simulator(host, port, Simulator(config))


@cli.command()
def openapi(
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the file is out of date.")
    ] = False,
    path: Annotated[Path, typer.Option(help="Where the document lives.")] = OPENAPI_PATH,
) -> None:
    """Write openapi/openapi.json from the app, or check that it is current."""
    from app.main import create_app

    document = create_app(Settings(demo=True)).openapi()
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            fail(f"{path} is out of date: run `jobs-gateway openapi` and commit it")
        out.print(f"{path} is current")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    out.print(f"wrote {path}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()


psa_cli = typer.Typer(
    help="Tickets in a PSA: which company each customer's tickets go to, and a check.",
    no_args_is_help=True,
)
cli.add_typer(psa_cli, name="psa")


@psa_cli.command("map")
def psa_map(
    customer_id: Annotated[str, typer.Argument(help="The AvePoint customer id.")],
    company_id: Annotated[str, typer.Argument(help="The PSA's company id (a number).")],
) -> None:
    """Send a customer's tickets to a PSA company, by the company's id (never its name)."""
    from app.clock import utcnow
    from app.store import tickets

    company = company_id.strip()
    if not company.isdecimal() or int(company) <= 0:
        fail(f"COMPANY_ID must be the PSA's company id, a positive number, not {company_id!r}")
    settings = _keys_settings()

    async def run() -> None:
        async with _key_store(settings) as writer:
            await writer.run_plan(
                lambda d: tickets.map_company(d, customer_id.strip(), company, utcnow())
            )

    asyncio.run(run())
    say(f"customer {customer_id.strip()!r} -> company {company}: new tickets go there")


@psa_cli.command("unmap")
def psa_unmap(
    customer_id: Annotated[str, typer.Argument(help="The AvePoint customer id.")],
) -> None:
    """Stop opening tickets for a customer (tickets already open still get notes and close)."""
    from app.store import tickets

    settings = _keys_settings()

    async def run() -> bool:
        async with _key_store(settings) as writer:
            return await writer.run_plan(lambda d: tickets.unmap_company(d, customer_id.strip()))

    if not asyncio.run(run()):
        fail(f"customer {customer_id!r} is not mapped (see `jobs-gateway psa list`)")
    say(f"customer {customer_id.strip()!r} unmapped: its new alerts open no ticket")


@psa_cli.command("list")
def psa_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one mapping each.")] = False,
) -> None:
    """Every mapped customer and its PSA company."""
    settings = _keys_settings()
    rows = asyncio.run(_mappings(settings))
    if as_json:
        for customer_id, company_id, at in rows:
            print(
                json.dumps(
                    {
                        "customer_id": customer_id,
                        "company_id": company_id,
                        "mapped_at": f"{at:%Y-%m-%dT%H:%M:%S}Z",
                    }
                )
            )
        return
    table = Table(title="PSA companies")
    for column in ("customer", "company", "mapped"):
        table.add_column(column)
    for customer_id, company_id, at in rows:
        table.add_row(customer_id, company_id, f"{at:%Y-%m-%d %H:%M:%S}Z")
    out.print(table)


async def _mappings(settings: Settings) -> list[tuple[str, str, object]]:
    from app.store import tickets

    async with _key_store(settings) as writer:
        return list(await writer.run_plan(tickets.mappings))


@psa_cli.command("check")
def psa_check() -> None:
    """Check the PSA's credentials, the board, its two statuses and every mapped company:
    one line per problem, saying what to fix; exit 1 when there is any."""
    settings = _keys_settings()
    if not settings.psa:
        fail("PSA is not set: set PSA=connectwise and the CONNECTWISE_* variables")
    try:
        settings.check_psa()
    except ConfigError as exc:
        fail(str(exc))
    problems = asyncio.run(_psa_problems(settings))
    for problem in problems:
        out.print(problem, highlight=False, markup=False)
    if problems:
        raise typer.Exit(1)
    say(f"{settings.psa}: credentials, board, statuses and companies are all fine")


async def _psa_problems(settings: Settings) -> list[str]:
    import httpx

    from app.integrations.connectwise import TIMEOUT
    from app.main import connector_of

    rows = await _mappings(settings)
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
        connector = connector_of(settings, http)
        return await connector.check(sorted({company for _, company, _ in rows}))


@psa_cli.command("release")
def psa_release(
    customer: Annotated[
        str | None, typer.Option("--customer", help="Only this customer's held tickets.")
    ] = None,
) -> None:
    """Open the tickets the storm guard holds now, past PSA_MAX_NEW_TICKETS_PER_HOUR."""
    from app.clock import utcnow
    from app.store import tickets

    settings = _keys_settings()

    async def run() -> int:
        async with _key_store(settings) as writer:
            return await writer.run_plan(lambda d: tickets.release(d, customer, utcnow()))

    count = asyncio.run(run())
    say(f"released {count} held tickets: running servers open them now")
