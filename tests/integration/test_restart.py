"""Restarts: nothing replayed, nothing lost, pending offers survive."""

from __future__ import annotations

from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat

ACCEPT = "\u2705"


async def test_restart_neither_replays_nor_loses_messages(start_chat, bot_store) -> None:
    """Messages before a restart are not relayed again; one sent while down arrives once (an
    encrypted chat, the bot's store on SQLite and on PostgreSQL)."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True}, **bot_store)
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "before restart")
    await agent.until(lambda: "Carol: before restart" in agent.bodies(chat.agent_room), "relay")

    await chat.bot.stop()
    await customer.say(chat.customer_room, "while the bot was down")
    await chat.bot.start()
    await agent.until(lambda: "Carol: while the bot was down" in agent.bodies(chat.agent_room),
                      "the message sent while the bot was down")
    await customer.say(chat.customer_room, "after restart")
    await agent.until(lambda: "Carol: after restart" in agent.bodies(chat.agent_room), "relay")
    bodies = agent.bodies(chat.agent_room)
    assert bodies.count("Carol: before restart") == 1
    assert bodies.count("Carol: while the bot was down") == 1


async def test_decision_made_while_the_bot_was_down_is_acted_on(start_chat, bot_store) -> None:
    """A ✅ given while the bot is stopped delivers the file once after it comes back (the
    bot's store on SQLite and on PostgreSQL)."""
    chat: Chat = await start_chat(**bot_store)
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    image = samples.png(20, 10)
    await customer.send_file(chat.customer_room, image, "later.png", "image/png", "m.image")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]

    await chat.bot.stop()
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await chat.bot.start()
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery after restart")
    offer_id = card["content"][OFFER_KEY]["id"]
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "accepted",
                         "the accepted status line")
    await chat.bot.restart()
    await customer.say(chat.customer_room, "got it?")
    await agent.until(lambda: "Carol: got it?" in agent.bodies(chat.agent_room), "relay")
    assert len(agent.media_events(chat.agent_room)) == 1
    assert await agent.download(agent.media_events(chat.agent_room)[0]["content"]) == image


async def test_a_burst_larger_than_one_sync_is_backfilled(start_chat) -> None:
    """250 messages sent while the bot is down all arrive, once each and in order."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "warm-up")
    await agent.until(lambda: "Carol: warm-up" in agent.bodies(chat.agent_room), "relay")
    await chat.bot.stop()
    for number in range(250):
        await customer.say(chat.customer_room, f"burst {number}")
    await chat.bot.start()
    await agent.until(lambda: "Carol: burst 249" in agent.bodies(chat.agent_room),
                      "the end of the burst", timeout=120)
    relayed = [b for b in agent.bodies(chat.agent_room) if b.startswith("Carol: burst ")]
    assert relayed == [f"Carol: burst {n}" for n in range(250)]
