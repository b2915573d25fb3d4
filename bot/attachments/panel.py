"""The live activity panel: one pinned bot message per room listing the chat's attachments.

Every change to a session's offers bumps the version of both rooms' panels in the store and
submits one durable work unit per room (:meth:`PanelService.changed`, a few quick store
writes). Submitting again while a room's unit waits or runs only asks it to run once more, so a
burst of changes becomes one edit; a unit that finds its panel behind also waits
:data:`COALESCE_SECONDS` first, for the rest of the burst, and never edits a room's panel
sooner than a second after its last edit nor while an offer's card or delivered file is on its
way in that room (:mod:`bot.attachments.pacing`): the panel is bookkeeping, the card and the
file are what people wait for. It renders the panel from the
store and posts it (the first time, then pins it) or edits it in place (``m.replace``), and
records the version shown. A room where the bot may not pin keeps a live, unpinned panel;
that is logged once and remembered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from nio import AsyncClient, RoomGetEventResponse, RoomGetStateResponse, RoomPutStateResponse

from bot import render
from bot.attachments.model import Direction
from bot.attachments.offers import direction_from
from bot.attachments.pacing import HOLD_AT_MOST, RoomHolds, panel_delay
from bot.errors import PermanentError, Waiting
from bot.i18n import ENGLISH, Translator
from bot.matrix.client import Sender, call
from bot.matrix.rooms import RoomDirectory
from bot.sessions.service import bot_removed_from
from bot.store import Panel, Session, Side, Store, WorkUnit
from bot.work import Scheduler

# How soon a panel parked behind a held room looks again (a card is out within a fraction of
# a second; each look is one store write).
HOLD_LOOK_AGAIN = 0.25

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 1.0
PIN_REFUSED = frozenset({"M_FORBIDDEN"})
# Our pins events name the panel they pin, so a repeat can tell its own earlier write.
PIN_MARKER = "io.parcel.panel"
PIN_WRITES = 3  # a write and, when the pins changed under it, merges written again
PIN_HISTORY = 5  # pins events looked back through for an earlier write of ours


def _pinned_list(content: object) -> list[str]:
    """The event ids a pins event's content lists (whatever else it holds)."""
    found = content.get("pinned") if isinstance(content, dict) else None
    return [e for e in found if isinstance(e, str)] if isinstance(found, list) else []


def _reachable_rooms(session: Session) -> list[str]:
    """The session's rooms the bot is still in (it may have been removed from one)."""
    return [room_id for side in (Side.CUSTOMER, Side.AGENT)
            if (room_id := session.room_of(side)) is not None
            and not bot_removed_from(session, side)]


def viewpoint_of(session: Session, room_id: str) -> Direction:
    """The direction a room calls "sent": its own side's files."""
    return direction_from(Side.CUSTOMER if room_id == session.customer_room else Side.AGENT)


class PanelService:
    """Keeps each session room's activity panel in step with the store."""

    def __init__(self, store: Store, client: AsyncClient, sender: Sender, rooms: RoomDirectory,
                 work: Scheduler, coalesce: float = COALESCE_SECONDS,
                 reader: Callable[[Session, Side], Translator] | None = None,
                 holds: RoomHolds | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        # Rooms whose card or delivery is on its way (held by the offers); shared with them.
        self.holds = holds or RoomHolds()
        self._clock = clock
        # When each room's panel was last edited by this process (pacing; in memory, as what
        # is owed is the version in the store).
        self._last_edit: dict[str, float] = {}
        # Each room's panel in its readers' language (bot.sessions.language.reader).
        self._reader = reader or (lambda session, side: ENGLISH)
        self._client = client
        self._sender = sender
        self._rooms = rooms
        self._work = work
        self._coalesce = coalesce
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        work.register("panel", self._run_unit, self._give_up)

    async def changed(self, session_id: int) -> None:
        """The session's attachments changed: both rooms' panels are owed an update."""
        session = await self._store.sessions.get_session(session_id)
        for room_id in _reachable_rooms(session):
            await self._store.panels.bump_panel(session_id, room_id)
            await self._submit(room_id)

    async def resume(self) -> None:
        """Queue the panel updates a stop left behind (kept in the store, not in the work)."""
        for panel in await self._store.panels.panels_behind():
            await self._submit(panel.room_id)

    async def flush(self, session: Session) -> None:
        """Bring both rooms' panels up to date now (before the bot leaves a closed chat)."""
        for room_id in _reachable_rooms(session):
            await self._update(room_id)

    async def _submit(self, room_id: str) -> None:
        await self._work.submit("panel", f"panel:{room_id}", {"room": room_id},
                                lane=f"panel:{room_id}")

    async def _run_unit(self, unit: WorkUnit) -> None:
        room_id = unit.payload["room"]
        panel = await self._store.panels.get_panel(room_id)
        if panel is None or panel.shown_version >= panel.version:
            return  # an earlier run already showed this change
        # Let the rest of a burst arrive (everything bumped meanwhile is one edit), and keep
        # to one edit per room per COALESCE_SECONDS.
        await asyncio.sleep(panel_delay(self._clock(), self._last_edit.get(room_id),
                                        self._coalesce, self._coalesce))
        # Never in front of a card or a delivered file in this room. While the room is held
        # the unit steps aside (parked, so that its slot in the scheduler is free for the
        # offer's own work, which releases the hold) and looks again shortly; a room whose
        # holds keep coming (a stream of offers) still gets its panel after HOLD_AT_MOST.
        held_until = self.holds.held(room_id)
        if held_until is not None and time.time() - unit.created_at < HOLD_AT_MOST:
            raise Waiting(f"room {room_id} has a card or a delivered file on its way",
                          at_most=max(0.05, min(HOLD_LOOK_AGAIN, held_until - self._clock())))
        await self._update(room_id)

    async def _give_up(self, unit: WorkUnit, error: PermanentError) -> None:
        """The homeserver refuses the panel for good (removed from the room, say)."""
        logger.warning("room %s: the activity panel cannot be updated: %s",
                       unit.payload["room"], error.reason)

    async def _update(self, room_id: str) -> None:
        """Post or edit the room's panel if it is behind (one update at a time per room)."""
        async with self._locks[room_id]:
            panel = await self._store.panels.get_panel(room_id)
            if panel is not None and panel.shown_version < panel.version:
                try:
                    await self._show(panel)
                finally:
                    self._last_edit[room_id] = self._clock()

    async def _show(self, panel: Panel) -> None:
        session = await self._store.sessions.get_session(panel.session_id)
        version = panel.version
        offers = await self._store.offers.session_offers(session.id)
        side = Side.CUSTOMER if panel.room_id == session.customer_room else Side.AGENT
        content = render.activity_panel(offers, viewpoint_of(session, panel.room_id),
                                        t=self._reader(session, side)).content()
        await self._rooms.ready(panel.room_id)
        if panel.event_id is None:
            event_id = await self._sender.send(
                panel.room_id, content, txn_id=f"session-{session.id}-panel-{panel.room_id}"
            )
            await self._store.panels.update_panel(panel.room_id, event_id=event_id)
            panel = Panel(panel.room_id, panel.session_id, event_id, panel.pin, panel.version,
                          panel.shown_version)
        else:
            txn_id = f"session-{session.id}-panel-{panel.room_id}-v{version}"
            await self._sender.edit(panel.room_id, panel.event_id, content, txn_id=txn_id)
        await self._store.panels.update_panel(panel.room_id, shown_version=version)
        if panel.pin == "pending":
            await self._pin(panel)

    async def _pin(self, panel: Panel) -> None:
        """Add the panel to the room's pinned events, keeping whatever else is pinned.

        Matrix has no compare-and-set for state, so the read-modify-write is checked after:
        the pins event we write names the panel (:data:`PIN_MARKER`), and the homeserver says
        which pins event ours replaced; if that is not the one we read, someone pinned or
        unpinned in between and our write dropped it, so their pins are merged in and written
        again. The attempt is recorded before the write: a repeat (a crash, a lost lease, a
        lost answer) that finds the panel unpinned looks whether our write was applied and
        someone unpinned it since, and then leaves their decision alone.
        """
        assert panel.event_id is not None
        attempt = f"panel-pin-attempt:{panel.room_id}"
        if await self._store.values.get_value(attempt) == panel.event_id:
            if await self._unpinned_since(panel):
                logger.info("room %s: activity panel %s was pinned and unpinned since; leaving "
                            "it unpinned", panel.room_id, panel.event_id)
                await self._pinned(panel, attempt)
                return
        state_id, pinned = await self._pins(panel.room_id)
        if panel.event_id in pinned:
            await self._pinned(panel, attempt)
            return
        await self._store.values.set_value(attempt, panel.event_id)
        for _ in range(PIN_WRITES):
            try:
                written = await call("pinning the activity panel", self._client.room_put_state(
                    panel.room_id, "m.room.pinned_events",
                    {"pinned": [*pinned, panel.event_id], PIN_MARKER: panel.event_id}),
                    RoomPutStateResponse)
            except PermanentError as exc:
                if exc.code not in PIN_REFUSED:
                    raise
                logger.warning("room %s: the bot may not pin messages (%s); the activity "
                               "panel stays live but unpinned, and !attachments works",
                               panel.room_id, exc.reason)
                await self._store.panels.update_panel(panel.room_id, pin="refused")
                await self._store.values.delete_value(attempt)
                return
            replaced = (await self._event(panel.room_id, written.event_id)).get("unsigned", {})
            replaced_id = replaced.get("replaces_state")
            if replaced_id == state_id:
                break
            # Someone changed the pins between our read and our write: keep theirs too.
            theirs = await self._event(panel.room_id, replaced_id) if replaced_id else {}
            pinned = [e for e in _pinned_list(theirs.get("content")) if e != panel.event_id]
            state_id = written.event_id
            logger.info("room %s: the pins changed while the panel was pinned; merging",
                        panel.room_id)
        await self._pinned(panel, attempt)
        logger.info("room %s: activity panel %s pinned", panel.room_id, panel.event_id)

    async def _pinned(self, panel: Panel, attempt: str) -> None:
        await self._store.panels.update_panel(panel.room_id, pin="pinned")
        await self._store.values.delete_value(attempt)

    async def _pins(self, room_id: str) -> tuple[str | None, list[str]]:
        """The room's pins event id (None: nothing ever pinned) and the events it pins."""
        try:
            current = await call("reading the pinned events",
                                 self._client.room_get_state(room_id), RoomGetStateResponse)
        except PermanentError as exc:
            if exc.code != "M_NOT_FOUND":
                raise
            return None, []
        for event in current.events:
            if event.get("type") == "m.room.pinned_events" and event.get("state_key") == "":
                return event.get("event_id"), _pinned_list(event.get("content"))
        return None, []

    async def _event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event of the room as the homeserver serves it (with ``unsigned``)."""
        response = await call(f"reading {event_id}",
                              self._client.room_get_event(room_id, event_id),
                              RoomGetEventResponse)
        source = response.event.source
        return source if isinstance(source, dict) else {}

    async def _unpinned_since(self, panel: Panel) -> bool:
        """Whether a write of ours that pinned ``panel`` was applied and later undone: a pins
        event of ours naming it among the last few pins events of the room."""
        state_id, pinned = await self._pins(panel.room_id)
        if panel.event_id in pinned:
            return False  # pinned: nothing was undone (the caller records it)
        event_id = state_id
        for _ in range(PIN_HISTORY):
            if not event_id:
                return False
            event = await self._event(panel.room_id, event_id)
            content = event.get("content")
            if (event.get("sender") == self._client.user_id and isinstance(content, dict)
                    and content.get(PIN_MARKER) == panel.event_id
                    and panel.event_id in _pinned_list(content)):
                return event_id != state_id
            event_id = event.get("unsigned", {}).get("replaces_state")
        return False
