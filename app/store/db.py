"""Engines, sessions and migrations.

Nothing here runs at import time: the application's lifespan calls `create_engine` and
`migrate`, and disposes the engine. The Alembic scripts live in the checkout's
top-level `migrations/` and ship inside the wheel as `app/migrations/`; `MIGRATIONS_DIR`
finds them from this module either way, so the working directory never matters.

Alembic is imported only when a migration must run: whether a database is at the newest
schema is one plain query of Alembic's version table, beside the head revision read from
the scripts' own `revision` lines (`head_revisions`). Importing Alembic (and loading its
scripts) took about a second of CPU from every start of `serve` and `migrate`, though the
database was nearly always current already.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

from app.store import outage

if TYPE_CHECKING:
    from alembic.config import Config


def _migrations_dir() -> Path:
    package = Path(__file__).resolve().parents[1]
    installed, checkout = package / "migrations", package.parent / "migrations"
    return checkout if not installed.is_dir() and (checkout / "env.py").is_file() else installed


MIGRATIONS_DIR = _migrations_dir()
"""The Alembic script directory: `app/migrations` in an installed wheel, the checkout's
top-level `migrations/` in a source tree."""

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_MIGRATION_WAIT_MS = 120_000
"""How long a process waits for another that migrates the same SQLite file."""
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10


class DatabaseUnavailable(Exception):
    """The database cannot be reached or brought to the current schema.

    The message is one line that names DATABASE_URL (password hidden) and the cause.
    """


def async_url(url: str) -> str:
    """The async-driver form of a database URL; URLs naming another driver stay as they are.

    `postgresql://` and `postgres://` -> `postgresql+asyncpg://`; `sqlite://` ->
    `sqlite+aiosqlite://`.
    """
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def apply_sqlite_pragmas(dbapi_connection: Any, _record: Any = None) -> None:
    """WAL, a busy timeout, foreign keys: on every SQLite connection, the writer's own too."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Safe with WAL: a crash may lose the last commits but never corrupts the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


SQLITE_AWAY_SECONDS = 30.0
"""How long after a SQLite file last failed to open or be written its pooled connections are
closed when handed back, rather than kept (see `SqliteRecovery`)."""


class SqliteRecovery:
    """Lets a SQLite store that could not be written be written again, without a restart.

    SQLite opens a file it may not write read-only, and its WAL index (`-shm`) too. That
    index is shared by every connection of the process to the file, and stays read-only for
    as long as any of them is open: a connection opened once the file may be written again
    still cannot write. So, for a while after such a failure (`recovering`):

    - every pooled connection is closed when it fails or is handed back, rather than kept;
    - before the writer opens the file afresh, garbage is collected: a connection closed
      while a statement of it was still referenced (by the traceback of the error that
      failed it, in a reference cycle) stays open in SQLite until that statement goes.

    Then, as soon as the process holds no connection for a moment, the next one opens the
    file and its index afresh, and writes again. The pool keeps its connections again once
    nothing has failed for `SQLITE_AWAY_SECONDS`.
    """

    def __init__(self) -> None:
        self.away_until = 0.0

    @property
    def recovering(self) -> bool:
        return time.monotonic() < self.away_until

    def away(self) -> None:
        """The file could not be opened or written just now."""
        self.away_until = time.monotonic() + SQLITE_AWAY_SECONDS

    def before_reopen(self) -> None:
        """The writer is about to open the file afresh."""
        if self.recovering:
            gc.collect()

    def on_error(self, context: ExceptionContext) -> None:
        original = context.original_exception
        if original is not None and outage.unreachable(original):
            context.is_disconnect = True  # out of the pool, and the pool recycled
            self.away()

    def on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None and self.recovering:
            record.invalidate()


_SQLITE_RECOVERY: weakref.WeakKeyDictionary[Any, SqliteRecovery] = weakref.WeakKeyDictionary()


def sqlite_recovery(engine: AsyncEngine) -> SqliteRecovery | None:
    """The recovery of a SQLite engine made by `create_engine` (None for another)."""
    return _SQLITE_RECOVERY.get(engine.sync_engine)


@functools.cache
def _harden_aiosqlite() -> None:
    """Never wait on a stopped aiosqlite connection. A statement cancelled mid-way (a client
    gone, a task stopped) has SQLAlchemy close the connection gracefully in a task of its own
    and force-stop its worker thread beside it; aiosqlite's close then queued its last step
    behind the stop and awaited an answer that never came, holding up the event loop's own
    close. Work queued after the stop now fails at once, as on a closed connection; and a
    step that ends after its event loop closed is dropped quietly (nobody can wait for it),
    not raised from the worker thread."""
    import aiosqlite.core

    worker = aiosqlite.core._connection_worker_thread

    def worker_that_drains(tx: Any) -> None:
        # Its loop closed while a step ran: nobody waits for the answer.
        with contextlib.suppress(RuntimeError):
            worker(tx)
        while True:  # stopped: what was queued behind the stop is answered, not left waiting
            try:
                future, _ = tx.get_nowait()
            except Exception:
                return
            if future is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    future.get_loop().call_soon_threadsafe(_closed, future)

    stop = aiosqlite.core.Connection.stop

    def stop_once(self: Any) -> Any:
        if not self._thread.is_alive() and self._thread.ident is not None:
            self._running = False
            return None  # stopped already: nothing will answer another stop
        return stop(self)

    aiosqlite.core._connection_worker_thread = worker_that_drains
    aiosqlite.core.Connection.stop = stop_once  # type: ignore[method-assign]


def _closed(future: Any) -> None:
    if not future.done():
        future.set_exception(ValueError("Connection closed"))


POSTGRES_PING_AFTER_IDLE_SECONDS = 1.0
"""A pooled PostgreSQL connection that sat idle longer than this is pinged before it is used."""


class _PingAfterIdle:
    """Pings a pooled connection before use only when it sat idle for a while.

    SQLAlchemy's `pool_pre_ping` pings on every checkout: on asyncpg, three round trips
    (BEGIN, `;`, ROLLBACK), so a refresh paid more for pings than for some of its statements.
    A connection handed back less than `after` seconds ago was working then; if the server
    went away since, its first statement fails as a disconnect, which drops every older
    connection of the pool (the answer is the outage's, as it would be a moment later).
    A connection that failed its ping is replaced at once (`DisconnectionError`)."""

    def __init__(self, after: float) -> None:
        self.after = after

    def on_checkin(self, _dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def on_checkout(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < self.after:
            return  # new, or handed back a moment ago
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError("the pooled connection failed its ping") from exc


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url` (plain `postgresql://` and `sqlite:///` URLs are accepted).

    SQLite: WAL journal, a busy timeout and foreign keys on every connection; the directory
    of a file database is created. PostgreSQL: a connection idle for more than
    `POSTGRES_PING_AFTER_IDLE_SECONDS` is pinged before use (`_PingAfterIdle`).

    A statement's parameters never appear in its errors (nor in SQLAlchemy's log lines):
    they hold webhook receivers' URLs, whose paths and queries are credentials, and the
    hashes of API keys; an error logged with its traceback would print them.
    """
    url = async_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        _harden_aiosqlite()
        engine = _create_async_engine(url, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", apply_sqlite_pragmas)
        recovery = _SQLITE_RECOVERY[engine.sync_engine] = SqliteRecovery()
        event.listen(engine.sync_engine, "handle_error", recovery.on_error)
        event.listen(engine.sync_engine.pool, "checkin", recovery.on_checkin)
        return engine
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if make_url(url).get_driver_name() == "asyncpg":
            connect_args["timeout"] = POSTGRES_CONNECT_TIMEOUT_SECONDS
            # Our queries are short index probes; JIT compilation only adds latency to them.
            connect_args["server_settings"] = {"jit": "off"}
        engine = _create_async_engine(url, connect_args=connect_args, hide_parameters=True)
        ping = _PingAfterIdle(POSTGRES_PING_AFTER_IDLE_SECONDS)
        event.listen(engine.sync_engine.pool, "checkin", ping.on_checkin)
        event.listen(engine.sync_engine.pool, "checkout", ping.on_checkout)
        return engine
    return _create_async_engine(url, pool_pre_ping=True, hide_parameters=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the package's migrations, independent of the working directory."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise DatabaseUnavailable(
            f"DATABASE_URL: the migrations directory {MIGRATIONS_DIR} is missing from this install"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Config values go through ConfigParser interpolation.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


VERSION_TABLE = "alembic_version"
"""Alembic's table of the revisions a database is at (its default name; env.py keeps it)."""


def _script_revisions(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """A migration script's `revision` and the revisions it follows (`down_revision`), read
    from its top-level assignments as Alembic writes them; None when they are not plain
    literals."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                values[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError):
                return None
    revision, down = values.get("revision"), values.get("down_revision")
    downs = down if isinstance(down, tuple | list) else () if down is None else (down,)
    if not isinstance(revision, str) or not all(isinstance(d, str) for d in downs):
        return None
    return revision, tuple(str(d) for d in downs)


@functools.cache
def head_revisions() -> frozenset[str]:
    """The newest revision(s) of the migrations, read from the scripts without importing
    Alembic (`heads_in`); Alembic answers when a script's revisions are not plain literals."""
    heads = heads_in(MIGRATIONS_DIR / "versions")
    return _alembic_head_revisions() if heads is None else heads


def heads_in(versions: Path) -> frozenset[str] | None:
    """The revisions no other script of `versions` follows, from every `.py` file Alembic
    would load there (all but `__init__.py`); None when one's revisions cannot be read.
    tests/integration/test_migrations.py holds this to Alembic's own answer."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        if path.name == "__init__.py" or path.name.startswith(".#"):
            continue
        read = _script_revisions(path)
        if read is None:
            return None
        revisions.add(read[0])
        followed.update(read[1])
    return frozenset(revisions - followed)


def _alembic_head_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


# Serializes `migrate` across processes starting at once against one PostgreSQL database.
MIGRATION_LOCK_KEY = 0x4A6F6273  # "Jobs"


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command

    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif dialect == "sqlite":
        # The write lock before Alembic reads the version table, so that processes migrating
        # one file at once take turns, as on PostgreSQL (a `psa map` or `keys create` beside
        # a starting server): without it each read "no revision" and all but one failed on
        # "table already exists". The migration is one transaction under it.
        connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_MIGRATION_WAIT_MS}")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    finally:
        if dialect == "sqlite":
            connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _current_revisions(connection: Connection) -> frozenset[str]:
    """The revisions the database is at (none for a database Alembic never touched): what
    Alembic's `MigrationContext.get_current_heads` reads, in one plain query."""
    if not connection.dialect.has_table(connection, VERSION_TABLE):
        return frozenset()
    rows = connection.execute(text("SELECT version_num FROM alembic_version"))
    return frozenset(rows.scalars())


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else ""
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name


async def migrate(engine_or_url: AsyncEngine | str) -> None:
    """Bring the database to the newest schema (`alembic upgrade head`); a database there
    already is only asked, and Alembic is not imported.

    Raises `DatabaseUnavailable` with one line naming DATABASE_URL when the database cannot be
    reached or migrated.
    """
    owned = isinstance(engine_or_url, str)
    label = safe_url(engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url))
    try:
        engine = create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    except (ArgumentError, OSError, ImportError) as exc:
        raise DatabaseUnavailable(f"DATABASE_URL={label} is not usable: {_one_line(exc)}") from exc
    try:
        if await migrations_at_head(engine):
            return
        await _upgrade(engine, label)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL={label} cannot be reached or migrated: {_one_line(exc)}"
        ) from exc
    finally:
        if owned:
            await engine.dispose()


async def _upgrade(engine: AsyncEngine, label: str) -> None:
    """`alembic upgrade head`, under the lock; Alembic reads the version table again, so a
    process that migrated meanwhile leaves nothing to do."""
    from alembic.util.exc import CommandError

    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade_to_head)
    except CommandError as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL={label} cannot be reached or migrated: {_one_line(exc)}"
        ) from exc


async def migrations_at_head(engine: AsyncEngine) -> bool:
    """Whether the database's schema is at the newest migration (for /readyz). A database
    that cannot be asked raises the driver's error: unreachable is not the same as behind."""
    async with engine.connect() as connection:
        current = await connection.run_sync(_current_revisions)
    return current == head_revisions()


async def migrations_current(engine: AsyncEngine) -> bool:
    """True when the database answers and its schema is at the newest migration."""
    try:
        return await migrations_at_head(engine)
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
