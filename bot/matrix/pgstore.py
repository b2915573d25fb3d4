"""matrix-nio's crypto store on PostgreSQL: nio's own peewee models and queries, a Postgres dialect.

nio keeps the Olm account and sessions, the inbound Megolm sessions, device keys, trust and
encrypted rooms in peewee models (``nio.store.models``) behind ``MatrixStore._create_database``.
:class:`PostgresCryptoStore` is nio's ``SqliteStore`` (trust in the database, not in files) with
that one database swapped for :class:`NioPostgresDatabase`, so every query stays nio's own:

- **SQLite-isms, translated once.** nio writes with ``Model.replace()`` / ``replace_many()``
  (``INSERT OR REPLACE``), which PostgreSQL lacks. The database turns every REPLACE into
  ``INSERT … ON CONFLICT (<the model's unique key>) DO UPDATE SET col = EXCLUDED.col`` for the
  inserted columns outside the key (``DO NOTHING`` when the key is all there is), the key found
  from the model's primary key and ``UNIQUE`` constraints (:func:`replace_target`). The one raw
  SQLite query (``_get_device_ids``) is rewritten with peewee expressions.
- **One schema per account.** nio's SQLite store is one file per user and device, and its
  tables rely on that: Olm and Megolm session ids are global primary keys, so two accounts in
  one room would overwrite each other's sessions in shared tables. Each (user, device) gets
  its own schema, ``nio_<digest>`` (:func:`store_schema`), next to Parcel's own tables in the
  same database, selected with ``search_path`` on the store's connection.
- **The configured pickle key, always.** A store opened with nio's public default key (or
  none) is refused before anything is written.
- **Short, bounded blocking.** nio calls its store synchronously on the event loop. One
  connection stays open; each writing call is one transaction; psycopg prepares statements
  nio repeats. Every exchange with the server has a client-side deadline
  (:data:`ANSWER_DEADLINE`, :class:`DeadlineConnection`; a frozen server keeps its TCP
  connection acknowledged, so no socket timeout would ever fire), a connect has
  :data:`CONNECT_TIMEOUT`, and after a silence the store fails fast for a few seconds instead
  of blocking on every one of nio's calls: the loop (and the lease renewed on it) is never
  held longer than one deadline. A :class:`StoreTimer` records how long store calls block,
  per sync cycle, for the benchmark.
- **A deposed leader writes nothing.** nio saves an advanced Olm or Megolm session while it
  encrypts, before the message is sent (and the send checks the lease): every write first
  calls the store's ``fence`` (the lease's ``check``), which raises
  :class:`~bot.leader.NotLeader` once this instance no longer holds the lease. And the
  database checks as it does for Parcel's own tables: with Parcel's store in the same
  database, the store's tables carry its term trigger and every write carries this process's
  term (``term``), so a write the server runs late (sent before a freeze, run after the thaw,
  when another instance leads) is refused too.
- **Connection loss heals.** A call that finds its connection gone reconnects and runs once
  more (nio's writes are upserts, so a rerun is harmless); if PostgreSQL is still away it
  raises :class:`~bot.errors.TransientError`, and the next call tries again.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, TypeVar

import peewee
import psycopg
import vodozemac
from nio import AsyncClient
from nio.crypto import DeviceStore, OlmAccount, OlmDevice, TrustState
from nio.store import (
    Accounts,
    DeviceKeys,
    DeviceTrustState,
    Keys,
    MatrixStore,
    SqliteStore,
)
from peewee import Field, Model, OnConflict, Tuple
from playhouse.psycopg3_ext import Psycopg3Database
from psycopg import sql
from psycopg.errors import _WaitTimeout

from bot.errors import FENCED_SQLSTATE, TransientError, database_transient, from_database
from bot.keys import NIO_DEFAULT_PICKLE_KEY
from bot.matrix.cryptostore import CryptoStoreKeyError
from bot.matrix.groupsessions import LazyInboundSessions
from bot.store.db import IDLE_TRANSACTION_LIMIT

logger = logging.getLogger(__name__)

ANSWER_DEADLINE = 1.5
"""Seconds one exchange with PostgreSQL (a statement, a commit) may take before the store gives
up on its connection. nio calls the store on the event loop, so this bounds how long a frozen
or unreachable server can block it: well below the leader lease's trust window (the lease's
``ttl - margin``, 6 s by default), which renews on that same loop."""

CONNECT_TIMEOUT = 2
"""Seconds to wait for a new connection (libpq's and psycopg's least; the loop is blocked)."""

QUIET_AFTER_SILENCE = 5.0
"""After PostgreSQL did not answer, store calls fail at once for this long instead of each
blocking the loop again: nio makes dozens of them per sync."""

STATEMENT_TIMEOUT_MS = int(ANSWER_DEADLINE * 1000)
"""Server-side limit on one statement: the server stops work the client gave up on."""

TCP_USER_TIMEOUT_MS = 5000
"""How long unacknowledged data may wait on the socket before the connection counts as dead
(a cut network otherwise blocks a read for minutes)."""

SCHEMA_PREFIX = "nio_"

# Serialises schema and table creation between instances starting at once (two replicas
# on a fresh database): concurrent CREATE … IF NOT EXISTS can still collide in PostgreSQL.
_SCHEMA_LOCK = int.from_bytes(
    hashlib.sha256(b"parcel/nio-crypto-store/schema").digest()[:8], "big", signed=True
)

# nio's store methods that write several statements without a transaction of their own
# (save_device_keys, save_encrypted_rooms and ignore_devices already use one).
_WRITES = frozenset({
    "save_account", "save_session", "save_inbound_group_session", "save_sync_token",
    "add_outgoing_key_request", "remove_outgoing_key_request", "delete_encrypted_room",
    "verify_device", "unverify_device", "blacklist_device", "unblacklist_device",
    "ignore_device", "unignore_device",
})
# Every write of nio's: refused when the store's fence says this instance no longer leads.
_FENCED = _WRITES | {"save_device_keys", "save_encrypted_rooms", "ignore_devices"}
# nio's trust writes (their first argument is a device, or a list of devices).
_TRUST_WRITES = frozenset({
    "verify_device", "unverify_device", "blacklist_device", "unblacklist_device",
    "ignore_device", "unignore_device", "ignore_devices",
})
_UNPICKLE_ERRORS = (vodozemac.PickleException, vodozemac.LibolmPickleException, ValueError)
_UNIQUE = re.compile(r"\s*UNIQUE\s*\(([^)]*)\)\s*", re.IGNORECASE)


# --- REPLACE → upsert -------------------------------------------------------------------------


class ReplaceNotTranslatable(ValueError):
    """A REPLACE whose rows match no single unique key of the model, so no upsert says the same."""


def unique_keys(model: type[Model]) -> list[tuple[str, ...]]:
    """Every unique key of ``model`` as column names: primary key, unique fields, constraints."""
    meta = model._meta
    keys: list[tuple[str, ...]] = []
    pk = meta.primary_key
    if isinstance(pk, peewee.CompositeKey):
        keys.append(tuple(meta.fields[name].column_name for name in pk.field_names))
    elif pk is not None and pk is not False:
        keys.append((pk.column_name,))
    keys.extend((f.column_name,) for f in meta.sorted_fields if f.unique and not f.primary_key)
    for index in meta.indexes:
        if isinstance(index, tuple) and len(index) == 2 and index[1]:
            keys.append(tuple(meta.fields[name].column_name for name in index[0]))
    for constraint in meta.constraints or ():
        match = _UNIQUE.fullmatch(getattr(constraint, "sql", ""))
        if match:
            keys.append(tuple(c.strip().strip('"`') for c in match.group(1).split(",")))
    unique: list[tuple[str, ...]] = []
    for key in keys:
        if key not in unique:
            unique.append(key)
    return unique


def replace_target(model: type[Model], columns: Iterable[str]) -> tuple[str, ...]:
    """The unique key a REPLACE of ``columns`` into ``model`` conflicts on.

    SQLite's REPLACE deletes whatever row clashes on *any* unique key; PostgreSQL's upsert
    names one. They agree when exactly one unique key has all its columns among the inserted
    ones (a key left out gets a fresh value and cannot clash). Anything else raises
    :class:`ReplaceNotTranslatable` rather than guess.
    """
    inserted = list(columns)
    candidates = [key for key in unique_keys(model) if set(key) <= set(inserted)]
    if len(candidates) == 1:
        return candidates[0]
    what = f"REPLACE into {model._meta.table_name} ({', '.join(inserted)})"
    if not candidates:
        raise ReplaceNotTranslatable(f"{what}: no unique key among the inserted columns")
    raise ReplaceNotTranslatable(
        f"{what}: several unique keys could clash ({'; '.join(map(', '.join, candidates))})"
    )


def _column(model: type[Model], key: object) -> str:
    """The column name of a data key in an insert (a Field, a field name or a column name)."""
    if isinstance(key, Field):
        return str(key.column_name)
    meta = model._meta
    field = meta.fields.get(key) or meta.columns.get(key)
    if field is None:
        raise ReplaceNotTranslatable(f"{meta.table_name} has no column {key!r}")
    return str(field.column_name)


def inserted_columns(query: peewee.Insert) -> list[str]:
    """The columns an INSERT writes, in the order peewee lists them, defaults included."""
    model = query.table
    if query._columns:
        keys: Iterable[object] = query._columns
    elif isinstance(query._insert, Mapping):
        keys = query._insert
    elif isinstance(query._insert, Sequence) and query._insert and isinstance(
            query._insert[0], Mapping):
        keys = query._insert[0]
    else:
        raise ReplaceNotTranslatable(
            f"REPLACE into {model._meta.table_name}: rows must be dicts in a list"
        )
    names = [_column(model, key) for key in keys]
    for field in query.get_default_data():
        if field.column_name not in names:
            names.append(field.column_name)
    return names


def replace_as_upsert(query: peewee.Insert) -> OnConflict:
    """The ON CONFLICT clause that does what SQLite's REPLACE would do for ``query``.

    Columns the statement does not name keep their value (REPLACE would reset them to their
    defaults; every REPLACE in nio names all its columns).
    """
    model = query.table
    if not (isinstance(model, type) and issubclass(model, Model)):
        raise ReplaceNotTranslatable("REPLACE is only translated for peewee models")
    columns = inserted_columns(query)
    target = replace_target(model, columns)
    rest = [c for c in columns if c not in target]
    if not rest:
        return OnConflict("IGNORE", conflict_target=target)  # the row is all key: keep it
    return OnConflict("UPDATE", preserve=rest, conflict_target=target)


class Unanswered(psycopg.OperationalError):
    """PostgreSQL did not answer within :data:`ANSWER_DEADLINE`; the connection was abandoned."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends within
    :data:`ANSWER_DEADLINE`: then the connection is closed (its state is unknown: a frozen
    server may still run the statement or not) and :class:`Unanswered` raised.

    psycopg waits for the server in :meth:`wait` for every statement, fetch and commit; a
    frozen server keeps the TCP connection open and acknowledged, so no socket timeout fires.
    """

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        """psycopg's wait, with :data:`ANSWER_DEADLINE` unless a timeout is given."""
        deadline = ANSWER_DEADLINE if timeout is None else timeout
        try:
            return super().wait(gen, interval, deadline)
        except _WaitTimeout:
            self.pgconn.finish()
            raise Unanswered(f"PostgreSQL did not answer within {deadline:g} s") from None


def _unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` (peewee's wrapper of psycopg's error) says the server did not answer."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, Unanswered | psycopg.errors.ConnectionTimeout):
            return True
        cause = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = cause or seen.__cause__ or seen.__context__
    return False


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of psycopg's error under peewee's wrapper, if any."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        cause = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = cause or seen.__cause__ or seen.__context__
    return None


class NioPostgresDatabase(Psycopg3Database):
    """PostgreSQL through psycopg 3 for nio's models: REPLACE as upsert, one account's schema."""

    def __init__(self, url: str, schema: str, password: str | None = None) -> None:
        params: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            "application_name": "parcel-nio-store",
            # nio's writes run in short transactions with no waits inside: one left open by a
            # frozen instance must not keep its locks from the instance that takes over.
            "options": "-c idle_in_transaction_session_timeout="
                       f"{int(IDLE_TRANSACTION_LIMIT * 1000)}",
        }
        if password is not None:
            params["password"] = password
        super().__init__(url, **params)
        self.schema = schema
        self.home_schema: str | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        # Any libpq URL or conninfo string (peewee's own method takes only postgresql://).
        conn = DeadlineConnection.connect(self.database, **self.connect_params)
        conn.autocommit = True  # peewee opens its transactions itself
        return conn

    def _initialize_connection(self, conn: psycopg.Connection[Any]) -> None:
        # The schema the URL lands in (Parcel's store, with its term check), before leaving it.
        if self.home_schema is None:
            row = conn.execute("SELECT current_schema()").fetchone()
            self.home_schema = None if row is None else row[0]
        # Every (re)connection works in this account's schema only; it need not exist yet.
        conn.execute(sql.SQL("SET search_path TO {}; SET statement_timeout = {}").format(
            sql.Identifier(self.schema), sql.Literal(STATEMENT_TIMEOUT_MS)))

    def bind_ctx(self, models: Sequence[type[Model]], bind_refs: bool = True,
                 bind_backrefs: bool = True) -> AbstractContextManager[None]:
        """Bind nio's models to this database and leave them bound.

        nio wraps every store call (and the calls those make) in ``bind_ctx``, and peewee
        walks the whole model graph each time to bind and to restore: most of a call's CPU.
        Every store call binds before it queries, so leaving the binding in place is the same
        for whoever comes next, and a call finding its models bound here skips the walk.
        """
        if any(model._meta.database is not self for model in models):
            for model in models:
                model.bind(self, bind_refs, bind_backrefs)
        return nullcontext()

    def conflict_update(self, oc: OnConflict, query: peewee.Insert) -> Any:
        """Translate SQLite's REPLACE into an upsert; everything else as peewee does."""
        if (oc._action or "").lower() == "replace":
            oc = replace_as_upsert(query)
        return super().conflict_update(oc, query)


def store_schema(user_id: str, device_id: str) -> str:
    """The PostgreSQL schema holding the crypto store of one user's device."""
    digest = hashlib.sha256(f"{user_id}\0{device_id}".encode()).hexdigest()[:24]
    return SCHEMA_PREFIX + digest


# --- measuring how long the loop is blocked ---------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none); ``fraction`` in [0, 1]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered) - 1e-9)  # the epsilon absorbs float noise
    return ordered[min(max(rank, 1), len(ordered)) - 1]


class StoreTimer:
    """Time spent in crypto-store calls (each blocks the event loop), per sync cycle.

    The store records every outermost call; whoever drives the syncs calls :meth:`cycle`
    after each one, which closes the cycle's total. :meth:`summary` gives p50/p99/max per
    cycle and per call, in milliseconds.
    """

    def __init__(self) -> None:
        self.cycles: list[float] = []
        self.calls: list[float] = []
        self.by_method: dict[str, list[float]] = defaultdict(list)
        self._open = 0.0

    def record(self, method: str, seconds: float) -> None:
        """One store call of ``method`` took ``seconds``."""
        self.calls.append(seconds)
        self.by_method[method].append(seconds)
        self._open += seconds

    def cycle(self) -> float:
        """End a sync cycle; returns the seconds its store calls blocked the loop."""
        total, self._open = self._open, 0.0
        self.cycles.append(total)
        return total

    def summary(self) -> dict[str, float]:
        """p50/p99/max blocking per cycle and per call (ms), with the counts."""
        ms = 1000.0
        return {
            "cycles": float(len(self.cycles)),
            "cycle_p50_ms": percentile(self.cycles, 0.50) * ms,
            "cycle_p99_ms": percentile(self.cycles, 0.99) * ms,
            "cycle_max_ms": max(self.cycles, default=0.0) * ms,
            "calls": float(len(self.calls)),
            "call_p50_ms": percentile(self.calls, 0.50) * ms,
            "call_p99_ms": percentile(self.calls, 0.99) * ms,
            "call_max_ms": max(self.calls, default=0.0) * ms,
        }


# --- the store --------------------------------------------------------------------------------


class DefaultPickleKeyRefused(ValueError):
    """A PostgreSQL crypto store asked to pickle under nio's public default key (or none)."""


_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


def _guarded(name: str, method: _F, fenced: bool | None = None) -> _F:
    """Wrap a public nio store method: the fence and the term if it writes, connection upkeep,
    a transaction if it writes several statements, timing."""
    writes = name in _WRITES
    fenced = name in _FENCED if fenced is None else fenced
    trust = name in _TRUST_WRITES

    @functools.wraps(method)
    def call(self: PostgresCryptoStore, *args: Any, **kwargs: Any) -> Any:
        try:
            if self._depth:  # called by another store method: the outer call does the upkeep
                return method(self, *args, **kwargs)
            if fenced and self.fence is not None:
                self.fence()  # raises NotLeader: a deposed leader's crypto state stays unsaved
            self._depth += 1
            began = time.perf_counter()
            try:
                return self._run(name, method, writes, fenced, args, kwargs)
            finally:
                self._depth -= 1
                if self.timer is not None:
                    self.timer.record(name, time.perf_counter() - began)
        finally:
            if trust:
                self._forget_trust(args[0])

    return call  # type: ignore[return-value]


class PostgresCryptoStore(LazyInboundSessions, SqliteStore):
    """nio's ``SqliteStore`` on PostgreSQL; bind a database with :func:`postgres_crypto_store`.

    nio constructs it as ``store(user_id, device_id, store_path, pickle_key, store_name)``;
    ``store_path`` and ``store_name`` are not used (nothing is written to disk).
    """

    database_url: str = ""
    database_password: str | None = None
    timer: StoreTimer | None = None
    fence: Callable[[], None] | None = None
    """Called before every write; raises (:class:`~bot.leader.NotLeader`) to refuse it."""
    term: Callable[[], str] | None = None
    """The lease term this process writes as (``parcel.term``, see ``bot/store/db.py``); the
    database refuses a write whose term is no longer the lease's."""

    def __post_init__(self) -> None:
        if not self.pickle_key or self.pickle_key == NIO_DEFAULT_PICKLE_KEY:
            raise DefaultPickleKeyRefused(
                "the PostgreSQL crypto store needs Parcel's own pickle key, not matrix-nio's "
                "public default: anyone reading the database could take over the device"
            )
        if not self.database_url:
            raise ValueError("PostgresCryptoStore has no database: use postgres_crypto_store(url)")
        self.schema = store_schema(self.user_id, self.device_id)
        self._depth = 0
        self._quiet_until = 0.0
        self._carried: str | None = None  # the parcel.term the open connection carries
        self._schema_locked = False
        self._trust: dict[tuple[str, str], TrustState] = {}
        try:
            super().__post_init__()  # connects, checks the store version, creates the tables
            self._fence_tables()
        except (peewee.DatabaseError, peewee.InterfaceError) as exc:
            self._drop_connection()
            raise from_database(exc, "opening the crypto store in PostgreSQL") from exc
        finally:
            if self._schema_locked and not self.database.is_closed():
                with suppress(peewee.DatabaseError, peewee.InterfaceError):
                    self.database.execute_sql("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
        self.database_path = f"{self.schema} (PostgreSQL)"
        logger.info("crypto store of %s/%s in PostgreSQL schema %s",
                    self.user_id, self.device_id, self.schema)

    def _fence_tables(self) -> None:
        """Put Parcel's term check (migration 9 of its store) on this store's tables, when the
        database has Parcel's store: a deposed leader's write that reaches the server late
        (sent before a freeze, run after the thaw) is then refused too."""
        home = self.database.home_schema
        if home is None:
            return
        conn = self.database.connection()
        check = sql.SQL("{}.parcel_check_term").format(sql.Identifier(home))
        found = self.database.execute_sql(
            "SELECT to_regprocedure(%s) IS NOT NULL",
            (f"{sql.Identifier(home).as_string(conn)}.parcel_check_term()",)).fetchone()
        if not found or not found[0]:
            return  # no Parcel store in this database (a tool, a benchmark): not fenced
        unfenced = self.database.execute_sql(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND NOT EXISTS ("
            "SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'parcel_term')",
            (self.schema,)).fetchall()
        for (table,) in unfenced:
            self.database.execute_sql(sql.SQL(
                "CREATE CONSTRAINT TRIGGER parcel_term AFTER INSERT OR UPDATE OR DELETE ON {} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(self.schema, table), check).as_string(conn))

    def _carry_term(self) -> None:
        """Make the connection's ``parcel.term`` this process's term (only when it changed)."""
        if self.term is None:
            return
        value = self.term()
        if value != self._carried:
            self.database.execute_sql("SELECT set_config('parcel.term', %s, false)", (value,))
            self._carried = value

    def _create_database(self) -> NioPostgresDatabase:
        return NioPostgresDatabase(self.database_url, self.schema, self.database_password)

    def _get_store_version(self) -> int:
        # nio's first step after connecting: create the schema here, under the lock, which
        # __post_init__ releases once nio has created its tables.
        self.database.execute_sql("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        self._schema_locked = True
        # Utility statements take no bound parameters: psycopg quotes the values itself.
        conn = self.database.connection()
        schema = sql.Identifier(self.schema)
        comment = f"matrix-nio crypto store of {self.user_id} device {self.device_id}"
        for statement in (
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(schema, sql.Literal(comment)),
        ):
            self.database.execute_sql(statement.as_string(conn))
        return int(super()._get_store_version())

    def _get_device_ids(self, account: Any, devices: Sequence[Any]) -> list[int]:
        # nio's version is raw SQLite SQL (`==`, `?` placeholders); the same with peewee.
        device_ids: list[int] = []
        pairs = [(d.user_id, d.id) for d in devices]
        for idx in range(0, len(pairs), 300):
            query = DeviceKeys.select(DeviceKeys.id).where(
                (DeviceKeys.account == account.id)
                & Tuple(DeviceKeys.user_id, DeviceKeys.device_id).in_(pairs[idx:idx + 300])
            )
            device_ids += [row.id for row in query]
        return device_ids

    def save_device_keys(self, device_keys: dict[str, dict[str, Any]]) -> None:
        """nio's save_device_keys in a few statements instead of four per device.

        Same effect as nio's: new devices are added (with their display name), every given
        device's ``deleted`` flag and keys are set. One upsert per 300 devices returns their
        ids, one upsert per 300 keys writes the keys; a keys query about many devices is one
        short transaction, not hundreds of round trips.
        """
        with self.database.bind_ctx(self.models), self.database.atomic():
            account = self._get_account()
            assert account
            devices = [(user_id, device_id, device)
                       for user_id, by_id in device_keys.items()
                       for device_id, device in by_id.items()]
            ids: dict[tuple[str, str], int] = {}
            for idx in range(0, len(devices), 300):
                rows = [{"account": account.id, "user_id": user_id, "device_id": device_id,
                         "display_name": device.display_name, "deleted": device.deleted}
                        for user_id, device_id, device in devices[idx:idx + 300]]
                query = (DeviceKeys.insert_many(rows)
                         .on_conflict(conflict_target=[DeviceKeys.account, DeviceKeys.user_id,
                                                       DeviceKeys.device_id],
                                      preserve=[DeviceKeys.deleted])
                         .returning(DeviceKeys.id, DeviceKeys.user_id, DeviceKeys.device_id)
                         .tuples())
                ids.update({(user_id, device_id): row_id
                            for row_id, user_id, device_id in query.execute()})
            keys = [{"device": ids[(user_id, device_id)], "key_type": key_type, "key": key}
                    for user_id, device_id, device in devices
                    for key_type, key in device.keys.items()]
            for idx in range(0, len(keys), 300):
                Keys.replace_many(keys[idx:idx + 300]).execute()

    # -- trust, cached ---------------------------------------------------------------------------
    # nio asks is_device_verified for every Megolm event it decrypts: three queries each time
    # in nio's version, the largest share of a sync's store time. Trust changes only through
    # this object (Parcel never changes it; a standby opens its own store when it takes
    # over), so the states read at load time are kept, and every trust write drops the
    # device's entry so the next question reads the database again.

    def load_device_keys(self) -> DeviceStore:
        """nio's load_device_keys, remembering each device's trust state."""
        store = super().load_device_keys()
        self._trust = {(d.user_id, d.id): d.trust_state for d in store}
        return store

    def _trust_state(self, device: OlmDevice) -> TrustState:
        key = (device.user_id, device.id)
        state = self._trust.get(key)
        if state is None:
            with self.database.bind_ctx(self.models):
                row = (DeviceTrustState.select(DeviceTrustState.state)
                       .join(DeviceKeys).join(Accounts)
                       .where((Accounts.user_id == self.user_id)
                              & (Accounts.device_id == self.device_id)
                              & (DeviceKeys.user_id == device.user_id)
                              & (DeviceKeys.device_id == device.id))
                       .first())
            state = row.state if row is not None else TrustState.unset
            self._trust[key] = state
        return state

    def is_device_verified(self, device: OlmDevice) -> bool:
        """Whether ``device`` is verified (cached)."""
        return self._trust_state(device) is TrustState.verified

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        """Whether ``device`` is blacklisted (cached)."""
        return self._trust_state(device) is TrustState.blacklisted

    def is_device_ignored(self, device: OlmDevice) -> bool:
        """Whether ``device`` is ignored (cached)."""
        return self._trust_state(device) is TrustState.ignored

    def load_account(self) -> OlmAccount | None:
        """nio's load_account, with a clear error for an account pickled under another key."""
        try:
            return super().load_account()
        except _UNPICKLE_ERRORS as exc:
            raise CryptoStoreKeyError(
                f"the crypto store in PostgreSQL schema {self.schema} cannot be opened with the "
                "configured encryption key: it was written under another key. Restore the key "
                "it was written with (PARCEL_ENCRYPTION_KEY or encryption_key)"
            ) from exc

    def _forget_trust(self, devices: OlmDevice | Sequence[OlmDevice]) -> None:
        for device in devices if isinstance(devices, Sequence) else [devices]:
            self._trust.pop((device.user_id, device.id), None)

    def run_guarded(self, name: str, action: Callable[[], _T]) -> _T:
        """Run ``action`` (writes of its own on this store's models) as a store write is run:
        the fence, connection upkeep, a rerun after a lost connection, TransientError, timing."""
        return _guarded(name, lambda _store: action(),  # type: ignore[no-any-return]
                        fenced=True)(self)

    def close(self) -> None:
        """Close the store's connection (nio never closes its store)."""
        self._drop_connection()

    # -- connection upkeep ---------------------------------------------------------------------

    def _run(self, name: str, method: Callable[..., Any], writes: bool, fenced: bool,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one store call; after a lost connection reconnect and run it once more.

        A server that did not answer (frozen, cut off) is not asked again at once: the call
        raises, and for :data:`QUIET_AFTER_SILENCE` so does every call, without blocking.
        """
        quiet = self._quiet_until - time.monotonic()
        if quiet > 0:
            raise TransientError(f"crypto store ({name}): PostgreSQL did not answer a moment "
                                 f"ago; asking again in {quiet:.1f} s")
        for attempt in (1, 2):
            try:
                self._ensure_connection()
                if fenced:
                    self._carry_term()
                if writes:
                    with self.database.atomic():
                        return method(self, *args, **kwargs)
                return method(self, *args, **kwargs)
            except (peewee.DatabaseError, peewee.InterfaceError) as exc:
                if _sqlstate(exc) == FENCED_SQLSTATE or not database_transient(exc):
                    # A deposed leader's write (NotLeader), or a permanent error: classified
                    # once, by the table every edge uses.
                    raise from_database(exc, f"crypto store ({name})") from exc
                silent = _unanswered(exc)
                lost = silent or self._connection_lost()
                if lost:
                    self._drop_connection()
                if silent:
                    self._quiet_until = time.monotonic() + QUIET_AFTER_SILENCE
                    logger.warning("crypto store: PostgreSQL did not answer during %s (%s); "
                                   "not asking again for %.0f s", name, exc,
                                   QUIET_AFTER_SILENCE)
                elif attempt == 1 and lost:
                    logger.warning("crypto store: the PostgreSQL connection was lost during %s "
                                   "(%s); reconnecting", name, exc)
                    continue
                raise from_database(exc, f"crypto store ({name})") from exc
        raise AssertionError("unreachable")

    def _ensure_connection(self) -> None:
        if self._connection_lost():
            self._drop_connection()
        if self.database.is_closed():
            self.database.connect()

    def _connection_lost(self) -> bool:
        conn = self.database._state.conn
        return conn is not None and bool(conn.closed or conn.broken)

    def _drop_connection(self) -> None:
        # peewee refuses close() while its transaction bookkeeping is open, which a broken
        # connection can leave behind: close the socket and reset its state directly.
        self._carried = None
        database = getattr(self, "database", None)
        if database is None:
            return
        conn = database._state.conn
        if conn is not None:
            with suppress(Exception):
                conn.close()
        database._state.reset()


for _name in dir(SqliteStore):
    if not _name.startswith("_") and callable(getattr(SqliteStore, _name)):
        setattr(PostgresCryptoStore, _name, _guarded(_name, getattr(PostgresCryptoStore, _name)))
del _name


def postgres_crypto_store(
    url: str, *, password: str | None = None, timer: StoreTimer | None = None,
    fence: Callable[[], None] | None = None, term: Callable[[], str] | None = None,
) -> type[MatrixStore]:
    """A nio store class bound to the PostgreSQL database at ``url``, for ``AsyncClientConfig``.

    ``AsyncClientConfig(store=postgres_crypto_store(url), pickle_key=KEY, ...)``: nio then
    keeps each device's crypto store in its own schema of that database. ``password``
    overrides the URL's; ``timer`` records how long store calls block the loop; ``fence``
    (the leader lease's ``check``) is called before every write and refuses it by raising;
    ``term`` gives the lease term writes carry (``Store.term_setting``), checked by the database.
    """
    return type("BoundPostgresCryptoStore", (PostgresCryptoStore,), {
        "database_url": url,
        "database_password": password,
        "timer": timer,
        "fence": None if fence is None else staticmethod(fence),
        "term": None if term is None else staticmethod(term),
        "__module__": __name__,
    })


def close_crypto_store(client: AsyncClient) -> None:
    """Close the PostgreSQL connection of ``client``'s crypto store, if it has one.

    ``AsyncClient.close()`` leaves nio's store open; call this after it.
    """
    store = getattr(client, "store", None)
    if isinstance(store, PostgresCryptoStore):
        store.close()
