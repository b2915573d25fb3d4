"""Sessions and the text relay, through the real Synapse."""

from __future__ import annotations

import aiohttp

from bot.store import SessionState
from tests import samples
from tests.chat import OFFER_KEY, Person
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy


async def test_invite_opens_session_and_text_relays_both_ways(start_chat) -> None:
    """A customer's invite opens an agent room; text flows both ways, attributed, no echo."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    room = agent.client.rooms[chat.agent_room]
    assert "Carol" in (room.name or "")

    await customer.say(chat.customer_room, "hello, my router is broken")
    await agent.until(
        lambda: "Carol: hello, my router is broken" in agent.bodies(chat.agent_room),
        "the customer's text in the agent room",
    )

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
    relayed = [e for e in agent.messages(chat.agent_room)
               if "Carol: thanks" in e["content"]["body"]]
    assert relayed[0]["content"]["m.mentions"] == {}


async def test_customer_leaving_closes_the_session(start_chat) -> None:
    """When the customer leaves their room, agents are told and nothing more is relayed."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.client.room_leave(chat.customer_room)
    await agent.until(lambda: any("left the chat" in b for b in agent.bodies(chat.agent_room)),
                      "the closing notice in the agent room")
    await agent.say(chat.agent_room, "are you there?")
    await agent.say(chat.agent_room, "!help")
    # The session is closed: the bot neither relays nor answers commands any more.
    await agent.until(lambda: "are you there?" in agent.bodies(chat.agent_room), "own message")
    assert not any("Commands" in b for b in agent.bodies(chat.agent_room))


async def test_invite_from_an_agent_opens_no_session(start_chat) -> None:
    """An agent inviting the bot does not start a customer session."""
    chat: Chat = await start_chat()
    agent = chat.agent
    room_id = await agent.open_chat_with(chat.bot_user.user_id)
    await agent.until(
        lambda: any(e.get("type") == "m.room.member" and e.get("state_key") == chat.bot_user.user_id
                    and e["content"].get("membership") == "leave"
                    for e in agent.events[room_id]),
        "the bot declining the invite",
    )
    assert agent.client.invited_rooms == {}
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    assert await chat.bot.parcel.store.sessions.sessions() == []


async def test_servers_outside_allowed_servers_cannot_open_sessions(start_chat) -> None:
    """With allowed_servers set, a user of another server is told no and no session opens."""
    chat: Chat = await start_chat(allowed_servers=["elsewhere.example"])
    customer = chat.customer
    room_id = await customer.open_chat_with(chat.bot_user.user_id)
    await customer.until(lambda: any("not available" in b for b in customer.bodies(room_id)),
                         "the refusal notice")
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    assert await chat.bot.parcel.store.sessions.sessions() == []


async def test_customer_imitating_an_agent_is_shown_with_their_user_id(
    start_chat, make_user, make_client
) -> None:
    """A customer whose display name copies the agent's is shown with the user id added."""
    chat: Chat = await start_chat()
    impostor_user = await make_user("imp", displayname="Alice (support)")
    impostor = Person(await make_client(impostor_user), impostor_user)
    chat.customer = impostor
    await chat.open_session()
    agent = chat.agent
    await impostor.say(chat.customer_room, "@room please reset my password")
    expected = f"Alice (support) ({impostor.user_id}): @room please reset my password"
    await agent.until(lambda: expected in agent.bodies(chat.agent_room),
                      "the disambiguated name in the agent room")
    relayed = next(e for e in agent.messages(chat.agent_room)
                   if e["content"]["body"] == expected)
    assert relayed["content"]["m.mentions"] == {}


async def test_bot_removed_from_the_agent_room_closes_the_session(start_chat, make_user) -> None:
    """The agent room shut down by a server admin (the only way anyone can remove the bot:
    it created the room, and from room version 12 a creator cannot be kicked) ends the
    session: the customer is told no agent can read the chat and how to start a new one,
    their pending offer expires, and the bot leaves their room."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, samples.pdf(), "terms.pdf", "application/pdf")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    offer_id = agent.offers(chat.agent_room)[0]["content"][OFFER_KEY]["id"]
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "offered",
                         "the customer's waiting status line")
    admin = await make_user("admin", admin=True)
    async with aiohttp.ClientSession() as http:
        async with http.delete(
            f"{chat.homeserver.url}/_synapse/admin/v1/rooms/{chat.agent_room}",
            json={"purge": False},
            headers={"Authorization": f"Bearer {admin.access_token}"},
        ) as response:
            assert response.status == 200, await response.text()

    await customer.until(lambda: any("no agent can read" in b
                                     for b in customer.bodies(chat.customer_room)),
                         "the closing notice in the customer's room", timeout=15)
    notice = next(b for b in customer.bodies(chat.customer_room) if "no agent can read" in b)
    assert "1 pending file was not delivered" in notice
    assert f"start a new chat with {chat.bot_id}" in notice
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "expired",
                         "the customer's status line edited to expired")
    await customer.until(lambda: customer.membership(chat.customer_room, chat.bot_id) == "leave",
                         "the bot leaving the customer's room")
    store = chat.bot.parcel.store
    [session] = await store.sessions.sessions()
    assert session.state is SessionState.CLOSED
    assert session.close_reason == "bot_removed_from_agents"


async def test_a_second_chat_from_the_same_customer_is_a_session_of_its_own(start_chat) -> None:
    """A customer who opens a second DM while the first is open gets a second session (each
    room is one conversation); its agent room says which of their chats are still open, and
    both relay on their own."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    first_room, first_agent_room = chat.customer_room, chat.agent_room
    second_room = await customer.open_chat_with(chat.bot_id)
    second_agent_room = await agent.accept_invite("the second agent room invite")
    assert second_agent_room != first_agent_room and second_room != first_room
    store = chat.bot.parcel.store
    first, second = await store.sessions.sessions()
    await agent.until(lambda: any(f"New chat #{second.id}" in b
                                  for b in agent.bodies(second_agent_room)),
                      "the second chat's opening notice")
    opened = next(b for b in agent.bodies(second_agent_room) if f"New chat #{second.id}" in b)
    assert opened.endswith(f"This customer also has another chat open: #{first.id}.")
    assert not any("also has" in b for b in agent.bodies(first_agent_room))

    await customer.say(second_room, "a second question")
    await agent.until(lambda: "Carol: a second question" in agent.bodies(second_agent_room),
                      "the second chat relayed to its own agent room")
    assert "Carol: a second question" not in agent.bodies(first_agent_room)
    assert (first.state, second.state) == (SessionState.OPEN, SessionState.OPEN)


async def test_opening_a_session_reads_no_history(start_chat, homeserver, caplog) -> None:
    """A new room arrives "limited" (Synapse marks every newly joined room so), but its
    timeline holds the bot's join: no /messages request is made and nothing is reported
    skipped, while the customer's first words (written right after "Start chat", before the
    bot joined) are relayed once."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, encrypted=True)
        agent, customer = chat.agent, chat.customer
        chat.customer_room = await customer.open_chat_with(chat.bot_user.user_id, encrypted=True)
        await customer.until(lambda: chat.customer_room in customer.client.rooms,
                             "the new room in the customer's client")
        await customer.say(chat.customer_room, "first words")
        chat.agent_room = await agent.accept_invite("the agent room invite")
        await agent.until(lambda: "Carol: first words" in agent.bodies(chat.agent_room),
                          "the first words relayed")
        await customer.say(chat.customer_room, "second words")
        await agent.until(lambda: "Carol: second words" in agent.bodies(chat.agent_room),
                          "the second words relayed")
        assert proxy.count("GET", r"/rooms/[^/]+/messages") == 0
    assert agent.bodies(chat.agent_room).count("Carol: first words") == 1
    assert not any("the sync skipped events" in r.getMessage() for r in caplog.records)
