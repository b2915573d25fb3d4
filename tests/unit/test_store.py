"""The SQLite store: migrations, sessions, offers and their log, work units, outbox, retention."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bot.store as store_module
from bot.attachments.model import TRANSITIONS, Direction, Offer, OfferState
from bot.store import SchemaTooNew, SessionState, Side, Store, WorkUnit, outbox_owner, session_lane
from bot.store import migrations as migrations_module
from bot.store.migrations import MIGRATIONS, migrate

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


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store.open(db_path)
    yield opened
    opened.close()


def open_session(store: Store, room: str = CUSTOMER_ROOM, agent_room: str | None = AGENT_ROOM,
                 customer: str = CUSTOMER) -> int:
    session, _ = store.create_session(room, customer, "Carol")
    if agent_room is not None:
        store.attach_agent_room(session.id, agent_room)
    return session.id


def make_offer(store: Store, session_id: int, event_id: str = "$upload",
               direction: Direction = Direction.CUSTOMER_TO_AGENT,
               sender: str = CUSTOMER) -> tuple[Offer, bool]:
    return store.create_offer(
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


def drive(store: Store, offer_id: int, state: OfferState) -> Offer:
    """Move an offer along PATH_TO[state] and return it."""
    offer = store.get_offer(offer_id)
    for step in PATH_TO[state]:
        offer = store.transition(offer_id, step, actor=AGENT)
        assert offer is not None, f"setup move to {step} refused"
    assert offer is not None and offer.state is state
    return offer


def count(store: Store, sql: str, *params: Any) -> int:
    return int(store._conn.execute(sql, params).fetchone()[0])


# -- migrations ---------------------------------------------------------------------------------

EXPECTED_TABLES = {"kv", "sessions", "offers", "offer_transitions", "handled_events", "work",
                   "outbox"}


def test_migrations_create_the_schema(store: Store) -> None:
    """A fresh store has every table of the schema."""
    names = {row[0] for row in store._conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert EXPECTED_TABLES <= names


def test_migrations_set_user_version(store: Store) -> None:
    """After opening, PRAGMA user_version is the number of known migrations."""
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


@pytest.mark.parametrize("newer_by", [1, 5])
def test_newer_schema_is_refused(db_path: Path, newer_by: int) -> None:
    """A database written by a newer Parcel (higher user_version) raises SchemaTooNew untouched."""
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + newer_by}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade Parcel"):
        Store.open(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + newer_by
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


def test_reopening_is_idempotent_and_keeps_data(db_path: Path) -> None:
    """Opening an up-to-date store again runs no migration and loses nothing."""
    first = Store.open(db_path)
    session_id = open_session(first)
    first.set_value("sync_token", "s1")
    first.close()
    for _ in range(2):
        again = Store.open(db_path)
        assert again._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert again.get_session(session_id).agent_room == AGENT_ROOM
        assert again.get_value("sync_token") == "s1"
        assert migrate(again._conn) == len(MIGRATIONS)
        again.close()


def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half way leaves neither its tables nor a bumped user_version."""
    Store.open(db_path).close()
    broken = "CREATE TABLE half_done (x INTEGER); CREATE TABLE broken ("
    monkeypatch.setattr(migrations_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.Error):
        Store.open(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
    finally:
        conn.close()


# -- key/value ----------------------------------------------------------------------------------


def test_kv_set_get_and_overwrite(store: Store) -> None:
    """get_value returns None for an unknown key and the last value set otherwise."""
    assert store.get_value("k") is None
    store.set_value("k", "1")
    store.set_value("k", "2")
    assert store.get_value("k") == "2"


# -- sessions -----------------------------------------------------------------------------------


def test_create_session_returns_the_live_session(store: Store) -> None:
    """A second create_session for the same room returns the existing session, not a new one."""
    first, created = store.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert created and first.state is SessionState.OPENING and first.agent_room is None
    again, created_again = store.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert (again.id, created_again) == (first.id, False)
    opened = store.attach_agent_room(first.id, AGENT_ROOM)
    assert opened.state is SessionState.OPEN and opened.agent_room == AGENT_ROOM
    still, created_still = store.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert (still.id, created_still) == (first.id, False)


def test_create_session_opens_a_new_one_after_close(store: Store) -> None:
    """Once the room's session is closed, create_session starts a fresh one."""
    first_id = open_session(store)
    assert store.close_session(first_id, "ended") is True
    assert store.close_session(first_id, "again") is False
    closed = store.get_session(first_id)
    assert closed.state is SessionState.CLOSED and closed.close_reason == "ended"
    assert closed.closed_at is not None
    second, created = store.create_session(CUSTOMER_ROOM, CUSTOMER, "Carol")
    assert created and second.id != first_id and second.state is SessionState.OPENING


def test_sessions_in_different_rooms_are_separate(store: Store) -> None:
    """Each customer room gets its own session."""
    a = open_session(store, "!a:hs", "!agents-a:hs")
    b = open_session(store, "!b:hs", "!agents-b:hs")
    assert a != b
    assert [s.id for s in store.sessions(SessionState.OPEN)] == [a, b]


@pytest.mark.parametrize(
    ("room", "side"),
    [(CUSTOMER_ROOM, Side.CUSTOMER), (AGENT_ROOM, Side.AGENT)],
    ids=["customer-room", "agent-room"],
)
def test_session_for_room_tells_the_side(store: Store, room: str, side: Side) -> None:
    """session_for_room finds the session from either room and says which side the room is."""
    session_id = open_session(store)
    found = store.session_for_room(room)
    assert found is not None
    session, found_side = found
    assert session.id == session_id and found_side is side
    assert session.room_of(side) == room
    assert session.other_room(side) == (AGENT_ROOM if side is Side.CUSTOMER else CUSTOMER_ROOM)


def test_session_for_unknown_room_is_none(store: Store) -> None:
    """A room that belongs to no session yields None."""
    open_session(store)
    assert store.session_for_room("!elsewhere:hs") is None


def test_session_for_room_prefers_the_newest_session(store: Store) -> None:
    """After a close and a new session in the same customer room, the new one is returned."""
    old = open_session(store)
    store.close_session(old, "ended")
    new = open_session(store, agent_room="!agents-2:hs")
    found = store.session_for_room(CUSTOMER_ROOM)
    assert found is not None and found[0].id == new
    old_agent = store.session_for_room(AGENT_ROOM)
    assert old_agent is not None and old_agent[0].id == old and old_agent[1] is Side.AGENT


def test_get_session_unknown_raises_key_error(store: Store) -> None:
    """Asking for a session id that does not exist raises KeyError."""
    with pytest.raises(KeyError):
        store.get_session(404)


# -- offers -------------------------------------------------------------------------------------


def test_create_offer_is_idempotent_per_source_event(store: Store) -> None:
    """The same upload event yields the same offer; only the first call reports created."""
    session_id = open_session(store)
    first, created = make_offer(store, session_id)
    again, created_again = make_offer(store, session_id)
    assert created is True and created_again is False
    assert again.id == first.id and again.state is S.INSPECTING
    other, created_other = make_offer(store, session_id, "$another")
    assert created_other and other.id != first.id
    assert count(store, "SELECT count(*) FROM offers") == 2
    assert count(store, "SELECT count(*) FROM offer_transitions WHERE offer_id = ?", first.id) == 1


def test_create_offer_records_the_initial_transition(store: Store) -> None:
    """A new offer starts INSPECTING with one log row naming its sender."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    assert offer.state is S.INSPECTING and offer.is_pending
    assert store.source_content(offer.id) == '{"msgtype": "m.file"}'
    assert store.offer_by_source_event("$upload") == offer
    (entry,) = store.attachment_log(session_id)
    assert [(st, actor, reason) for st, _, actor, reason in entry.transitions] == [
        ("inspecting", CUSTOMER, None)
    ]


TRANSITION_PAIRS = [
    pytest.param(src, dst, dst in TRANSITIONS[src], id=f"{src.value}->{dst.value}")
    for src in OfferState
    for dst in OfferState
]


@pytest.mark.parametrize(("current", "target", "allowed"), TRANSITION_PAIRS)
def test_transition_enforces_the_table(
    store: Store, current: OfferState, target: OfferState, allowed: bool
) -> None:
    """store.transition succeeds exactly for the table's moves; a refusal changes nothing."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    before = drive(store, offer.id, current)
    rows_before = count(store, "SELECT count(*) FROM offer_transitions")
    result = store.transition(offer.id, target, actor="@someone:hs", reason="why")
    if allowed:
        assert result is not None and result.state is target
        assert count(store, "SELECT count(*) FROM offer_transitions") == rows_before + 1
    else:
        assert result is None
        assert store.get_offer(offer.id) == before
        assert count(store, "SELECT count(*) FROM offer_transitions") == rows_before


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
def test_first_decision_wins(store: Store, first: OfferState, second: OfferState) -> None:
    """After the first decision (or expiry/withdrawal) a second one returns None and is lost."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    store.transition(offer.id, S.OFFERED)
    won = store.transition(offer.id, first, actor="@first:hs")
    assert won is not None and won.state is first
    assert store.transition(offer.id, second, actor="@second:hs") is None
    final = store.get_offer(offer.id)
    assert final is not None and final.state is first
    assert final.decided_by == (won.decided_by)


def test_transition_logs_actor_and_reason_and_sets_decided_by(
    store: Store, clock: Clock
) -> None:
    """Each transition logs its time, actor and reason; a decision also sets decided_by."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    clock.now += 5
    offered = store.transition(offer.id, S.OFFERED, offer_event_id="$card", offer_room=AGENT_ROOM)
    assert offered is not None
    assert offered.offer_event_id == "$card" and offered.decided_by is None
    assert offered.updated_at == clock.now
    assert store.offer_by_offer_event(AGENT_ROOM, "$card") == offered
    assert store.offer_by_offer_event(CUSTOMER_ROOM, "$card") is None
    clock.now += 5
    declined = store.transition(offer.id, S.DECLINED, actor=AGENT, reason="not needed")
    assert declined is not None
    assert declined.decided_by == AGENT and declined.reason == "not needed"
    (entry,) = store.attachment_log(session_id)
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
def test_decided_by_only_for_decisions(
    store: Store, target: OfferState, sets_decided_by: bool
) -> None:
    """decided_by records the actor of an accept or decline, not of a withdrawal or expiry."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    store.transition(offer.id, S.OFFERED)
    moved = store.transition(offer.id, target, actor="@actor:hs")
    assert moved is not None
    assert moved.decided_by == ("@actor:hs" if sets_decided_by else None)


def test_offers_in_states_and_undelivered_accepted(store: Store) -> None:
    """Offers are found by state, and accepted offers without a delivery event are listed."""
    session_id = open_session(store)
    ids = {state: make_offer(store, session_id, f"${state.value}")[0].id
           for state in (S.INSPECTING, S.OFFERED, S.ACCEPTED, S.DECLINED)}
    for state, offer_id in ids.items():
        drive(store, offer_id, state)
    pending = store.offers_in_states([S.INSPECTING, S.OFFERED])
    assert [o.id for o in pending] == [ids[S.INSPECTING], ids[S.OFFERED]]
    assert [o.id for o in store.undelivered_accepted()] == [ids[S.ACCEPTED]]
    store.update_offer(ids[S.ACCEPTED], delivery_event_id="$delivered")
    assert store.undelivered_accepted() == []
    assert [o.id for o in store.session_offers(session_id)] == sorted(ids.values())


def test_update_offer_rejects_unknown_fields(store: Store) -> None:
    """update_offer refuses column names that are not Offer fields."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    with pytest.raises(ValueError, match="unknown offer fields"):
        store.update_offer(offer.id, state="accepted; DROP TABLE offers", bogus=1)


# -- settling -----------------------------------------------------------------------------------


def test_unsettled_offers_and_mark_settled(store: Store) -> None:
    """An offer is unsettled until its current state is marked settled, and again after a move."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    assert [o.id for o in store.unsettled_offers()] == [offer.id]
    assert store.is_settled(offer.id) is False
    store.mark_settled(offer.id, S.INSPECTING)
    assert store.unsettled_offers() == [] and store.is_settled(offer.id)
    store.transition(offer.id, S.OFFERED)
    assert [o.id for o in store.unsettled_offers()] == [offer.id]
    store.mark_settled(offer.id, S.OFFERED)
    assert store.unsettled_offers() == []


@pytest.mark.parametrize("stale", [S.INSPECTING, S.ACCEPTED, S.DECLINED], ids=lambda s: s.value)
def test_mark_settled_only_for_the_current_state(store: Store, stale: OfferState) -> None:
    """Marking a state other than the current one settled has no effect."""
    session_id = open_session(store)
    offer, _ = make_offer(store, session_id)
    store.transition(offer.id, S.OFFERED)
    store.mark_settled(offer.id, stale)
    assert store.is_settled(offer.id) is False
    assert [o.id for o in store.unsettled_offers()] == [offer.id]


def test_is_settled_for_unknown_offer_is_false(store: Store) -> None:
    """is_settled on a missing offer is False, not an error."""
    assert store.is_settled(999) is False


# -- work units ---------------------------------------------------------------------------------


def keys(units: list[WorkUnit]) -> list[str]:
    return [unit.key for unit in units]


def test_due_work_gives_each_lane_its_oldest_unit(store: Store, clock: Clock) -> None:
    """Of a lane only the oldest unit is due; lane-less units are all due; later ones wait."""
    store.submit_work("send", "a1", {"n": 1}, lane="session:1")
    store.submit_work("send", "a2", {"n": 2}, lane="session:1")
    store.submit_work("send", "b1", {"n": 3, "nested": {"k": [1, 2]}}, lane="session:2")
    store.submit_work("decrypt", "free1", {}, lane=None)
    store.submit_work("decrypt", "free2", {}, lane=None)
    due = store.due_work(clock.now, 10)
    assert keys(due) == ["a1", "b1", "free1", "free2"]
    assert due[1].payload == {"n": 3, "nested": {"k": [1, 2]}}
    assert (due[0].kind, due[0].lane, due[0].attempts, due[0].generation) == (
        "send", "session:1", 0, 0)
    assert store.finish_work(due[0]) is True
    assert keys(store.due_work(clock.now, 10)) == ["a2", "b1", "free1", "free2"]
    assert keys(store.due_work(clock.now, 2)) == ["a2", "b1"]


def test_a_postponed_lane_head_holds_its_lane(store: Store, clock: Clock) -> None:
    """A unit waiting for its retry keeps the units behind it in its lane from running."""
    store.submit_work("send", "a1", {}, lane="session:1")
    store.submit_work("send", "a2", {}, lane="session:1")
    head = store.due_work(clock.now, 10)[0]
    store.postpone_work(head, clock.now + 30, "homeserver down")
    assert store.due_work(clock.now, 10) == []
    assert store.next_work_at() == clock.now + 30
    later = store.due_work(clock.now + 30, 10)
    assert keys(later) == ["a1"]
    assert (later[0].attempts, later[0].last_error) == (1, "homeserver down")


def test_submitting_a_waiting_key_asks_for_another_run(store: Store, clock: Clock) -> None:
    """A second submit of a key adds no row: the unit's generation rises and it is due now."""
    store.submit_work("offer", "offer:1", {"offer": 1}, lane="offer:1")
    unit = store.due_work(clock.now, 10)[0]
    store.postpone_work(unit, clock.now + 100, "down")
    store.submit_work("offer", "offer:1", {"offer": 1}, lane="offer:1")
    [again] = store.work_units()
    assert (again.generation, again.next_at, again.attempts) == (1, clock.now, 1)


def test_a_unit_asked_for_again_while_running_is_not_finished(store: Store, clock: Clock) -> None:
    """finish_work keeps a unit re-submitted during its run, due at once; drop_work removes it."""
    store.submit_work("offer", "offer:1", {"offer": 1})
    running = store.due_work(clock.now, 10)[0]
    store.submit_work("offer", "offer:1", {"offer": 1})
    assert store.finish_work(running) is False
    [left] = store.work_units()
    assert left.next_at <= clock.now
    store.postpone_work(running, clock.now + 50, "failed")  # re-asked: stays due now
    assert store.work_units()[0].next_at <= clock.now
    store.drop_work(left.id)
    assert store.work_units() == []


def test_hurry_work_makes_waiting_units_due(store: Store, clock: Clock) -> None:
    """hurry_work brings every waiting unit (or only one kind's) forward to now."""
    for key, kind in (("s1", "send"), ("d1", "decrypt"), ("d2", "decrypt")):
        store.submit_work(kind, key, {})
        store.postpone_work(store.work_units()[-1], clock.now + 500, "later")
    assert store.due_work(clock.now, 10) == []
    assert store.hurry_work(clock.now, "decrypt") == 2
    assert keys(store.due_work(clock.now, 10)) == ["d1", "d2"]
    assert store.hurry_work(clock.now) == 1
    assert keys(store.due_work(clock.now, 10)) == ["s1", "d1", "d2"]


def test_work_backlog_counts_units_and_finds_the_oldest(store: Store, clock: Clock) -> None:
    """work_backlog reports how many units wait and when the oldest was submitted."""
    assert store.work_backlog() == (0, None)
    store.submit_work("send", "x", {})
    first = clock.now
    clock.now += 10
    store.submit_work("send", "y", {})
    assert store.work_backlog() == (2, first)


def test_submit_work_marks_the_handled_event(store: Store) -> None:
    """submit_work with handled_event records the event as handled; without one, nothing is."""
    store.submit_work("send", "k1", {}, handled_event="$in1")
    store.submit_work("send", "k2", {})
    assert store.is_handled("$in1") is True
    assert count(store, "SELECT count(*) FROM handled_events") == 1
    store.submit_work("send", "k3", {}, handled_event="$in1")
    assert count(store, "SELECT count(*) FROM handled_events") == 1


def test_submit_work_writes_unit_and_handled_event_in_one_transaction(store: Store) -> None:
    """The unit insert and the handled-event insert sit between one BEGIN and one COMMIT."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        store.submit_work("send", "k", {}, handled_event="$in")
    finally:
        store._conn.set_trace_callback(None)
    kinds = []
    for sql in statements:
        head = sql.strip().upper()
        for word in ("BEGIN", "COMMIT", "ROLLBACK", "INSERT INTO WORK",
                     "INSERT OR IGNORE INTO HANDLED_EVENTS"):
            if head.startswith(word):
                kinds.append(word)
    assert kinds == ["BEGIN", "INSERT INTO WORK", "INSERT OR IGNORE INTO HANDLED_EVENTS",
                     "COMMIT"]


def test_old_jobs_become_work_units_in_order(tmp_path: Path) -> None:
    """Migration 2 turns a version-1 store's queued jobs into session-lane units, in order."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    conn.execute("INSERT INTO sessions(customer_room, customer_id, customer_name, state, "
                 "created_at) VALUES ('!c:hs', '@c:hs', 'C', 'open', 1.0)")
    for n in (1, 2):
        conn.execute("INSERT INTO jobs(session_id, kind, payload, attempts, created_at) "
                     "VALUES (1, 'send', ?, ?, ?)", (f'{{"n": {n}}}', n, float(n)))
    conn.close()
    store = Store.open(path)
    try:
        units = store.work_units()
        assert [(u.kind, u.lane, u.payload, u.attempts) for u in units] == [
            ("send", "session:1", {"n": 1, "session": 1}, 1),
            ("send", "session:1", {"n": 2, "session": 1}, 2),
        ]
        assert keys(store.due_work(10.0, 10)) == [units[0].key]
    finally:
        store.close()


def test_mark_handled_is_idempotent(store: Store) -> None:
    """mark_handled may be called twice for the same event."""
    assert store.is_handled("$x") is False
    store.mark_handled("$x")
    store.mark_handled("$x")
    assert store.is_handled("$x") is True


# -- outbox -------------------------------------------------------------------------------------


def test_outbox_remembers_sent_events(store: Store) -> None:
    """sent_event is None for an unknown txn id and the recorded event id afterwards."""
    assert store.sent_event("txn-1") is None
    store.record_sent("txn-1", AGENT_ROOM, "$sent1")
    assert store.sent_event("txn-1") == "$sent1"
    assert store.sent_event("txn-2") is None


def test_outbox_record_sent_again_keeps_the_latest(store: Store) -> None:
    """Recording the same txn id twice keeps one row with the latest event id."""
    store.record_sent("txn-1", AGENT_ROOM, "$a")
    store.record_sent("txn-1", AGENT_ROOM, "$b")
    assert store.sent_event("txn-1") == "$b"
    assert count(store, "SELECT count(*) FROM outbox") == 1


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
def test_outbox_owner(txn_id: str, owner: tuple[str, int] | None) -> None:
    """A transaction id names the offer or session it was sent for, if any."""
    assert outbox_owner(txn_id) == owner


def test_pruning_forgets_old_records_but_keeps_those_still_needed(store: Store,
                                                                  clock: Clock) -> None:
    """Old handled events and sent records go, except outbox rows of offers with work owed
    and of open sessions; recent rows all stay."""
    session_id = open_session(store)
    closed_id = open_session(store, "!closed:hs", "!agents-closed:hs")
    store.close_session(closed_id, "ended")
    busy, _ = make_offer(store, session_id, "$busy")
    settled, _ = make_offer(store, session_id, "$settled")
    store.transition(settled.id, S.REJECTED, reason="no")
    store.mark_settled(settled.id, S.REJECTED)
    store.mark_handled("$old-event")
    for txn in (f"offer-{busy.id}-card", f"offer-{settled.id}-card", f"session-{session_id}-x",
                f"session-{closed_id}-x", "relay-$old"):
        store.record_sent(txn, AGENT_ROOM, f"${txn}")
    clock.now += 100
    store.mark_handled("$new-event")
    store.record_sent("relay-$new", AGENT_ROOM, "$new")

    assert store.prune_delivery_records(clock.now - 50) == (1, 3)

    assert not store.is_handled("$old-event") and store.is_handled("$new-event")
    kept = {row[0] for row in store._conn.execute("SELECT txn_id FROM outbox")}
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
def test_attachment_log_filters_by_session_and_since(
    store: Store, clock: Clock, session_filter: str | None, since_offset: float | None,
    expected: list[str],
) -> None:
    """attachment_log keeps offers of the given session created at or after ``since``."""
    start = clock.now
    a = open_session(store, "!a:hs", "!agents-a:hs")
    b = open_session(store, "!b:hs", "!agents-b:hs")
    for offset, session_id, event in ((0, a, "$a1"), (10, a, "$a2"), (20, b, "$b1"),
                                      (30, a, "$a3")):
        clock.now = start + offset
        make_offer(store, session_id, event)
    session_id = {"a": a, "b": b, None: None}[session_filter]
    since = None if since_offset is None else start + since_offset
    entries = store.attachment_log(session_id=session_id, since=since)
    assert [e.offer.source_event_id for e in entries] == expected


# -- retention ----------------------------------------------------------------------------------


def _seed_session(store: Store, clock: Clock, name: str, close_at: float | None) -> int:
    session_id = open_session(store, f"!{name}:hs", f"!agents-{name}:hs")
    offer, _ = make_offer(store, session_id, f"${name}-upload")
    store.transition(offer.id, S.OFFERED)
    store.submit_work("send", f"relay-{name}", {"session": session_id},
                      lane=session_lane(session_id))
    if close_at is not None:
        saved = clock.now
        clock.now = close_at
        store.close_session(session_id, "ended")
        clock.now = saved
    return session_id


def _rows(store: Store, session_id: int) -> tuple[int, int, int, int]:
    return (
        count(store, "SELECT count(*) FROM sessions WHERE id = ?", session_id),
        count(store, "SELECT count(*) FROM offers WHERE session_id = ?", session_id),
        count(store, "SELECT count(*) FROM offer_transitions WHERE offer_id IN "
                     "(SELECT id FROM offers WHERE session_id = ?)", session_id),
        count(store, "SELECT count(*) FROM work WHERE lane = ?", session_lane(session_id)),
    )


@pytest.mark.parametrize(
    ("close_offset", "purged"),
    [(-100.0, True), (-0.001, True), (0.0, False), (50.0, False), (None, False)],
    ids=["closed-long-ago", "closed-just-before", "closed-at-cutoff", "closed-after", "open"],
)
def test_purge_closed_sessions(
    store: Store, clock: Clock, close_offset: float | None, purged: bool
) -> None:
    """Only sessions closed before the cutoff are purged, with their offers, log rows and work."""
    cutoff = clock.now + 1000
    keeper = _seed_session(store, clock, "keeper", None)
    target = _seed_session(
        store, clock, "target", None if close_offset is None else cutoff + close_offset)
    old_closed = _seed_session(store, clock, "old", cutoff - 500)
    keeper_rows = _rows(store, keeper)
    target_rows = _rows(store, target)
    assert target_rows == (1, 1, 2, 1)

    removed = store.purge_closed_sessions(cutoff)

    assert removed == (2 if purged else 1)
    assert _rows(store, old_closed) == (0, 0, 0, 0)
    assert _rows(store, keeper) == keeper_rows
    assert _rows(store, target) == ((0, 0, 0, 0) if purged else target_rows)
    if purged:
        with pytest.raises(KeyError):
            store.get_session(target)
    assert store.purge_closed_sessions(cutoff) == 0


def test_outbox_lookups_by_event_and_by_txn(store: Store) -> None:
    """The outbox answers which txn id made an event in a room, and where a txn id landed."""
    store.record_sent("relay-$orig", "!agents", "$copy")
    assert store.sent_txn("!agents", "$copy") == "relay-$orig"
    assert store.sent_txn("!customer", "$copy") is None  # the same id in another room: no
    assert store.sent_txn("!agents", "$nothing") is None
    assert store.sent_in_room("relay-$orig") == ("!agents", "$copy")
    assert store.sent_in_room("relay-$other") is None
# -- per-chat offer numbers, decision time, activity panels -----------------------------------


def test_offers_are_numbered_per_session_from_one(store: Store) -> None:
    """Each session counts its own offers from #1; ids stay global; a replayed event keeps its."""
    first = open_session(store)
    second = open_session(store, room="!other:hs", agent_room="!other-agents:hs")
    a1, _ = make_offer(store, first, "$a1")
    b1, _ = make_offer(store, second, "$b1")
    a2, _ = make_offer(store, first, "$a2")
    again, created = make_offer(store, first, "$a1")
    assert [(a1.number, b1.number, a2.number)] == [(1, 1, 2)]
    assert (a1.id, b1.id, a2.id) == (1, 2, 3)
    assert not created and again.number == 1
    assert store.offer_by_number(first, 2) == a2
    assert store.offer_by_number(second, 2) is None
    assert store.offer_by_number(second, 1) == b1


def test_migration_numbers_existing_offers_per_session(db_path: Path) -> None:
    """Offers stored before per-chat numbers get them in creation order within their session."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    for sid in (1, 2):
        conn.execute("INSERT INTO sessions(id, customer_room, customer_id, customer_name, state, "
                     "created_at) VALUES (?, ?, '@c:hs', 'C', 'open', 0)", (sid, f"!r{sid}:hs"))
    for oid, sid in ((1, 1), (2, 2), (3, 1), (4, 1)):
        conn.execute(
            "INSERT INTO offers(id, session_id, direction, sender, sender_name, source_room, "
            "source_event_id, source_content, msgtype, filename, state, created_at, updated_at) "
            "VALUES (?, ?, 'customer_to_agent', '@c:hs', 'C', '!r:hs', ?, '{}', 'm.file', 'f', "
            "'offered', 0, 0)", (oid, sid, f"$e{oid}"))
    conn.close()
    upgraded = Store.open(db_path)
    try:
        numbers = {o.id: o.number for s in (1, 2) for o in upgraded.session_offers(s)}
        assert numbers == {1: 1, 2: 1, 3: 2, 4: 3}
        fresh, _ = make_offer(upgraded, 2, "$new")
        assert fresh.number == 2
    finally:
        upgraded.close()


def test_a_decision_records_when_it_was_made(store: Store, clock: Clock) -> None:
    """Accepting or declining stores the decider and the time; other moves store neither."""
    session = open_session(store)
    offer, _ = make_offer(store, session)
    drive(store, offer.id, OfferState.OFFERED)
    assert store.get_offer(offer.id).decided_at is None  # type: ignore[union-attr]
    clock.now += 60
    decided = store.transition(offer.id, OfferState.ACCEPTED, actor=AGENT)
    assert decided is not None
    assert (decided.decided_by, decided.decided_at) == (AGENT, clock.now)


def test_panel_versions_track_what_the_message_shows(store: Store) -> None:
    """A panel is behind after a bump until the version shown is recorded."""
    session = open_session(store)
    assert store.get_panel(CUSTOMER_ROOM) is None
    assert store.bump_panel(session, CUSTOMER_ROOM) == 1
    assert store.bump_panel(session, CUSTOMER_ROOM) == 2
    assert [p.room_id for p in store.panels_behind()] == [CUSTOMER_ROOM]
    assert store.get_panel(CUSTOMER_ROOM).pin == "pending"  # type: ignore[union-attr]
    store.update_panel(CUSTOMER_ROOM, event_id="$panel", pin="pinned", shown_version=2)
    panel = store.get_panel(CUSTOMER_ROOM)
    assert panel is not None and (panel.event_id, panel.pin, panel.shown_version) == (
        "$panel", "pinned", 2)
    assert store.panels_behind() == []
    with pytest.raises(ValueError):
        store.update_panel(CUSTOMER_ROOM, version=9)
