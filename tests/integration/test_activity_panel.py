"""The live activity panel: one pinned bot message per room, edited as offers change."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest_asyncio
from nio import AsyncClient, RoomCreateResponse, RoomGetStateEventResponse, RoomPreset

from bot.attachments.panel import PIN_MARKER, PanelService
from bot.store import Panel, Store
from tests import samples
from tests.chat import Person
from tests.conftest import Chat
from tests.helpers import wait_for
from tests.integration.test_offer_decisions import offer_to_agent

ACCEPT = "\u2705"
PANEL_HEAD = "📋 Files in this chat"


def panel_event(person: Person, room_id: str, bot_id: str) -> dict[str, Any] | None:
    """The bot's panel message in a room, if it has arrived."""
    found = person.replies(room_id, bot_id, PANEL_HEAD)
    return found[0] if found else None


def panel_text(person: Person, room_id: str, bot_id: str) -> str:
    """What the panel shows now: its newest edit, or the message itself."""
    panel = panel_event(person, room_id, bot_id)
    if panel is None:
        return ""
    edits = person.edits_of(room_id, panel["event_id"])
    content = edits[-1]["content"]["m.new_content"] if edits else panel["content"]
    return str(content["body"])


async def pinned(person: Person, room_id: str) -> list[str]:
    """The room's m.room.pinned_events, as the homeserver has it."""
    answer = await person.client.room_get_state_event(room_id, "m.room.pinned_events")
    if not isinstance(answer, RoomGetStateEventResponse):
        return []
    return list(answer.content.get("pinned", []))


async def panel_edit_count(chat: Chat, room_id: str) -> int:
    """How many panel edits the bot has sent to a room (its outbox keeps every one)."""
    store = chat.bot.parcel.store
    count = await store.db.fetchval(
        "SELECT COUNT(*) FROM outbox WHERE room_id = ? AND txn_id LIKE ?",
        room_id, "%-panel-%-v%",
    )
    return int(count)


async def test_panel_is_pinned_and_follows_each_offer(start_chat, caplog) -> None:
    """The agent room's panel is pinned and edited from ⬆️ waiting to 📎 accepted; the
    customer room, where the bot may not pin, keeps a live unpinned panel, logged once."""
    caplog.set_level(logging.WARNING, logger="bot.attachments.panel")
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    offer_id, card, _ = await offer_to_agent(chat, samples.png(), "router.png", "image/png",
                                             "m.image")

    await agent.until(lambda: "⬆️ #1 router.png · PNG image" in panel_text(
        agent, chat.agent_room, bot), "the agent room's panel listing the waiting file")
    panel = panel_event(agent, chat.agent_room, bot)
    assert panel is not None and "io.parcel.offer" not in panel["content"]
    await wait_for(lambda: pinned(agent, chat.agent_room), what="the panel pinned")
    assert await pinned(agent, chat.agent_room) == [panel["event_id"]]

    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: "📎 #1 router.png · PNG image" in panel_text(
        agent, chat.agent_room, bot) and " · received · accepted · " in panel_text(
        agent, chat.agent_room, bot), "the panel edited to accepted")
    await customer.until(lambda: "📎 #1 router.png" in panel_text(
        customer, chat.customer_room, bot) and " · sent · accepted · " in panel_text(
        customer, chat.customer_room, bot), "the customer's panel edited to accepted")
    assert panel_text(agent, chat.agent_room, bot).startswith("📋 Files in this chat: 1\n")
    assert len(agent.replies(chat.agent_room, bot, PANEL_HEAD)) == 1  # one message, edited

    # The customer's room (a nio DM: the bot has no power to pin) is live but unpinned.
    assert await pinned(customer, chat.customer_room) == []
    refusals = [r for r in caplog.records if "may not pin" in r.getMessage()]
    assert len(refusals) == 1 and chat.customer_room in refusals[0].getMessage()
    assert (await chat.bot.parcel.store.panels.get_panel(chat.customer_room)).pin == "refused"
    assert offer_id == 1


async def test_panel_is_pinned_in_an_element_style_dm(start_chat) -> None:
    """In a DM made like Element's (trusted_private_chat: the bot may pin) the panel is pinned."""
    chat: Chat = await start_chat()
    customer, bot = chat.customer, chat.bot_user.user_id
    created = await customer.client.room_create(is_direct=True, invite=[bot],
                                                preset=RoomPreset.trusted_private_chat)
    assert isinstance(created, RoomCreateResponse), created
    chat.customer_room = created.room_id
    chat.agent_room = await chat.agent.accept_invite("the agent room invite")
    await customer.until(lambda: any("connected" in b for b in customer.bodies(
        chat.customer_room)), "the welcome message")
    await chat.agent.send_file(chat.agent_room, samples.pdf(), "terms.pdf", "application/pdf")
    await customer.until(lambda: "⬆️ #1 terms.pdf" in panel_text(
        customer, chat.customer_room, bot), "the customer's panel")
    panel = panel_event(customer, chat.customer_room, bot)
    assert panel is not None
    await wait_for(lambda: pinned(customer, chat.customer_room),
                   what="the customer's panel pinned")
    assert await pinned(customer, chat.customer_room) == [panel["event_id"]]


async def test_a_burst_of_changes_is_one_edit(start_chat) -> None:
    """Twenty changes recorded at once reach the room as a single panel edit."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, bot = chat.agent, chat.bot_user.user_id
    await offer_to_agent(chat, samples.pdf(), "terms.pdf", "application/pdf")
    await agent.until(lambda: "⬆️ #1 terms.pdf" in panel_text(agent, chat.agent_room, bot),
                      "the panel")
    parcel, store = chat.bot.parcel, chat.bot.parcel.store

    async def caught_up() -> bool:
        panel = await store.panels.get_panel(chat.agent_room)
        return panel is not None and panel.shown_version == panel.version

    await wait_for(caught_up, what="the panel caught up")
    before = await panel_edit_count(chat, chat.agent_room)
    session_id = (await store.panels.get_panel(chat.agent_room)).session_id
    for _ in range(20):
        await parcel.panels.changed(session_id)
    await wait_for(caught_up, what="the burst shown")
    assert await panel_edit_count(chat, chat.agent_room) == before + 1


async def test_panel_shows_expired_files_after_the_chat_ends(start_chat) -> None:
    """Ending the chat with a file pending leaves both panels showing it ⌛ expired."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await offer_to_agent(chat, samples.pdf(), "terms.pdf", "application/pdf")
    await agent.say(chat.agent_room, "!end")
    await customer.until(lambda: "⌛ #1 terms.pdf" in panel_text(
        customer, chat.customer_room, bot), "the customer's panel showing the expiry")
    await agent.until(lambda: "⌛ #1 terms.pdf" in panel_text(agent, chat.agent_room, bot),
                      "the agents' panel showing the expiry")


# -- pinning is a read-modify-write: checked after, and repeatable -------------------------------


@dataclass
class PinRoom:
    """A room made by a bot account, with the agent in it (both may pin), and a panel to pin."""

    service: PanelService
    store: Store
    bot: AsyncClient
    agent: AsyncClient
    room_id: str
    first: str  # a message pinned from the start
    panel: Panel


@pytest_asyncio.fixture(loop_scope="session")
async def pin_room(make_user, make_client, tmp_path) -> AsyncIterator[PinRoom]:
    bot_user, agent_user = await make_user("pinbot"), await make_user("pinagent")
    bot, agent = await make_client(bot_user), await make_client(agent_user)
    created = await bot.room_create(preset=RoomPreset.trusted_private_chat,
                                    invite=[agent_user.user_id])
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    await agent.join(room_id)
    first = (await bot.room_send(room_id, "m.room.message",
                                 {"msgtype": "m.text", "body": "pinned first"})).event_id
    await bot.room_put_state(room_id, "m.room.pinned_events", {"pinned": [first]})
    panel_id = (await bot.room_send(room_id, "m.room.message",
                                    {"msgtype": "m.text", "body": PANEL_HEAD})).event_id
    store = await Store.open(tmp_path / "parcel.db")
    session, _ = await store.sessions.create_session("!customer:test", "@carol:test", "Carol")
    await store.panels.bump_panel(session.id, room_id)
    await store.panels.update_panel(room_id, event_id=panel_id)
    panel = await store.panels.get_panel(room_id)
    assert panel is not None
    # Only _pin is exercised: it talks to the homeserver and the store, nothing else.
    work = SimpleNamespace(register=lambda *args: None)
    service = PanelService(store, bot, None, None, work)  # type: ignore[arg-type]
    try:
        yield PinRoom(service, store, bot, agent, room_id, first, panel)
    finally:
        await store.close()


async def _pins(client: AsyncClient, room_id: str) -> list[str]:
    answer = await client.room_get_state_event(room_id, "m.room.pinned_events")
    assert isinstance(answer, RoomGetStateEventResponse), answer
    return list(answer.content.get("pinned", []))


async def test_a_pin_made_while_the_panel_is_pinned_is_kept(pin_room: PinRoom) -> None:
    """Someone pins a message between the bot's read of the pins and its write: the check
    after the write sees its write replaced theirs, and both pins end up in place."""
    r = pin_room
    theirs = (await r.agent.room_send(r.room_id, "m.room.message",
                                      {"msgtype": "m.text", "body": "theirs"})).event_id
    put = r.bot.room_put_state

    async def put_after_theirs(*args: Any, **kwargs: Any) -> Any:
        r.bot.room_put_state = put  # type: ignore[method-assign]
        await r.agent.room_put_state(r.room_id, "m.room.pinned_events",
                                     {"pinned": [r.first, theirs]})
        return await put(*args, **kwargs)

    r.bot.room_put_state = put_after_theirs  # type: ignore[method-assign]
    await r.service._pin(r.panel)
    assert await _pins(r.bot, r.room_id) == [r.first, theirs, r.panel.event_id]
    assert (await r.store.panels.get_panel(r.room_id)).pin == "pinned"


async def test_a_repeat_does_not_pin_again_what_an_agent_unpinned(pin_room: PinRoom) -> None:
    """The bot's pin went through but its answer was lost; an agent unpinned the panel since.
    The repeated unit sees its earlier write in the room's history and leaves the pins alone."""
    r = pin_room
    await r.store.values.set_value(f"panel-pin-attempt:{r.room_id}", r.panel.event_id)
    await r.bot.room_put_state(r.room_id, "m.room.pinned_events",  # the write whose answer
                               {"pinned": [r.first, r.panel.event_id],  # was lost
                                PIN_MARKER: r.panel.event_id})
    await r.agent.room_put_state(r.room_id, "m.room.pinned_events", {"pinned": [r.first]})
    await r.service._pin(r.panel)
    assert await _pins(r.bot, r.room_id) == [r.first]
    assert (await r.store.panels.get_panel(r.room_id)).pin == "pinned"
    assert await r.store.values.get_value(f"panel-pin-attempt:{r.room_id}") is None


async def test_a_repeat_whose_write_never_happened_pins_once(pin_room: PinRoom) -> None:
    """The attempt was recorded but its write never reached the homeserver: the repeat pins
    the panel, once, beside what was pinned."""
    r = pin_room
    await r.store.values.set_value(f"panel-pin-attempt:{r.room_id}", r.panel.event_id)
    await r.service._pin(r.panel)
    await r.service._pin(r.panel)  # and once more: already pinned, nothing written
    assert await _pins(r.bot, r.room_id) == [r.first, r.panel.event_id]
