"""Active / standby on PostgreSQL: containers without state, takeover, a deposed leader silent.

Every instance is a real ``parcel-bot run`` process with its own empty data_dir and the same
PostgreSQL database; the homeserver is the session's real Synapse. The first instance
started leads, the others stand by.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from bot.devserver import Homeserver, free_port
from tests import samples
from tests.chat import BotProcess, Person, bot_config
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy
from tests.helpers import MakeClient, MakeUser, wait_for

logger = logging.getLogger(__name__)

ACCEPT = "\u2705"
KEY = "the failover tests' shared encryption key"
LEASE = 4.0  # seconds; the default is 8 s, shorter keeps the tests quick
# What a deposed leader must never send again: events, room keys, uploads, key uploads.
SENDS = r"/(send|sendToDevice|upload|keys/upload|join|leave|kick|redact|state)/?"


class Instances:
    """Bot processes sharing one PostgreSQL database, each with its own data_dir."""

    def __init__(self, chat: Chat, make_config, base: Path) -> None:
        self.chat = chat
        self._make_config = make_config
        self._base = base
        self.all: list[BotProcess] = []
        self.overrides: dict[str, object] = {}

    async def start(self, homeserver_url: str, *, wait: str) -> BotProcess:
        """Start one more instance and wait for ``wait`` in its log ("leader" / "standby")."""
        data_dir = self._base / f"instance-{len(self.all) + 1}"
        config = self._make_config(data_dir, homeserver_url, **self.overrides)
        process = BotProcess(config, self._base / f"instance-{len(self.all) + 1}.yaml")
        self.all.append(process)
        line = b"first sync done" if wait == "leader" else b"standby: waiting"
        await process.start(ready=line)
        return process

    async def stop_all(self) -> None:
        """SIGCONT (a paused one), then SIGTERM every instance."""
        for process in self.all:
            if process.process is not None and process.process.returncode is None:
                os.kill(process.process.pid, signal.SIGCONT)
                await process.stop()


@pytest.fixture
async def ha_chat(homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient,
                  postgres_url: str, tmp_path: Path):
    """A customer and an agent, both encrypted, and a factory of bot instances on one database."""
    bot_user = await make_user("parcel", displayname="Parcel")
    agent_user = await make_user("alice", displayname="Alice")
    customer_user = await make_user("carol", displayname="Carol")
    agent = Person(await make_client(agent_user, encrypted=True), agent_user)
    customer = Person(await make_client(customer_user, encrypted=True), customer_user)

    def make_config(data_dir: Path, homeserver_url: str, **overrides: object):
        data_dir.mkdir(parents=True)
        return bot_config(homeserver, bot_user, [agent_user.user_id], data_dir,
                          homeserver=homeserver_url, database=postgres_url,
                          encryption_key=KEY, leader_lease=f"{LEASE:g}s",
                          agents={"room_encryption": True}, policy={"max_size": "40MB"},
                          **overrides)

    chat = Chat(None, bot_user, agent, customer, homeserver)
    instances = Instances(chat, make_config, tmp_path)
    try:
        yield chat, instances
    finally:
        await instances.stop_all()


def holder_line(process: BotProcess) -> bool:
    """Whether ``process`` has taken the lease in its current run."""
    return b"took the leader lease" in process.log_since_start()


async def test_an_instance_keeps_no_state_on_disk(ha_chat) -> None:
    """With PostgreSQL the data_dir holds no store, keys or credentials: a replacement with an
    empty disk is the same device, still cross-signed, and reads the ongoing encrypted chat."""
    chat, instances = ha_chat
    first = await instances.start(chat.homeserver.url, wait="leader")
    await chat.open_session(encrypted=True)
    agent, customer = chat.agent, chat.customer
    await customer.say(chat.customer_room, "before the replacement")
    await agent.until(lambda: "Carol: before the replacement" in agent.bodies(chat.agent_room),
                      "the first relay")
    left_behind = sorted(p.relative_to(first.config.data_dir).as_posix()
                         for p in first.config.data_dir.rglob("*") if p.is_file())
    assert not [name for name in left_behind if not name.startswith("media/")], left_behind
    device = re.search(rb"device (\w+)\)", first.log_since_start())
    await first.stop()

    second = await instances.start(chat.homeserver.url, wait="leader")
    assert b"restored device" in second.log_since_start()
    assert device is not None and device.group(0) in second.log_since_start()
    assert b"cross-signing keys already published" in second.log_since_start()
    await customer.say(chat.customer_room, "after the replacement")
    await agent.until(lambda: "Carol: after the replacement" in agent.bodies(chat.agent_room),
                      "the relay by the replacement")
    await agent.say(chat.agent_room, "the agent answers")
    await customer.until(lambda: any("the agent answers" in b
                                     for b in customer.bodies(chat.customer_room)),
                         "the answer relayed")


async def test_the_standby_takes_over_a_killed_leader_exactly_once(ha_chat, postgres) -> None:
    """SIGKILL the leader with an accepted file uploading, an offer waiting for a decision and
    texts in flight: the standby delivers the file once (its checked copy died with the
    leader's disk: fetched again from the sender's upload and checked against the inspected
    hash), relays every text once in order, acts on the waiting offer and decrypts what the
    customer sends next (same device)."""
    chat, instances = ha_chat
    # Upload on ✅ (no staging), so that the accepted copy is certainly still uploading when
    # the leader is killed.
    instances.overrides = {"media": {"prestage": False}}
    async with FaultyProxy(chat.homeserver.url) as proxy:
        leader = await instances.start(proxy.url, wait="leader")
        standby = await instances.start(chat.homeserver.url, wait="standby")
        await chat.open_session(encrypted=True)
        agent, customer = chat.agent, chat.customer

        proxy.rate = 2 * 1024 * 1024  # the leader's transfers crawl: the kill catches them
        manual = samples.noise(12 * 1024 * 1024, seed=11)
        await agent.send_file(chat.agent_room, manual, "manual.bin", "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "manual.bin"),
                             "the offer to the customer", timeout=90)
        card = customer.offer_named(chat.customer_room, "manual.bin")
        assert card is not None
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        photo = samples.png(40, 30)
        await customer.send_file(chat.customer_room, photo, "photo.png", "image/png", "m.image")
        await agent.until(lambda: agent.offer_named(chat.agent_room, "photo.png"),
                          "the offer to the agent (left waiting)", timeout=90)
        texts = [f"in flight {n}" for n in range(5)]
        for text in texts:
            await customer.say(chat.customer_room, text)
        database = leader.config.database
        assert database is not None
        await wait_for(lambda: postgres.sql(
            database.rsplit("/", 1)[1],
            "SELECT state, delivery_event_id IS NULL FROM offers WHERE filename = 'manual.bin'",
        ).strip() == "accepted|t", what="the accepted copy uploading", timeout=60)
        assert not customer.deliveries(chat.customer_room, chat.bot_id)

        leader_process = leader.process
        assert leader_process is not None
        leader_process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await leader_process.wait()
        shutil.rmtree(leader.config.data_dir)  # its container, and the disk with it, is gone
        await wait_for(lambda: holder_line(standby), what="the standby taking the lease",
                       timeout=LEASE + 20)
        took = time.monotonic() - killed

        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the accepted file, delivered by the new leader", timeout=120)
        await agent.until(lambda: f"Carol: {texts[-1]}" in agent.bodies(chat.agent_room),
                          "the texts in flight", timeout=60)
        offer = agent.offer_named(chat.agent_room, "photo.png")
        assert offer is not None
        await agent.react(chat.agent_room, offer["event_id"], ACCEPT)
        await agent.until(lambda: agent.deliveries(chat.agent_room, chat.bot_id),
                          "the photo, delivered by the new leader", timeout=60)
        await customer.say(chat.customer_room, "after the takeover")
        await agent.until(lambda: "Carol: after the takeover" in agent.bodies(chat.agent_room),
                          "a new encrypted message, decrypted by the new leader", timeout=60)
        logger.warning("failover: the standby took the lease %.1f s after the kill", took)

        delivered = customer.deliveries(chat.customer_room, chat.bot_id)
        assert len(delivered) == 1
        assert await customer.download(delivered[0]["content"]) == manual
        got = agent.deliveries(chat.agent_room, chat.bot_id)
        assert len(got) == 1 and await agent.download(got[0]["content"]) == photo
        relayed = [b for b in agent.bodies(chat.agent_room) if b.startswith("Carol: ")]
        assert relayed == [f"Carol: {t}" for t in [*texts, "after the takeover"]], relayed


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_health_and_metrics_tell_the_leader_from_the_standby(ha_chat) -> None:
    """/health answers "leader" on the instance that leads and "standby" on the other (both
    200); parcel_leader is 1 and 0; when the leader stops, the standby's answers change."""
    chat, instances = ha_chat
    ports = [free_port(), free_port()]
    instances.overrides = {"metrics": {"listen": f"127.0.0.1:{ports[0]}"}}
    leader = await instances.start(chat.homeserver.url, wait="leader")
    instances.overrides = {"metrics": {"listen": f"127.0.0.1:{ports[1]}"}}
    await instances.start(chat.homeserver.url, wait="standby")
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    assert await _get(f"{first}/health") == (200, "leader")
    assert await _get(f"{second}/health") == (200, "standby")
    assert "parcel_leader 1.0" in (await _get(f"{first}/metrics"))[1]
    assert "parcel_leader 0.0" in (await _get(f"{second}/metrics"))[1]
    await leader.stop()  # a clean stop releases the lease: the standby takes it at once

    async def second_leads() -> bool:
        return await _get(f"{second}/health") == (200, "leader")

    await wait_for(second_leads, what="the standby leading", timeout=30)
    assert "parcel_leader 1.0" in (await _get(f"{second}/metrics"))[1]


async def test_a_paused_leader_sends_nothing_once_it_resumes(ha_chat) -> None:
    """A leader stopped (SIGSTOP) for longer than its lease is replaced; resumed (SIGCONT) it
    learns it lost the lease and sends nothing at all, while the new leader relays."""
    chat, instances = ha_chat
    async with FaultyProxy(chat.homeserver.url) as proxy:
        paused = await instances.start(proxy.url, wait="leader")
        standby = await instances.start(chat.homeserver.url, wait="standby")
        await chat.open_session(encrypted=True)
        agent, customer = chat.agent, chat.customer
        await customer.say(chat.customer_room, "before the pause")
        await agent.until(lambda: "Carol: before the pause" in agent.bodies(chat.agent_room),
                          "the first relay")

        assert paused.process is not None
        os.kill(paused.process.pid, signal.SIGSTOP)
        await wait_for(lambda: holder_line(standby), what="the standby taking the lease",
                       timeout=LEASE + 20)
        await customer.say(chat.customer_room, "while it is paused")
        try:
            await agent.until(lambda: "Carol: while it is paused"
                              in agent.bodies(chat.agent_room),
                              "the relay by the new leader", timeout=60)
        except AssertionError as exc:
            tail = standby.log_since_start().decode(errors="replace")[-6000:]
            raise AssertionError(f"{exc}; the new leader's log ends:\n{tail}") from None

        resumed_at = len(proxy.seen)
        os.kill(paused.process.pid, signal.SIGCONT)
        await wait_for(lambda: b"lost the leader lease" in paused.log_since_start(),
                       what="the old leader noticing", timeout=30)
        await customer.say(chat.customer_room, "after it resumed")
        await agent.until(lambda: "Carol: after it resumed" in agent.bodies(chat.agent_room),
                          "the relay after the resume", timeout=60)
        await asyncio.sleep(LEASE)  # time for the old leader to try anything it had pending

        sent = [(method, path) for method, path in proxy.seen[resumed_at:]
                if method in ("PUT", "POST") and re.search(SENDS, path)]
        assert sent == [], sent
        relayed = [b for b in agent.bodies(chat.agent_room) if b.startswith("Carol: ")]
        assert relayed == ["Carol: before the pause", "Carol: while it is paused",
                           "Carol: after it resumed"], relayed
        assert paused.process.returncode is None, "the old leader should stand by, not exit"
