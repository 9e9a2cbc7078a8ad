"""What counts as the database being away (`app.store.outage`), and how it is named."""

from __future__ import annotations

import errno
import socket
import sqlite3
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.store import outage


def sqlite_error(tmp_path: Path, what: str) -> sqlite3.Error:
    """A real error of SQLite's, as the driver raises it."""
    try:
        if what == "cannot open":
            sqlite3.connect(tmp_path / "no" / "such" / "folder" / "db.sqlite")
        elif what == "read-only":
            path = tmp_path / "db.sqlite"
            sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
            readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            readonly.execute("INSERT INTO t VALUES (1)")
        elif what == "no such table":
            sqlite3.connect(":memory:").execute("SELECT * FROM nothing")
        elif what == "syntax":
            sqlite3.connect(":memory:").execute("SELEKT 1")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"no error for {what}")


def wrapped(orig: BaseException, *, invalidated: bool = False) -> DBAPIError:
    """The driver's error as SQLAlchemy raises it, its cause set as a `raise ... from`."""
    error = OperationalError("SELECT 1", {}, orig, connection_invalidated=invalidated)
    error.__cause__ = orig
    return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        TimeoutError(),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), ..."),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        wrapped(Exception("connection was closed in the middle of operation"), invalidated=True),
        wrapped(asyncpg.AdminShutdownError("terminating connection")),
        PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unreachable(error: BaseException) -> None:
    assert outage.unreachable(error)


@pytest.mark.parametrize("what", ["cannot open", "read-only"])
def test_a_sqlite_file_that_cannot_be_opened_or_written_is_unreachable(
    tmp_path: Path, what: str
) -> None:
    error = sqlite_error(tmp_path, what)
    assert outage.unreachable(error)
    assert outage.unreachable(wrapped(error))


@pytest.mark.parametrize("what", ["no such table", "syntax"])
def test_a_wrong_sqlite_statement_is_not(tmp_path: Path, what: str) -> None:
    error = sqlite_error(tmp_path, what)
    assert not outage.unreachable(error)
    assert not outage.unreachable(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad"),
        KeyError("x"),
        OSError(errno.ENOENT, "No such file or directory"),
        PermissionError(errno.EACCES, "Permission denied"),
        IntegrityError("INSERT", {}, Exception("duplicate key value")),
        ProgrammingError("SELECT", {}, Exception("syntax error")),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_bug_is_not_an_outage(error: BaseException) -> None:
    assert not outage.unreachable(error)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://gateway:pw-s3cret@db.internal:5433/jobs", "postgresql, db.internal:5433"),
        ("postgresql+asyncpg://gateway:pw-s3cret@10.0.0.5/jobs", "postgresql, 10.0.0.5"),
        ("postgresql://gateway:pw-s3cret@[::1]:5432/jobs", "postgresql, [::1]:5432"),
        ("sqlite:///data/gateway.sqlite", "sqlite, data/gateway.sqlite"),
        ("sqlite+aiosqlite:////var/lib/gateway.sqlite", "sqlite, /var/lib/gateway.sqlite"),
        ("sqlite://", "sqlite, in memory"),
        ("not a url", "an unparsable DATABASE_URL"),
    ],
)
def test_a_database_is_named_by_dialect_and_place_never_credentials(url: str, named: str) -> None:
    assert outage.where(url) == named
    assert "pw-s3cret" not in outage.message(url, ConnectionRefusedError(111, "refused"))


def test_the_cause_is_one_line_of_the_driver_without_the_statement_or_credentials() -> None:
    orig = asyncpg.CannotConnectNowError(
        "the database system is shutting down\nDETAIL: postgresql://gateway:pw-s3cret@db/jobs"
    )
    error = wrapped(orig)
    cause = outage.cause(error)
    assert cause == "CannotConnectNowError: the database system is shutting down"
    assert "SELECT" not in cause
    assert outage.cause(OSError("postgresql://gateway:pw-s3cret@db:5432 refused")) == (
        "OSError: postgresql://db:5432 refused"
    )
