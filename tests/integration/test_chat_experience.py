"""The chat as people see it: replies, tidy decided cards, per-chat numbers, notices, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests import samples
from tests.chat import OFFER_KEY, Person, barrier, new_person
from tests.conftest import Chat
from tests.helpers import wait_for
from tests.integration.test_offer_decisions import offer_to_agent, reply

ACCEPT, DECLINE = "\u2705", "\u274c"


async def annotations(person: Person, room_id: str, event_id: str) -> list[dict[str, Any]]:
    """The reactions the homeserver still holds on an event (redacted ones are gone)."""
    client = person.client
    url = (f"{client.homeserver}/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"
           "/m.annotation")
    async with aiohttp.ClientSession() as http, http.get(
        url, headers={"Authorization": f"Bearer {client.access_token}"}
    ) as response:
        assert response.status == 200, await response.text()
        return list((await response.json())["chunk"])


def latest_body(person: Person, room_id: str, event_id: str) -> str:
    """What a client shows for a message: the newest edit's new content, or the original."""
    edits = person.edits_of(room_id, event_id)
    if edits:
        return str(edits[-1]["content"]["m.new_content"]["body"])
    original = [e for e in person.messages(room_id) if e["event_id"] == event_id]
    return str(original[0]["content"]["body"])


async def test_status_line_is_a_reply_to_the_senders_upload(start_chat) -> None:
    """The sender's ⬆️ status line replies to their own upload, so it sits with the file."""
    chat: Chat = await start_chat()
    await chat.open_session()
    offer_id, _, upload = await offer_to_agent(chat, samples.png(), "router.png", "image/png",
                                               "m.image")
    [status] = [e for e in chat.customer.offers(chat.customer_room)
                if e["content"][OFFER_KEY]["id"] == offer_id]
    assert status["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": upload}}
    assert status["content"]["body"].startswith("⬆️ router.png")


async def test_a_decided_card_keeps_only_the_deciders_reaction(start_chat) -> None:
    """After ✅ the bot's own ✅/❌ are redacted; the card says who accepted and when."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "router.png", "image/png",
                                             "m.image")
    before = await annotations(agent, chat.agent_room, card["event_id"])
    assert sorted(e["content"]["m.relates_to"]["key"] for e in before) == sorted([ACCEPT,
                                                                                 DECLINE])
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "accepted",
                      "the card edited to accepted")

    async def only_the_agents_left() -> bool:
        left = await annotations(agent, chat.agent_room, card["event_id"])
        return [(e["sender"], e["content"]["m.relates_to"]["key"]) for e in left] == [
            (agent.user_id, ACCEPT)]

    await wait_for(only_the_agents_left, timeout=30, what="the bot's reactions redacted")
    body = latest_body(agent, chat.agent_room, card["event_id"])
    assert body.startswith("✅ router.png from Carol (offer #1) — accepted by Alice, ")
    assert body.endswith(" UTC; the file is below")

    # A reaction on the settled card changes nothing.
    await agent.react(chat.agent_room, card["event_id"], DECLINE)
    await barrier(agent, chat.agent_room, chat.customer, chat.customer_room)
    assert agent.offer_state(chat.agent_room, offer_id) == "accepted"
    delivered = [e for e in agent.media_events(chat.agent_room) if e["sender"] == bot]
    assert len(delivered) == 1


async def test_each_chat_numbers_its_offers_from_one(start_chat, make_user, make_client) -> None:
    """Two chats each have an offer #1; `!accept 1` acts in its own chat, a number from
    another chat finds nothing, and the block carries the global id and the chat's number."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    first_id, first_card, _ = await offer_to_agent(chat, samples.png(), "one.png", "image/png",
                                                   "m.image")
    second_id, _, _ = await offer_to_agent(chat, samples.pdf(), "two.pdf", "application/pdf")

    dave = await new_person(make_user, make_client, "dave", "Dave")
    dave_room = await dave.open_chat_with(bot)
    dave_agent_room = await agent.accept_invite("the second agent room")
    await dave.until(lambda: any("connected" in b for b in dave.bodies(dave_room)), "welcome")
    await dave.send_file(dave_room, samples.png(color="blue"), "dave.png", "image/png",
                         "m.image")
    await agent.until(lambda: agent.offers(dave_agent_room), "Dave's offer card")
    dave_block = agent.offers(dave_agent_room)[0]["content"][OFFER_KEY]
    assert dave_block["number"] == 1 and dave_block["id"] == 3
    assert first_card["content"][OFFER_KEY]["number"] == 1
    assert (first_id, second_id) == (1, 2)
    assert "!accept 1" in agent.offers(dave_agent_room)[0]["content"]["body"]

    await agent.say(dave_agent_room, "!accept 1")
    assert await reply(agent, dave_agent_room, bot, "Accepted") == "Accepted offer #1."
    await agent.until(lambda: agent.offer_state(dave_agent_room, 3) == "accepted",
                      "Dave's offer accepted")
    assert agent.offer_state(chat.agent_room, first_id) == "offered"

    await agent.say(dave_agent_room, "!accept 2")
    assert await reply(agent, dave_agent_room, bot, "There is no") == (
        "There is no offer #2 waiting for a decision in this chat.")
    assert agent.offer_state(chat.agent_room, second_id) == "offered"
    store = chat.bot.parcel.store
    assert (await store.offers.get_offer(second_id)).state.value == "offered"


async def test_agents_hear_of_a_customers_refused_file(start_chat) -> None:
    """A refused customer file is announced in the agent room with the reason."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.send_file(chat.customer_room, samples.elf_program(), "setup.exe",
                             "application/octet-stream")
    notice = await reply(agent, chat.agent_room, bot, "⛔ Carol tried to send setup.exe")
    assert notice.startswith("⛔ Carol tried to send setup.exe: refused — ")
    assert "program" in notice
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "⛔ setup.exe"),
                         "the customer's rejection notice")
    [rejection] = customer.replies(chat.customer_room, bot, "⛔ setup.exe")
    assert "m.in_reply_to" in rejection["content"]["m.relates_to"]


async def test_refusal_notices_to_agents_can_be_turned_off(start_chat) -> None:
    """With notify_agents_of_refusals: false the agents hear nothing of a refused file."""
    chat: Chat = await start_chat(notify_agents_of_refusals=False)
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.send_file(chat.customer_room, samples.elf_program(), "setup.exe",
                             "application/octet-stream")
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "⛔ setup.exe"),
                         "the customer's rejection notice")
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert agent.replies(chat.agent_room, bot, "⛔") == []


async def test_closing_tells_each_side_the_right_thing(start_chat) -> None:
    """The customer who ends is told "You ended the chat" and how to start again; the agents
    hear who ended it, with no pending-files line when nothing was pending; the agent room is
    renamed "[closed] …"."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.say(chat.customer_room, "!end")
    assert await reply(customer, chat.customer_room, bot, "You ended") == (
        f"You ended the chat. To talk to us again, start a new chat with {bot}.")
    assert await reply(agent, chat.agent_room, bot, "Carol ended") == "Carol ended the chat."

    def room_name() -> str | None:
        room = agent.client.rooms.get(chat.agent_room)
        return room.name if room is not None else None

    await agent.until(lambda: room_name() == "[closed] Chat with Carol (#1)",
                      "the agent room renamed")


async def test_the_bots_profile_is_set_and_kept(start_chat, tmp_path: Path) -> None:
    """profile.display_name and profile.avatar are applied at start; a restart uploads nothing."""
    logo = tmp_path / "logo.png"
    logo.write_bytes(samples.png(32, 32, "navy"))
    chat: Chat = await start_chat(profile={"display_name": "Acme Support", "avatar": str(logo)})
    customer, bot = chat.customer, chat.bot_user.user_id
    name = await customer.client.get_displayname(bot)
    assert name.displayname == "Acme Support"
    avatar = (await customer.client.get_avatar(bot)).avatar_url
    assert avatar and avatar.startswith("mxc://")
    assert await customer.download({"url": avatar}) == logo.read_bytes()

    await chat.bot.restart()
    assert (await customer.client.get_avatar(bot)).avatar_url == avatar
