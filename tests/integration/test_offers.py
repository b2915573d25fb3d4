"""The offer lifecycle through the real Synapse: offer, accept, decline, reject."""

from __future__ import annotations

from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat

ACCEPT, DECLINE = "\u2705", "\u274c"


async def test_image_accepted_is_delivered_inline_with_identical_bytes(start_chat,
                                                                      bot_store) -> None:
    """An image is offered with ✅/❌, reaches the agent only after ✅, as m.image with w/h
    (the bot's store on SQLite and on PostgreSQL)."""
    chat: Chat = await start_chat(**bot_store)
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    image = samples.png(64, 48)
    await customer.send_file(chat.customer_room, image, "router.png", "image/png", "m.image")

    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]
    block = card["content"][OFFER_KEY]
    assert block["state"] == "offered" and block["filename"] == "router.png"
    assert block["mimetype"] == "image/png" and block["size"] == len(image)
    assert block["direction"] == "customer_to_agent"
    assert "m.relates_to" not in card["content"]
    await agent.until(lambda: len(agent.reactions_on(chat.agent_room, card["event_id"])) == 2,
                      "the bot's ✅/❌ reactions")
    await customer.until(lambda: customer.offers(chat.customer_room), "the status line")
    status = customer.offers(chat.customer_room)[0]
    assert status["content"]["body"].startswith("⬆️ router.png · PNG image")
    assert agent.media_events(chat.agent_room) == []

    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivered image")
    delivered = agent.media_events(chat.agent_room)[0]["content"]
    assert delivered["msgtype"] == "m.image"
    assert delivered["info"]["w"] == 64 and delivered["info"]["h"] == 48
    assert delivered["info"]["mimetype"] == "image/png"
    assert await agent.download(delivered) == image
    await customer.until(
        lambda: customer.offer_state(chat.customer_room, block["id"]) == "accepted",
        "the status line edited to accepted",
    )
    edits = [e for e in customer.messages(chat.customer_room) if "m.new_content" in e["content"]]
    assert edits[-1]["content"]["m.new_content"]["body"].startswith("📎 router.png — received")


async def test_pdf_declined_never_reaches_the_customer(start_chat) -> None:
    """A PDF from the agent declined with ❌ is never delivered; both messages say declined."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await agent.send_file(chat.agent_room, samples.pdf(), "terms.pdf", "application/pdf")
    await customer.until(lambda: customer.offers(chat.customer_room), "the offer card")
    card = customer.offers(chat.customer_room)[0]
    offer_id = card["content"][OFFER_KEY]["id"]
    await customer.react(chat.customer_room, card["event_id"], DECLINE)
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "declined",
                      "the agent's status line edited to declined")
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "declined",
                         "the offer card edited to declined")
    assert customer.media_events(chat.customer_room) == []


async def test_program_named_png_is_rejected_with_a_reason(start_chat) -> None:
    """An executable named setup.png is refused; the sender is told why; nothing is offered."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, samples.elf_program(), "setup.png", "image/png",
                             "m.image")
    await customer.until(
        lambda: any("was not sent" in b for b in customer.bodies(chat.customer_room)),
        "the rejection notice",
    )
    notice = [b for b in customer.bodies(chat.customer_room) if "was not sent" in b][0]
    assert notice.startswith("⛔ setup.png was not sent: ")
    assert "program" in notice
    await customer.say(chat.customer_room, "did it arrive?")
    await agent.until(lambda: "Carol: did it arrive?" in agent.bodies(chat.agent_room), "text")
    assert agent.offers(chat.agent_room) == [] and agent.media_events(chat.agent_room) == []
