"""``parcel-bot migrate-store``: move an embedded (SQLite) install into PostgreSQL.

Everything that makes the bot what it is moves: Parcel's store (sessions, offers and their
log, work units, the outbox, settings), nio's crypto store (the Olm account, Olm and Megolm
sessions, device keys), the access token and device id (``credentials.json``) and the
cross-signing seeds (``cross_signing.json``, still encrypted with the same key). Afterwards
the bot starts on PostgreSQL as the same device, cross-signed, and reads its old sessions.

The copy is refused when the target already holds a Parcel install or this device's crypto
store, so a second run cannot mix two installs. Run it with the bot stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee
from nio.store import SqliteStore
from nio.store.models import StoreVersion

from bot.config import Config
from bot.documents import FileDocuments, StoreDocuments
from bot.keys import encryption_key
from bot.matrix.client import CREDENTIALS_FILE, load_credentials
from bot.matrix.crosssign import SEEDS_FILE
from bot.matrix.cryptostore import protect_stores
from bot.matrix.pgstore import postgres_crypto_store
from bot.store import Store
from bot.store.db import SCHEMA_TABLE, Database, redact_url

logger = logging.getLogger(__name__)

# Parents before the tables that refer to them; any table not listed follows in name order.
_TABLE_ORDER = ("kv", "sessions", "offers", "offer_transitions", "handled_events", "outbox",
                "work", "panels")
# Every Parcel table that holds state a running install has written (an empty one is new).
_INSTALL_TABLES = ("kv", "sessions", "offers", "work", "outbox", "handled_events")


class MigrationRefused(RuntimeError):
    """The source or the target is not fit for the copy; nothing was written."""


@dataclass
class MigrationReport:
    """What was copied, for the admin."""

    target: str
    rows: dict[str, int] = field(default_factory=dict)
    crypto_rows: dict[str, int] = field(default_factory=dict)
    documents: list[str] = field(default_factory=list)
    key_source: str = ""


async def migrate_store(config: Config, target_url: str,
                        password: str | None = None) -> MigrationReport:
    """Copy the SQLite install that ``config`` describes into the PostgreSQL at ``target_url``.

    Raises :class:`MigrationRefused` (nothing written) when the configuration already uses
    PostgreSQL, the install has never logged in, or the target is not empty.
    """
    if config.database is not None:
        raise MigrationRefused(
            "the configuration already uses a database (database: …); migrate-store copies "
            "the embedded SQLite store in data_dir: point --config at that install's file"
        )
    documents = FileDocuments(config.data_dir)
    credentials = await load_credentials(documents)
    if credentials is None:
        raise MigrationRefused(
            f"{documents.where(CREDENTIALS_FILE)} does not exist: this install never logged "
            "in, so there is nothing to move (start the new one on PostgreSQL directly)"
        )
    key = encryption_key(config)
    crypto_file = config.data_dir / "crypto" / f"{credentials.user_id}_{credentials.device_id}.db"
    if config.encryption:
        protect_stores(config.data_dir / "crypto", key.pickle_key)  # pickles under our key
    report = MigrationReport(target=redact_url(target_url), key_source=key.source)

    source = await Store.open(None, config.data_dir)
    try:
        target = await Store.open(target_url, password=password)
        try:
            await _refuse_a_used_target(target.db)
            crypto_class = postgres_crypto_store(target_url, password=password)
            crypto = crypto_class(credentials.user_id, credentials.device_id,
                                  str(config.data_dir / "crypto"), key.pickle_key)
            try:
                # Parcel's tables and nio's crypto store are two connections, so two commits:
                # the crypto store commits inside the tables' transaction, last; if that
                # transaction then fails, the crypto rows are removed again, so a failed copy
                # leaves an empty target that a second try accepts.
                try:
                    async with target.transaction():
                        report.rows = await _copy_tables(source.db, target.db)
                        for name in (CREDENTIALS_FILE, SEEDS_FILE):
                            text = await documents.read(name)
                            if text is not None:
                                await StoreDocuments(target.values).write(name, text)
                                report.documents.append(name)
                        if crypto_file.exists():
                            report.crypto_rows = _copy_crypto_store(crypto_file, crypto)
                except BaseException:
                    if report.crypto_rows:
                        _clear_crypto_store(crypto)
                    raise
            finally:
                crypto.close()
        finally:
            await target.close()
    finally:
        await source.close()
    return report


async def _refuse_a_used_target(target: Database) -> None:
    for table in _INSTALL_TABLES:
        if await target.fetchval(f"SELECT count(*) FROM {table}"):
            raise MigrationRefused(
                f"the target database already holds a Parcel install (its {table} table has "
                "rows); migrate into an empty database"
            )


async def _copy_tables(source: Database, target: Database) -> dict[str, int]:
    """Copy every Parcel table row by row, keeping ids; returns the rows per table."""
    tables = (await source.table_names() & await target.table_names()) - {SCHEMA_TABLE}
    ordered = [t for t in _TABLE_ORDER if t in tables] + sorted(tables - set(_TABLE_ORDER))
    counts: dict[str, int] = {}
    for table in ordered:
        types = await _column_types(target, table)
        rows = await source.fetch(f"SELECT * FROM {table}")
        if rows:
            columns = [c for c in rows[0].keys() if c in types]
            insert = (f"INSERT INTO {table} ({', '.join(columns)}) "
                      f"VALUES ({', '.join('?' for _ in columns)})")
            await target.executemany(insert, [
                [_as(types[c], row[c]) for c in columns] for row in rows
            ])
        if "id" in types:
            await target.execute(_continue_ids(table, "id"))
        counts[table] = len(rows)
    return counts


def _continue_ids(table: str, column: str) -> str:
    """SQL that makes ``table``'s identity go on after the highest copied id (rows were
    inserted with their ids, which does not advance the sequence)."""
    return (f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"GREATEST((SELECT max({column}) FROM {table}), 1), "
            f"(SELECT max({column}) FROM {table}) IS NOT NULL)")


async def _column_types(db: Database, table: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?", table)
    return {row["column_name"]: row["data_type"] for row in rows}


def _as(data_type: str, value: Any) -> Any:
    """A SQLite value (typed by the value, not the column) as the PostgreSQL column's type."""
    if value is None:
        return None
    if data_type in ("bigint", "integer", "smallint"):
        return int(value)
    if data_type in ("double precision", "real", "numeric"):
        return float(value)
    if data_type == "bytea":
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return value if isinstance(value, str) else str(value)


def _copy_crypto_store(path: Path, target: Any) -> dict[str, int]:
    """Copy nio's SQLite crypto store into the (empty) PostgreSQL one, model by model."""
    source_db = peewee.SqliteDatabase(str(path), pragmas={"foreign_keys": 1})
    models = [m for m in peewee.sort_models(SqliteStore.models) if m is not StoreVersion]
    counts: dict[str, int] = {}
    try:
        with source_db.bind_ctx(models):
            present = {m for m in models if m.table_exists()}
            data = {m: list(m.select().tuples()) for m in models if m in present}
            fields = {m: list(m._meta.sorted_fields) for m in models}
        with target.database.bind_ctx(models), target.database.atomic():
            accounts = next(m for m in models if m._meta.table_name == "accounts")
            if accounts.select().count():
                raise MigrationRefused(
                    f"the target database already holds the crypto store of this device "
                    f"(schema {target.schema}); migrate into an empty database"
                )
            for model in models:
                rows = data.get(model, [])
                if rows:
                    model.insert_many(rows, fields=fields[model]).execute()
                counts[model._meta.table_name] = len(rows)
            for model in models:
                primary = model._meta.primary_key
                if isinstance(primary, peewee.AutoField):
                    target.database.execute_sql(
                        _continue_ids(model._meta.table_name, primary.column_name))
    finally:
        source_db.close()
    return counts


def _clear_crypto_store(target: Any) -> None:
    """Remove what :func:`_copy_crypto_store` wrote (the tables' copy failed after it)."""
    models = [m for m in peewee.sort_models(SqliteStore.models) if m is not StoreVersion]
    with target.database.bind_ctx(models), target.database.atomic():
        for model in reversed(models):
            model.delete().execute()
