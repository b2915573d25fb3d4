"""Megolm inbound sessions read from nio's store when they are needed, not all at start.

matrix-nio loads every inbound group session it ever stored when the client starts, one
unpickle and one query for its forwarding chain each. A support bot keeps two rooms per open
chat, each with its own sessions (the bot's own, every customer's and agent's), so a restart —
or a standby taking over — with thousands of open chats spent seconds on keys for messages it
will never read again. Here the store hands nio a :class:`LazyGroupSessionStore`: a session is
read (one indexed query) the first time a message needs it, and kept in memory from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from nio.crypto import InboundGroupSession
from nio.crypto.memorystores import GroupSessionStore
from nio.store.database import DefaultStore, use_database
from nio.store.models import MegolmInboundSessions

SessionLoader = Callable[[str, str, str], InboundGroupSession | None]
T = TypeVar("T")


def store_call(store: object, name: str, action: Callable[[], T]) -> T:
    """Run ``action`` (a query on nio's crypto ``store``) the way the store runs its own calls:
    the PostgreSQL store (``run_guarded``) reconnects and classifies its failures around it."""
    guarded = getattr(store, "run_guarded", None)
    return guarded(name, action) if guarded is not None else action()  # type: ignore[no-any-return]


class LazyGroupSessionStore(GroupSessionStore):
    """nio's in-memory group session store, filled from the database on demand.

    ``load(room_id, sender_key, session_id)`` reads one session from the store (None when there
    is none). Sessions nio adds (a new room key, the bot's own new session) are kept and
    stored as nio keeps and stores them. Iterating yields only the sessions read so far (nio
    iterates only to export keys, which the bot never does).
    """

    def __init__(self, load: SessionLoader) -> None:
        super().__init__()
        self._load = load

    def get(self, room_id: str, sender_key: str, session_id: str) -> InboundGroupSession | None:
        """The session, from memory or else from the store (then kept in memory)."""
        known = super().get(room_id, sender_key, session_id)
        if known is not None:
            return known
        stored = self._load(room_id, sender_key, session_id)
        if stored is not None:
            super().add(stored)
        return stored


class LazyInboundSessions:
    """Mixin for a nio ``MatrixStore``: inbound group sessions are read one at a time."""

    database: Any
    models: Any
    pickle_key: str
    _get_account: Callable[[], Any]  # MatrixStore's
    save_inbound_group_session: Callable[[InboundGroupSession], None]  # MatrixStore's

    def load_inbound_group_sessions(self) -> GroupSessionStore:
        """nio asks for all of them at start: give it a store that reads them when needed."""
        return LazyGroupSessionStore(self._guarded_load)

    def _guarded_load(self, room_id: str, sender_key: str,
                      session_id: str) -> InboundGroupSession | None:
        return store_call(self, "load_inbound_group_session",
                          lambda: self.load_inbound_group_session(room_id, sender_key,
                                                                  session_id))

    @use_database
    def load_inbound_group_session(self, room_id: str, sender_key: str,
                                   session_id: str) -> InboundGroupSession | None:
        """One stored inbound group session, or None."""
        account = self._get_account()
        if account is None:
            return None
        row = MegolmInboundSessions.get_or_none(
            MegolmInboundSessions.account == account,
            MegolmInboundSessions.session_id == session_id,
            MegolmInboundSessions.sender_key == sender_key,
            MegolmInboundSessions.room_id == room_id,
        )
        if row is None:
            return None
        session = InboundGroupSession.from_pickle(
            row.session, row.fp_key, row.sender_key, row.room_id, self.pickle_key,
            [chain.sender_key for chain in row.forwarded_chains],
        )
        if session.upgrade_pickle:  # an old libolm pickle: stored again as vodozemac's, as nio does
            session.upgrade_pickle = False
            self.save_inbound_group_session(session)
        return session

    @use_database
    def rooms_with_inbound_sessions(self) -> set[str]:
        """The rooms the store holds inbound group sessions of (one query)."""
        account = self._get_account()
        if account is None:
            return set()
        query = (MegolmInboundSessions.select(MegolmInboundSessions.room_id).distinct()
                 .where(MegolmInboundSessions.account == account))
        return {row.room_id for row in query}


class LazySqliteStore(LazyInboundSessions, DefaultStore):
    """nio's default store (SQLite in ``data_dir/crypto``) with sessions read when needed."""
