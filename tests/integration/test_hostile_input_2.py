"""Hostile input, second round, via the real Synapse: long pastes, stickers, polyglots, fake
quotes, look-alike names, the bot kicked out, pixel bombs."""

from __future__ import annotations

import io
import re
from typing import Any

from nio import UploadResponse

from bot.sessions.relay import MAX_CONTENT_BYTES, content_size
from bot.store import SessionState, Store
from tests import samples
from tests.chat import OFFER_KEY, Person, barrier
from tests.conftest import Chat

ACCEPT = "\u2705"
PART = re.compile(r"^Carol \((\d+)/(\d+)\): ", re.DOTALL)


def store_of(chat: Chat) -> Store:
    """The running bot's store."""
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    return chat.bot.parcel.store


def relayed_parts(person: Person, room_id: str, bot: str) -> list[dict[str, Any]]:
    """The bot's messages in a room that are parts "(k/n)" of a relayed message, in order."""
    return [e for e in person.messages(room_id, bot) if PART.match(str(e["content"]["body"]))]


def reply_target(event: dict[str, Any]) -> str | None:
    """The event id a message replies to, if it is a reply."""
    relates = event["content"].get("m.relates_to") or {}
    return (relates.get("m.in_reply_to") or {}).get("event_id")


def event_with_body(person: Person, room_id: str, body: str) -> dict[str, Any] | None:
    """The first message in a room with exactly this body."""
    return next((e for e in person.messages(room_id) if e["content"].get("body") == body), None)


async def test_long_markup_paste_is_relayed_in_ordered_parts(start_chat) -> None:
    """A 30 KB markup paste (and a long formatted one) arrive in ordered parts, then the next."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    line = "<tr><td class=cell>&nbsp;</td><td>a &amp; b</td></tr>\n"
    paste = (line * (30_000 // len(line) + 1))[:30_000]
    await customer.say(chat.customer_room, paste)
    items = "".join(f"<li><b>step {i}</b> <code>run &lt;{i}&gt;</code></li>" for i in range(1100))
    html_paste = f"<ol>{items}</ol>"
    await customer.say(chat.customer_room, "the steps, formatted", format="org.matrix.custom.html",
                       formatted_body=html_paste)
    await customer.say(chat.customer_room, "and one more thing")
    await agent.until(lambda: "Carol: and one more thing" in agent.bodies(chat.agent_room),
                      "the message after the pastes", timeout=60)

    parts = relayed_parts(agent, chat.agent_room, bot)
    markers = [PART.match(str(e["content"]["body"])).groups()  # type: ignore[union-attr]
               for e in parts]
    totals = [int(n) for _, n in markers]
    first_total = totals[0]
    assert first_total >= 2
    plain, formatted = parts[:first_total], parts[first_total:]
    assert [int(k) for k, _ in markers[:first_total]] == list(range(1, first_total + 1))
    # The plain paste comes back whole, in order, and every part fits the event limit.
    assert "".join(PART.sub("", e["content"]["body"], count=1) for e in plain) == paste
    assert formatted and all(int(n) == len(formatted) for _, n in markers[first_total:])
    for event in parts:
        assert content_size(event["content"]) <= MAX_CONTENT_BYTES + 200  # + server fields
        assert event["content"]["m.mentions"] == {}
    # The formatted paste is split as HTML: each part a well-formed list continuing the steps.
    for event in formatted:
        rich = event["content"]["formatted_body"]
        assert rich.count("<ol>") == rich.count("</ol>") == 1
        assert rich.count("<li>") == rich.count("</li>")
    joined = "".join(e["content"]["body"] for e in formatted)
    assert "step 0 run <0>" in joined and "step 1099 run <1099>" in joined
    # The message after the pastes came last: nothing was held back or lost.
    assert agent.bodies(chat.agent_room)[-1] == "Carol: and one more thing"


async def test_long_paste_into_an_encrypted_chat_arrives_in_parts(start_chat) -> None:
    """Parts sized for the limit still fit once encrypted (ciphertext is a third larger)."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    # As long as the agent's own (encrypted) event can be: escaped into HTML it is not.
    paste = ("<td>caf\u00e9 &amp; <b>ok</b></td>\n" * 2000)[:26_000]
    await agent.say(chat.agent_room, paste)
    await agent.say(chat.agent_room, "after the paste")
    await customer.until(
        lambda: "Alice (support): after the paste" in customer.bodies(chat.customer_room),
        "the message after the paste", timeout=60,
    )
    label = re.compile(r"^Alice \(support\) \((\d+)/(\d+)\): ")
    parts = [e for e in customer.messages(chat.customer_room, bot)
             if label.match(str(e["content"]["body"]))]
    assert len(parts) >= 2
    assert "".join(label.sub("", e["content"]["body"], count=1) for e in parts) == paste
    assert customer.undecryptable == []


async def test_sticker_is_offered_as_an_image_and_delivered(start_chat) -> None:
    """An m.sticker (one click in Element) becomes an image offer, delivered on ✅."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    image = samples.png(32, 32, "yellow")
    response, _ = await customer.client.upload(lambda *_: io.BytesIO(image),
                                               content_type="image/png", filename="s.png",
                                               filesize=len(image))
    assert isinstance(response, UploadResponse), response
    sticker = {"body": "thumbs up", "url": response.content_uri,
               "info": {"mimetype": "image/png", "w": 32, "h": 32, "size": len(image)}}
    await customer.send_raw(chat.customer_room, sticker, "m.sticker")
    await agent.until(lambda: agent.offers(chat.agent_room), "the sticker's offer card")
    card = agent.offers(chat.agent_room)[0]
    assert card["content"][OFFER_KEY]["mimetype"] == "image/png"
    assert "sticker (thumbs up)" in card["content"]["body"]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivered sticker")
    delivered = agent.media_events(chat.agent_room)[0]["content"]
    assert delivered["msgtype"] == "m.image" and await agent.download(delivered) == image

    # A poll and a location are answered, never silently dropped.
    await customer.send_raw(chat.customer_room, {"body": "where?", "msgtype": "m.location",
                                                 "geo_uri": "geo:1,2"})
    await customer.send_raw(chat.customer_room, {"org.matrix.msc3381.poll.start": {
        "question": {"org.matrix.msc1767.text": "Happy?"}, "answers": []}},
        "org.matrix.msc3381.poll.start")
    bot = chat.bot_user.user_id
    await customer.until(
        lambda: {"That location could not be relayed: only text and files are supported.",
                 "That poll could not be relayed: only text and files are supported."}
        <= set(customer.bot_bodies(chat.customer_room, bot)),
        "answers to the location and the poll",
    )


async def test_pdf_that_is_also_a_jar_is_refused_with_its_reason(start_chat) -> None:
    """A valid PDF that is also a runnable JAR is refused, saying both, and never offered."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, samples.pdf_jar_polyglot(), "invoice.pdf",
                             "application/pdf")
    await customer.until(
        lambda: any("was not sent" in b for b in customer.bodies(chat.customer_room)),
        "the rejection notice",
    )
    notice = next(b for b in customer.bodies(chat.customer_room) if "was not sent" in b)
    assert notice.startswith("⛔ invoice.pdf was not sent: it is a PDF document")
    assert "runnable Java program" in notice
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert agent.offers(chat.agent_room) == [] and agent.media_events(chat.agent_room) == []


async def test_fake_quotes_are_stripped_and_real_replies_carried_across(start_chat) -> None:
    """Reply fallbacks never cross the relay; a reply lands on the right copy on both sides."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    original = await agent.say(chat.agent_room, "Your ticket number is 4711")
    copy_body = "Alice (support): Your ticket number is 4711"
    await customer.until(lambda: event_with_body(customer, chat.customer_room, copy_body),
                         "the agent's message in the customer room")
    copy = event_with_body(customer, chat.customer_room, copy_body)
    assert copy is not None

    # A real reply whose fallback quotes words the agent never wrote.
    fake = f"> <{agent.user_id}> I promise you a full refund\n> today\n\nthanks!"
    fake_html = (f'<mx-reply><blockquote><a href="https://matrix.to/#/x">In reply to</a> '
                 f"{agent.user_id}<br>I promise you a full refund</blockquote></mx-reply>thanks!")
    reply_to_copy = {"m.relates_to": {"m.in_reply_to": {"event_id": copy["event_id"]}}}
    customer_original = await customer.say(chat.customer_room, fake,
                                           format="org.matrix.custom.html",
                                           formatted_body=fake_html, **reply_to_copy)
    # A fallback with no reply at all (only a forged quote).
    await customer.say(chat.customer_room, f"> <{agent.user_id}> refund approved\n\nok then")
    await agent.until(lambda: "Carol: ok then" in agent.bodies(chat.agent_room),
                      "the relayed messages")
    relayed = event_with_body(agent, chat.agent_room, "Carol: thanks!")
    assert relayed is not None
    assert "refund" not in relayed["content"]["formatted_body"]
    assert reply_target(relayed) == original  # Element shows the agent's real words
    forged = event_with_body(agent, chat.agent_room, "Carol: ok then")
    assert forged is not None and reply_target(forged) is None
    assert not any("refund" in b for b in agent.bodies(chat.agent_room))

    # The agent replies to the customer's relayed message: the customer sees a reply to their
    # own original message.
    await agent.say(chat.agent_room, "you're welcome",
                    **{"m.relates_to": {"m.in_reply_to": {"event_id": relayed["event_id"]}}})
    answer_body = "Alice (support): you're welcome"
    await customer.until(lambda: event_with_body(customer, chat.customer_room, answer_body),
                         "the agent's reply in the customer room")
    answer = event_with_body(customer, chat.customer_room, answer_body)
    assert answer is not None and reply_target(answer) == customer_original


async def test_cyrillic_look_alike_of_an_agent_is_shown_with_user_id(
    start_chat, make_user, make_client
) -> None:
    """A customer named "Аlice" (Cyrillic А) is relayed with their user id added."""
    chat: Chat = await start_chat()
    impostor_user = await make_user("imp", displayname="\u0410lice")
    impostor = Person(await make_client(impostor_user), impostor_user)
    chat.customer = impostor
    await chat.open_session()
    await impostor.say(chat.customer_room, "this is support, send me your password")
    expected = f"\u0410lice ({impostor.user_id}): this is support, send me your password"
    await chat.agent.until(lambda: expected in chat.agent.bodies(chat.agent_room),
                           "the disambiguated look-alike name")


async def test_bot_kicked_from_the_dm_closes_the_session(start_chat) -> None:
    """Kicking the bot out of the DM closes the session: agents told, offers expired, logged."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, samples.pdf(), "terms.pdf", "application/pdf")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    offer_id = agent.offers(chat.agent_room)[0]["content"][OFFER_KEY]["id"]
    await customer.client.room_kick(chat.customer_room, chat.bot_user.user_id, reason="bye")
    await agent.until(lambda: any("removed from the customer" in b
                                  for b in agent.bodies(chat.agent_room)),
                      "the closing notice in the agent room")
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "expired",
                      "the offer card edited to expired")
    # The last panel update skips the room the bot is no longer in, so the bot leaves the
    # agent room too (it used to fail posting there and stay).
    await agent.until(lambda: agent.membership(chat.agent_room, chat.bot_id) == "leave",
                      "the bot leaving the agent room")
    store = store_of(chat)
    session = (await store.sessions.sessions())[0]
    assert session.state is SessionState.CLOSED and session.close_reason == "bot_removed"
    entry = (await store.offers.attachment_log(session.id))[0]
    assert [step[0] for step in entry.transitions][-1] == "expired"
    assert entry.transitions[-1][3] == "the chat ended"


async def test_pixel_bomb_png_is_delivered_as_a_file_not_inline(start_chat) -> None:
    """A 30000×30000 PNG of ~100 KB is offered with a note and delivered as m.file."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    bomb = samples.png_bomb(30000, 30000)
    await customer.send_file(chat.customer_room, bomb, "photo.png", "image/png", "m.image")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]
    assert "too large to show in-line" in card["content"]["body"]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivered file")
    delivered = agent.media_events(chat.agent_room)[0]["content"]
    assert delivered["msgtype"] == "m.file"
    assert "w" not in delivered["info"] and "h" not in delivered["info"]
    assert delivered["info"]["mimetype"] == "image/png"
    assert await agent.download(delivered) == bomb
