"""The offer's life: from an upload event to a settled offer, one idempotent step at a time.

Each offer's durable state is its row in the store. Everything done for one offer runs as
its one work unit, in its one lane (``offer:{id}``): :meth:`OfferService.advance` looks at the
row and carries out what the current state still owes — check the file
(:mod:`~bot.attachments.checking`), post the card and stage the recipient's copy
(:mod:`~bot.attachments.staging`), deliver (:mod:`~bot.attachments.delivery`), edit, clean
up — then marks the state settled.

What people wait for goes first, the bookkeeping after it. From the verdict, the card is the
offer's first request to the homeserver and the sender's status line its second; only then
do the bot's ✅/❌ go under the card (beside the offer's work, never blocking it) and the copy
go up. From a ✅, the delivered file is the offer's next event; the card and status edits
and the taking back of the seed reactions come after it. While a card or a delivered file is on
its way, its rooms' activity panels wait (:mod:`~bot.attachments.pacing`).

Every path ends in a settled offer: a step that fails for good fails the offer, which is
then announced and settled like any other state; a decision that makes staging pointless
(❌, withdrawal, expiry) stops it, and the offer's final step deletes what it left. Every
message has a transaction id derived from the offer and the step, so a crash at any point is
repaired by running ``advance`` again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot import failpoints, render
from bot.attachments import redact
from bot.attachments.checking import Checker
from bot.attachments.delivery import Delivery, rooms_of, sent_as_file
from bot.attachments.events import (
    FILE_MSGTYPES,
    UploadEvent,
    direction_from,
    normalize_key,
    sender_side,
)
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.pacing import RoomHolds
from bot.attachments.policy import Verdict
from bot.attachments.staging import Staging
from bot.config import Config
from bot.errors import PermanentError
from bot.i18n import ENGLISH, Translator
from bot.matrix.client import Sender
from bot.matrix.media import MediaClient
from bot.matrix.rooms import RoomDirectory
from bot.metrics import Metrics
from bot.sessions.language import reader
from bot.sessions.service import bot_removed_from
from bot.store import Session, Side, Store, WorkUnit, offer_lane
from bot.work import Scheduler

__all__ = ["FILE_MSGTYPES", "OfferService", "direction_from", "normalize_key", "sender_side"]

logger = logging.getLogger(__name__)


async def _nothing_changed(session_id: int) -> None:
    """The default ``on_change``: nobody is told."""


class OfferService:
    """Turns uploads into offers, applies decisions, and carries each offer to its end."""

    def __init__(
        self,
        config: Config,
        store: Store,
        sender: Sender,
        media: MediaClient,
        rooms: RoomDirectory,
        work: Scheduler,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._sender = sender
        self._media = media
        self._metrics = metrics or Metrics()
        self._rooms = rooms
        self._work = work
        self._staging = Staging(config, store, media, rooms)
        self._checker = Checker(config, store, media, self._staging, self._metrics)
        self._delivery = Delivery(config, store, sender, rooms, self._staging, self._metrics)
        work.register("offer", self._run_unit, self._give_up)
        # Left by a version that staged in a lane of its own: handed to the offer's lane.
        work.register("stage", self._run_legacy_stage)
        work.register("reaction", self._run_reaction)
        # Told the session id after every step, so the activity panels follow (set by the
        # composition root).
        self.on_change: Callable[[int], Awaitable[None]] = _nothing_changed
        self._accept_key = normalize_key(config.reactions.accept)
        self._decline_key = normalize_key(config.reactions.decline)
        # The staging that runs in an offered offer's unit while it waits, so that a ❌ (or
        # a withdrawal, an expiry) can stop it at once.
        self._staging_runs: dict[int, asyncio.Task[None]] = {}
        # The bot's ✅/❌ under each card, going out beside the offer's work; a decision
        # stops what has not gone yet (it has no purpose then).
        self._seeding: dict[int, asyncio.Task[None]] = {}
        # Rooms held while a card or a delivered file is on its way, so that the activity
        # panels wait (the composition root shares the panels' instance).
        self.holds = RoomHolds()

    # -- inbound ----------------------------------------------------------------------------

    async def on_upload(
        self, session: Session, side: Side, event_id: str, sender: str, sender_name: str,
        content: dict[str, Any],
    ) -> Offer:
        """Record an upload as a new offer (durably, before anything else) and start on it."""
        # A card number in the file's name or caption is never kept or shown (policy).
        policies = self._config.policy
        content = redact.screen_upload(content, policies.customer_to_agent if side is
                                       Side.CUSTOMER else policies.agent_to_customer)
        upload = UploadEvent(content)
        offer, created = await self._store.offers.create_offer(
            session_id=session.id,
            direction=direction_from(side),
            sender=sender,
            sender_name=sender_name,
            source_room=session.room_of(side) or "",
            source_event_id=event_id,
            source_content=json.dumps(content),
            msgtype=upload.msgtype,
            filename=upload.filename,
            declared_mimetype=upload.declared_mimetype,
            declared_size=upload.declared_size,
        )
        if created:
            logger.info("offer %d (session %d): %s from %s, event %s", offer.id, session.id,
                        offer.direction.value, sender, event_id)
        failpoints.hit("offer-recorded")
        await self.schedule(offer.id)
        return offer

    async def decide(
        self, session: Session, side: Side, number: int, actor: str, accept: bool,
        t: Translator = ENGLISH,
    ) -> tuple[Offer | None, str | None]:
        """Apply a decision on this chat's offer #``number`` from ``side``'s room.

        Returns (offer, why-not) for command replies, why-not in the language of ``t``.
        Numbers count per chat, so a number from another chat finds nothing here.
        """
        offer = await self._store.offers.offer_by_number(session.id, number)
        if offer is None:
            return None, t._("There is no offer #{number} waiting for a decision in this chat.",
                             number=number)
        if sender_side(offer.direction) is side:
            if offer.direction is Direction.CUSTOMER_TO_AGENT:
                return None, t._("Offer #{number} was sent from this side of the chat; only the "
                                 "agent can accept or decline it.", number=number)
            return None, t._("Offer #{number} was sent from this side of the chat; only the "
                             "customer can accept or decline it.", number=number)
        if offer.state is OfferState.INSPECTING:
            return offer, t._("Offer #{number} is still being checked; try again in a moment.",
                              number=number)
        target = OfferState.ACCEPTED if accept else OfferState.DECLINED
        decided = await self._store.offers.transition(offer.id, target, actor=actor)
        if decided is None:
            current = await self._store.offers.get_offer(offer.id)
            state = render.state_word(current.state, t=t) if current else t._("gone")
            return current, t._("Offer #{number} was already {state}.", number=number,
                                state=state)
        logger.info("offer %d (session %d): %s by %s", offer.id, offer.session_id,
                    target.value, actor)
        self._metrics.decided(max(0.0, decided.updated_at - offer.updated_at))
        if accept:
            # The delivered file is next in these rooms: the panels wait for it.
            self.holds.hold(self._delivery_hold(offer.id), session.rooms())
        else:
            self._stop_staging(offer.id)  # a ✅ waits for it; a ❌ makes it pointless
        await self.schedule(offer.id)
        return decided, None

    async def on_reaction(self, session: Session, side: Side, actor: str, target_event: str,
                          key: object) -> None:
        """A reaction in a session room: a decision if it is ✅/❌ on a live offer card."""
        normalized = normalize_key(key)
        if normalized not in (self._accept_key, self._decline_key):
            return
        room = session.room_of(side) or ""
        offer = await self._store.offers.offer_by_offer_event(room, target_event)
        if offer is None:
            await self._defer_reaction(session, side, room, actor, target_event, normalized)
            return
        if offer.session_id != session.id:
            return
        await self.decide(session, side, offer.shown_number, actor,
                          accept=normalized == self._accept_key)

    async def _defer_reaction(self, session: Session, side: Side, room: str, actor: str,
                              target_event: str, key: str) -> None:
        """A ✅/❌ on an event that is no known card: perhaps a card whose event id is not
        recorded yet (a crash came between sending it and recording it, and the decision was
        made meanwhile). Each offer with such a card in this room looks again once its own
        step (which records the card) is done: the unit waits in the offer's lane."""
        for offer in await self._store.offers.session_offers(session.id):
            if offer.state is not OfferState.OFFERED or offer.offer_event_id is not None:
                continue
            if session.other_room(sender_side(offer.direction)) != room:
                continue
            await self._work.submit(
                "reaction", f"reaction:{offer.id}:{target_event}:{actor}:{key}",
                {"offer": offer.id, "session": session.id, "side": side.value, "actor": actor,
                 "target": target_event, "key": key},
                lane=offer_lane(offer.id),
            )

    async def _run_reaction(self, unit: WorkUnit) -> None:
        """A deferred reaction, now that its offer's card is recorded (if it was that card)."""
        payload = unit.payload
        session = await self._store.sessions.get_session(payload["session"])
        side = Side(payload["side"])
        offer = await self._store.offers.offer_by_offer_event(session.room_of(side) or "",
                                                              payload["target"])
        if offer is None or offer.id != payload["offer"]:
            return  # it was a reaction to something else
        await self.on_reaction(session, side, payload["actor"], payload["target"],
                               payload["key"])

    async def on_redaction(self, session: Session, redacted_event: str, actor: str) -> None:
        """The sender redacted their upload: withdraw the offer if still undecided."""
        offer = await self._store.offers.offer_by_source_event(redacted_event)
        if offer is None or offer.session_id != session.id:
            return
        if await self._store.offers.transition(offer.id, OfferState.WITHDRAWN, actor=actor,
                                  reason="the sender deleted the file") is not None:
            logger.info("offer %d (session %d): withdrawn by %s", offer.id, session.id, actor)
            self._stop_staging(offer.id)
            await self.schedule(offer.id)

    async def expire_session(self, session_id: int, reason: str) -> None:
        """Expire every pending offer of a session; their edits follow as their own work."""
        for offer in await self._store.offers.session_offers(session_id):
            if offer.is_pending and await self._store.offers.transition(
                    offer.id, OfferState.EXPIRED, reason=reason):
                self._stop_staging(offer.id)
                await self.schedule(offer.id)

    async def expire_due(self, now: float | None = None) -> int:
        """Expire offers older than the TTL; returns how many."""
        cutoff = (now or time.time()) - self._config.policy.offer_ttl
        count = 0
        waiting = [OfferState.OFFERED, OfferState.INSPECTING]
        for offer in await self._store.offers.offers_in_states(waiting):
            if offer.created_at <= cutoff and await self._store.offers.transition(
                offer.id, OfferState.EXPIRED, reason="nobody accepted it in time"
            ):
                logger.info("offer %d (session %d): expired", offer.id, offer.session_id)
                self._stop_staging(offer.id)
                await self.schedule(offer.id)
                count += 1
        return count

    async def resume(self) -> None:
        """Pick up every offer whose state still has work owed (after a restart)."""
        for offer in await self._store.offers.unsettled_offers():
            await self.schedule(offer.id)

    # -- the per-offer step machine ---------------------------------------------------------

    async def schedule(self, offer_id: int) -> None:
        """Queue (durably) a look at the offer: :meth:`advance` runs as its work unit."""
        await self._work.submit("offer", f"offer:{offer_id}", {"offer": offer_id},
                                lane=offer_lane(offer_id))

    async def _run_unit(self, unit: WorkUnit) -> None:
        await self.advance(unit.payload["offer"])

    async def _run_legacy_stage(self, unit: WorkUnit) -> None:
        """A stage unit of an earlier version: staging is the offer's own step now."""
        await self.schedule(unit.payload["offer"])

    async def advance(self, offer_id: int) -> None:
        """Carry out what the offer's state owes, step by step, until it is settled.

        Failures are raised for the scheduler: a transient one runs this again later, a
        permanent one ends in :meth:`_give_up`. Every step is idempotent. Whatever way this
        ends, the upload that followed the download ends with it.
        """
        try:
            while True:
                offer = await self._store.offers.get_offer(offer_id)
                if offer is None or await self._store.offers.is_settled(offer_id):
                    return
                await self._step(offer)
        finally:
            self.holds.release(self._card_hold(offer_id))
            await self._drop_seeding(offer_id)
            await self._staging.drop_stream(offer_id, "the offer's work stopped")

    async def _give_up(self, unit: WorkUnit, error: PermanentError) -> None:
        """A step failed for good: the offer fails with the cause, and its sender is told."""
        offer = await self._store.offers.get_offer(unit.payload["offer"])
        if offer is None:
            return
        cause = render.failure_cause(error.code, error.reason)
        if offer.state is OfferState.INSPECTING:
            await self._checker.reject(offer, Verdict(False, "download_failed", cause))
        elif offer.state in (OfferState.OFFERED, OfferState.ACCEPTED):
            await self._fail(offer, cause)
        else:
            # Even its final messages cannot be posted: nothing more can be done for it.
            logger.error("offer %d (session %d): the %s messages could not be posted: %s",
                         offer.id, offer.session_id, offer.state.value, cause)
            await self._staging.settle(offer)
            await self._store.offers.mark_settled(offer.id, offer.state)
            return
        await self.schedule(offer.id)

    async def _step(self, offer: Offer) -> None:
        """Carry out the current state's next step."""
        session = await self._store.sessions.get_session(offer.session_id)
        if offer.state is OfferState.INSPECTING:
            # The download and the verdict lead to the card: the rooms' panels wait from here
            # (released once the card and status line are out, or now if it was refused).
            self.holds.hold(self._card_hold(offer.id), session.rooms())
            if await self._checker.inspect(offer, session):
                # Offered: the card is next, and nothing goes before it (the panels are told
                # once it is out).
                return
            self.holds.release(self._card_hold(offer.id))
        elif offer.state is OfferState.OFFERED:
            await self._offer(offer, session)
            current = await self._store.offers.get_offer(offer.id)
            if current is not None and current.state is OfferState.OFFERED:
                # Undecided: the person needs the ✅/❌ to click, so they must be out before
                # this state is settled (a failure runs this step again). Once decided they
                # are moot, and the delivery does not wait for them.
                await self._end_seeding(offer.id)
            await self._store.offers.mark_settled(offer.id, OfferState.OFFERED)
            self._metrics.offer_state(offer.direction, OfferState.OFFERED)
        elif offer.state is OfferState.ACCEPTED:
            if offer.delivery_event_id is None:
                hold = self._delivery_hold(offer.id)
                self.holds.hold(hold, session.rooms())  # again, after a restart
                try:
                    await self._delivery.deliver(offer, session)
                finally:
                    self.holds.release(hold)
                offer = await self._store.offers.get_offer(offer.id) or offer
            # Only now the edits and the taking back of the seeds: after the file.
            await self._finish(offer)
        elif offer.state is OfferState.REJECTED:
            reason = offer.reason or "it was refused"
            notice = render.rejection_notice(offer.filename, reason, facts=offer.reason_facts,
                                             t=await self._reader(offer, sender=True))
            content = render.reply_to(self._with_block(notice.content(), offer),
                                      offer.source_event_id)
            await self._send_ready(offer.source_room, content, f"offer-{offer.id}-rejected")
            await self._tell_agents_of_refusal(offer, session, reason)
            await self._finish(offer)
        elif offer.state is OfferState.FAILED:
            # The sender first: they are the one waiting, and their room may still work.
            notice = render.offer_failed(offer.filename, offer.reason or "unknown error",
                                         accepted=offer.decided_by is not None,
                                         t=await self._reader(offer, sender=True))
            content = self._with_block(notice.content(), offer)
            await self._send_ready(offer.source_room, content, f"offer-{offer.id}-failed")
            await self._finish(offer)
        else:
            await self._finish(offer)
        await self.on_change(offer.session_id)

    async def _offer(self, offer: Offer, session: Session) -> None:
        """Post the card, then the status line, then (beside the offer's work) the bot's
        ✅/❌ under the card and, with ``media.prestage``, stage the recipient's copy; a
        decision against the offer stops the staging (its step cleans up)."""
        await self._post_offer(offer, session)
        await self.on_change(offer.session_id)  # the panels show the card (paced)
        if not self._config.media.prestage:
            return
        _, recipient_room = rooms_of(offer, session)
        staging = asyncio.create_task(self._stage_offered(offer, recipient_room),
                                      name=f"offer-{offer.id}-stage")
        self._staging_runs[offer.id] = staging
        try:
            await staging
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not staging.cancelled() or (task is not None and task.cancelling()):
                raise
            logger.info("offer %d (session %d): staging stopped: the offer was decided",
                        offer.id, offer.session_id)
        finally:
            self._staging_runs.pop(offer.id, None)
            if not staging.done():
                staging.cancel()
                await asyncio.gather(staging, return_exceptions=True)

    async def _stage_offered(self, offer: Offer, recipient_room: str) -> None:
        room = await self._rooms.ready(recipient_room)
        # Registered before this read: a decision recorded after it stops this task, one
        # recorded before it is seen here.
        current = await self._store.offers.get_offer(offer.id)
        if current is None or current.state not in (OfferState.OFFERED, OfferState.ACCEPTED):
            return
        await self._staging.stage(current, room.encrypted)

    def _stop_staging(self, offer_id: int) -> None:
        """The offer was decided against (or withdrawn, expired): its staging has no purpose."""
        staging = self._staging_runs.get(offer_id)
        if staging is not None:
            staging.cancel()

    @staticmethod
    def _card_hold(offer_id: int) -> str:
        return f"offer-{offer_id}-card"

    @staticmethod
    def _delivery_hold(offer_id: int) -> str:
        return f"offer-{offer_id}-deliver"

    def _start_seeding(self, offer: Offer, room_id: str, card_event: str) -> None:
        """Put the bot's ✅ and ❌ under the card (so a person can click one), as a task of the
        offer's unit that does not hold the offer up; :meth:`_end_seeding` awaits it."""
        if offer.id in self._seeding:
            return

        async def seed() -> None:
            for word, key in (("accept", self._config.reactions.accept),
                              ("decline", self._config.reactions.decline)):
                # Read before each: once the offer is decided (or over) a seed has no
                # purpose, and would only stand between the ✅ and the delivered file.
                current = await self._store.offers.get_offer(offer.id)
                if current is None or current.state is not OfferState.OFFERED:
                    logger.debug("offer %d: %s seed skipped, the offer is %s", offer.id, word,
                                 current.state.value if current else "gone")
                    return
                await self._sender.react(room_id, card_event, key,
                                         txn_id=f"offer-{offer.id}-react-{word}")

        self._seeding[offer.id] = asyncio.create_task(seed(), name=f"offer-{offer.id}-seed")

    async def _end_seeding(self, offer_id: int) -> None:
        """Wait for the seed reaction in flight, if any (a failure is raised: the unit runs
        again and the seeds are idempotent)."""
        seeding = self._seeding.pop(offer_id, None)
        if seeding is not None:
            await seeding

    async def _drop_seeding(self, offer_id: int) -> None:
        """The offer's unit ends: a seeding still under way ends with it (stopped when the
        unit is cancelled; a run again reseeds idempotently, by transaction id)."""
        seeding = self._seeding.pop(offer_id, None)
        if seeding is None:
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            seeding.cancel()
        await asyncio.gather(seeding, return_exceptions=True)

    async def _tell_agents_of_refusal(self, offer: Offer, session: Session, reason: str) -> None:
        """A customer's refused file is announced to the agents (unless configured off)."""
        if (
            not self._config.notify_agents_of_refusals
            or offer.direction is not Direction.CUSTOMER_TO_AGENT
            or session.agent_room is None
        ):
            return
        notice = render.refusal_notice_for_agents(offer.sender_name, offer.filename, reason,
                                                  t=reader(self._config, session, Side.AGENT),
                                                  facts=offer.reason_facts)
        # No io.parcel.offer block: nothing was offered to the agents, this only informs them.
        await self._send_ready(session.agent_room, notice.content(),
                               f"offer-{offer.id}-refused-agents")

    async def _fail(self, offer: Offer, reason: str) -> None:
        if await self._store.offers.transition(offer.id, OfferState.FAILED, reason=reason):
            logger.error("offer %d (session %d): delivery failed: %s", offer.id,
                         offer.session_id, reason)

    # -- messages ----------------------------------------------------------------------------

    async def _send_ready(self, room_id: str, content: dict[str, Any], txn_id: str) -> str:
        await self._rooms.ready(room_id)
        return await self._sender.send(room_id, content, txn_id=txn_id)

    async def _reader(self, offer: Offer, sender: bool) -> Translator:
        """The language of the offer's sender's room (``sender``) or its recipient's, as the
        session has it now (a customer's !language applies to later edits too)."""
        session = await self._store.sessions.get_session(offer.session_id)
        side = sender_side(offer.direction)
        if not sender:
            side = Side.AGENT if side is Side.CUSTOMER else Side.CUSTOMER
        return reader(self._config, session, side)

    def _with_block(self, content: dict[str, Any], offer: Offer) -> dict[str, Any]:
        content[render.OFFER_KEY] = render.offer_block(offer, offer.session_id)
        return content

    async def _post_offer(self, offer: Offer, session: Session) -> None:
        """The card, then the status line (each once), then the seeds start; the panels of
        both rooms wait meanwhile."""
        sender_room, recipient_room = rooms_of(offer, session)
        self.holds.hold(self._card_hold(offer.id), (sender_room, recipient_room))
        if offer.offer_event_id is None:
            card = self._with_block(
                render.offer_card(offer, self._config.reactions.accept,
                                  self._config.reactions.decline,
                                  as_file=self._sent_as_file(offer),
                                  t=await self._reader(offer, sender=False)),
                offer,
            )
            event_id = await self._send_ready(recipient_room, card, f"offer-{offer.id}-card")
            failpoints.hit("card-sent")
            offer = await self._store.offers.update_offer(offer.id, offer_event_id=event_id,
                                             offer_room=recipient_room)
        card_event = offer.offer_event_id
        assert card_event is not None
        # The sender's status line right after the card, before anything else of the offer.
        offer = await self._post_status(offer, sender_room)
        self.holds.release(self._card_hold(offer.id))
        self._start_seeding(offer, recipient_room, card_event)

    async def _post_status(self, offer: Offer, sender_room: str) -> Offer:
        """Post the sender's status line (in the offer's current state) unless it is there."""
        if offer.status_event_id is not None:
            return offer
        # A reply to the sender's upload: Element shows it attached to that file.
        status = render.reply_to(
            self._with_block(render.status_line(offer, t=await self._reader(offer, sender=True)),
                             offer),
            offer.source_event_id)
        event_id = await self._send_ready(sender_room, status, f"offer-{offer.id}-status")
        recorded = await self._store.offers.update_offer(offer.id, status_event_id=event_id,
                                                         status_room=sender_room)
        failpoints.hit("status-sent")  # before the seeds: a restart must still put them out
        return recorded

    async def _finish(self, offer: Offer) -> None:
        """Edit the card and status line to the final state, drop the copy, settle."""
        state = offer.state.value
        if offer.offer_event_id is not None and offer.status_event_id is None:
            # Decided before the status line went out (a crash in between): post it now.
            offer = await self._post_status(offer, offer.source_room)
        # The seed reaction in flight (if any) must be known before the seeds are taken back.
        await self._end_seeding(offer.id)
        if offer.offer_event_id and offer.offer_room:
            decider = (self._rooms.display_name(offer.offer_room, offer.decided_by)
                       if offer.decided_by else None)
            card = self._with_block(
                render.offer_card(offer, self._config.reactions.accept,
                                  self._config.reactions.decline, decider,
                                  as_file=self._sent_as_file(offer),
                                  t=await self._reader(offer, sender=False)),
                offer,
            )
            await self._edit(offer.offer_room, offer.offer_event_id, card,
                             f"offer-{offer.id}-{state}-card")
            await self._remove_seeded_reactions(offer, offer.offer_room)
        if offer.status_event_id and offer.status_room:
            status = self._with_block(
                render.status_line(offer, t=await self._reader(offer, sender=True)), offer)
            await self._edit(offer.status_room, offer.status_event_id, status,
                             f"offer-{offer.id}-{state}-status")
        await self._staging.settle(offer)
        if self._config.media.purge_refused and offer.state is not OfferState.ACCEPTED:
            await self._purge_source(offer)
        await self._store.offers.mark_settled(offer.id, offer.state)
        self._metrics.offer_state(offer.direction, offer.state)

    async def _remove_seeded_reactions(self, offer: Offer, room_id: str) -> None:
        """Redact the bot's own ✅/❌ on a settled card, so it shows only the decision made
        (only the seeds that went out: one not sent before the decision needs nothing)."""
        if await self._removed_from(room_id):
            return  # the card is out of the bot's reach
        for word in ("accept", "decline"):
            reaction = await self._store.outbox.sent_event(f"offer-{offer.id}-react-{word}")
            if reaction is not None:
                await self._sender.redact(room_id, reaction, "the offer is settled",
                                          txn_id=f"offer-{offer.id}-unreact-{word}")

    async def _edit(self, room_id: str, event_id: str, content: dict[str, Any], txn: str) -> None:
        if await self._removed_from(room_id):
            logger.info("not editing %s in %s: the bot was removed from that room", event_id,
                        room_id)
            return
        await self._rooms.ready(room_id)
        await self._sender.edit(room_id, event_id, content, txn_id=txn)

    def _sent_as_file(self, offer: Offer) -> bool:
        """An image that would be in-line but is too large for it (the card says so)."""
        return sent_as_file(offer, self._config.policy.max_image_pixels)

    async def _removed_from(self, room_id: str) -> bool:
        """Whether the bot was removed from this room, so nothing can be posted there."""
        found = await self._store.sessions.session_for_room(room_id)
        if found is None:
            return False
        session, side = found
        return bot_removed_from(session, side)

    async def _purge_source(self, offer: Offer) -> None:
        upload = UploadEvent(json.loads(await self._store.offers.source_content(offer.id)))
        if upload.url and await self._media.purge(upload.url):
            logger.info("offer %d: purged the sender's upload %s", offer.id, upload.url)
