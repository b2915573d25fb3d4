"""SQLite store: sessions, offers and their transition log, handled events, the outbox.

One connection in autocommit mode; every write that must be atomic runs in an explicit
transaction. The database is small and local, so calls are made directly from the event loop.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from bot.attachments.model import TRANSITIONS, Direction, Offer, OfferState
from bot.store.migrations import SchemaTooNew, migrate

__all__ = ["DELIVERY_RECORDS_KEPT", "Store", "Session", "SessionState", "Side", "SchemaTooNew",
           "LogEntry", "WorkUnit", "Panel"]


class SessionState(StrEnum):
    """A session is ``opening`` until its agent room exists, then ``open``, then ``closed``."""

    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


class Side(StrEnum):
    """Which room of a session an event came from."""

    CUSTOMER = "customer"
    AGENT = "agent"


@dataclass(frozen=True)
class Session:
    """One customer room paired with one agent room."""

    id: int
    customer_room: str
    agent_room: str | None
    customer_id: str
    customer_name: str
    state: SessionState
    created_at: float
    closed_at: float | None
    close_reason: str | None

    def room_of(self, side: Side) -> str | None:
        """The room id of one side."""
        return self.customer_room if side is Side.CUSTOMER else self.agent_room

    def other_room(self, side: Side) -> str | None:
        """The room id of the side opposite ``side``."""
        return self.agent_room if side is Side.CUSTOMER else self.customer_room


@dataclass(frozen=True)
class WorkUnit:
    """One durable piece of work with a side effect on the homeserver, and its retry schedule.

    ``lane`` orders units: of the units sharing a lane only the oldest may run, so a session's
    messages go out in order. ``generation`` counts the times the unit was asked for again
    while it existed.
    """

    id: int
    kind: str
    key: str
    lane: str | None
    payload: dict[str, Any]
    attempts: int
    generation: int
    next_at: float
    last_error: str | None
    created_at: float


@dataclass(frozen=True)
class Panel:
    """The live activity panel of one room: its message, and how far it is behind the log.

    ``version`` counts changes to the session's attachments; ``shown_version`` is the change
    the message last showed. The panel is behind while ``shown_version < version``. ``pin`` is
    ``pending`` until pinning was tried, then ``pinned`` or ``refused`` (the bot may not pin
    there; remembered so that is logged once).
    """

    room_id: str
    session_id: int
    event_id: str | None
    pin: str
    version: int
    shown_version: int


@dataclass(frozen=True)
class LogEntry:
    """One row of the attachment log: the offer and the times of its transitions."""

    offer: Offer
    transitions: tuple[tuple[str, float, str | None, str | None], ...]


# Handled events and sent transactions are remembered for twice the homeserver's 24 h
# transaction window: long enough for any replay or retry to find them. Older events count as
# handled (the router's backfill stops there).
DELIVERY_RECORDS_KEPT = 48 * 3600.0


def session_lane(session_id: int) -> str:
    """The lane that keeps one session's messages in order."""
    return f"session:{session_id}"


def offer_lane(offer_id: int) -> str:
    """The lane that runs one offer's steps one at a time."""
    return f"offer:{offer_id}"


# A unit may run when no older unit shares its lane.
_MAY_RUN = ("(w.lane IS NULL OR NOT EXISTS "
            "(SELECT 1 FROM work AS e WHERE e.lane = w.lane AND e.id < w.id))")

_OFFER_FIELDS = tuple(f.name for f in fields(Offer))


def _offer_from_row(row: sqlite3.Row) -> Offer:
    values: dict[str, Any] = {name: row[name] for name in _OFFER_FIELDS}
    values["direction"] = Direction(values["direction"])
    values["state"] = OfferState(values["state"])
    values["scanned"] = bool(values["scanned"])
    return Offer(**values)


def _work_from_row(row: sqlite3.Row) -> WorkUnit:
    return WorkUnit(
        id=row["id"],
        kind=row["kind"],
        key=row["key"],
        lane=row["lane"],
        payload=json.loads(row["payload"]),
        attempts=row["attempts"],
        generation=row["generation"],
        next_at=row["next_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
    )


def _session_from_row(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        customer_room=row["customer_room"],
        agent_room=row["agent_room"],
        customer_id=row["customer_id"],
        customer_name=row["customer_name"],
        state=SessionState(row["state"]),
        created_at=row["created_at"],
        closed_at=row["closed_at"],
        close_reason=row["close_reason"],
    )


class Store:
    """Parcel's durable state. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating and migrating as needed) the store at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL + NORMAL: a commit survives a crash of the process (SIGKILL included); only a
        # power loss can drop the last commits, which the idempotent sends then repeat safely.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        migrate(conn)
        return cls(conn)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one immediate transaction."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- key/value -------------------------------------------------------------------------

    def get_value(self, key: str) -> str | None:
        """A small persisted setting, such as the sync position."""
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_value(self, key: str, value: str) -> None:
        """Persist a small setting."""
        self._conn.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- sessions --------------------------------------------------------------------------

    def create_session(
        self, customer_room: str, customer_id: str, customer_name: str
    ) -> tuple[Session, bool]:
        """Open a session for ``customer_room`` unless one is live; returns (session, created)."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM sessions WHERE customer_room = ? AND state != 'closed'",
                (customer_room,),
            ).fetchone()
            if row is not None:
                return _session_from_row(row), False
            cursor = conn.execute(
                "INSERT INTO sessions(customer_room, customer_id, customer_name, state, "
                "created_at) VALUES (?, ?, ?, 'opening', ?)",
                (customer_room, customer_id, customer_name, time.time()),
            )
            row = conn.execute(
                "SELECT * FROM sessions WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        return _session_from_row(row), True

    def attach_agent_room(self, session_id: int, agent_room: str) -> Session:
        """Pair the session with its agent room and mark it open."""
        self._conn.execute(
            "UPDATE sessions SET agent_room = ?, state = 'open' WHERE id = ? AND state = 'opening'",
            (agent_room, session_id),
        )
        return self.get_session(session_id)

    def rename_customer(self, session_id: int, name: str) -> Session:
        """Record the customer's display name (looked up after the session was opened)."""
        self._conn.execute("UPDATE sessions SET customer_name = ? WHERE id = ?",
                           (name, session_id))
        return self.get_session(session_id)

    def session_settled(self, session_id: int) -> bool:
        """Whether every offer of a session has carried out what its state owes."""
        row = self._conn.execute(
            "SELECT COUNT(*) AS n FROM offers WHERE session_id = ? AND "
            "(settled_state IS NULL OR settled_state != state)", (session_id,)
        ).fetchone()
        return int(row["n"]) == 0

    def close_session(self, session_id: int, reason: str) -> bool:
        """Close an open session; False when it was already closed."""
        cursor = self._conn.execute(
            "UPDATE sessions SET state = 'closed', closed_at = ?, close_reason = ? "
            "WHERE id = ? AND state != 'closed'",
            (time.time(), reason, session_id),
        )
        return cursor.rowcount == 1

    def get_session(self, session_id: int) -> Session:
        """The session with this id (it must exist)."""
        row = self._conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise KeyError(session_id)
        return _session_from_row(row)

    def session_for_room(self, room_id: str) -> tuple[Session, Side] | None:
        """The session a room belongs to, and which side it is, if any."""
        row = self._conn.execute(
            "SELECT * FROM sessions WHERE customer_room = ? OR agent_room = ? "
            "ORDER BY id DESC LIMIT 1",
            (room_id, room_id),
        ).fetchone()
        if row is None:
            return None
        session = _session_from_row(row)
        side = Side.CUSTOMER if session.customer_room == room_id else Side.AGENT
        return session, side

    def sessions(self, state: SessionState | None = None) -> list[Session]:
        """All sessions, or those in one state, oldest first."""
        if state is None:
            rows = self._conn.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM sessions WHERE state = ? ORDER BY id", (state.value,)
            ).fetchall()
        return [_session_from_row(row) for row in rows]

    def purge_closed_sessions(self, closed_before: float) -> int:
        """Delete every record of sessions closed before ``closed_before``; returns how many."""
        with self.transaction() as conn:
            ids = [row["id"] for row in conn.execute(
                "SELECT id FROM sessions WHERE state = 'closed' AND closed_at < ?",
                (closed_before,),
            ).fetchall()]
            for session_id in ids:
                conn.execute(
                    "DELETE FROM offer_transitions WHERE offer_id IN "
                    "(SELECT id FROM offers WHERE session_id = ?)", (session_id,),
                )
                conn.execute(
                    "DELETE FROM work WHERE lane = ? OR lane IN "
                    "(SELECT 'offer:' || id FROM offers WHERE session_id = ?)",
                    (session_lane(session_id), session_id),
                )
                conn.execute("DELETE FROM offers WHERE session_id = ?", (session_id,))
                conn.execute("DELETE FROM panels WHERE session_id = ?", (session_id,))
                conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return len(ids)

    # -- offers ----------------------------------------------------------------------------

    def create_offer(
        self,
        *,
        session_id: int,
        direction: Direction,
        sender: str,
        sender_name: str,
        source_room: str,
        source_event_id: str,
        source_content: str,
        msgtype: str,
        filename: str,
        declared_mimetype: str | None,
        declared_size: int | None,
    ) -> tuple[Offer, bool]:
        """Queue an offer for an upload event; returns (offer, created). Idempotent per event."""
        now = time.time()
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO offers(session_id, direction, sender, sender_name, "
                "source_room, source_event_id, source_content, msgtype, filename, "
                "declared_mimetype, declared_size, state, created_at, updated_at, number) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "(SELECT COALESCE(MAX(number), 0) + 1 FROM offers WHERE session_id = ?))",
                (
                    session_id,
                    direction.value,
                    sender,
                    sender_name,
                    source_room,
                    source_event_id,
                    source_content,
                    msgtype,
                    filename,
                    declared_mimetype,
                    declared_size,
                    OfferState.INSPECTING.value,
                    now,
                    now,
                    session_id,
                ),
            )
            created = cursor.rowcount == 1
            row = conn.execute(
                "SELECT * FROM offers WHERE source_event_id = ?", (source_event_id,)
            ).fetchone()
            if created:
                conn.execute(
                    "INSERT INTO offer_transitions(offer_id, state, at, actor, reason) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    (row["id"], OfferState.INSPECTING.value, now, sender),
                )
        return _offer_from_row(row), created

    def get_offer(self, offer_id: int) -> Offer | None:
        """The offer with this id, if any."""
        row = self._conn.execute("SELECT * FROM offers WHERE id = ?", (offer_id,)).fetchone()
        return None if row is None else _offer_from_row(row)

    def offer_by_number(self, session_id: int, number: int) -> Offer | None:
        """The offer a chat calls #``number`` (numbers count per session from 1)."""
        row = self._conn.execute(
            "SELECT * FROM offers WHERE session_id = ? AND number = ?", (session_id, number)
        ).fetchone()
        return None if row is None else _offer_from_row(row)

    def source_content(self, offer_id: int) -> str:
        """The JSON content of the upload event the offer was made from."""
        row = self._conn.execute(
            "SELECT source_content FROM offers WHERE id = ?", (offer_id,)
        ).fetchone()
        return str(row["source_content"])

    def offer_by_source_event(self, event_id: str) -> Offer | None:
        """The offer made from an upload event."""
        row = self._conn.execute(
            "SELECT * FROM offers WHERE source_event_id = ?", (event_id,)
        ).fetchone()
        return None if row is None else _offer_from_row(row)

    def offer_by_offer_event(self, room_id: str, event_id: str) -> Offer | None:
        """The offer whose offer message is ``event_id`` in ``room_id``."""
        row = self._conn.execute(
            "SELECT * FROM offers WHERE offer_event_id = ? AND offer_room = ?", (event_id, room_id)
        ).fetchone()
        return None if row is None else _offer_from_row(row)

    def offers_in_states(self, states: Sequence[OfferState]) -> list[Offer]:
        """Offers currently in any of ``states``, oldest first."""
        marks = ", ".join("?" for _ in states)
        rows = self._conn.execute(
            f"SELECT * FROM offers WHERE state IN ({marks}) ORDER BY id",
            [s.value for s in states],
        ).fetchall()
        return [_offer_from_row(row) for row in rows]

    def undelivered_accepted(self) -> list[Offer]:
        """Accepted offers whose delivery has not been recorded yet."""
        rows = self._conn.execute(
            "SELECT * FROM offers WHERE state = 'accepted' AND delivery_event_id IS NULL "
            "ORDER BY id"
        ).fetchall()
        return [_offer_from_row(row) for row in rows]

    def session_offers(self, session_id: int) -> list[Offer]:
        """Every offer of one session, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM offers WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        return [_offer_from_row(row) for row in rows]

    def transition(
        self,
        offer_id: int,
        target: OfferState,
        *,
        actor: str | None = None,
        reason: str | None = None,
        **changes: Any,
    ) -> Offer | None:
        """Move an offer to ``target`` if the transition table allows it from its current state.

        The check and the write are one conditional UPDATE, so of two racing decisions exactly
        one wins. Returns the updated offer, or None when the move was refused.
        """
        sources = [state.value for state, targets in TRANSITIONS.items() if target in targets]
        if not sources:
            return None
        now = time.time()
        assignments = {"state": target.value, "updated_at": now, **changes}
        if reason is not None:
            assignments["reason"] = reason
        if actor is not None and target in (OfferState.ACCEPTED, OfferState.DECLINED):
            assignments["decided_by"] = actor
            assignments["decided_at"] = now
        columns = ", ".join(f"{name} = ?" for name in assignments)
        marks = ", ".join("?" for _ in sources)
        with self.transaction() as conn:
            cursor = conn.execute(
                f"UPDATE offers SET {columns} WHERE id = ? AND state IN ({marks})",
                [*assignments.values(), offer_id, *sources],
            )
            if cursor.rowcount != 1:
                return None
            conn.execute(
                "INSERT INTO offer_transitions(offer_id, state, at, actor, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (offer_id, target.value, now, actor, reason),
            )
            row = conn.execute("SELECT * FROM offers WHERE id = ?", (offer_id,)).fetchone()
        return _offer_from_row(row)

    def update_offer(self, offer_id: int, **changes: Any) -> Offer:
        """Record progress that is not a state change (event ids, facts, temp path)."""
        unknown = set(changes) - set(_OFFER_FIELDS)
        if unknown:
            raise ValueError(f"unknown offer fields: {sorted(unknown)}")
        columns = ", ".join(f"{name} = ?" for name in changes)
        self._conn.execute(
            f"UPDATE offers SET {columns}, updated_at = ? WHERE id = ?",
            [*changes.values(), time.time(), offer_id],
        )
        offer = self.get_offer(offer_id)
        assert offer is not None
        return offer

    def attachment_log(
        self, session_id: int | None = None, since: float | None = None
    ) -> list[LogEntry]:
        """Offers with their transition history, filtered by session and creation time."""
        clauses: list[str] = []
        params: list[float] = []
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(f"SELECT * FROM offers {where} ORDER BY id", params).fetchall()
        entries = []
        for row in rows:
            steps = self._conn.execute(
                "SELECT state, at, actor, reason FROM offer_transitions WHERE offer_id = ? "
                "ORDER BY id",
                (row["id"],),
            ).fetchall()
            entries.append(
                LogEntry(
                    offer=_offer_from_row(row),
                    transitions=tuple(
                        (s["state"], s["at"], s["actor"], s["reason"]) for s in steps
                    ),
                )
            )
        return entries

    def unsettled_offers(self) -> list[Offer]:
        """Offers whose current state still has side effects to carry out (resumed at start)."""
        rows = self._conn.execute(
            "SELECT * FROM offers WHERE settled_state IS NULL OR settled_state != state "
            "ORDER BY id"
        ).fetchall()
        return [_offer_from_row(row) for row in rows]

    def mark_settled(self, offer_id: int, state: OfferState) -> None:
        """Record that every side effect of ``state`` has been carried out."""
        self._conn.execute(
            "UPDATE offers SET settled_state = ? WHERE id = ? AND state = ?",
            (state.value, offer_id, state.value),
        )

    def is_settled(self, offer_id: int) -> bool:
        """Whether the offer's current state has had all its side effects."""
        row = self._conn.execute(
            "SELECT settled_state = state AS done FROM offers WHERE id = ?", (offer_id,)
        ).fetchone()
        return bool(row and row["done"])

    # -- durable work units ---------------------------------------------------------------

    def submit_work(
        self,
        kind: str,
        key: str,
        payload: dict[str, Any],
        *,
        lane: str | None = None,
        handled_event: str | None = None,
        now: float | None = None,
    ) -> None:
        """Add a unit of work, due now; marks the inbound event handled in the same transaction.

        ``key`` makes submitting idempotent: submitting a key that is already waiting (or
        running) asks for one more run of it instead (its generation goes up and it is due
        at once), which is how "the offer changed, look at it again" works.
        """
        at = time.time() if now is None else now
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO work(kind, key, lane, payload, next_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "generation = generation + 1, next_at = MIN(next_at, excluded.next_at)",
                (kind, key, lane, json.dumps(payload), at, at),
            )
            if handled_event is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO handled_events(event_id, handled_at) VALUES (?, ?)",
                    (handled_event, at),
                )

    def due_work(self, now: float, limit: int) -> list[WorkUnit]:
        """Units due by ``now`` that may run: the oldest of each lane, and every lane-less one."""
        rows = self._conn.execute(
            f"SELECT * FROM work AS w WHERE next_at <= ? AND {_MAY_RUN} "
            "ORDER BY next_at, id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [_work_from_row(row) for row in rows]

    def lane_head(self, lane: str) -> WorkUnit | None:
        """The oldest unit of a lane, due or not."""
        row = self._conn.execute(
            "SELECT * FROM work WHERE lane = ? ORDER BY id LIMIT 1", (lane,)
        ).fetchone()
        return None if row is None else _work_from_row(row)

    def next_work_at(self) -> float | None:
        """When the next unit that may run (a lane's oldest, or lane-less) falls due."""
        row = self._conn.execute(
            f"SELECT MIN(next_at) AS at FROM work AS w WHERE {_MAY_RUN}"
        ).fetchone()
        return None if row is None or row["at"] is None else float(row["at"])

    def finish_work(self, unit: WorkUnit) -> bool:
        """Remove a unit that is done, unless more was asked of it while it ran (then False)."""
        cursor = self._conn.execute(
            "DELETE FROM work WHERE id = ? AND generation = ?", (unit.id, unit.generation)
        )
        return cursor.rowcount == 1

    def drop_work(self, unit_id: int) -> None:
        """Remove a unit whatever was asked of it since (it can never succeed)."""
        self._conn.execute("DELETE FROM work WHERE id = ?", (unit_id,))

    def postpone_work(self, unit: WorkUnit, next_at: float, error: str) -> None:
        """Record a failed attempt and when to try again (at once if re-asked meanwhile)."""
        self._conn.execute(
            "UPDATE work SET attempts = attempts + 1, last_error = ?, "
            "next_at = CASE WHEN generation = ? THEN ? ELSE MIN(next_at, ?) END WHERE id = ?",
            (error, unit.generation, next_at, next_at, unit.id),
        )

    def hurry_work(self, now: float, kind: str | None = None) -> int:
        """Make waiting units (of one kind, or all) due now; returns how many."""
        if kind is None:
            cursor = self._conn.execute("UPDATE work SET next_at = ? WHERE next_at > ?",
                                        (now, now))
        else:
            cursor = self._conn.execute(
                "UPDATE work SET next_at = ? WHERE next_at > ? AND kind = ?", (now, now, kind)
            )
        return cursor.rowcount

    def work_units(self, kind: str | None = None) -> list[WorkUnit]:
        """Every waiting unit (of one kind), oldest first."""
        if kind is None:
            rows = self._conn.execute("SELECT * FROM work ORDER BY id").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM work WHERE kind = ? ORDER BY id", (kind,)
            ).fetchall()
        return [_work_from_row(row) for row in rows]

    def work_backlog(self) -> tuple[int, float | None]:
        """How many units wait, and when the oldest of them was submitted."""
        row = self._conn.execute(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM work"
        ).fetchone()
        return int(row["n"]), (None if row["oldest"] is None else float(row["oldest"]))

    # -- activity panels --------------------------------------------------------------------

    def bump_panel(self, session_id: int, room_id: str) -> int:
        """Record that the room's panel has something new to show; returns the new version."""
        self._conn.execute(
            "INSERT INTO panels(room_id, session_id, version) VALUES (?, ?, 1) "
            "ON CONFLICT(room_id) DO UPDATE SET version = version + 1",
            (room_id, session_id),
        )
        return self.get_panel(room_id).version  # type: ignore[union-attr]

    def get_panel(self, room_id: str) -> Panel | None:
        """The panel of a room, if it has one."""
        row = self._conn.execute("SELECT * FROM panels WHERE room_id = ?", (room_id,)).fetchone()
        if row is None:
            return None
        return Panel(row["room_id"], row["session_id"], row["event_id"], row["pin"],
                     row["version"], row["shown_version"])

    def update_panel(self, room_id: str, **changes: Any) -> None:
        """Record the panel's message, that it is pinned, or the version it now shows."""
        allowed = {"event_id", "pin", "shown_version"}
        if set(changes) - allowed:
            raise ValueError(f"unknown panel fields: {sorted(set(changes) - allowed)}")
        columns = ", ".join(f"{name} = ?" for name in changes)
        self._conn.execute(f"UPDATE panels SET {columns} WHERE room_id = ?",
                           [*changes.values(), room_id])

    def panels_behind(self) -> list[Panel]:
        """Panels whose message does not show the latest change yet (resumed at start)."""
        rows = self._conn.execute(
            "SELECT room_id FROM panels WHERE shown_version < version ORDER BY room_id"
        ).fetchall()
        return [panel for row in rows if (panel := self.get_panel(row["room_id"])) is not None]

    # -- inbound events and the outbox ------------------------------------------------------

    def is_handled(self, event_id: str) -> bool:
        """Whether an inbound event was already handled (so a replayed batch skips it)."""
        row = self._conn.execute(
            "SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return row is not None

    def mark_handled(self, event_id: str) -> None:
        """Remember that an inbound event has been handled."""
        self._conn.execute(
            "INSERT OR IGNORE INTO handled_events(event_id, handled_at) VALUES (?, ?)",
            (event_id, time.time()),
        )

    def sent_event(self, txn_id: str) -> str | None:
        """The event id a transaction id already produced, if it was sent before."""
        row = self._conn.execute(
            "SELECT event_id FROM outbox WHERE txn_id = ?", (txn_id,)
        ).fetchone()
        return None if row is None else row["event_id"]

    def sent_txn(self, room_id: str, event_id: str) -> str | None:
        """The transaction id that produced ``event_id`` in ``room_id``, if the bot sent it."""
        row = self._conn.execute(
            "SELECT txn_id FROM outbox WHERE event_id = ? AND room_id = ?", (event_id, room_id)
        ).fetchone()
        return None if row is None else str(row["txn_id"])

    def sent_in_room(self, txn_id: str) -> tuple[str, str] | None:
        """(room id, event id) that a transaction id produced, if it was sent."""
        row = self._conn.execute(
            "SELECT room_id, event_id FROM outbox WHERE txn_id = ? AND event_id IS NOT NULL",
            (txn_id,),
        ).fetchone()
        return None if row is None else (str(row["room_id"]), str(row["event_id"]))

    def record_sent(self, txn_id: str, room_id: str, event_id: str) -> None:
        """Remember what a transaction id produced, beyond the homeserver's 24 h memory."""
        now = time.time()
        self._conn.execute(
            "INSERT INTO outbox(txn_id, room_id, event_id, created_at, sent_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(txn_id) "
            "DO UPDATE SET event_id = excluded.event_id, sent_at = excluded.sent_at",
            (txn_id, room_id, event_id, now, now),
        )

    def prune_delivery_records(self, older_than: float, batch: int = 5000) -> tuple[int, int]:
        """Forget handled events and sent transactions older than ``older_than``.

        An outbox row is kept while its owner (the offer or session named in its transaction
        id) still has work to do, since a retry of that work must find what was already sent.
        Returns (handled events removed, outbox rows removed).
        """
        handled = self._conn.execute(
            "DELETE FROM handled_events WHERE handled_at < ?", (older_than,)
        ).rowcount
        rows = self._conn.execute(
            "SELECT txn_id FROM outbox WHERE created_at < ? LIMIT ?", (older_than, batch)
        ).fetchall()
        done: list[str] = []
        for row in rows:
            owner = outbox_owner(row["txn_id"])
            if owner is None or not self._owner_busy(*owner):
                done.append(row["txn_id"])
        for start in range(0, len(done), 500):
            chunk = done[start:start + 500]
            self._conn.execute(
                f"DELETE FROM outbox WHERE txn_id IN ({', '.join('?' for _ in chunk)})", chunk
            )
        return handled, len(done)

    def _owner_busy(self, kind: str, owner_id: int) -> bool:
        if kind == "offer":
            row = self._conn.execute(
                "SELECT settled_state IS NULL OR settled_state != state AS busy FROM offers "
                "WHERE id = ?", (owner_id,)
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT state != 'closed' AS busy FROM sessions WHERE id = ?", (owner_id,)
            ).fetchone()
        return bool(row and row["busy"])


_OWNED_TXN = re.compile(r"^(offer|session)-(\d+)-")


def outbox_owner(txn_id: str) -> tuple[str, int] | None:
    """Which offer or session a transaction id belongs to (``offer-12-card`` → offer 12)."""
    match = _OWNED_TXN.match(txn_id)
    return None if match is None else (match.group(1), int(match.group(2)))
