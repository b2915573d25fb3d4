"""Numbered schema upgrades, one sequence for SQLite and PostgreSQL.

Each runs in one transaction; a newer schema than known is refused. A migration is SQL both
dialects run, written with SQLite's column types (the PostgreSQL driver maps them, see
``Database.ddl``), or a :class:`PerDialect` pair where the statements themselves differ.

On PostgreSQL every table of Parcel's carries the term fence of migration 9 (see
``bot/store/db.py``): :func:`migrate` puts it on any table a migration made without it, so a
new table needs nothing of its own.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

from bot.store.db import Database

logger = logging.getLogger(__name__)


class PerDialect(NamedTuple):
    """A migration whose statements differ between the dialects."""

    sqlite: str
    postgresql: str


# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: list[str | PerDialect] = [
    # 1: sessions, offers with their transition log, handled inbound events, the per-session
    # job queue, the outbox, kv.
    """
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        customer_room TEXT NOT NULL,
        agent_room TEXT UNIQUE,
        customer_id TEXT NOT NULL,
        customer_name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('opening', 'open', 'closed')),
        created_at REAL NOT NULL,
        closed_at REAL,
        close_reason TEXT
    );
    CREATE INDEX sessions_customer_room ON sessions(customer_room);
    CREATE TABLE offers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        direction TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        source_room TEXT NOT NULL,
        source_event_id TEXT NOT NULL UNIQUE,
        source_content TEXT NOT NULL,
        msgtype TEXT NOT NULL,
        filename TEXT NOT NULL,
        declared_mimetype TEXT,
        declared_size INTEGER,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        mimetype TEXT,
        size INTEGER,
        sha256 TEXT,
        width INTEGER,
        height INTEGER,
        reason TEXT,
        temp_path TEXT,
        offer_room TEXT,
        offer_event_id TEXT,
        status_room TEXT,
        status_event_id TEXT,
        delivery_event_id TEXT,
        decided_by TEXT,
        scanned INTEGER NOT NULL DEFAULT 0,
        settled_state TEXT
    );
    CREATE INDEX offers_session ON offers(session_id);
    CREATE INDEX offers_state ON offers(state);
    CREATE INDEX offers_offer_event ON offers(offer_event_id);
    CREATE TABLE offer_transitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        offer_id INTEGER NOT NULL REFERENCES offers(id),
        state TEXT NOT NULL,
        at REAL NOT NULL,
        actor TEXT,
        reason TEXT
    );
    CREATE INDEX offer_transitions_offer ON offer_transitions(offer_id);
    CREATE TABLE handled_events (
        event_id TEXT PRIMARY KEY,
        handled_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX jobs_session ON jobs(session_id, id);
    CREATE TABLE outbox (
        txn_id TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        event_id TEXT,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    """,
    # 2: one durable table of work units (kind, key, lane, payload, retry schedule) replacing
    # the per-session job queue; indexes for pruning handled events and the outbox by age.
    PerDialect(
        sqlite="""
    CREATE TABLE work (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        lane TEXT,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX work_lane ON work(lane, id);
    CREATE INDEX work_due ON work(next_at);
    INSERT INTO work(kind, key, lane, payload, attempts, next_at, created_at)
        SELECT kind, 'job-' || id, 'session:' || session_id,
               json_set(payload, '$.session', session_id), attempts, created_at, created_at
        FROM jobs ORDER BY id;
    DROP TABLE jobs;
    CREATE INDEX handled_events_at ON handled_events(handled_at);
    CREATE INDEX outbox_created ON outbox(created_at);
    """,
        # PostgreSQL has no json_set; jsonb does the same.
        postgresql="""
    CREATE TABLE work (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        key TEXT NOT NULL UNIQUE,
        lane TEXT,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX work_lane ON work(lane, id);
    CREATE INDEX work_due ON work(next_at);
    INSERT INTO work(kind, key, lane, payload, attempts, next_at, created_at)
        SELECT kind, 'job-' || id, 'session:' || session_id,
               (payload::jsonb || jsonb_build_object('session', session_id))::text,
               attempts, created_at, created_at
        FROM jobs ORDER BY id;
    DROP TABLE jobs;
    CREATE INDEX handled_events_at ON handled_events(handled_at);
    CREATE INDEX outbox_created ON outbox(created_at);
    """,
    ),
    # 3: find what an outgoing event was for from its event id (a reply to a relayed copy is
    # carried back to the original it copies).
    """
    CREATE INDEX outbox_event ON outbox(event_id);
    """,
    # 4: the key of the checked copy of a file, which is kept encrypted at rest
    # (bot/attachments/sealed.py); NULL for a plaintext copy left by an older version.
    """
    ALTER TABLE offers ADD COLUMN temp_key TEXT;
    """,
    # 5: the recipient's copy staged while the offer waits (its URI, encryption block and
    # whether it is encrypted).
    """
    ALTER TABLE offers ADD COLUMN staged_uri TEXT;
    ALTER TABLE offers ADD COLUMN staged_file TEXT;
    ALTER TABLE offers ADD COLUMN staged_encrypted INTEGER;
    """,
    # 6: per-chat offer numbers (#1, #2, ... in each session; ids stay global), the time of the
    # decision (the card says who decided and when), the hash and size of the copy delivered
    # when metadata was removed from it, the bot's live activity panel per room.
    """
    ALTER TABLE offers ADD COLUMN number INTEGER;
    UPDATE offers SET number = (
        SELECT COUNT(*) FROM offers AS earlier
        WHERE earlier.session_id = offers.session_id AND earlier.id <= offers.id
    );
    CREATE UNIQUE INDEX offers_session_number ON offers(session_id, number);
    ALTER TABLE offers ADD COLUMN decided_at REAL;
    ALTER TABLE offers ADD COLUMN delivered_sha256 TEXT;
    ALTER TABLE offers ADD COLUMN delivered_size INTEGER;
    ALTER TABLE offers ADD COLUMN image_info TEXT;
    CREATE TABLE panels (
        room_id TEXT PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        event_id TEXT,
        pin TEXT NOT NULL DEFAULT 'pending' CHECK (pin IN ('pending', 'pinned', 'refused')),
        version INTEGER NOT NULL DEFAULT 0,
        shown_version INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 7: a unit that waits for another one (by its key) is woken when that one finishes,
    # instead of polling; a customer room's sessions found by an index that also orders them
    # (the lookup on every event took the newest session by scanning).
    """
    ALTER TABLE work ADD COLUMN waits_for TEXT;
    CREATE INDEX work_waits_for ON work(waits_for);
    CREATE INDEX sessions_customer_room_id ON sessions(customer_room, id);
    """,
    # 8: content URIs reserved for the recipient's copy and its thumbnail before their bytes
    # go up (bot/attachments/staging.py): a retry puts the bytes there or finds them there.
    """
    ALTER TABLE offers ADD COLUMN copy_reservation TEXT;
    ALTER TABLE offers ADD COLUMN thumbnail_reservation TEXT;
    """,
    # 9: the term fence (PostgreSQL only; SQLite has one instance). A write commits only if the
    # session's parcel.term ('<lease name>/<token>', set by the store, empty for tools) names
    # the lease's current token. The lease table is created here (the lease creates it too,
    # under the same lock) so the check never meets a missing table. Checked at commit (a
    # deferred constraint trigger) under a share lock on the lease row, so a takeover and a
    # checked commit never overlap; parcel_fence_tables() puts the trigger on every table. The
    # check runs in the store's schema whoever calls it (nio's crypto store has its own).
    PerDialect(
        sqlite="",
        postgresql="""
    SELECT pg_advisory_xact_lock(hashtext('parcel_leader'));
    CREATE TABLE IF NOT EXISTS parcel_leader (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE FUNCTION parcel_check_term() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $fence$
    DECLARE
        term TEXT := current_setting('parcel.term', true);
        lease TEXT := substring(term FROM '^(.*)/[0-9]+$');
        current_token BIGINT;
    BEGIN
        IF term IS NULL OR term = '' THEN
            RETURN NULL;
        END IF;
        SELECT token INTO current_token FROM parcel_leader WHERE name = lease FOR SHARE;
        IF current_token IS NULL
                OR current_token::TEXT <> substring(term FROM '/([0-9]+)$') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'PTERM',
                MESSAGE = format('a write to %s as lease term %s is refused: the lease is '
                                 'in term %s', TG_TABLE_NAME, term,
                                 coalesce(current_token::TEXT, 'none')),
                HINT = 'another instance holds the leader lease now';
        END IF;
        RETURN NULL;
    END
    $fence$;
    CREATE FUNCTION parcel_fence_tables() RETURNS INTEGER LANGUAGE plpgsql AS $fence$
    DECLARE
        unfenced RECORD;
        fenced INTEGER := 0;
    BEGIN
        FOR unfenced IN
            SELECT c.relname FROM pg_class c
            JOIN pg_namespace ns ON ns.oid = c.relnamespace
            WHERE ns.nspname = current_schema() AND c.relkind = 'r'
              AND c.relname NOT IN ('parcel_leader', 'parcel_schema')
              AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                              WHERE t.tgrelid = c.oid AND t.tgname = 'parcel_term')
        LOOP
            EXECUTE format('CREATE CONSTRAINT TRIGGER parcel_term '
                           'AFTER INSERT OR UPDATE OR DELETE ON %I '
                           'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                           'EXECUTE FUNCTION parcel_check_term()', unfenced.relname);
            fenced := fenced + 1;
        END LOOP;
        RETURN fenced;
    END
    $fence$;
    SELECT parcel_fence_tables();
    """,
    ),
    # 10: payment card numbers in files (policy.card_numbers): how many were hidden in the
    # delivered copy (NULL: the file was not searched), and why a file could not be searched.
    """
    ALTER TABLE offers ADD COLUMN redacted INTEGER;
    ALTER TABLE offers ADD COLUMN unchecked TEXT;
    """,
]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Parcel; refusing to touch it."""


class SchemaMismatch(RuntimeError):
    """A reading tool found the store at another schema version than this Parcel's."""


async def check_version(db: Database) -> int:
    """The schema version, which must be this Parcel's: for tools that never change the store
    (they may run beside a bot of another version, whose store they must not upgrade)."""
    async with db.transaction():
        current = await db.schema_version()
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the store has schema version {current}, but this Parcel knows only up to "
            f"{len(MIGRATIONS)}: use the Parcel that runs the bot"
        )
    if current < len(MIGRATIONS):
        raise SchemaMismatch(
            f"the store has schema version {current}, older than this Parcel's "
            f"{len(MIGRATIONS)}: start the bot of this version once (it upgrades the store), "
            "or use the Parcel that runs the bot; reading tools never change the store"
        )
    return current


_SPLIT = re.compile(r"(\$[A-Za-z_]*\$)|;")


def split_statements(script: str) -> list[str]:
    """The statements of ``script``, split at semicolons outside dollar-quoted bodies."""
    found: list[str] = []
    start = 0
    quote: str | None = None  # the tag of the dollar quote we are in
    for match in _SPLIT.finditer(script):
        tag = match.group(1)
        if tag is not None:
            quote = None if quote == tag else quote if quote is not None else tag
        elif quote is None:
            found.append(script[start:match.start()])
            start = match.end()
    found.append(script[start:])
    return [statement for statement in found if statement.strip()]


def statements(migration: str | PerDialect, db: Database) -> list[str]:
    """The statements of one migration for ``db``'s dialect, its column types mapped."""
    script = migration if isinstance(migration, str) else str(getattr(migration, db.dialect))
    return split_statements(db.ddl(script))


async def migrate(db: Database) -> int:
    """Bring the schema up to date and return the version now in force.

    Each step is one transaction that first takes the migration lock and reads the version
    anew, so of two instances starting together on one database only the first migrates.
    What this instance did is logged once at the end ("created the store at version 7", or
    "upgraded the store from version 4 to 7"); each step at DEBUG.
    """
    began: int | None = None  # the version before this instance's first step
    while True:
        async with db.transaction():
            await db.lock_for_migration()
            current = await db.schema_version()
            if current > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"the store has schema version {current}, but this Parcel knows only up "
                    f"to {len(MIGRATIONS)}: upgrade Parcel instead of downgrading it"
                )
            if current == len(MIGRATIONS):
                await _fence_tables(db)  # under the migration lock, as every step
                break
            version = current + 1
            for statement in statements(MIGRATIONS[version - 1], db):
                await db.execute(statement)
            await db.set_schema_version(version)
        logger.debug("store schema upgraded to version %d (%s)", version, db.description)
        began = current if began is None else began
    if began == 0:
        logger.info("created the store at version %d (%s)", current, db.description)
    elif began is not None:
        logger.info("upgraded the store from version %d to %d (%s)", began, current,
                    db.description)
    return current


async def _fence_tables(db: Database) -> None:
    """On PostgreSQL, put the term fence on every table of Parcel's that lacks it."""
    if db.dialect != "postgresql":
        return
    fenced = await db.fetchval("SELECT parcel_fence_tables()")
    if fenced:
        logger.debug("term fence put on %d tables", fenced)
