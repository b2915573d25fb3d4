"""A homeserver outage in the middle of a chat: the bot backs off, recovers, loses nothing."""

from __future__ import annotations

import asyncio

from tests.conftest import Chat

OUTAGE_SECONDS = 20


async def test_homeserver_outage_is_survived_without_loss(start_chat, homeserver, caplog) -> None:
    """Synapse stopped for 20 s: the bot keeps running and relays everything once afterwards."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "just before the outage")
    await homeserver.stop()
    try:
        # The outage itself lasts a fixed time; nothing here waits for a condition.
        await asyncio.sleep(OUTAGE_SECONDS)
    finally:
        await homeserver.start()
    assert chat.bot.running, "the bot stopped during the outage"
    await customer.say(chat.customer_room, "just after the outage")
    await agent.until(lambda: "Carol: just after the outage" in agent.bodies(chat.agent_room),
                      "the relay after the outage", timeout=120)
    bodies = agent.bodies(chat.agent_room)
    assert bodies.count("Carol: just before the outage") == 1
    assert bodies.count("Carol: just after the outage") == 1
    assert any("sync failed" in r.getMessage() for r in caplog.records)
    assert chat.bot.parcel is not None
    sync = chat.bot.parcel.sync
    assert sync is not None and sync.healthy
