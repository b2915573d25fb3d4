"""The store on both backends (SQLite, PostgreSQL): migrations, sessions, offers and their log,
work units, outbox, retention."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

import bot.store as store_module
from bot.attachments.model import TRANSITIONS, Direction, Offer, OfferState
from bot.devdb import PostgresServer
from bot.errors import PermanentError, Source, TransientError
from bot.store import (
    SchemaMismatch,
    SchemaTooNew,
    SessionState,
    Side,
    Store,
    WorkUnit,
    outbox_owner,
    session_lane,
)
from bot.store import migrations as migrations_module
from bot.store.db import Database, connect, redact_url
from bot.store.migrations import MIGRATIONS, migrate, split_statements, statements

S = OfferState
CUSTOMER_ROOM = "!customer:hs"
AGENT_ROOM = "!agents:hs"
CUSTOMER = "@carol:hs"
AGENT = "@alice:hs"

# A path of allowed moves from INSPECTING to every state.
PATH_TO: dict[OfferState, list[OfferState]] = {
    S.INSPECTING: [],
    S.OFFERED: [S.OFFERED],
    S.ACCEPTED: [S.OFFERED, S.ACCEPTED],
    S.DECLINED: [S.OFFERED, S.DECLINED],
    S.WITHDRAWN: [S.OFFERED, S.WITHDRAWN],
    S.EXPIRED: [S.OFFERED, S.EXPIRED],
    S.REJECTED: [S.REJECTED],
    S.FAILED: [S.OFFERED, S.ACCEPTED, S.FAILED],
}


class Clock:
    """A settable stand-in for time.time inside bot.store."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=fake))
    return fake


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "parcel.sqlite3"


@pytest_asyncio.fixture
async def store(store_database: Path | str) -> AsyncIterator[Store]:
    opened = await Store.open(store_database)
    yield opened
    await opened.close()


async def at_version(database: Path | str, version: int) -> Database:
    """A raw database holding the schema of ``version`` (as an older Parcel left it)."""
    db = await connect(database)
    async with db.transaction():
        for migration in MIGRATIONS[:version]:
            for statement in statements(migration, db):
                await db.execute(statement)
        await db.set_schema_version(version)
    return db


async def open_session(store: Store, room: str = CUSTOMER_ROOM, agent_room: str | None = AGENT_ROOM,
                       customer: str = CUSTOMER) -> int:
    session, _ = await store.sessions.create_session(room, customer, "Carol")
    if agent_room is not None:
        await store.sessions.attach_agent_room(session.id, agent_room)
    return session.id


async def make_offer(store: Store, session_id: int, event_id: str = "$upload",
                     direction: Direction = Direction.CUSTOMER_TO_AGENT,
                     sender: str = CUSTOMER) -> tuple[Offer, bool]:
    return await store.offers.create_offer(
        session_id=session_id,
        direction=direction,
        sender=sender,
        sender_name="Carol",
        source_room=CUSTOMER_ROOM,
        source_event_id=event_id,
        source_content='{"msgtype": "m.file"}',
        msgtype="m.file",
        filename="report.pdf",
        declared_mimetype="application/pdf",
        declared_size=1234,
    )


async def drive(store: Store, offer_id: int, state: OfferState) -> Offer:
    """Move an offer along PATH_TO[state] and return it."""
    offer = await store.offers.get_offer(offer_id)
    for step in PATH_TO[state]:
        offer = await store.offers.transition(offer_id, step, actor=AGENT)
        assert offer is not None, f"setup move to {step} refused"
    assert offer is not None and offer.state is state
    return offer


async def count(store: Store, sql: str, *params: Any) -> int:
    return int(await store.db.fetchval(sql, *params))


# -- migrations ---------------------------------------------------------------------------------

EXPECTED_TABLES = {"kv", "sessions", "offers", "offer_transitions", "handled_events", "work",
                   "outbox", "panels"}


async def test_migrations_create_the_schema(store: Store) -> None:
    """A fresh store has exactly the tables of the schema."""
    assert await store.db.table_names() == EXPECTED_TABLES


async def test_migrations_set_the_schema_version(store: Store) -> None:
    """After opening, the schema version is the number of known migrations (11)."""
    assert len(MIGRATIONS) == 11
    async with store.transaction():
        assert await store.db.schema_version() == 11


def test_sqlite_keeps_its_version_in_user_version(db_path: Path) -> None:
    """SQLite files keep the version in PRAGMA user_version, where existing installs have it."""
    asyncio.run(_open_and_close(db_path))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 11
    finally:
        conn.close()


async def _open_and_close(database: Path | str) -> None:
    await (await Store.open(database)).close()


@pytest.mark.parametrize("newer_by", [1, 5])
async def test_newer_schema_is_refused(store_database: Path | str, newer_by: int) -> None:
    """A database written by a newer Parcel (a higher version) raises SchemaTooNew untouched."""
    db = await connect(store_database)
    async with db.transaction():
        assert await db.schema_version() == 0
        await db.set_schema_version(len(MIGRATIONS) + newer_by)
    with pytest.raises(SchemaTooNew, match="upgrade Parcel"):
        await Store.open(store_database)
    try:
        async with db.transaction():
            assert await db.schema_version() == len(MIGRATIONS) + newer_by
        assert await db.table_names() == set()
    finally:
        await db.close()


async def test_reopening_is_idempotent_and_keeps_data(store_database: Path | str) -> None:
    """Opening an up-to-date store again runs no migration and loses nothing."""
    first = await Store.open(store_database)
    session_id = await open_session(first)
    await first.values.set_value("sync_token", "s1")
    await first.close()
    for _ in range(2):
        again = await Store.open(store_database)
        async with again.transaction():
            assert await again.db.schema_version() == 11
        assert (await again.sessions.get_session(session_id)).agent_room == AGENT_ROOM
        assert await again.values.get_value("sync_token") == "s1"
        assert await migrate(again.db) == 11
        await again.close()


async def test_migrating_logs_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A new store is one "created" line, an upgrade one "upgraded from … to" line, an
    up-to-date store none (the steps are at DEBUG)."""
    caplog.set_level(logging.INFO, logger="bot.store.migrations")
    for path, expected in ((tmp_path / "new.db", ["created the store at version 11"]),
                           (tmp_path / "old.db", ["upgraded the store from version 1 to 11"]),
                           (tmp_path / "new.db", [])):
        if path.name == "old.db":
            await (await at_version(path, 1)).close()
        caplog.clear()
        await _open_and_close(path)
        assert [r.getMessage().split(" (SQLite at")[0] for r in caplog.records] == expected


async def test_failed_migration_rolls_back(store_database: Path | str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half way leaves neither its tables nor a raised version."""
    await _open_and_close(store_database)
    broken = "CREATE TABLE half_done (x INTEGER); CREATE TABLE broken ("
    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(PermanentError) as raised:
        await Store.open(store_database)
    assert raised.value.source is Source.DATABASE
    assert isinstance(raised.value.__cause__, sqlite3.Error | asyncpg.PostgresError)
    db = await connect(store_database)
    try:
        async with db.transaction():
            assert await db.schema_version() == 11
        assert "half_done" not in await db.table_names()
    finally:
        await db.close()


async def test_an_old_sqlite_file_and_a_fresh_postgres_reach_the_same_schema(
    tmp_path: Path, postgres_url: str
) -> None:
    """A version-1 SQLite file upgraded and an empty PostgreSQL migrated end at version 11 with
    the same tables and the same columns."""
    old = await at_version(tmp_path / "old.db", 1)
    await old.close()
    upgraded = await Store.open(tmp_path / "old.db")
    fresh = await Store.open(postgres_url)
    try:
        for store in (upgraded, fresh):
            async with store.transaction():
                assert await store.db.schema_version() == 11
            assert await store.db.table_names() == EXPECTED_TABLES
        for table in sorted(EXPECTED_TABLES):
            sqlite_columns = [row[1] for row in await upgraded.db.fetch(
                f"SELECT * FROM pragma_table_info('{table}') ORDER BY cid")]
            pg_columns = [row[0] for row in await fresh.db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", table)]
            assert sqlite_columns == pg_columns, table
    finally:
        await upgraded.close()
        await fresh.close()


async def test_two_instances_opening_one_empty_postgres_migrate_it_once(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two stores opened at the same moment on one empty database: each migration runs once,
    both end up open on version 11."""
    caplog.set_level(logging.DEBUG, logger="bot.store.migrations")
    stores = await asyncio.gather(Store.open(postgres_url), Store.open(postgres_url))
    try:
        upgrades = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("store schema upgraded")]
        # Each instance logs its steps after committing them, so the two instances' lines may
        # come in either order: each step once is what counts.
        steps = sorted(int(m.split(" (")[0].rsplit(" ", 1)[1]) for m in upgrades)
        assert steps == list(range(1, 12))
        # At INFO, one line says what happened (by whichever instance created it).
        info = [r.getMessage().split(" (")[0] for r in caplog.records
                if r.levelno == logging.INFO]
        assert "created the store at version 11" in info
        assert not any("schema upgraded" in line for line in info)
        for store in stores:
            async with store.transaction():
                assert await store.db.schema_version() == 11
    finally:
        for store in stores:
            await store.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def test_postgres_password_given_apart_from_the_url_works(
    postgres: PostgresServer, postgres_url: str
) -> None:
    """A URL without a password opens with the password passed apart (PARCEL_DATABASE_PASSWORD)."""
    store = await Store.open(_without_password(postgres_url), password=postgres.password)
    try:
        assert await store.db.table_names() == EXPECTED_TABLES
        assert store.db.description.startswith("PostgreSQL at postgresql://parcel@127.0.0.1:")
    finally:
        await store.close()


async def test_a_wrong_postgres_password_is_a_clear_permanent_error(
    postgres: PostgresServer, postgres_url: str
) -> None:
    """A refused login is permanent, names the setting and the variable, and hides passwords."""
    with pytest.raises(PermanentError) as caught:
        await Store.open(postgres_url, password="not-the-password")
    message = caught.value.reason
    assert message.startswith("database: PostgreSQL at postgresql://parcel:***@127.0.0.1:")
    assert "refused the login" in message and "PARCEL_DATABASE_PASSWORD" in message
    assert postgres.password not in message and "not-the-password" not in message


async def test_a_missing_postgres_database_is_a_clear_permanent_error(
    postgres: PostgresServer
) -> None:
    """A database that does not exist is permanent and says to create it."""
    url = postgres.url("no_such_database", with_password=True)
    with pytest.raises(PermanentError, match="no_such_database.*create it first"):
        await Store.open(url)


async def test_an_unreachable_postgres_is_transient(postgres: PostgresServer) -> None:
    """Nothing listening on the port is worth waiting for (start-up retries with the backoff)."""
    from bot.devserver import free_port

    url = f"postgresql://parcel:secret@127.0.0.1:{free_port()}/parcel"
    with pytest.raises(TransientError, match=r"postgresql://parcel:\*\*\*@127.0.0.1") as caught:
        await Store.open(url)
    assert "secret" not in caught.value.reason


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://parcel:s3cret@db:5432/parcel", "postgresql://parcel:***@db:5432/parcel"),
        ("postgresql://parcel@db/parcel", "postgresql://parcel@db/parcel"),
        ("postgres://u:p%40ss@[::1]:5433/x?sslmode=require",
         "postgres://u:***@[::1]:5433/x?sslmode=require"),
        ("postgresql://:only-password@db/parcel", "postgresql://:***@db/parcel"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    """Logged database URLs keep user, host, port, database and options, not the password."""
    assert redact_url(url) == shown


# -- key/value ----------------------------------------------------------------------------------


async def test_kv_set_get_and_overwrite(store: Store) -> None:
    """get_value returns None for an unknown key and the last value set otherwise."""
    assert await store.values.get_value("k") is None
    await store.values.set_value("k", "1")
    await store.values.set_value("k", "2")
    assert await store.values.get_value("k") == "2"


# -- sessions -----------------------------------------------------------------------------------


async def test_create_session_returns_the_live_session(store: Store) -> None:
    """A second create_session for the same room returns the existing session, not a new one."""
    first, created = await store.sessions.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert created and first.state is SessionState.OPENING and first.agent_room is None
    again, created_again = await store.sessions.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert (again.id, created_again) == (first.id, False)
    opened = await store.sessions.attach_agent_room(first.id, AGENT_ROOM)
    assert opened.state is SessionState.OPEN and opened.agent_room == AGENT_ROOM
    still, created_still = await store.sessions.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert (still.id, created_still) == (first.id, False)


async def test_create_session_opens_a_new_one_after_close(store: Store) -> None:
    """Once the room's session is closed, create_session starts a fresh one."""
    first_id = await open_session(store)
    assert await store.sessions.close_session(first_id, "ended") is True
    assert await store.sessions.close_session(first_id, "again") is False
    closed = await store.sessions.get_session(first_id)
    assert closed.state is SessionState.CLOSED and closed.close_reason == "ended"
    assert closed.closed_at is not None
    second, created = await store.sessions.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert created and second.id != first_id and second.state is SessionState.OPENING


async def test_sessions_in_different_rooms_are_separate(store: Store) -> None:
    """Each customer room gets its own session."""
    a = await open_session(store, "!a:hs", "!agents-a:hs")
    b = await open_session(store, "!b:hs", "!agents-b:hs")
    assert a != b
    assert [s.id for s in await store.sessions.sessions(SessionState.OPEN)] == [a, b]


@pytest.mark.parametrize(
    ("room", "side"),
    [(CUSTOMER_ROOM, Side.CUSTOMER), (AGENT_ROOM, Side.AGENT)],
    ids=["customer-room", "agent-room"],
)
async def test_session_for_room_tells_the_side(store: Store, room: str, side: Side) -> None:
    """session_for_room finds the session from either room and says which side the room is."""
    session_id = await open_session(store)
    found = await store.sessions.session_for_room(room)
    assert found is not None
    session, found_side = found
    assert session.id == session_id and found_side is side
    assert session.room_of(side) == room
    assert session.other_room(side) == (AGENT_ROOM if side is Side.CUSTOMER else CUSTOMER_ROOM)


async def test_session_for_unknown_room_is_none(store: Store) -> None:
    """A room that belongs to no session yields None."""
    await open_session(store)
    assert await store.sessions.session_for_room("!elsewhere:hs") is None


async def test_session_for_room_prefers_the_newest_session(store: Store) -> None:
    """After a close and a new session in the same customer room, the new one is returned."""
    old = await open_session(store)
    await store.sessions.close_session(old, "ended")
    new = await open_session(store, agent_room="!agents-2:hs")
    found = await store.sessions.session_for_room(CUSTOMER_ROOM)
    assert found is not None and found[0].id == new
    old_agent = await store.sessions.session_for_room(AGENT_ROOM)
    assert old_agent is not None and old_agent[0].id == old and old_agent[1] is Side.AGENT


async def test_sessions_for_rooms_answers_like_session_for_room_for_each(store: Store) -> None:
    """The many-rooms lookup (start-up's tidy-up) gives each room what session_for_room gives:
    the newest session of a reused customer room, the side, nothing for unknown rooms."""
    old = await open_session(store)
    await store.sessions.close_session(old, "ended")
    new = await open_session(store, agent_room="!agents-2:hs")
    other = await open_session(store, "!b:hs", "!agents-b:hs")
    rooms = [CUSTOMER_ROOM, AGENT_ROOM, "!agents-2:hs", "!b:hs", "!agents-b:hs", "!nobody:hs"]
    found = await store.sessions.sessions_for_rooms(rooms, chunk=2)
    assert {room: (session.id, side) for room, (session, side) in found.items()} == {
        CUSTOMER_ROOM: (new, Side.CUSTOMER),
        AGENT_ROOM: (old, Side.AGENT),
        "!agents-2:hs": (new, Side.AGENT),
        "!b:hs": (other, Side.CUSTOMER),
        "!agents-b:hs": (other, Side.AGENT),
    }


async def test_get_session_unknown_raises_key_error(store: Store) -> None:
    """Asking for a session id that does not exist raises KeyError."""
    with pytest.raises(KeyError):
        await store.sessions.get_session(404)


# -- offers -------------------------------------------------------------------------------------


async def test_create_offer_is_idempotent_per_source_event(store: Store) -> None:
    """The same upload event yields the same offer; only the first call reports created."""
    session_id = await open_session(store)
    first, created = await make_offer(store, session_id)
    again, created_again = await make_offer(store, session_id)
    assert created is True and created_again is False
    assert again.id == first.id and again.state is S.INSPECTING
    other, created_other = await make_offer(store, session_id, "$another")
    assert created_other and other.id != first.id
    assert await count(store, "SELECT count(*) FROM offers") == 2
    assert await count(store, "SELECT count(*) FROM offer_transitions WHERE offer_id = ?",
                       first.id) == 1


async def test_create_offer_records_the_initial_transition(store: Store) -> None:
    """A new offer starts INSPECTING with one log row naming its sender."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    assert offer.state is S.INSPECTING and offer.is_pending
    assert await store.offers.source_content(offer.id) == '{"msgtype": "m.file"}'
    assert await store.offers.offer_by_source_event("$upload") == offer
    (entry,) = await store.offers.attachment_log(session_id)
    assert [(st, actor, reason) for st, _, actor, reason in entry.transitions] == [
        ("inspecting", CUSTOMER, None)
    ]


TRANSITION_PAIRS = [
    pytest.param(src, dst, dst in TRANSITIONS[src], id=f"{src.value}->{dst.value}")
    for src in OfferState
    for dst in OfferState
]


@pytest.mark.parametrize(("current", "target", "allowed"), TRANSITION_PAIRS)
async def test_transition_enforces_the_table(
    store: Store, current: OfferState, target: OfferState, allowed: bool
) -> None:
    """store.transition succeeds exactly for the table's moves; a refusal changes nothing."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    before = await drive(store, offer.id, current)
    rows_before = await count(store, "SELECT count(*) FROM offer_transitions")
    result = await store.offers.transition(offer.id, target, actor="@someone:hs", reason="why")
    if allowed:
        assert result is not None and result.state is target
        assert await count(store, "SELECT count(*) FROM offer_transitions") == rows_before + 1
    else:
        assert result is None
        assert await store.offers.get_offer(offer.id) == before
        assert await count(store, "SELECT count(*) FROM offer_transitions") == rows_before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (S.ACCEPTED, S.DECLINED),
        (S.DECLINED, S.ACCEPTED),
        (S.ACCEPTED, S.ACCEPTED),
        (S.DECLINED, S.DECLINED),
        (S.ACCEPTED, S.WITHDRAWN),
        (S.DECLINED, S.EXPIRED),
        (S.EXPIRED, S.ACCEPTED),
        (S.WITHDRAWN, S.ACCEPTED),
        (S.EXPIRED, S.DECLINED),
    ],
    ids=lambda s: s.value,
)
async def test_first_decision_wins(store: Store, first: OfferState, second: OfferState) -> None:
    """After the first decision (or expiry/withdrawal) a second one returns None and is lost."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    await store.offers.transition(offer.id, S.OFFERED)
    won = await store.offers.transition(offer.id, first, actor="@first:hs")
    assert won is not None and won.state is first
    assert await store.offers.transition(offer.id, second, actor="@second:hs") is None
    final = await store.offers.get_offer(offer.id)
    assert final is not None and final.state is first
    assert final.decided_by == (won.decided_by)


async def test_transition_logs_actor_and_reason_and_sets_decided_by(
    store: Store, clock: Clock
) -> None:
    """Each transition logs its time, actor and reason; a decision also sets decided_by."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    clock.now += 5
    offered = await store.offers.transition(offer.id, S.OFFERED, offer_event_id="$card",
                                            offer_room=AGENT_ROOM)
    assert offered is not None
    assert offered.offer_event_id == "$card" and offered.decided_by is None
    assert offered.updated_at == clock.now
    assert await store.offers.offer_by_offer_event(AGENT_ROOM, "$card") == offered
    assert await store.offers.offer_by_offer_event(CUSTOMER_ROOM, "$card") is None
    clock.now += 5
    declined = await store.offers.transition(offer.id, S.DECLINED, actor=AGENT, reason="not needed")
    assert declined is not None
    assert declined.decided_by == AGENT and declined.reason == "not needed"
    (entry,) = await store.offers.attachment_log(session_id)
    t0 = clock.now - 10
    assert entry.transitions == (
        ("inspecting", t0, CUSTOMER, None),
        ("offered", t0 + 5, None, None),
        ("declined", t0 + 10, AGENT, "not needed"),
    )


@pytest.mark.parametrize(
    ("target", "sets_decided_by"),
    [(S.ACCEPTED, True), (S.DECLINED, True), (S.WITHDRAWN, False), (S.EXPIRED, False)],
    ids=lambda v: v.value if isinstance(v, OfferState) else str(v),
)
async def test_decided_by_only_for_decisions(
    store: Store, target: OfferState, sets_decided_by: bool
) -> None:
    """decided_by records the actor of an accept or decline, not of a withdrawal or expiry."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    await store.offers.transition(offer.id, S.OFFERED)
    moved = await store.offers.transition(offer.id, target, actor="@actor:hs")
    assert moved is not None
    assert moved.decided_by == ("@actor:hs" if sets_decided_by else None)


async def test_offers_in_states_and_undelivered_accepted(store: Store) -> None:
    """Offers are found by state, and accepted offers without a delivery event are listed."""
    session_id = await open_session(store)
    ids = {state: (await make_offer(store, session_id, f"${state.value}"))[0].id
           for state in (S.INSPECTING, S.OFFERED, S.ACCEPTED, S.DECLINED)}
    for state, offer_id in ids.items():
        await drive(store, offer_id, state)
    pending = await store.offers.offers_in_states([S.INSPECTING, S.OFFERED])
    assert [o.id for o in pending] == [ids[S.INSPECTING], ids[S.OFFERED]]
    assert [o.id for o in await store.offers.undelivered_accepted()] == [ids[S.ACCEPTED]]
    await store.offers.update_offer(ids[S.ACCEPTED], delivery_event_id="$delivered")
    assert await store.offers.undelivered_accepted() == []
    assert [o.id for o in await store.offers.session_offers(session_id)] == sorted(ids.values())


async def test_update_offer_rejects_unknown_fields(store: Store) -> None:
    """update_offer refuses column names that are not Offer fields."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    with pytest.raises(ValueError, match="unknown offer fields"):
        await store.offers.update_offer(offer.id, state="accepted; DROP TABLE offers", bogus=1)


# -- settling -----------------------------------------------------------------------------------


async def test_unsettled_offers_and_mark_settled(store: Store) -> None:
    """An offer is unsettled until its current state is marked settled, and again after a move."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    assert [o.id for o in await store.offers.unsettled_offers()] == [offer.id]
    assert await store.offers.is_settled(offer.id) is False
    await store.offers.mark_settled(offer.id, S.INSPECTING)
    assert await store.offers.unsettled_offers() == [] and await store.offers.is_settled(offer.id)
    await store.offers.transition(offer.id, S.OFFERED)
    assert [o.id for o in await store.offers.unsettled_offers()] == [offer.id]
    await store.offers.mark_settled(offer.id, S.OFFERED)
    assert await store.offers.unsettled_offers() == []


@pytest.mark.parametrize("stale", [S.INSPECTING, S.ACCEPTED, S.DECLINED], ids=lambda s: s.value)
async def test_mark_settled_only_for_the_current_state(store: Store, stale: OfferState) -> None:
    """Marking a state other than the current one settled has no effect."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    await store.offers.transition(offer.id, S.OFFERED)
    await store.offers.mark_settled(offer.id, stale)
    assert await store.offers.is_settled(offer.id) is False
    assert [o.id for o in await store.offers.unsettled_offers()] == [offer.id]


async def test_is_settled_for_unknown_offer_is_false(store: Store) -> None:
    """is_settled on a missing offer is False, not an error."""
    assert await store.offers.is_settled(999) is False


# -- work units ---------------------------------------------------------------------------------


def keys(units: list[WorkUnit]) -> list[str]:
    return [unit.key for unit in units]


async def test_due_work_gives_each_lane_its_oldest_unit(store: Store, clock: Clock) -> None:
    """Of a lane only the oldest unit is due; lane-less units are all due; later ones wait."""
    await store.work.submit_work("send", "a1", {"n": 1}, lane="session:1")
    await store.work.submit_work("send", "a2", {"n": 2}, lane="session:1")
    await store.work.submit_work("send", "b1", {"n": 3, "nested": {"k": [1, 2]}}, lane="session:2")
    await store.work.submit_work("decrypt", "free1", {}, lane=None)
    await store.work.submit_work("decrypt", "free2", {}, lane=None)
    due = await store.work.due_work(clock.now, 10)
    assert keys(due) == ["a1", "b1", "free1", "free2"]
    assert due[1].payload == {"n": 3, "nested": {"k": [1, 2]}}
    assert (due[0].kind, due[0].lane, due[0].attempts, due[0].generation) == (
        "send", "session:1", 0, 0)
    assert await store.work.finish_work(due[0]) is True
    assert keys(await store.work.due_work(clock.now, 10)) == ["a2", "b1", "free1", "free2"]
    assert keys(await store.work.due_work(clock.now, 2)) == ["a2", "b1"]


async def test_a_postponed_lane_head_holds_its_lane(store: Store, clock: Clock) -> None:
    """A unit waiting for its retry keeps the units behind it in its lane from running."""
    await store.work.submit_work("send", "a1", {}, lane="session:1")
    await store.work.submit_work("send", "a2", {}, lane="session:1")
    head = (await store.work.due_work(clock.now, 10))[0]
    await store.work.postpone_work(head, clock.now + 30, "homeserver down")
    assert await store.work.due_work(clock.now, 10) == []
    assert await store.work.next_work_at() == clock.now + 30
    later = await store.work.due_work(clock.now + 30, 10)
    assert keys(later) == ["a1"]
    assert (later[0].attempts, later[0].last_error) == (1, "homeserver down")


async def test_submitting_a_waiting_key_asks_for_another_run(store: Store, clock: Clock) -> None:
    """A second submit of a key adds no row: the unit's generation rises and it is due now."""
    await store.work.submit_work("offer", "offer:1", {"offer": 1}, lane="offer:1")
    unit = (await store.work.due_work(clock.now, 10))[0]
    await store.work.postpone_work(unit, clock.now + 100, "down")
    await store.work.submit_work("offer", "offer:1", {"offer": 1}, lane="offer:1")
    [again] = await store.work.work_units()
    assert (again.generation, again.next_at, again.attempts) == (1, clock.now, 1)


async def test_a_unit_asked_for_again_while_running_is_not_finished(store: Store,
                                                                    clock: Clock) -> None:
    """finish_work keeps a unit re-submitted during its run, due at once; drop_work removes it."""
    await store.work.submit_work("offer", "offer:1", {"offer": 1})
    running = (await store.work.due_work(clock.now, 10))[0]
    await store.work.submit_work("offer", "offer:1", {"offer": 1})
    assert await store.work.finish_work(running) is False
    [left] = await store.work.work_units()
    assert left.next_at <= clock.now
    await store.work.postpone_work(running, clock.now + 50, "failed")  # re-asked: stays due now
    assert (await store.work.work_units())[0].next_at <= clock.now
    await store.work.drop_work(left)
    assert await store.work.work_units() == []


async def test_hurry_work_makes_waiting_units_due(store: Store, clock: Clock) -> None:
    """hurry_work brings every waiting unit (or only one kind's) forward to now."""
    for key, kind in (("s1", "send"), ("d1", "decrypt"), ("d2", "decrypt")):
        await store.work.submit_work(kind, key, {})
        newest = (await store.work.work_units())[-1]
        await store.work.postpone_work(newest, clock.now + 500, "later")
    assert await store.work.due_work(clock.now, 10) == []
    assert await store.work.hurry_work(clock.now, "decrypt") == 2
    assert keys(await store.work.due_work(clock.now, 10)) == ["d1", "d2"]
    assert await store.work.hurry_work(clock.now) == 1
    assert keys(await store.work.due_work(clock.now, 10)) == ["s1", "d1", "d2"]


async def test_work_backlog_counts_units_and_finds_the_oldest(store: Store, clock: Clock) -> None:
    """work_backlog reports how many units wait and when the oldest was submitted."""
    assert await store.work.work_backlog() == (0, None)
    await store.work.submit_work("send", "x", {})
    first = clock.now
    clock.now += 10
    await store.work.submit_work("send", "y", {})
    assert await store.work.work_backlog() == (2, first)


async def test_submit_work_marks_the_handled_event(store: Store) -> None:
    """submit_work with handled_event records the event as handled; without one, nothing is."""
    await store.work.submit_work("send", "k1", {}, handled_event="$in1")
    await store.work.submit_work("send", "k2", {})
    assert await store.outbox.is_handled("$in1") is True
    assert await count(store, "SELECT count(*) FROM handled_events") == 1
    await store.work.submit_work("send", "k3", {}, handled_event="$in1")
    assert await count(store, "SELECT count(*) FROM handled_events") == 1


async def test_submit_work_writes_unit_and_handled_event_in_one_transaction(
    db_path: Path
) -> None:
    """On SQLite the unit insert and the handled-event insert sit between one BEGIN and one
    COMMIT (PostgreSQL runs the same transaction() code on a pooled connection)."""
    store = await Store.open(db_path)
    statements: list[str] = []
    conn = store.db.connection  # type: ignore[attr-defined]
    conn.set_trace_callback(statements.append)
    try:
        await store.work.submit_work("send", "k", {}, handled_event="$in")
    finally:
        conn.set_trace_callback(None)
        await store.close()
    kinds = []
    for sql in statements:
        head = sql.strip().upper()
        for word in ("BEGIN", "COMMIT", "ROLLBACK", "INSERT INTO WORK",
                     "INSERT INTO HANDLED_EVENTS"):
            if head.startswith(word):
                kinds.append(word)
    assert kinds == ["BEGIN", "INSERT INTO WORK", "INSERT INTO HANDLED_EVENTS", "COMMIT"]


async def test_a_failed_transaction_leaves_every_concern_untouched(store: Store) -> None:
    """A transaction spanning concerns (an offer's move, a work unit, a value) rolls back whole."""
    session_id = await open_session(store)
    offer, _ = await make_offer(store, session_id)
    with pytest.raises(RuntimeError, match="boom"):
        async with store.transaction():
            assert await store.offers.transition(offer.id, S.OFFERED) is not None
            await store.work.submit_work("offer", "offer:1", {"offer": offer.id})
            await store.values.set_value("k", "v")
            raise RuntimeError("boom")
    after = await store.offers.get_offer(offer.id)
    assert after is not None and after.state is S.INSPECTING
    assert await store.work.work_units() == []
    assert await store.values.get_value("k") is None
    assert await count(store, "SELECT count(*) FROM offer_transitions") == 1


async def test_old_jobs_become_work_units_in_order(store_database: Path | str) -> None:
    """Migration 2 turns a version-1 store's queued jobs into session-lane units, in order."""
    db = await at_version(store_database, 1)
    await db.execute("INSERT INTO sessions(customer_room, customer_id, customer_name, state, "
                     "created_at) VALUES ('!c:hs', '@c:hs', 'C', 'open', 1.0)")
    for n in (1, 2):
        await db.execute("INSERT INTO jobs(session_id, kind, payload, attempts, created_at) "
                         "VALUES (1, 'send', ?, ?, ?)", f'{{"n": {n}}}', n, float(n))
    await db.close()
    store = await Store.open(store_database)
    try:
        units = await store.work.work_units()
        assert [(u.kind, u.lane, u.payload, u.attempts) for u in units] == [
            ("send", "session:1", {"n": 1, "session": 1}, 1),
            ("send", "session:1", {"n": 2, "session": 1}, 2),
        ]
        assert keys(await store.work.due_work(10.0, 10)) == [units[0].key]
    finally:
        await store.close()


async def test_mark_handled_is_idempotent(store: Store) -> None:
    """mark_handled may be called twice for the same event."""
    assert await store.outbox.is_handled("$x") is False
    await store.outbox.mark_handled("$x")
    await store.outbox.mark_handled("$x")
    assert await store.outbox.is_handled("$x") is True


# -- outbox -------------------------------------------------------------------------------------


async def test_outbox_remembers_sent_events(store: Store) -> None:
    """sent_event is None for an unknown txn id and the recorded event id afterwards."""
    assert await store.outbox.sent_event("txn-1") is None
    await store.outbox.record_sent("txn-1", AGENT_ROOM, "$sent1")
    assert await store.outbox.sent_event("txn-1") == "$sent1"
    assert await store.outbox.sent_event("txn-2") is None


async def test_outbox_record_sent_again_keeps_the_latest(store: Store) -> None:
    """Recording the same txn id twice keeps one row with the latest event id."""
    await store.outbox.record_sent("txn-1", AGENT_ROOM, "$a")
    await store.outbox.record_sent("txn-1", AGENT_ROOM, "$b")
    assert await store.outbox.sent_event("txn-1") == "$b"
    assert await count(store, "SELECT count(*) FROM outbox") == 1


@pytest.mark.parametrize(
    ("txn_id", "owner"),
    [
        ("offer-12-card", ("offer", 12)),
        ("offer-3-accepted-status", ("offer", 3)),
        ("session-7-welcome", ("session", 7)),
        ("session-7-closed-!room:hs", ("session", 7)),
        ("relay-$event", None),
        ("reply-$event", None),
        ("undecryptable-$event", None),
        ("offer-x-card", None),
        ("offers-1-card", None),
    ],
)
async def test_outbox_owner(txn_id: str, owner: tuple[str, int] | None) -> None:
    """A transaction id names the offer or session it was sent for, if any."""
    assert outbox_owner(txn_id) == owner


async def test_pruning_forgets_old_records_but_keeps_those_still_needed(store: Store,
                                                                        clock: Clock) -> None:
    """Old handled events and sent records go, except outbox rows of offers with work owed
    and of open sessions; recent rows all stay."""
    session_id = await open_session(store)
    closed_id = await open_session(store, "!closed:hs", "!agents-closed:hs")
    await store.sessions.close_session(closed_id, "ended")
    busy, _ = await make_offer(store, session_id, "$busy")
    settled, _ = await make_offer(store, session_id, "$settled")
    await store.offers.transition(settled.id, S.REJECTED, reason="no")
    await store.offers.mark_settled(settled.id, S.REJECTED)
    await store.outbox.mark_handled("$old-event")
    for txn in (f"offer-{busy.id}-card", f"offer-{settled.id}-card", f"session-{session_id}-x",
                f"session-{closed_id}-x", "relay-$old"):
        await store.outbox.record_sent(txn, AGENT_ROOM, f"${txn}")
    clock.now += 100
    await store.outbox.mark_handled("$new-event")
    await store.outbox.record_sent("relay-$new", AGENT_ROOM, "$new")

    assert await store.outbox.prune_delivery_records(clock.now - 50) == (1, 3)

    assert not await store.outbox.is_handled("$old-event")
    assert await store.outbox.is_handled("$new-event")
    kept = {row[0] for row in await store.db.fetch("SELECT txn_id FROM outbox")}
    assert kept == {f"offer-{busy.id}-card", f"session-{session_id}-x", "relay-$new"}


# -- attachment log -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_filter", "since_offset", "expected"),
    [
        (None, None, ["$a1", "$a2", "$b1", "$a3"]),
        ("a", None, ["$a1", "$a2", "$a3"]),
        ("b", None, ["$b1"]),
        (None, 20.0, ["$b1", "$a3"]),
        ("a", 10.0, ["$a2", "$a3"]),
        ("a", 10.5, ["$a3"]),
        ("b", 31.0, []),
        (None, 0.0, ["$a1", "$a2", "$b1", "$a3"]),
    ],
)
async def test_attachment_log_filters_by_session_and_since(
    store: Store, clock: Clock, session_filter: str | None, since_offset: float | None,
    expected: list[str],
) -> None:
    """attachment_log keeps offers of the given session created at or after ``since``."""
    start = clock.now
    a = await open_session(store, "!a:hs", "!agents-a:hs")
    b = await open_session(store, "!b:hs", "!agents-b:hs")
    for offset, session_id, event in ((0, a, "$a1"), (10, a, "$a2"), (20, b, "$b1"),
                                      (30, a, "$a3")):
        clock.now = start + offset
        await make_offer(store, session_id, event)
    session_id = {"a": a, "b": b, None: None}[session_filter]
    since = None if since_offset is None else start + since_offset
    entries = await store.offers.attachment_log(session_id=session_id, since=since)
    assert [e.offer.source_event_id for e in entries] == expected


# -- retention ----------------------------------------------------------------------------------


async def _seed_session(store: Store, clock: Clock, name: str, close_at: float | None) -> int:
    session_id = await open_session(store, f"!{name}:hs", f"!agents-{name}:hs")
    offer, _ = await make_offer(store, session_id, f"${name}-upload")
    await store.offers.transition(offer.id, S.OFFERED)
    await store.work.submit_work("send", f"relay-{name}", {"session": session_id},
                                 lane=session_lane(session_id))
    if close_at is not None:
        saved = clock.now
        clock.now = close_at
        await store.sessions.close_session(session_id, "ended")
        clock.now = saved
    return session_id


async def _rows(store: Store, session_id: int) -> tuple[int, int, int, int]:
    return (
        await count(store, "SELECT count(*) FROM sessions WHERE id = ?", session_id),
        await count(store, "SELECT count(*) FROM offers WHERE session_id = ?", session_id),
        await count(store, "SELECT count(*) FROM offer_transitions WHERE offer_id IN "
                     "(SELECT id FROM offers WHERE session_id = ?)", session_id),
        await count(store, "SELECT count(*) FROM work WHERE lane = ?", session_lane(session_id)),
    )


@pytest.mark.parametrize(
    ("close_offset", "purged"),
    [(-100.0, True), (-0.001, True), (0.0, False), (50.0, False), (None, False)],
    ids=["closed-long-ago", "closed-just-before", "closed-at-cutoff", "closed-after", "open"],
)
async def test_purge_closed_sessions(
    store: Store, clock: Clock, close_offset: float | None, purged: bool
) -> None:
    """Only sessions closed before the cutoff are purged, with their offers, log rows and work."""
    cutoff = clock.now + 1000
    keeper = await _seed_session(store, clock, "keeper", None)
    target = await _seed_session(
        store, clock, "target", None if close_offset is None else cutoff + close_offset)
    old_closed = await _seed_session(store, clock, "old", cutoff - 500)
    keeper_rows = await _rows(store, keeper)
    target_rows = await _rows(store, target)
    assert target_rows == (1, 1, 2, 1)

    removed = await store.sessions.purge_closed_sessions(cutoff)

    assert removed == (2 if purged else 1)
    assert await _rows(store, old_closed) == (0, 0, 0, 0)
    assert await _rows(store, keeper) == keeper_rows
    assert await _rows(store, target) == ((0, 0, 0, 0) if purged else target_rows)
    if purged:
        with pytest.raises(KeyError):
            await store.sessions.get_session(target)
    assert await store.sessions.purge_closed_sessions(cutoff) == 0


async def test_outbox_lookups_by_event_and_by_txn(store: Store) -> None:
    """The outbox answers which txn id made an event in a room, and where a txn id landed."""
    await store.outbox.record_sent("relay-$orig", "!agents", "$copy")
    assert await store.outbox.sent_txn("!agents", "$copy") == "relay-$orig"
    # The same id in another room: no.
    assert await store.outbox.sent_txn("!customer", "$copy") is None
    assert await store.outbox.sent_txn("!agents", "$nothing") is None
    assert await store.outbox.sent_in_room("relay-$orig") == ("!agents", "$copy")
    assert await store.outbox.sent_in_room("relay-$other") is None
# -- per-chat offer numbers, decision time, activity panels -----------------------------------


async def test_offers_are_numbered_per_session_from_one(store: Store) -> None:
    """Each session counts its own offers from #1; ids stay global; a replayed event keeps its."""
    first = await open_session(store)
    second = await open_session(store, room="!other:hs", agent_room="!other-agents:hs")
    a1, _ = await make_offer(store, first, "$a1")
    b1, _ = await make_offer(store, second, "$b1")
    a2, _ = await make_offer(store, first, "$a2")
    again, created = await make_offer(store, first, "$a1")
    assert [(a1.number, b1.number, a2.number)] == [(1, 1, 2)]
    assert (a1.id, b1.id, a2.id) == (1, 2, 3)
    assert not created and again.number == 1
    assert await store.offers.offer_by_number(first, 2) == a2
    assert await store.offers.offer_by_number(second, 2) is None
    assert await store.offers.offer_by_number(second, 1) == b1


async def test_migration_numbers_existing_offers_per_session(
    store_database: Path | str
) -> None:
    """Offers stored before per-chat numbers get them in creation order within their session."""
    db = await at_version(store_database, 1)
    for sid in (1, 2):
        await db.execute("INSERT INTO sessions(customer_room, customer_id, customer_name, "
                         "state, created_at) VALUES (?, '@c:hs', 'C', 'open', 0)", f"!r{sid}:hs")
    for oid, sid in ((1, 1), (2, 2), (3, 1), (4, 1)):
        await db.execute(
            "INSERT INTO offers(session_id, direction, sender, sender_name, source_room, "
            "source_event_id, source_content, msgtype, filename, state, created_at, updated_at) "
            "VALUES (?, 'customer_to_agent', '@c:hs', 'C', '!r:hs', ?, '{}', 'm.file', 'f', "
            "'offered', 0, 0)", sid, f"$e{oid}")
    await db.close()
    upgraded = await Store.open(store_database)
    try:
        numbers = {o.id: o.number for s in (1, 2)
                   for o in await upgraded.offers.session_offers(s)}
        assert numbers == {1: 1, 2: 1, 3: 2, 4: 3}
        fresh, _ = await make_offer(upgraded, 2, "$new")
        assert (fresh.id, fresh.number) == (5, 2)
    finally:
        await upgraded.close()


async def test_a_decision_records_when_it_was_made(store: Store, clock: Clock) -> None:
    """Accepting or declining stores the decider and the time; other moves store neither."""
    session = await open_session(store)
    offer, _ = await make_offer(store, session)
    await drive(store, offer.id, OfferState.OFFERED)
    assert (await store.offers.get_offer(offer.id)).decided_at is None  # type: ignore[union-attr]
    clock.now += 60
    decided = await store.offers.transition(offer.id, OfferState.ACCEPTED, actor=AGENT)
    assert decided is not None
    assert (decided.decided_by, decided.decided_at) == (AGENT, clock.now)


async def test_panel_versions_track_what_the_message_shows(store: Store) -> None:
    """A panel is behind after a bump until the version shown is recorded."""
    session = await open_session(store)
    assert await store.panels.get_panel(CUSTOMER_ROOM) is None
    assert await store.panels.bump_panel(session, CUSTOMER_ROOM) == 1
    assert await store.panels.bump_panel(session, CUSTOMER_ROOM) == 2
    assert [p.room_id for p in await store.panels.panels_behind()] == [CUSTOMER_ROOM]
    assert (await store.panels.get_panel(CUSTOMER_ROOM)).pin == "pending"  # type: ignore[union-attr]
    await store.panels.update_panel(CUSTOMER_ROOM, event_id="$panel", pin="pinned", shown_version=2)
    panel = await store.panels.get_panel(CUSTOMER_ROOM)
    assert panel is not None and (panel.event_id, panel.pin, panel.shown_version) == (
        "$panel", "pinned", 2)
    assert await store.panels.panels_behind() == []
    with pytest.raises(ValueError):
        await store.panels.update_panel(CUSTOMER_ROOM, version=9)


async def test_a_reading_tool_never_upgrades_the_store(store_database: Path | str) -> None:
    """``Store.open(upgrade=False)`` (``parcel-bot log``) refuses a store of another version
    and leaves it exactly as it found it; the current version opens."""
    old = await at_version(store_database, 1)
    await old.close()
    with pytest.raises(SchemaMismatch, match="schema version 1, older than this Parcel's 11"):
        await Store.open(store_database, upgrade=False)
    db = await connect(store_database)
    try:
        async with db.transaction():
            assert await db.schema_version() == 1
    finally:
        await db.close()
    await (await Store.open(store_database)).close()  # the bot upgrades it
    reader = await Store.open(store_database, upgrade=False)
    await reader.close()


@pytest.mark.parametrize(("script", "expected"), [
    ("CREATE TABLE a (x TEXT); CREATE INDEX a_x ON a(x);",
     ["CREATE TABLE a (x TEXT)", " CREATE INDEX a_x ON a(x)"]),
    ("CREATE FUNCTION f() RETURNS trigger AS $body$ BEGIN RETURN NULL; END $body$; SELECT f()",
     ["CREATE FUNCTION f() RETURNS trigger AS $body$ BEGIN RETURN NULL; END $body$",
      " SELECT f()"]),
    ("DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;", ["DO $$ BEGIN PERFORM 1; PERFORM 2; END $$"]),
    ("CREATE FUNCTION g() AS $a$ SELECT '$b$;'; $a$",
     ["CREATE FUNCTION g() AS $a$ SELECT '$b$;'; $a$"]),
    ("  ;\n ; ", []),
])
def test_migration_scripts_split_at_semicolons_outside_dollar_quotes(
    script: str, expected: list[str]
) -> None:
    """A function body's semicolons stay inside its statement; empty statements are dropped."""
    assert split_statements(script) == expected


async def test_a_stalled_transaction_does_not_hold_its_locks_for_long(postgres_url: str) -> None:
    """An instance stalled inside a transaction (a frozen leader) loses it to the database's
    idle limit: another instance's write to the same row goes through while the first still
    waits, and the first's late work fails as a transient database failure."""
    stalled = await Store.open(postgres_url, idle_transaction_limit=0.5)
    other = await Store.open(postgres_url)
    try:
        await stalled.values.set_value("k", "before")
        written = asyncio.Event()

        async def other_writes() -> None:
            await other.values.set_value("k", "by the other instance")
            written.set()

        with pytest.raises(TransientError) as failed:
            async with stalled.transaction():
                await stalled.values.set_value("k", "by the stalled instance")  # locks the row
                writer = asyncio.create_task(other_writes())
                await asyncio.wait_for(written.wait(), timeout=60)
                await stalled.values.set_value("k", "too late")
        await writer
        assert failed.value.source is Source.DATABASE
        assert await other.values.get_value("k") == "by the other instance"
    finally:
        await stalled.close()
        await other.close()
