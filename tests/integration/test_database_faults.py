"""PostgreSQL restarts, goes down or stalls under live traffic; nobody notices more than a delay.

Issue 19's "Tests": a leader and a standby (real ``parcel-bot run`` processes) share one
PostgreSQL of their own (these tests break it, so not the session's); an encrypted chat with an
accepted 12 MB delivery crawling through a throttled proxy, an offer waiting for its ✅ and texts
in flight. Then the database fails: ``pg_ctl restart -m fast``; a stop of
:data:`OUTAGE_SECONDS`; a freeze (SIGSTOP of all its processes) past the leader lease's TTL.
Afterwards every text is relayed exactly once, in order; the accepted file is delivered once;
the waiting offer's ✅ delivers; a new file goes through; no work unit was given up
(``parcel_work_failed_total``, the offers table); neither instance exited. While the database is
down the leader's ``/health`` says so (:func:`health_state`, the one place that knows the
contract).

A smaller case: an event that reached the bot while its store was down is handled once the
store is back (not lost because its handling failed).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest_asyncio

from bot.devdb import PostgresServer
from bot.devserver import Homeserver, free_port
from tests import samples
from tests.chat import BotProcess, Person, bot_config
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy
from tests.helpers import MakeClient, MakeUser, wait_for

logger = logging.getLogger(__name__)

ACCEPT = "\u2705"
KEY = "the database-fault tests' shared encryption key"
LEASE = 4.0
"""The leader lease's TTL (seconds); the default is 8 s, shorter keeps the freeze short."""
OUTAGE_SECONDS = 30.0
"""How long PostgreSQL stays stopped: many times the lease and several backoff steps (the
point: every loop has failed repeatedly and every lease has lapsed), well under a minute to keep
the file within its budget."""
FREEZE_SECONDS = 3 * LEASE
"""How long PostgreSQL stays frozen: past the lease's TTL, so the leader cannot know whether it
still leads."""
MAX_BACKOFF = "10s"
"""The instances' retry cap: what is checked is that work resumes, not how long the default
300 s cap makes it wait (bench/ measures that)."""
RECOVERY = 60.0
"""Seconds allowed, once the database is back, for everything held up to arrive."""
BIG = 12 * 1024 * 1024
CRAWL = 2 * 1024 * 1024  # bytes per second through the proxy: the delivery spans the fault


# --------------------------------------------------------------------------------------------
# /health: the one place that knows its contract
# --------------------------------------------------------------------------------------------


async def get_health(base: str) -> tuple[int, str] | None:
    """(status, body) of ``base``/health, or None when it did not answer within 3 s."""
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.get(f"{base}/health") as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None


def health_state(answer: tuple[int, str] | None) -> str:
    """What a ``/health`` answer says, by the contract of issue 19: "ok" (200, this instance
    works; an instance with a lease says "leader"), "standby" (200, another instance leads),
    "degraded" (503 and a reason after the word, e.g. "degraded: the database is
    unreachable"); anything else is returned as "other: STATUS BODY" (or "no answer") so that
    a failure shows what came back."""
    if answer is None:
        return "no answer"
    status, body = answer
    text = body.strip()
    word = re.split(r"[\s:;,(]", text, maxsplit=1)[0].lower()
    if status == 200 and word in ("ok", "leader"):
        return "ok"
    if status == 200 and word == "standby":
        return word
    if status == 503 and word == "degraded" and len(text) > len("degraded") + 2:
        return "degraded"
    return f"other: {status} {text[:200]!r}"


# --------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One ``parcel-bot run`` process and its metrics endpoint."""

    process: BotProcess
    base: str  # http://127.0.0.1:PORT of /health and /metrics

    @property
    def name(self) -> str:
        return self.process.config.data_dir.name

    def exited(self) -> int | None:
        """Its exit code, or None while it runs."""
        process = self.process.process
        return None if process is None else process.returncode

    def errors(self, limit: int = 12) -> list[str]:
        """Its ERROR / CRITICAL lines of this run, each traceback as its exception's line (the
        last ``limit``)."""
        lines = self.process.log_since_start().decode("utf-8", "replace").splitlines()
        picked: list[str] = []
        in_traceback = False
        for line in lines:
            if line.startswith("Traceback"):
                in_traceback = True
            elif in_traceback and line and not line[0].isspace():
                in_traceback = False
                picked.append(f"  -> {line[:300]}")
            elif " ERROR " in line or " CRITICAL " in line:
                picked.append(line[:300])
        return picked[-limit:]

    async def given_up(self) -> dict[str, float] | str:
        """Non-zero ``parcel_work_failed_total`` samples, or why they could not be read."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                    http.get(f"{self.base}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"metrics unreadable: {exc!r}"
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("parcel_work_failed_total"):
                labels, _, value = line.rpartition(" ")
                if float(value):
                    out[labels] = float(value)
        return out


@dataclass
class Scenario:
    """Everyone in one fault test, and what was sent (to check it arrived once)."""

    chat: Chat
    pg: PostgresServer
    database: str
    proxy: FaultyProxy
    instances: list[Instance] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the customer's, in the order sent
    answers: list[str] = field(default_factory=list)  # the agent's, in the order sent
    problems: list[str] = field(default_factory=list)  # seen during the fault, told at the end

    def diagnostics(self) -> str:
        """What went wrong during the fault, each instance's state and its error lines."""
        parts = [f"  during the fault: {problem}" for problem in self.problems]
        for instance in self.instances:
            errors = "\n      ".join(instance.errors()) or "(none)"
            parts.append(f"  {instance.name}: exit code {instance.exited()}; its errors:"
                         f"\n      {errors}")
        return "\n".join(parts)

    async def customer_says(self, text: str) -> None:
        self.texts.append(text)
        await self.chat.customer.say(self.chat.customer_room, text)

    async def agent_says(self, text: str) -> None:
        self.answers.append(text)
        await self.chat.agent.say(self.chat.agent_room, text)

    def sql(self, statement: str) -> str:
        return self.pg.sql(self.database, statement).strip()


@pytest_asyncio.fixture
async def scenario(homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient,
                   own_postgres: PostgresServer, tmp_path: Path) -> AsyncIterator[Scenario]:
    """Leader and standby on ``own_postgres`` behind one throttleable proxy, an encrypted chat
    open; the instances are stopped afterwards."""
    bot_user = await make_user("parcel", displayname="Parcel")
    agent_user = await make_user("alice", displayname="Alice")
    customer_user = await make_user("carol", displayname="Carol")
    agent = Person(await make_client(agent_user, encrypted=True), agent_user)
    customer = Person(await make_client(customer_user, encrypted=True), customer_user)
    database = own_postgres.create_database()
    url = own_postgres.url(database, with_password=True)
    chat = Chat(None, bot_user, agent, customer, homeserver)
    async with FaultyProxy(homeserver.url) as proxy:
        s = Scenario(chat, own_postgres, database, proxy)
        try:
            for n, ready in ((1, b"first sync done"), (2, b"standby: waiting")):
                port = free_port()
                data_dir = tmp_path / f"instance-{n}"
                data_dir.mkdir()
                config = bot_config(
                    homeserver, bot_user, [agent_user.user_id], data_dir, homeserver=proxy.url,
                    database=url, encryption_key=KEY, leader_lease=f"{LEASE:g}s",
                    agents={"room_encryption": True}, policy={"max_size": "40MB"},
                    media={"prestage": False},  # the accepted copy moves after the ✅
                    retry={"max_backoff": MAX_BACKOFF},
                    metrics={"listen": f"127.0.0.1:{port}"},
                )
                process = BotProcess(config, tmp_path / f"instance-{n}.yaml")
                s.instances.append(Instance(process, f"http://127.0.0.1:{port}"))
                await process.start(ready=ready)
            await chat.open_session(encrypted=True)
            yield s
        finally:
            own_postgres.thaw()
            if not own_postgres.running:
                own_postgres.start()  # a clean stop needs the database (the lease's release)
            # All at once: a leader stopped alone hands its lease to the standby, which then
            # starts leading while it is being stopped.
            await asyncio.gather(*(stop_timed(i) for i in s.instances if i.exited() is None))


async def stop_timed(instance: Instance) -> None:
    """SIGTERM ``instance`` and wait for it; a slow exit is logged (not asserted: no timed
    assertions), since it is worth seeing."""
    began = time.monotonic()
    await instance.process.stop()
    took = time.monotonic() - began
    if took > 10:
        logger.warning("%s took %.0f s to stop on SIGTERM", instance.name, took)


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------


async def traffic_in_flight(s: Scenario) -> tuple[bytes, bytes]:
    """An accepted 12 MB delivery to the customer crawling (upload on ✅, 2 MB/s), a photo
    offered to the agent and left waiting, and texts sent without waiting for their relay.
    Returns the two files' bytes (the manual, the photo)."""
    chat, agent, customer = s.chat, s.chat.agent, s.chat.customer
    photo = samples.png(40, 30)
    await customer.send_file(chat.customer_room, photo, "photo.png", "image/png", "m.image")
    await agent.until(lambda: agent.offer_named(chat.agent_room, "photo.png") is not None,
                      "the photo's offer to the agent (left waiting)", timeout=90)
    manual = samples.noise(BIG, seed=19)
    await agent.send_file(chat.agent_room, manual, "manual.bin", "application/octet-stream")
    await customer.until(lambda: customer.offer_named(chat.customer_room, "manual.bin")
                         is not None, "the manual's offer to the customer", timeout=90)
    card = customer.offer_named(chat.customer_room, "manual.bin")
    assert card is not None
    s.proxy.rate = CRAWL
    await customer.react(chat.customer_room, card["event_id"], ACCEPT)
    for n in range(3):
        await s.customer_says(f"in flight {n}")
    await s.agent_says("the agent, in flight")
    await wait_for(lambda: s.sql(
        "SELECT state, delivery_event_id IS NULL FROM offers WHERE filename = 'manual.bin'"
    ) == "accepted|t", what="the accepted manual moving (accepted, not delivered)", timeout=60)
    return manual, photo


async def wait_health(s: Scenario, instance: Instance, want: str, what: str,
                      timeout: float) -> float | None:
    """Poll ``instance``'s /health until it says ``want``: seconds it took, or None, and then
    the problem (with what it said instead) is recorded in ``s.problems`` and the scenario goes
    on, so that a /health failure does not hide whether the work survived."""
    seen: list[str] = []
    began = time.monotonic()

    async def says() -> bool:
        state = health_state(await get_health(instance.base))
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == want

    try:
        await wait_for(says, timeout=timeout, what=what, interval=0.5)
    except AssertionError:
        s.problems.append(f"{instance.name}'s /health never said {want!r} {what} (within "
                          f"{timeout:.0f} s); it said, in turn: {seen}")
        return None
    return time.monotonic() - began


def check_once(seen: list[str], sent: list[str], where: str) -> None:
    """``seen`` must be ``sent``, each once and in order; the message names what is wrong."""
    counts = Counter(seen)
    missing = [t for t in sent if counts[t] == 0]
    duplicated = {t: n for t, n in counts.items() if n > 1}
    unexpected = [t for t in seen if t not in sent]
    assert not missing and not duplicated and not unexpected, (
        f"{where}: missing {missing}, duplicated {duplicated}, unexpected {unexpected}; "
        f"arrived in this order: {seen}"
    )
    assert seen == sent, f"{where}: each once, but out of order: sent {sent}, arrived {seen}"


async def everything_arrives_once(s: Scenario, manual: bytes, photo: bytes,
                                  fault: str) -> None:
    """After the fault: texts, the accepted manual, the waiting photo's ✅, a new file, each
    exactly once; nothing given up; nobody exited."""
    chat, agent, customer = s.chat, s.chat.agent, s.chat.customer
    for n in range(2):
        await s.customer_says(f"after the {fault} {n}")
    await s.agent_says(f"the agent, after the {fault}")

    def relayed_to_agent() -> list[str]:
        return [b.removeprefix("Carol: ") for b in agent.bodies(chat.agent_room)
                if b.startswith("Carol: ")]

    def relayed_to_customer() -> list[str]:
        # The agent is named toward the customer with the agents' label: "Alice (support): ".
        return [b.split(": ", 1)[1] for b in customer.bodies(chat.customer_room, chat.bot_id)
                if b.startswith("Alice") and ": " in b]

    async def arrives(person: Person, predicate: Callable[[], bool], what: str) -> None:
        try:
            await person.until(predicate, what, timeout=RECOVERY)
        except AssertionError as exc:
            raise AssertionError(f"after the {fault}: {exc}\n{s.diagnostics()}") from None

    await arrives(agent, lambda: s.texts[-1] in relayed_to_agent(),
                  f"the customer's last text {s.texts[-1]!r} relayed")
    await arrives(customer, lambda: s.answers[-1] in relayed_to_customer(),
                  f"the agent's last text {s.answers[-1]!r} relayed")
    await arrives(customer, lambda: bool(customer.deliveries(chat.customer_room, chat.bot_id)),
                  "the accepted manual delivered")
    offer = agent.offer_named(chat.agent_room, "photo.png")
    assert offer is not None
    await agent.react(chat.agent_room, offer["event_id"], ACCEPT)
    await arrives(agent, lambda: bool(agent.deliveries(chat.agent_room, chat.bot_id)),
                  "the photo delivered on the ✅ given after the fault")
    fresh = samples.png(32, 24)
    await customer.send_file(chat.customer_room, fresh, "after.png", "image/png", "m.image")
    await arrives(agent, lambda: agent.offer_named(chat.agent_room, "after.png") is not None,
                  "the offer of a file sent after the fault")
    card = agent.offer_named(chat.agent_room, "after.png")
    assert card is not None
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await arrives(agent, lambda: len(agent.deliveries(chat.agent_room, chat.bot_id)) >= 2,
                  "the file sent after the fault delivered")
    # A last text both ways: whatever was still retrying (a duplicate) would have landed first.
    await s.customer_says("the end")
    await s.agent_says("the end, agent")
    await arrives(agent, lambda: "the end" in relayed_to_agent(), "the last text relayed")
    await arrives(customer, lambda: "the end, agent" in relayed_to_customer(),
                  "the agent's last text relayed")

    check_once(relayed_to_agent(), s.texts, f"after the {fault}, the customer's texts at the "
               "agent")
    check_once(relayed_to_customer(), s.answers, f"after the {fault}, the agent's texts at "
               "the customer")
    to_customer = customer.deliveries(chat.customer_room, chat.bot_id)
    assert len(to_customer) == 1, (f"after the {fault} the accepted manual was delivered "
                                   f"{len(to_customer)} times")
    assert await customer.download(to_customer[0]["content"]) == manual
    to_agent = agent.deliveries(chat.agent_room, chat.bot_id)
    names = Counter(str(e["content"].get("body")) for e in to_agent)
    assert names == Counter({"photo.png": 1, "after.png": 1}), (
        f"after the {fault} the agent got these files (name: times): {dict(names)}")
    got = {str(e["content"].get("body")): e for e in to_agent}
    assert await agent.download(got["photo.png"]["content"]) == photo
    assert await agent.download(got["after.png"]["content"]) == fresh

    offers = s.sql("SELECT filename || ':' || state FROM offers ORDER BY id").splitlines()
    assert sorted(offers) == ["after.png:accepted", "manual.bin:accepted",
                              "photo.png:accepted"], f"after the {fault}, offers: {offers}"
    for instance in s.instances:
        assert instance.exited() is None, (f"{instance.name} exited ({instance.exited()}) "
                                           f"after the {fault}\n{s.diagnostics()}")
        given_up = await instance.given_up()
        assert given_up == {}, (f"{instance.name} gave work up after the {fault}: "
                                f"{given_up}\n{s.diagnostics()}")
    states = sorted([health_state(await get_health(i.base)) for i in s.instances])
    assert states == ["ok", "standby"], (
        f"after the {fault}, /health of the two instances: {states}\n{s.diagnostics()}")
    assert not s.problems, f"the work survived the {fault}, but:\n{s.diagnostics()}"


def leader_of(s: Scenario) -> Instance:
    """The instance that leads now (its log's last lease line says it took the lease)."""
    for instance in s.instances:
        log = instance.process.log_since_start()
        took, lost = log.rfind(b"took the leader lease"), log.rfind(b"lost the leader lease")
        if took > lost:
            return instance
    raise AssertionError(f"no instance leads\n{s.diagnostics()}")


async def during(s: Scenario, fault: str, hold: Callable[[], Awaitable[None]]) -> None:
    """While the fault lasts: texts both ways (they wait in the clients' homeserver, the bot
    gets them when its sync runs), then ``hold`` until the fault is to end."""
    await s.customer_says(f"during the {fault}")
    await s.agent_says(f"the agent, during the {fault}")
    await hold()


# --------------------------------------------------------------------------------------------
# The three faults
# --------------------------------------------------------------------------------------------


async def test_a_postgresql_restart_under_live_traffic_costs_only_a_delay(
    scenario: Scenario,
) -> None:
    """``pg_ctl restart -m fast`` with an accepted delivery crawling, an offer waiting and texts
    in flight: every text relayed once, the file delivered once, the waiting offer's ✅ and a
    new file go through, no unit given up, both instances still running."""
    s = scenario
    manual, photo = await traffic_in_flight(s)
    await asyncio.to_thread(s.pg.restart)
    await during(s, "restart", lambda: asyncio.sleep(0))
    s.proxy.rate = None
    await everything_arrives_once(s, manual, photo, "restart")


async def test_postgresql_down_for_a_while_costs_only_a_delay(scenario: Scenario) -> None:
    """PostgreSQL stopped for :data:`OUTAGE_SECONDS` (every lease lapses, every loop fails
    again and again): the leader's /health says degraded with a reason meanwhile; afterwards
    everything arrives once, as after a restart."""
    s = scenario
    manual, photo = await traffic_in_flight(s)
    leader = leader_of(s)
    await asyncio.to_thread(s.pg.stop)
    stopped = time.monotonic()

    async def hold() -> None:
        took = await wait_health(s, leader, "degraded", "while PostgreSQL is down",
                                 timeout=OUTAGE_SECONDS - 5)
        logger.warning("the leader's /health said degraded after %s s of the outage", took)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))

    try:
        await during(s, "outage", hold)
    finally:
        await asyncio.to_thread(s.pg.start)
    s.proxy.rate = None
    await everything_arrives_once(s, manual, photo, "outage")


async def test_postgresql_frozen_past_the_lease_costs_only_a_delay(scenario: Scenario) -> None:
    """PostgreSQL frozen (SIGSTOP: connections open, nothing answers) for longer than the
    lease's TTL: the leader's /health says degraded meanwhile (and answers at all); afterwards
    one instance leads, the other stands by, and everything arrives once."""
    s = scenario
    manual, photo = await traffic_in_flight(s)
    leader = leader_of(s)
    s.pg.freeze()
    frozen = time.monotonic()

    async def hold() -> None:
        await wait_health(s, leader, "degraded", "while PostgreSQL is frozen",
                          timeout=FREEZE_SECONDS)
        await asyncio.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen)))

    try:
        await during(s, "freeze", hold)
    finally:
        s.pg.thaw()
    s.proxy.rate = None
    await everything_arrives_once(s, manual, photo, "freeze")


# --------------------------------------------------------------------------------------------
# An event whose handling failed
# --------------------------------------------------------------------------------------------


async def within(predicate: Callable[[], bool], seconds: float) -> bool:
    """Whether ``predicate`` comes true within ``seconds`` (a bounded pause, never a failure)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _sync_returned_after(proxy: FaultyProxy, mark: int) -> bool:
    """Whether a /sync the bot started after ``mark`` (an index into ``proxy.log``) has ended,
    i.e. the bot has been handed what was sent before ``mark``."""
    started = next((i for i, (kind, method, path) in enumerate(proxy.log)
                    if i >= mark and kind == "start" and method == "GET"
                    and path.endswith("/sync")), None)
    return started is not None and any(
        kind == "end" and method == "GET" and path.endswith("/sync")
        for kind, method, path in proxy.log[started + 1:])


async def test_an_event_that_arrives_while_the_store_is_down_is_handled_later(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient,
    own_postgres: PostgresServer, tmp_path: Path,
) -> None:
    """A text and a ✅ that reach the bot while PostgreSQL is stopped (for less than the lease,
    so this is the handler failing, not a takeover) are handled once it is back: the text
    relayed once, the file delivered once, and the bot still running."""
    bot_user = await make_user("parcel", displayname="Parcel")
    agent_user = await make_user("alice", displayname="Alice")
    customer_user = await make_user("carol", displayname="Carol")
    agent = Person(await make_client(agent_user), agent_user)
    customer = Person(await make_client(customer_user), customer_user)
    database = own_postgres.create_database()
    data_dir = tmp_path / "bot"
    data_dir.mkdir()
    async with FaultyProxy(homeserver.url) as proxy:
        config = bot_config(homeserver, bot_user, [agent_user.user_id], data_dir,
                            homeserver=proxy.url, encryption=False, encryption_key=KEY,
                            database=own_postgres.url(database, with_password=True),
                            leader_lease="30s", retry={"max_backoff": MAX_BACKOFF})
        bot = BotProcess(config, tmp_path / "bot.yaml")
        instance = Instance(bot, "")
        await bot.start()
        try:
            chat = Chat(bot, bot_user, agent, customer, homeserver)
            await chat.open_session()
            await customer.say(chat.customer_room, "before")
            await agent.until(lambda: "Carol: before" in agent.bodies(chat.agent_room),
                              "the first text relayed")
            leaflet = samples.png(20, 20)
            await agent.send_file(chat.agent_room, leaflet, "leaflet.png", "image/png",
                                  "m.image")
            await customer.until(lambda: customer.offer_named(chat.customer_room,
                                                              "leaflet.png") is not None,
                                 "the leaflet's offer to the customer")
            card = customer.offer_named(chat.customer_room, "leaflet.png")
            assert card is not None

            await asyncio.to_thread(own_postgres.stop)
            mark = len(proxy.log)
            await customer.say(chat.customer_room, "while the store is down")
            await customer.react(chat.customer_room, card["event_id"], ACCEPT)
            if not await within(lambda: _sync_returned_after(proxy, mark), 10):
                # Not what is checked (a bot may pause syncing while its store is down), but
                # then this run did not make a handler fail: say so.
                logger.warning("the bot did not sync while its store was down")
            # A moment for the handling to run (and fail), unless the bot syncs again first.
            await within(lambda: _sync_returned_after(proxy, len(proxy.log)), 2)
        finally:
            if not own_postgres.running:
                await asyncio.to_thread(own_postgres.start)
        try:
            await customer.say(chat.customer_room, "after the store came back")
            await agent.until(lambda: "Carol: after the store came back"
                              in agent.bodies(chat.agent_room),
                              "the text sent after the store came back", timeout=RECOVERY)
            await customer.until(lambda: bool(customer.deliveries(chat.customer_room,
                                                                  chat.bot_id)),
                                 "the leaflet delivered on the ✅ given while the store was down",
                                 timeout=RECOVERY)
            await customer.say(chat.customer_room, "the end")
            await agent.until(lambda: "Carol: the end" in agent.bodies(chat.agent_room),
                              "the last text relayed", timeout=RECOVERY)
            exited = instance.exited()
        except AssertionError as exc:
            errors = "\n      ".join(instance.errors()) or "(none)"
            relayed = [b for b in agent.bodies(chat.agent_room) if b.startswith("Carol: ")]
            raise AssertionError(f"{exc}\n  relayed so far: {relayed}\n  the bot: exit code "
                                 f"{instance.exited()}; its errors:\n      {errors}") from None
        finally:
            if instance.exited() is None:
                await bot.stop()
        relayed = [b.removeprefix("Carol: ") for b in agent.bodies(chat.agent_room)
                   if b.startswith("Carol: ")]
        check_once(relayed, ["before", "while the store is down", "after the store came back",
                             "the end"], "the customer's texts at the agent")
        delivered = customer.deliveries(chat.customer_room, chat.bot_id)
        assert len(delivered) == 1, f"the leaflet was delivered {len(delivered)} times"
        assert await customer.download(delivered[0]["content"]) == leaflet
        assert exited is None, f"the bot exited ({exited}); its errors: {instance.errors()}"
