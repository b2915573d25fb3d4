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
    # One line when the outage began and one when it ended, not one per attempt.
    messages = [r.getMessage() for r in caplog.records]
    assert sum("sync loop: transient failure (homeserver)" in m for m in messages) == 1
    assert sum("sync loop recovered after" in m for m in messages) == 1
    assert chat.bot.parcel is not None
    sync = chat.bot.parcel.sync
    assert sync is not None and sync.healthy


async def test_bot_started_before_the_homeserver_waits_for_it(start_chat, homeserver) -> None:
    """A bot whose homeserver is down at start-up retries until it is up, then works."""
    chat: Chat = await start_chat()
    await chat.bot.stop()
    await homeserver.stop()
    try:
        starting = asyncio.create_task(chat.bot.start(timeout=120))
        await asyncio.sleep(5)  # the homeserver stays down for a while, on purpose
        assert not starting.done(), "the bot gave up instead of waiting for the homeserver"
    finally:
        await homeserver.start()
    await starting
    await chat.open_session()
    await chat.customer.say(chat.customer_room, "hello after a cold start")
    await chat.agent.until(
        lambda: "Carol: hello after a cold start" in chat.agent.bodies(chat.agent_room),
        "the relay after the cold start",
    )
