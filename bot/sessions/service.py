"""Sessions: opening on invite, the ordered per-session work queue, the text relay, closing."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from nio import (
    Api,
    AsyncClient,
    JoinedRoomsResponse,
    JoinResponse,
    ProfileGetDisplayNameResponse,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomKickResponse,
    RoomLeaveResponse,
    RoomPreset,
    RoomPutStateResponse,
)

from bot import failpoints, render
from bot.attachments.text import strip_invisible
from bot.config import Config
from bot.errors import PermanentError, Waiting
from bot.i18n import Translator
from bot.matrix.client import Sender, call
from bot.matrix.roomkeys import forget_keys_of_left_rooms, forget_room_keys
from bot.matrix.rooms import RoomDirectory
from bot.metrics import Metrics
from bot.sessions.language import reader
from bot.sessions.naming import disambiguate
from bot.store import Session, SessionState, Side, Store, WorkUnit, session_lane
from bot.work import Scheduler

if TYPE_CHECKING:
    from bot.attachments.offers import OfferService
    from bot.attachments.panel import PanelService

logger = logging.getLogger(__name__)

# How often a send into a room that holds a stranger looks again (the kick is under way).
# A removal nobody announces (refused; they left while the bot was away) is looked at again
# this often; a removal the bot makes, or a leave it sees, wakes the waiting work at once.
STRANGER_RECHECK = 30.0
# The close reason when the bot was removed from one side's room (kicked, banned): nothing
# can be posted there any more, so the other side alone is told.
BOT_REMOVED = {Side.CUSTOMER: "bot_removed", Side.AGENT: "bot_removed_from_agents"}
# Close reasons after which nothing is posted in a side's room: nobody reads it any more, or
# the bot may not write there.
ROOM_GONE = {
    Side.CUSTOMER: frozenset({"customer_left", BOT_REMOVED[Side.CUSTOMER]}),
    Side.AGENT: frozenset({BOT_REMOVED[Side.AGENT]}),
}


def kick_key(room_id: str, user_id: str) -> str:
    """The key of the unit removing ``user_id`` from ``room_id`` (what the room's sends wait
    for; also woken when they leave by themselves)."""
    return f"kick:{room_id}:{user_id}"
# The reason pending offers expire with when their chat ends.
ENDED_REASON = "the chat ended"
# The agent room's creation content names its session ("<install id>:<session id>"), so a
# repeated creation finds the room instead of making a second one.
SESSION_MARKER = "io.parcel.session"
INSTALL_ID_KEY = "install_id"


def bot_removed_from(session: Session, side: Side) -> bool:
    """Whether the session ended because the bot was removed from ``side``'s room."""
    return session.close_reason == BOT_REMOVED[side]


def server_of(user_id: str) -> str:
    """The homeserver name part of a user id."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class SessionService:
    """Owns sessions: every action on one session runs in order, as durable work units."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: AsyncClient,
        sender: Sender,
        rooms: RoomDirectory,
        work: Scheduler,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._config = config
        self._store = store
        self._client = client
        self._sender = sender
        self._rooms = rooms
        self._work = work
        self.offers: OfferService | None = None  # set by the composition root
        work.register("open", self._run_open, self._open_failed)
        work.register("send", self._run_send, self._send_failed)
        work.register("close", self._run_close)
        work.register("leave", self._run_leave)
        work.register("kick", self._run_kick, self._kick_failed)
        work.register("refuse", self._run_refuse)
        sender.guard = self.guard_room
        self.panels: PanelService | None = None  # set by the composition root
        self._kicks_refused: set[tuple[str, str]] = set()  # (room, user) the bot may not kick
        self._inline: ContextVar[bool] = ContextVar(f"inline-sends-{id(self)}", default=False)

    @property
    def own_user_id(self) -> str:
        """The bot's user id."""
        return self._config.user_id

    def translator(self, session: Session, side: Side) -> Translator:
        """The language of the people in ``side``'s room (see :func:`language.reader`)."""
        return reader(self._config, session, side)

    def is_agent(self, user_id: str) -> bool:
        """Whether ``user_id`` is a configured agent (by id, never by name)."""
        return user_id in self._config.agents.users

    # -- naming ---------------------------------------------------------------------------

    def label(self, session: Session, side: Side, user_id: str) -> str:
        """How ``user_id`` (writing in ``side``'s room) is named toward the other side."""
        room_id = session.room_of(side) or session.customer_room
        name = self._rooms.display_name(room_id, user_id)
        others: dict[str, str] = {}
        for room in session.rooms():
            others.update(self._rooms.names_in(room))
        others.pop(self.own_user_id, None)
        agent_names = [
            self._rooms.display_name(session.agent_room, agent)
            for agent in self._config.agents.users
            if session.agent_room and agent != user_id
        ]
        is_agent = self.is_agent(user_id)
        shown = disambiguate(
            user_id, name, others, agent_names, self._config.agents.label, is_agent
        )
        if side is Side.AGENT:
            return render.agent_label(shown, self._config.agents.label)
        return shown

    # -- isolation ------------------------------------------------------------------------

    def strangers(self, session: Session) -> set[str]:
        """Members (joined or invited) of the session's agent room who are not agents."""
        if session.agent_room is None:
            return set()
        members = self._rooms.members(session.agent_room)
        return {m for m in members if m != self.own_user_id and not self.is_agent(m)}

    async def remove_stranger(self, session: Session, user_id: str,
                              handled_event: str | None = None) -> None:
        """Queue the removal of someone who is not an agent from the agent room."""
        assert session.agent_room is not None
        await self._work.submit(
            "kick", kick_key(session.agent_room, user_id),
            {"session": session.id, "room": session.agent_room, "user": user_id},
            handled_event=handled_event,
        )

    async def guard_room(self, room_id: str) -> None:
        """Refuse to send into an agent room while a stranger is in it (keys would go too)."""
        found = await self._store.sessions.session_for_room(room_id)
        if found is None or found[1] is not Side.AGENT:
            return
        session = found[0]
        strangers = self.strangers(session)
        if not strangers:
            return
        for user_id in strangers:
            if (room_id, user_id) not in self._kicks_refused:
                await self.remove_stranger(session, user_id)
        # Woken when the removal is done, or when they leave by themselves (the router wakes
        # the same key): the message goes at once, not at the next poll.
        first = sorted(strangers)[0]
        raise Waiting(
            f"the agent room holds {', '.join(sorted(strangers))}, who is not an agent; "
            "waiting until they are removed",
            key=kick_key(room_id, first), at_most=STRANGER_RECHECK,
        )

    async def _run_kick(self, unit: WorkUnit) -> None:
        room_id, user_id = unit.payload["room"], unit.payload["user"]
        if await self._membership(room_id, user_id) not in ("join", "invite", "knock"):
            self._forget_member(room_id, user_id)
            return  # gone already: the purpose of the kick is met
        logger.warning("session %s: removing %s (not an agent) from the agent room %s",
                       unit.payload["session"], user_id, room_id)
        await call(f"removing {user_id} from {room_id}",
                   self._client.room_kick(room_id, user_id,
                                          reason=self._config.translator(
                                              self._config.agents.language)._(
                                              "Only support agents may be in this room")),
                   RoomKickResponse)
        self._kicks_refused.discard((room_id, user_id))
        self._forget_member(room_id, user_id)

    def _forget_member(self, room_id: str, user_id: str) -> None:
        """Take a removed member out of nio's view of the room now: the messages waiting for
        the removal check that view, and the sync bringing the kick may come later."""
        room = self._client.rooms.get(room_id)
        if room is not None and user_id in room.users:
            room.remove_member(user_id)

    async def _kick_failed(self, unit: WorkUnit, error: PermanentError) -> None:
        """The bot may not remove them: what waits for the room keeps waiting (nothing may be
        sent while a stranger could read it) until they leave; said once, not every retry."""
        room_id, user_id = unit.payload["room"], unit.payload["user"]
        self._kicks_refused.add((room_id, user_id))
        logger.error("session %s: the bot may not remove %s from the agent room %s (%s); "
                     "nothing is sent there until they leave or an admin removes them",
                     unit.payload["session"], user_id, room_id, error.reason)

    async def _membership(self, room_id: str, user_id: str) -> str | None:
        """A user's membership of a room as the homeserver has it now."""
        try:
            state = await call(f"reading {user_id}'s membership of {room_id}",
                               self._client.room_get_state_event(room_id, "m.room.member",
                                                                 user_id),
                               RoomGetStateEventResponse)
        except PermanentError as exc:
            if exc.code == "M_NOT_FOUND":
                return None
            raise
        membership = state.content.get("membership") if isinstance(state.content, dict) else None
        return membership if isinstance(membership, str) else None

    # -- opening --------------------------------------------------------------------------

    async def on_invite(self, room_id: str, inviter: str) -> None:
        """A user invited the bot: open a session unless the invite should not open one."""
        found = await self._store.sessions.session_for_room(room_id)
        if found is not None:
            session, side = found
            if side is Side.AGENT or session.state is not SessionState.CLOSED:
                return  # one of our rooms already, or an invite seen again before the join
        if inviter == self.own_user_id:
            return
        if self.is_agent(inviter):
            logger.info("ignoring invite to %s from agent %s", room_id, inviter)
            await self._work.submit("leave", f"leave:{room_id}:invite", {"room": room_id})
            return
        allowed = self._config.allowed_servers
        if allowed and server_of(inviter) not in allowed:
            logger.info("refusing invite to %s from %s: server not allowed", room_id, inviter)
            await self._work.submit("refuse", f"refuse:{room_id}", {"room": room_id,
                                                               "inviter": inviter})
            return
        # The display name is looked up by the open unit: nothing here may wait on the network.
        session, created = await self._store.sessions.create_session(room_id, inviter,
                                                                     localpart(inviter))
        if created:
            self._metrics.session_opened()
            logger.info("session %d opened for %s in %s", session.id, inviter, room_id)
        await self._work.submit("open", f"open:{session.id}", {"session": session.id},
                                lane=session_lane(session.id))

    async def _run_refuse(self, unit: WorkUnit) -> None:
        room_id, inviter = unit.payload["room"], unit.payload["inviter"]
        await call(f"joining {room_id}", self._client.join(room_id), JoinResponse)
        await self._rooms.ready(room_id)
        t = self._config.translator(self._config.language)
        notice = render.Message(t._(
            "Sorry, this support service is not available to accounts on {server}.",
            server=server_of(inviter),
        ))
        await self._sender.send(room_id, notice.content(), txn_id=f"refuse-{room_id}")
        await call(f"leaving {room_id}", self._client.room_leave(room_id), RoomLeaveResponse)

    async def _profile_name(self, user_id: str) -> str:
        response = await call(f"reading {user_id}'s profile",
                              self._client.get_displayname(user_id), object)
        name = response.displayname if isinstance(response, ProfileGetDisplayNameResponse) \
            else None
        if isinstance(name, str):
            cleaned = " ".join(strip_invisible(name).split())[:64]
            if cleaned:
                return cleaned
        return localpart(user_id)

    async def _run_open(self, unit: WorkUnit) -> None:
        session = await self._store.sessions.get_session(unit.payload["session"])
        if session.state is SessionState.CLOSED:
            return
        if session.agent_room is None:
            name = await self._profile_name(session.customer_id)
            if name != session.customer_name:
                session = await self._store.sessions.rename_customer(session.id, name)
            await call(f"joining {session.customer_room}",
                       self._client.join(session.customer_room), JoinResponse)
            session = await self._create_agent_room(session)
        assert session.agent_room is not None
        await self._rooms.ready(session.customer_room)
        await self._rooms.ready(session.agent_room)
        customer = self.translator(session, Side.CUSTOMER)
        welcome = self._config.messages.welcome_in(customer.code)
        await self._sender.send(
            session.customer_room,
            render.welcome(customer.known(welcome), t=customer,
                           choices=len(self._config.languages)).content(),
            txn_id=f"session-{session.id}-welcome",
        )
        # A customer's second DM opens a chat of its own (see the README); the agents are told
        # which of the customer's other chats are still open.
        also_open = [other.id for other in await self._store.sessions.sessions(SessionState.OPEN)
                     if other.customer_id == session.customer_id and other.id != session.id]
        await self._sender.send(
            session.agent_room,
            render.session_opened_for_agents(
                session.customer_name, session.customer_id, session.id, also_open,
                t=self.translator(session, Side.AGENT),
            ).content(),
            txn_id=f"session-{session.id}-opened",
        )

    async def _open_failed(self, unit: WorkUnit, error: PermanentError) -> None:
        """A chat that cannot be opened is closed, and the customer told if they can be."""
        session = await self._store.sessions.get_session(unit.payload["session"])
        if session.customer_room in self._client.rooms:
            t = self.translator(session, Side.CUSTOMER)
            await self.enqueue_send(session, Side.CUSTOMER,
                                    render.chat_not_opened(
                                        render.failure_cause(error.code, error.reason, t=t),
                                        t=t).content(),
                                    f"session-{session.id}-not-opened")
        await self.request_close(session, "open_failed", None, None)

    async def _create_agent_room(self, session: Session) -> Session:
        """Create the session's agent room, once: a repeat finds the room made before.

        ``room_create`` cannot be made idempotent by the server, and its answer can be lost
        (a crash, a lost lease, a cut connection) after the room was made with the agents
        invited. So the attempt is recorded before the request, the room carries the session's
        marker in its creation content, and an attempt that finds an earlier one recorded
        looks for a room of the bot's with that marker before making another.
        """
        marker = await self._session_marker(session)
        attempt = f"agent-room-attempt:{session.id}"
        if await self._store.values.get_value(attempt) is not None:
            found = await self._find_agent_room(marker)
            if found is not None:
                logger.info("session %d: agent room %s was created by an earlier attempt",
                            session.id, found)
                return await self._attach_agent_room(session, found)
        await self._store.values.set_value(attempt, marker)
        room_id = await self._request_agent_room(session, marker)
        failpoints.hit("agent-room-created")
        logger.info("session %d: agent room %s created", session.id, room_id)
        return await self._attach_agent_room(session, room_id)

    async def _attach_agent_room(self, session: Session, room_id: str) -> Session:
        attached = await self._store.sessions.attach_agent_room(session.id, room_id)
        await self._store.values.delete_value(f"agent-room-attempt:{session.id}")
        return attached

    async def _session_marker(self, session: Session) -> str:
        """``<install id>:<session id>``: unique to this session of this Parcel's store (a new
        store reusing the bot's account numbers its sessions from 1 again)."""
        install = await self._store.values.setdefault_value(INSTALL_ID_KEY,
                                                            secrets.token_hex(8))
        return f"{install}:{session.id}"

    async def _find_agent_room(self, marker: str) -> str | None:
        """A room the bot is in whose creation content carries ``marker``, if any.

        Only rooms the store does not know are looked at: a room made by a lost attempt is
        the bot's and is recorded nowhere.
        """
        joined = await call("listing the bot's rooms", self._client.joined_rooms(),
                            JoinedRoomsResponse)
        known = await self._store.sessions.known_rooms()
        for room_id in joined.rooms:
            if room_id in known:
                continue
            try:
                create = await call(f"reading the creation of {room_id}",
                                    self._client.room_get_state_event(room_id, "m.room.create"),
                                    RoomGetStateEventResponse)
            except PermanentError:
                continue  # not readable: not a room the bot made
            if create.content.get(SESSION_MARKER) == marker:
                return str(room_id)
        return None

    async def _request_agent_room(self, session: Session, marker: str) -> str:
        """Ask the homeserver for the agent room, marked as the session's; its id."""
        # Someone let in later (and removed by the bot) must not read the chat so far.
        initial_state: list[dict[str, Any]] = [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "invited"},
            }
        ]
        if self._config.encryption and self._config.agents.room_encryption:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        method, path, body = Api.room_create(
            self._client.access_token,
            name=self._agent_room_name(session),
            topic=self.translator(session, Side.AGENT)._(
                "Parcel session #{session} with {customer}", session=session.id,
                customer=session.customer_id),
            invite=list(self._config.agents.users),
            preset=RoomPreset.private_chat,
            initial_state=initial_state,
        )
        # nio's room_create takes no creation content of our own: add the marker to its body.
        content = json.loads(body)
        content["creation_content"][SESSION_MARKER] = marker
        response = await call(
            "creating the agent room",
            self._client._send(RoomCreateResponse, method, path, json.dumps(content)),
            RoomCreateResponse,
        )
        return str(response.room_id)

    def _agent_room_name(self, session: Session) -> str:
        t = self.translator(session, Side.AGENT)
        template = t.known(self._config.messages.agent_room_name_in(t.code))
        return template.format(customer=session.customer_name, session=session.id)

    # -- sending ----------------------------------------------------------------------------

    async def enqueue_send(
        self,
        session: Session,
        to_side: Side,
        content: dict[str, Any],
        txn_id: str,
        handled_event: str | None = None,
        origin: Side | None = None,
    ) -> None:
        """Queue a message for one side's room, in order with the session's other work.

        ``origin`` is the side whose person wrote it (for a relayed message): they are told
        if it can never be delivered.
        """
        payload: dict[str, Any] = {"session": session.id, "side": to_side.value,
                                   "content": content, "txn_id": txn_id}
        if origin is not None:
            payload["origin"] = origin.value
        if self._inline.get():
            await self._send(payload)
            return
        await self._work.submit("send", txn_id, payload, lane=session_lane(session.id),
                                handled_event=handled_event)

    @asynccontextmanager
    async def sending_inline(self) -> AsyncIterator[None]:
        """Inside: :meth:`enqueue_send` sends at once (idempotently, by its transaction id)
        instead of queuing — for work that runs at the head of the session's lane and must
        keep its place (a message decrypted late); a failure fails that work, to be retried."""
        token = self._inline.set(True)
        try:
            yield
        finally:
            self._inline.reset(token)

    async def _run_send(self, unit: WorkUnit) -> None:
        await self._send(unit.payload)

    async def _send(self, payload: dict[str, Any]) -> None:
        session = await self._store.sessions.get_session(payload["session"])
        room_id = session.room_of(Side(payload["side"]))
        if room_id is None:
            raise PermanentError(f"session {session.id} has no agent room", code="no_room")
        await self._rooms.ready(room_id)
        await self._sender.send(room_id, payload["content"], txn_id=payload["txn_id"])

    async def _send_failed(self, unit: WorkUnit, error: PermanentError) -> None:
        """A relayed message that can never be delivered: its writer is told, in order."""
        origin = unit.payload.get("origin")
        if origin is None:
            return
        session = await self._store.sessions.get_session(unit.payload["session"])
        if session.state is SessionState.CLOSED:
            return
        t = self.translator(session, Side(origin))
        notice = render.not_delivered(render.failure_cause(error.code, error.reason, t=t), t=t)
        await self.enqueue_send(session, Side(origin), notice.content(),
                                f"undelivered-{unit.payload['txn_id']}")

    # -- closing ------------------------------------------------------------------------------

    async def request_close(
        self, session: Session, reason: str, by: str | None, handled_event: str | None,
        by_side: Side | None = None,
    ) -> None:
        """Queue the end of a session (after the work already queued for it).

        ``by`` names who ended it and ``by_side`` is their room, which is told "You ended the
        chat" while the other room hears who did.
        """
        await self._work.submit("close", f"close:{session.id}",
                                {"session": session.id, "reason": reason, "by": by,
                                 "side": by_side.value if by_side else None},
                                lane=session_lane(session.id), handled_event=handled_event)

    async def _run_close(self, unit: WorkUnit) -> None:
        session = await self._store.sessions.get_session(unit.payload["session"])
        reason, by = unit.payload["reason"], unit.payload.get("by")
        by_side = unit.payload.get("side")
        if await self._store.sessions.close_session(session.id, reason):
            self._metrics.session_closed()
            logger.info("session %d closed (%s)", session.id, reason)
        if self.offers is not None:
            await self.offers.expire_session(session.id, ENDED_REASON)
        if self._config.retention.redact_delivered_on_close:
            await self._redact_deliveries(session)
        pending = await self._left_undelivered(session)
        for side in (Side.CUSTOMER, Side.AGENT):
            room_id = session.room_of(side)
            if room_id is None or room_id not in self._client.rooms:
                continue
            if reason in ROOM_GONE[side]:
                continue
            notice = render.session_closed(
                reason, by, you=by_side == side.value, pending=pending,
                bot_id=self.own_user_id if side is Side.CUSTOMER else None,
                t=self.translator(session, side),
            )
            await self._sender.send(
                room_id, notice.content(), txn_id=f"session-{session.id}-closed-{room_id}"
            )
        rooms = [session.customer_room]
        if session.agent_room is not None and self._config.retention.leave_closed_rooms:
            rooms.append(session.agent_room)
        for room_id in rooms:
            await self.leave(session, room_id)

    async def _left_undelivered(self, session: Session) -> int:
        """How many offers the end of the chat expired (from the store: a rerun agrees)."""
        return sum(1 for offer in await self._store.offers.session_offers(session.id)
                   if offer.state.value == "expired" and offer.reason == ENDED_REASON)

    async def leave(self, session: Session, room_id: str) -> None:
        """Queue leaving one of a closed session's rooms (after its offers are settled)."""
        await self._work.submit("leave", f"leave:{room_id}:{session.id}",
                                {"session": session.id, "room": room_id},
                                lane=session_lane(session.id))

    async def tidy_closed_rooms(self) -> int:
        """Leave the rooms of closed sessions the bot is still in (left by an older version),
        and forget the keys of those it has left."""
        closed = await self._store.sessions.sessions(SessionState.CLOSED)
        forget_keys_of_left_rooms(self._client, [
            room for session in closed for room in session.rooms()
        ])
        count = 0
        # One query for every joined room, not one per room: a bot in thousands of rooms
        # starts in the same time as a bot in one.
        found = await self._store.sessions.sessions_for_rooms(list(self._client.rooms))
        for room_id, (session, side) in found.items():
            if session.state is not SessionState.CLOSED:
                continue
            if side is Side.AGENT and not self._config.retention.leave_closed_rooms:
                continue
            await self.leave(session, room_id)
            count += 1
        return count

    async def _run_leave(self, unit: WorkUnit) -> None:
        room_id = unit.payload["room"]
        session_id = unit.payload.get("session")
        if session_id is not None:
            unsettled = await self._store.offers.unsettled_offers(session_id)
            if unsettled:
                # The offers' final edits still need the rooms: look after them (each has a
                # unit for sure) and wait for the first, woken when its unit ends.
                assert self.offers is not None
                for offer in unsettled:
                    await self.offers.schedule(offer.id)
                raise Waiting(f"session {session_id} still has offers to settle",
                              key=f"offer:{unsettled[0].id}", at_most=30.0)
            found = await self._store.sessions.session_for_room(room_id)
            session = await self._store.sessions.get_session(session_id)
            if found is not None and found[0].id != session_id:
                return  # the room started a new session meanwhile: stay
            if room_id == session.agent_room and not bot_removed_from(session, Side.AGENT):
                await self._mark_closed(session)
        if room_id in self._client.rooms or room_id in self._client.invited_rooms:
            if self.panels is not None and session_id is not None:  # the last changes first
                await self.panels.flush(await self._store.sessions.get_session(session_id))
            await call(f"leaving {room_id}", self._client.room_leave(room_id),
                       RoomLeaveResponse)
        forget_room_keys(self._client, [room_id])

    async def _mark_closed(self, session: Session) -> None:
        """Rename the agent room "[closed] …" so agents see at a glance that it is over."""
        assert session.agent_room is not None
        name = render.closed_room_name(self._agent_room_name(session),
                                       t=self.translator(session, Side.AGENT))
        room = self._rooms.room(session.agent_room)
        if room is not None and room.name == name:
            return
        await call(f"renaming {session.agent_room}",
                   self._client.room_put_state(session.agent_room, "m.room.name",
                                               {"name": name}),
                   RoomPutStateResponse)

    async def _redact_deliveries(self, session: Session) -> None:
        """Remove delivered files from the chat when it ends (images in-line only while live)."""
        for offer in await self._store.offers.session_offers(session.id):
            if offer.delivery_event_id is None:
                continue
            room_id = session.room_of(
                Side.AGENT if offer.direction.value == "customer_to_agent" else Side.CUSTOMER
            )
            if room_id is None:
                continue
            try:
                await self._sender.redact(room_id, offer.delivery_event_id, "the chat ended",
                                          txn_id=f"offer-{offer.id}-redact")
            except PermanentError as exc:
                logger.warning("offer %d (session %d): could not redact the delivered file: %s",
                               offer.id, session.id, exc.reason)


def localpart(user_id: str) -> str:
    """The name part of a user id (``@carol:example.org`` → ``carol``), never empty."""
    return user_id.split(":", 1)[0].lstrip("@") or user_id
