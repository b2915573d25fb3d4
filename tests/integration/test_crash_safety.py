"""SIGKILL at the interesting points: every offer ends right, delivered exactly once."""

from __future__ import annotations

import pytest
from nio import AsyncClient, JoinedRoomsResponse, RoomGetStateEventResponse

from bot.sessions.service import SESSION_MARKER
from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat

ACCEPT = "\u2705"


async def _settle_and_check(chat: Chat, image: bytes) -> None:
    agent, customer = chat.agent, chat.customer
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery")
    offer_id = agent.offers(chat.agent_room)[0]["content"][OFFER_KEY]["id"]
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "accepted",
                         "the accepted status line")
    # A last relay proves the bot has caught up; then count.
    await customer.say(chat.customer_room, "done?")
    await agent.until(lambda: "Carol: done?" in agent.bodies(chat.agent_room), "the last relay")
    assert len(agent.offers(chat.agent_room)) == 1, "the offer was posted twice"
    assert len(customer.offers(chat.customer_room)) == 1, "the status line was posted twice"
    assert len(agent.media_events(chat.agent_room)) == 1, "the file was delivered twice"
    assert await agent.download(agent.media_events(chat.agent_room)[0]["content"]) == image
    media_dir = chat.bot.config.data_dir / "media"
    assert list(media_dir.iterdir()) == [], "the temporary copy outlived its offer"


async def test_crash_after_the_upload_was_recorded_before_the_offer(start_chat) -> None:
    """Killed right after recording the upload: the offer is posted once after the restart."""
    chat: Chat = await start_chat(as_process=True)
    await chat.bot.stop()
    await chat.bot.start()
    await chat.open_session()
    await chat.bot.stop()
    await chat.bot.start(failpoint="offer-recorded")
    image = samples.png(30, 20)
    await chat.customer.send_file(chat.customer_room, image, "a.png", "image/png", "m.image")
    await chat.bot.wait_killed()
    await chat.bot.start()
    agent = chat.agent
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card after restart")
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await _settle_and_check(chat, image)


async def test_crash_after_offer_and_accept_while_down(start_chat, bot_store) -> None:
    """Killed with an offer pending; ✅ given while down is acted on once it is back (the
    ``parcel-bot`` process on SQLite and on PostgreSQL)."""
    chat: Chat = await start_chat(as_process=True, **bot_store)
    await chat.open_session()
    image = samples.png(31, 21)
    await chat.customer.send_file(chat.customer_room, image, "b.png", "image/png", "m.image")
    agent = chat.agent
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    await chat.bot.kill()
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await chat.bot.start()
    await _settle_and_check(chat, image)


async def test_a_decision_on_a_card_sent_just_before_a_crash_is_acted_on(start_chat,
                                                                       bot_store) -> None:
    """Killed after the card was sent but before its event id was recorded; the ✅ given while
    down is kept until the card is recorded on restart, then acted on once."""
    chat: Chat = await start_chat(as_process=True, **bot_store)
    await chat.open_session()
    await chat.bot.stop()
    await chat.bot.start(failpoint="card-sent")
    image = samples.png(33, 23)
    await chat.customer.send_file(chat.customer_room, image, "d.png", "image/png", "m.image")
    agent = chat.agent
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    await chat.bot.wait_killed()
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await chat.bot.start()
    await _settle_and_check(chat, image)


async def test_a_crash_between_the_status_line_and_the_seeds_seeds_once(start_chat) -> None:
    """Killed after the card and status line, before the ✅/❌ seeds (which no longer go out
    with the card): the restart puts both under the card, once, and the ✅ is acted on."""
    chat: Chat = await start_chat(as_process=True)
    await chat.open_session()
    await chat.bot.stop()
    await chat.bot.start(failpoint="status-sent")
    image = samples.png(34, 24)
    await chat.customer.send_file(chat.customer_room, image, "e.png", "image/png", "m.image")
    agent = chat.agent
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    await chat.bot.wait_killed()
    card_id = agent.offers(chat.agent_room)[0]["event_id"]
    await chat.bot.start()

    def seeds() -> list[str]:
        return sorted(e["content"]["m.relates_to"]["key"]
                      for e in agent.reactions_on(chat.agent_room, card_id)
                      if e["sender"] == chat.bot_id)

    await agent.until(lambda: len(seeds()) >= 2, "the bot's ✅ and ❌ after the restart")
    assert seeds() == sorted([ACCEPT, "\u274c"])
    await agent.react(chat.agent_room, card_id, ACCEPT)
    await _settle_and_check(chat, image)


@pytest.mark.parametrize("point", ["delivery-uploaded", "delivery-sent"])
async def test_crash_in_the_middle_of_delivering(start_chat, point: str) -> None:
    """Killed between upload and send, or after sending: still delivered exactly once."""
    chat: Chat = await start_chat(as_process=True)
    await chat.open_session()
    await chat.bot.stop()
    await chat.bot.start(failpoint=point)
    image = samples.png(32, 22)
    await chat.customer.send_file(chat.customer_room, image, "c.png", "image/png", "m.image")
    agent = chat.agent
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await chat.bot.wait_killed()
    await chat.bot.start()
    await _settle_and_check(chat, image)


async def test_encrypted_chat_survives_sigkill(start_chat) -> None:
    """After a SIGKILL the bot still decrypts the existing chats and is still cross-signed."""
    chat: Chat = await start_chat(encrypted=True, as_process=True,
                                  agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "before the crash")
    await agent.until(lambda: "Carol: before the crash" in agent.bodies(chat.agent_room), "relay")
    await chat.bot.kill()
    await customer.say(chat.customer_room, "while it was dead")
    await chat.bot.start()
    await agent.until(lambda: "Carol: while it was dead" in agent.bodies(chat.agent_room),
                      "the message sent during the crash, decrypted after restart")
    await agent.say(chat.agent_room, "after the crash")
    await customer.until(
        lambda: "Alice (support): after the crash" in customer.bodies(chat.customer_room),
        "the agent's answer, encrypted by the restarted bot",
    )
    log = chat.bot.log_path.read_text()
    assert "NOT cross-signed" not in log
    assert log.count("logged in as") == 1, "the restart must reuse the device, not log in again"
    assert agent.bodies(chat.agent_room).count("Carol: before the crash") == 1


async def test_a_crash_after_the_agent_room_was_created_makes_no_second_room(
    start_chat, bot_store
) -> None:
    """Killed after the homeserver made the agent room but before it was recorded: after the
    restart the session finds that room by its marker and uses it; the agents get one invite
    and the bot is in one agent room."""
    chat: Chat = await start_chat(as_process=True, **bot_store)
    await chat.bot.stop()
    await chat.bot.start(failpoint="agent-room-created")
    chat.customer_room = await chat.customer.open_chat_with(chat.bot_user.user_id)
    await chat.bot.wait_killed()
    await chat.bot.start()
    customer, agent = chat.customer, chat.agent
    await customer.until(lambda: any("connected" in b for b in customer.bodies(chat.customer_room)),
                         "the welcome message")
    chat.agent_room = await agent.accept_invite("the agent room invite")
    await customer.say(chat.customer_room, "one room?")
    await agent.until(lambda: "Carol: one room?" in agent.bodies(chat.agent_room), "the relay")
    assert not agent.client.invited_rooms, "the agent was invited to a second agent room"
    bot = AsyncClient(chat.homeserver.url, chat.bot_user.user_id)
    bot.restore_login(chat.bot_user.user_id, chat.bot_user.device_id, chat.bot_user.access_token)
    try:
        joined = await bot.joined_rooms()
        assert isinstance(joined, JoinedRoomsResponse), joined
        assert sorted(joined.rooms) == sorted([chat.customer_room, chat.agent_room])
        create = await bot.room_get_state_event(chat.agent_room, "m.room.create")
        assert isinstance(create, RoomGetStateEventResponse), create
        assert create.content[SESSION_MARKER].endswith(":1")
    finally:
        await bot.close()
