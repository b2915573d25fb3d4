"""Payment card numbers never reach the other side: chat text masked or refused, files redacted
or refused, through the real homeserver."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests import cardcorpus
from tests.chat import OFFER_KEY, Person, barrier
from tests.conftest import Chat
from tests.unit.test_redact import ocr_sees

ACCEPT = "\u2705"

MASK = "\u2022\u2022\u2022\u2022 "
VISA, VISA_GROUPED = "4111111111111111", "4111 1111 1111 1111"
MASTERCARD, MASTERCARD_GROUPED = "5555555555554444", "5555-5555-5555-4444"
IBAN = "DE89 3704 0044 0532 0130 00"


def digits_from_bot(person: Person, room_id: str, bot_id: str) -> str:
    """Every digit of every event the bot sent that a person received in a room, in one string
    (a number split by tags, separators or JSON escapes is still found in it)."""
    sent = [e for e in person.events[room_id] if e.get("sender") == bot_id]
    return "".join(re.findall(r"\d", json.dumps(sent)))


def latest_bodies(person: Person, room_id: str) -> list[str]:
    """Every message body a person saw in a room, edits by their new content."""
    bodies = []
    for event in person.messages(room_id):
        content = event["content"].get("m.new_content") or event["content"]
        bodies.append(str(content.get("body")))
    return bodies


def no_trace(path: Path, numbers: tuple[str, ...]) -> None:
    """The bot's data directory (its store, its WAL, its media copies) holds none of them."""
    for file in path.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for number in numbers:
                assert number.encode() not in data, f"{number[-4:]} found in {file}"


async def test_card_numbers_in_chat_text_are_masked_both_ways(
    start_chat, caplog: pytest.LogCaptureFixture
) -> None:
    """E2EE: a card number in text, formatted text or an edit reaches the other side as
    •••• 1111; the sender is told; look-alikes pass; nothing logged or stored holds it."""
    caplog.set_level(logging.DEBUG, logger="bot")
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True},
                                  policy={"card_numbers_in_text": "mask"})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer

    first = await customer.say(
        chat.customer_room, f"my card is {VISA_GROUPED} exp 12/25",
        format="org.matrix.custom.html",
        formatted_body="my card is <b>4111</b> 1111 <i>1111</i> 1111 exp 12/25",
    )
    await agent.until(lambda: f"Carol: my card is {MASK}1111 exp 12/25"
                      in agent.bodies(chat.agent_room), "the masked relay")
    relayed = [e for e in agent.messages(chat.agent_room)
               if str(e["content"].get("body")).startswith("Carol: my card")][0]
    assert f"{MASK}1111" in relayed["content"]["formatted_body"]
    await customer.until(
        lambda: any(b.startswith("🔒 1 card number in your message was hidden from the agent")
                    for b in customer.bodies(chat.customer_room)),
        "the sender told that the number was hidden")

    # An edit carries a new number: masked too.
    await customer.say(
        chat.customer_room, f"* my card is {MASTERCARD_GROUPED}",
        **{"m.new_content": {"msgtype": "m.text", "body": f"my card is {MASTERCARD_GROUPED}"},
           "m.relates_to": {"rel_type": "m.replace", "event_id": first}},
    )
    await agent.until(lambda: f"Carol: (edited) my card is {MASK}4444"
                      in agent.bodies(chat.agent_room), "the masked edit")

    # The agent's side is masked as well; an IBAN is no card number and passes as it is.
    await agent.say(chat.agent_room, f"the card on file is {MASTERCARD}, IBAN {IBAN}")
    await customer.until(
        lambda: f"Alice (support): the card on file is {MASK}4444, IBAN {IBAN}"
        in customer.bodies(chat.customer_room), "the agent's masked relay")
    await agent.until(
        lambda: any(b.startswith("🔒 1 card number in your message was hidden from the "
                                 "customer") for b in agent.bodies(chat.agent_room)),
        "the agent told that the number was hidden")

    for number in (VISA, MASTERCARD):
        assert number not in digits_from_bot(agent, chat.agent_room, chat.bot_id)
        assert number not in digits_from_bot(customer, chat.customer_room, chat.bot_id)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for number in (VISA, VISA_GROUPED, MASTERCARD, MASTERCARD_GROUPED):
        assert number not in logged
    assert "card number(s) masked" in logged
    await chat.bot.stop()
    no_trace(chat.bot.config.data_dir, (VISA, VISA_GROUPED, MASTERCARD, MASTERCARD_GROUPED))


async def test_card_numbers_in_chat_text_refused_in_one_direction(start_chat) -> None:
    """refuse for customer→agent only: the customer's message is not relayed and they are told
    why; the agent's (allow) is relayed as written."""
    chat: Chat = await start_chat(
        policy={"customer_to_agent": {"card_numbers_in_text": "refuse"}})
    await chat.open_session()
    agent, customer = chat.agent, chat.customer

    await customer.say(chat.customer_room, f"here: {VISA}")
    await customer.until(
        lambda: any(b.startswith("⛔ Your message was not sent to the agent: it contains a "
                                 "payment card number")
                    for b in customer.bodies(chat.customer_room)),
        "the refusal")
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    assert not any("here:" in b for b in agent.bodies(chat.agent_room))
    assert VISA not in digits_from_bot(agent, chat.agent_room, chat.bot_id)

    await customer.say(chat.customer_room, "order 4111111111111112 is late")
    await agent.until(lambda: "Carol: order 4111111111111112 is late"
                      in agent.bodies(chat.agent_room), "a look-alike relayed as it is")

    await agent.say(chat.agent_room, f"test card {VISA}")
    await customer.until(lambda: f"Alice (support): test card {VISA}"
                         in customer.bodies(chat.customer_room), "allowed the other way")


async def test_card_numbers_in_files_are_redacted_both_ways(start_chat) -> None:
    """E2EE, card_numbers: redact. A customer's photo reaches the agent with the number painted
    over and the rest readable; the agent's text file reaches the customer masked; cards, status
    lines and offer blocks say how many were hidden; a look-alike file arrives byte for byte."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True},
                                  policy={"card_numbers": "redact"})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    photo = next(s for s in cardcorpus.image_corpus() if s.number == VISA)

    await customer.send_file(chat.customer_room, photo.data, "router.png", photo.mimetype,
                             "m.image", encrypt=True)
    await agent.until(lambda: agent.offer_named(chat.agent_room, "router.png") is not None,
                      "the photo's offer card")
    card = agent.offer_named(chat.agent_room, "router.png")
    assert card is not None
    assert "1 card number was hidden" in card["content"]["body"]
    assert card["content"][OFFER_KEY]["redacted"] == 1
    offer_id = card["content"][OFFER_KEY]["id"]
    await customer.until(lambda: any("1 card number was hidden" in b
                                     for b in customer.bodies(chat.customer_room)),
                         "the sender's status line saying so")
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id),
                      "the delivered photo")
    delivered = await agent.download(agent.deliveries(chat.agent_room, chat.bot_id)[0]["content"])
    assert delivered != photo.data
    found, text = ocr_sees(delivered)
    assert found == [] and re.search(r"\d{4}", text) is None
    assert cardcorpus.BESIDE in text
    await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id)
                         == "accepted", "the status line edited to accepted")
    assert any("received by the agent (1 card number was hidden)" in b
               for b in latest_bodies(customer, chat.customer_room))

    # The other way: the agent's text file, masked to the last four digits.
    # Its name holds the number too: masked on the card and in the delivered file's name.
    statement = f"date,amount,card\n2026-12-01,12.50,{MASTERCARD_GROUPED}\n".encode()
    await agent.send_file(chat.agent_room, statement, f"card {MASTERCARD}.csv", "text/csv",
                          encrypt=True)
    masked_name = f"card {MASK}4444.csv"
    await customer.until(lambda: customer.offer_named(chat.customer_room, masked_name)
                         is not None, "the statement's offer card")
    offered = customer.offer_named(chat.customer_room, masked_name)
    assert offered is not None and offered["content"][OFFER_KEY]["redacted"] == 1
    await customer.react(chat.customer_room, offered["event_id"], ACCEPT)
    await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                         "the delivered statement")
    delivery = customer.deliveries(chat.customer_room, chat.bot_id)[0]["content"]
    assert delivery["body"] == masked_name
    got = await customer.download(delivery)
    assert got == f"date,amount,card\n2026-12-01,12.50,{MASK}4444\n".encode()

    # A look-alike: searched, nothing found, delivered as it was.
    lookalike = f"IBAN {IBAN}\norder 4111111111111112\n".encode()
    await customer.send_file(chat.customer_room, lookalike, "bank.txt", "text/plain",
                             encrypt=True)
    await agent.until(lambda: agent.offer_named(chat.agent_room, "bank.txt") is not None,
                      "the look-alike's offer card")
    card = agent.offer_named(chat.agent_room, "bank.txt")
    assert card is not None and card["content"][OFFER_KEY]["redacted"] == 0
    assert "card number" not in card["content"]["body"]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: len(agent.deliveries(chat.agent_room, chat.bot_id)) == 2,
                      "the delivered look-alike")
    assert await agent.download(
        agent.deliveries(chat.agent_room, chat.bot_id)[1]["content"]) == lookalike
    await chat.bot.stop()
    no_trace(chat.bot.config.data_dir, (VISA, VISA_GROUPED, MASTERCARD, MASTERCARD_GROUPED))


async def test_files_with_card_numbers_are_refused(start_chat) -> None:
    """card_numbers: refuse (customer→agent), uninspectable: refuse: a text file, an archive
    and a PDF letter are refused, the sender told in plain words, the agent gets no offer,
    only the refusal notices; the agent's way is open."""
    chat: Chat = await start_chat(policy={"customer_to_agent": {
        "card_numbers": "refuse", "uninspectable": "refuse"}})
    await chat.open_session()
    agent, customer = chat.agent, chat.customer

    await customer.send_file(chat.customer_room, f"my card {VISA}\n".encode(), "card.txt",
                             "text/plain")
    await customer.until(
        lambda: any(b.startswith("⛔ card.txt was not sent: it contains a payment card number."
                                 " Please never send card details here; use the payment page")
                    for b in customer.bodies(chat.customer_room)), "the refusal")
    await customer.send_file(chat.customer_room, b"PK\x05\x06" + bytes(18), "bundle.zip",
                             "application/zip")
    await customer.until(
        lambda: any(b.startswith("⛔ bundle.zip was not sent: it could not be checked for "
                                 "payment card numbers") for b in customer.bodies(
                                     chat.customer_room)), "the uninspectable refusal")
    letter = cardcorpus.text_pdf([["Dear customer,", f"your new card {VISA_GROUPED}"]])
    await customer.send_file(chat.customer_room, letter, "letter.pdf", "application/pdf")
    await customer.until(
        lambda: any(b.startswith("⛔ letter.pdf was not sent: it contains a payment card "
                                 "number") for b in customer.bodies(chat.customer_room)),
        "the PDF's refusal")
    await agent.until(lambda: sum("tried to send" in b for b in agent.bodies(chat.agent_room))
                      == 3, "the agents told of the three refusals")
    assert agent.offers(chat.agent_room) == []
    assert VISA not in digits_from_bot(agent, chat.agent_room, chat.bot_id)

    await agent.send_file(chat.agent_room, f"test card {VISA}\n".encode(), "test.txt",
                          "text/plain")
    await customer.until(lambda: customer.offer_named(chat.customer_room, "test.txt")
                         is not None, "the agent's file offered (allow that way)")
    offered = customer.offer_named(chat.customer_room, "test.txt")
    assert offered is not None and "redacted" not in offered["content"][OFFER_KEY]
