"""A restart goes on from the saved sync position: no full-state sync, rooms rebuilt from the
bot's own records, members read when they matter — and nothing that happened while the bot was
down is missed (#25)."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs

from tests.chat import new_person
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy


def _full_state_syncs(proxy: FaultyProxy) -> int:
    return sum(1 for path, query in proxy.queries
               if path.endswith("/sync") and parse_qs(query).get("full_state") == ["true"])


async def test_restart_relays_without_a_full_state_sync(start_chat, homeserver) -> None:
    """After a restart of an encrypted chat's bot: no /sync asks for full state, the rooms come
    from one /joined_rooms, the customer's display name is still used, the agent can read it."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, encrypted=True,
                                      agents={"room_encryption": True})
        await chat.open_session(encrypted=True)
        agent, customer = chat.agent, chat.customer
        await customer.say(chat.customer_room, "before the restart")
        await agent.until(lambda: "Carol: before the restart" in agent.bodies(chat.agent_room),
                          "the relay before the restart")
        assert _full_state_syncs(proxy) == 1, "a fresh store syncs the full state once"

        await chat.bot.stop()
        proxy.queries.clear()
        proxy.seen.clear()
        await chat.bot.start()
        await customer.say(chat.customer_room, "after the restart")
        await agent.until(lambda: "Carol: after the restart" in agent.bodies(chat.agent_room),
                          "the relay after the restart")
        await agent.say(chat.agent_room, "and back")
        await customer.until(lambda: any(b.endswith("and back")
                                         for b in customer.bodies(chat.customer_room)),
                             "the agent's answer, decrypted by the customer")
        assert _full_state_syncs(proxy) == 0
        assert proxy.count("GET", r"/joined_rooms$") == 1
        # Members were read once per room that mattered, not for every event.
        assert proxy.count("GET", r"/joined_members$") <= 2


async def test_a_customer_who_left_while_the_bot_was_down_ends_the_chat(start_chat) -> None:
    """The incremental sync from the saved position carries the leave: the agents are told."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await chat.bot.stop()
    await customer.client.room_leave(chat.customer_room)
    await chat.bot.start()
    await agent.until(lambda: any("left the chat" in b for b in agent.bodies(chat.agent_room)),
                      "the closing notice in the agent room")


async def test_an_agent_who_joined_while_the_bot_was_down_can_read_what_follows(
    start_chat, make_user, make_client,
) -> None:
    """A second agent joins the encrypted agent room while the bot is stopped: the first
    message after the restart is encrypted for them too (members and devices read afresh)."""
    bob = await new_person(make_user, make_client, "bob", "Bob", encrypted=True)
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True},
                                  extra_agents=(bob.user_id,))
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "hello agents")
    await agent.until(lambda: "Carol: hello agents" in agent.bodies(chat.agent_room),
                      "the relay to Alice")

    await chat.bot.stop()
    room = await bob.accept_invite("Bob's invite to the agent room")
    assert room == chat.agent_room
    await chat.bot.start()
    await customer.say(chat.customer_room, "can Bob read this?")
    await bob.until(lambda: "Carol: can Bob read this?" in bob.bodies(chat.agent_room),
                    "the relay, decrypted by Bob")
    await agent.until(lambda: "Carol: can Bob read this?" in agent.bodies(chat.agent_room),
                      "the relay, decrypted by Alice")


async def test_room_keys_are_read_when_a_message_needs_them(start_chat, bot_store) -> None:
    """After a restart no Megolm session is read into memory until a message needs one; the
    customer's session from before the restart then decrypts what they say (the bot's crypto
    store on SQLite and on PostgreSQL)."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True}, **bot_store)
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "one session")
    await agent.until(lambda: "Carol: one session" in agent.bodies(chat.agent_room), "relay")

    await chat.bot.restart()
    parcel = chat.bot.parcel
    assert parcel is not None and parcel.client is not None and parcel.client.olm is not None
    held = parcel.client.olm.inbound_group_store
    carols_key = customer.client.olm.account.identity_keys["curve25519"]

    def carols_sessions() -> list[str]:
        return [s.room_id for s in held if s.sender_key == carols_key]

    assert carols_sessions() == []  # none read at start
    await customer.say(chat.customer_room, "the same session, after the restart")
    await agent.until(
        lambda: "Carol: the same session, after the restart" in agent.bodies(chat.agent_room),
        "the relay after the restart")
    assert carols_sessions() == [chat.customer_room]  # read when her message needed it


async def test_rooms_of_chats_closed_before_the_restart_are_left_beside_the_work(
    start_chat,
) -> None:
    """A chat ended while its agent room was kept (``leave_closed_rooms: false``); restarted
    with closed chats' rooms to be left, the bot leaves it (the tidy-up now runs beside the
    work, after the bot is ready, instead of before it)."""
    chat: Chat = await start_chat(retention={"leave_closed_rooms": False})
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    old_agent_room = chat.agent_room
    await agent.say(old_agent_room, "!end")
    await customer.until(lambda: customer.membership(chat.customer_room, bot) == "leave",
                         "the bot leaving the customer room")
    assert agent.membership(old_agent_room, bot) == "join"

    await chat.bot.stop()
    chat.bot.config = replace(chat.bot.config, retention=replace(
        chat.bot.config.retention, leave_closed_rooms=True))
    await chat.bot.start()
    await agent.until(lambda: agent.membership(old_agent_room, bot) == "leave",
                      "the bot leaving the closed chat's agent room")


async def test_a_failed_rebuild_of_the_rooms_is_tried_again(start_chat, homeserver) -> None:
    """/joined_rooms failing at the restart (a 502 twice) is retried; then the chat goes on."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, encrypted=True,
                                      agents={"room_encryption": True})
        await chat.open_session(encrypted=True)
        agent, customer = chat.agent, chat.customer
        await chat.bot.stop()
        refused = proxy.fail("GET", r"/joined_rooms$", times=2)
        await chat.bot.start()
        await customer.say(chat.customer_room, "after a rocky restart")
        await agent.until(lambda: "Carol: after a rocky restart" in agent.bodies(chat.agent_room),
                          "the relay after the rebuild was retried")
        assert refused.hits == 2
