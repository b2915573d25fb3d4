"""Delivery: the message that hands an accepted file to the recipient, and sending it once.

The file itself is the staged copy (:mod:`bot.attachments.staging`), uploaded while the offer
waited (``media.prestage``) or right after the ✅; delivering is one event with a transaction
id derived from the offer, so a crash at any point sends it at most once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from bot import failpoints
from bot.attachments.events import sender_side
from bot.attachments.model import Offer
from bot.attachments.policy import image_too_large
from bot.attachments.text import safe_filename
from bot.config import DEFAULT_MAX_IMAGE_PIXELS, Config
from bot.errors import Waiting
from bot.matrix.client import Sender
from bot.matrix.rooms import RoomDirectory
from bot.metrics import Metrics
from bot.store import Session, Store

if TYPE_CHECKING:  # staging builds on the content rules here
    from bot.attachments.staging import Staging

logger = logging.getLogger(__name__)

# Types every Matrix client renders in-line; anything else goes out as m.file.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


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


def sent_as_file(offer: Offer, max_image_pixels: int) -> bool:
    """An image that would be in-line but is too large for it (the card says so)."""
    return (
        offer.mimetype is not None
        and delivery_msgtype(offer.mimetype) == "m.image"
        and not shown_inline(offer, max_image_pixels)
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


def staged_delivery_content(offer: Offer, max_image_pixels: int) -> dict[str, Any]:
    """The delivery of an offer's staged copy, with its image extras and delivered size."""
    block = json.loads(offer.staged_file) if offer.staged_file else None
    content = delivery_content(offer, offer.staged_uri, block, max_image_pixels)
    content["info"].update(json.loads(offer.image_info) if offer.image_info else {})
    if offer.delivered_size is not None:  # metadata removed: the copy is smaller
        content["info"]["size"] = offer.delivered_size
    return content


def rooms_of(offer: Offer, session: Session) -> tuple[str, str]:
    """(sender room, recipient room) of an offer."""
    side = sender_side(offer.direction)
    sender_room = session.room_of(side)
    recipient_room = session.other_room(side)
    if sender_room is None or recipient_room is None:
        # The session's opening (creating the agent room) is still under way: woken when
        # its unit ends.
        raise Waiting(f"session {session.id} has no agent room yet",
                      key=f"open:{session.id}", at_most=30.0)
    return sender_room, recipient_room


class Delivery:
    """Sends an accepted offer's staged copy to the recipient's room, exactly once."""

    def __init__(self, config: Config, store: Store, sender: Sender, rooms: RoomDirectory,
                 staging: Staging, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._sender = sender
        self._rooms = rooms
        self._staging = staging
        self._metrics = metrics

    async def deliver(self, offer: Offer, session: Session) -> None:
        """Send the accepted file, staging its copy first if that is not done (or was done
        for a room whose encryption has changed since). Failures are raised classified."""
        _, recipient_room = rooms_of(offer, session)
        txn_id = f"offer-{offer.id}-deliver"
        already = await self._store.outbox.sent_event(txn_id)
        if already is not None:  # sent before a crash that came before recording it
            await self._store.offers.update_offer(offer.id, delivery_event_id=already)
            return
        room = await self._rooms.ready(recipient_room)
        offer = await self._store.offers.get_offer(offer.id) or offer
        if offer.staged_uri is None or bool(offer.staged_encrypted) != room.encrypted:
            offer = await self._staging.stage(offer, room.encrypted)
        content = staged_delivery_content(offer, self._config.policy.max_image_pixels)
        failpoints.hit("delivery-uploaded")
        event_id = await self._sender.send(recipient_room, content, txn_id=txn_id)
        failpoints.hit("delivery-sent")
        await self._store.offers.update_offer(offer.id, delivery_event_id=event_id)
        since = offer.decided_at or offer.updated_at  # the ✅, if one was recorded
        self._metrics.delivered(offer.size or 0, max(0.0, time.time() - since))
        logger.info("offer %d (session %d): delivered as %s", offer.id, session.id, event_id)
