"""The migrations build the schema, on SQLite and PostgreSQL, and agree with the models.

The tests that run the migrations from scratch take an empty database
(`empty_database_url`); the others take one at the newest schema, a copy of the template the
migrations built for the session (`engine`, tests/databases.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import tables
from app.store.db import (
    MIGRATIONS_DIR,
    DatabaseUnavailable,
    alembic_config,
    create_engine,
    head_revisions,
    heads_in,
    migrate,
    migrations_at_head,
    migrations_current,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_TABLES = {
    "customers",
    "snapshots",
    "jobs",
    "job_stage",  # since 0004
    "events",  # since 0005
    "feed_horizon",  # since 0010
    "object_expectations",  # since 0011
    "maintenance_windows",  # since 0011
    "digest_days",  # since 0011
    "alerts",
    "webhook_deliveries",
    "refresh_leases",  # since 0006
    "api_keys",  # since 0008
    "rate_counts",
    "psa_companies",  # since 0012
    "tickets",
    "job_status_history",
    "alembic_version",
}


def _diff(connection: Connection, metadata: MetaData) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _alembic(connection: Connection, action: str, revision: str) -> None:
    """`alembic upgrade|downgrade <revision>` on the caller's connection and transaction."""
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


async def test_migrate_builds_an_empty_database(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        assert not await migrations_current(engine)
        await migrate(engine)
        assert await migrations_current(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(_table_names) == EXPECTED_TABLES
        await migrate(engine)  # at head already: nothing to do, no error
        assert await migrations_current(engine)
    finally:
        await engine.dispose()


async def test_models_and_migrations_do_not_drift(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_diff, tables.metadata) == []


async def test_drift_check_notices_a_difference(engine: AsyncEngine) -> None:
    drifted = MetaData(naming_convention=tables.NAMING_CONVENTION)
    for table in tables.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(Column("invented", Integer, nullable=True))
    async with engine.connect() as connection:
        diff = await connection.run_sync(_diff, drifted)
    assert [d[0] for d in diff if isinstance(d, tuple)] == ["add_column"]


async def test_downgrade_to_base_and_back(engine: AsyncEngine) -> None:
    def downgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    async with engine.begin() as connection:
        await connection.run_sync(downgrade)
    async with engine.connect() as connection:
        assert await connection.run_sync(_table_names) == {"alembic_version"}
    assert not await migrations_current(engine)
    await migrate(engine)
    assert await migrations_current(engine)


# The tables as revision 0002 left them, only the columns a row needs: written out, so that
# later changes to `app.store.tables` cannot change what this test stores at 0002.
_Timestamp = sa.DateTime(timezone=True)
CUSTOMERS_0002 = sa.table(
    "customers",
    sa.column("id", sa.String()),
    sa.column("created_at", _Timestamp),
    sa.column("updated_at", _Timestamp),
)
JOBS_0002 = sa.table(
    "jobs",
    sa.column("customer_id", sa.String()),
    sa.column("job_id", sa.String()),
    sa.column("module_code", sa.Integer()),
    sa.column("job_type", sa.String()),
    sa.column("module", sa.String()),
    sa.column("status", sa.String()),
    sa.column("first_seen_at", _Timestamp),
    sa.column("last_seen_at", _Timestamp),
    sa.column("raw", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    sa.column("sort_start", _Timestamp),
    sa.column("sort_modified", _Timestamp),
    sa.column("sort_duration", sa.Integer()),
)
# module_code -> the name stored at 0002, and the name it has from 0003 on.
STORED_MODULE_NAMES = {
    8: ("archiver", "archiver"),
    309: ("archiver", "teams_chat"),
    362: ("azure_sql", "native_azure_sql_backup_monitoring"),
    304: ("microsoft_365_groups", "microsoft_365_groups"),
    999: ("unknown", "unknown"),
}


async def _stored_modules(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as connection:
        result = await connection.execute(sa.select(JOBS_0002.c.module_code, JOBS_0002.c.module))
        return {code: module for code, module in result.all()}


async def test_0003_renames_the_stored_module_names(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "upgrade", "0002")
        when = datetime(2025, 9, 11, 3, 0, 0, tzinfo=UTC)
        async with engine.begin() as connection:
            await connection.execute(
                CUSTOMERS_0002.insert().values(id="c1", created_at=when, updated_at=when)
            )
            await connection.execute(
                JOBS_0002.insert(),
                [
                    {
                        "customer_id": "c1",
                        "job_id": f"j{code}",
                        "module_code": code,
                        "job_type": "microsoft_365",
                        "module": old,
                        "status": "finished",
                        "first_seen_at": when,
                        "last_seen_at": when,
                        "raw": {"jobId": f"j{code}", "jobModule": code},
                        "sort_start": when,
                        "sort_modified": when,
                        "sort_duration": 0,
                    }
                    for code, (old, _) in STORED_MODULE_NAMES.items()
                ],
            )

        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "upgrade", "0003")
        assert await _stored_modules(engine) == {
            code: new for code, (_, new) in STORED_MODULE_NAMES.items()
        }

        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "downgrade", "0002")
        assert await _stored_modules(engine) == {
            code: old for code, (old, _) in STORED_MODULE_NAMES.items()
        }

        await migrate(engine)  # and on to head from there
        assert await migrations_current(engine)
        assert (await _stored_modules(engine))[309] == "teams_chat"
    finally:
        await engine.dispose()


EVENTS_0005 = sa.table(
    "events",
    sa.column("id", sa.BigInteger()),
    sa.column("type", sa.String()),
    sa.column("at", _Timestamp),
    sa.column("customer_id", sa.String()),
    sa.column("data", sa.Text()),
)


async def _horizon(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        found = await connection.execute(text("SELECT purged_upto FROM feed_horizon"))
        return int(found.one()[0])


async def test_0010_starts_the_horizon_where_an_earlier_purge_left_the_feed(
    empty_database_url: str,
) -> None:
    """Retention purged events before 0010 noted how far: the horizon starts just below the
    oldest event kept, or at the last id handed out when none is kept."""
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "upgrade", "0009")
        when = datetime(2025, 9, 11, 3, 0, 0, tzinfo=UTC)
        async with engine.begin() as connection:
            event = {"type": "job.created", "at": when, "customer_id": "c1", "data": "{}"}
            await connection.execute(EVENTS_0005.insert(), [event] * 5)  # ids 1..5
            await connection.execute(EVENTS_0005.delete().where(EVENTS_0005.c.id <= 3))
        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "upgrade", "0010")
        assert await _horizon(engine) == 3

        async with engine.begin() as connection:
            await connection.run_sync(_alembic, "downgrade", "0009")
            await connection.execute(EVENTS_0005.delete())
        await migrate(engine)
        assert await _horizon(engine) == 5
    finally:
        await engine.dispose()


async def test_0010_on_a_feed_never_purged_starts_the_horizon_at_zero(engine: AsyncEngine) -> None:
    assert await _horizon(engine) == 0


async def test_migrate_takes_a_url_from_any_working_directory(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    await migrate(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        assert await migrations_current(engine)
    finally:
        await engine.dispose()


async def test_unknown_revision_is_unmigratable(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    assert not await migrations_current(engine)
    with pytest.raises(DatabaseUnavailable, match="DATABASE_URL"):
        await migrate(engine)


async def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "gateway.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
            assert (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert await asyncio.to_thread(Path(f"{path}-wal").exists)
    finally:
        await engine.dispose()
    assert path.is_file()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://gateway:hunter2@127.0.0.1:1/jobs",
        "postgres://gateway:hunter2@127.0.0.1:1/jobs",
    ],
)
async def test_unreachable_database_raises_one_line_without_password(url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        await migrate(url)
    message = str(caught.value)
    assert message.startswith("DATABASE_URL=")
    assert "\n" not in message
    assert "hunter2" not in message
    assert "127.0.0.1:1" in message

    engine = create_engine(url)
    try:
        assert not await migrations_current(engine)
    finally:
        await engine.dispose()


async def test_unusable_sqlite_path_raises_database_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseUnavailable, match="DATABASE_URL"):
        await migrate(f"sqlite:///{blocker / 'sub' / 'db.sqlite'}")


def test_migrations_are_found_in_the_top_level_migrations_of_a_checkout() -> None:
    # One copy: the checkout's migrations/, which the wheel carries as app/migrations
    # (tests/e2e/test_packaging.py installs one and migrates with it).
    assert MIGRATIONS_DIR == REPO_ROOT / "migrations"
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert not (REPO_ROOT / "app" / "migrations").exists(), "a second copy inside app/"


def test_alembic_command_line_upgrades_and_finds_no_drift(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    for args in (["upgrade", "head"], ["check"], ["current"]):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert f"{heads[0]} (head)" in result.stdout


MIGRATE_IN_A_PROCESS = (
    "import asyncio, sys; from app.store.db import migrate; asyncio.run(migrate(sys.argv[1]))"
)


async def test_processes_migrating_at_once_take_turns(empty_database_url: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_IN_A_PROCESS,
            empty_database_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(process.communicate() for process in processes)), timeout=120
    )
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr.decode()
    engine = create_engine(empty_database_url)
    try:
        assert await migrations_current(engine)
    finally:
        await engine.dispose()


# -- At head, asked without Alembic ---------------------------------------------------------
#
# `migrate` and /readyz read the head revision from the scripts' text and the database's
# revision with one query, and import Alembic only to migrate: these hold both to Alembic's
# own answers.


def _alembic_heads(versions: Path) -> frozenset[str]:
    """Alembic's heads of the scripts in `versions` (the `versions/` of a script directory)."""
    assert versions.name == "versions"
    return frozenset(ScriptDirectory(str(versions.parent)).get_heads())


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    assert head_revisions() == _alembic_heads(MIGRATIONS_DIR / "versions")
    assert len(head_revisions()) == 1


SCRIPT = """from alembic import op

revision{annotation} = {revision!r}
down_revision{annotation} = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT 1")
"""


@pytest.mark.parametrize(
    "scripts",
    [
        {"a": None, "b": "a", "c": "b"},  # a line
        {"a": None, "b": "a", "c": "a"},  # two branches: two heads
        {"a": None, "b": "a", "c": "a", "d": ("b", "c")},  # merged again
        {"a": None, "b": "a", "c": "a", "d": ["b", "c"], "e": "d"},
    ],
    ids=["line", "branches", "merge", "after-merge"],
)
def test_heads_in_a_tree_of_scripts_are_alembics(tmp_path: Path, scripts: dict[str, Any]) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "__init__.py").write_text("revision = 'not-a-script'\n")
    for n, (revision, down) in enumerate(scripts.items()):
        annotation = ": str" if n % 2 else ""  # as Alembic's template writes, and plainly
        text = SCRIPT.format(annotation=annotation, revision=revision, down=down)
        (versions / f"{n:04d}_{revision}.py").write_text(text)
    assert heads_in(versions) == _alembic_heads(versions)


def test_a_script_whose_revision_is_not_a_literal_is_left_to_alembic(tmp_path: Path) -> None:
    (tmp_path / "0001_a.py").write_text("revision = 'a'\ndown_revision = None\n")
    assert heads_in(tmp_path) == {"a"}
    (tmp_path / "0002_b.py").write_text("revision = 'b'\ndown_revision = revision_of('a')\n")
    assert heads_in(tmp_path) is None


def _alembic_at_head(connection: Connection) -> bool:
    current = MigrationContext.configure(connection).get_current_heads()
    return frozenset(current) == _alembic_heads(MIGRATIONS_DIR / "versions")


async def test_at_head_is_what_alembic_says(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        for step in ("nothing", "upgrade 0013", "upgrade head", "downgrade base"):
            if step != "nothing":
                action, revision = step.split()
                async with engine.begin() as connection:
                    await connection.run_sync(_alembic, action, revision)
            async with engine.connect() as connection:
                alembic_says = await connection.run_sync(_alembic_at_head)
            assert await migrations_at_head(engine) == alembic_says, step
            assert alembic_says == (step == "upgrade head"), step
    finally:
        await engine.dispose()


MIGRATE_AND_TELL = """
import asyncio, sys
from app.store.db import alembic_config, create_engine, migrate, migrations_at_head

def downgrade(connection, revision):
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)

async def main(url):
    engine = create_engine(url)
    try:
        await migrate(engine)
        print(await migrations_at_head(engine), "alembic" in sys.modules)
        async with engine.begin() as connection:
            await connection.run_sync(downgrade, "0013")
        print(await migrations_at_head(engine))
        await migrate(engine)
        print(await migrations_at_head(engine))
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""


async def test_a_process_imports_alembic_only_to_migrate(database_url: str) -> None:
    """A start-up on a current database asks and goes on, without Alembic (a second of CPU);
    on one that is behind it still migrates."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MIGRATE_AND_TELL,
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == ["True False", "False", "True"]
