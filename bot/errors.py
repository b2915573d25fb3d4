"""One error hierarchy, and one table that classifies every dependency's failures.

Every failure Parcel meets — a request to the homeserver, a query to its database (PostgreSQL
through asyncpg or psycopg, SQLite), a file in ``data_dir`` — becomes, once, where it is
raised, either a :class:`TransientError` (try again later: connection refused or reset,
timeout, 5xx, 429, a database restarting or failing over, a lock or a serialization conflict,
a full disk) or a :class:`PermanentError` (trying again cannot help: forbidden, not found, too
large, bad content, a bug). Each carries its :class:`Source`, so ``/health`` and the logs can
say *what* is failing. Code that does work raises these; only the scheduler
(``bot/work.py``) decides what follows: retry with backoff, or end the unit and tell the
person waiting. Callers catch :class:`WorkError`, never a tuple of library exceptions.

Edges call :func:`from_exception` (anything), :func:`from_database` (a driver's exception
where the code knows it was talking to its database), :func:`from_http` and
:func:`from_response` (homeserver answers).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sqlite3
from enum import StrEnum
from typing import Any

import aiohttp
import asyncpg
import peewee
import psycopg

# Errcodes that say "this request will never succeed as it is".
PERMANENT_ERRCODES = frozenset({
    "M_FORBIDDEN",
    "M_NOT_FOUND",
    "M_TOO_LARGE",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_UNKNOWN_TOKEN",
    "M_MISSING_TOKEN",
    "M_INVALID_PARAM",
    "M_DUPLICATE_ANNOTATION",
    "M_UNSUPPORTED_ROOM_VERSION",
    "M_INCOMPATIBLE_ROOM_VERSION",
    "M_USER_DEACTIVATED",
    "M_GUEST_ACCESS_FORBIDDEN",
    "M_EXCLUSIVE",
    "M_ROOM_IN_USE",
})
RATE_LIMITED = "M_LIMIT_EXCEEDED"

# SQLSTATEs (whole classes by their first two characters, or single codes) that mean "not
# now" on PostgreSQL: the connection (08), the server shutting down or starting (57P01-03), a
# cancelled statement (57014: a statement timeout), a rollback the server chose (40: a
# serialization failure, a deadlock), its resources (53: too many connections, disk full, out
# of memory), a lock not available (55P03), a read-only transaction (25006: a failover that
# left us on a standby for a moment), system and I/O errors (58).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "58"})
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57014", "55P03", "55006",
                                 "25006", "25P03"})
# SQLite's primary result codes that mean "not now": BUSY (5), LOCKED (6).
SQLITE_TRANSIENT = frozenset({5, 6})
SQLITE_FULL = 13
# Messages of the same, for a sqlite3 without ``sqlite_errorcode``.
_SQLITE_TRANSIENT_MESSAGES = ("database is locked", "database table is locked",
                              "database is busy")
# Local file errors an admin can act on, and whether waiting can help (space freed, files
# closed) or not (permissions, a read-only file system, a failing disk).
DISK_ERRNOS: dict[int, bool] = {
    errno.ENOSPC: True,
    errno.EDQUOT: True,
    errno.EMFILE: True,
    errno.ENFILE: True,
    errno.ENOMEM: True,
    errno.EACCES: False,
    errno.EPERM: False,
    errno.EROFS: False,
    errno.EIO: False,
    errno.ENOENT: False,
    errno.EISDIR: False,
    errno.ENOTDIR: False,
    errno.EEXIST: False,
    errno.ENAMETOOLONG: False,
}


class Source(StrEnum):
    """What failed: the homeserver, the database, the local disk, or Parcel itself."""

    HOMESERVER = "homeserver"
    DATABASE = "database"
    DISK = "disk"
    INTERNAL = "internal"


class WorkError(Exception):
    """Root of every failure of work Parcel does; ``reason`` is fit to show to a person."""

    def __init__(self, reason: str, source: Source = Source.HOMESERVER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source


class TransientError(WorkError):
    """Worth retrying later. ``retry_after`` is the wait the server asked for, in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 source: Source = Source.HOMESERVER) -> None:
        super().__init__(reason, source)
        self.retry_after = retry_after


class PermanentError(WorkError):
    """Retrying cannot help. ``code`` is a short machine-readable cause, for metrics."""

    def __init__(self, reason: str, code: str = "permanent",
                 source: Source = Source.HOMESERVER) -> None:
        super().__init__(reason, source)
        self.code = code


class Waiting(WorkError):
    """Not a failure: the work must wait for other work (``key``), which wakes it when done.

    ``key`` is the work unit key waited for (the scheduler wakes this unit when that unit
    finishes); ``at_most`` bounds the wait, for things nobody will announce.
    """

    def __init__(self, reason: str, key: str | None = None, at_most: float = 60.0) -> None:
        super().__init__(reason, Source.INTERNAL)
        self.key = key
        self.at_most = at_most


class NotLeader(TransientError):
    """This instance does not hold the leader lease (any more): it must not talk to the
    homeserver, and the database refuses its writes (``bot/leader.py``, ``bot/store/db.py``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"not the leader: {detail}", source=Source.DATABASE)


# SQLSTATE of a write PostgreSQL refused because the writer's lease term is not the current
# one (raised by ``parcel_check_term()``, store migration 9).
FENCED_SQLSTATE = "PTERM"

# Exceptions from the transport (aiohttp, sockets, deadlines) that mean "not now".
NETWORK_ERRORS = (aiohttp.ClientError, ConnectionError, TimeoutError, asyncio.TimeoutError,
                  socket.gaierror)


def _detail(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def _unwrap(exc: BaseException) -> BaseException:
    """The driver's exception under peewee's wrapper (peewee re-raises with it as args[0])."""
    if isinstance(exc, peewee.PeeweeException):
        inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        return inner or exc.__context__ or exc
    return exc


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from one of the database drivers Parcel uses."""
    return isinstance(_unwrap(exc), asyncpg.PostgresError | asyncpg.InterfaceError
                      | asyncpg.InternalClientError | psycopg.Error | sqlite3.Error
                      | peewee.PeeweeException)


def database_transient(exc: BaseException) -> bool:
    """Whether a database driver's exception (or a socket error talking to it) means "not now"."""
    exc = _unwrap(exc)
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError
                  | psycopg.OperationalError | psycopg.InterfaceError):
        # The connection closed under the query, or "another operation is in progress" on a
        # connection the server dropped: the next connection will do.
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in SQLITE_TRANSIENT or code & 0xFF == SQLITE_FULL
        return any(text in str(exc) for text in _SQLITE_TRANSIENT_MESSAGES)
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError)


def from_database(exc: BaseException, what: str) -> WorkError:
    """Classify an exception raised while talking to the database (store or crypto store)."""
    if isinstance(exc, WorkError):
        return exc
    inner = _unwrap(exc)
    if _sqlstate(inner) == FENCED_SQLSTATE:
        return NotLeader(f"{what}: the database refused a write of a deposed leader "
                         f"({getattr(inner, 'message', None) or _detail(inner)})")
    if isinstance(inner, sqlite3.OperationalError) and (
        getattr(inner, "sqlite_errorcode", 0) or 0
    ) & 0xFF == SQLITE_FULL:
        return TransientError(f"{what}: data_dir is full ({_detail(inner)}); free some space",
                              source=Source.DISK)
    if database_transient(inner):
        return TransientError(f"{what}: the database is unavailable ({_detail(inner)})",
                              source=Source.DATABASE)
    return PermanentError(f"{what}: database error {type(inner).__name__}: {_detail(inner)}",
                          code="database", source=Source.DATABASE)


def from_disk(exc: OSError, what: str) -> WorkError:
    """Classify a local file error with a message an admin can act on."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(f"{what}: data_dir is full{where}; free some space",
                              source=Source.DISK)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return TransientError(f"{what}: too many open files{where}", source=Source.DISK)
    if exc.errno == errno.ENOMEM:
        return TransientError(f"{what}: out of memory{where}", source=Source.DISK)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(f"{what}: Parcel may not write there{where}: {exc.strerror}; "
                              "check data_dir's owner and permissions", code="disk",
                              source=Source.DISK)
    return PermanentError(f"{what}: local file error{where}: {exc.strerror or _detail(exc)}",
                          code="disk", source=Source.DISK)


def _is_disk_error(exc: OSError) -> bool:
    return exc.filename is not None or exc.errno in DISK_ERRNOS


def from_exception(exc: BaseException, what: str) -> WorkError:
    """Classify an exception raised while doing ``what`` (already classified ones pass through).

    Database drivers' errors by their SQLSTATE or result code; network errors are the
    homeserver's; other ``OSError``\\ s are the local disk's; anything else is a bug.
    """
    if isinstance(exc, WorkError):
        return exc
    if is_database_error(exc):
        return from_database(exc, what)
    if isinstance(exc, NETWORK_ERRORS):
        return TransientError(f"{what}: the homeserver could not be reached ({_detail(exc)})")
    if isinstance(exc, OSError):
        if _is_disk_error(exc):
            return from_disk(exc, what)
        return TransientError(f"{what}: the homeserver could not be reached ({_detail(exc)})")
    return PermanentError(f"{what}: unexpected {type(exc).__name__}: {exc}", code="internal",
                          source=Source.INTERNAL)


def from_http(status: int, errcode: str | None, message: str, what: str,
              retry_after_ms: object = None) -> WorkError:
    """Classify an HTTP error answer (status, Matrix errcode, message) to a request for ``what``."""
    detail = f"{what}: {message or errcode or status}"
    if status == 429 or errcode == RATE_LIMITED:
        retry_after = (
            float(retry_after_ms) / 1000.0
            if isinstance(retry_after_ms, int | float) and not isinstance(retry_after_ms, bool)
            and retry_after_ms >= 0 else None
        )
        return TransientError(f"{detail} (rate limited)", retry_after=retry_after)
    if status >= 500 or status in (408, 0):
        return TransientError(detail)
    if status == 413:
        return PermanentError(detail, code="M_TOO_LARGE")
    if errcode in PERMANENT_ERRCODES:
        return PermanentError(detail, code=errcode)
    if 400 <= status < 500:
        return PermanentError(detail, code=errcode or f"http_{status}")
    return TransientError(detail)


def from_response(response: Any, what: str) -> WorkError:
    """Classify a matrix-nio ``ErrorResponse`` answered to a request for ``what``."""
    transport = getattr(response, "transport_response", None)
    status = getattr(transport, "status", None)
    errcode = getattr(response, "status_code", None)
    message = getattr(response, "message", None) or ""
    if not isinstance(status, int):
        # nio without a transport response: judge by the errcode alone.
        status = 429 if errcode == RATE_LIMITED else 400 if errcode in PERMANENT_ERRCODES else 500
    return from_http(status, errcode if isinstance(errcode, str) else None, str(message), what,
                     getattr(response, "retry_after_ms", None))
