"""Payment card numbers never reach the other side: chat text masked or refused, files redacted
or refused, through the real homeserver."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests.chat import Person, barrier
from tests.conftest import Chat

MASK = "\u2022\u2022\u2022\u2022 "
VISA, VISA_GROUPED = "4111111111111111", "4111 1111 1111 1111"
MASTERCARD, MASTERCARD_GROUPED = "5555555555554444", "5555-5555-5555-4444"
IBAN = "DE89 3704 0044 0532 0130 00"


def digits_from_bot(person: Person, room_id: str, bot_id: str) -> str:
    """Every digit of every event the bot sent that a person received in a room, in one string
    (a number split by tags, separators or JSON escapes is still found in it)."""
    sent = [e for e in person.events[room_id] if e.get("sender") == bot_id]
    return "".join(re.findall(r"\d", json.dumps(sent)))


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
