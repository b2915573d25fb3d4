"""``parcel-bot migrate-store``: an embedded install moved into PostgreSQL stays the same bot."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from bot.devdb import PostgresServer
from bot.keys import key_file
from tests import samples
from tests.chat import BotRunner, bot_config, write_config
from tests.conftest import Chat

ACCEPT = "\u2705"


async def _migrate(config_path: Path, url: str, password: str) -> tuple[int, str]:
    """Run the real CLI; returns its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "migrate-store", "--config", str(config_path), "--to", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PARCEL_DATABASE_PASSWORD": password},
    )
    output, _ = await process.communicate()
    return int(process.returncode or 0), output.decode()


async def test_a_migrated_install_is_the_same_encrypted_bot(
    start_chat, postgres: PostgresServer, tmp_path: Path
) -> None:
    """An encrypted SQLite install with a pending offer, migrated: on PostgreSQL, from an empty
    data_dir, it is the same device, still cross-signed, decrypts the customer's ongoing
    Megolm session, acts on the old offer; a second migration into the database is refused."""
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "before the move")
    await agent.until(lambda: "Carol: before the move" in agent.bodies(chat.agent_room),
                      "the relay before the move")
    report = samples.pdf()
    await customer.send_file(chat.customer_room, report, "report.pdf", "application/pdf")
    await agent.until(lambda: agent.offer_named(chat.agent_room, "report.pdf"),
                      "the offer, left undecided")
    old = chat.bot.config
    assert chat.bot.parcel is not None and chat.bot.parcel.client is not None
    device = chat.bot.parcel.client.device_id
    await chat.bot.stop()

    config_path = tmp_path / "sqlite.yaml"
    write_config(old, config_path)
    database = postgres.create_database()
    url = postgres.url(database)  # the password comes from the environment
    code, output = await _migrate(config_path, url, postgres.password)
    assert code == 0, output
    assert re.search(r"crypto store: \d+ rows \([1-9]\d* room keys, [1-9]\d* Olm", output), output
    assert "documents: credentials.json, cross_signing.json" in output
    assert postgres.password not in output

    key = key_file(old).read_text().strip()  # the generated key, now given explicitly
    moved = bot_config(chat.homeserver, chat.bot_user, list(old.agents.users),
                       tmp_path / "empty-data-dir", database=postgres.url(database, True),
                       encryption_key=key, agents={"room_encryption": True})
    runner = BotRunner(moved)
    parcel = await runner.start()
    try:
        assert parcel.client is not None and parcel.client.device_id == device
        assert parcel.cross_signing is not None and parcel.cross_signing.cross_signed
        assert "already published" in parcel.cross_signing.detail
        await customer.say(chat.customer_room, "after the move")
        await agent.until(lambda: "Carol: after the move" in agent.bodies(chat.agent_room),
                          "the customer's ongoing session, decrypted after the move")
        card = agent.offer_named(chat.agent_room, "report.pdf")
        assert card is not None
        await agent.react(chat.agent_room, card["event_id"], ACCEPT)
        await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id),
                          "the old offer, delivered after the move")
        got = agent.deliveries(chat.agent_room, chat.bot_id)
        assert len(got) == 1 and await agent.download(got[0]["content"]) == report
    finally:
        await runner.stop()

    code, output = await _migrate(config_path, url, postgres.password)
    assert code == 1 and "already holds" in output, output
