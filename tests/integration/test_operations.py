"""Operations: the malware-scan hook, metrics and health, logs without secrets."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import aiohttp

from bot.devserver import free_port
from tests import samples
from tests.conftest import Chat
from tests.helpers import wait_for

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
FAKE_SCANNER = [sys.executable, str(Path(__file__).parent.parent / "fake_scanner.py"), "{path}"]
ACCEPT = "\u2705"


async def test_scanner_flags_eicar_and_marks_clean_files(start_chat) -> None:
    """An infected file is refused with the scanner's verdict; a clean one says scanned: clean."""
    chat: Chat = await start_chat(policy={"scanner": FAKE_SCANNER})
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await customer.send_file(chat.customer_room, EICAR, "invoice.txt", "text/plain")
    await customer.until(
        lambda: any("was not sent" in b for b in customer.bodies(chat.customer_room)),
        "the rejection notice",
    )
    notice = next(b for b in customer.bodies(chat.customer_room) if "was not sent" in b)
    assert "Eicar-Test-Signature" in notice and "/" not in notice.split(":", 1)[1]
    await customer.send_file(chat.customer_room, samples.pdf(), "clean.pdf", "application/pdf")
    await agent.until(lambda: agent.offers(chat.agent_room), "the clean offer")
    assert "scanned: clean" in agent.offers(chat.agent_room)[0]["content"]["body"]
    assert len(agent.offers(chat.agent_room)) == 1


async def test_metrics_and_health_are_served(start_chat, caplog) -> None:
    """/metrics counts sessions, offers and bytes; /health is 200 once synced; no secrets logged."""
    caplog.set_level(logging.DEBUG, logger="bot")
    port = free_port()
    chat: Chat = await start_chat(metrics={"listen": f"127.0.0.1:{port}"})
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    image = samples.png(8, 8)
    await customer.send_file(chat.customer_room, image, "m.png", "image/png", "m.image")
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer")
    await agent.react(chat.agent_room, agent.offers(chat.agent_room)[0]["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery")

    async with aiohttp.ClientSession() as http:
        async def scrape() -> str:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                return await response.text()

        async def delivered_counted() -> bool:
            return 'parcel_offers_total{direction="customer_to_agent",state="accepted"} 1.0' in (
                await scrape())

        await wait_for(delivered_counted, what="the accepted offer in /metrics")
        text = await scrape()
        assert "parcel_sessions_open 1.0" in text
        assert f"parcel_bytes_delivered_total {float(len(image))}" in text
        async with http.get(f"http://127.0.0.1:{port}/health") as response:
            assert response.status == 200
    config = chat.bot.config
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert config.password and config.password not in logged
    assert chat.bot.parcel is not None and chat.bot.parcel.client is not None
    assert chat.bot.parcel.client.access_token not in logged
