"""The database going away: which errors say so, and how to name the database in a message.

Every part of the service asks here, so that one list decides what a database outage is:

- `DRIVER_ERRORS`: what the database's drivers and SQLAlchemy raise. A refresh that fails
  with one of them failed on the database (a source error of kind `database`), not on a bug.
- `unreachable(exc)`: the database cannot be reached or written: a refused, dropped or
  timed-out connection, a server shutting down or refusing connections (PostgreSQL), a file
  that cannot be opened or written, a disk I/O error or a full disk (SQLite). The API answers
  these with 503 `database_unavailable`, never 500: the request was fine and will work again
  when the database is back. Any other error (a constraint, bad SQL, a bug) is not an outage.
- `where(url)` names a database as `<dialect>, <host:port or file>`; `cause(exc)` is the
  driver's reason in one line. Neither ever carries a credential or a statement.
"""

from __future__ import annotations

import errno
import re
import socket
import sqlite3

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

DRIVER_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg raises the socket's own error when it cannot connect (SQLAlchemy does not wrap
    # it): ConnectionRefusedError, TimeoutError, socket.gaierror, ...
    OSError,
)
"""What a database driver (or SQLAlchemy around it) raises."""

_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EADDRNOTAVAIL,
    }
)

# SQLite's primary result codes (the low byte of an extended one) that mean the file cannot
# be opened or written, as opposed to a statement that is wrong.
_SQLITE_OUTAGE_CODES = frozenset(
    {
        3,  # SQLITE_PERM: access permission denied
        8,  # SQLITE_READONLY: attempt to write a readonly database (the file or its folder)
        10,  # SQLITE_IOERR: disk I/O error
        13,  # SQLITE_FULL: database or disk is full
        14,  # SQLITE_CANTOPEN: unable to open database file
    }
)
_SQLITE_OUTAGE_MESSAGES = (
    "unable to open database file",
    "readonly database",
    "disk i/o error",
    "database or disk is full",
)

# PostgreSQL SQLSTATEs (or their classes) that mean the server cannot be had: connection
# exceptions, the server shutting down or starting up, too many connections, credentials
# or a database it refuses.
_POSTGRES_OUTAGE_STATES = ("08", "28", "57P01", "57P02", "57P03", "53300", "3D000")


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the database cannot be reached or written."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _says_unreachable(current):
            return True
        wrapped = current.orig if isinstance(current, DBAPIError) else None
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


def _says_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        # SQLAlchemy saw the connection die under it (and dropped it from the pool).
        return bool(exc.connection_invalidated)
    if isinstance(exc, PoolTimeout):
        return True  # no connection could be had in time
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _SQLITE_OUTAGE_CODES
        return any(m in str(exc).lower() for m in _SQLITE_OUTAGE_MESSAGES)
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(_POSTGRES_OUTAGE_STATES)
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection" in str(exc).lower() and "closed" in str(exc).lower()
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, OSError):
        if exc.errno in _NETWORK_ERRNOS:
            return True
        # asyncio's create_connection, when every address of a host name failed differently
        # (::1 and 127.0.0.1 for `localhost`), raises a bare OSError naming them all.
        return exc.errno is None and str(exc).startswith("Multiple exceptions:")
    return False


def where(url: str) -> str:
    """`<dialect>, <host:port or file>` of a database URL: never a user or a password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "an unparsable DATABASE_URL"
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
            return "sqlite, in memory"
        return f"sqlite, {database.removeprefix('file:')}"
    host = parsed.host or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{dialect}, {host}:{parsed.port}" if parsed.port else f"{dialect}, {host}"


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]*@")


def cause(exc: BaseException) -> str:
    """The driver's reason in one line: `Type: first line`, of the innermost error that says
    the database is away (SQLAlchemy's own message would carry the statement)."""
    reason: BaseException = exc
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _says_unreachable(current) and not isinstance(current, DBAPIError):
            reason = current
            break
        wrapped = current.orig if isinstance(current, DBAPIError) else None
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
        if current is not None:
            reason = current
    lines = str(reason).strip().splitlines()
    text = _URL_CREDENTIALS.sub(r"\1", lines[0]) if lines else ""
    name = type(reason).__name__
    return f"{name}: {text[:300]}" if text else name


def message(url: str, exc: BaseException) -> str:
    """`the database (<where>) cannot be reached: <cause>`."""
    return f"the database ({where(url)}) cannot be reached: {cause(exc)}"
