"""Parcel's store: sessions, offers and their log, work units, the outbox, key-value settings.

One :class:`Store` holds one concern object per table family (``store.sessions``,
``store.offers``, ``store.work``, ``store.outbox``, ``store.panels``, ``store.values``), all on
one :class:`~bot.store.db.Database`: SQLite in ``data_dir`` by default, PostgreSQL when the
``database`` setting names it. Every method is async. Writes that must be atomic run in
``async with store.transaction():``, which every concern shares (see ``bot/store/db.py``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from bot.attachments.model import TRANSITIONS, Direction, Offer, OfferState
from bot.store.db import Database, Row, connect, redact_url
from bot.store.migrations import SchemaMismatch, SchemaTooNew, check_version, migrate

logger = logging.getLogger(__name__)

__all__ = ["DELIVERY_RECORDS_KEPT", "Store", "Session", "SessionState", "Side", "SchemaTooNew",
           "SchemaMismatch",
           "LogEntry", "WorkUnit", "Panel", "Database", "redact_url"]


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
    # The customer's choice with !language; None: the configured language.
    language: str | None = None

    def room_of(self, side: Side) -> str | None:
        """The room id of one side."""
        return self.customer_room if side is Side.CUSTOMER else self.agent_room

    def other_room(self, side: Side) -> str | None:
        """The room id of the side opposite ``side``."""
        return self.agent_room if side is Side.CUSTOMER else self.customer_room

    def rooms(self) -> list[str]:
        """Both rooms, customer's first (only the customer's while there is no agent room)."""
        return [room for room in (self.customer_room, self.agent_room) if room is not None]


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
    waits_for: str | None = None


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


def _offer_from_row(row: Row) -> Offer:
    values: dict[str, Any] = {name: row[name] for name in _OFFER_FIELDS}
    values["direction"] = Direction(values["direction"])
    values["state"] = OfferState(values["state"])
    values["scanned"] = bool(values["scanned"])
    return Offer(**values)


def _work_from_row(row: Row) -> WorkUnit:
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
        waits_for=row["waits_for"],
    )


def _session_from_row(row: Row) -> Session:
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
        language=row["language"],
    )


class _Concern:
    """One family of tables, on the store's shared database."""

    def __init__(self, db: Database) -> None:
        self._db = db


class Values(_Concern):
    """Small persisted settings by key (the sync position, the avatar's hash, ...)."""

    async def get_value(self, key: str) -> str | None:
        """A small persisted setting, such as the sync position."""
        value = await self._db.fetchval("SELECT value FROM kv WHERE key = ?", key)
        return None if value is None else str(value)

    async def set_value(self, key: str, value: str) -> None:
        """Persist a small setting."""
        await self._db.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            key, value,
        )

    async def setdefault_value(self, key: str, value: str) -> str:
        """The setting ``key``; set to ``value`` first if it has none (the first writer wins)."""
        await self._db.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", key, value)
        stored = await self.get_value(key)
        assert stored is not None
        return stored

    async def delete_value(self, key: str) -> None:
        """Forget the setting ``key`` (nothing if it has none)."""
        await self._db.execute("DELETE FROM kv WHERE key = ?", key)


class Sessions(_Concern):
    """Sessions: a customer room paired with an agent room, and their retention."""

    async def create_session(
        self, customer_room: str, customer_id: str, customer_name: str
    ) -> tuple[Session, bool]:
        """Open a session for ``customer_room`` unless one is live; returns (session, created)."""
        db = self._db
        async with db.transaction():
            await db.serialize(f"session-of-room:{customer_room}")
            row = await db.fetchrow(
                "SELECT * FROM sessions WHERE customer_room = ? AND state != 'closed'",
                customer_room,
            )
            if row is not None:
                return _session_from_row(row), False
            row = await db.fetchrow(
                "INSERT INTO sessions(customer_room, customer_id, customer_name, state, "
                "created_at) VALUES (?, ?, ?, 'opening', ?) RETURNING *",
                customer_room, customer_id, customer_name, time.time(),
            )
        assert row is not None
        return _session_from_row(row), True

    async def attach_agent_room(self, session_id: int, agent_room: str) -> Session:
        """Pair the session with its agent room and mark it open."""
        await self._db.execute(
            "UPDATE sessions SET agent_room = ?, state = 'open' WHERE id = ? AND state = 'opening'",
            agent_room, session_id,
        )
        return await self.get_session(session_id)

    async def known_rooms(self) -> set[str]:
        """Every room of every session in the store: customer and agent rooms."""
        rows = await self._db.fetch("SELECT customer_room, agent_room FROM sessions")
        return {room for row in rows for room in (row["customer_room"], row["agent_room"])
                if room is not None}

    async def rename_customer(self, session_id: int, name: str) -> Session:
        """Record the customer's display name (looked up after the session was opened)."""
        await self._db.execute("UPDATE sessions SET customer_name = ? WHERE id = ?",
                               name, session_id)
        return await self.get_session(session_id)

    async def set_language(self, session_id: int, language: str) -> Session:
        """Remember the language a customer chose for their chat (a code, never text)."""
        await self._db.execute("UPDATE sessions SET language = ? WHERE id = ?",
                               language, session_id)
        return await self.get_session(session_id)

    async def close_session(self, session_id: int, reason: str) -> bool:
        """Close an open session; False when it was already closed."""
        changed = await self._db.execute(
            "UPDATE sessions SET state = 'closed', closed_at = ?, close_reason = ? "
            "WHERE id = ? AND state != 'closed'",
            time.time(), reason, session_id,
        )
        return changed == 1

    async def get_session(self, session_id: int) -> Session:
        """The session with this id (it must exist)."""
        row = await self._db.fetchrow("SELECT * FROM sessions WHERE id = ?", session_id)
        if row is None:
            raise KeyError(session_id)
        return _session_from_row(row)

    async def session_for_room(self, room_id: str) -> tuple[Session, Side] | None:
        """The session a room belongs to, and which side it is, if any.

        Runs for every event: one lookup per side, each on its own index (an ``OR`` with
        ``ORDER BY id`` made PostgreSQL walk the primary key instead).
        """
        row = await self._db.fetchrow(
            "SELECT * FROM sessions WHERE customer_room = ? ORDER BY id DESC LIMIT 1", room_id
        )
        if row is not None:
            return _session_from_row(row), Side.CUSTOMER
        row = await self._db.fetchrow("SELECT * FROM sessions WHERE agent_room = ?", room_id)
        if row is None:
            return None
        return _session_from_row(row), Side.AGENT

    async def sessions_for_rooms(self, room_ids: Sequence[str],
                                 chunk: int = 500) -> dict[str, tuple[Session, Side]]:
        """:meth:`session_for_room` for many rooms at once (a few queries, not one a room)."""
        found: dict[str, tuple[Session, Side]] = {}
        for start in range(0, len(room_ids), chunk):
            part = list(room_ids[start:start + chunk])
            marks = ", ".join("?" for _ in part)
            # Oldest first: a customer room's newest session is the one that counts.
            rows = await self._db.fetch(
                f"SELECT * FROM sessions WHERE customer_room IN ({marks}) "
                f"OR agent_room IN ({marks}) ORDER BY id", *part, *part,
            )
            for row in rows:
                session = _session_from_row(row)
                if session.customer_room in part:
                    found[session.customer_room] = (session, Side.CUSTOMER)
                if session.agent_room is not None and session.agent_room in part:
                    found[session.agent_room] = (session, Side.AGENT)
        return found

    async def sessions(self, state: SessionState | None = None) -> list[Session]:
        """All sessions, or those in one state, oldest first."""
        if state is None:
            rows = await self._db.fetch("SELECT * FROM sessions ORDER BY id")
        else:
            rows = await self._db.fetch(
                "SELECT * FROM sessions WHERE state = ? ORDER BY id", state.value
            )
        return [_session_from_row(row) for row in rows]

    async def purge_closed_sessions(self, closed_before: float) -> int:
        """Delete every record of sessions closed before ``closed_before``; returns how many."""
        db = self._db
        async with db.transaction():
            ids = [row["id"] for row in await db.fetch(
                "SELECT id FROM sessions WHERE state = 'closed' AND closed_at < ?",
                closed_before,
            )]
            for session_id in ids:
                await db.execute(
                    "DELETE FROM offer_transitions WHERE offer_id IN "
                    "(SELECT id FROM offers WHERE session_id = ?)", session_id,
                )
                await db.execute(
                    "DELETE FROM work WHERE lane = ? OR lane IN "
                    "(SELECT 'offer:' || id FROM offers WHERE session_id = ?)",
                    session_lane(session_id), session_id,
                )
                await db.execute("DELETE FROM offers WHERE session_id = ?", session_id)
                await db.execute("DELETE FROM panels WHERE session_id = ?", session_id)
                await db.execute("DELETE FROM sessions WHERE id = ?", session_id)
        return len(ids)


class Offers(_Concern):
    """Offers, their transition log (the attachment log), and whether each state is settled."""

    async def create_offer(
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
        db = self._db
        async with db.transaction():
            # The chat's next number is read and taken in one step.
            await db.serialize(f"offers-of-session:{session_id}")
            created = await db.execute(
                "INSERT INTO offers(session_id, direction, sender, sender_name, "
                "source_room, source_event_id, source_content, msgtype, filename, "
                "declared_mimetype, declared_size, state, created_at, updated_at, number) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "(SELECT COALESCE(MAX(number), 0) + 1 FROM offers WHERE session_id = ?)) "
                "ON CONFLICT(source_event_id) DO NOTHING",
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
            ) == 1
            row = await db.fetchrow(
                "SELECT * FROM offers WHERE source_event_id = ?", source_event_id
            )
            assert row is not None
            if created:
                await db.execute(
                    "INSERT INTO offer_transitions(offer_id, state, at, actor, reason) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    row["id"], OfferState.INSPECTING.value, now, sender,
                )
        return _offer_from_row(row), created

    async def get_offer(self, offer_id: int) -> Offer | None:
        """The offer with this id, if any."""
        row = await self._db.fetchrow("SELECT * FROM offers WHERE id = ?", offer_id)
        return None if row is None else _offer_from_row(row)

    async def offer_by_number(self, session_id: int, number: int) -> Offer | None:
        """The offer a chat calls #``number`` (numbers count per session from 1)."""
        row = await self._db.fetchrow(
            "SELECT * FROM offers WHERE session_id = ? AND number = ?", session_id, number
        )
        return None if row is None else _offer_from_row(row)

    async def source_content(self, offer_id: int) -> str:
        """The JSON content of the upload event the offer was made from."""
        return str(await self._db.fetchval(
            "SELECT source_content FROM offers WHERE id = ?", offer_id
        ))

    async def offer_by_source_event(self, event_id: str) -> Offer | None:
        """The offer made from an upload event."""
        row = await self._db.fetchrow(
            "SELECT * FROM offers WHERE source_event_id = ?", event_id
        )
        return None if row is None else _offer_from_row(row)

    async def offer_by_offer_event(self, room_id: str, event_id: str) -> Offer | None:
        """The offer whose offer message is ``event_id`` in ``room_id``."""
        row = await self._db.fetchrow(
            "SELECT * FROM offers WHERE offer_event_id = ? AND offer_room = ?", event_id, room_id
        )
        return None if row is None else _offer_from_row(row)

    async def offers_in_states(self, states: Sequence[OfferState]) -> list[Offer]:
        """Offers currently in any of ``states``, oldest first."""
        marks = ", ".join("?" for _ in states)
        rows = await self._db.fetch(
            f"SELECT * FROM offers WHERE state IN ({marks}) ORDER BY id",
            *[s.value for s in states],
        )
        return [_offer_from_row(row) for row in rows]

    async def undelivered_accepted(self) -> list[Offer]:
        """Accepted offers whose delivery has not been recorded yet."""
        rows = await self._db.fetch(
            "SELECT * FROM offers WHERE state = 'accepted' AND delivery_event_id IS NULL "
            "ORDER BY id"
        )
        return [_offer_from_row(row) for row in rows]

    async def session_offers(self, session_id: int) -> list[Offer]:
        """Every offer of one session, oldest first."""
        rows = await self._db.fetch(
            "SELECT * FROM offers WHERE session_id = ? ORDER BY id", session_id
        )
        return [_offer_from_row(row) for row in rows]

    async def transition(
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
        unknown = set(changes) - set(_OFFER_FIELDS)
        if unknown:
            raise ValueError(f"unknown offer fields: {sorted(unknown)}")
        now = time.time()
        assignments = {"state": target.value, "updated_at": now, **changes}
        if reason is not None:
            assignments["reason"] = reason
        if actor is not None and target in (OfferState.ACCEPTED, OfferState.DECLINED):
            assignments["decided_by"] = actor
            assignments["decided_at"] = now
        columns = ", ".join(f"{name} = ?" for name in assignments)
        marks = ", ".join("?" for _ in sources)
        db = self._db
        async with db.transaction():
            row = await db.fetchrow(
                f"UPDATE offers SET {columns} WHERE id = ? AND state IN ({marks}) RETURNING *",
                *assignments.values(), offer_id, *sources,
            )
            if row is None:
                return None
            await db.execute(
                "INSERT INTO offer_transitions(offer_id, state, at, actor, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                offer_id, target.value, now, actor, reason,
            )
        return _offer_from_row(row)

    async def update_offer(self, offer_id: int, **changes: Any) -> Offer:
        """Record progress that is not a state change (event ids, facts, temp path)."""
        unknown = set(changes) - set(_OFFER_FIELDS)
        if unknown:
            raise ValueError(f"unknown offer fields: {sorted(unknown)}")
        columns = ", ".join(f"{name} = ?" for name in changes)
        row = await self._db.fetchrow(
            f"UPDATE offers SET {columns}, updated_at = ? WHERE id = ? RETURNING *",
            *changes.values(), time.time(), offer_id,
        )
        assert row is not None
        return _offer_from_row(row)

    async def attachment_log(
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
        rows = await self._db.fetch(f"SELECT * FROM offers {where} ORDER BY id", *params)
        # Every transition of those offers in one query, grouped by offer here.
        steps: dict[int, list[tuple[str, float, str | None, str | None]]] = {}
        transitions = await self._db.fetch(
            "SELECT offer_id, state, at, actor, reason FROM offer_transitions "
            f"WHERE offer_id IN (SELECT id FROM offers {where}) ORDER BY id",
            *params,
        )
        for step in transitions:
            steps.setdefault(step["offer_id"], []).append(
                (step["state"], step["at"], step["actor"], step["reason"])
            )
        return [LogEntry(offer=_offer_from_row(row), transitions=tuple(steps.get(row["id"], ())))
                for row in rows]

    async def unsettled_offers(self, session_id: int | None = None) -> list[Offer]:
        """Offers (of one session) whose current state still has side effects to carry out."""
        unsettled = "(settled_state IS NULL OR settled_state != state)"
        if session_id is None:
            rows = await self._db.fetch(f"SELECT * FROM offers WHERE {unsettled} ORDER BY id")
        else:
            rows = await self._db.fetch(
                f"SELECT * FROM offers WHERE session_id = ? AND {unsettled} ORDER BY id",
                session_id,
            )
        return [_offer_from_row(row) for row in rows]

    async def mark_settled(self, offer_id: int, state: OfferState) -> None:
        """Record that every side effect of ``state`` has been carried out."""
        await self._db.execute(
            "UPDATE offers SET settled_state = ? WHERE id = ? AND state = ?",
            state.value, offer_id, state.value,
        )

    async def is_settled(self, offer_id: int) -> bool:
        """Whether the offer's current state has had all its side effects."""
        done = await self._db.fetchval(
            "SELECT settled_state = state AS done FROM offers WHERE id = ?", offer_id
        )
        return bool(done)


class Work(_Concern):
    """Durable work units: one per side effect, with its lane and retry schedule."""

    async def submit_work(
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
        db = self._db
        async with db.transaction():
            await db.execute(
                "INSERT INTO work(kind, key, lane, payload, next_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "generation = work.generation + 1, waits_for = NULL, next_at = CASE "
                "WHEN excluded.next_at < work.next_at THEN excluded.next_at "
                "ELSE work.next_at END",
                kind, key, lane, json.dumps(payload), at, at,
            )
            if handled_event is not None:
                await db.execute(
                    "INSERT INTO handled_events(event_id, handled_at) VALUES (?, ?) "
                    "ON CONFLICT(event_id) DO NOTHING",
                    handled_event, at,
                )

    async def due_work(self, now: float, limit: int) -> list[WorkUnit]:
        """Units due by ``now`` that may run: the oldest of each lane, and every lane-less one."""
        rows = await self._db.fetch(
            f"SELECT * FROM work AS w WHERE next_at <= ? AND {_MAY_RUN} "
            "ORDER BY next_at, id LIMIT ?",
            now, limit,
        )
        return [_work_from_row(row) for row in rows]

    async def lane_head(self, lane: str) -> WorkUnit | None:
        """The oldest unit of a lane, due or not."""
        row = await self._db.fetchrow(
            "SELECT * FROM work WHERE lane = ? ORDER BY id LIMIT 1", lane
        )
        return None if row is None else _work_from_row(row)

    async def next_work_at(self) -> float | None:
        """When the next unit that may run (a lane's oldest, or lane-less) falls due."""
        at = await self._db.fetchval(
            f"SELECT MIN(next_at) AS at FROM work AS w WHERE {_MAY_RUN}"
        )
        return None if at is None else float(at)

    async def finish_work(self, unit: WorkUnit) -> bool:
        """Remove a unit that is done, unless more was asked of it while it ran (then False).

        Either way its run is over: the units waiting for it are woken.
        """
        db = self._db
        async with db.transaction():
            done = await db.execute(
                "DELETE FROM work WHERE id = ? AND generation = ?", unit.id, unit.generation
            ) == 1
            await self.wake_work(unit.key)
        return done

    async def drop_work(self, unit: WorkUnit) -> None:
        """Remove a unit whatever was asked of it since (it can never succeed)."""
        db = self._db
        async with db.transaction():
            await db.execute("DELETE FROM work WHERE id = ?", unit.id)
            await self.wake_work(unit.key)

    async def leave_lane(self, unit: WorkUnit) -> None:
        """Take a unit out of its lane: the units behind it no longer wait for it."""
        await self._db.execute("UPDATE work SET lane = NULL WHERE id = ?", unit.id)

    async def wake_work(self, key: str, now: float | None = None) -> int:
        """Make the units waiting for ``key`` due now; returns how many."""
        return await self._db.execute(
            "UPDATE work SET next_at = ?, waits_for = NULL WHERE waits_for = ?",
            time.time() if now is None else now, key,
        )

    async def wait_work(self, unit: WorkUnit, until: float, why: str,
                        waits_for: str | None) -> None:
        """Park a unit until ``waits_for`` finishes (or ``until`` at the latest).

        Not a failure: its attempts stay as they are. A unit asked for again while it ran is
        due at once instead.
        """
        await self._db.execute(
            "UPDATE work SET last_error = ?, "
            "waits_for = CASE WHEN generation = ? THEN ? ELSE NULL END, "
            "next_at = CASE WHEN generation = ? THEN ? WHEN next_at < ? THEN next_at "
            "ELSE ? END WHERE id = ?",
            why, unit.generation, waits_for, unit.generation, until, until, until, unit.id,
        )

    async def postpone_work(self, unit: WorkUnit, next_at: float, error: str) -> None:
        """Record a failed attempt and when to try again (at once if re-asked meanwhile)."""
        await self._db.execute(
            "UPDATE work SET attempts = attempts + 1, last_error = ?, "
            "next_at = CASE WHEN generation = ? THEN ? WHEN next_at < ? THEN next_at "
            "ELSE ? END WHERE id = ?",
            error, unit.generation, next_at, next_at, next_at, unit.id,
        )

    async def hurry_work(self, now: float, kind: str | None = None) -> int:
        """Make waiting units (of one kind, or all) due now; returns how many."""
        if kind is None:
            return await self._db.execute("UPDATE work SET next_at = ? WHERE next_at > ?",
                                          now, now)
        return await self._db.execute(
            "UPDATE work SET next_at = ? WHERE next_at > ? AND kind = ?", now, now, kind
        )

    async def work_units(self, kind: str | None = None) -> list[WorkUnit]:
        """Every waiting unit (of one kind), oldest first."""
        if kind is None:
            rows = await self._db.fetch("SELECT * FROM work ORDER BY id")
        else:
            rows = await self._db.fetch("SELECT * FROM work WHERE kind = ? ORDER BY id", kind)
        return [_work_from_row(row) for row in rows]

    async def work_backlog(self) -> tuple[int, float | None]:
        """How many units wait, and when the oldest of them was submitted."""
        row = await self._db.fetchrow(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM work"
        )
        assert row is not None
        return int(row["n"]), (None if row["oldest"] is None else float(row["oldest"]))


class Panels(_Concern):
    """The live activity panel of each session room."""

    async def bump_panel(self, session_id: int, room_id: str) -> int:
        """Record that the room's panel has something new to show; returns the new version."""
        version = await self._db.fetchval(
            "INSERT INTO panels(room_id, session_id, version) VALUES (?, ?, 1) "
            "ON CONFLICT(room_id) DO UPDATE SET version = panels.version + 1 RETURNING version",
            room_id, session_id,
        )
        return int(version)

    async def get_panel(self, room_id: str) -> Panel | None:
        """The panel of a room, if it has one."""
        row = await self._db.fetchrow("SELECT * FROM panels WHERE room_id = ?", room_id)
        return None if row is None else _panel_from_row(row)

    async def update_panel(self, room_id: str, **changes: Any) -> None:
        """Record the panel's message, that it is pinned, or the version it now shows."""
        allowed = {"event_id", "pin", "shown_version"}
        if set(changes) - allowed:
            raise ValueError(f"unknown panel fields: {sorted(set(changes) - allowed)}")
        columns = ", ".join(f"{name} = ?" for name in changes)
        await self._db.execute(f"UPDATE panels SET {columns} WHERE room_id = ?",
                               *changes.values(), room_id)

    async def panels_behind(self) -> list[Panel]:
        """Panels whose message does not show the latest change yet (resumed at start)."""
        rows = await self._db.fetch(
            "SELECT * FROM panels WHERE shown_version < version ORDER BY room_id"
        )
        return [_panel_from_row(row) for row in rows]


class Outbox(_Concern):
    """Inbound events already handled, and what each outgoing transaction id produced."""

    async def is_handled(self, event_id: str) -> bool:
        """Whether an inbound event was already handled (so a replayed batch skips it)."""
        row = await self._db.fetchrow(
            "SELECT 1 FROM handled_events WHERE event_id = ?", event_id
        )
        return row is not None

    async def mark_handled(self, event_id: str) -> None:
        """Remember that an inbound event has been handled."""
        await self._db.execute(
            "INSERT INTO handled_events(event_id, handled_at) VALUES (?, ?) "
            "ON CONFLICT(event_id) DO NOTHING",
            event_id, time.time(),
        )

    async def sent_event(self, txn_id: str) -> str | None:
        """The event id a transaction id already produced, if it was sent before."""
        row = await self._db.fetchrow("SELECT event_id FROM outbox WHERE txn_id = ?", txn_id)
        return None if row is None else row["event_id"]

    async def sent_txn(self, room_id: str, event_id: str) -> str | None:
        """The transaction id that produced ``event_id`` in ``room_id``, if the bot sent it."""
        txn = await self._db.fetchval(
            "SELECT txn_id FROM outbox WHERE event_id = ? AND room_id = ?", event_id, room_id
        )
        return None if txn is None else str(txn)

    async def sent_in_room(self, txn_id: str) -> tuple[str, str] | None:
        """(room id, event id) that a transaction id produced, if it was sent."""
        row = await self._db.fetchrow(
            "SELECT room_id, event_id FROM outbox WHERE txn_id = ? AND event_id IS NOT NULL",
            txn_id,
        )
        return None if row is None else (str(row["room_id"]), str(row["event_id"]))

    async def record_sent(self, txn_id: str, room_id: str, event_id: str) -> None:
        """Remember what a transaction id produced, beyond the homeserver's 24 h memory."""
        now = time.time()
        await self._db.execute(
            "INSERT INTO outbox(txn_id, room_id, event_id, created_at, sent_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(txn_id) "
            "DO UPDATE SET event_id = excluded.event_id, sent_at = excluded.sent_at",
            txn_id, room_id, event_id, now, now,
        )

    async def prune_delivery_records(self, older_than: float,
                                     batch: int = 5000) -> tuple[int, int]:
        """Forget handled events and sent transactions older than ``older_than``.

        An outbox row is kept while its owner (the offer or session named in its transaction
        id) still has work to do, since a retry of that work must find what was already sent.
        Returns (handled events removed, outbox rows removed).
        """
        db = self._db
        handled = await db.execute("DELETE FROM handled_events WHERE handled_at < ?",
                                   older_than)
        removed = 0
        after = ""  # pages by txn id, so rows that must be kept never hide the others
        while True:
            rows = await db.fetch(
                "SELECT txn_id FROM outbox WHERE created_at < ? AND txn_id > ? "
                "ORDER BY txn_id LIMIT ?", older_than, after, batch
            )
            if not rows:
                return handled, removed
            after = rows[-1]["txn_id"]
            done: list[str] = []
            for row in rows:
                owner = outbox_owner(row["txn_id"])
                if owner is None or not await self._owner_busy(*owner):
                    done.append(row["txn_id"])
            for start in range(0, len(done), 500):
                chunk = done[start:start + 500]
                await db.execute(
                    f"DELETE FROM outbox WHERE txn_id IN ({', '.join('?' for _ in chunk)})",
                    *chunk,
                )
            removed += len(done)

    async def _owner_busy(self, kind: str, owner_id: int) -> bool:
        if kind == "offer":
            busy = await self._db.fetchval(
                "SELECT settled_state IS NULL OR settled_state != state AS busy FROM offers "
                "WHERE id = ?", owner_id
            )
        else:
            busy = await self._db.fetchval(
                "SELECT state != 'closed' AS busy FROM sessions WHERE id = ?", owner_id
            )
        return bool(busy)


class Store:
    """Parcel's durable state, by concern. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.values = Values(db)
        self.sessions = Sessions(db)
        self.offers = Offers(db)
        self.work = Work(db)
        self.panels = Panels(db)
        self.outbox = Outbox(db)

    @classmethod
    async def open(cls, database: str | Path | None = None, data_dir: Path | None = None, *,
                   password: str | None = None, upgrade: bool = True,
                   idle_transaction_limit: float | None = None) -> Store:
        """Open (creating and migrating as needed) the store a ``database`` setting names.

        None: the SQLite file ``data_dir/parcel.db``; a path: that SQLite file; a
        ``postgresql://`` URL: that database (``password`` wins over the URL's). An unreachable
        PostgreSQL raises :class:`~bot.errors.TransientError`; a refused login or a missing
        database :class:`~bot.errors.PermanentError`; a newer schema :class:`SchemaTooNew`.
        With ``upgrade=False`` (tools that only read, beside a running bot) the schema is
        left as it is, and one that is not the current version raises :class:`SchemaMismatch`.
        ``idle_transaction_limit``: see :meth:`~bot.store.db.PostgresDatabase.open` (the bot
        sets it; tools whose transactions wait on other work do not).
        """
        db = await connect(database, data_dir, password, idle_transaction_limit)
        try:
            if upgrade:
                await migrate(db)
            else:
                await check_version(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        """Close the database connections."""
        await self.db.close()

    def transaction(self) -> Any:
        """``async with store.transaction():`` — the concerns' writes inside commit as one."""
        return self.db.transaction()

    def write_as(self, lease: str, token: int | None) -> None:
        """From now on write as term ``token`` of the leader lease ``lease``; ``None``: as
        nobody (this process no longer leads: every write is refused).

        On PostgreSQL a write whose term is not the lease's current one fails with
        :class:`~bot.leader.NotLeader` (``bot/store/db.py``); until this is first called the
        store is not fenced (tools, tests). SQLite is not fenced.
        """
        self.db.write_as(lease, token)

    def term_setting(self) -> str:
        """The ``parcel.term`` this process's writes carry ('' when not fenced): what nio's
        crypto store, on its own connection, carries too (``bot/matrix/pgstore.py``)."""
        return self.db.term_setting()


def _panel_from_row(row: Row) -> Panel:
    return Panel(row["room_id"], row["session_id"], row["event_id"], row["pin"],
                 row["version"], row["shown_version"])


_OWNED_TXN = re.compile(r"^(offer|session)-(\d+)-")


def outbox_owner(txn_id: str) -> tuple[str, int] | None:
    """Which offer or session a transaction id belongs to (``offer-12-card`` → offer 12)."""
    match = _OWNED_TXN.match(txn_id)
    return None if match is None else (match.group(1), int(match.group(2)))
