"""Inbound Megolm sessions read from a real nio SQLite store when needed, not all at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from nio.crypto import InboundGroupSession, OlmAccount, OutboundGroupSession

from bot.matrix.groupsessions import LazyGroupSessionStore, LazySqliteStore

PICKLE_KEY = "a test pickle key, not nio's default"
USER, DEVICE = "@parcel:example.org", "PARCELDEV"


def _session(room_id: str, sender_key: str) -> InboundGroupSession:
    outbound = OutboundGroupSession()
    return InboundGroupSession(outbound.session_key, "ed25519-key", sender_key, room_id)


@pytest.fixture
def store(tmp_path: Path) -> LazySqliteStore:
    opened = LazySqliteStore(USER, DEVICE, str(tmp_path), PICKLE_KEY)
    opened.save_account(OlmAccount())
    return opened


def test_nothing_is_read_at_start_and_a_session_is_read_when_asked(store) -> None:
    kept = [_session("!a:x", "sender-1"), _session("!a:x", "sender-2"), _session("!b:x", "s")]
    for session in kept:
        store.save_inbound_group_session(session)

    loaded = store.load_inbound_group_sessions()
    assert isinstance(loaded, LazyGroupSessionStore)
    assert list(loaded) == []  # nothing unpickled at start

    found = loaded.get("!a:x", "sender-2", kept[1].id)
    assert found is not None and found.id == kept[1].id
    assert [s.id for s in loaded] == [kept[1].id]  # kept in memory from then on


@pytest.mark.parametrize(("room_id", "sender_key", "which", "expected"), [
    ("!a:x", "sender-1", 0, True),       # the stored session
    ("!b:x", "sender-1", 0, False),      # another room: never a session of this one
    ("!a:x", "sender-2", 0, False),      # another sender's key
    ("!a:x", "sender-1", None, False),   # an id the store has never seen
])
def test_a_session_is_found_only_under_its_own_room_sender_and_id(
    store, room_id: str, sender_key: str, which: int | None, expected: bool,
) -> None:
    stored = _session("!a:x", "sender-1")
    store.save_inbound_group_session(stored)
    loaded = store.load_inbound_group_sessions()
    session_id = stored.id if which is not None else "no-such-session"
    assert (loaded.get(room_id, sender_key, session_id) is not None) is expected


def test_a_session_nio_adds_is_kept_beside_those_read(store) -> None:
    """A room key that arrives after the start (nio adds it, then stores it)."""
    stored = _session("!a:x", "sender-1")
    store.save_inbound_group_session(stored)
    loaded = store.load_inbound_group_sessions()
    arrived = _session("!a:x", "sender-1")
    assert loaded.add(arrived) is True
    assert loaded.get("!a:x", "sender-1", arrived.id) is arrived
    assert loaded.get("!a:x", "sender-1", stored.id) is not None  # still read from the store


def test_the_rooms_holding_sessions_are_listed_in_one_query(store) -> None:
    for room_id in ("!a:x", "!a:x", "!b:x"):
        store.save_inbound_group_session(_session(room_id, "sender"))
    assert store.rooms_with_inbound_sessions() == {"!a:x", "!b:x"}
