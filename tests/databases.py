"""Fresh databases for the tests, at the newest schema, without running every migration for
every test.

The migrations run once: on SQLite into a template file of the session, which each test
copies; on PostgreSQL into a template database, `jobs_gateway_template_<digest>`, from which
the server copies each test's database (`CREATE DATABASE ... TEMPLATE ...`).

- The digest is of the migration scripts' contents: a change to them builds a new template,
  and a template once built serves every later session with the same scripts.
- Other checkouts run their suites against the same server at the same time, maybe with other
  migrations. A template is built under a PostgreSQL advisory lock, into a database of its own
  name, and renamed into place only when whole (and closed to connections, which would stop
  every copy of it); a session that died while building leaves only its build database, which
  the next builder drops.
- `PostgresDatabases` makes test databases ahead of need and drops them behind, each in a
  thread of its own: a test waits for neither (a DROP DATABASE costs seconds of disk syncs on
  a busy machine).

tests/integration/test_migrations.py still runs the migrations from scratch, on empty
databases (`empty_database_url`), and checks that models and migrations do not drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import shutil
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from app.store.db import MIGRATIONS_DIR, migrate

T = TypeVar("T")

TEMPLATE_PREFIX = "jobs_gateway_template_"
TEMPLATE_LOCK_KEY = 0x4A475450  # "JGTP": one builder of templates at a time, server-wide
TEMPLATE_LOCK_WAIT = "300s"  # another session's build takes seconds; this only guards a hang
SPARES = 4
"""Test databases made ahead of need, by MAKERS threads: a copy takes the server about as long
as a quick test takes us."""
MAKERS = 2
DROPS_AT_ONCE = 16
"""Each DROP DATABASE waits for a checkpoint of the whole server, and drops at once share one:
16 drops at once took 0.5-1.7 s on a busy machine, 4 batches of 4 took 10 s. With 4 at once
the drops fell behind the tests, and each worker's last teardown waited minutes for them."""


def run_apart(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(work())` in a thread of its own: the caller may be inside a running event
    loop (a fixture set up for an async test)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def database_url(admin_url: str, database: str) -> str:
    """The URL of `database` on the server of `admin_url` (plain, as DATABASE_URL gives it)."""
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


async def admin(url: str, sql: str) -> None:
    """One statement on its own connection (CREATE and DROP DATABASE take no transaction)."""
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def migrations_digest() -> str:
    """A digest of every file of the migrations (their names and contents)."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in MIGRATIONS_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    for path in files:
        digest.update(path.relative_to(MIGRATIONS_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# -- SQLite ---------------------------------------------------------------------------------


async def build_sqlite_template(path: Path) -> Path:
    """A SQLite file at the newest schema, built by the migrations, whole in its main file."""
    await migrate(f"sqlite:///{path}")
    # The engine is closed; the checkpoint makes sure no page is left in a -wal file, so
    # that copying the main file copies the database.
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return path


def copy_sqlite(template: Path, path: Path) -> str:
    """A copy of the template at `path`; its URL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


# -- PostgreSQL -----------------------------------------------------------------------------


async def ensure_postgres_template(admin_url: str) -> str:
    """The name of the template database for the current migrations, built if missing."""
    name = TEMPLATE_PREFIX + migrations_digest()
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=10)
    try:
        await connection.execute(f"SET lock_timeout = '{TEMPLATE_LOCK_WAIT}'")
        await connection.execute("SELECT pg_advisory_lock($1)", TEMPLATE_LOCK_KEY)
        try:
            if not await _exists(connection, name):
                await _drop_abandoned_builds(connection)
                await _build(connection, admin_url, name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", TEMPLATE_LOCK_KEY)
    finally:
        await connection.close()
    return name


async def _exists(connection: Any, name: str) -> bool:
    return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))


async def _drop_abandoned_builds(connection: Any) -> None:
    # Builds happen only under the lock, which this session holds: any other is abandoned.
    rows = await connection.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1", TEMPLATE_PREFIX + "%\\_build\\_%"
    )
    for row in rows:
        await connection.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')


async def _build(connection: Any, admin_url: str, name: str) -> None:
    build = f"{name}_build_{uuid.uuid4().hex[:8]}"
    await connection.execute(f'CREATE DATABASE "{build}"')
    try:
        await migrate(database_url(admin_url, build))
        # No connection may be open to a template while it is copied: none is allowed.
        await connection.execute(f'ALTER DATABASE "{build}" WITH ALLOW_CONNECTIONS false')
        await connection.execute(f'ALTER DATABASE "{build}" RENAME TO "{name}"')
    except asyncpg.DuplicateDatabaseError:
        # Built meanwhile by a session outside the lock (one on another admin database).
        await connection.execute(f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)')
    except BaseException:
        await connection.execute(f'DROP DATABASE IF EXISTS "{build}" WITH (FORCE)')
        raise


class PostgresDatabases:
    """Test databases on the server of `admin_url`: copies of `template` made ahead of need
    by threads of their own, and dropped behind by another; `close()` drops what is left and
    waits for every drop."""

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url = admin_url
        self.template = template
        self._makers = ThreadPoolExecutor(max_workers=MAKERS, thread_name_prefix="test-db-make")
        self._spares: deque[Future[str]] = deque()
        self._lock = threading.Lock()
        self._dropper = _Dropper(admin_url)
        self._dropper.start()

    def take(self) -> str:
        """The URL of a fresh database at the newest schema."""
        with self._lock:
            if not self._spares:
                self._spares.append(self._makers.submit(self._make, self.template))
            made = self._spares.popleft()
            while len(self._spares) < SPARES:
                self._spares.append(self._makers.submit(self._make, self.template))
        return database_url(self.admin_url, made.result())

    def take_empty(self) -> str:
        """The URL of a fresh, empty database (as `CREATE DATABASE` makes it)."""
        name = self._makers.submit(self._make, None).result()
        return database_url(self.admin_url, name)

    def give_back(self, url: str) -> None:
        """Drop the database of `url`, in the background."""
        name = make_url(url).database
        assert name is not None
        self._dropper.drop(name)

    def close(self) -> None:
        with self._lock:
            spares, self._spares = list(self._spares), deque()
        for made in spares:
            if not made.cancel():
                with contextlib.suppress(Exception):  # its failure was a test's to report
                    self._dropper.drop(made.result())
        self._makers.shutdown(wait=True)
        self._dropper.close()  # a database left behind fails the session, as it did a test

    def _make(self, template: str | None) -> str:
        name = f"jobs_gateway_test_{uuid.uuid4().hex[:16]}"
        copied = f' TEMPLATE "{template}"' if template else ""
        asyncio.run(admin(self.admin_url, f'CREATE DATABASE "{name}"{copied}'))
        return name


class _Dropper(threading.Thread):
    """Drops databases, those given back meanwhile together (up to DROPS_AT_ONCE): every DROP
    DATABASE waits for a checkpoint of the whole server, and drops at once share one."""

    def __init__(self, admin_url: str) -> None:
        super().__init__(name="test-db-drop", daemon=True)
        self.admin_url = admin_url
        self._names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._failures: list[BaseException] = []

    def drop(self, name: str) -> None:
        self._names.put(name)

    def close(self) -> None:
        self._names.put(None)
        self.join()
        if self._failures:
            raise self._failures[0]

    def run(self) -> None:
        closing = False
        while not closing:
            batch = [self._names.get()]
            while len(batch) < DROPS_AT_ONCE and not self._names.empty():
                batch.append(self._names.get())
            closing = None in batch
            names = [name for name in batch if name is not None]
            if names:
                asyncio.run(self._drop_all(names))

    async def _drop_all(self, names: list[str]) -> None:
        results = await asyncio.gather(
            *(admin(self.admin_url, f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)') for n in names),
            return_exceptions=True,
        )
        self._failures += [r for r in results if isinstance(r, BaseException)]
