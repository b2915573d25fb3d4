"""The check of an uploaded file: download it (sealed at rest), inspect, judge, offer or refuse.

Runs as the INSPECTING step of the offer's unit (:mod:`bot.attachments.offers`). The pure
parts live in :mod:`bot.attachments.inspect` (file → facts) and :mod:`bot.attachments.policy`
(facts → verdict); this module does the I/O around them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from bot.attachments import redact, sealed
from bot.attachments.events import UploadEvent
from bot.attachments.mediacrypto import BadEncryptedFile
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.policy import Verdict, evaluate, too_large
from bot.attachments.staging import Staging
from bot.config import Config, DirectionPolicy
from bot.matrix.media import GrowingCopy, MediaClient, MediaError, TooLarge
from bot.metrics import Metrics
from bot.store import Session, Store

logger = logging.getLogger(__name__)


class Checker:
    """Downloads and judges each offer's file; the verdict moves the offer on."""

    def __init__(self, config: Config, store: Store, media: MediaClient, staging: Staging,
                 metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._media = media
        self._staging = staging
        self._metrics = metrics

    def _policy(self, offer: Offer) -> DirectionPolicy:
        if offer.direction is Direction.CUSTOMER_TO_AGENT:
            return self._config.policy.customer_to_agent
        return self._config.policy.agent_to_customer

    async def inspect(self, offer: Offer, session: Session) -> bool:
        """Download, check and judge the file; offered (True), or rejected with the reason.

        The recipient's copy is staged from the download stream as it comes in
        (:meth:`Staging.follow`); unless the file ends up offered, that upload is abandoned
        before its last byte.
        """
        await self._staging.drop_stream(offer.id, "inspecting again")
        upload = UploadEvent(json.loads(await self._store.offers.source_content(offer.id)))
        follow = self._staging.follow(offer, session, upload)
        offered = False
        try:
            offered = await self._check(offer, session, upload, follow)
        finally:
            if not offered:
                await self._staging.drop_stream(offer.id, "the file was not offered")
        return offered

    async def _check(self, offer: Offer, session: Session, upload: UploadEvent,
                     follow: GrowingCopy | None) -> bool:
        """The inspection proper; True when the offer moved to OFFERED."""
        policy = self._policy(offer)
        final, part = self._staging.paths(offer)
        if offer.declared_size is not None and offer.declared_size > policy.max_size:
            await self.reject(offer, too_large(offer.declared_size, policy))
            return False
        try:
            if upload.url is None:
                raise MediaError("the message has no file attached")
            downloaded = await self._media.download(
                upload.url, part, max_bytes=policy.max_size, encrypted_file=upload.encrypted_file,
                seal=True, follow=follow,
            )
        except TooLarge:
            await self.reject(offer, too_large(policy.max_size + 1, policy))
            return False
        except BadEncryptedFile as exc:
            await self.reject(offer, Verdict(False, "bad_encryption", exc.reason))
            return False
        except MediaError as exc:
            # Permanent (gone, refused); a transient failure is raised to be retried.
            await self.reject(offer, Verdict(False, "download_failed", exc.reason))
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
        # Card numbers (policy.card_numbers): hidden in a new copy, or the file refused.
        cards = await redact.check_file(final, downloaded.sealed_key, facts.mimetype, policy,
                                        self._config.policy.ocr_timeout)
        verdict = cards.refusal or verdict
        if not verdict.allowed:
            await self.reject(offer, verdict, mimetype=facts.mimetype, size=facts.size,
                              sha256=facts.sha256)
            return False
        stripped = cards.copy or await self._staging.strip_metadata(
            final, downloaded.sealed_key, facts.mimetype)
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
            redacted=cards.redacted,
            unchecked=cards.unchecked,
        )
        if stripped is not None:
            final.unlink(missing_ok=True)  # the copy without metadata replaces it
        if moved is None:
            final.unlink(missing_ok=True)  # withdrawn or expired while we looked
            if stripped is not None:
                stripped.path.unlink(missing_ok=True)
            return False
        # The copy staged from the download completes only when staging takes it, after the
        # card (nothing of the offer goes before its card).
        if follow is not None and stripped is not None:
            await self._staging.drop_stream(offer.id, "its metadata was removed: another file")
        logger.info("offer %d (session %d): offered, %s, %d bytes, sha256 %s", offer.id,
                    session.id, facts.mimetype, facts.size, facts.sha256)
        if cards.searched:
            logger.info("offer %d (session %d): %d card number(s) %s%s", offer.id, session.id,
                        cards.found, "hidden" if cards.copy else "found",
                        f"; not searched: {cards.unchecked}" if cards.unchecked else "")
        if stripped is not None and cards.copy is None:
            logger.info("offer %d (session %d): metadata removed; checked sha256 %s, "
                        "delivered sha256 %s (%d bytes)", offer.id, session.id,
                        facts.sha256, stripped.sha256, stripped.size)
        return True

    async def reject(self, offer: Offer, verdict: Verdict, **facts: Any) -> None:
        """Refuse the file with the verdict's reason (its local copies deleted)."""
        final, part = self._staging.paths(offer)
        final.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        if verdict.facts is not None:  # the reason as facts, rendered for each reader
            facts["reason_facts"] = verdict.facts.to_json()
        if await self._store.offers.transition(offer.id, OfferState.REJECTED,
                                               reason=verdict.reason, **facts):
            self._metrics.rejected(verdict.code)
            logger.info("offer %d (session %d): rejected (%s): %s", offer.id, offer.session_id,
                        verdict.code, verdict.reason)
