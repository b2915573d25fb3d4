"""Sessions and the text relay, through the real Synapse."""

from __future__ import annotations

from tests.conftest import Chat


async def test_invite_opens_session_and_text_relays_both_ways(start_chat) -> None:
    """A customer's invite opens an agent room; text flows both ways, attributed, no echo."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    room = agent.client.rooms[chat.agent_room]
    assert "Carol" in (room.name or "")

    await customer.say(chat.customer_room, "hello, my router is broken")
    await agent.until(lambda: "Carol: hello, my router is broken" in agent.bodies(chat.agent_room),
                      "the customer's text in the agent room")

    await agent.say(chat.agent_room, "Hi Carol, let's look")
    await customer.until(
        lambda: "Alice (support): Hi Carol, let's look" in customer.bodies(chat.customer_room),
        "the agent's text in the customer room",
    )
    # The bot's relayed messages are not relayed back: exactly one copy each way.
    await customer.say(chat.customer_room, "thanks")
    await agent.until(lambda: "Carol: thanks" in agent.bodies(chat.agent_room), "thanks")
    assert agent.bodies(chat.agent_room).count("Carol: hello, my router is broken") == 1
    assert customer.bodies(chat.customer_room).count("Alice (support): Hi Carol, let's look") == 1
    relayed = [e for e in agent.messages(chat.agent_room) if "Carol: thanks" in e["content"]["body"]]
    assert relayed[0]["content"]["m.mentions"] == {}
