"""No leak, no swap: the recipient never sees the sender's media, and gets what was checked."""

from __future__ import annotations

import io
import json

from nio import DownloadError, UploadResponse

from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat
from tests.helpers import wait_for

ACCEPT, DECLINE = "\u2705", "\u274c"


async def test_recipient_never_sees_the_senders_media_and_edits_cannot_swap(start_chat) -> None:
    """Nothing the agent's client receives names the customer's upload; an edit cannot swap it."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    original = samples.png(50, 50, "green")
    event_id = await customer.send_file(chat.customer_room, original, "photo.png", "image/png",
                                        "m.image")
    await customer.until(lambda: customer.offers(chat.customer_room), "the status line")
    sent = next(e for e in customer.messages(chat.customer_room) if e["event_id"] == event_id)
    source_uri = sent["content"]["url"]

    # The customer edits their file message to point at other media after the offer.
    other = samples.png(10, 10, "black")
    upload, _ = await customer.client.upload(lambda *_: io.BytesIO(other),
                                             content_type="image/png", filesize=len(other))
    assert isinstance(upload, UploadResponse)
    swap = {"msgtype": "m.image", "body": "* photo.png", "url": upload.content_uri,
            "m.new_content": {"msgtype": "m.image", "body": "photo.png",
                              "url": upload.content_uri},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}}
    await customer.client.room_send(chat.customer_room, "m.room.message", swap)

    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    seen_before = json.dumps(agent.events[chat.agent_room])
    assert source_uri not in seen_before and upload.content_uri not in seen_before
    card = agent.offers(chat.agent_room)[0]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery")
    delivered = agent.media_events(chat.agent_room)
    assert len(delivered) == 1
    assert await agent.download(delivered[0]["content"]) == original
    everything = json.dumps(agent.events)
    assert source_uri not in everything and upload.content_uri not in everything


async def test_declined_upload_is_purged_from_the_homeserver(start_chat) -> None:
    """With media.purge_refused and admin rights, a declined upload is deleted from Synapse."""
    chat: Chat = await start_chat(bot_admin=True, media={"purge_refused": True})
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    event_id = await agent.send_file(chat.agent_room, samples.pdf(), "quote.pdf",
                                     "application/pdf")
    await customer.until(lambda: customer.offers(chat.customer_room), "the offer card")
    card = customer.offers(chat.customer_room)[0]
    await customer.react(chat.customer_room, card["event_id"], DECLINE)
    offer_id = card["content"][OFFER_KEY]["id"]
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "declined",
                      "the declined status line")
    sent = next(e for e in agent.messages(chat.agent_room) if e["event_id"] == event_id)

    async def gone() -> bool:
        response = await customer.client.download(sent["content"]["url"])
        return isinstance(response, DownloadError)

    await wait_for(gone, what="the declined upload to be purged")
