"""Numbered schema upgrades. Each runs in one transaction; a newer schema than known is refused."""

from __future__ import annotations

import sqlite3

# Append only: a released migration is never edited, a change is a new entry.
MIGRATIONS: list[str] = [
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
    """
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
]


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Parcel; refusing to touch it."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date and return the version now in force."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"the store has schema version {current}, but this Parcel knows only up to "
            f"{len(MIGRATIONS)}: upgrade Parcel instead of downgrading it"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[version - 1]
        conn.execute("BEGIN")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)
