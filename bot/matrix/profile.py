"""The bot's profile: the display name and avatar customers see beside its messages.

Applied once at start-up. The avatar is uploaded only when the image file changed (its SHA-256
is remembered in the store) or the account's avatar was changed elsewhere, so a restart costs
one profile lookup and no upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from pathlib import Path

import magic
from nio import AsyncClient, ErrorResponse, ProfileGetAvatarResponse, UploadResponse

from bot.config import ProfileConfig
from bot.store import Store

logger = logging.getLogger(__name__)

AVATAR_SHA_KEY = "profile.avatar_sha256"
AVATAR_URI_KEY = "profile.avatar_uri"


async def apply_profile(client: AsyncClient, store: Store, profile: ProfileConfig) -> None:
    """Set the configured display name and avatar where they differ from the account's.

    A refusal is logged and the bot goes on: how it looks must not stop it from working.
    """
    user_id = client.user_id
    if profile.display_name is not None:
        current = await client.get_displayname(user_id)
        if getattr(current, "displayname", None) != profile.display_name:
            answer = await client.set_displayname(profile.display_name)
            if isinstance(answer, ErrorResponse):
                logger.warning("could not set the display name: %s", answer.message)
            else:
                logger.info("display name set to %r", profile.display_name)
    if profile.avatar is not None:
        await _apply_avatar(client, store, profile.avatar)


async def _apply_avatar(client: AsyncClient, store: Store, path: Path) -> None:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        logger.warning("could not read the avatar %s: %s", path, exc)
        return
    digest = hashlib.sha256(data).hexdigest()
    current = await client.get_avatar(client.user_id)
    current_uri = current.avatar_url if isinstance(current, ProfileGetAvatarResponse) else None
    known_uri = await store.values.get_value(AVATAR_URI_KEY)
    known_sha = await store.values.get_value(AVATAR_SHA_KEY)
    if known_sha == digest and known_uri and current_uri == known_uri:
        return  # unchanged since the last start
    mimetype = magic.from_buffer(data[:8192], mime=True)
    if not mimetype.startswith("image/"):
        logger.warning("the avatar %s is not an image (%s); not uploaded", path, mimetype)
        return
    uploaded, _ = await client.upload(lambda *_: io.BytesIO(data), content_type=mimetype,
                                      filename=path.name, filesize=len(data))
    if not isinstance(uploaded, UploadResponse):
        logger.warning("could not upload the avatar: %s", uploaded)
        return
    answer = await client.set_avatar(uploaded.content_uri)
    if isinstance(answer, ErrorResponse):
        logger.warning("could not set the avatar: %s", answer.message)
        return
    await store.values.set_value(AVATAR_SHA_KEY, digest)
    await store.values.set_value(AVATAR_URI_KEY, uploaded.content_uri)
    logger.info("avatar set from %s (%s)", path, uploaded.content_uri)
