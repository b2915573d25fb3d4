"""matrix-nio's crypto store under the bot's own pickle key, never nio's public default.

nio pickles the Olm account, the Olm sessions and the inbound Megolm sessions with
``AsyncClientConfig.pickle_key``, whose default ("DEFAULT_KEY") is public: anyone who can read
the store can then take over the bot's encryption identity. Stores written by older Parcel
versions use it. :func:`protect_stores` runs before the client opens the store and re-pickles
every such store with the configured key, in one transaction per store (a crash leaves it
wholly old or wholly new). A store that opens with neither key stops start-up: it was
written under another key, and guessing would lose it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import vodozemac
from nio.crypto.sessions import InboundGroupSession, OlmAccount, Session

from bot.keys import NIO_DEFAULT_PICKLE_KEY

logger = logging.getLogger(__name__)

# (table, column, how to re-pickle one value from the old passphrase to the new one). The
# tables are nio's peewee models Accounts, OlmSessions and MegolmInboundSessions.
_Repickle = Callable[[bytes, str, str], bytes]
_EPOCH = datetime(1970, 1, 1)


def _account(pickle: bytes, old: str, new: str) -> bytes:
    return OlmAccount.from_pickle(pickle, old).pickle(new)


def _session(pickle: bytes, old: str, new: str) -> bytes:
    return Session.from_pickle(pickle, _EPOCH, old).pickle(new)


def _group_session(pickle: bytes, old: str, new: str) -> bytes:
    return InboundGroupSession.from_pickle(pickle, "", "", "", old).pickle(new)


_PICKLED: tuple[tuple[str, str, _Repickle], ...] = (
    ("accounts", "account", _account),
    ("olmsessions", "session", _session),
    ("megolminboundsessions", "session", _group_session),
)
_UNPICKLE_ERRORS = (vodozemac.PickleException, vodozemac.LibolmPickleException, ValueError)


class CryptoStoreKeyError(RuntimeError):
    """A crypto store that opens neither with the configured key nor with nio's default."""


def opens_with(store: Path, passphrase: str) -> bool | None:
    """Whether the Olm account in ``store`` unpickles with ``passphrase``; None if it has none."""
    conn = sqlite3.connect(store)
    try:
        return _opens(conn, passphrase)
    finally:
        conn.close()


def _opens(conn: sqlite3.Connection, passphrase: str) -> bool | None:
    try:
        rows = conn.execute("SELECT account FROM accounts").fetchall()
    except sqlite3.OperationalError:
        return None  # no accounts table: a store nio has not written to yet
    if not rows:
        return None
    try:
        for (pickle,) in rows:
            OlmAccount.from_pickle(_bytes(pickle), passphrase)
    except _UNPICKLE_ERRORS:
        return False
    return True


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def protect_stores(store_dir: Path, pickle_key: str) -> list[Path]:
    """Make every nio store (``*.db``) in ``store_dir`` open with ``pickle_key``.

    Stores pickled with nio's default key are re-pickled with ``pickle_key`` and returned.
    Raises :class:`CryptoStoreKeyError` for a store that opens with neither key.
    """
    changed = []
    for store in sorted(store_dir.glob("*.db")):
        conn = sqlite3.connect(store, isolation_level=None)
        # Overwrite the old pickles' pages instead of leaving them in free space.
        conn.execute("PRAGMA secure_delete = ON")
        try:
            if _opens(conn, pickle_key) in (True, None):
                continue
            if not _opens(conn, NIO_DEFAULT_PICKLE_KEY):
                raise CryptoStoreKeyError(
                    f"the crypto store {store} cannot be opened with the configured encryption "
                    "key (nor with matrix-nio's default): it was written under another key. "
                    "Restore the key it was written with (PARCEL_ENCRYPTION_KEY, "
                    "encryption_key or data_dir/encryption.key)"
                )
            counts = _repickle(conn, NIO_DEFAULT_PICKLE_KEY, pickle_key)
        finally:
            conn.close()
        logger.warning(
            "crypto store %s was protected by matrix-nio's public default key: re-encrypted "
            "%s with the configured encryption key", store.name,
            ", ".join(f"{count} {table}" for table, count in counts.items()),
        )
        changed.append(store)
    return changed


def _repickle(conn: sqlite3.Connection, old: str, new: str) -> dict[str, int]:
    """Re-pickle every pickled value, all in one transaction; returns the rows per table."""
    counts: dict[str, int] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, repickle in _PICKLED:
            try:
                rows = conn.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
            except sqlite3.OperationalError:
                continue  # a table this store does not have
            for rowid, pickle in rows:
                conn.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                    (repickle(_bytes(pickle), old, new), rowid),
                )
            counts[table] = len(rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return counts
