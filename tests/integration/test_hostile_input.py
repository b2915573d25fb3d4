"""Hostile input via the real Synapse: evil file names, lying sizes, empty and malformed events."""

from __future__ import annotations

import io
import logging
import unicodedata
from typing import Any

import pytest
from nio import UploadResponse

from bot.store import Store
from tests import samples
from tests.chat import OFFER_KEY, Person, barrier
from tests.conftest import Chat

BODY_LIMIT = 400  # a card is two short lines around a name cut to 80 characters
INVISIBLE = ("Cc", "Cf", "Cs")

NAMES = {
    "html": "<img src=x onerror=alert(1)>.png",
    "path": "../../etc/passwd",
    "control": "re\x00po\x07rt\x1b[31m\u2066\u202e\r\n\u200bred.png",
    "long500": "l" * 496 + ".png",
    "long1000": "\u03a9" * 1200 + ".png",
    "empty": "",
}


def store_of(chat: Chat) -> Store:
    """The running bot's store."""
    assert chat.bot.parcel is not None and chat.bot.parcel.store is not None
    return chat.bot.parcel.store


def invisible(text: str, allow_newline: bool = False) -> list[str]:
    """Control, format (bidi, zero-width) and surrogate characters in ``text``."""
    return [
        f"U+{ord(ch):04X}" for ch in text
        if unicodedata.category(ch) in INVISIBLE and not (allow_newline and ch == "\n")
    ]


def assert_shown_safely(content: dict[str, Any]) -> None:
    """A bot message shows a name without raw HTML, invisible characters or unbounded length."""
    body = str(content["body"])
    assert invisible(body, allow_newline=True) == [], body
    assert len(body) <= BODY_LIMIT, len(body)
    formatted = content.get("formatted_body")
    if formatted is not None:
        assert "<img" not in formatted.lower(), formatted
        assert invisible(formatted, allow_newline=True) == [], formatted
        assert len(formatted) <= 2 * BODY_LIMIT, len(formatted)


def assert_safe_name(name: str) -> None:
    """A file name given to the recipient is one visible, bounded path component."""
    assert name not in ("", ".", ".."), name
    assert "/" not in name and "\\" not in name, name
    assert invisible(name) == [], name
    assert len(name) <= 200, len(name)


async def upload(person: Person, data: bytes, mimetype: str) -> str:
    """Upload bytes to the content repository; returns the mxc URI (for hand-made events)."""
    response, _ = await person.client.upload(lambda *_: io.BytesIO(data), content_type=mimetype,
                                             filename="x", filesize=len(data))
    assert isinstance(response, UploadResponse), response
    return response.content_uri


async def test_hostile_file_names_are_shown_safely_everywhere(start_chat) -> None:
    """HTML, path, control/bidi, very long and empty names appear escaped, cleaned and bounded."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    image = samples.png(16, 16)
    async def offer_id(upload_event: str) -> int | None:
        offer = await store_of(chat).offers.offer_by_source_event(upload_event)
        return None if offer is None else offer.id

    async def card_for(upload_event: str) -> dict[str, Any] | None:
        wanted = await offer_id(upload_event)
        for event in agent.offers(chat.agent_room):
            if event["content"][OFFER_KEY]["id"] == wanted:
                return event
        return None

    async def has_card(upload_event: str) -> bool:
        return await card_for(upload_event) is not None

    async def status_offered(upload_event: str) -> bool:
        offer = await offer_id(upload_event)
        return customer.offer_state(chat.customer_room, offer) == "offered"

    uploads: dict[str, str] = {}
    for key, name in NAMES.items():
        # One at a time: a burst of more than 10 events between two syncs would come back as
        # a "limited" timeline, and the recording clients would miss some of them.
        upload = await customer.send_file(chat.customer_room, image, name, "image/png",
                                          "m.image")
        uploads[key] = upload
        await agent.until(lambda u=upload: has_card(u), f"the {key} card")
        await customer.until(lambda u=upload: status_offered(u), f"the {key} status line")

    ids = {key: await offer_id(event_id) for key, event_id in uploads.items()}
    cards = {key: (await card_for(event_id))["content"]  # type: ignore[index]
             for key, event_id in uploads.items()}
    statuses = {
        e["content"][OFFER_KEY]["id"]: e["content"] for e in customer.offers(chat.customer_room)
    }
    for key, content in cards.items():
        assert_shown_safely(content)
        assert_shown_safely(statuses[ids[key]])
        assert_safe_name(content[OFFER_KEY]["filename"])
        assert content[OFFER_KEY]["state"] == "offered", key

    assert "&lt;img src=x onerror=alert(1)&gt;.png" in cards["html"]["formatted_body"]
    assert cards["html"][OFFER_KEY]["filename"] == NAMES["html"]  # kept, as plain text
    assert cards["path"][OFFER_KEY]["filename"] == "etc_passwd"
    assert "../" not in cards["path"]["body"] and "passwd" in cards["path"]["body"]
    assert cards["control"][OFFER_KEY]["filename"] == "report[31m red.png"
    assert "unnamed file" in cards["empty"]["body"]
    for key in ("long500", "long1000"):
        shown = cards[key]["body"].split("📥 Accept ", 1)[1].split(" from ", 1)[0]
        assert len(shown) <= 80 and "\u2026" in shown and shown.endswith(".png"), shown

    # Accepted, the files arrive under the cleaned names.
    def bot_media() -> list[dict[str, Any]]:
        return [e for e in agent.media_events(chat.agent_room) if e["sender"] == bot]

    for count, key in enumerate(("html", "path", "control", "empty"), start=1):
        await agent.say(chat.agent_room, f"!accept {ids[key]}")
        await agent.until(lambda n=count: len(bot_media()) == n, f"the {key} delivery")
    names = sorted(e["content"]["body"] for e in bot_media())
    assert names == sorted([NAMES["html"], "etc_passwd", "report[31m red.png", "unnamed file"])
    for event in bot_media():
        assert event["content"]["filename"] == event["content"]["body"]
        assert_safe_name(event["content"]["filename"])

    # The attachment log shows the same names, escaped.
    await customer.say(chat.customer_room, "!attachments")
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "Attachments"),
                         "the attachment log")
    log = customer.replies(chat.customer_room, bot, "Attachments")[0]["content"]
    assert "<img" not in log["formatted_body"].lower()
    assert invisible(log["body"], allow_newline=True) == []
    assert "&lt;img" in log["formatted_body"]


async def test_right_to_left_override_cannot_disguise_a_program(start_chat) -> None:
    """`invoice<U+202E>fdp.exe` (seen as "invoiceexe.pdf") is refused as a program, shown plain."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.send_file(chat.customer_room, samples.pdf(), "invoice\u202efdp.exe",
                             "application/pdf")
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "\u26d4"),
                         "the rejection notice")
    notice = customer.replies(chat.customer_room, bot, "\u26d4")[0]["content"]
    assert notice["body"] == ("\u26d4 invoicefdp.exe was not sent: its name ends in .exe, which "
                              "is run as a program, and programs are not allowed")
    assert_shown_safely(notice)
    assert notice[OFFER_KEY]["state"] == "rejected"
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert agent.offers(chat.agent_room) == []
    assert [e for e in agent.media_events(chat.agent_room) if e["sender"] == bot] == []


async def test_declared_size_that_lies_is_refused_by_the_real_size(start_chat) -> None:
    """A 100 KB file that declares 1 KB is refused against a 64 KB limit, with the limit named."""
    chat: Chat = await start_chat(policy={"max_size": "64KB"})
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.send_file(chat.customer_room, samples.noise(100_000), "data.bin",
                             "application/octet-stream",
                             info={"mimetype": "application/octet-stream", "size": 1000})
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "\u26d4"),
                         "the rejection notice")
    notice = customer.replies(chat.customer_room, bot, "\u26d4")[0]["content"]["body"]
    assert notice == "\u26d4 data.bin was not sent: it is larger than the limit of 64 KB"
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert agent.offers(chat.agent_room) == []
    [offer] = await store_of(chat).offers.session_offers(1)
    assert offer.state.value == "rejected" and offer.temp_path is None


async def test_empty_file_is_refused_as_empty(start_chat) -> None:
    """A zero-byte upload is refused with "it is empty" and never offered."""
    chat: Chat = await start_chat()
    await chat.open_session()
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    await customer.send_file(chat.customer_room, b"", "notes.txt", "text/plain")
    await customer.until(lambda: customer.replies(chat.customer_room, bot, "\u26d4"),
                         "the rejection notice")
    notice = customer.replies(chat.customer_room, bot, "\u26d4")[0]["content"]["body"]
    assert notice == "\u26d4 notes.txt was not sent: it is empty"
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert agent.offers(chat.agent_room) == []


async def test_malformed_events_get_a_clear_notice_and_the_relay_goes_on(
    start_chat, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong-typed or missing fields in messages and reactions are answered or ignored, unharmed."""
    # An encrypted DM, as Element makes it: the server cannot check what it cannot read, so
    # a number for a body or a list for a msgtype reaches the bot only this way.
    chat: Chat = await start_chat(encrypted=True)
    await chat.open_session(encrypted=True)
    agent, customer, bot = chat.agent, chat.customer, chat.bot_user.user_id
    room = chat.customer_room
    pdf_uri = await upload(customer, samples.pdf(), "application/pdf")
    hello = await customer.say(room, "hello")
    await agent.until(lambda: "Carol: hello" in agent.bodies(chat.agent_room), "relayed hello")

    malformed: list[tuple[str, dict[str, Any]]] = [
        ("m.room.message", {"msgtype": "m.file", "body": 12345, "url": pdf_uri,
                            "info": {"mimetype": "application/pdf"}}),
        ("m.room.message", {"msgtype": "m.image", "body": "pic.png"}),
        ("m.room.message", {"msgtype": "m.file", "body": "weird.pdf", "url": 42,
                            "info": "big"}),
        ("m.room.message", {"msgtype": "m.file", "body": "elsewhere.pdf",
                            "url": "https://example.org/elsewhere.pdf"}),
        ("m.room.message", {"msgtype": "m.file", "body": "locked.pdf",
                            "file": {"url": pdf_uri, "key": "nope", "iv": 5, "hashes": []}}),
        ("m.room.message", {"msgtype": "m.file", "body": "sized.pdf", "url": pdf_uri,
                            "info": {"size": "1 KB", "mimetype": 7, "w": "wide"}}),
        ("m.room.message", {"msgtype": "m.text", "body": 42}),
        ("m.room.message", {"msgtype": ["m.text"], "body": "a list for a msgtype"}),
        ("m.room.message", {}),
        ("m.room.message", {"msgtype": "m.text", "body": "* hi",
                            "m.new_content": {"msgtype": {"no": 1}, "body": "hi"},
                            "m.relates_to": {"rel_type": "m.replace", "event_id": hello}}),
        ("m.reaction", {"m.relates_to": "oops"}),
        ("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": 7, "key": 1}}),
    ]
    for event_type, content in malformed:
        await customer.send_raw(room, content, event_type)
        await customer.client.sync(timeout=0)  # keep each sync's batch under the limit of 10

    rejected = {
        "pic.png": "the message has no file attached",
        "weird.pdf": "the message has no file attached",
        "elsewhere.pdf": "the message has no valid file address",
        "locked.pdf": "the file's encryption version is missing; only v2 is supported",
    }
    expected = [f"\u26d4 {name} was not sent: {why}" for name, why in rejected.items()]
    unrelayable = "That message could not be relayed: only text and files are supported."
    await customer.until(
        lambda: all(text in customer.bot_bodies(room, bot) for text in expected)
        and customer.bot_bodies(room, bot).count(unrelayable) == 4,
        "a notice for every malformed message",
    )
    # Files with odd but harmless fields are still offered, under a safe name.
    await agent.until(lambda: len(agent.offers(chat.agent_room)) == 2, "two offer cards")
    names = sorted(e["content"][OFFER_KEY]["filename"] for e in agent.offers(chat.agent_room))
    assert names == ["sized.pdf", "unnamed file"]
    assert all(e["content"][OFFER_KEY]["mimetype"] == "application/pdf"
               for e in agent.offers(chat.agent_room))

    # The bot kept going: text still flows both ways.
    await barrier(customer, room, agent, chat.agent_room)
    await barrier(agent, chat.agent_room, customer, room)
    assert agent.bodies(chat.agent_room).count("Carol: hello") == 1
    failures = [r.getMessage() for r in caplog.records
                if r.name == "bot.router" and r.levelno >= logging.ERROR]
    assert failures == []
