"""The measurements of issue 6, each a coroutine that fills a part of the results.

Parts 7 (start-up with real history) and 8 (text burst) live in ``bench.history`` and
``bench.burst``.

Timing rules (the same for Parcel and for the baseline relay):

* Latency parts (1-4): t0 is the ``origin_server_ts`` of the event that starts the clock (the
  sender's file message, or the ✅ reaction), read from the sender's own sync; t1 is the wall
  clock when the recipient's nio client handed the resulting event over (after decryption).
  Client, bots and homeserver share one host clock.
* Scale (5): the customers do not sync (hundreds of clients would mostly measure the client),
  so t0 is the moment the customer's send returned.
* Every wait has a deadline; every loop is bounded in count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.floor import Downloader, mxc_of
from bench.harness import (
    Actor,
    BenchError,
    Child,
    Seen,
    machine_busy_jiffies,
    proc_cpu_seconds,
    ratio,
    reset_peak_rss,
    summary,
    summary_ab,
    synapse_pid,
)
from bot.devserver import Homeserver, RegisteredUser, unique_localpart

logger = logging.getLogger("bench")

OFFER_KEY = "io.parcel.offer"
ACCEPT = "\u2705"
OCTET = "application/octet-stream"
KB, MB = 1000, 1000 * 1000
# How long a person takes between the card appearing and their ✅ (reading it, moving the
# pointer): the click that the delivery target is about (issue 23).
PERSON_CLICK = 1.5


@dataclass(frozen=True)
class Params:
    """How much of everything a mode does."""

    mode: str
    one_hop_n: int
    text_relay_n: int
    sizes: tuple[tuple[str, int, int], ...]  # label, bytes, repetitions (plain)
    e2ee_reps: tuple[int, ...]  # repetitions per size with E2EE
    scale_levels: tuple[int, ...]
    scale_window: float
    scale_drain: float
    scale_setup_budget: float  # seconds for opening all sessions of all levels, both bots
    memory_sizes: tuple[tuple[str, int], ...]
    startup_cases: tuple[tuple[int, int], ...]  # (ended, open) chats, cumulative
    startup_customers: int  # customers opening chats at the same time
    startup_warm_runs: int
    burst_n: int  # texts in one burst
    burst_rounds: int  # bursts per bot, alternating relay and Parcel
    step_timeout: float = 120.0
    traffic_n: int = 3  # offers per size counted through the proxy, plain and E2EE
    chats_levels: tuple[int, ...] = (1, 200)  # open encrypted chats, cumulative (part chats)


FULL = Params(
    mode="full",
    one_hop_n=30,
    text_relay_n=30,
    sizes=(("4 KB", 4 * KB, 30), ("1 MB", 1 * MB, 30), ("20 MB", 20 * MB, 10),
           ("100 MB", 100 * MB, 10)),
    e2ee_reps=(30, 30, 10, 10),
    traffic_n=5,
    chats_levels=(1, 1000, 5000),
    scale_levels=(10, 50, 200),
    scale_window=30.0,
    scale_drain=30.0,
    scale_setup_budget=420.0,
    memory_sizes=(("1 MB", 1 * MB), ("50 MB", 50 * MB), ("250 MB", 250 * MB)),
    startup_cases=((5, 5), (1000, 50)),
    startup_customers=12,
    startup_warm_runs=5,
    burst_n=200,
    burst_rounds=3,
)

QUICK = Params(
    mode="quick",
    one_hop_n=10,
    text_relay_n=8,
    sizes=(("4 KB", 4 * KB, 6), ("1 MB", 1 * MB, 6), ("20 MB", 20 * MB, 4),
           ("100 MB", 100 * MB, 2)),
    e2ee_reps=(6, 6, 4, 2),
    traffic_n=3,
    scale_levels=(5, 20),
    scale_window=10.0,
    scale_drain=10.0,
    scale_setup_budget=60.0,
    memory_sizes=(("1 MB", 1 * MB), ("50 MB", 50 * MB)),
    startup_cases=((5, 5), (100, 10)),
    startup_customers=16,
    startup_warm_runs=3,
    burst_n=100,
    burst_rounds=2,
)


def plain_bytes(size: int) -> bytes:
    """Random bytes that libmagic calls application/octet-stream, as Parcel will see them.

    Plain ``os.urandom`` output sometimes starts like a program ("MZ" reads as a DOS
    executable), which Parcel rightly refuses; a refused file has no offer card to time.
    """
    import magic

    for _ in range(50):
        data = os.urandom(size)
        if magic.from_buffer(data[:1 << 16], mime=True) == OCTET:
            return data
    raise BenchError("could not make random data that libmagic calls application/octet-stream")


def say(text: str) -> None:
    """Progress on stderr, so stdout keeps only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def gather_limited(limit: int, factories: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run coroutine factories with at most ``limit`` at a time; exceptions are returned."""
    sem = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await factory()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)


# --------------------------------------------------------------------------------------------
# The bots
# --------------------------------------------------------------------------------------------


@dataclass
class ParcelBot:
    """Parcel as a separate ``python -m bot run --config FILE`` process."""

    user: RegisteredUser
    data_dir: Path
    config_path: Path
    child: Child

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def sessions(self) -> dict[str, tuple[str | None, str]]:
        """customer room -> (agent room, state), read-only from the bot's store."""
        db = self.data_dir / "parcel.db"
        if not db.exists():
            return {}
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                rows = conn.execute(
                    "SELECT customer_room, agent_room, state FROM sessions").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return {}
        return {row[0]: (row[1], row[2]) for row in rows}

    def offer_count(self) -> int:
        db = self.data_dir / "parcel.db"
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                return int(conn.execute("SELECT COUNT(*) FROM offers").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.Error:
            return -1


@dataclass
class RelayBot:
    """The baseline relay as a separate ``python -m bench.relay CONFIG`` process."""

    user: RegisteredUser
    pairs_path: Path
    child: Child
    pairs: dict[str, str] = field(default_factory=dict)

    @property
    def user_id(self) -> str:
        return self.user.user_id

    def add_pairs(self, pairs: dict[str, str]) -> None:
        self.pairs.update(pairs)
        tmp = self.pairs_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.pairs))
        tmp.replace(self.pairs_path)


@dataclass
class Chat:
    """One customer and one agent talking through one bot (Parcel or the relay)."""

    kind: str  # "parcel" or "relay"
    bot_id: str
    customer: Actor
    agent: Actor
    customer_room: str
    agent_room: str
    encrypted: bool
    data_dir: Path | None = None  # Parcel's, to look up whether a delivery was staged


# --------------------------------------------------------------------------------------------
# The benchmark context
# --------------------------------------------------------------------------------------------


class Bench:
    """Owns the homeserver, the bots and the actors of one run, and the results."""

    def __init__(self, params: Params, workdir: Path) -> None:
        self.p = params
        self.workdir = workdir
        self.hs = Homeserver(workdir / "synapse", max_upload_size="300M")
        self.actors: list[Actor] = []
        self.children: list[Child] = []
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self._blobs: dict[int, bytes] = {}
        self._synapse_pid: int | None = None
        # For the profiler: which bots the scale part measures, and calls around each window.
        self.scale_sides: tuple[str, ...] = ("relay", "parcel")
        self.background: set[asyncio.Task[Any]] = set()
        self.window_hooks: list[Callable[[str, str, int, Child], Awaitable[None]]] = []

    async def __aenter__(self) -> Bench:
        await self.hs.start()
        say(f"Synapse ready at {self.hs.url} after {self.hs.startup_seconds:.1f} s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        for actor in self.actors:
            await actor.close()
        for child in self.children:
            await child.stop()
        await self.hs.stop()

    @property
    def synapse_pid(self) -> int | None:
        if self._synapse_pid is None:
            self._synapse_pid = synapse_pid(self.hs.base_dir)
        return self._synapse_pid

    def blob(self, size: int) -> bytes:
        """Random bytes (libmagic: application/octet-stream), one buffer per size."""
        if size not in self._blobs:
            self._blobs[size] = plain_bytes(size)
        return self._blobs[size]

    async def user(self, prefix: str, displayname: str | None = None) -> RegisteredUser:
        return await self.hs.register(unique_localpart(prefix), displayname=displayname)

    async def actor(self, prefix: str, displayname: str, *, encrypted: bool = False,
                    auto_join: bool = False, listen: bool = True,
                    keep_events: bool = True) -> Actor:
        user = await self.user(prefix, displayname)
        actor = Actor(self.hs.url, user, self._dir("clients"), encrypted=encrypted,
                      auto_join=auto_join, keep_events=keep_events)
        self.actors.append(actor)
        if listen:
            await actor.start()
        return actor

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def parcel_config(self, bot: RegisteredUser, data_dir: Path, agents: list[str],
                      encryption: bool, max_size: str = "300MB",
                      homeserver: str | None = None) -> Path:
        raw = {
            "homeserver": homeserver or self.hs.url,
            "user_id": bot.user_id,
            "password": bot.password,
            "device_name": "parcel-bench",
            "data_dir": str(data_dir),
            "encryption": encryption,
            "agents": {"users": agents, "room_encryption": encryption},
            "policy": {"max_size": max_size, "offer_ttl": "1h"},
            "media": {"transfer_timeout": "10m"},
            "logging": {"level": "INFO"},
        }
        path = data_dir.parent / f"{data_dir.name}.yaml"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    @staticmethod
    def parcel_child(config_path: Path, log_path: Path) -> Child:
        return Child([sys.executable, "-m", "bot", "run", "--config", str(config_path)],
                     log_path, b"first sync done; ready")

    async def parcel(self, name: str, *, encryption: bool, agents: list[str],
                     homeserver: str | None = None) -> ParcelBot:
        bot = await self.user(f"parcel-{name}", "Parcel")
        data_dir = self._dir("bots") / f"parcel-{name}"
        config_path = self.parcel_config(bot, data_dir, agents, encryption,
                                         homeserver=homeserver)
        child = self.parcel_child(config_path, data_dir.parent / f"parcel-{name}.log")
        self.children.append(child)
        seconds = await child.start()
        say(f"Parcel '{name}' (pid {child.pid}, E2EE {'on' if encryption else 'off'}) ready "
            f"in {seconds:.1f} s")
        return ParcelBot(bot, data_dir, config_path, child)

    async def relay(self, name: str, *, encryption: bool,
                    homeserver: str | None = None) -> RelayBot:
        user = await self.user(f"relay-{name}", "Relay")
        base = self._dir("bots") / f"relay-{name}"
        base.mkdir(parents=True, exist_ok=True)
        pairs = base / "pairs.json"
        pairs.write_text("{}")
        config = {
            "homeserver": homeserver or self.hs.url, "user_id": user.user_id,
            "device_id": user.device_id,
            "access_token": user.access_token, "store_dir": str(base / "store"),
            "encryption": encryption, "pairs_file": str(pairs),
        }
        (base / "store").mkdir(exist_ok=True)
        config_path = base / "relay.json"
        config_path.write_text(json.dumps(config))
        child = Child([sys.executable, "-m", "bench.relay", str(config_path)],
                      base.parent / f"relay-{name}.log", b"relay ready")
        self.children.append(child)
        seconds = await child.start()
        say(f"baseline relay '{name}' (pid {child.pid}) ready in {seconds:.1f} s")
        return RelayBot(user, pairs, child)

    # -- opening chats ---------------------------------------------------------------------

    async def open_parcel_chat(self, bot: ParcelBot, customer: Actor, agent: Actor,
                               encrypted: bool) -> Chat:
        room = await customer.create_room([bot.user_id], encrypted=encrypted)
        agent_room = await self._agent_room_of(bot, room)
        await agent.wait_until(lambda: agent_room in agent.client.rooms
                               and agent_room not in agent.client.invited_rooms,
                               "joining the agent room")
        chat = Chat("parcel", bot.user_id, customer, agent, room, agent_room, encrypted,
                    bot.data_dir)
        if encrypted:
            await customer.wait_for(lambda s: s.room_id == room and s.sender == bot.user_id
                                    and s.type == "m.room.message", "the bot's welcome")
        await self.probe(chat)
        return chat

    async def _agent_room_of(self, bot: ParcelBot, customer_room: str,
                             timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agent_room, state = bot.sessions().get(customer_room, (None, ""))
            if agent_room and state == "open":
                return agent_room
            await asyncio.sleep(0.1)
        raise BenchError(f"Parcel opened no session for {customer_room} in {timeout:.0f} s")

    async def open_relay_chat(self, relay: RelayBot, customer: Actor, agent: Actor,
                              encrypted: bool) -> Chat:
        room = await customer.create_room([relay.user_id], encrypted=encrypted)
        agent_room = await agent.create_room([relay.user_id], encrypted=encrypted, direct=False)
        relay.add_pairs({room: agent_room})
        for actor, rid in ((customer, room), (agent, agent_room)):
            await actor.wait_until(
                lambda a=actor, r=rid: r in a.client.rooms
                and relay.user_id in a.client.rooms[r].users
                and relay.user_id not in a.client.rooms[r].invited_users,
                "the relay to join")
        chat = Chat("relay", relay.user_id, customer, agent, room, agent_room, encrypted)
        await self.probe(chat)
        return chat

    async def probe(self, chat: Chat, attempts: int = 20) -> float:
        """Send texts until one comes through to the agent (keys, joins, syncs all settled)."""
        for _ in range(attempts):
            token = f"probe-{secrets.token_hex(6)}"
            await chat.customer.say(chat.customer_room, token)
            with contextlib.suppress(BenchError):
                seen = await chat.agent.wait_for(
                    lambda s, t=token: s.room_id == chat.agent_room
                    and str(s.content.get("body", "")).endswith(t), "a probe", timeout=3.0)
                return seen.at
        raise BenchError(f"no text got through the {chat.kind} chat {chat.customer_room}")

    # -- one measured exchange -------------------------------------------------------------

    async def _own_ts(self, actor: Actor, event_id: str) -> float:
        echo = await actor.wait_for(lambda s: s.source.get("event_id") == event_id,
                                    f"the echo of {event_id}", timeout=self.p.step_timeout)
        return float(echo.source["origin_server_ts"]) / 1000.0

    async def send_file(self, chat: Chat, name: str,
                        size: int) -> tuple[str, float, dict[str, Any]]:
        """Upload and post a file; (event id, time the send returned, the media part)."""
        media = await chat.customer.upload(self.blob(size), name, OCTET, encrypt=chat.encrypted)
        content = Actor.file_content(media, name, OCTET, size)
        event_id, returned = await chat.customer.send(chat.customer_room, content)
        return event_id, returned, media

    async def relay_cycle(self, chat: Chat, name: str, size: int) -> tuple[float, dict]:
        """File through the relay: customer's file message -> forwarded copy at the agent.

        Returns the latency and the media part of the upload (for the floor's download).
        In an encrypted chat the copy must be an encrypted file (the same ``file`` block, so
        the relay forwards the encrypted file as is, in an encrypted event)."""
        event_id, _, media = await self.send_file(chat, name, size)
        seen = await chat.agent.wait_for(
            lambda s: s.room_id == chat.agent_room and s.sender == chat.bot_id
            and s.content.get("body") == name, f"the forwarded {name}",
            timeout=self.p.step_timeout)
        if chat.encrypted and not isinstance(seen.content.get("file"), dict):
            raise BenchError(f"the relay forwarded {name} without its encrypted file block")
        return seen.at - await self._own_ts(chat.customer, event_id), media

    async def offer_shown(self, chat: Chat, card: Seen, offer_id: int) -> None:
        """Wait for what a person sees before deciding: the bot's ✅/❌ under the card and the
        sender's status line. (A person clicks the bot's ✅, so it must be there; reacting the
        instant the card lands would also time the bot's own posting of those three events.)"""
        card_id = card.source["event_id"]

        def bot_reactions() -> int:
            return sum(1 for s in chat.agent.seen if s.room_id == chat.agent_room
                       and s.type == "m.reaction" and s.sender == chat.bot_id
                       and s.content.get("m.relates_to", {}).get("event_id") == card_id)

        await chat.agent.wait_until(lambda: bot_reactions() >= 2, "the bot's reactions",
                                    timeout=self.p.step_timeout)
        await chat.customer.wait_for(
            lambda s: s.room_id == chat.customer_room and s.sender == chat.bot_id
            and isinstance(s.content.get(OFFER_KEY), dict)
            and s.content[OFFER_KEY].get("id") == offer_id and "m.new_content" not in s.content,
            "the status line", timeout=self.p.step_timeout)

    async def parcel_cycle(self, chat: Chat, name: str, size: int,
                           click_after: float = 0.0) -> tuple[float, float, bool | None]:
        """Offer, ✅, delivery and both edits. The ✅ is clicked as soon as the offer shows
        (``click_after`` 0: the worst case) or ``click_after`` seconds after the card appeared
        (as a person clicks, :data:`PERSON_CLICK`).

        Returns (offer latency, delivery latency, whether the recipient's copy was already
        staged when ✅ was clicked; None when that cannot be read)."""
        customer, agent = chat.customer, chat.agent
        event_id, _, _ = await self.send_file(chat, name, size)
        card = await agent.wait_for(lambda s: s.room_id == chat.agent_room and is_card(s, name),
                                    f"the offer card for {name}", timeout=self.p.step_timeout)
        offer_latency = card.at - await self._own_ts(customer, event_id)
        offer_id = card.content[OFFER_KEY]["id"]
        await self.offer_shown(chat, card, offer_id)
        if click_after > 0:
            await asyncio.sleep(max(0.0, card.at + click_after - time.time()))
        staged = staged_in_store(chat.data_dir, offer_id)
        reaction_id, _ = await agent.react(chat.agent_room, str(card.source["event_id"]), ACCEPT)
        media = await agent.wait_for(
            lambda s: s.room_id == chat.agent_room and s.sender == chat.bot_id
            and ("url" in s.content or "file" in s.content)
            and name in (s.content.get("body"), s.content.get("filename")),
            f"the delivery of {name}", timeout=self.p.step_timeout)
        delivery_latency = media.at - await self._own_ts(agent, reaction_id)
        # Let the offer settle (both edits out) so the next exchange starts from quiet.
        await agent.wait_for(lambda s: s.room_id == chat.agent_room
                             and edit_state(s, offer_id) == "accepted", "the card's edit",
                             timeout=self.p.step_timeout)
        await customer.wait_for(lambda s: s.room_id == chat.customer_room
                                and edit_state(s, offer_id) == "accepted",
                                "the status line's edit", timeout=self.p.step_timeout)
        return offer_latency, delivery_latency, staged


def staged_in_store(data_dir: Path | None, offer_id: int) -> bool | None:
    """Whether Parcel's store has a staged copy for the offer (read-only look-up)."""
    db = None if data_dir is None else data_dir / "parcel.db"
    if db is None or not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT staged_uri FROM offers WHERE id = ?",
                               (offer_id,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return None if row is None else row[0] is not None


def is_card(seen: Seen, name: str) -> bool:
    content = seen.content
    block = content.get(OFFER_KEY)
    return (seen.type == "m.room.message" and isinstance(block, dict)
            and "m.new_content" not in content and block.get("filename") == name)


def edit_state(seen: Seen, offer_id: int) -> str | None:
    new = seen.content.get("m.new_content")
    if not isinstance(new, dict):
        return None
    block = new.get(OFFER_KEY)
    if isinstance(block, dict) and block.get("id") == offer_id:
        return str(block.get("state"))
    return None


# --------------------------------------------------------------------------------------------
# Parts 1-4: latency
# --------------------------------------------------------------------------------------------


async def relayed_text_latency(b: Bench, chat: Chat, token: str) -> float:
    """The customer says ``token``: its origin_server_ts → the relayed copy shown by the
    agent's client (seconds)."""
    event_id, _ = await chat.customer.say(chat.customer_room, token)
    seen = await chat.agent.wait_for(
        lambda s: s.room_id == chat.agent_room
        and str(s.content.get("body", "")).endswith(token), "a relayed text",
        timeout=b.p.step_timeout)
    return seen.at - await b._own_ts(chat.customer, event_id)


async def part_baseline_hops(b: Bench, relay: RelayBot, parcel: ParcelBot,
                             relay_chat: Chat, parcel_chat: Chat) -> None:
    """1. Raw one-hop latency, and text through two hops (relay; Parcel for reference)."""
    say("part 1: one-hop and two-hop text latency")
    alice = await b.actor("hop-a", "Hop A")
    bob = await b.actor("hop-b", "Hop B", auto_join=True)
    room = await alice.create_room([bob.user_id], direct=False)
    await bob.wait_until(lambda: room in bob.client.rooms and room not in bob.client.invited_rooms,
                         "joining the one-hop room")
    one_hop: list[float] = []
    for i in range(b.p.one_hop_n + 3):
        token = f"hop-{i}-{secrets.token_hex(4)}"
        event_id, _ = await alice.say(room, token)
        seen = await bob.wait_for(lambda s, t=token: s.content.get("body") == t, "a one-hop text")
        latency = seen.at - await b._own_ts(alice, event_id)
        if i >= 3:
            one_hop.append(latency)
        await asyncio.sleep(0.05)

    async def text_two_hops(chat: Chat, n: int) -> list[float]:
        out = []
        for i in range(n + 2):
            latency = await relayed_text_latency(b, chat, f"t2-{i}-{secrets.token_hex(4)}")
            if i >= 2:
                out.append(latency)
            await asyncio.sleep(0.05)
        return out

    relay_text = await text_two_hops(relay_chat, b.p.text_relay_n)
    parcel_text = await text_two_hops(parcel_chat, b.p.text_relay_n)
    b.results["baseline"] = {
        "one_hop_text": summary(one_hop),
        "relay_two_hop_text": summary(relay_text),
        "parcel_text_relay": summary(parcel_text),
        "ratio_parcel_text_p50": ratio(summary(parcel_text)["p50"], summary(relay_text)["p50"]),
    }


async def part_latency(b: Bench, label: str, relay_chat: Chat, parcel_chat: Chat,
                       reps: tuple[int, ...], floor: Downloader | None = None) -> dict[str, Any]:
    """2./3. (and 4. when the chats are encrypted): offer and delivery latency per size.

    Per sample, interleaved so drift in the homeserver hits all alike: the relay forwards
    the file; ``floor`` (a client) downloads the relay's copy of it from the same Synapse
    (the inspection floor is that forward plus that download); Parcel offers it and
    delivers it on ✅, clicked at once in even samples and :data:`PERSON_CLICK` seconds after
    the card in odd ones (each set against the relay samples taken beside it). Even and odd
    samples of each set are the halves A and B of its spread."""
    out: dict[str, Any] = {}
    # Warm-up: first sends share room keys, load libmagic, open connections. Not measured.
    _, warm_media = await b.relay_cycle(relay_chat, f"warm-{label}-relay.bin", 4 * KB)
    if floor is not None:
        await floor.seconds(mxc_of(warm_media))
    await b.parcel_cycle(parcel_chat, f"warm-{label}-parcel.bin", 4 * KB)
    for (size_label, size, _), n in zip(b.p.sizes, reps, strict=True):
        say(f"  {label}: {size_label} x {n}")
        forward, download, offer, delivery, person = [], [], [], [], []
        staged: list[bool | None] = []
        staged_person: list[bool | None] = []
        for i in range(n):
            tag = size_label.replace(" ", "")
            fwd, media = await b.relay_cycle(relay_chat, f"{label}-{tag}-{i}-r.bin", size)
            forward.append(fwd)
            if floor is not None:
                download.append(await floor.seconds(mxc_of(media), expected_size=size))
            as_person = i % 2 == 1
            o, d, st = await b.parcel_cycle(parcel_chat, f"{label}-{tag}-{i}-p.bin", size,
                                            click_after=PERSON_CLICK if as_person else 0.0)
            offer.append(o)
            (person if as_person else delivery).append(d)
            (staged_person if as_person else staged).append(st)
        floor_samples = [f + d for f, d in zip(forward, download, strict=True)]
        s_fwd, s_off, s_del = summary_ab(forward), summary_ab(offer), summary_ab(delivery)
        s_person = summary_ab(person)
        s_floor = summary_ab(floor_samples) if floor_samples else None
        entry: dict[str, Any] = {
            "bytes": size,
            "baseline_forward": s_fwd,
            "client_download": summary_ab(download) if download else None,
            "inspection_floor": s_floor,
            "parcel_offer": s_off,
            "parcel_delivery": s_del,
            "ratio_offer_p50": ratio(s_off["p50"], s_fwd["p50"]),
            "ratio_offer_p95": ratio(s_off["p95"], s_fwd["p95"]),
            "ratio_delivery_p50": ratio(s_del["p50"], s_fwd["p50"]),
            "ratio_delivery_p95": ratio(s_del["p95"], s_fwd["p95"]),
            # The same ratios in halves A and B: a verdict that flips between them is noise.
            "ratio_delivery_p50_ab": [ratio(s_del["p50_a"], s_fwd["p50_a"]),
                                      ratio(s_del["p50_b"], s_fwd["p50_b"])],
            "staged_before_accept": sum(1 for x in staged if x),
            # The ✅ as a person clicks it, against the same relay samples.
            "parcel_delivery_person": s_person,
            "ratio_delivery_person_p50": ratio(s_person["p50"], s_fwd["p50"]),
            "ratio_delivery_person_p95": ratio(s_person["p95"], s_fwd["p95"]),
            "ratio_delivery_person_p50_ab": [ratio(s_person["p50_a"], s_fwd["p50_a"]),
                                             ratio(s_person["p50_b"], s_fwd["p50_b"])],
            "staged_before_person_accept": sum(1 for x in staged_person if x),
        }
        if s_floor is not None:
            entry["ratio_offer_floor_p50"] = ratio(s_off["p50"], s_floor["p50"])
            entry["ratio_offer_floor_p95"] = ratio(s_off["p95"], s_floor["p95"])
            entry["ratio_offer_floor_p50_ab"] = [ratio(s_off["p50_a"], s_floor["p50_a"]),
                                                 ratio(s_off["p50_b"], s_floor["p50_b"])]
        out[size_label] = entry
        say(f"    relay {s_fwd['p50'] * 1000:.0f} ms, floor "
            f"{(s_floor or {}).get('p50', 0) * 1000:.0f} ms, offer {s_off['p50'] * 1000:.0f} ms, "
            f"delivery {s_del['p50'] * 1000:.0f} ms, at {PERSON_CLICK:g} s "
            f"{(s_person['p50'] or 0) * 1000:.0f} ms (p50)")
    return out


# --------------------------------------------------------------------------------------------
# Part 5: scale
# --------------------------------------------------------------------------------------------


@dataclass
class ScaleSide:
    """One bot's sessions for the scale run."""

    kind: str
    bot_id: str
    child: Child
    agent: Actor
    rooms: dict[int, str] = field(default_factory=dict)  # customer index -> customer room
    agent_rooms: dict[int, str] = field(default_factory=dict)
    ready: set[int] = field(default_factory=set)
    arrivals: dict[str, float] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)


def _scale_watcher(side: ScaleSide) -> Callable[[Seen], None]:
    def watch(seen: Seen) -> None:
        content = seen.content
        body = content.get("body")
        if side.kind == "parcel":
            block = content.get(OFFER_KEY)
            if isinstance(block, dict) and "m.new_content" not in content:
                side.arrivals.setdefault(str(block.get("filename")), seen.at)
                return
        elif isinstance(body, str) and body.endswith(".bin") and seen.sender == side.bot_id:
            side.arrivals.setdefault(body, seen.at)
            return
        if isinstance(body, str) and "sprobe-" in body:
            side.probes.setdefault(body[body.index("sprobe-"):], seen.at)
    return watch


async def scale_customers(b: Bench, prefix: str,
                          count: int) -> tuple[list[Actor], dict[int, dict[str, Any]]]:
    """``count`` registered customers (``<prefix><n>``) and one pre-uploaded 4 KB file each
    (by customer index; a failed upload leaves that index out)."""
    users = await gather_limited(8, [lambda i=i: b.user(f"{prefix}{i}", f"Customer {i}")
                                     for i in range(count)])
    customers: list[Actor] = []
    for user in users:
        if isinstance(user, BaseException):
            raise BenchError(f"registering customers failed: {user!r}")
        actor = Actor(b.hs.url, user, b._dir("clients"), keep_events=False)
        b.actors.append(actor)
        customers.append(actor)
    blobs = await gather_limited(8, [lambda i=i: customers[i].upload(
        plain_bytes(4 * KB), f"{prefix[0]}{i}.bin", OCTET) for i in range(count)])
    return customers, {i: m for i, m in enumerate(blobs) if isinstance(m, dict)}


async def _open_scale_sessions(b: Bench, side: ScaleSide, customers: list[Actor],
                               indices: list[int], deadline: float,
                               parcel: ParcelBot | None, relay: RelayBot | None) -> None:
    """Open sessions for ``indices`` (whatever is ready by ``deadline`` counts)."""
    todo = [i for i in indices if i not in side.rooms]

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    async def create(i: int) -> None:
        bot_id = side.bot_id
        side.rooms[i] = await customers[i].create_room([bot_id])
        if relay is not None:
            agent_room = await side.agent.create_room([bot_id], direct=False)
            side.agent_rooms[i] = agent_room
            relay.add_pairs({side.rooms[i]: agent_room})

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gather_limited(6, [lambda i=i: create(i) for i in todo]), left())
    if parcel is not None:  # the bot creates the agent rooms; find them in its store
        while time.monotonic() < deadline:
            known = parcel.sessions()
            for i in todo:
                room = side.rooms.get(i)
                agent_room, state = known.get(room, (None, "")) if room else (None, "")
                if agent_room and state == "open":
                    side.agent_rooms[i] = agent_room
            if all(i in side.agent_rooms for i in todo if i in side.rooms):
                break
            await asyncio.sleep(0.5)
    # Probe every session until a text gets through (joins, syncs and pairs all settled).
    pending = {i for i in todo if i in side.agent_rooms}
    for _ in range(200):
        if not pending or time.monotonic() > deadline:
            break
        tokens = {}
        for i in pending:
            tokens[i] = f"sprobe-{i}-{secrets.token_hex(4)}"
        await gather_limited(8, [lambda i=i: customers[i].say(side.rooms[i], tokens[i])
                                 for i in pending])
        until = min(deadline, time.monotonic() + 8.0)
        while time.monotonic() < until and any(tokens[i] not in side.probes for i in pending):
            await asyncio.sleep(0.1)
        pending = {i for i in pending if tokens[i] not in side.probes}
    side.ready.update(i for i in todo if i in side.agent_rooms and i not in pending)


async def _wait_idle(pid: int, max_wait: float, threshold: float = 0.03) -> float:
    """Wait until a process used < ``threshold`` CPU seconds in half a second; returns waited."""
    began = time.monotonic()
    last = proc_cpu_seconds(pid)
    while time.monotonic() - began < max_wait:
        await asyncio.sleep(0.5)
        now = proc_cpu_seconds(pid)
        if now - last < threshold:
            break
        last = now
    return time.monotonic() - began


async def _scale_window(b: Bench, side: ScaleSide, customers: list[Actor],
                        media: dict[int, dict[str, Any]], sessions: list[int],
                        level: int) -> dict[str, Any]:
    """Every session posts one 4 KB file a second for the window; measure what comes out."""
    window, drain = b.p.scale_window, b.p.scale_drain
    n = len(sessions)
    sent: dict[str, float] = {}
    skipped = 0
    errors = 0
    tag = f"{side.kind[0]}L{level}"
    spid = b.synapse_pid
    # Start from a quiet homeserver and bot: a backlog left by the last window would count here.
    quiet = 0.0
    if spid:
        quiet += await _wait_idle(spid, max_wait=drain, threshold=0.1)
    quiet += await _wait_idle(side.child.pid, max_wait=drain)
    cpu0 = side.child.cpu()
    syn0 = proc_cpu_seconds(spid) if spid else 0.0
    own0 = time.process_time()
    busy0 = machine_busy_jiffies()
    for hook in b.window_hooks:
        await hook("start", side.kind, level, side.child)
    start_mono = time.monotonic() + 1.0
    start_wall = time.time() + 1.0
    tasks: set[asyncio.Task[None]] = set()

    async def post(i: int, name: str) -> None:
        nonlocal errors
        content = Actor.file_content(media[i], name, OCTET, 4 * KB)
        try:
            _, returned = await customers[i].send(side.rooms[i], content)
            sent[name] = returned
        except Exception:  # noqa: BLE001 - counted
            errors += 1

    async def sender(slot: int, i: int) -> None:
        nonlocal skipped
        inflight: set[asyncio.Task[None]] = set()
        for k in range(int(window)):
            at = start_mono + k + slot / n
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            inflight = {t for t in inflight if not t.done()}
            if len(inflight) >= 3:  # the homeserver is not answering fast enough
                skipped += 1
                continue
            task = asyncio.create_task(post(i, f"{tag}-s{i}-k{k}.bin"))
            inflight.add(task)
            tasks.add(task)
            b.background.add(task)  # a send still pending after the drain keeps running
            task.add_done_callback(b.background.discard)

    await asyncio.gather(*(sender(slot, i) for slot, i in enumerate(sessions)))
    end_wall = start_wall + window
    cpu_w = side.child.cpu()
    syn_w = proc_cpu_seconds(spid) if spid else 0.0
    own_w = time.process_time()
    busy_w = machine_busy_jiffies()
    window_wall = time.time() - start_wall
    for hook in b.window_hooks:
        await hook("stop", side.kind, level, side.child)
    if tasks:
        await asyncio.wait(tasks, timeout=drain)
    drain_until = time.monotonic() + drain
    while time.monotonic() < drain_until and any(k not in side.arrivals for k in sent):
        await asyncio.sleep(0.2)
    idle_wait = await _wait_idle(side.child.pid, max_wait=drain)
    cpu1 = side.child.cpu()
    syn1 = proc_cpu_seconds(spid) if spid else 0.0
    own1 = time.process_time()
    elapsed = time.time() - start_wall
    arrived = {k: side.arrivals[k] for k in sent if k in side.arrivals}
    latencies = [arrived[k] - sent[k] for k in arrived]
    warm = min(5.0, window / 3)
    steady = [at for at in arrived.values() if start_wall + warm <= at <= end_wall]
    lat = summary(latencies)
    done = len(arrived)
    # Sustained rate: files completed from the first send to the last arrival (at least the
    # window). Below saturation this is the offered rate; above it, what the pipeline
    # (homeserver + bot) completes per second while it has a backlog.
    last = max(arrived.values(), default=start_wall)
    span = max(window, last - start_wall)
    attempted = n * int(window)
    return {
        "sessions": n,
        "offered_per_s": round(n / 1.0, 2),
        "attempted": attempted,
        "sent": len(sent),
        "send_errors": errors,
        "skipped_client_backlog": skipped,
        "arrived": done,
        "missing_after_drain": len(sent) - done,
        "throughput_per_s": round(done / span, 2),
        "throughput_span_s": round(span, 1),
        "in_window_arrivals_per_s": round(len(steady) / (window - warm), 2),
        "latency": lat,
        "latency_censored": len(sent) - done > 0.05 * max(1, len(sent)),
        "bot_cpu_s": round(cpu1 - cpu0, 2),
        "bot_cpu_s_per_offer": round((cpu1 - cpu0) / done, 4) if done else None,
        "bot_cpu_utilisation": round((cpu1 - cpu0) / elapsed, 3),
        "synapse_cpu_s_per_offer": round((syn1 - syn0) / done, 4) if done else None,
        "synapse_cpu_utilisation": round((syn1 - syn0) / elapsed, 3),
        "harness_cpu_utilisation": round((own1 - own0) / elapsed, 3),
        "during_window": {
            "bot_cpu_utilisation": round((cpu_w - cpu0) / window_wall, 3),
            "synapse_cpu_utilisation": round((syn_w - syn0) / window_wall, 3),
            "harness_cpu_utilisation": round((own_w - own0) / window_wall, 3),
            # Every process on the machine, ours and others' (a shared machine is noisy).
            "machine_busy_cores": round((busy_w[0] - busy0[0]) / max(1, busy_w[1] - busy0[1])
                                        * (os.cpu_count() or 1), 2),
        },
        "wall_s": round(elapsed, 1),
        "idle_wait_s": round(idle_wait, 1),
        "quiet_wait_before_s": round(quiet, 1),
    }


async def part_scale(b: Bench) -> None:
    """5. Concurrent sessions each posting a 4 KB file per second: Parcel vs the relay."""
    levels = b.p.scale_levels
    nmax = max(levels)
    say(f"part 5: scale, sessions {levels}, {b.p.scale_window:.0f} s windows")
    agent_p = await b.actor("scale-agent-p", "Agent P", auto_join=True, keep_events=False)
    agent_r = await b.actor("scale-agent-r", "Agent R", auto_join=True, keep_events=False)
    parcel = await b.parcel("scale", encryption=False, agents=[agent_p.user_id])
    relay = await b.relay("scale", encryption=False)
    p_side = ScaleSide("parcel", parcel.user_id, parcel.child, agent_p)
    r_side = ScaleSide("relay", relay.user_id, relay.child, agent_r)
    agent_p.watchers.append(_scale_watcher(p_side))
    agent_r.watchers.append(_scale_watcher(r_side))

    began = time.monotonic()
    customers, media = await scale_customers(b, "cust", nmax)
    say(f"  {nmax} customers registered with one pre-uploaded 4 KB file each "
        f"({time.monotonic() - began:.0f} s)")

    deadline_all = began + b.p.scale_setup_budget
    out_levels = []
    for level in levels:
        indices = list(range(level))
        t_setup = time.monotonic()
        # Share what is left of the budget between the two bots.
        for side, p_bot, r_bot in ((r_side, None, relay), (p_side, parcel, None)):
            remaining = deadline_all - time.monotonic()
            share = remaining / 2 if side is r_side else remaining
            await _open_scale_sessions(b, side, customers, indices,
                                       time.monotonic() + max(5.0, share), p_bot, r_bot)
        ready = sorted(set(i for i in indices if i in p_side.ready and i in r_side.ready
                           and i in media))
        say(f"  level {level}: {len(ready)} sessions ready on both bots "
            f"(setup {time.monotonic() - t_setup:.0f} s)")
        if len(ready) < level:
            b.notes.append(
                f"scale level {level}: only {len(ready)} of {level} sessions could be set up "
                f"on both bots within the set-up budget ({b.p.scale_setup_budget:.0f} s for all "
                f"levels); that level was measured with {len(ready)} sessions")
        if not ready:
            continue
        entry: dict[str, Any] = {"level": level, "sessions": len(ready)}
        for side in (r_side, p_side):  # the relay first: Parcel's backlog cannot spill onto it
            if side.kind not in b.scale_sides:
                continue
            say(f"  level {level}: {side.kind} window")
            entry[side.kind] = await _scale_window(b, side, customers, media, ready, level)
            if side is p_side:
                entry["parcel"]["offers_in_store"] = parcel.offer_count()
            say(f"  level {level}: {side.kind} {entry[side.kind]['throughput_per_s']} files/s, "
                f"p95 {entry[side.kind]['latency']['p95']} s, Synapse CPU "
                f"{entry[side.kind]['during_window']['synapse_cpu_utilisation']:.0%}")
        for kind in ("relay", "parcel"):
            side_result = entry.get(kind)
            if side_result and side_result["during_window"]["synapse_cpu_utilisation"] >= 0.85:
                b.notes.append(
                    f"scale level {level}, {kind}: the homeserver was saturated (Synapse at "
                    f"{side_result['during_window']['synapse_cpu_utilisation']:.0%} of a core "
                    f"during the window, {side_result['sent']} of {side_result['attempted']} "
                    f"file events accepted, {side_result['arrived']} arrived within the "
                    f"{b.p.scale_drain:.0f} s drain)")
        if "parcel" in entry and "relay" in entry:
            entry["ratio_throughput"] = ratio(entry["parcel"]["throughput_per_s"],
                                              entry["relay"]["throughput_per_s"])
            entry["ratio_p95"] = ratio(entry["parcel"]["latency"]["p95"],
                                       entry["relay"]["latency"]["p95"])
        out_levels.append(entry)
    b.results["scale"] = {
        "window_s": b.p.scale_window,
        "drain_s": b.p.scale_drain,
        "file_bytes": 4 * KB,
        "levels": out_levels,
        "setup_s": round(time.monotonic() - began, 1),
    }


# --------------------------------------------------------------------------------------------
# Part 6: memory
# --------------------------------------------------------------------------------------------


async def part_memory(b: Bench, encrypted: bool = False) -> None:
    """6. Peak RSS of the bot process while relaying big files (offer, ✅, delivery)."""
    tag = "e2ee" if encrypted else "plain"
    say(f"part 6: memory, E2EE {'on' if encrypted else 'off'}")
    customer = await b.actor(f"mem-cust-{tag}", "Mem Customer", encrypted=encrypted)
    agent = await b.actor(f"mem-agent-{tag}", "Mem Agent", auto_join=True, encrypted=encrypted)
    parcel = await b.parcel(f"memory-{tag}", encryption=encrypted, agents=[agent.user_id])
    chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=encrypted)
    pid = parcel.child.pid
    for i in range(2):  # load libmagic, PIL, room keys, connections
        await b.parcel_cycle(chat, f"mem-warm-{i}.bin", 4 * KB)
    await _wait_idle(pid, 5.0)
    idle = parcel.child.memory()["VmRSS"]
    hwm_reset = reset_peak_rss(pid)
    rows = []
    files = b._dir("files")
    for label, size in b.p.memory_sizes:
        path = files / f"mem-{size}.bin"
        with path.open("wb") as handle:  # written in pieces: the harness stays small too
            left = size
            while left:
                piece = min(left, 8 * MB)
                handle.write(plain_bytes(piece) if left == size else os.urandom(piece))
                left -= piece
        name = f"mem-{tag}-{label.replace(' ', '')}.bin"
        media = await customer.upload(path, name, OCTET, encrypt=encrypted)
        await _wait_idle(pid, 5.0)
        before = parcel.child.memory()["VmRSS"]
        reset_peak_rss(pid)
        samples: list[int] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError, KeyError):
                    samples.append(parcel.child.memory()["VmRSS"])
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        began = time.monotonic()
        await customer.send(chat.customer_room, Actor.file_content(media, name, OCTET, size))
        card = await agent.wait_for(lambda s, n=name: s.room_id == chat.agent_room
                                    and is_card(s, n), f"the card for {name}", timeout=600)
        offered = time.monotonic() - began
        offer_id = card.content[OFFER_KEY]["id"]
        await b.offer_shown(chat, card, offer_id)
        await agent.react(chat.agent_room, str(card.source["event_id"]), ACCEPT)
        await agent.wait_for(lambda s, n=name: s.room_id == chat.agent_room
                             and s.sender == parcel.user_id
                             and ("url" in s.content or "file" in s.content)
                             and s.content.get("body") == n, f"the delivery of {name}",
                             timeout=600)
        await agent.wait_for(lambda s, o=offer_id: s.room_id == chat.agent_room
                             and edit_state(s, o) == "accepted", "the card's edit", timeout=120)
        total = time.monotonic() - began
        stop.set()
        await sampler
        mem = parcel.child.memory()
        peak = max([mem["VmHWM"] if hwm_reset else 0, *samples])
        rows.append({
            "file": label,
            "bytes": size,
            "rss_before_kib": before,
            "peak_rss_kib": peak,
            "peak_minus_idle_mib": round((peak - idle) / 1024, 1),
            "peak_minus_before_mib": round((peak - before) / 1024, 1),
            "vmhwm_kib": mem["VmHWM"],
            "sampled_max_kib": max(samples) if samples else None,
            "seconds_to_offer": round(offered, 2),
            "seconds_to_delivered": round(total, 2),
        })
        path.unlink(missing_ok=True)
        del media
        say(f"  {label}: peak {peak / 1024:.0f} MiB, +{(peak - idle) / 1024:.1f} MiB over idle "
            f"({total:.1f} s)")
    await parcel.child.stop()
    b.results["memory_e2ee" if encrypted else "memory"] = {
        "idle_rss_kib": idle,
        "peak_reset_per_file": hwm_reset,
        "files": rows,
        "how": f"Parcel process, E2EE {'on, encrypted rooms and files' if encrypted else 'off'}; "
               "idle RSS after two 4 KB warm-up exchanges; peak = max(VmHWM after a "
               "/proc/<pid>/clear_refs reset, VmRSS sampled every 10 ms) during upload event "
               "-> offer -> ✅ -> delivery -> card edited",
    }


# --------------------------------------------------------------------------------------------
# Orchestration of parts 1-4
# --------------------------------------------------------------------------------------------


async def part_latencies(b: Bench, include_e2ee: bool = True,
                         include_hops: bool = True) -> None:
    say("parts 2-3: offer and delivery latency, E2EE off")
    customer = await b.actor("lat-cust", "Carol")
    agent = await b.actor("lat-agent", "Alice", auto_join=True)
    parcel = await b.parcel("plain", encryption=False, agents=[agent.user_id])
    relay = await b.relay("plain", encryption=False)
    parcel_chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=False)
    relay_chat = await b.open_relay_chat(relay, customer, agent, encrypted=False)
    if include_hops:
        await part_baseline_hops(b, relay, parcel, relay_chat, parcel_chat)
    # The floor's client downloads as the agent (any member may fetch the room's media).
    floor = Downloader(b.hs.url, agent.user.access_token, b._dir("floor"))
    try:
        plain = await part_latency(b, "plain", relay_chat, parcel_chat,
                                   tuple(n for _, _, n in b.p.sizes), floor)
    finally:
        await floor.close()
    b.results["latency_plain"] = plain
    plain_cpu = {"parcel_cpu_s": round(parcel.child.cpu(), 2),
                 "relay_cpu_s": round(relay.child.cpu(), 2)}
    b.results["latency_plain_process_cpu"] = plain_cpu
    await parcel.child.stop()
    await relay.child.stop()
    if not include_e2ee:
        return

    say("part 4: the same with E2EE on")
    e_customer = await b.actor("lat-ecust", "Carol", encrypted=True)
    e_agent = await b.actor("lat-eagent", "Alice", encrypted=True, auto_join=True)
    e_parcel = await b.parcel("e2ee", encryption=True, agents=[e_agent.user_id])
    e_relay = await b.relay("e2ee", encryption=True)
    e_parcel_chat = await b.open_parcel_chat(e_parcel, e_customer, e_agent, encrypted=True)
    e_relay_chat = await b.open_relay_chat(e_relay, e_customer, e_agent, encrypted=True)
    e_floor = Downloader(b.hs.url, e_agent.user.access_token, b._dir("floor"))
    try:
        e2ee = await part_latency(b, "e2ee", e_relay_chat, e_parcel_chat, b.p.e2ee_reps,
                                  e_floor)
    finally:
        await e_floor.close()
    for size_label, entry in e2ee.items():
        base = plain[size_label]
        entry["enc_vs_plain_offer_p50"] = ratio(entry["parcel_offer"]["p50"],
                                                base["parcel_offer"]["p50"])
        entry["enc_vs_plain_delivery_p50"] = ratio(entry["parcel_delivery"]["p50"],
                                                   base["parcel_delivery"]["p50"])
        entry["enc_vs_plain_relay_p50"] = ratio(entry["baseline_forward"]["p50"],
                                                base["baseline_forward"]["p50"])
    b.results["latency_e2ee"] = e2ee
    await e_parcel.child.stop()
    await e_relay.child.stop()
