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


def stored_state(chat: Chat, offer_id: int) -> str:
    """The offer's state in the bot's store (decisions are written there before any reply)."""
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    offer = chat.bot.parcel.store.get_offer(offer_id)
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
    assert stored_state(chat, offer_id) == "offered"
    assert chat.agent.edits_of(chat.agent_room, card["event_id"]) == []
    assert chat.customer.offer_state(chat.customer_room, offer_id) == "offered"
    assert chat.agent.media_events(chat.agent_room) == []


@dataclass_like := None  # placeholder removed below
