"""Failures are classified once: transient (retry later) or permanent (end and tell)."""

from __future__ import annotations

import errno
import sqlite3
import tempfile
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import asyncpg
import peewee
import psycopg
import pytest

from bot.errors import (
    FENCED_SQLSTATE,
    NotLeader,
    PermanentError,
    Source,
    TransientError,
    from_database,
    from_exception,
    from_http,
    from_response,
)

# (HTTP status, errcode, retry_after_ms) -> (transient?, permanent code, retry_after seconds)
HTTP_CASES = [
    (429, "M_LIMIT_EXCEEDED", 1500, (True, None, 1.5)),
    (429, None, None, (True, None, None)),
    (400, "M_LIMIT_EXCEEDED", 200, (True, None, 0.2)),
    (429, "M_LIMIT_EXCEEDED", "soon", (True, None, None)),
    (429, "M_LIMIT_EXCEEDED", True, (True, None, None)),
    (500, "M_UNKNOWN", None, (True, None, None)),
    (502, None, None, (True, None, None)),
    (503, None, None, (True, None, None)),
    (504, None, None, (True, None, None)),
    (408, None, None, (True, None, None)),
    (403, "M_FORBIDDEN", None, (False, "M_FORBIDDEN", None)),
    (404, "M_NOT_FOUND", None, (False, "M_NOT_FOUND", None)),
    (413, "M_TOO_LARGE", None, (False, "M_TOO_LARGE", None)),
    (413, None, None, (False, "M_TOO_LARGE", None)),
    (400, "M_BAD_JSON", None, (False, "M_BAD_JSON", None)),
    (400, "M_NOT_JSON", None, (False, "M_NOT_JSON", None)),
    (400, "M_DUPLICATE_ANNOTATION", None, (False, "M_DUPLICATE_ANNOTATION", None)),
    (401, "M_UNKNOWN_TOKEN", None, (False, "M_UNKNOWN_TOKEN", None)),
    (400, "M_UNKNOWN", None, (False, "M_UNKNOWN", None)),
    (400, None, None, (False, "http_400", None)),
]


@pytest.mark.parametrize(("status", "errcode", "retry_after_ms", "expected"), HTTP_CASES)
def test_http_answers_are_classified(status, errcode, retry_after_ms, expected) -> None:
    """429 and 5xx are transient (with the server's wait); other 4xx are permanent by errcode."""
    transient, code, retry_after = expected
    error = from_http(status, errcode, "the server said no", "sending x", retry_after_ms)
    assert isinstance(error, TransientError) is transient
    assert isinstance(error, PermanentError) is not transient
    if transient:
        assert error.retry_after == retry_after
    else:
        assert error.code == code
    assert error.reason.startswith("sending x: ")


def _nio_error(status: int | None, errcode: str | None, retry_after_ms: int | None = None):
    transport = SimpleNamespace(status=status) if status is not None else None
    return SimpleNamespace(transport_response=transport, status_code=errcode,
                           message="nope", retry_after_ms=retry_after_ms)


@pytest.mark.parametrize(
    ("response", "transient", "code"),
    [
        (_nio_error(429, "M_LIMIT_EXCEEDED", 300), True, None),
        (_nio_error(502, None), True, None),
        (_nio_error(403, "M_FORBIDDEN"), False, "M_FORBIDDEN"),
        (_nio_error(None, "M_FORBIDDEN"), False, "M_FORBIDDEN"),
        (_nio_error(None, "M_LIMIT_EXCEEDED", 10), True, None),
        (_nio_error(None, None), True, None),
    ],
)
def test_nio_error_responses_are_classified(response, transient: bool, code: str | None) -> None:
    """nio error responses are judged by HTTP status, or by errcode when nio kept no status."""
    error = from_response(response, "joining !r")
    assert isinstance(error, TransientError) is transient
    if not transient:
        assert error.code == code


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (aiohttp.ClientConnectionError("refused"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError(), True),
        (TimeoutError(), True),
        (OSError("network unreachable"), True),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_exceptions_are_classified(exc: Exception, transient: bool) -> None:
    """Transport exceptions are transient; anything else is a permanent internal error."""
    error = from_exception(exc, "uploading a.png")
    assert isinstance(error, TransientError) is transient
    if not transient:
        assert isinstance(error, PermanentError) and error.code == "internal"


def test_classified_errors_pass_through_unchanged() -> None:
    """An error classified where it was raised is not classified again."""
    original = PermanentError("too big", code="M_TOO_LARGE")
    assert from_exception(original, "anything") is original


def _sqlite_locked() -> sqlite3.OperationalError:
    """A real "database is locked" from SQLite: a second writer while the first holds the lock."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.db"
        first = sqlite3.connect(path, isolation_level=None)
        second = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            first.execute("CREATE TABLE t (x INTEGER)")
            first.execute("BEGIN IMMEDIATE")
            try:
                second.execute("INSERT INTO t VALUES (1)")
            except sqlite3.OperationalError as exc:
                return exc
            raise AssertionError("the second writer was not refused")
        finally:
            first.close()
            second.close()


def _sqlite_syntax() -> sqlite3.OperationalError:
    try:
        sqlite3.connect(":memory:").execute("SELEC 1")
    except sqlite3.OperationalError as exc:
        return exc
    raise AssertionError("unreachable")


def _peewee_wrapped(inner: Exception) -> Exception:
    """What nio's crypto store raises: peewee's wrapper around the driver's exception."""
    try:
        with peewee.ExceptionWrapper(peewee.EXCEPTIONS):
            raise inner
    except peewee.PeeweeException as exc:
        return exc
    raise AssertionError("unreachable")


# (exception, what it is) -> transient?, source. Written out here, one row per failure mode.
DATABASE_CASES = [
    # PostgreSQL through asyncpg: a restart or failover under in-flight queries.
    (asyncpg.AdminShutdownError("terminating connection"), True, Source.DATABASE),
    (asyncpg.CrashShutdownError("crash"), True, Source.DATABASE),
    (asyncpg.CannotConnectNowError("starting up"), True, Source.DATABASE),
    (asyncpg.ConnectionDoesNotExistError("closed"), True, Source.DATABASE),
    (asyncpg.InternalClientError("another operation is in progress"), True, Source.DATABASE),
    (asyncpg.InterfaceError("connection is closed"), True, Source.DATABASE),
    (asyncpg.SerializationError("could not serialize"), True, Source.DATABASE),
    (asyncpg.DeadlockDetectedError("deadlock"), True, Source.DATABASE),
    (asyncpg.TooManyConnectionsError("too many"), True, Source.DATABASE),
    (asyncpg.QueryCanceledError("statement timeout"), True, Source.DATABASE),
    (asyncpg.ReadOnlySQLTransactionError("read-only"), True, Source.DATABASE),
    (asyncpg.LockNotAvailableError("lock"), True, Source.DATABASE),
    (asyncpg.UniqueViolationError("duplicate"), False, Source.DATABASE),
    (asyncpg.PostgresSyntaxError("syntax"), False, Source.DATABASE),
    (asyncpg.UndefinedTableError("no table"), False, Source.DATABASE),
    # PostgreSQL through psycopg (nio's crypto store), bare or wrapped by peewee.
    (psycopg.OperationalError("server closed the connection"), True, Source.DATABASE),
    (psycopg.errors.AdminShutdown("terminating"), True, Source.DATABASE),
    (psycopg.errors.SerializationFailure("serialize"), True, Source.DATABASE),
    (psycopg.errors.UniqueViolation("duplicate"), False, Source.DATABASE),
    (_peewee_wrapped(psycopg.OperationalError("gone")), True, Source.DATABASE),
    (_peewee_wrapped(psycopg.errors.UndefinedColumn("no column")), False, Source.DATABASE),
    # SQLite.
    (_sqlite_locked(), True, Source.DATABASE),
    (_sqlite_syntax(), False, Source.DATABASE),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), False, Source.DATABASE),
]


@pytest.mark.parametrize(("exc", "transient", "source"), DATABASE_CASES,
                         ids=[type(case[0]).__name__ for case in DATABASE_CASES])
def test_database_failures_are_classified(exc: Exception, transient: bool,
                                          source: Source) -> None:
    """A restart, failover, lock or conflict is transient; a bad statement is permanent;
    both are the database's, never the homeserver's."""
    error = from_exception(exc, "saving x")
    assert isinstance(error, TransientError) is transient
    assert isinstance(error, PermanentError) is not transient
    assert error.source is source
    assert "homeserver" not in error.reason


@pytest.mark.parametrize(
    ("exc", "transient", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/media/offer-3.part"), True,
         "data_dir is full (/data/media/offer-3.part); free some space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True, "data_dir is full"),
        (PermissionError(errno.EACCES, "Permission denied", "/data/media"), False,
         "may not write there (/data/media)"),
        (OSError(errno.EROFS, "Read-only file system", "/data"), False,
         "check data_dir's owner and permissions"),
        (FileNotFoundError(errno.ENOENT, "No such file", "/data/media/offer-3"), False,
         "local file error (/data/media/offer-3)"),
        (OSError(errno.EIO, "Input/output error", "/data/parcel.db"), False, "local file error"),
    ],
)
def test_local_disk_failures_say_what_an_admin_can_do(exc: OSError, transient: bool,
                                                      expected: str) -> None:
    """A full disk waits for space; a permission or I/O problem ends the work; both are the
    disk's, with words an admin can act on, never "the homeserver could not be reached"."""
    error = from_exception(exc, "downloading report.pdf")
    assert isinstance(error, TransientError) is transient
    assert error.source is Source.DISK
    assert expected in error.reason
    assert "homeserver" not in error.reason


def test_a_refused_database_connection_at_the_store_edge_is_the_database() -> None:
    """The store classifies its own socket errors: PostgreSQL down is not the homeserver."""
    error = from_database(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
                          "the store")
    assert isinstance(error, TransientError)
    assert error.source is Source.DATABASE
    assert error.reason == "the store: the database is unavailable ([Errno 111] Connection refused)"


def test_a_write_refused_for_a_stale_lease_term_is_not_the_leaders() -> None:
    """PostgreSQL's refusal of a deposed leader's write (SQLSTATE PTERM) is NotLeader:
    transient for the work, which the new leader does."""
    refused = asyncpg.PostgresError.new({"C": FENCED_SQLSTATE, "M": "a write as term 3 is "
                                         "refused: the lease is in term 4"})
    error = from_exception(refused, "finishing offer:1")
    assert isinstance(error, NotLeader) and isinstance(error, TransientError)
    assert "deposed leader" in error.reason
