"""The small async database interface under the store, and its two drivers.

Store code writes each statement once, with ``?`` placeholders and SQL both SQLite and
PostgreSQL understand (``ON CONFLICT … DO NOTHING / DO UPDATE``, ``RETURNING``, ``CASE``).
What differs between them stays here: the placeholder style, column types in migrations
(:meth:`Database.ddl`), where the schema version is kept, and how a transaction is held.

A transaction is held per task in a context variable: every query made inside
``async with db.transaction():`` (from any store concern) runs on that transaction's
connection, so work that spans concerns (an offer's change and the work unit it asks for)
commits or rolls back as one. A nested ``transaction()`` joins the outer one.

**Term fencing (PostgreSQL).** Several instances share one PostgreSQL database and the holder
of the leader lease (``bot/leader.py``) alone may write. Its own clock tells a leader when to
stop, but a leader paused or cut off learns late, and its writes already under way would
still land. So the database checks: :meth:`Database.write_as` names the lease term this
process writes as, every pooled connection carries it in the session setting ``parcel.term``
(``<lease name>/<token>``), and a trigger on each of Parcel's tables (migration 9) compares it
with the token in ``parcel_leader`` when the transaction commits; a mismatch fails the commit
with SQLSTATE :data:`FENCED_SQLSTATE`, raised here as :class:`~bot.leader.NotLeader`. The
check locks the lease row (``FOR SHARE``), so a standby's takeover waits for a commit already
checked and every commit after the takeover sees the new token. A connection whose setting is
empty (the CLI, ``migrate-store``, tests using the store directly) is not fenced. The setting
rides on the pool's reset query, which runs at every release anyway, and a connection whose
term is stale is brought up to date when it is next handed out: a round trip per connection
per term change, none per query. SQLite has one instance and no fencing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.errors import (
    PermanentError,
    TransientError,
    WorkError,
    from_database,
    is_database_error,
)

logger = logging.getLogger(__name__)

Row = Mapping[str, Any]
"""A result row: ``row["column"]`` (sqlite3.Row and asyncpg.Record both are)."""

POSTGRES_SCHEMES = ("postgresql", "postgres")
SCHEMA_TABLE = "parcel_schema"
LEASE_TABLE = "parcel_leader"
TERM_SETTING = "parcel.term"
NOBODY = 0
"""The token of "no term": a process that led and no longer does writes as nobody, and every
write it tries is refused (tokens start at 1)."""
IDLE_TRANSACTION_LIMIT = 3.0
"""Seconds a session of the bot may sit idle inside a transaction before PostgreSQL ends it
(``idle_in_transaction_session_timeout``, on Parcel's pool and nio's crypto store alike): a
leader frozen in the middle of a transaction would otherwise keep its row locks, and the
instance taking over would wait on them for as long as the freeze lasts. Well inside the time
a standby takes to take over; the bot's transactions hold no network waits."""
# Any fixed 64-bit number: the key of the advisory lock taken while migrating, so two instances
# starting on one empty database do not both migrate.
MIGRATION_LOCK_KEY = 0x7061_7263_656C_0001  # "parcel" + 1


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@contextmanager
def _classified() -> Iterator[None]:
    """Turn a driver's exception (or a socket error reaching the server) into a WorkError.

    Raised at this edge, a PostgreSQL restart's ``ConnectionRefusedError`` or SQLite's
    "database is locked" is a transient *database* failure, never mistaken for the homeserver's
    or for a bug; a write refused for its stale lease term (:data:`FENCED_SQLSTATE`) is
    :class:`~bot.leader.NotLeader`. Errors already classified (from work inside a transaction)
    pass through.
    """
    try:
        yield
    except WorkError:
        raise
    except Exception as exc:
        if not is_database_error(exc) and not isinstance(exc, OSError | TimeoutError):
            raise  # a bug in the work inside a transaction stays what it is
        raise from_database(exc, "the store") from exc


class Database:
    """One SQL database: a handful of async query methods and a transaction context."""

    dialect: str = ""
    description: str = ""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed."""
        raise NotImplementedError

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per argument tuple."""
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row a query returns."""
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row a query returns, or None."""
        raise NotImplementedError

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row a query returns, or None."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]  # type: ignore[index]

    def transaction(self) -> Any:
        """``async with db.transaction():`` — everything inside commits or rolls back as one."""
        raise NotImplementedError

    async def serialize(self, key: str) -> None:
        """Inside a transaction: wait for other transactions that serialize on ``key``.

        For read-then-write steps (open a session unless one is live; number the next offer)
        that must not interleave with the same step elsewhere.
        """
        raise NotImplementedError

    def ddl(self, script: str) -> str:
        """A migration script with its column types in this dialect."""
        return script

    async def schema_version(self) -> int:
        """Inside a transaction: the schema version in force (0 for an empty database)."""
        raise NotImplementedError

    async def set_schema_version(self, version: int) -> None:
        """Inside a transaction: record the schema version now in force."""
        raise NotImplementedError

    async def lock_for_migration(self) -> None:
        """Inside a transaction: keep other instances from migrating at the same time."""

    async def table_names(self) -> set[str]:
        """The tables of the schema (for checks and tests)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close every connection."""
        raise NotImplementedError

    def write_as(self, lease: str, token: int | None) -> None:
        """Write as term ``token`` of the lease named ``lease`` from now on (``None``: as
        nobody, every write refused). Only PostgreSQL fences; elsewhere this does nothing."""

    def term_setting(self) -> str:
        """What this process's writes carry as ``parcel.term`` ('' when not fenced), for other
        connections to the same database (nio's crypto store) to carry the same."""
        return ""


# -- SQLite ------------------------------------------------------------------------------------


class SQLiteDatabase(Database):
    """A local SQLite file on one connection in autocommit mode.

    Queries run inline on the event loop: the file is local and a query takes well under a
    millisecond, less than handing it to a thread would cost. A transaction is ``BEGIN
    IMMEDIATE`` (it takes the write lock at once, so two processes on one file serialize) and
    an asyncio lock keeps another task from beginning one on the same connection meanwhile.
    """

    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.description = f"SQLite at {path}"
        self._lock = asyncio.Lock()
        self._in_transaction: ContextVar[bool] = ContextVar(f"sqlite-{id(self)}", default=False)

    @classmethod
    def open(cls, path: Path) -> SQLiteDatabase:
        """Open (creating) the file at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives a crash of the process (SIGKILL included); only a
        # power loss can drop the last commits, which the idempotent sends then repeat safely.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        return cls(conn, path)

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (tests trace its statements)."""
        return self._conn

    async def execute(self, sql: str, *args: Any) -> int:
        with _classified():
            return self._conn.execute(sql, args).rowcount

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        with _classified():
            self._conn.executemany(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        with _classified():
            return self._conn.execute(sql, args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        with _classified():
            row: Row | None = self._conn.execute(sql, args).fetchone()
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._in_transaction.get():
            yield
            return
        async with self._lock:
            with _classified():
                self._conn.execute("BEGIN IMMEDIATE")
            token = self._in_transaction.set(True)
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                with _classified():
                    self._conn.execute("COMMIT")
            finally:
                self._in_transaction.reset(token)

    async def serialize(self, key: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already serializes every writing transaction."""

    async def schema_version(self) -> int:
        # PRAGMA user_version: where every existing SQLite install keeps its version.
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    async def set_schema_version(self, version: int) -> None:
        self._conn.execute(f"PRAGMA user_version = {int(version)}")

    async def table_names(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        return {str(row[0]) for row in rows}

    async def close(self) -> None:
        self._conn.close()


# -- PostgreSQL --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")
# Migration type tokens: SQLite's names → PostgreSQL's. REAL is single precision there, too
# coarse for timestamps; INTEGER is 32-bit there, too small for file sizes.
_PG_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (no store SQL has a literal ``?``)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    """The row count at the end of a command tag (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _args(args: Sequence[Any]) -> tuple[Any, ...]:
    # Flags live in integer columns on both backends (the SQLite schema came first).
    return tuple(int(a) if isinstance(a, bool) else a for a in args)


class _TermConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that remembers the term its ``parcel.term`` setting holds."""

    parcel_term: str | None = None  # None: not known yet (a fresh connection)

    async def carry_term(self, value: str) -> None:
        """Make this session's ``parcel.term`` ``value``, unless it already is."""
        if self.parcel_term != value:
            await self.execute("SELECT set_config($1, $2, false)", TERM_SETTING, value)
            self.parcel_term = value

    async def reset_carrying_term(self, value: str) -> None:
        """asyncpg's own reset query (it ends in ``RESET ALL``), then ``value``, in one go."""
        await self.execute(f"{self.get_reset_query()}\n"
                           f"SELECT set_config('{TERM_SETTING}', {_literal(value)}, false);")
        self.parcel_term = value


class _Term:
    """The term this process writes as, and the pool hooks that put it on every connection.

    ``value`` is the setting's text: empty (not fenced) until :meth:`Database.write_as`. Each
    connection remembers the value it carries (:class:`_TermConnection`), so it is told again
    only when the term changed since it was last released.
    """

    def __init__(self) -> None:
        self.value = ""

    async def reset(self, conn: _TermConnection) -> None:
        """The pool's reset at release (a round trip asyncpg makes anyway)."""
        await conn.reset_carrying_term(self.value)

    async def setup(self, conn: Any) -> None:
        """The pool's setup at acquire (``conn`` is a proxy): a stale term is brought up to date."""
        await conn.carry_term(self.value)


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (the term is a lease name and a number)."""
    return "'" + text.replace("'", "''") + "'"


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool; statements are prepared and cached per connection."""

    dialect = "postgresql"

    def __init__(self, pool: Any, url: str, term: _Term | None = None) -> None:
        self._pool = pool
        self.url = url
        self.description = f"PostgreSQL at {redact_url(url)}"
        self._conn: ContextVar[Any] = ContextVar(f"pg-{id(self)}", default=None)
        self._sql: dict[str, str] = {}
        self._term = term if term is not None else _Term()

    @classmethod
    async def open(cls, url: str, password: str | None = None, *, min_size: int = 1,
                   max_size: int = 10, idle_transaction_limit: float | None = None
                   ) -> PostgresDatabase:
        """Connect a pool to ``url`` (``password`` wins over one in the URL).

        With ``idle_transaction_limit`` (seconds) the server ends a session of ours that sits
        in a transaction that long without a statement: a leader frozen (SIGSTOP) in the middle
        of a transaction would otherwise keep its row locks, and the instance taking over would
        wait on them for as long as the freeze lasts. Parcel's transactions hold no network
        waits, so only a stalled process reaches the limit.

        Raises :class:`TransientError` when the server cannot be reached (worth waiting for)
        and :class:`PermanentError` when it refuses us (wrong password, no such database).
        """
        shown = redact_url(url)
        kwargs: dict[str, Any] = {"password": password} if password else {}
        if idle_transaction_limit is not None:
            kwargs["server_settings"] = {
                "idle_in_transaction_session_timeout": str(int(idle_transaction_limit * 1000))}
        term = _Term()
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             timeout=10, command_timeout=60,
                                             connection_class=_TermConnection,
                                             setup=term.setup, reset=term.reset, **kwargs)
        except (asyncpg.InvalidPasswordError,
                asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise PermanentError(
                f"database: PostgreSQL at {shown} refused the login ({exc}); check the user in "
                "the URL and the password (PARCEL_DATABASE_PASSWORD or the URL)",
                code="database_auth",
            ) from None
        except asyncpg.InvalidCatalogNameError as exc:
            raise PermanentError(
                f"database: PostgreSQL at {shown}: {exc}; create it first (createdb)",
                code="database_missing",
            ) from None
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.ConnectionDoesNotExistError) as exc:
            raise TransientError(
                f"connecting to the database at {shown}: {exc or type(exc).__name__}"
            ) from None
        except asyncpg.PostgresError as exc:
            raise PermanentError(f"database: PostgreSQL at {shown}: {exc}",
                                 code="database") from None
        except ValueError as exc:  # asyncpg's own check of the URL
            raise PermanentError(f"database: {shown} is not a usable URL: {exc}",
                                 code="database") from None
        return cls(pool, url, term)

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = _numbered(sql)
        return translated

    def write_as(self, lease: str, token: int | None) -> None:
        self._term.value = f"{lease}/{NOBODY if token is None else int(token)}"

    def term_setting(self) -> str:
        return self._term.value

    async def execute(self, sql: str, *args: Any) -> int:
        conn = self._conn.get()
        target = conn if conn is not None else self._pool
        with _classified():
            return _rowcount(await target.execute(self._translate(sql), *_args(args)))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        conn = self._conn.get()
        target = conn if conn is not None else self._pool
        with _classified():
            await target.executemany(self._translate(sql), [_args(a) for a in args])

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        conn = self._conn.get()
        target = conn if conn is not None else self._pool
        with _classified():
            rows: list[Row] = await target.fetch(self._translate(sql), *_args(args))
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        conn = self._conn.get()
        target = conn if conn is not None else self._pool
        with _classified():
            row: Row | None = await target.fetchrow(self._translate(sql), *_args(args))
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._conn.get() is not None:
            yield
            return
        # Errors of the work inside pass through as they are; those of acquiring, beginning
        # and committing are the database's, classified like every query's (the term is
        # checked at the COMMIT: a refusal comes from there, as NotLeader).
        with _classified():
            async with self._pool.acquire() as conn, conn.transaction():
                token = self._conn.set(conn)
                try:
                    yield
                finally:
                    self._conn.reset(token)

    async def serialize(self, key: str) -> None:
        await self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", key)

    def ddl(self, script: str) -> str:
        for pattern, replacement in _PG_TYPES:
            script = pattern.sub(replacement, script)
        return script

    async def schema_version(self) -> int:
        await self._schema_table()
        version = await self.fetchval(f"SELECT max(version) FROM {SCHEMA_TABLE}")
        return 0 if version is None else int(version)

    async def set_schema_version(self, version: int) -> None:
        await self._schema_table()
        await self.execute(f"DELETE FROM {SCHEMA_TABLE}")
        await self.execute(f"INSERT INTO {SCHEMA_TABLE}(version) VALUES (?)", version)

    async def _schema_table(self) -> None:
        # PostgreSQL has no user_version: one row in a table of our own holds it.
        await self.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)")

    async def lock_for_migration(self) -> None:
        # Held until this transaction ends; a second instance waits here, then finds the
        # version already raised.
        await self.execute("SELECT pg_advisory_xact_lock(?)", MIGRATION_LOCK_KEY)

    async def table_names(self) -> set[str]:
        rows = await self.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        # The lease's table (bot/leader.py) is made by migration 9 but holds no store data.
        return {str(row["tablename"]) for row in rows} - {SCHEMA_TABLE, LEASE_TABLE}

    async def close(self) -> None:
        await self._pool.close()


async def connect(database: str | Path | None, data_dir: Path | None = None,
                  password: str | None = None,
                  idle_transaction_limit: float | None = None) -> Database:
    """The database a ``database`` setting names.

    None: the SQLite file ``data_dir/parcel.db``; a path: that SQLite file; a
    ``postgresql://`` URL: that PostgreSQL database (``password`` wins over the URL's;
    ``idle_transaction_limit``: see :meth:`PostgresDatabase.open`).
    """
    if database is None:
        if data_dir is None:
            raise ValueError("either a database or a data_dir is needed")
        return SQLiteDatabase.open(data_dir / "parcel.db")
    if isinstance(database, Path):
        return SQLiteDatabase.open(database)
    scheme = database.split(":", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        raise PermanentError(f"database: expected a postgresql:// URL, got {redact_url(database)}",
                             code="database")
    return await PostgresDatabase.open(database, password,
                                       idle_transaction_limit=idle_transaction_limit)
