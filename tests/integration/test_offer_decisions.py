"""Who may decide an offer, how, and when: commands, withdraw, expiry, wrong reactions, races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from nio import RoomSendResponse

from bot.devserver import Homeserver
from tests import samples
from tests.chat import OFFER_KEY, BotRunner, Person, barrier, bot_config, new_person
from tests.conftest import Chat
from tests.helpers import MakeClient, MakeUser

ACCEPT, DECLINE = "\u2705", "\u274c"
ACCEPT_VS16 = "\u2705\ufe0f"
HEAVY_CHECK = "\u2714\ufe0f"  # ✔️ looks like a yes but is not the accept key


# --- helpers -------------------------------------------------------------------------------




async def stored_state(chat: Chat, offer_id: int) -> str:
    """The offer's state in the bot's store (decisions are written there before any reply)."""
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    offer = await chat.bot.parcel.store.offers.get_offer(offer_id)
    assert offer is not None, f"offer #{offer_id} is not in the store"
    return offer.state.value


async def offer_to_agent(
    chat: Chat, data: bytes, name: str, mimetype: str, msgtype: str = "m.file"
) -> tuple[int, dict[str, Any], str]:
    """The customer sends a file; returns (offer id, the agent's card, the upload event id)
    once the card carries the bot's ✅/❌ and the customer has the status line."""
    agent, customer = chat.agent, chat.customer
    upload = await customer.send_file(chat.customer_room, data, name, mimetype, msgtype)

    def card() -> dict[str, Any] | None:
        for event in agent.offers(chat.agent_room):
            if event["content"][OFFER_KEY]["filename"] == name:
                return event
        return None

    await agent.until(lambda: card() is not None, f"the offer card for {name}")
    found = card()
    assert found is not None
    offer_id = found["content"][OFFER_KEY]["id"]
    await agent.until(lambda: len(agent.reactions_on(chat.agent_room, found["event_id"])) == 2,
                      "the bot's ✅/❌ on the card")
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "offered",
                         "the customer's status line")
    return offer_id, found, upload


async def offer_to_customer(chat: Chat, data: bytes, name: str, mimetype: str) -> int:
    """The agent sends a file; returns the offer id once the customer has the card."""
    agent, customer = chat.agent, chat.customer
    await agent.send_file(chat.agent_room, data, name, mimetype)

    def offer_id() -> int | None:
        for event in customer.offers(chat.customer_room):
            if event["content"][OFFER_KEY]["filename"] == name:
                return int(event["content"][OFFER_KEY]["id"])
        return None

    await customer.until(lambda: offer_id() is not None, f"the offer card for {name}")
    found = offer_id()
    assert found is not None
    await agent.until(lambda: agent.offer_state(chat.agent_room, found) == "offered",
                      "the agent's status line")
    return found


async def reply(person: Person, room_id: str, bot_id: str, start: str) -> str:
    """Wait for the bot's message starting with ``start`` and return its body."""
    await person.until(lambda: person.replies(room_id, bot_id, start),
                       f"a reply starting {start!r}")
    return str(person.replies(room_id, bot_id, start)[-1]["content"]["body"])


async def assert_still_offered(chat: Chat, offer_id: int, card: dict[str, Any]) -> None:
    """Nothing decided: the store, both rooms and the media agree the offer is still open."""
    await barrier(chat.customer, chat.customer_room, chat.agent, chat.agent_room)
    await barrier(chat.agent, chat.agent_room, chat.customer, chat.customer_room)
    assert await stored_state(chat, offer_id) == "offered"
    assert chat.agent.edits_of(chat.agent_room, card["event_id"]) == []
    assert chat.customer.offer_state(chat.customer_room, offer_id) == "offered"
    assert chat.agent.deliveries(chat.agent_room, chat.bot_id) == []



# --- a chat with two agents ----------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def start_team_chat(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Chat, Person]]]]:
    """Factory: a running bot configured with two agents, both joined to a new session."""
    runners: list[BotRunner] = []

    async def start(**overrides: Any) -> tuple[Chat, Person]:
        bot_user = await make_user("parcel", displayname="Parcel")
        agent = await new_person(make_user, make_client, "alice", "Alice")
        second = await new_person(make_user, make_client, "bob", "Bob")
        customer = await new_person(make_user, make_client, "carol", "Carol")
        config = bot_config(homeserver, bot_user, [agent.user_id, second.user_id],
                            tmp_path_factory.mktemp("parcel-data"), **overrides)
        runner = BotRunner(config)
        runners.append(runner)
        await runner.start()
        chat = Chat(runner, bot_user, agent, customer, homeserver)
        await chat.open_session()
        joined = await second.accept_invite("the second agent's invite")
        assert joined == chat.agent_room
        return chat, second

    try:
        yield start
    finally:
        for runner in runners:
            await runner.stop()


# --- commands ------------------------------------------------------------------------------


async def test_accept_and_decline_commands_decide_and_confirm(start_chat) -> None:
    """`!accept N` delivers and `!decline N` refuses, each confirmed in the recipient's room."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    image = samples.png(40, 30)
    a_id, _, _ = await offer_to_agent(chat, image, "a.png", "image/png", "m.image")
    b_id, _, _ = await offer_to_agent(chat, samples.pdf(), "b.pdf", "application/pdf")

    await agent.say(chat.agent_room, f"!accept {a_id}")
    assert await reply(agent, chat.agent_room, bot, "Accepted") == f"Accepted offer #{a_id}."
    await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id), "the accepted image")
    [delivered] = agent.deliveries(chat.agent_room, chat.bot_id)
    assert await agent.download(delivered["content"]) == image

    await agent.say(chat.agent_room, f"!decline #{b_id}")
    assert await reply(agent, chat.agent_room, bot, "Declined") == f"Declined offer #{b_id}."
    await customer.until(
        lambda: customer.offer_state(chat.customer_room, a_id) == "accepted"
        and customer.offer_state(chat.customer_room, b_id) == "declined",
        "both status lines edited",
    )
    await agent.until(lambda: agent.offer_state(chat.agent_room, b_id) == "declined",
                      "the declined card")

    # A second decision on a decided offer is answered and changes nothing.
    await agent.say(chat.agent_room, f"!decline {a_id}")
    assert await reply(agent, chat.agent_room, bot, f"Offer #{a_id}") == (
        f"Offer #{a_id} was already accepted."
    )
    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    assert await stored_state(chat, a_id) == "accepted"
    assert await stored_state(chat, b_id) == "declined"
    assert len(agent.deliveries(chat.agent_room, chat.bot_id)) == 1
    # Commands are answered by the bot, never relayed to the other side.
    assert not any("!accept" in b or "!decline" in b for b in customer.bodies(chat.customer_room))


async def test_bad_decision_commands_get_a_reply_and_change_nothing(start_chat) -> None:
    """Malformed, unknown and wrong-side `!accept`/`!decline` are answered; the offer stays open."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "x.png", "image/png", "m.image")

    cases = [
        ("!accept abc", "!accept needs an offer number, like !accept 3."),
        ("!accept", "!accept needs an offer number, like !accept 3."),
        ("!decline ²", "!decline needs an offer number, like !decline 3."),  # a digit? no
        ("!accept 999999", "There is no offer #999999 waiting for a decision in this chat."),
    ]
    for text, expected in cases:
        before = len(agent.bot_bodies(chat.agent_room, bot))
        await agent.say(chat.agent_room, text)
        await agent.until(lambda n=before: len(agent.bot_bodies(chat.agent_room, bot)) > n,
                          f"the reply to {text!r}")
        assert agent.bot_bodies(chat.agent_room, bot)[before] == expected, text

    # The sender cannot decide their own offer.
    await customer.say(chat.customer_room, f"!accept {offer_id}")
    answer = await reply(customer, chat.customer_room, bot, f"Offer #{offer_id}")
    assert answer == (f"Offer #{offer_id} was sent from this side of the chat; only the agent "
                      "can accept or decline it.")

    await assert_still_offered(chat, offer_id, card)
    assert customer.deliveries(chat.customer_room, chat.bot_id) == []
    # The offer was live all along: a correct command still works.
    await agent.say(chat.agent_room, f"!accept {offer_id}")
    await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id), "the delivered file")


async def test_offer_number_from_another_session_is_refused(
    start_chat, make_user: MakeUser, make_client: MakeClient
) -> None:
    """An agent cannot accept one customer's offer from another customer's agent room."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    dave = await new_person(make_user, make_client, "dave", "Dave")
    dave_room = await dave.open_chat_with(bot)
    other_agent_room = await agent.accept_invite("the second session's agent room")
    await dave.until(lambda: any("connected" in b for b in dave.bodies(dave_room)),
                     "Dave's welcome")

    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "carol.png", "image/png",
                                             "m.image")
    await agent.say(other_agent_room, f"!accept {offer_id}")
    assert await reply(agent, other_agent_room, bot, "There is no offer") == (
        f"There is no offer #{offer_id} waiting for a decision in this chat."
    )
    await assert_still_offered(chat, offer_id, card)
    assert agent.deliveries(other_agent_room, chat.bot_id) == []
    assert dave.deliveries(dave_room, chat.bot_id) == [] and dave.offers(dave_room) == []


async def test_unknown_command_gets_short_help_and_help_lists_commands(start_chat) -> None:
    """`!frobnicate` gets a one-line list of commands, `!help` explains each; neither is relayed."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id

    await customer.say(chat.customer_room, "!frobnicate now")
    answer = await reply(customer, chat.customer_room, bot, "Unknown command")
    assert answer == ("Unknown command !frobnicate. Commands: !help, !attachments, !accept N, "
                      "!decline N, !end")

    await agent.say(chat.agent_room, "!help")
    await agent.until(lambda: agent.replies(chat.agent_room, bot, "Commands:"), "the help")
    help_event = agent.replies(chat.agent_room, bot, "Commands:")[0]["content"]
    lines = help_event["body"].splitlines()
    assert [line.split(" — ")[0] for line in lines[1:]] == [
        "!help", "!attachments", "!accept N", "!decline N", "!end"
    ]
    assert help_event["formatted_body"].count("<li>") == 5

    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    assert not any("frobnicate" in b for b in agent.bodies(chat.agent_room))
    assert not any(b.startswith("Alice (support): !") for b in customer.bodies(chat.customer_room))


# --- withdraw, expire, end -----------------------------------------------------------------


async def test_redacted_upload_is_withdrawn_and_a_later_accept_delivers_nothing(
    start_chat,
) -> None:
    """The sender deleting their upload before a decision withdraws the offer on both sides."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    offer_id, card, upload = await offer_to_agent(chat, samples.pdf(), "draft.pdf",
                                                   "application/pdf")

    await customer.redact(chat.customer_room, upload)
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "withdrawn",
                      "the card edited to withdrawn")
    await customer.until(
        lambda: customer.offer_state(chat.customer_room, offer_id) == "withdrawn",
        "the status line edited to withdrawn",
    )
    card_edit = agent.edits_of(chat.agent_room, card["event_id"])[-1]["content"]["m.new_content"]
    assert "withdrawn" in card_edit["body"]
    status = customer.offers(chat.customer_room)[0]
    status_edit = customer.edits_of(chat.customer_room, status["event_id"])[-1]
    assert "withdrawn" in status_edit["content"]["m.new_content"]["body"]

    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.say(chat.agent_room, f"!accept {offer_id}")
    assert await reply(agent, chat.agent_room, bot, f"Offer #{offer_id}") == (
        f"Offer #{offer_id} was already withdrawn."
    )
    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    assert await stored_state(chat, offer_id) == "withdrawn"
    assert agent.deliveries(chat.agent_room, chat.bot_id) == []


async def test_offer_expires_after_its_ttl_on_both_sides(start_chat) -> None:
    """An offer undecided after `policy.offer_ttl` is edited to expired and cannot be accepted."""
    chat: Chat = await start_chat(policy={"offer_ttl": "3s"})
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "late.png", "image/png",
                                             "m.image")

    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "expired",
                      "the card edited to expired", timeout=20)
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "expired",
                         "the status line edited to expired", timeout=20)
    card_edit = agent.edits_of(chat.agent_room, card["event_id"])[-1]["content"]["m.new_content"]
    assert "expired" in card_edit["body"]

    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.say(chat.agent_room, f"!accept {offer_id}")
    assert await reply(agent, chat.agent_room, bot, f"Offer #{offer_id}") == (
        f"Offer #{offer_id} was already expired."
    )
    assert await stored_state(chat, offer_id) == "expired"
    assert agent.deliveries(chat.agent_room, chat.bot_id) == []


async def test_end_expires_pending_offers_notifies_the_other_side_and_leaves(start_chat) -> None:
    """`!end` expires pending offers, tells the customer who closed the chat, and the bot leaves
    the customer room; kept in the agent room (by configuration), it answers agents there."""
    chat: Chat = await start_chat(retention={"leave_closed_rooms": False})
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    to_agent, _, _ = await offer_to_agent(chat, samples.png(), "mine.png", "image/png",
                                          "m.image")
    to_customer = await offer_to_customer(chat, samples.pdf(), "yours.pdf", "application/pdf")

    await agent.say(chat.agent_room, "!end")
    closing = (f"Alice (support) ended the chat. 2 pending files were not delivered. "
               f"To talk to us again, start a new chat with {bot}.")
    await customer.until(lambda: closing in customer.bodies(chat.customer_room, bot),
                         "the closing notice for the customer")
    await customer.until(lambda: customer.membership(chat.customer_room, bot) == "leave",
                         "the bot leaving the customer room")
    for offer_id in (to_agent, to_customer):
        assert customer.offer_state(chat.customer_room, offer_id) == "expired"
        await agent.until(lambda oid=offer_id: agent.offer_state(chat.agent_room, oid)
                          == "expired", f"offer #{offer_id} expired for the agent")
        assert await stored_state(chat, offer_id) == "expired"
    closing = "You ended the chat. 2 pending files were not delivered."
    await agent.until(lambda: closing in agent.bodies(chat.agent_room, bot),
                      "the closing notice for the agents")
    assert agent.deliveries(chat.agent_room, chat.bot_id) == []
    assert customer.deliveries(chat.customer_room, chat.bot_id) == []

    # Writing into the ended chat is answered, and decides nothing any more.
    await agent.say(chat.agent_room, f"!accept {to_agent}")
    assert await reply(agent, chat.agent_room, bot, "This chat is closed") == (
        "This chat is closed; nothing you write here is relayed any more."
    )
    assert await stored_state(chat, to_agent) == "expired"


# --- reactions that must not count ---------------------------------------------------------


async def test_stranger_in_agent_room_is_kicked_and_cannot_decide(
    start_chat, make_user: MakeUser, make_client: MakeClient
) -> None:
    """A non-agent invited into the agent room is kicked, and their ✅ and `!accept` do nothing."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "id.png", "image/png",
                                             "m.image")
    mallory = await new_person(make_user, make_client, "mallory", "Mallory")

    # With the bot stopped, Mallory surely gets to act before she can be removed (the bot
    # revokes such invites at once); it then finds her invite, join, ✅ and command in one
    # batch when it comes back.
    await chat.bot.stop()
    await agent.client.room_invite(chat.agent_room, mallory.user_id)
    await mallory.until(lambda: chat.agent_room in mallory.client.invited_rooms,
                        "Mallory's invite")
    await mallory.client.join(chat.agent_room)
    reaction = await mallory.client.room_send(
        chat.agent_room, "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": card["event_id"],
                          "key": ACCEPT}},
    )
    command = await mallory.client.room_send(
        chat.agent_room, "m.room.message", {"msgtype": "m.text", "body": f"!accept {offer_id}"}
    )
    assert isinstance(reaction, RoomSendResponse) and isinstance(command, RoomSendResponse)
    await chat.bot.start()

    await agent.until(lambda: agent.membership(chat.agent_room, mallory.user_id) == "leave",
                      "the bot removing Mallory")
    kick = [e for e in agent.events[chat.agent_room]
            if e.get("type") == "m.room.member" and e.get("state_key") == mallory.user_id][-1]
    assert kick["sender"] == bot
    # The agent room's history is visible only from one's invite on: Mallory saw no card.
    seen = {e.get("event_id") for e in mallory.events[chat.agent_room]}
    assert card["event_id"] not in seen
    await assert_still_offered(chat, offer_id, card)
    assert agent.replies(chat.agent_room, bot, "Accepted") == []
    assert not any("!accept" in b for b in chat.customer.bodies(chat.customer_room))


async def test_reactions_on_the_wrong_message_or_with_the_wrong_key_change_nothing(
    start_chat,
) -> None:
    """✅ on a status line or plain message, or ✔️ on the card, decides nothing; ✅+VS16 accepts."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    image = samples.png(20, 20, "blue")
    offer_id, card, _ = await offer_to_agent(chat, image, "blue.png", "image/png", "m.image")

    status = customer.offers(chat.customer_room)[0]
    welcome = customer.messages(chat.customer_room, chat.bot_id)[0]
    await customer.react(chat.customer_room, status["event_id"], ACCEPT)
    await customer.react(chat.customer_room, welcome["event_id"], ACCEPT)
    opened = agent.messages(chat.agent_room, chat.bot_id)[0]
    await agent.react(chat.agent_room, opened["event_id"], ACCEPT)
    hello = await customer.say(chat.customer_room, "hello")
    await agent.until(lambda: "Carol: hello" in agent.bodies(chat.agent_room), "relayed hello")
    relayed = [e for e in agent.messages(chat.agent_room) if e["content"]["body"] == "Carol: hello"]
    await agent.react(chat.agent_room, relayed[0]["event_id"], ACCEPT)
    await customer.react(chat.customer_room, hello, ACCEPT)
    await agent.react(chat.agent_room, card["event_id"], HEAVY_CHECK)

    await assert_still_offered(chat, offer_id, card)

    await agent.react(chat.agent_room, card["event_id"], ACCEPT_VS16)
    await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id),
                      "delivery after ✅+VS16")
    [delivered] = agent.deliveries(chat.agent_room, chat.bot_id)
    assert await agent.download(delivered["content"]) == image
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "accepted",
                         "the status line edited to accepted")


async def test_repeated_accepts_from_two_agents_deliver_once(start_team_chat) -> None:
    """Two agents reacting ✅ (and one re-reacting) deliver the file exactly once."""
    chat, bob = await start_team_chat()
    agent, customer = chat.agent, chat.customer
    offer_id, card, _ = await offer_to_agent(chat, samples.pdf(), "once.pdf", "application/pdf")
    await bob.until(lambda: any(e["event_id"] == card["event_id"]
                                for e in bob.offers(chat.agent_room)), "Bob sees the card")

    first = await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await bob.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id), "the delivered file")
    await agent.redact(chat.agent_room, first)
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "accepted",
                         "the status line edited to accepted")

    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    await barrier(bob, chat.agent_room, customer, chat.customer_room)
    await bob.until(lambda: bob.deliveries(chat.agent_room, chat.bot_id), "Bob sees the delivery")
    assert len(agent.deliveries(chat.agent_room, chat.bot_id)) == 1
    assert len(bob.deliveries(chat.agent_room, chat.bot_id)) == 1
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    offer = await chat.bot.parcel.store.offers.get_offer(offer_id)
    assert offer is not None and offer.decided_by == agent.user_id
    assert customer.offer_state(chat.customer_room, offer_id) == "accepted"


async def test_racing_accept_and_decline_settle_on_exactly_one_outcome(start_team_chat) -> None:
    """✅ and ❌ at once from two agents give one outcome, shown alike everywhere, ≤ 1 delivery."""
    chat, bob = await start_team_chat()
    agent, customer = chat.agent, chat.customer
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "race.png", "image/png",
                                             "m.image")

    await asyncio.gather(agent.react(chat.agent_room, card["event_id"], ACCEPT),
                         bob.react(chat.agent_room, card["event_id"], DECLINE))
    await customer.until(
        lambda: customer.offer_state(chat.customer_room, offer_id) in ("accepted", "declined"),
        "the status line edited to the outcome",
    )
    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    outcome = await stored_state(chat, offer_id)
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == outcome,
                      "the card edited to the outcome")
    assert customer.offer_state(chat.customer_room, offer_id) == outcome
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    [entry] = await chat.bot.parcel.store.offers.attachment_log(since=None)
    decisions = [state for state, _, _, _ in entry.transitions
                 if state in ("accepted", "declined")]
    assert decisions == [outcome]
    if outcome == "accepted":
        await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id), "the delivery")
    await barrier(agent, chat.agent_room, customer, chat.customer_room)
    delivered = agent.deliveries(chat.agent_room, chat.bot_id)
    assert len(delivered) == (1 if outcome == "accepted" else 0)
    edits = agent.edits_of(chat.agent_room, card["event_id"])
    assert {e["content"]["m.new_content"][OFFER_KEY]["state"] for e in edits} == {outcome}
