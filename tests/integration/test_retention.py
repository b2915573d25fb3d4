"""Retention: delivered files redacted when a chat ends, old closed sessions purged."""

from __future__ import annotations

from tests import samples
from tests.conftest import Chat
from tests.helpers import wait_for

ACCEPT = "\u2705"


async def test_delivered_media_is_redacted_on_close_and_records_purged(start_chat) -> None:
    """With both retention options, !end redacts the delivered image and the records go later."""
    chat: Chat = await start_chat(
        retention={"redact_delivered_on_close": True, "purge_after": "2s"}
    )
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, samples.png(9, 9), "x.png", "image/png",
                             "m.image")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer")
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery")
    delivered_id = agent.media_events(chat.agent_room)[0]["event_id"]
    await customer.say(chat.customer_room, "!end")
    await agent.until(
        lambda: any(e.get("type") == "m.room.redaction" and e.get("redacts") == delivered_id
                    for e in agent.events[chat.agent_room]),
        "the redaction of the delivered image",
    )
    parcel = chat.bot.parcel
    assert parcel is not None and parcel.store is not None
    async def purged() -> bool:
        return await parcel.store.sessions.sessions() == []

    await wait_for(purged, timeout=30,
                   what="the closed session to be purged")
    assert await parcel.store.offers.attachment_log() == []
