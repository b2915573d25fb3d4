"""Durable work on a real Synapse: outages, permanent failures, late keys, strangers, tidy-up."""

from __future__ import annotations

import asyncio
import logging
import time

from nio import RoomGetStateEventResponse, RoomPutStateResponse, ToDeviceMessage

from bot.store import Store
from tests import samples
from tests.chat import Person, barrier, new_person
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy
from tests.helpers import wait_for

ACCEPT = "\u2705"
BIG = 30 * 1024 * 1024
logger = logging.getLogger(__name__)


def store_of(chat: Chat) -> Store:
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    return chat.bot.parcel.store






async def no_work_left(store: Store) -> bool:
    """Whether the store has no waiting work unit."""
    return await store.work.work_units() == []


async def test_outage_longer_than_the_backoff_cap_loses_nothing(start_chat, homeserver) -> None:
    """Synapse stopped while an accepted file's copy is uploading, while another is being
    inspected and with texts in flight, for longer than the backoff cap: without a bot restart
    every file arrives once and intact, every text once and in order, and the file caught
    mid-download is offered."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, retry={"max_backoff": "2s"},
                                      policy={"max_size": "40MB"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        store = store_of(chat)
        session_id = (await store.sessions.sessions())[-1].id

        # The bot's transfers crawl, so that the outage catches them under way.
        proxy.rate = 3 * 1024 * 1024  # ten seconds a transfer: room for a slow, busy machine
        # The staging upload follows the download as it comes in; crawling slower, it is still
        # under way when the outage starts.
        proxy.upload_rate = 1024 * 1024
        to_customer = samples.noise(BIG, seed=1)
        await agent.send_file(chat.agent_room, to_customer, "manual.bin",
                              "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "manual.bin"),
                             "the offer to the customer", timeout=60)
        card = customer.offer_named(chat.customer_room, "manual.bin")
        assert card is not None
        # Accepted while its copy is still being staged (uploaded): the delivery waits on it.
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        from_customer = samples.noise(BIG, seed=2)
        await customer.send_file(chat.customer_room, from_customer, "photos.bin",
                                 "application/octet-stream")
        texts = [f"in flight {n}" for n in range(5)]
        for text in texts:
            await customer.say(chat.customer_room, text)
        async def both_under_way() -> bool:
            offers = await store.offers.session_offers(session_id)
            return ({o.filename: o.state.value for o in offers}
                    == {"manual.bin": "accepted", "photos.bin": "inspecting"})

        await wait_for(both_under_way, what="the delivery and the inspection under way",
                       interval=0.01)
        await asyncio.sleep(1.0)  # a second into both transfers
        in_flight = {o.filename: (o.state.value, o.staged_uri is not None,
                                  o.delivery_event_id is not None)
                     for o in await store.offers.session_offers(session_id)}
        await homeserver.stop()
        stopped = time.monotonic()
        try:
            await asyncio.sleep(12)  # the outage itself: six times the backoff cap
        finally:
            await homeserver.start()
        back = time.monotonic()
        proxy.rate = proxy.upload_rate = None
        assert chat.bot.running, "the bot stopped during the outage"

        after = "right after the outage"
        await customer.say(chat.customer_room, after)
        await agent.until(lambda: f"Carol: {after}" in agent.bodies(chat.agent_room),
                          "the relay after the outage", timeout=120)
        await agent.until(lambda: agent.offer_named(chat.agent_room, "photos.bin"),
                          "the offer caught mid-download", timeout=120)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the accepted file", timeout=120)
        recovered = time.monotonic()
        logger.warning("outage test: at the stop %s; down %.1f s; all done %.1f s after "
                       "Synapse was back", in_flight, back - stopped, recovered - back)
        assert in_flight == {"manual.bin": ("accepted", False, False),
                             "photos.bin": ("inspecting", False, False)}

        bodies = [b for b in agent.bodies(chat.agent_room) if b.startswith("Carol: ")]
        assert bodies == [f"Carol: {t}" for t in [*texts, after]], bodies
        delivered = customer.deliveries(chat.customer_room, chat.bot_id)
        assert len(delivered) == 1
        assert await customer.download(delivered[0]["content"]) == to_customer
        offer = agent.offer_named(chat.agent_room, "photos.bin")
        assert offer is not None
        await agent.react(chat.agent_room, offer["event_id"], ACCEPT)
        await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id),
                          "the customer's file")
        await barrier(customer, chat.customer_room, agent, chat.agent_room)
        got = agent.deliveries(chat.agent_room, chat.bot_id)
        assert len(got) == 1 and await agent.download(got[0]["content"]) == from_customer
        await wait_for(lambda: no_work_left(store), what="no work left")


async def _forbid_bot_messages(customer: Person, room_id: str) -> None:
    """The customer changes the room's power levels so that the bot may no longer post."""
    current = await customer.client.room_get_state_event(room_id, "m.room.power_levels")
    assert isinstance(current, RoomGetStateEventResponse), current
    levels = dict(current.content)
    levels["events"] = {**levels.get("events", {}), "m.room.message": 50}
    changed = await customer.client.room_put_state(room_id, "m.room.power_levels", levels)
    assert isinstance(changed, RoomPutStateResponse), changed


async def test_a_permanent_failure_tells_the_sender_and_the_chat_goes_on(start_chat) -> None:
    """When the bot may no longer post in the customer's room, the agent's file offer fails
    once with a plain message to the agent, and the customer's texts are still relayed."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await _forbid_bot_messages(customer, chat.customer_room)
    await barrier(customer, chat.customer_room, agent, chat.agent_room)

    await agent.send_file(chat.agent_room, samples.pdf(), "terms.pdf", "application/pdf")
    await agent.until(lambda: any("terms.pdf could not be offered" in b and
                                  "not allowed to post" in b
                                  for b in agent.bodies(chat.agent_room)),
                      "the failure notice to the agent")
    await agent.say(chat.agent_room, "can you see this?")
    await agent.until(lambda: any("could not be relayed" in b
                                  for b in agent.bodies(chat.agent_room)),
                      "the undelivered-text notice to the agent")
    await customer.say(chat.customer_room, "still here")
    await agent.until(lambda: "Carol: still here" in agent.bodies(chat.agent_room),
                      "the customer's next text")
    store = store_of(chat)
    offer = (await store.offers.session_offers((await store.sessions.sessions())[-1].id))[0]
    assert offer.state.value == "failed" and "not allowed to post" in (offer.reason or "")
    await wait_for(lambda: no_work_left(store), what="no work left")
    assert customer.offers(chat.customer_room) == []


async def test_stranger_removal_is_retried_and_nothing_is_relayed_meanwhile(
    start_chat, homeserver, make_user, make_client
) -> None:
    """A kick that fails at first (502s from the homeserver's front) is retried until the
    stranger is gone; what the customer said meanwhile reaches the agents only after."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, retry={"max_backoff": "1s"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        stranger = await new_person(make_user, make_client, "mallory", "Mallory")
        kicks = proxy.fail("POST", r"/kick$", times=4)
        await agent.client.room_invite(chat.agent_room, stranger.user_id)
        joined = await stranger.accept_invite("the stranger's invite")
        assert joined == chat.agent_room
        await wait_for(lambda: kicks.hits >= 1, what="the first kick attempt")
        await customer.say(chat.customer_room, "my card number is 1234")
        await agent.until(lambda: "Carol: my card number is 1234" in
                          agent.bodies(chat.agent_room), "the held relay", timeout=60)
        assert kicks.hits == 4
        assert agent.membership(chat.agent_room, stranger.user_id) == "leave"
        timeline = agent.events[chat.agent_room]
        removed_at = next(i for i, e in enumerate(timeline)
                          if e.get("type") == "m.room.member"
                          and e.get("state_key") == stranger.user_id
                          and e["content"].get("membership") == "leave")
        relayed_at = next(i for i, e in enumerate(timeline)
                          if "1234" in str(e.get("content", {}).get("body")))
        assert removed_at < relayed_at, "the text went out while the stranger was in the room"
        assert not any("1234" in b for b in stranger.bodies(chat.agent_room))


async def test_a_message_whose_keys_arrive_after_a_restart_is_relayed(start_chat) -> None:
    """An encrypted message the bot could not read is kept; its room key, delivered only
    after the bot restarted, opens it and it is relayed (no please-resend notice)."""
    chat: Chat = await start_chat(encrypted=True)
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "first, readable")
    await agent.until(lambda: "Carol: first, readable" in agent.bodies(chat.agent_room),
                      "the readable message")
    olm = customer.client.olm
    room_id = chat.customer_room
    bot_devices = list(olm.device_store.active_user_devices(chat.bot_user.user_id))
    assert bot_devices, "the customer knows the bot's device"
    # The bot's device gets no key for the next message now (blacklisting also starts a new
    # megolm session); the key is kept to be delivered later, as a delayed to-device would be.
    for device in bot_devices:
        customer.client.blacklist_device(device)
    olm.outbound_group_sessions.pop(room_id, None)
    olm.create_outbound_group_session(room_id)
    session = olm.outbound_group_sessions[room_id]
    held_key = {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room_id,
                "session_id": session.id, "session_key": session.session_key}
    await customer.say(chat.customer_room, "the late one")
    assert olm.outbound_group_sessions[room_id].id == held_key["session_id"]
    store = store_of(chat)

    async def kept_as_work() -> bool:
        return any(u.kind == "decrypt" for u in await store.work.work_units())

    await wait_for(kept_as_work, what="the undecryptable message kept as work")

    await chat.bot.stop()
    await chat.bot.start()
    for device in bot_devices:
        customer.client.unblacklist_device(device)
        olm_session = olm.session_store.get(device.curve25519)
        assert olm_session is not None
        message = olm._olm_encrypt(olm_session, device, "m.room_key", held_key)
        sent = await customer.client.to_device(ToDeviceMessage(
            "m.room.encrypted", device.user_id, device.id, message))
        assert not hasattr(sent, "status_code"), sent

    await agent.until(lambda: "Carol: the late one" in agent.bodies(chat.agent_room),
                      "the late message, relayed", timeout=60)
    assert not any("could not be read" in b for b in customer.bodies(chat.customer_room))


async def test_a_closed_session_renames_and_leaves_its_rooms(start_chat) -> None:
    """After !end the agent room is called "[closed] …" and the bot has left both rooms, so
    syncs do not grow with history; a restart does not bring them back."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "!end")
    bot = chat.bot_user.user_id
    await agent.until(lambda: agent.membership(chat.agent_room, bot) == "leave",
                      "the bot leaving the agent room")
    await customer.until(lambda: customer.membership(chat.customer_room, bot) == "leave",
                         "the bot leaving the customer room")
    name = await agent.client.room_get_state_event(chat.agent_room, "m.room.name")
    assert isinstance(name, RoomGetStateEventResponse)
    assert name.content["name"].startswith("[closed] Chat with Carol")
    await chat.bot.stop()
    await chat.bot.start()
    assert chat.bot.parcel is not None and chat.bot.parcel.client is not None
    assert chat.agent_room not in chat.bot.parcel.client.rooms
    assert chat.customer_room not in chat.bot.parcel.client.rooms


def held_room_keys(chat: Chat, room_id: str) -> tuple[int, int]:
    """Inbound Megolm sessions of ``room_id`` in the running bot: (in memory, in nio's store)."""
    assert chat.bot.parcel is not None and chat.bot.parcel.client is not None
    client = chat.bot.parcel.client
    assert client.olm is not None and client.store is not None
    in_memory = sum(len(by_sender) for by_sender in
                    client.olm.inbound_group_store._entries.get(room_id, {}).values())
    stored = sum(1 for session in client.store.load_inbound_group_sessions()
                 if session.room_id == room_id)
    return in_memory, stored


async def test_a_closed_encrypted_session_forgets_its_room_keys(start_chat) -> None:
    """Once the bot has left a closed encrypted chat, its room keys are gone from memory and
    from the crypto store, so they are neither loaded at start nor readable from a copy."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "hello, I need help")
    await agent.until(lambda: any("hello, I need help" in b
                                  for b in agent.bodies(chat.agent_room)),
                      "the customer's message relayed")
    await agent.say(chat.agent_room, "hello from support")
    await customer.until(lambda: any("hello from support" in b
                                     for b in customer.bodies(chat.customer_room)),
                         "the agent's reply relayed")
    assert held_room_keys(chat, chat.customer_room)[0] > 0
    assert held_room_keys(chat, chat.agent_room)[0] > 0
    await customer.say(chat.customer_room, "!end")
    bot = chat.bot_user.user_id
    await customer.until(lambda: customer.membership(chat.customer_room, bot) == "leave",
                         "the bot leaving the customer room")
    await agent.until(lambda: agent.membership(chat.agent_room, bot) == "leave",
                      "the bot leaving the agent room")
    await wait_for(lambda: held_room_keys(chat, chat.customer_room) == (0, 0)
                   and held_room_keys(chat, chat.agent_room) == (0, 0),
                   what="the closed rooms' keys forgotten")
    await chat.bot.stop()
    await chat.bot.start()
    assert held_room_keys(chat, chat.customer_room) == (0, 0)


class BrieflyDown:
    """One store method failing as PostgreSQL's connections do while it restarts, for the
    first ``times`` calls, then working again."""

    def __init__(self, owner: object, name: str, times: int) -> None:
        import asyncpg

        from bot.errors import from_database

        self.left = times
        original = getattr(owner, name)

        async def failing(*args, **kwargs):
            if self.left > 0:
                self.left -= 1
                raise from_database(asyncpg.AdminShutdownError(
                    "terminating connection due to administrator command"), "the store")
            return await original(*args, **kwargs)

        setattr(owner, name, failing)


async def test_an_event_whose_handling_failed_is_handled_later_exactly_once(
    start_chat, caplog
) -> None:
    """The store failing while a text is relayed and while a file's offer is recorded delays
    those events, never loses them: the sync position does not pass them, the batch is handed
    over again, and each reaches the agents exactly once."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    store = store_of(chat)
    relay_fails = BrieflyDown(store.work, "submit_work", times=3)
    await customer.say(chat.customer_room, "said while the store restarts")
    await agent.until(lambda: "Carol: said while the store restarts"
                      in agent.bodies(chat.agent_room), "the relayed text", timeout=60)
    assert relay_fails.left == 0
    offer_fails = BrieflyDown(store.offers, "create_offer", times=2)
    await customer.send_file(chat.customer_room, samples.png(), "photo.png", "image/png")
    await agent.until(lambda: agent.offer_named(chat.agent_room, "photo.png"),
                      "the offer recorded after the store came back", timeout=60)
    assert offer_fails.left == 0
    await customer.say(chat.customer_room, "and after")
    await agent.until(lambda: "Carol: and after" in agent.bodies(chat.agent_room),
                      "the text after", timeout=60)
    bodies = agent.bodies(chat.agent_room)
    assert bodies.count("Carol: said while the store restarts") == 1
    cards = [e for e in agent.offers(chat.agent_room)
             if e["content"]["io.parcel.offer"]["filename"] == "photo.png"]
    assert len(cards) == 1, f"{len(cards)} offer cards for one upload"
    assert len(await store.offers.session_offers(
        (await store.sessions.sessions())[-1].id)) == 1
    assert any("sync loop recovered" in r.getMessage() for r in caplog.records)
