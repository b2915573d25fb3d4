"""From a sync batch to small typed handler calls. Ignores the bot's own events.

Each event is handled at most once (the store remembers handled event ids, so a batch replayed
after a crash is skipped), and never lost: an event is marked handled only once its handler
has recorded what it must (a transient failure — the store restarting — raises, and the sync
loop hands the batch over again; a permanent one is logged and the event is done with).
Handlers here are quick and never wait on the homeserver: they record intent in the store as
durable work units (relays, offers, kicks, decryption retries) that the scheduler carries out.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nio import (
    AsyncClient,
    ForwardedRoomKeyEvent,
    MegolmEvent,
    MessageDirection,
    RoomKeyEvent,
    RoomMessagesResponse,
    SyncResponse,
)
from nio.events.invite_events import InviteMemberEvent

from bot import render
from bot.attachments.model import Direction
from bot.attachments.offers import FILE_MSGTYPES, OfferService
from bot.config import Config
from bot.errors import Source, TransientError, Waiting, from_exception
from bot.i18n import Translator
from bot.matrix.client import call
from bot.matrix.rooms import RoomDirectory
from bot.sessions import relay
from bot.sessions.service import SessionService, kick_key
from bot.store import (
    DELIVERY_RECORDS_KEPT,
    Session,
    SessionState,
    Side,
    Store,
    WorkUnit,
    session_lane,
)
from bot.work import Scheduler

logger = logging.getLogger(__name__)

TEXT_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})
# A command word is letters of any script: each language may add its own (!annehmen, !قبول).
_COMMAND = re.compile(r"^!([^\W\d_]+)(?:\s+(.*))?$", re.DOTALL)
BACKFILL_CAP = 1000
# How long an undecryptable message holds back the messages written after it in its chat.
DECRYPT_HOLDS_LANE = 30.0


class Router:
    """Dispatches every event of a sync batch to the session and offer services."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: AsyncClient,
        rooms: RoomDirectory,
        sessions: SessionService,
        offers: OfferService,
        work: Scheduler,
    ) -> None:
        self._config = config
        self._store = store
        self._client = client
        self._rooms = rooms
        self._sessions = sessions
        self._offers = offers
        self._work = work
        self._own = config.user_id
        work.register("decrypt", self._run_decrypt)

    async def handle_batch(self, response: SyncResponse, catching_up: bool) -> None:
        """Handle one sync batch. On a fresh store's first sync, only invites count."""
        self._rooms.refresh()
        if any(isinstance(e, RoomKeyEvent | ForwardedRoomKeyEvent)
               for e in response.to_device_events):
            # Keys arrived: messages waiting for them may open now.
            await self._work.hurry("decrypt")
        for room_id, info in response.rooms.invite.items():
            inviter = _inviter(info.invite_state, self._own)
            if inviter is None:
                continue
            async with _kept(f"the invite to {room_id} from {inviter}"):
                await self._sessions.on_invite(room_id, inviter)
        if catching_up:
            return
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            # Synapse marks a newly joined room's timeline "limited" although it reaches back
            # to the join: with the bot's join in it there is no gap to fill.
            if (info.timeline.limited and info.timeline.prev_batch
                    and not any(_joins(e, self._own) for e in events)):
                # Members lazily synced may have come and gone in the gap.
                self._rooms.forget_members(room_id)
                # A transient failure raises: the batch comes again, gap and all.
                async with _kept(f"backfilling the skipped events of {room_id}"):
                    seen = {getattr(e, "event_id", None) for e in events}
                    events = await self._backfill(room_id, info.timeline.prev_batch,
                                                  seen) + events
            for event in events:
                await self.dispatch(room_id, event)
        # Rooms the bot was removed from (kicked, banned, the room shut down): their last
        # events, the removal included, come only here.
        for room_id, info in response.rooms.leave.items():
            for event in info.timeline.events:
                await self.dispatch(room_id, event)

    async def _backfill(self, room_id: str, prev_batch: str, seen: set[str | None]) -> list[Any]:
        """Events the server left out of a "limited" timeline, oldest first.

        Pages backwards until an event already handled or already in this batch (``seen``:
        the gap is closed) or a cap is hit. Only rooms of live sessions are worth it.
        """
        found = await self._store.sessions.session_for_room(room_id)
        if found is None or found[0].state is SessionState.CLOSED:
            return []
        # Events from before the session, or older than the handled-event records, are done.
        horizon_ms = max(found[0].created_at, time.time() - DELIVERY_RECORDS_KEPT) * 1000
        missed: list[Any] = []
        token: str | None = prev_batch
        while token and len(missed) < BACKFILL_CAP:
            page = await call(f"reading the history of {room_id}", self._client.room_messages(
                room_id, start=token, direction=MessageDirection.back, limit=100
            ), RoomMessagesResponse)
            if not page.chunk:
                break
            for event in page.chunk:
                event_id = getattr(event, "event_id", None)
                if (
                    event_id is None
                    or event_id in seen
                    or await self._store.outbox.is_handled(event_id)
                    or getattr(event, "server_timestamp", 0) < horizon_ms
                ):
                    token = None
                    break
                missed.append(event)
            else:
                token = page.end
        if missed:
            logger.warning("room %s: the sync skipped events; backfilled %d", room_id,
                           len(missed))
        missed.reverse()
        return missed

    async def dispatch(self, room_id: str, event: Any) -> None:
        """Handle one timeline event, exactly once, logging any failure."""
        source = getattr(event, "source", None)
        if not isinstance(source, dict):
            return
        event_id, sender = source.get("event_id"), source.get("sender")
        if not isinstance(event_id, str) or not isinstance(sender, str):
            return
        if sender == self._own and not _removes(source, self._own):
            return  # the bot's own events, except its removal (a room shutdown makes it leave)
        if await self._store.outbox.is_handled(event_id):
            return
        found = await self._store.sessions.session_for_room(room_id)
        if found is None:
            return
        session, side = found
        async with _kept(f"session {session.id}: handling {event_id} in {room_id}"):
            if session.state is SessionState.CLOSED:
                await self._on_closed(session, side, event_id, sender, source)
            else:
                await self._handle(session, side, event_id, sender, event, source)
        await self._store.outbox.mark_handled(event_id)

    async def _handle(
        self, session: Session, side: Side, event_id: str, sender: str, event: Any,
        source: dict[str, Any],
    ) -> None:
        # People are named from both rooms' members: read them before the first event.
        await self._rooms.load_members(*session.rooms())
        kind = source.get("type")
        content = source.get("content")
        content = content if isinstance(content, dict) else {}
        if kind == "m.room.member":
            await self._on_member(session, side, sender, source, content)
            return
        if not self._may_speak(session, side, sender):
            return
        if isinstance(event, MegolmEvent):
            await self._on_undecryptable(session, side, event)
            return
        if kind == "m.room.message":
            await self._on_message(session, side, event_id, sender, content)
        elif kind == "m.sticker":
            # A sticker is an image: offered like one, never relayed as is.
            name = self._sessions.label(session, side, sender)
            await self._offers.on_upload(session, side, event_id, sender, name,
                                         relay.sticker_as_image(content))
        elif kind == "m.reaction":
            relates = content.get("m.relates_to")
            if isinstance(relates, dict) and relates.get("rel_type") == "m.annotation":
                target = relates.get("event_id")
                if isinstance(target, str):
                    await self._offers.on_reaction(session, side, sender, target,
                                                   relates.get("key"))
        elif kind == "m.room.redaction":
            redacts = source.get("redacts") or content.get("redacts")
            if isinstance(redacts, str):
                await self._offers.on_redaction(session, redacts, sender)
        elif "state_key" not in source:
            what = relay.unsupported_event(str(kind))
            if what is not None:
                await self._reply(session, side, event_id,
                                  render.not_relayable(what, t=self._t(session, side)))

    async def _on_closed(
        self, session: Session, side: Side, event_id: str, sender: str, source: dict[str, Any]
    ) -> None:
        """An agent writing in the room of an ended chat is told that nothing is relayed."""
        content = source.get("content")
        if (
            side is not Side.AGENT
            or source.get("type") != "m.room.message"
            or not isinstance(content, dict)
            or _text_field(content, "msgtype") not in TEXT_MSGTYPES
            or "m.new_content" in content
            or not self._sessions.is_agent(sender)
        ):
            return
        await self._reply(session, side, event_id,
                          render.session_closed_already(t=self._t(session, side)))

    def _may_speak(self, session: Session, side: Side, sender: str) -> bool:
        """Only configured agents count in the agent room; anyone but the bot in the other."""
        return side is Side.CUSTOMER or self._sessions.is_agent(sender)

    async def _on_member(
        self, session: Session, side: Side, sender: str, source: dict[str, Any],
        content: dict[str, Any],
    ) -> None:
        member = source.get("state_key")
        membership = content.get("membership")
        if side is Side.CUSTOMER and member == session.customer_id and membership in (
            "leave", "ban"
        ):
            await self._sessions.request_close(session, "customer_left", None, source["event_id"])
        elif side is Side.CUSTOMER and member == self._own and membership in ("leave", "ban"):
            # Kicked or banned from the customer's room, or the room was shut down: nothing
            # can reach the customer any more, so the session ends as if they had left.
            logger.info("session %d: the bot was removed from the customer room by %s",
                        session.id, sender)
            await self._sessions.request_close(session, "bot_removed", None, source["event_id"])
        elif side is Side.AGENT and member == self._own and membership in ("leave", "ban"):
            # Removed from the agent room: no agent can read what the customer writes any
            # more, so the session ends and the customer is told (as in the case above).
            logger.info("session %d: the bot was removed from the agent room by %s",
                        session.id, sender)
            await self._sessions.request_close(session, "bot_removed_from_agents", None,
                                               source["event_id"])
        elif (
            side is Side.AGENT and membership in ("leave", "ban") and isinstance(member, str)
            and not self._sessions.is_agent(member)
        ):
            # A stranger gone (removed by someone, or left): what waited for that goes now.
            await self._work.wake(kick_key(session.agent_room or "", member))
        elif (
            side is Side.AGENT
            and membership in ("invite", "join")
            and isinstance(member, str)
            and member != self._own
            and not self._sessions.is_agent(member)
        ):
            logger.warning("session %d: %s is not an agent but was %s to the agent room; "
                           "removing", session.id, member,
                           "invited" if membership == "invite" else "joined")
            # Durable and retried; meanwhile nothing is sent into the room (Sender's guard).
            await self._sessions.remove_stranger(session, member, handled_event=source["event_id"])

    async def _on_message(
        self, session: Session, side: Side, event_id: str, sender: str, content: dict[str, Any]
    ) -> None:
        msgtype = _text_field(content, "msgtype")
        relates = content.get("m.relates_to")
        is_edit = isinstance(relates, dict) and relates.get("rel_type") == "m.replace"
        if msgtype in FILE_MSGTYPES:
            if is_edit:
                return  # an edited file message must not swap what was offered
            name = self._sessions.label(session, side, sender)
            await self._offers.on_upload(session, side, event_id, sender, name, content)
            return
        if is_edit:
            new_content = content.get("m.new_content")
            if not isinstance(new_content, dict):
                return
            content = dict(new_content)
            msgtype = _text_field(content, "msgtype")
        body = content.get("body")
        if msgtype not in TEXT_MSGTYPES or not isinstance(body, str):
            what = "location" if msgtype == "m.location" else "message"
            await self._reply(session, side, event_id,
                              render.not_relayable(what, t=self._t(session, side)))
            return
        if not is_edit and await self._on_command(session, side, event_id, sender, body):
            return
        formatted = content.get("formatted_body")
        if content.get("format") != "org.matrix.custom.html" or not isinstance(formatted, str):
            formatted = None
        await self._relay_text(session, side, event_id, sender, str(msgtype), body, formatted,
                               reply_to=None if is_edit else relay.reply_target(content),
                               is_edit=is_edit)

    async def _relay_text(
        self, session: Session, side: Side, event_id: str, sender: str, msgtype: str,
        body: str, formatted: str | None, reply_to: str | None, is_edit: bool,
    ) -> None:
        """Relay text to the other side: no fake quotes, real replies, in parts if long."""
        body, formatted = relay.strip_fallbacks(body, formatted, is_reply=reply_to is not None)
        # Card numbers never reach the other side (policy.card_numbers_in_text); the number is
        # not logged: only how many there were.
        policy = (self._config.policy.customer_to_agent if side is Side.CUSTOMER
                  else self._config.policy.agent_to_customer)
        screen = relay.screen_card_numbers(body, formatted, policy.card_numbers_in_text)
        recipient = "the agent" if side is Side.CUSTOMER else "the customer"
        if screen.refused:
            logger.info("session %d: %s holds %d card number(s): not relayed "
                        "(card_numbers_in_text: refuse)", session.id, event_id, screen.found)
            await self._reply(session, side, event_id,
                              render.card_numbers_refused_in_text(
                                  recipient, t=self._t(session, side)))
            return
        body, formatted = screen.body, screen.formatted
        other = Side.AGENT if side is Side.CUSTOMER else Side.CUSTOMER
        if is_edit:
            edited = self._t(session, other)._("(edited)")  # in the readers' language
            body = f"{edited} {body}"
            formatted = (f"<i>{html.escape(edited)}</i> {formatted}" if formatted is not None
                         else None)
        here, there = session.room_of(side), session.room_of(other)
        target = None
        if reply_to is not None and here is not None and there is not None:
            target = await relay.counterpart(self._store.outbox, here, reply_to, there)
        label = self._sessions.label(session, side, sender)
        contents = relay.relayed_messages(label, msgtype, body, formatted, reply_to=target)
        if contents is None:
            logger.warning("session %d: %s is too long to relay even in parts", session.id,
                           event_id)
            await self._reply(session, side, event_id, render.message_too_long(
                len(body.encode()), t=self._t(session, side)))
            return
        for part, relayed in enumerate(contents, start=1):
            await self._sessions.enqueue_send(session, other, relayed,
                                              relay.relay_txn(event_id, part), event_id,
                                              origin=side)
        if screen.found:
            logger.info("session %d: %s relayed with %d card number(s) masked", session.id,
                        event_id, screen.found)
            await self._reply(session, side, event_id,
                              render.card_numbers_hidden_in_text(
                                  screen.found, recipient, t=self._t(session, side)))

    async def _reply(self, session: Session, side: Side, event_id: str,
                     message: render.Message) -> None:
        await self._sessions.enqueue_send(session, side, message.content(), f"reply-{event_id}",
                                          event_id)

    def _t(self, session: Session, side: Side) -> Translator:
        """The language of the people in ``side``'s room."""
        return self._sessions.translator(session, side)

    async def _on_command(
        self, session: Session, side: Side, event_id: str, sender: str, body: str
    ) -> bool:
        """Run a ``!command``; returns False when the text is not a command at all.

        English commands always work; the room's language may add its own words
        (``!annehmen 1``), shown by ``!help``.
        """
        match = _COMMAND.match(body.strip())
        if match is None:
            return False
        t = self._t(session, side)
        typed, argument = match.group(1).lower(), (match.group(2) or "").strip()
        word = render.command_word(typed, t.code)
        if word == "help":
            await self._reply(session, side, event_id,
                              render.help_text(t=t, language_command=side is Side.CUSTOMER))
        elif word == "attachments":
            viewpoint = (
                Direction.CUSTOMER_TO_AGENT if side is Side.CUSTOMER
                else Direction.AGENT_TO_CUSTOMER
            )
            offers = await self._store.offers.session_offers(session.id)
            await self._reply(session, side, event_id,
                              render.attachment_log(offers, viewpoint, t=t))
        elif word in ("accept", "decline"):
            await self._reply(session, side, event_id,
                        await self._decision_command(session, side, sender, word, argument, t))
        elif word == "end":
            name = self._sessions.label(session, side, sender)
            await self._sessions.request_close(session, "ended", name, event_id, by_side=side)
        elif word == "language":
            await self._reply(session, side, event_id,
                              await self._language_command(session, side, argument, t))
        else:
            await self._reply(session, side, event_id, render.unknown_command(f"!{typed}", t=t))
        return True

    async def _language_command(
        self, session: Session, side: Side, argument: str, t: Translator
    ) -> render.Message:
        """``!language`` lists a customer's choices; ``!language es`` switches their chat
        (remembered in the store; the panel is redrawn in it; the answer is in it)."""
        allowed = self._config.languages
        if side is Side.AGENT:
            return render.language_agents_fixed(t=t)
        if not argument:
            return render.language_choices(t.code, allowed, t=t)
        code = argument.split()[0].lower()
        if code not in allowed:
            return render.language_unknown(argument, allowed, t=t)
        session = await self._store.sessions.set_language(session.id, code)
        logger.info("session %d: the customer switched the chat to %s", session.id, code)
        if self._sessions.panels is not None:
            await self._sessions.panels.changed(session.id)
        return render.language_switched(t=self._t(session, side))

    async def _decision_command(
        self, session: Session, side: Side, sender: str, word: str, argument: str,
        t: Translator,
    ) -> render.Message:
        number = argument.lstrip("#")
        # ASCII digits only: str.isdigit() is also true for "²", which int() refuses.
        if not (number.isascii() and number.isdigit()) or len(number) > 12:
            return render.offer_number_needed(word, t=t)
        offer, problem = await self._offers.decide(session, side, int(number), sender,
                                                   accept=word == "accept", t=t)
        if problem is not None:
            return render.command_error(problem)
        assert offer is not None
        return render.decision_done(word == "accept", offer.shown_number, t=t)

    async def _on_undecryptable(self, session: Session, side: Side, event: MegolmEvent) -> None:
        """Keep the message as work that is tried again when keys arrive, and on a schedule.

        It waits in the session's lane, so the messages written after it are not relayed
        before it (keys usually come seconds late: a sync that failed while saving them, a
        sender's slow key share) — for :data:`DECRYPT_HOLDS_LANE` at most.
        """
        room_id = session.room_of(side)
        await self._work.submit("decrypt", f"decrypt:{event.event_id}",
                                {"room": room_id, "event": event.source},
                                lane=session_lane(session.id), handled_event=event.event_id)

    async def _run_decrypt(self, unit: WorkUnit) -> None:
        """Decrypt a stored event and handle it; ask the sender to resend once time is up."""
        found = await self._store.sessions.session_for_room(unit.payload["room"])
        if found is None or found[0].state is SessionState.CLOSED:
            return  # the chat ended: nobody waits for this message any more
        session, side = found
        event = MegolmEvent.from_dict(unit.payload["event"])
        if not isinstance(event, MegolmEvent):
            logger.warning("session %d: stored encrypted event is malformed; dropped",
                           session.id)
            return
        event.room_id = unit.payload["room"]  # the key lookup needs it; sync sets it, JSON not
        try:
            decrypted = self._client.decrypt_event(event)
        except Exception:  # noqa: BLE001 - nio raises when the key is still missing
            decrypted = None
        if decrypted is not None:
            logger.info("event %s decrypted after its keys arrived", event.event_id)
            # Its messages go out now, from this unit: queued, they would come after the
            # later messages already waiting in the lane.
            async with self._sessions.sending_inline():
                await self._handle(session, side, event.event_id, event.sender, decrypted,
                                   decrypted.source)
            return
        if unit.last_error is None:  # the first look: ask the sender's devices once
            try:
                await self._client.request_room_key(event)
            except Exception as exc:  # noqa: BLE001 - a key request is best effort
                logger.info("key request for %s failed: %r", event.event_id, exc)
        waited = time.time() - unit.created_at
        if unit.lane is not None and waited >= DECRYPT_HOLDS_LANE:
            # Order matters less than a chat that goes on: the later messages go ahead.
            await self._store.work.leave_lane(unit)
            logger.warning("session %d: event %s from %s is still undecryptable after %.0f s; "
                           "relaying what came after it meanwhile", session.id, event.event_id,
                           event.sender, waited)
        if waited < self._config.retry.undecryptable_for:
            # Keys arriving wake it (handle_batch hurries "decrypt"); meanwhile look now and then.
            # Look again at the latest when the lane is to be let go or time is up.
            bound = min(30.0, self._config.retry.undecryptable_for - waited)
            if unit.lane is not None:
                bound = min(bound, DECRYPT_HOLDS_LANE - waited)
            raise Waiting(f"the keys for {event.event_id} have not arrived yet",
                          at_most=max(0.5, bound))
        logger.warning("session %d: event %s from %s stayed undecryptable", session.id,
                       event.event_id, event.sender)
        await self._sessions.enqueue_send(session, side,
                                          render.undecryptable(t=self._t(session, side)).content(),
                                          f"undecryptable-{event.event_id}")


def _removes(source: dict[str, Any], user_id: str) -> bool:
    """Whether an event takes ``user_id`` out of its room (a leave or ban of that user)."""
    content = source.get("content")
    return (source.get("type") == "m.room.member" and source.get("state_key") == user_id
            and isinstance(content, dict) and content.get("membership") in ("leave", "ban"))


def _joins(event: Any, user_id: str) -> bool:
    """Whether a timeline event is ``user_id`` joining the room."""
    source = getattr(event, "source", None)
    if not isinstance(source, dict):
        return False
    content = source.get("content")
    return (source.get("type") == "m.room.member" and source.get("state_key") == user_id
            and isinstance(content, dict) and content.get("membership") == "join")


@asynccontextmanager
async def _kept(what: str) -> AsyncIterator[None]:
    """Around handling one thing of a batch: a transient failure is raised (classified), so
    the batch is handled again later; a permanent one is logged and the batch goes on."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - classified here, once
        error = from_exception(exc, what)
        if isinstance(error, TransientError):
            raise error from exc
        logger.error("%s failed for good: %s", what, error.reason,
                     exc_info=exc if error.source is Source.INTERNAL else None)


def _text_field(content: dict[str, Any], key: str) -> str | None:
    """A string field of untrusted content; anything else (a list, a number) counts as absent."""
    value = content.get(key)
    return value if isinstance(value, str) else None


def _inviter(invite_state: list[Any], own_user_id: str) -> str | None:
    for event in invite_state:
        if (
            isinstance(event, InviteMemberEvent)
            and event.state_key == own_user_id
            and event.membership == "invite"
        ):
            return event.sender
    return None
