"""Load: 50 sessions at once, each with text and two decided offers, all correct."""

from __future__ import annotations

import asyncio
import hashlib

from tests import samples
from tests.chat import OFFER_KEY, Person
from tests.conftest import Chat
from tests.helpers import wait_for

SESSIONS = 50
ACCEPT, DECLINE = "\u2705", "\u274c"


async def test_fifty_concurrent_sessions(start_chat, make_user, make_client) -> None:
    """Every offer of 50 parallel sessions ends right; accepted files arrive once, intact."""
    chat: Chat = await start_chat()
    agent = chat.agent
    customers = []
    for index in range(SESSIONS):
        user = await make_user(f"load{index}", displayname=f"Customer {index}")
        customers.append(Person(await make_client(user), user))

    rooms = await asyncio.gather(*(c.open_chat_with(chat.bot_user.user_id) for c in customers))
    # The agent joins every agent room the bot creates.
    joined: set[str] = set()

    async def join_all() -> bool:
        await agent.client.sync(timeout=1000)
        for room_id in list(agent.client.invited_rooms):
            await agent.client.join(room_id)
            joined.add(room_id)
        return len(joined) >= SESSIONS

    await wait_for(join_all, timeout=240, what="50 agent rooms")
    images = {i: samples.png(10 + i, 10) for i in range(SESSIONS)}

    async def customer_side(index: int) -> None:
        person, room = customers[index], rooms[index]
        await person.until(lambda: any("connected" in b for b in person.bodies(room)),
                           "the welcome", timeout=120)
        await person.say(room, f"hello from {index}")
        await person.send_file(room, images[index], f"photo{index}.png", "image/png", "m.image")
        await person.send_file(room, samples.pdf(), f"doc{index}.pdf", "application/pdf")

    await asyncio.gather(*(customer_side(i) for i in range(SESSIONS)))

    def cards() -> list[dict]:
        return [c for room in joined for c in agent.offers(room)]

    await agent.until(lambda: len(cards()) == 2 * SESSIONS, "100 offer cards", timeout=240)
    by_room = {room: agent.offers(room) for room in joined}
    for room, offers in by_room.items():
        for card in offers:
            key = ACCEPT if card["content"][OFFER_KEY]["mimetype"] == "image/png" else DECLINE
            await agent.react(room, card["event_id"], key)
    await agent.until(
        lambda: sum(len(agent.media_events(room)) for room in joined) >= SESSIONS,
        "50 deliveries", timeout=240,
    )
    expected = {hashlib.sha256(data).hexdigest() for data in images.values()}
    got = set()
    for room in joined:
        media = agent.media_events(room)
        assert len(media) == 1, f"{room} got {len(media)} files"
        got.add(hashlib.sha256(await agent.download(media[0]["content"])).hexdigest())
        assert any(b.startswith("Customer ") and "hello from" in b for b in agent.bodies(room))
    assert got == expected
    parcel = chat.bot.parcel
    assert parcel is not None and parcel.store is not None
    async def final_states() -> bool:
        log = await parcel.store.offers.attachment_log()
        return (sorted(e.offer.state.value for e in log)
                == ["accepted"] * SESSIONS + ["declined"] * SESSIONS)

    await wait_for(final_states, timeout=60, what="every offer's final state")
