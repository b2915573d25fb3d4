"""Secrets and plaintext at rest: data_dir private, keys under a real key, the copy sealed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import aiohttp
import pytest

from bot.devserver import free_port
from bot.documents import FileDocuments
from bot.keys import KEY_FILE, NIO_DEFAULT_PICKLE_KEY, EncryptionKey
from bot.matrix.crosssign import SEEDS_FILE, CrossSigningSeeds, encode_base64, load_seeds
from bot.matrix.cryptostore import opens_with
from tests import samples
from tests.chat import OFFER_KEY
from tests.conftest import Chat
from tests.helpers import wait_for

ACCEPT = "\u2705"
TOKEN = "scrape-token-0123456789abcdef"


def open_paths(data_dir: Path) -> list[str]:
    """Every path under data_dir (and data_dir itself) with a group or other permission bit."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
            found.append(f"{path} {stat.S_IMODE(info.st_mode):o}")
    return found


def crypto_store(data_dir: Path) -> Path:
    (store,) = (data_dir / "crypto").glob("*.db")
    return store


async def test_encrypted_file_leaves_nothing_readable_or_in_plain_text(start_chat) -> None:
    """While an encrypted file waits and after it is delivered: data_dir is private, the Olm
    account opens only with the bot's key, the copy on disk is not the plaintext, and /metrics
    wants the token. (Without pre-staging, so that a local copy waits with the offer; with it,
    the copy is deleted as soon as it is staged, see test_prestage.)"""
    port = free_port()
    chat: Chat = await start_chat(encrypted=True, agents={"room_encryption": True},
                                  metrics={"listen": f"127.0.0.1:{port}", "token": TOKEN},
                                  media={"prestage": False})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    data_dir = chat.bot.config.data_dir
    photo = samples.png(64, 48, "red")
    await customer.send_file(chat.customer_room, photo, "photo.png", "image/png", "m.image",
                             encrypt=True)
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]
    offer_id = card["content"][OFFER_KEY]["id"]

    copy = data_dir / "media" / f"offer-{offer_id}"
    on_disk = copy.read_bytes()
    assert len(on_disk) == len(photo) and on_disk != photo
    assert hashlib.sha256(on_disk).hexdigest() != card["content"][OFFER_KEY]["sha256"]
    assert hashlib.sha256(photo).hexdigest() == card["content"][OFFER_KEY]["sha256"]
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no plaintext beside it
    assert open_paths(data_dir) == []

    parcel = chat.bot.parcel
    assert parcel is not None and parcel.key is not None
    store = crypto_store(data_dir)
    assert opens_with(store, NIO_DEFAULT_PICKLE_KEY) is False
    assert opens_with(store, parcel.key.pickle_key) is True
    assert stat.S_IMODE((data_dir / KEY_FILE).stat().st_mode) == 0o600
    seeds_text = (data_dir / SEEDS_FILE).read_text()
    seeds = await load_seeds(FileDocuments(data_dir), chat.bot_user.user_id,
                            parcel.key.seeds_key)
    assert seeds is not None and encode_base64(seeds.master.seed) not in seeds_text

    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}"
        for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
            async with http.get(f"{url}/metrics", headers=headers) as response:
                assert response.status == 401
                assert "parcel_" not in await response.text()
        async with http.get(f"{url}/metrics",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200 and "parcel_sessions_open 1.0" in await response.text()
        async with http.get(f"{url}/health") as response:
            assert (response.status, await response.text()) == (200, "ok")

    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivered photo")
    assert await agent.download(agent.media_events(chat.agent_room)[0]["content"]) == photo
    await wait_for(lambda: not copy.exists(), what="the copy deleted once delivered")
    assert open_paths(data_dir) == []


async def test_sealed_copy_survives_sigkill_and_is_delivered_intact(start_chat) -> None:
    """The waiting offer's sealed copy outlives a SIGKILL and decrypts into the exact file
    (without pre-staging, which would replace the local copy by the staged one)."""
    chat: Chat = await start_chat(encrypted=True, as_process=True,
                                  agents={"room_encryption": True}, media={"prestage": False})
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    data_dir = chat.bot.config.data_dir
    report = samples.pdf()
    await customer.send_file(chat.customer_room, report, "report.pdf", "application/pdf",
                             encrypt=True)
    await agent.until(lambda: agent.offers(chat.agent_room), "the offer card")
    card = agent.offers(chat.agent_room)[0]
    copy = data_dir / "media" / f"offer-{card['content'][OFFER_KEY]['id']}"
    assert copy.read_bytes() != report
    assert hashlib.sha256(copy.read_bytes()).digest() != hashlib.sha256(report).digest()

    await chat.bot.kill()
    await chat.bot.start()
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await agent.until(lambda: agent.media_events(chat.agent_room), "the delivery after restart")
    assert await agent.download(agent.media_events(chat.agent_room)[0]["content"]) == report
    await wait_for(lambda: not copy.exists(), what="the copy deleted once delivered")
    assert open_paths(data_dir) == []


def _make_it_look_old(data_dir: Path, user_id: str, seeds: CrossSigningSeeds) -> None:
    """Leave data_dir as an older Parcel did: no key file, plaintext seeds, 0644/0755 modes."""
    (data_dir / SEEDS_FILE).write_text(json.dumps({
        "version": 1, "user_id": user_id,
        "master": encode_base64(seeds.master.seed),
        "self_signing": encode_base64(seeds.self_signing.seed),
        "user_signing": encode_base64(seeds.user_signing.seed),
    }))
    (data_dir / KEY_FILE).unlink()
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


async def test_old_store_with_default_key_is_repickled_and_tightened(
    start_chat, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A data_dir left by an older version (nio's default pickle key, plaintext seeds, 0644
    files) is migrated on start: same device, still decrypting the customer's messages."""
    with monkeypatch.context() as old_version:
        # What older versions did: nio's default pickle key for the crypto store.
        old_version.setattr(EncryptionKey, "pickle_key",
                            property(lambda self: NIO_DEFAULT_PICKLE_KEY))
        chat: Chat = await start_chat(encrypted=True)
        await chat.open_session(encrypted=True)
        agent, customer = chat.agent, chat.customer
        await customer.say(chat.customer_room, "before the upgrade")
        await agent.until(lambda: "Carol: before the upgrade" in agent.bodies(chat.agent_room),
                          "the relay by the old version")
        parcel = chat.bot.parcel
        assert parcel is not None and parcel.client is not None and parcel.key is not None
        device_id, seeds_key = parcel.client.device_id, parcel.key.seeds_key
        await chat.bot.stop()
    data_dir = chat.bot.config.data_dir
    store = crypto_store(data_dir)
    assert opens_with(store, NIO_DEFAULT_PICKLE_KEY) is True
    seeds = await load_seeds(FileDocuments(data_dir), chat.bot_user.user_id, seeds_key)
    assert seeds is not None
    _make_it_look_old(data_dir, chat.bot_user.user_id, seeds)
    assert open_paths(data_dir)

    with caplog.at_level(logging.INFO, logger="bot"):
        parcel = await chat.bot.start()
    assert parcel.client is not None and parcel.client.device_id == device_id
    assert parcel.key is not None
    assert opens_with(store, NIO_DEFAULT_PICKLE_KEY) is False
    assert opens_with(store, parcel.key.pickle_key) is True
    assert open_paths(data_dir) == []
    assert json.loads((data_dir / SEEDS_FILE).read_text())["version"] == 2
    assert parcel.cross_signing is not None and parcel.cross_signing.cross_signed
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "matrix-nio's public default key: re-encrypted" in logged
    assert "readable by others: removed group/other access" in logged
    assert "re-wrote it encrypted" in logged

    await customer.say(chat.customer_room, "after the upgrade")
    await agent.until(lambda: "Carol: after the upgrade" in agent.bodies(chat.agent_room),
                      "the customer's message decrypted with the re-pickled Megolm session")
    assert customer.undecryptable == [] and agent.undecryptable == []
