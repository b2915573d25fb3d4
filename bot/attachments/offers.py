"""The offer service: from an upload event to a settled offer, one idempotent step at a time.

Each offer's durable state is its row in the store. :meth:`OfferService.advance` looks at the
row and carries out what the current state still owes (post the card, deliver, edit, clean
up), then marks the state settled. Every message has a transaction id derived from the offer
and the step, so a crash at any point is repaired by running ``advance`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles.os

from bot import failpoints, render
from bot.attachments import images, sealed
from bot.attachments.mediacrypto import BadEncryptedFile
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.policy import Verdict, evaluate, image_too_large, too_large
from bot.attachments.text import safe_filename
from bot.config import DEFAULT_MAX_IMAGE_PIXELS, Config, DirectionPolicy
from bot.errors import PermanentError, TransientError
from bot.matrix.client import Sender
from bot.matrix.media import (
    GrowingCopy,
    MediaClient,
    MediaError,
    TooLarge,
    Uploaded,
    upload_content_type,
)
from bot.matrix.rooms import RoomDirectory
from bot.metrics import Metrics
from bot.sessions.service import bot_removed_from
from bot.store import Session, Side, Store, WorkUnit, offer_lane
from bot.work import Scheduler

logger = logging.getLogger(__name__)

FILE_MSGTYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})
# Types every Matrix client renders in-line; anything else goes out as m.file.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def normalize_key(key: object) -> str:
    """A reaction key without emoji variation selectors, for comparison."""
    return str(key).replace("\ufe0f", "").strip() if isinstance(key, str) else ""


def direction_from(side: Side) -> Direction:
    """The direction of a file sent from ``side``'s room."""
    return Direction.CUSTOMER_TO_AGENT if side is Side.CUSTOMER else Direction.AGENT_TO_CUSTOMER


def sender_side(direction: Direction) -> Side:
    """The side that sent a file travelling in ``direction``."""
    return Side.CUSTOMER if direction is Direction.CUSTOMER_TO_AGENT else Side.AGENT


def delivery_msgtype(mimetype: str) -> str:
    """The msgtype under which the accepted file is delivered."""
    if mimetype in INLINE_IMAGE_TYPES:
        return "m.image"
    if mimetype.startswith("video/"):
        return "m.video"
    if mimetype.startswith("audio/"):
        return "m.audio"
    return "m.file"


def shown_inline(offer: Offer, max_image_pixels: int) -> bool:
    """Whether the accepted file goes out as an in-line image (never a pixel bomb)."""
    return (
        offer.mimetype is not None
        and delivery_msgtype(offer.mimetype) == "m.image"
        and not image_too_large(offer.mimetype, offer.width, offer.height, max_image_pixels)
    )


def delivery_content(
    offer: Offer,
    url: str | None,
    file_block: dict[str, Any] | None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict:
    """The message that hands the accepted file to the recipient.

    An image over ``max_image_pixels`` (or of unreadable size) goes out as m.file: a client
    shows an m.image in-line and would decode all of it.
    """
    assert offer.mimetype is not None and offer.size is not None
    name = safe_filename(offer.filename)
    info: dict[str, Any] = {"mimetype": offer.mimetype, "size": offer.size}
    msgtype = delivery_msgtype(offer.mimetype)
    if msgtype == "m.image" and not shown_inline(offer, max_image_pixels):
        msgtype = "m.file"
    if msgtype == "m.image" and offer.width and offer.height:
        info["w"], info["h"] = offer.width, offer.height
    content: dict[str, Any] = {
        "msgtype": msgtype,
        "body": name,
        "filename": name,
        "info": info,
        "m.mentions": {},
    }
    if file_block is not None:
        content["file"] = file_block
    else:
        content["url"] = url
    return content


class UploadEvent:
    """The parts of a file message Parcel needs, read defensively from untrusted content."""

    def __init__(self, content: dict[str, Any]) -> None:
        self.msgtype = str(content.get("msgtype"))
        info = content.get("info")
        info = info if isinstance(info, dict) else {}
        filename = content.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            filename = content.get("body")
        self.filename = filename if isinstance(filename, str) else ""
        mimetype = info.get("mimetype")
        self.declared_mimetype = mimetype if isinstance(mimetype, str) else None
        size = info.get("size")
        self.declared_size = size if isinstance(size, int) and not isinstance(size, bool) else None
        file_block = content.get("file")
        self.encrypted_file = file_block if isinstance(file_block, dict) else None
        url = self.encrypted_file.get("url") if self.encrypted_file else content.get("url")
        self.url = url if isinstance(url, str) else None


async def _nothing_changed(session_id: int) -> None:
    """The default ``on_change``: nobody is told."""


@dataclass(frozen=True)
class _Streamed:
    """A recipient's copy uploaded while the file downloaded: for which room kind, and the
    Content-Type it went up with (both must match the offer's to be its staged copy)."""

    uploaded: Uploaded
    encrypted: bool
    content_type: str


class OfferService:
    """Turns uploads into offers, applies decisions, delivers, and keeps the log."""

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
        work.register("offer", self._run_unit, self._give_up)
        work.register("stage", self._run_stage, self._give_up)
        work.register("reaction", self._run_reaction)
        self._media_dir = config.data_dir / "media"
        self._media_dir.mkdir(parents=True, exist_ok=True)
        # Told the session id after every step, so the activity panels follow (set by the
        # composition root).
        self.on_change: Callable[[int], Awaitable[None]] = _nothing_changed
        self._accept_key = normalize_key(config.reactions.accept)
        self._decline_key = normalize_key(config.reactions.decline)
        # Staging uploads that follow an inspection's download (in memory: after a restart the
        # stage unit uploads from the local copy as before).
        self._streams: dict[int, tuple[GrowingCopy, asyncio.Task[_Streamed | None]]] = {}

    # -- inbound ----------------------------------------------------------------------------

    async def on_upload(
        self, session: Session, side: Side, event_id: str, sender: str, sender_name: str,
        content: dict[str, Any],
    ) -> Offer:
        """Record an upload as a new offer (durably, before anything else) and start on it."""
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
        self, session: Session, side: Side, number: int, actor: str, accept: bool
    ) -> tuple[Offer | None, str | None]:
        """Apply a decision on this chat's offer #``number`` from ``side``'s room.

        Returns (offer, why-not) for command replies. Numbers count per chat, so a number from
        another chat finds nothing here.
        """
        offer = await self._store.offers.offer_by_number(session.id, number)
        if offer is None:
            return None, f"There is no offer #{number} waiting for a decision in this chat."
        if sender_side(offer.direction) is side:
            recipient = render.side_name(offer.direction, recipient=True)
            return None, (f"Offer #{number} was sent from this side of the chat; only "
                          f"{recipient} can accept or decline it.")
        if offer.state is OfferState.INSPECTING:
            return offer, f"Offer #{number} is still being checked; try again in a moment."
        target = OfferState.ACCEPTED if accept else OfferState.DECLINED
        decided = await self._store.offers.transition(offer.id, target, actor=actor)
        if decided is None:
            current = await self._store.offers.get_offer(offer.id)
            state = render.STATE_WORDS[current.state] if current else "gone"
            return current, f"Offer #{number} was already {state}."
        logger.info("offer %d (session %d): %s by %s", offer.id, offer.session_id,
                    target.value, actor)
        self._metrics.decided(max(0.0, decided.updated_at - offer.updated_at))
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
            await self.schedule(offer.id)

    async def expire_session(self, session_id: int, reason: str) -> None:
        """Expire every pending offer of a session; their edits follow as their own work."""
        for offer in await self._store.offers.session_offers(session_id):
            if offer.is_pending and await self._store.offers.transition(
                    offer.id, OfferState.EXPIRED, reason=reason):
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

    async def advance(self, offer_id: int) -> None:
        """Carry out what the offer's state owes, step by step, until it is settled.

        Failures are raised for the scheduler: a transient one runs this again later, a
        permanent one ends in :meth:`_give_up`. Every step is idempotent.
        """
        while True:
            offer = await self._store.offers.get_offer(offer_id)
            if offer is None or await self._store.offers.is_settled(offer_id):
                return
            if not await self._step(offer):
                return  # waiting for other work (the staged copy), which schedules it again

    async def _give_up(self, unit: WorkUnit, error: PermanentError) -> None:
        """A step failed for good: the offer fails with the cause, and its sender is told."""
        offer = await self._store.offers.get_offer(unit.payload["offer"])
        if offer is None:
            return
        cause = render.failure_cause(error.code, error.reason)
        if offer.state is OfferState.INSPECTING:
            await self._reject(offer, Verdict(False, "download_failed", cause))
        elif offer.state in (OfferState.OFFERED, OfferState.ACCEPTED):
            await self._fail(offer, cause)
        else:
            # Even its final messages cannot be posted: nothing more can be done for it.
            logger.error("offer %d (session %d): the %s messages could not be posted: %s",
                         offer.id, offer.session_id, offer.state.value, cause)
            await self._store.offers.mark_settled(offer.id, offer.state)
            return
        await self.schedule(offer.id)

    async def _step(self, offer: Offer) -> bool:
        """Carry out the current state's next step; False when it must wait for other work."""
        session = await self._store.sessions.get_session(offer.session_id)
        if offer.state is OfferState.INSPECTING:
            await self._inspect(offer, session)
        elif offer.state is OfferState.OFFERED:
            await self._post_offer(offer, session)
            await self._store.offers.mark_settled(offer.id, OfferState.OFFERED)
            self._metrics.offer_state(offer.direction, OfferState.OFFERED)
        elif offer.state is OfferState.ACCEPTED:
            if offer.delivery_event_id is None:
                if not await self._deliver(offer, session):
                    return False
                offer = await self._store.offers.get_offer(offer.id) or offer
                if offer.state is not OfferState.ACCEPTED:
                    return True  # delivery failed for good: the FAILED state has its own step
            await self._finish(offer)
        elif offer.state is OfferState.REJECTED:
            reason = offer.reason or "it was refused"
            notice = render.rejection_notice(offer.filename, reason)
            content = render.reply_to(self._with_block(notice.content(), offer),
                                      offer.source_event_id)
            await self._send_ready(offer.source_room, content, f"offer-{offer.id}-rejected")
            await self._tell_agents_of_refusal(offer, session, reason)
            await self._finish(offer)
        elif offer.state is OfferState.FAILED:
            # The sender first: they are the one waiting, and their room may still work.
            notice = render.offer_failed(offer.filename, offer.reason or "unknown error",
                                         accepted=offer.decided_by is not None)
            content = self._with_block(notice.content(), offer)
            await self._send_ready(offer.source_room, content, f"offer-{offer.id}-failed")
            await self._finish(offer)
        else:
            await self._finish(offer)
        await self.on_change(offer.session_id)
        return True

    async def _tell_agents_of_refusal(self, offer: Offer, session: Session, reason: str) -> None:
        """A customer's refused file is announced to the agents (unless configured off)."""
        if (
            not self._config.notify_agents_of_refusals
            or offer.direction is not Direction.CUSTOMER_TO_AGENT
            or session.agent_room is None
        ):
            return
        notice = render.refusal_notice_for_agents(offer.sender_name, offer.filename, reason)
        # No io.parcel.offer block: nothing was offered to the agents, this only informs them.
        await self._send_ready(session.agent_room, notice.content(),
                               f"offer-{offer.id}-refused-agents")

    def _paths(self, offer: Offer) -> tuple[Path, Path]:
        final = self._media_dir / f"offer-{offer.id}"
        return final, final.with_suffix(".part")

    def _policy(self, offer: Offer) -> DirectionPolicy:
        if offer.direction is Direction.CUSTOMER_TO_AGENT:
            return self._config.policy.customer_to_agent
        return self._config.policy.agent_to_customer

    async def _inspect(self, offer: Offer, session: Session) -> None:
        """Download, check and judge the file; offered, or rejected with the reason.

        The recipient's copy is staged from the download stream as it comes in (see
        :meth:`_follow_download`); unless the file ends up offered, that upload is abandoned
        before its last byte.
        """
        await self._drop_stream(offer.id, "inspecting again")
        upload = UploadEvent(json.loads(await self._store.offers.source_content(offer.id)))
        follow = self._follow_download(offer, session, upload)
        offered = False
        try:
            offered = await self._check(offer, session, upload, follow)
        finally:
            if not offered:
                await self._drop_stream(offer.id, "the file was not offered")

    def _follow_download(self, offer: Offer, session: Session,
                         upload: UploadEvent) -> GrowingCopy | None:
        """Start uploading the recipient's copy from the download itself (``media.prestage``).

        Sound because the upload can never be complete before the verdict: it reads the
        sealed copy as it is written, and its last byte is held back until the file is
        offered (:class:`~bot.matrix.media.GrowingCopy`); a refused or failed file's upload
        is abandoned, and the homeserver drops a partial upload. Even a complete one is
        referenced by nothing until the stage unit finds it is the inspected bytes (hash,
        room encryption and type checked in :meth:`_take_stream`).
        """
        if not self._config.media.prestage or upload.url is None:
            return None
        if self._config.policy.strip_metadata and offer.declared_mimetype in images.STRIPPABLE:
            return None  # the delivered copy will be a different file (metadata removed)
        side = sender_side(offer.direction)
        recipient_room = session.other_room(side)
        room = self._rooms.room(recipient_room) if recipient_room is not None else None
        if room is None:
            return None  # not synced yet: staged after the check, as usual
        _, part = self._paths(offer)
        encrypt = bool(room.encrypted)
        content_type = upload_content_type(offer.declared_mimetype, encrypt)
        copy = GrowingCopy(hold=True)

        async def follow() -> _Streamed | None:
            try:
                uploaded = await self._media.upload_following(
                    part, copy, content_type, safe_filename(offer.filename), encrypt=encrypt)
            except Exception as exc:  # noqa: BLE001 - only an optimisation: staged later
                logger.debug("offer %d: no staging from the download (%s)", offer.id, exc)
                return None
            return _Streamed(uploaded, encrypt, content_type)

        self._streams[offer.id] = (copy, asyncio.create_task(follow(),
                                                             name=f"offer-{offer.id}-follow"))
        return copy

    async def _drop_stream(self, offer_id: int, why: str) -> None:
        """Abandon the upload that followed the download (deleted if it got to the end)."""
        found = self._streams.pop(offer_id, None)
        if found is None:
            return
        copy, task = found
        copy.fail(MediaError(why))  # stops the upload before its last byte
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(result, _Streamed):
            purged = await self._media.purge(result.uploaded.uri)
            logger.info("offer %d: copy staged from the download %s %s (%s)", offer_id,
                        result.uploaded.uri, "deleted" if purged else "dropped, never referenced",
                        why)

    async def _take_stream(self, offer: Offer, encrypted: bool) -> Uploaded | None:
        """The copy staged from the download, if it is the recipient's copy of this offer."""
        found = self._streams.pop(offer.id, None)
        if found is None:
            return None
        copy, task = found
        # Offered (this runs only then), so the held-back end may go; what arrives is still
        # checked against the inspected bytes below.
        copy.release()
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if not isinstance(result, _Streamed):
            return None
        expected_type = upload_content_type(offer.mimetype, encrypted)
        if (result.uploaded.sha256 == (offer.delivered_sha256 or offer.sha256)
                and result.encrypted == encrypted and result.content_type == expected_type):
            return result.uploaded
        await self._media.purge(result.uploaded.uri)
        logger.info("offer %d: copy staged from the download %s not used (another room "
                    "encryption, type or file)", offer.id, result.uploaded.uri)
        return None

    async def _check(self, offer: Offer, session: Session, upload: UploadEvent,
                     follow: GrowingCopy | None) -> bool:
        """The inspection proper; True when the offer moved to OFFERED."""
        policy = self._policy(offer)
        final, part = self._paths(offer)
        if offer.declared_size is not None and offer.declared_size > policy.max_size:
            await self._reject(offer, too_large(offer.declared_size, policy))
            return False
        try:
            if upload.url is None:
                raise MediaError("the message has no file attached")
            downloaded = await self._media.download(
                upload.url, part, max_bytes=policy.max_size, encrypted_file=upload.encrypted_file,
                seal=True, follow=follow,
            )
        except TooLarge:
            await self._reject(offer, too_large(policy.max_size + 1, policy))
            return False
        except BadEncryptedFile as exc:
            await self._reject(offer, Verdict(False, "bad_encryption", exc.reason))
            return False
        except MediaError as exc:
            # Permanent (gone, refused); a transient failure is raised to be retried.
            await self._reject(offer, Verdict(False, "download_failed", exc.reason))
            return False
        part.replace(final)
        assert downloaded.sealed_key is not None
        facts = await asyncio.to_thread(sealed.inspect, final, downloaded.sealed_key,
                                        downloaded.sha256)
        reject_over = (self._config.policy.max_image_pixels
                       if self._config.policy.large_images == "reject" else None)
        verdict = evaluate(facts, offer.filename, offer.declared_mimetype, policy, reject_over)
        scanned = False
        if verdict.allowed and self._config.policy.scanner is not None:
            result = await sealed.scan(final, downloaded.sealed_key, self._config.policy.scanner)
            logger.info("offer %d (session %d): scanner says %s", offer.id, session.id,
                        result.detail)
            verdict, scanned = result.verdict, result.scanned
        if not verdict.allowed:
            await self._reject(offer, verdict, mimetype=facts.mimetype, size=facts.size,
                               sha256=facts.sha256)
            return False
        stripped = await self._strip_metadata(final, downloaded.sealed_key, facts.mimetype)
        moved = await self._store.offers.transition(
            offer.id,
            OfferState.OFFERED,
            temp_path=str(stripped.path if stripped else final),
            temp_key=stripped.key if stripped else downloaded.sealed_key,
            delivered_sha256=stripped.sha256 if stripped else None,
            delivered_size=stripped.size if stripped else None,
            mimetype=facts.mimetype,
            size=facts.size,
            sha256=facts.sha256,
            width=facts.width,
            height=facts.height,
            scanned=int(scanned),
        )
        if stripped is not None:
            final.unlink(missing_ok=True)  # the copy without metadata replaces it
        if moved is None:
            final.unlink(missing_ok=True)  # withdrawn or expired while we looked
            if stripped is not None:
                stripped.path.unlink(missing_ok=True)
            return False
        if follow is not None and stripped is None:
            follow.release()  # offered: the copy staged from the download may complete
        elif follow is not None:
            await self._drop_stream(offer.id, "its metadata was removed: another file")
        await self._stage(moved)  # right away, beside posting the card
        logger.info("offer %d (session %d): offered, %s, %d bytes, sha256 %s", offer.id,
                    session.id, facts.mimetype, facts.size, facts.sha256)
        if stripped is not None:
            logger.info("offer %d (session %d): metadata removed; checked sha256 %s, "
                        "delivered sha256 %s (%d bytes)", offer.id, session.id,
                        facts.sha256, stripped.sha256, stripped.size)
        return True

    async def _strip_metadata(
        self, path: Path, key: str, mimetype: str | None
    ) -> images.Stripped | None:
        """The checked copy without location and camera data (``policy.strip_metadata``)."""
        if not self._config.policy.strip_metadata or mimetype not in images.STRIPPABLE:
            return None
        return await asyncio.to_thread(images.strip_sealed, path, key, mimetype)

    async def _reject(self, offer: Offer, verdict: Verdict, **facts: Any) -> None:
        final, part = self._paths(offer)
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        if await self._store.offers.transition(offer.id, OfferState.REJECTED, reason=verdict.reason,
                                  **facts):
            self._metrics.rejected(verdict.code)
            logger.info("offer %d (session %d): rejected (%s): %s", offer.id, offer.session_id,
                        verdict.code, verdict.reason)

    def _rooms_of(self, offer: Offer, session: Session) -> tuple[str, str]:
        """(sender room, recipient room) of an offer."""
        side = sender_side(offer.direction)
        sender_room = session.room_of(side)
        recipient_room = session.other_room(side)
        if sender_room is None or recipient_room is None:
            # The session's opening (creating the agent room) is still under way.
            raise TransientError(f"session {session.id} has no agent room yet", retry_after=1.0)
        return sender_room, recipient_room

    async def _send_ready(self, room_id: str, content: dict[str, Any], txn_id: str) -> str:
        await self._rooms.ready(room_id)
        return await self._sender.send(room_id, content, txn_id=txn_id)

    def _with_block(self, content: dict[str, Any], offer: Offer) -> dict[str, Any]:
        content[render.OFFER_KEY] = render.offer_block(offer, offer.session_id)
        return content

    async def _post_offer(self, offer: Offer, session: Session) -> None:
        sender_room, recipient_room = self._rooms_of(offer, session)
        if offer.offer_event_id is None:
            card = self._with_block(
                render.offer_card(offer, self._config.reactions.accept,
                                  self._config.reactions.decline,
                                  as_file=self._sent_as_file(offer)),
                offer,
            )
            event_id = await self._send_ready(recipient_room, card, f"offer-{offer.id}-card")
            failpoints.hit("card-sent")
            offer = await self._store.offers.update_offer(offer.id, offer_event_id=event_id,
                                             offer_room=recipient_room)
        card_event = offer.offer_event_id
        assert card_event is not None

        async def seed_reactions() -> None:
            for word, key in (("accept", self._config.reactions.accept),
                              ("decline", self._config.reactions.decline)):
                await self._sender.react(recipient_room, card_event, key,
                                         txn_id=f"offer-{offer.id}-react-{word}")

        # The two rooms are independent: both at once, so a quick decision waits less.
        results = await asyncio.gather(seed_reactions(), self._post_status(offer, sender_room),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _post_status(self, offer: Offer, sender_room: str) -> Offer:
        """Post the sender's status line (in the offer's current state) unless it is there."""
        if offer.status_event_id is not None:
            return offer
        # A reply to the sender's upload: Element shows it attached to that file.
        status = render.reply_to(self._with_block(render.status_line(offer), offer),
                                 offer.source_event_id)
        event_id = await self._send_ready(sender_room, status, f"offer-{offer.id}-status")
        return await self._store.offers.update_offer(offer.id, status_event_id=event_id,
                                        status_room=sender_room)

    async def _stage(self, offer: Offer) -> None:
        """Queue uploading the recipient's copy of an offered file (with media.prestage)."""
        if self._config.media.prestage:
            await self._work.submit("stage", f"stage:{offer.id}", {"offer": offer.id},
                                    lane=f"stage:{offer.id}")

    async def _run_stage(self, unit: WorkUnit) -> None:
        """Upload the checked copy for the recipient's room while the offer waits."""
        offer = await self._store.offers.get_offer(unit.payload["offer"])
        if offer is None or offer.state not in (OfferState.OFFERED, OfferState.ACCEPTED) \
                or offer.delivery_event_id is not None:
            await self._drop_stream(unit.payload["offer"], "staging has no purpose any more")
            return  # decided against, or delivered: staging has no purpose any more
        session = await self._store.sessions.get_session(offer.session_id)
        _, recipient_room = self._rooms_of(offer, session)
        room = await self._rooms.ready(recipient_room)
        replaced = offer.staged_uri
        if replaced is not None and bool(offer.staged_encrypted) == room.encrypted:
            await self._drop_stream(offer.id, "staged already")
            if offer.state is OfferState.ACCEPTED:
                await self.schedule(offer.id)  # staged already: the waiting delivery goes on
            return
        uploaded = await self._take_stream(offer, room.encrypted)
        if uploaded is None:
            uploaded = await self._upload_copy(offer, room.encrypted)
        if uploaded is None:
            return
        failpoints.hit("delivery-staged")
        current = await self._store.offers.get_offer(offer.id)
        if current is None or current.state not in (OfferState.OFFERED, OfferState.ACCEPTED):
            # Settled while uploading: this copy must not outlive the offer.
            await self._media.purge(uploaded.uri)
            return
        block = uploaded.file_block(offer.mimetype)
        # Made now, while the local copy is there: an image's blurhash and thumbnail.
        extras = await self._image_extras(current, room.encrypted)
        await self._store.offers.update_offer(offer.id, staged_uri=uploaded.uri,
                                 staged_file=json.dumps(block) if block else None,
                                 staged_encrypted=int(room.encrypted), temp_path=None,
                                 temp_key=None, image_info=json.dumps(extras) if extras else None)
        # The local copy has done its job: the staged one is the file from now on.
        for path in (*self._paths(offer), *([Path(current.temp_path)] if current.temp_path
                                            else [])):
            path.unlink(missing_ok=True)
        logger.info("offer %d (session %d): delivery staged as %s%s", offer.id, session.id,
                    uploaded.uri, " (encrypted)" if room.encrypted else "")
        if replaced is not None:  # staged before the room's encryption changed
            purged = await self._media.purge(replaced)
            logger.info("offer %d: earlier staged copy %s %s", offer.id, replaced,
                        "deleted" if purged else "dropped, never referenced")
        if current.state is OfferState.ACCEPTED:
            await self.schedule(offer.id)  # a ✅ that came first waits for this

    async def _drop_staged(self, offer: Offer, why: str) -> None:
        """Forget the staged copy (deleted from the media repository where the bot may)."""
        assert offer.staged_uri is not None
        purged = await self._media.purge(offer.staged_uri)
        logger.info("offer %d: staged copy %s %s (%s)", offer.id, offer.staged_uri,
                    "deleted" if purged else "dropped, never referenced", why)
        await self._store.offers.update_offer(offer.id, staged_uri=None, staged_file=None,
                                 staged_encrypted=None)

    async def _upload_copy(self, offer: Offer, encrypt: bool) -> Uploaded | None:
        """Upload the checked copy (the inspected bytes, or nothing); None when it is gone."""
        if offer.temp_path is None and offer.staged_uri is not None:
            offer = await self._copy_back(offer)
        elif offer.temp_path is not None and not await aiofiles.os.path.exists(offer.temp_path):
            # Another instance checked it and died with its disk (or the disk was lost).
            offer = await self._fetch_checked_copy_again(offer)
        if offer.temp_path is None or not await aiofiles.os.path.exists(offer.temp_path):
            await self._fail(offer, "the checked copy of the file is missing")
            return None
        uploaded = await self._media.upload(
            Path(offer.temp_path), upload_content_type(offer.mimetype, encrypt),
            safe_filename(offer.filename), encrypt=encrypt, sealed_key=offer.temp_key,
        )
        # Only the inspected bytes (minus their metadata, if removed) may go out; a copy
        # changed on disk is never delivered.
        if uploaded.sha256 != (offer.delivered_sha256 or offer.sha256):
            await self._media.purge(uploaded.uri)
            await self._fail(offer, "the checked copy of the file was altered")
            return None
        return uploaded

    async def _fetch_checked_copy_again(self, offer: Offer) -> Offer:
        """Download the sender's upload again into this instance's media directory.

        Only the bytes that were inspected may go out: the download must have the inspected
        SHA-256, and a copy without metadata must come out of the same removal with the hash
        recorded for it; otherwise the offer fails rather than deliver something unchecked.
        """
        assert offer.sha256 is not None and offer.size is not None
        final, part = self._paths(offer)
        upload = UploadEvent(json.loads(await self._store.offers.source_content(offer.id)))
        if upload.url is None:
            raise PermanentError("the sender's message has no file any more", code="missing")
        logger.warning("offer %d: its checked copy %s is not on this instance's disk; fetching "
                       "the sender's upload again", offer.id, offer.temp_path)
        try:
            fetched = await self._media.download(upload.url, part, max_bytes=offer.size,
                                                 encrypted_file=upload.encrypted_file, seal=True)
        except MediaError as exc:  # gone or refused for good; transient ones are raised
            raise PermanentError(f"the sender's upload cannot be fetched again: {exc.reason}",
                                 code="missing") from exc
        if fetched.sha256 != offer.sha256:
            part.unlink(missing_ok=True)
            raise PermanentError("the sender's upload is not the inspected file any more",
                                 code="altered")
        part.replace(final)
        assert fetched.sealed_key is not None
        path, key = final, fetched.sealed_key
        if offer.delivered_sha256 is not None:
            stripped = await self._strip_metadata(final, key, offer.mimetype)
            if stripped is None or stripped.sha256 != offer.delivered_sha256:
                final.unlink(missing_ok=True)
                if stripped is not None:
                    stripped.path.unlink(missing_ok=True)
                raise PermanentError("the copy without metadata came out different this time",
                                     code="altered")
            final.unlink(missing_ok=True)
            path, key = stripped.path, stripped.key
        return await self._store.offers.update_offer(offer.id, temp_path=str(path),
                                                     temp_key=key)

    async def _copy_back(self, offer: Offer) -> Offer:
        """Fetch the staged copy back as the local checked copy (to stage it again, encrypted
        differently); it must still be the inspected bytes."""
        assert offer.staged_uri is not None and offer.size is not None
        final, part = self._paths(offer)
        block = json.loads(offer.staged_file) if offer.staged_file else None
        fetched = await self._media.download(offer.staged_uri, part,
                                             max_bytes=offer.delivered_size or offer.size,
                                             encrypted_file=block, seal=True)
        if fetched.sha256 != (offer.delivered_sha256 or offer.sha256):
            part.unlink(missing_ok=True)
            raise PermanentError("the staged copy of the file is not the inspected file",
                                 code="altered")
        part.replace(final)
        return await self._store.offers.update_offer(offer.id, temp_path=str(final),
                                        temp_key=fetched.sealed_key)

    async def _deliver(self, offer: Offer, session: Session) -> bool:
        """Send the accepted file; False while it waits for its staged copy."""
        _, recipient_room = self._rooms_of(offer, session)
        txn_id = f"offer-{offer.id}-deliver"
        already = await self._store.outbox.sent_event(txn_id)
        if already is not None:  # sent before a crash that came before recording it
            await self._store.offers.update_offer(offer.id, delivery_event_id=already)
            return True
        room = await self._rooms.ready(recipient_room)
        # Staging may have finished meanwhile.
        offer = await self._store.offers.get_offer(offer.id) or offer
        if self._config.media.prestage:
            if offer.staged_uri is None or bool(offer.staged_encrypted) != room.encrypted:
                # (Again, for a room whose encryption changed): it calls back.
                await self._stage(offer)
                return False
            uri = offer.staged_uri
            block = json.loads(offer.staged_file) if offer.staged_file else None
            extras = json.loads(offer.image_info) if offer.image_info else {}
        else:
            uploaded = await self._upload_copy(offer, room.encrypted)
            if uploaded is None:
                return True
            uri, block = uploaded.uri, uploaded.file_block(offer.mimetype)
            # The copy may have been fetched again just now (this instance had none).
            offer = await self._store.offers.get_offer(offer.id) or offer
            extras = await self._image_extras(offer, room.encrypted)
        content = delivery_content(offer, uri, block, self._config.policy.max_image_pixels)
        content["info"].update(extras)
        if offer.delivered_size is not None:  # metadata removed: the copy is smaller
            content["info"]["size"] = offer.delivered_size
        failpoints.hit("delivery-uploaded")
        event_id = await self._sender.send(recipient_room, content, txn_id=txn_id)
        failpoints.hit("delivery-sent")
        await self._store.offers.update_offer(offer.id, delivery_event_id=event_id)
        self._metrics.delivered(offer.size or 0, max(0.0, time.time() - offer.updated_at))
        logger.info("offer %d (session %d): delivered as %s", offer.id, session.id, event_id)
        return True

    async def _image_extras(self, offer: Offer, encrypt: bool) -> dict[str, Any]:
        """For an image shown in-line: its blurhash and (when large) a thumbnail, uploaded like
        the image itself (encrypted in an encrypted room). Read from the local checked copy."""
        extras: dict[str, Any] = {}
        if (
            not shown_inline(offer, self._config.policy.max_image_pixels)
            or offer.temp_path is None
            or offer.temp_key is None
        ):
            return extras
        source = Path(offer.temp_path)
        shown = await asyncio.to_thread(images.sealed_preview, source, offer.temp_key)
        if shown.blurhash:
            extras["xyz.amorgan.blurhash"] = shown.blurhash
        if shown.thumbnail is None or shown.mimetype is None:
            return extras
        # Sealed like every local copy: a thumbnail shows the picture too.
        thumb_path = source.with_name(source.name + ".thumbnail")
        sealer = sealed.Sealer()
        await asyncio.to_thread(thumb_path.write_bytes, sealer.update(shown.thumbnail))
        try:
            uploaded = await self._media.upload(
                thumb_path, shown.mimetype, f"thumbnail-{safe_filename(offer.filename)}",
                encrypt=encrypt, sealed_key=sealer.key(),
            )
        finally:
            thumb_path.unlink(missing_ok=True)
        block = uploaded.file_block(shown.mimetype)
        if block is not None:
            extras["thumbnail_file"] = block
        else:
            extras["thumbnail_url"] = uploaded.uri
        extras["thumbnail_info"] = {"w": shown.width, "h": shown.height,
                                    "mimetype": shown.mimetype, "size": len(shown.thumbnail)}
        return extras

    async def _fail(self, offer: Offer, reason: str) -> None:
        if await self._store.offers.transition(offer.id, OfferState.FAILED, reason=reason):
            logger.error("offer %d (session %d): delivery failed: %s", offer.id,
                         offer.session_id, reason)

    async def _finish(self, offer: Offer) -> None:
        """Edit the card and status line to the final state, drop the copy, settle."""
        state = offer.state.value
        if offer.offer_event_id is not None and offer.status_event_id is None:
            # Decided before the status line went out (a crash in between): post it now.
            offer = await self._post_status(offer, offer.source_room)
        if offer.offer_event_id and offer.offer_room:
            decider = (self._rooms.display_name(offer.offer_room, offer.decided_by)
                       if offer.decided_by else None)
            card = self._with_block(
                render.offer_card(offer, self._config.reactions.accept,
                                  self._config.reactions.decline, decider,
                                  as_file=self._sent_as_file(offer)),
                offer,
            )
            await self._edit(offer.offer_room, offer.offer_event_id, card,
                             f"offer-{offer.id}-{state}-card")
            await self._remove_seeded_reactions(offer, offer.offer_room)
        if offer.status_event_id and offer.status_room:
            status = self._with_block(render.status_line(offer), offer)
            await self._edit(offer.status_room, offer.status_event_id, status,
                             f"offer-{offer.id}-{state}-status")
        final, part = self._paths(offer)
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        if offer.temp_path:
            with contextlib.suppress(FileNotFoundError):  # the copy without metadata
                await aiofiles.os.remove(offer.temp_path)
            await self._store.offers.update_offer(offer.id, temp_path=None, temp_key=None)
        await self._drop_stream(offer.id, f"the offer was {offer.state.value}")
        current = await self._store.offers.get_offer(offer.id) or offer
        if current.staged_uri is not None and offer.state is not OfferState.ACCEPTED:
            await self._drop_staged(current, f"the offer was {offer.state.value}")
        elif current.staged_file is not None:
            # The key is in the event now.
            await self._store.offers.update_offer(offer.id, staged_file=None)
        if self._config.media.purge_refused and offer.state is not OfferState.ACCEPTED:
            await self._purge_source(offer)
        await self._store.offers.mark_settled(offer.id, offer.state)
        self._metrics.offer_state(offer.direction, offer.state)

    async def _remove_seeded_reactions(self, offer: Offer, room_id: str) -> None:
        """Redact the bot's own ✅/❌ on a settled card, so it shows only the decision made."""
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
        return (
            offer.mimetype is not None
            and delivery_msgtype(offer.mimetype) == "m.image"
            and not shown_inline(offer, self._config.policy.max_image_pixels)
        )

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
