"""End-to-end encryption: encrypted DM, encrypted agent room, encrypted media in and out."""

from __future__ import annotations

import io

from nio import Api, RoomSendResponse
from nio.crypto.attachments import encrypt_attachment

from tests import samples
from tests.chat import OFFER_KEY, Person
from tests.conftest import Chat

ACCEPT = "\u2705"


async def test_encrypted_chat_relays_text_and_redelivers_an_encrypted_image(start_chat) -> None:
    """In encrypted rooms text flows both ways and an accepted image arrives re-encrypted."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    assert agent.client.rooms[chat.agent_room].encrypted

    await customer.say(chat.customer_room, "secret hello")
    await agent.until(lambda: "Carol: secret hello" in agent.bodies(chat.agent_room),
                      "the decrypted relay in the agent room")
    await agent.say(chat.agent_room, "secret answer")
    await customer.until(
        lambda: "Alice (support): secret answer" in customer.bodies(chat.customer_room),
        "the decrypted relay in the customer room",
    )

    image = samples.png(40, 30, "blue")
    await customer.send_file(chat.customer_room, image, "photo.png", "image/png", "m.image",
                             encrypt=True)
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivered image")
    delivered = agent.media_events(chat.agent_room)[0]["content"]
    assert "file" in delivered and "url" not in delivered
    assert await agent.download(delivered) == image
    offer_id = card["content"][OFFER_KEY]["id"]
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id) == "accepted",
                         "the status line edited to accepted")
    sent = [e for e in customer.messages(chat.customer_room) if "file" in e["content"]]
    assert sent[0]["content"]["file"]["key"]["k"] != delivered["file"]["key"]["k"]
    assert sent[0]["content"]["file"]["url"] != delivered["file"]["url"]
    assert customer.undecryptable == [] and agent.undecryptable == []
    assert chat.bot.parcel is not None and chat.bot.parcel.cross_signing is not None
    assert chat.bot.parcel.cross_signing.cross_signed, chat.bot.parcel.cross_signing.detail


async def test_undecryptable_message_asks_the_sender_to_resend(start_chat) -> None:
    """A message the bot cannot decrypt is not dropped silently: the sender is asked to resend."""
    chat: Chat = await start_chat(encrypted=True,
                                  retry={"undecryptable_for": "3s", "max_backoff": "1s"})
    await chat.open_session(encrypted=True)
    customer = chat.customer
    bogus = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
        "sender_key": customer.client.olm.account.identity_keys["curve25519"],
        "session_id": "nosuchsessionnosuchsessionnosuchsession0",
        "device_id": customer.client.device_id,
    }
    method, path, data = Api.room_send(customer.client.access_token, chat.customer_room,
                                       "m.room.encrypted", bogus, "bogus-1")
    await customer.client._send(RoomSendResponse, method, path, data, (chat.customer_room,))
    await customer.until(
        lambda: any("could not be read" in b for b in customer.bodies(chat.customer_room)),
        "the please-resend notice",
    )


async def test_late_joining_agent_can_read_the_encrypted_agent_room(
    start_chat, make_user, make_client
) -> None:
    """An agent who accepts the invite late still gets the keys for what is relayed after."""
    late_user = await make_user("bob", displayname="Bob")
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True},
                                  extra_agents=[late_user.user_id])
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "first, before Bob")
    await agent.until(lambda: "Carol: first, before Bob" in agent.bodies(chat.agent_room), "relay")

    bob = Person(await make_client(late_user, encrypted=True), late_user)
    await bob.accept_invite("Bob's invite to the agent room")
    await customer.say(chat.customer_room, "second, after Bob joined")
    await bob.until(lambda: "Carol: second, after Bob joined" in bob.bodies(chat.agent_room),
                    "Bob reading the relayed message", timeout=60)


async def test_tampered_encrypted_file_is_rejected_and_encrypted_pdf_declined(start_chat) -> None:
    """A ciphertext whose hash does not match is refused; an encrypted PDF can be declined."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    ciphertext, keys = encrypt_attachment(samples.png(12, 12))
    tampered = bytearray(ciphertext)
    tampered[-1] ^= 0xFF
    upload, _ = await customer.client.upload(lambda *_: io.BytesIO(bytes(tampered)),
                                             content_type="application/octet-stream",
                                             filesize=len(tampered))
    content = {"msgtype": "m.image", "body": "tampered.png",
               "info": {"mimetype": "image/png", "size": len(tampered)},
               "file": {**keys, "url": upload.content_uri}}
    await customer.client.room_send(chat.customer_room, "m.room.message", content,
                                    ignore_unverified_devices=True)
    await customer.until(
        lambda: any("tampered.png was not sent" in b and "checksum" in b
                    for b in customer.bodies(chat.customer_room)),
        "the rejection of the tampered file",
    )

    await agent.send_file(chat.agent_room, samples.pdf(), "terms.pdf", "application/pdf",
                          encrypt=True)
    def pdf_cards() -> list[dict]:
        return [e for e in customer.offers(chat.customer_room)
                if e["content"][OFFER_KEY]["filename"] == "terms.pdf"]

    await customer.until(pdf_cards, "the PDF offer card")
    card = pdf_cards()[0]
    await customer.react(chat.customer_room, card["event_id"], "\u274c")
    offer_id = card["content"][OFFER_KEY]["id"]
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "declined",
                      "the declined status line")
    assert [e for e in customer.media_events(chat.customer_room)
            if e["sender"] != customer.user_id] == []
    assert not any(e["content"][OFFER_KEY]["filename"] == "tampered.png"
                   for e in agent.offers(chat.agent_room))
