"""Delivered images as clients expect them: thumbnail and blurhash, location metadata removed."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat
from tests.integration.test_offer_decisions import offer_to_agent, offer_to_customer

ACCEPT = "\u2705"
GPS_IFD, MAKE, MODEL = 0x8825, 0x010F, 0x0110


def decoded(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, image.convert("RGB").tobytes()


@pytest.mark.parametrize("prestage", [True, False], ids=["staged", "uploaded-on-accept"])
async def test_encrypted_delivery_has_a_decryptable_thumbnail_and_a_blurhash(
    start_chat, prestage: bool
) -> None:
    """A large photo delivered into an encrypted DM carries an encrypted thumbnail (800×600,
    decryptable by the customer), its thumbnail_info and a blurhash; the image is intact;
    whether the delivery was staged while the offer waited or uploaded on ✅."""
    chat: Chat = await start_chat(encrypted=True, media={"prestage": prestage})
    await chat.open_session(encrypted=True)
    customer, bot = chat.customer, chat.bot_user.user_id
    photo = samples.jpeg(1600, 1200)
    offer_id = await offer_to_customer(chat, photo, "photo.jpg", "image/jpeg")
    [card] = [e for e in customer.offers(chat.customer_room)
              if e["content"][OFFER_KEY]["id"] == offer_id]
    await customer.react(chat.customer_room, card["event_id"], ACCEPT)

    def delivered() -> list[dict]:
        return [e for e in customer.media_events(chat.customer_room) if e["sender"] == bot]

    await customer.until(lambda: delivered(), "the delivered photo")
    content = delivered()[0]["content"]
    assert content["msgtype"] == "m.image" and "file" in content and "url" not in content
    info = content["info"]
    assert "thumbnail_url" not in info
    assert set(info["thumbnail_file"]) >= {"url", "key", "iv", "hashes", "v"}
    assert info["thumbnail_info"]["w"] == 800 and info["thumbnail_info"]["h"] == 600
    assert info["thumbnail_info"]["mimetype"] == "image/jpeg"
    assert isinstance(info["xyz.amorgan.blurhash"], str) and len(info["xyz.amorgan.blurhash"]) >= 6
    thumbnail = await customer.download({"file": info["thumbnail_file"]})
    assert len(thumbnail) == info["thumbnail_info"]["size"]
    assert decoded(thumbnail)[0] == (800, 600)
    assert await customer.download(content) == photo


async def test_location_metadata_is_removed_and_the_pixels_are_kept(start_chat) -> None:
    """A JPEG with GPS and camera data arrives without them, its pixels unchanged; the store
    has the checked hash and the delivered hash, and the delivery matched the latter."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    photo = samples.jpeg_with_location()
    offer_id, card, _ = await offer_to_agent(chat, photo, "router.jpg", "image/jpeg", "m.image")
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: [e for e in agent.media_events(chat.agent_room)
                               if e["sender"] == bot], "the delivered photo")
    [event] = [e for e in agent.media_events(chat.agent_room) if e["sender"] == bot]
    data = await agent.download(event["content"])
    assert decoded(data) == decoded(photo)
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert GPS_IFD not in exif and MAKE not in exif and MODEL not in exif
        assert "xmp" not in image.info
    assert b"Acme" not in data and b"GPSLatitude" not in data
    assert event["content"]["info"]["size"] == len(data)
    offer = await chat.bot.parcel.store.offers.get_offer(offer_id)
    assert offer.sha256 == hashlib.sha256(photo).hexdigest()
    assert offer.delivered_sha256 == hashlib.sha256(data).hexdigest() != offer.sha256


async def test_metadata_is_kept_when_stripping_is_off(start_chat) -> None:
    """With policy.strip_metadata: false the photo is delivered byte for byte."""
    chat: Chat = await start_chat(policy={"strip_metadata": False})
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    photo = samples.jpeg_with_location()
    _, card, _ = await offer_to_agent(chat, photo, "router.jpg", "image/jpeg", "m.image")
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: [e for e in agent.media_events(chat.agent_room)
                               if e["sender"] == bot], "the delivered photo")
    [event] = [e for e in agent.media_events(chat.agent_room) if e["sender"] == bot]
    assert await agent.download(event["content"]) == photo
