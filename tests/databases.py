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
- `PostgresDatabases` copies a test database from the template only when none is free, and
  makes a database given back fresh again for the next test: it ends the connections left
  to it, checks that its schema is still the template's, empties every table and puts back
  the rows and sequences a fresh copy has (`Fresh`). A database whose schema a test changed
  (a migration test's downgrade), or that cannot be made fresh, is dropped instead. Each copy
  writes the whole template to the server's log, and each DROP DATABASE waits for a
  checkpoint of the whole server: seconds of disk syncs on a busy machine, for every test.

tests/integration/test_migrations.py still runs the migrations from scratch, on empty
databases (`empty_database_url`), and checks that models and migrations do not drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import graphlib
import hashlib
import io
import queue
import shutil
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from app.store.db import MIGRATIONS_DIR, migrate

T = TypeVar("T")

TEMPLATE_PREFIX = "jobs_gateway_template_"
TEMPLATE_LOCK_KEY = 0x4A475450  # "JGTP": one builder of templates at a time, server-wide
TEMPLATE_LOCK_WAIT = "300s"  # another session's build takes seconds; this only guards a hang
SPARES = 1
"""Test databases copied ahead of need, by MAKERS threads: most tests take a database given
back by the one before, and a spare serves a test that holds two at once."""
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


SCHEMA_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT 'column ' || c.relname || ' ' || c.relkind::text || ' ' || a.attnum || ' ' || a.attname
        || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull
        || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS item
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    UNION ALL
    SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'trigger ' || tgrelid::regclass || ' ' || pg_get_triggerdef(oid)
    FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc)
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'revision ' || version_num FROM alembic_version
) AS schema
"""
"""The schema of a database in one value: its tables' columns, indexes, constraints,
triggers and functions, and its Alembic revision."""


@dataclass(frozen=True)
class Fresh:
    """What a fresh copy of the template holds, to make a database given back fresh again:
    its schema's fingerprint, the rows the migrations put in (binary COPY, by table) and the
    state of every sequence."""

    fingerprint: str
    tables: tuple[str, ...]  # every table but Alembic's, a table after those referring to it
    rows: tuple[tuple[str, bytes], ...]
    sequences: tuple[tuple[str, int, bool], ...]  # (name, last value, called)

    @classmethod
    async def learn(cls, connection: Any) -> Fresh:
        names = [
            row["name"]
            for row in await connection.fetch(
                "SELECT quote_ident(tablename) AS name FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                " ORDER BY tablename"
            )
        ]
        references = await connection.fetch(
            "SELECT quote_ident(c.relname) AS child, quote_ident(p.relname) AS parent"
            " FROM pg_constraint f JOIN pg_class c ON c.oid = f.conrelid"
            " JOIN pg_class p ON p.oid = f.confrelid"
            " WHERE f.contype = 'f' AND f.connamespace = 'public'::regnamespace"
        )
        children: dict[str, set[str]] = {name: set() for name in names}
        for row in references:
            if row["child"] != row["parent"]:
                children[row["parent"]].add(row["child"])
        # Emptied rows that refer to others first: a table after every table referring to it.
        tables = tuple(graphlib.TopologicalSorter(children).static_order())
        rows = []
        for table in names:
            if await connection.fetchval(f"SELECT EXISTS (SELECT FROM {table})"):
                data = io.BytesIO()
                await connection.copy_from_table(table, output=data, format="binary")
                rows.append((table, data.getvalue()))
        sequences = []
        for (name,) in await connection.fetch(
            "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"
        ):
            state = await connection.fetchrow(f"SELECT last_value, is_called FROM {name}")
            sequences.append((name, state["last_value"], state["is_called"]))
        return cls(
            fingerprint=await connection.fetchval(SCHEMA_FINGERPRINT),
            tables=tables,
            rows=tuple(rows),
            sequences=tuple(sequences),
        )

    async def restore(self, connection: Any) -> bool:
        """Make the database of `connection` as fresh as the template again; False, changing
        nothing, when its schema is no longer the template's."""
        async with connection.transaction():
            if await connection.fetchval(SCHEMA_FINGERPRINT) != self.fingerprint:
                return False
            # DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE makes new files for
            # every table and index (70 ms against 3). One round trip for it all.
            await connection.execute(
                "".join(f"DELETE FROM {table};" for table in self.tables)
                + "".join(
                    f"SELECT setval({_literal(name)}, {int(value)}, {called});"
                    for name, value, called in self.sequences
                )
            )
            for table, data in self.rows:
                await connection.copy_to_table(table, source=io.BytesIO(data), format="binary")
        return True


def _literal(text: str) -> str:
    """`text` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


class PostgresDatabases:
    """Test databases on the server of `admin_url`, copies of `template`: a database given
    back is made fresh again in the background (`Fresh`) for the next test to take, and a
    copy is made only when none is free, with a spare made ahead; `close()` drops them all
    and waits for every drop."""

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url = admin_url
        self.template = template
        self._makers = ThreadPoolExecutor(max_workers=MAKERS, thread_name_prefix="test-db-make")
        self._refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-fresh")
        self._spares: deque[Future[str]] = deque()
        self._given_back: deque[Future[str | None]] = deque()  # made fresh again, or dropped
        self._copies: set[str] = set()  # the copies of the template this session made
        self._fresh: Fresh | None = None
        self._lock = threading.Lock()
        self._dropper = _Dropper(admin_url)
        self._dropper.start()

    def take(self) -> str:
        """The URL of a fresh database at the newest schema."""
        while True:
            with self._lock:
                given_back = self._given_back.popleft() if self._given_back else None
            if given_back is None:
                break
            name = given_back.result()
            if name is not None:
                return database_url(self.admin_url, name)
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
        """Make the database of `url` fresh again for the next test, or drop it (an empty
        one, or one whose schema changed), in the background."""
        name = make_url(url).database
        assert name is not None
        if name not in self._copies:
            self._dropper.drop(name)
            return
        with self._lock:
            self._given_back.append(self._refresher.submit(self._make_fresh, name))

    def close(self) -> None:
        with self._lock:
            spares, self._spares = list(self._spares), deque()
            given_back, self._given_back = list(self._given_back), deque()
        for made in spares:
            if not made.cancel():
                with contextlib.suppress(Exception):  # its failure was a test's to report
                    self._dropper.drop(made.result())
        for fresh in given_back:
            if (name := fresh.result()) is not None:
                self._dropper.drop(name)
        self._makers.shutdown(wait=True)
        self._refresher.shutdown(wait=True)
        self._dropper.close()  # a database left behind fails the session, as it did a test

    def _make(self, template: str | None) -> str:
        name = f"jobs_gateway_test_{uuid.uuid4().hex[:16]}"
        copied = f' TEMPLATE "{template}"' if template else ""
        asyncio.run(admin(self.admin_url, f'CREATE DATABASE "{name}"{copied}'))
        if template is not None:
            if self._fresh is None:  # the first copy, before any test has it: what fresh holds
                fresh = asyncio.run(self._learn(name))
                with self._lock:
                    self._fresh = self._fresh or fresh
            with self._lock:
                self._copies.add(name)
        return name

    async def _learn(self, name: str) -> Fresh:
        connection = await asyncpg.connect(asyncpg_dsn(self.admin_url, name), timeout=10)
        try:
            return await Fresh.learn(connection)
        finally:
            await connection.close()

    def _make_fresh(self, name: str) -> str | None:
        """`name` fresh again, or None when it was dropped instead."""
        fresh = self._fresh
        assert fresh is not None

        async def restore() -> bool:
            connection = await asyncpg.connect(asyncpg_dsn(self.admin_url, name), timeout=10)
            try:
                # What the test left connected (a server process, an engine not disposed)
                # holds locks and could still write: ended, as DROP DATABASE ... FORCE would.
                await connection.execute(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return await fresh.restore(connection)
            finally:
                await connection.close()

        try:
            restored = asyncio.run(restore())
        except Exception:
            restored = False  # not reusable: dropped, as every database was before
        if restored:
            return name
        with self._lock:
            self._copies.discard(name)
        self._dropper.drop(name)
        return None


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
