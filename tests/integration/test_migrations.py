"""The migrations build the schema, on SQLite and PostgreSQL, and agree with the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Integer, MetaData, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store import tables
from app.store.db import (
    MIGRATIONS_DIR,
    DatabaseUnavailable,
    alembic_config,
    create_engine,
    migrate,
    migrations_current,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_TABLES = {"customers", "snapshots", "jobs", "job_status_history", "alembic_version"}


def _diff(connection: Connection, metadata: MetaData) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrate_builds_an_empty_database(database_url: str) -> None:
    engine = create_engine(database_url)
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


async def test_migrate_takes_a_url_from_any_working_directory(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    await migrate(database_url)
    engine = create_engine(database_url)
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


def test_migrations_are_found_relative_to_the_package() -> None:
    assert MIGRATIONS_DIR == REPO_ROOT / "migrations"
    assert (MIGRATIONS_DIR / "env.py").is_file()


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


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_processes_migrating_at_once_take_turns(database_url: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_IN_A_PROCESS,
            database_url,
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
    engine = create_engine(database_url)
    try:
        assert await migrations_current(engine)
    finally:
        await engine.dispose()
