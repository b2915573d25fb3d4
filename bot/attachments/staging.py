"""The recipient's copy of an offered file: uploaded once, recorded, and never left behind.

Staging runs in the offer's own work unit (its lane, ``offer:{id}``): the offer's step
machine (:mod:`bot.attachments.offers`) stages once the card is out, while the offer waits
for its decision (``media.prestage``), or right after a ✅, and settles the copy with the
offer. Nothing here runs on its own: the upload that follows the inspection's download
(:meth:`Staging.follow`, only for files of ``media.follow_download_from`` and more) is a task
owned by the offer's unit, stopped when that unit ends, however it ends; its last byte goes
only once the card is out.

**Never the same copy twice.** An upload whose answer is lost (a crash, a database error
before the answer is recorded, a deposed leader) must not be made again, nor left behind
unknown. So every upload goes to a content URI *reserved first*: ``POST /media/v1/create``
hands out the URI, which is recorded in the offer's row (``copy_reservation``,
``thumbnail_reservation``: the URI, the Content-Type and, for an encrypted room, the AES key
and IV the bytes are encrypted with) *before* the bytes go up with ``PUT /media/v3/upload``.
A retry puts the same bytes (same key, same IV: same ciphertext) to the same URI; if an earlier
attempt got them there, the homeserver answers 409 and the bytes are read back and measured
instead (:meth:`bot.matrix.media.MediaClient.upload`), never uploaded again. Once the copy is
recorded as staged the reservation is cleared; a reservation of an offer that settles
otherwise is deleted (or, without admin rights, closed empty) with it. A homeserver that
grants no reservation (no such endpoint, or the bot's pending reservations at its limit) gets
the plain upload, recorded the moment it returns.

Only the inspected bytes go out: every upload is hashed on the way and compared with the
checked SHA-256; an altered or missing copy fails the offer (a :class:`PermanentError` the
step machine turns into FAILED, told to the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiofiles.os

from bot import failpoints
from bot.attachments import images, redact, sealed
from bot.attachments.delivery import shown_inline
from bot.attachments.events import UploadEvent, sender_side
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.text import safe_filename
from bot.config import Config
from bot.errors import PermanentError
from bot.matrix.media import (
    GrowingCopy,
    MediaClient,
    MediaError,
    Reservation,
    Uploaded,
    upload_content_type,
)
from bot.matrix.rooms import RoomDirectory
from bot.store import Session, Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

COPY = "copy_reservation"
THUMBNAIL = "thumbnail_reservation"


@dataclass(frozen=True)
class _Streamed:
    """A recipient's copy uploaded while the file downloaded: for which room kind, and the
    Content-Type it went up with (both must match the offer's to be its staged copy)."""

    uploaded: Uploaded
    encrypted: bool
    content_type: str
    reserved: bool  # to a reserved URI (recorded in the row), not a plain upload


async def _finish_before_cancel(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even when the caller is cancelled meanwhile; the cancellation
    is raised once it is done (so whatever it recorded is there for the clean-up)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        raise


def thumbnail_uri(image_info: str | None) -> str | None:
    """The content URI of the thumbnail in an offer's recorded image extras, if any."""
    extras = json.loads(image_info) if image_info else {}
    block = extras.get("thumbnail_file")
    uri = block.get("url") if isinstance(block, dict) else extras.get("thumbnail_url")
    return uri if isinstance(uri, str) else None


class Staging:
    """Uploads, records, replaces and deletes the recipient's copy of each offer."""

    def __init__(self, config: Config, store: Store, media: MediaClient,
                 rooms: RoomDirectory) -> None:
        self._config = config
        self._store = store
        self._media = media
        self._rooms = rooms
        self.media_dir = config.data_dir / "media"
        self.media_dir.mkdir(parents=True, exist_ok=True)
        # The upload that follows an inspection's download, per offer: a task of the offer's
        # unit (in memory: after a restart the copy goes up from the local checked copy).
        self._streams: dict[int, tuple[GrowingCopy, asyncio.Task[_Streamed | None]]] = {}

    def paths(self, offer: Offer) -> tuple[Path, Path]:
        """The offer's local checked copy and the part file its download is written to."""
        final = self.media_dir / f"offer-{offer.id}"
        return final, final.with_suffix(".part")

    async def strip_metadata(
        self, path: Path, key: str, mimetype: str | None
    ) -> images.Stripped | None:
        """The checked copy without location and camera data (``policy.strip_metadata``)."""
        if not self._config.policy.strip_metadata or mimetype not in images.STRIPPABLE:
            return None
        return await asyncio.to_thread(images.strip_sealed, path, key, mimetype)

    # -- the upload that follows the download ------------------------------------------------

    def follow(self, offer: Offer, session: Session, upload: UploadEvent) -> GrowingCopy | None:
        """Start uploading the recipient's copy from the download itself (``media.prestage``).

        Sound because the upload can never be complete before the verdict: it reads the
        sealed copy as it is written, and its last byte is held back until the file is
        offered (:class:`~bot.matrix.media.GrowingCopy`); a refused or failed file's upload
        is abandoned, and the homeserver drops a partial upload. Even a complete one is
        referenced by nothing until :meth:`stage` finds it is the inspected bytes (hash,
        room encryption and type). The task belongs to the offer's unit: :meth:`drop_stream`
        ends it.
        """
        if not self._config.media.prestage or upload.url is None:
            return None
        if (offer.declared_size or 0) < self._config.media.follow_download_from:
            # Measured: an upload beside the download slows the card (one Synapse serves
            # both), and below this size the copy goes up after the card well before a
            # person has read it and clicked (media.follow_download_from).
            return None
        if self._config.policy.strip_metadata and offer.declared_mimetype in images.STRIPPABLE:
            return None  # the delivered copy will be a different file (metadata removed)
        recipient_room = session.other_room(sender_side(offer.direction))
        room = self._rooms.room(recipient_room) if recipient_room is not None else None
        if room is None:
            return None  # not synced yet: staged after the check, as usual
        _, part = self.paths(offer)
        encrypt = bool(room.encrypted)
        content_type = upload_content_type(offer.declared_mimetype, encrypt)
        copy = GrowingCopy(hold=True)

        async def follow() -> _Streamed | None:
            try:
                reserved = await self._reservation(offer.id, COPY, content_type, encrypt)
                uploaded = await self._media.upload_following(
                    part, copy, content_type, safe_filename(offer.filename), encrypt=encrypt,
                    reserved=reserved)
            except Exception as exc:  # noqa: BLE001 - only an optimisation: staged later
                logger.debug("offer %d: no staging from the download (%s)", offer.id, exc)
                return None
            return _Streamed(uploaded, encrypt, content_type, reserved is not None)

        self._streams[offer.id] = (copy, asyncio.create_task(follow(),
                                                             name=f"offer-{offer.id}-follow"))
        return copy

    async def drop_stream(self, offer_id: int, why: str) -> None:
        """End the upload that followed the download, if there is one (its copy, if it got
        to the end, stays reserved for :meth:`stage`, or is deleted when it was a plain one)."""
        found = self._streams.pop(offer_id, None)
        if found is None:
            return
        copy, task = found
        copy.fail(MediaError(why))  # stops the upload before its last byte
        if not task.done():
            task.cancel()
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        if isinstance(result, _Streamed) and not result.reserved:
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
        if result.reserved:
            await self._store.offers.update_offer(offer.id, copy_reservation=None)
        logger.info("offer %d: copy staged from the download %s not used (another room "
                    "encryption, type or file)", offer.id, result.uploaded.uri)
        return None

    # -- staging ---------------------------------------------------------------------------

    async def stage(self, offer: Offer, encrypted: bool) -> Offer:
        """Upload the checked copy for a room that is ``encrypted`` (or not), with an image's
        blurhash and thumbnail, and record it as the offer's staged copy; returns the offer
        as recorded. A copy staged earlier for the other kind of room is replaced (and
        deleted, with its thumbnail, where the bot may)."""
        if offer.staged_uri is not None and bool(offer.staged_encrypted) == encrypted:
            await self.drop_stream(offer.id, "staged already")
            return offer
        uploaded = await self._take_stream(offer, encrypted)
        if uploaded is None:
            uploaded = await self._upload_copy(offer, encrypted)
        # The copy may have been fetched again just now (this instance had none).
        current = await self._store.offers.get_offer(offer.id) or offer
        # Made now, while the local copy is there: an image's blurhash and thumbnail.
        extras = await self._image_extras(current, encrypted)
        failpoints.hit("delivery-staged")
        block = uploaded.file_block(current.mimetype)
        recorded = await self._store.offers.update_offer(
            offer.id, staged_uri=uploaded.uri, staged_file=json.dumps(block) if block else None,
            staged_encrypted=int(encrypted), temp_path=None, temp_key=None,
            image_info=json.dumps(extras) if extras else None, copy_reservation=None,
            thumbnail_reservation=None)
        # The local copy has done its job: the staged one is the file from now on.
        for path in (*self.paths(offer), *([Path(current.temp_path)] if current.temp_path
                                           else [])):
            path.unlink(missing_ok=True)
        logger.info("offer %d (session %d): delivery staged as %s%s", offer.id,
                    offer.session_id, uploaded.uri, " (encrypted)" if encrypted else "")
        if current.staged_uri is not None:  # staged before the room's encryption changed
            for replaced in (current.staged_uri, thumbnail_uri(current.image_info)):
                if replaced is not None and replaced != uploaded.uri:
                    purged = await self._media.purge(replaced)
                    logger.info("offer %d: earlier staged %s %s", offer.id, replaced,
                                "deleted" if purged else "dropped, never referenced")
        return recorded

    async def _reservation(self, offer_id: int, column: str, content_type: str | None,
                           encrypt: bool) -> Reservation | None:
        """The URI reserved (and recorded) for this upload: the recorded one if it suits
        the upload (type, encryption), else a new one; None when the homeserver grants none."""
        wanted = upload_content_type(content_type, encrypt)
        current = await self._store.offers.get_offer(offer_id)
        recorded = getattr(current, column) if current is not None else None
        if recorded:
            reserved = Reservation.from_json(recorded)
            if reserved.encrypted == encrypt and reserved.content_type == wanted:
                return reserved
            await self._media.discard(reserved)
            logger.info("offer %d: reservation %s dropped (another type or encryption)",
                        offer_id, reserved.uri)

        async def reserve_and_record() -> Reservation | None:
            granted = await self._media.reserve(wanted, encrypt)
            await self._store.offers.update_offer(
                offer_id, **{column: granted.to_json() if granted is not None else None})
            return granted

        # A decision that stops the staging must not come between the homeserver granting a
        # URI and the row recording it: the URI would be left behind, unknown to the clean-up.
        return await _finish_before_cancel(reserve_and_record())

    async def _upload_copy(self, offer: Offer, encrypt: bool) -> Uploaded:
        """Upload the checked copy (the inspected bytes, or nothing else) to its reserved URI."""
        if offer.temp_path is None and offer.staged_uri is not None:
            offer = await self._copy_back(offer)
        elif offer.temp_path is not None and not await aiofiles.os.path.exists(offer.temp_path):
            # Another instance checked it and died with its disk (or the disk was lost).
            offer = await self._fetch_checked_copy_again(offer)
        if offer.temp_path is None or not await aiofiles.os.path.exists(offer.temp_path):
            raise PermanentError("the checked copy of the file is missing", code="missing")
        reserved = await self._reservation(offer.id, COPY, offer.mimetype, encrypt)
        uploaded = await self._media.upload(
            Path(offer.temp_path), upload_content_type(offer.mimetype, encrypt),
            safe_filename(offer.filename), encrypt=encrypt, sealed_key=offer.temp_key,
            reserved=reserved,
        )
        # Only the inspected bytes (minus their metadata, if removed) may go out; a copy
        # changed on disk is never delivered.
        if uploaded.sha256 != (offer.delivered_sha256 or offer.sha256):
            await self._media.purge(uploaded.uri)
            await self._store.offers.update_offer(offer.id, copy_reservation=None)
            raise PermanentError("the checked copy of the file was altered", code="altered")
        return uploaded

    async def _fetch_checked_copy_again(self, offer: Offer) -> Offer:
        """Download the sender's upload again into this instance's media directory.

        Only the bytes that were inspected may go out: the download must have the inspected
        SHA-256, and a copy without metadata must come out of the same removal with the hash
        recorded for it; otherwise the offer fails rather than deliver something unchecked.
        """
        assert offer.sha256 is not None and offer.size is not None
        final, part = self.paths(offer)
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
            # Made again the way it was made (card numbers hidden, or metadata removed).
            policy = (self._config.policy.customer_to_agent
                      if offer.direction is Direction.CUSTOMER_TO_AGENT
                      else self._config.policy.agent_to_customer)
            cards = await redact.check_file(final, key, offer.mimetype, policy,
                                            self._config.policy.ocr_timeout)
            stripped = cards.copy or await self.strip_metadata(final, key, offer.mimetype)
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
        final, part = self.paths(offer)
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

    async def _image_extras(self, offer: Offer, encrypt: bool) -> dict[str, Any]:
        """For an image shown in-line: its blurhash and (when large) a thumbnail, uploaded like
        the image itself (encrypted in an encrypted room, to a reserved URI). Read from the
        local checked copy."""
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
        expected = hashlib.sha256(shown.thumbnail).hexdigest()
        # Sealed like every local copy: a thumbnail shows the picture too.
        thumb_path = source.with_name(source.name + ".thumbnail")
        sealer = sealed.Sealer()
        await asyncio.to_thread(thumb_path.write_bytes, sealer.update(shown.thumbnail))
        name = f"thumbnail-{safe_filename(offer.filename)}"
        try:
            for _ in range(2):
                reserved = await self._reservation(offer.id, THUMBNAIL, shown.mimetype, encrypt)
                uploaded = await self._media.upload(thumb_path, shown.mimetype, name,
                                                    encrypt=encrypt, sealed_key=sealer.key(),
                                                    reserved=reserved)
                if uploaded.sha256 == expected:
                    break
                # An earlier attempt's thumbnail came out different: replace it.
                await self._media.purge(uploaded.uri)
                await self._store.offers.update_offer(offer.id, thumbnail_reservation=None)
            else:
                raise PermanentError("the thumbnail changed while it was uploaded",
                                     code="altered")
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

    # -- the end ---------------------------------------------------------------------------

    async def settle(self, offer: Offer) -> None:
        """The offer reached its final state: drop the local copies and every reservation;
        the staged copy (and its thumbnail) too unless it was delivered, whose key is then
        in the event only."""
        why = f"the offer was {offer.state.value}"
        await self.drop_stream(offer.id, why)
        final, part = self.paths(offer)
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        if offer.temp_path:
            with contextlib.suppress(FileNotFoundError):  # the copy without metadata
                await aiofiles.os.remove(offer.temp_path)
            await self._store.offers.update_offer(offer.id, temp_path=None, temp_key=None)
        current = await self._store.offers.get_offer(offer.id) or offer
        if current.staged_uri is not None and offer.state is not OfferState.ACCEPTED:
            await self._drop_staged(current, why)
        elif current.staged_file is not None:
            # The key is in the event now.
            await self._store.offers.update_offer(offer.id, staged_file=None)
        for column in (COPY, THUMBNAIL):
            recorded = getattr(current, column)
            if recorded:
                reserved = Reservation.from_json(recorded)
                deleted = await self._media.discard(reserved)
                logger.info("offer %d: reserved %s %s (%s)", offer.id, reserved.uri,
                            "deleted" if deleted else "given up", why)
                await self._store.offers.update_offer(offer.id, **{column: None})

    async def _drop_staged(self, offer: Offer, why: str) -> None:
        """Forget the staged copy and its thumbnail (deleted where the bot may)."""
        assert offer.staged_uri is not None
        for uri in (offer.staged_uri, thumbnail_uri(offer.image_info)):
            if uri is not None:
                purged = await self._media.purge(uri)
                logger.info("offer %d: staged %s %s (%s)", offer.id, uri,
                            "deleted" if purged else "dropped, never referenced", why)
        await self._store.offers.update_offer(offer.id, staged_uri=None, staged_file=None,
                                              staged_encrypted=None, image_info=None)
