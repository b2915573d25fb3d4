"""Each side in its language, through the real homeserver: customers in German, agents in
French, and a customer switching their chat to Spanish with !language."""

from __future__ import annotations

from typing import Any

from nio import RoomGetStateEventResponse

from bot.render import OFFER_KEY
from tests import samples
from tests.chat import Person
from tests.conftest import Chat


def newest_body(person: Person, room_id: str, event: dict[str, Any]) -> str:
    """What a message shows now: the body of its newest edit, or its own."""
    edits = person.edits_of(room_id, event["event_id"])
    content = edits[-1]["content"]["m.new_content"] if edits else event["content"]
    return str(content.get("body"))


def said(person: Person, room_id: str, bot_id: str, text: str) -> bool:
    """Whether one of the bot's messages (not edits) in the room contains ``text``."""
    return any(text in body for body in person.bot_bodies(room_id, bot_id))


def offer_message(person: Person, room_id: str, offer_id: int) -> dict[str, Any] | None:
    """The bot's card or status line for an offer in a room (the first message with its block)."""
    for event in person.offers(room_id):
        if event["content"][OFFER_KEY]["id"] == offer_id:
            return event
    return None


async def test_customer_in_german_agents_in_french_and_a_switch_to_spanish(start_chat) -> None:
    """language: de and agents.language: fr: the customer reads German, the agents French;
    !language es switches the customer's side only (answer, later edits of the status line,
    the panel), remembered in the store; the French alias !accepter works for the agents."""
    chat: Chat = await start_chat(language="de", agents={"language": "fr"},
                                  timezone="Europe/Berlin")
    agent, customer, bot = chat.agent, chat.customer, chat.bot_id
    chat.customer_room = await customer.open_chat_with(bot)
    chat.agent_room = await agent.accept_invite("the agent room invite")
    room, agents_room = chat.customer_room, chat.agent_room

    await customer.until(lambda: said(customer, room, bot, "Hallo! Sie sind mit unserem "
                                      "Support-Team verbunden."), "the German welcome")
    assert said(customer, room, bot, "Mit !language wählen Sie eine andere Sprache.")
    await agent.until(lambda: said(agent, agents_room, bot, "Nouvelle discussion #"),
                      "the French opening line for the agents")
    name = await agent.client.room_get_state_event(agents_room, "m.room.name")
    assert isinstance(name, RoomGetStateEventResponse)
    assert name.content["name"].startswith("Discussion avec Carol (n°")

    await customer.send_file(room, samples.png(), "router.png", "image/png", "m.image")
    await agent.until(lambda: said(agent, agents_room, bot, "📥 Accepter router.png de Carol"),
                      "the French offer card")
    card = next(e for e in agent.offers(agents_room))
    offer_id = card["content"][OFFER_KEY]["id"]
    assert "image PNG" in card["content"]["body"]
    await customer.until(lambda: offer_message(customer, room, offer_id) is not None,
                         "the customer's status line")
    status = offer_message(customer, room, offer_id)
    assert status is not None
    assert "wartet auf Annahme durch den Mitarbeiter" in status["content"]["body"]
    assert "PNG-Bild" in status["content"]["body"]

    await customer.say(room, "!language")
    await customer.until(lambda: said(customer, room, bot, "Dieses Gespräch ist auf Deutsch."),
                         "the list of languages")
    assert said(customer, room, bot, "!language es — Español")
    await customer.say(room, "!language es")
    await customer.until(lambda: said(customer, room, bot, "Este chat está ahora en español."),
                         "the switch confirmed in Spanish")
    session = (await chat.bot.parcel.store.sessions.session_for_room(room))[0]
    assert session.language == "es"

    await agent.say(agents_room, f"!accepter {card['content'][OFFER_KEY]['number']}")
    await agent.until(lambda: said(agent, agents_room, bot, "acceptée."),
                      "the French answer to !accepter")
    await customer.until(
        lambda: newest_body(customer, room, status) == "📎 router.png — recibido por el agente",
        "the status line edited in Spanish")
    await agent.until(lambda: "acceptée par Alice" in newest_body(agent, agents_room, card),
                      "the card edited in French")

    await customer.say(room, "!ayuda")
    await customer.until(lambda: said(customer, room, bot, "Comandos:"), "Spanish help")
    await agent.say(agents_room, "!help")
    await agent.until(lambda: said(agent, agents_room, bot, "Commandes\u00a0:"), "French help")
    await agent.say(agents_room, "!language es")
    await agent.until(lambda: said(agent, agents_room, bot, "La langue des agents est fixée"),
                      "the agents' language stays French")

    def panel(person: Person, room_id: str, head: str) -> bool:
        return any(newest_body(person, room_id, e).startswith(head)
                   for e in person.messages(room_id, bot) if "m.new_content" not in e["content"]
                   and str(e["content"].get("body")).startswith("📋"))

    await customer.until(lambda: panel(customer, room, "📋 Archivos de este chat: 1"),
                         "the customer's panel in Spanish")
    await agent.until(lambda: panel(agent, agents_room, "📋 Fichiers de cette discussion\u00a0: 1"),
                      "the agents' panel in French")

    # A refused program: the customer is told in Spanish, the agents in French, each from
    # the reason's stored facts.
    await customer.send_file(room, samples.elf_program(), "tool", "application/octet-stream")
    await customer.until(lambda: said(customer, room, bot, "⛔ tool no se envió: el archivo es "
                                      "un programa ("), "the Spanish refusal")
    await agent.until(lambda: said(agent, agents_room, bot, "⛔ Carol a tenté d'envoyer tool"
                                   "\u00a0: refusé — le fichier est un programme ("),
                      "the French refusal notice for the agents")
