"""Part ``chats``: Parcel as the number of open encrypted chats grows (issue 25, item 4).

The bot runs as a leader and a standby on a throwaway PostgreSQL (:class:`bench.ha.Postgres`),
both talking to Synapse through a :class:`~bench.proxy.CountingProxy`, so that a standby
takeover can be measured at every level, not only on a small set beside it.

Levels (``Params.chats_levels``, or ``--chats 1,1000``) are cumulative numbers of open chats:
the first is the probe's own chat alone; to reach the next, more chats are opened the fast way,
by raw HTTP clients (aiohttp, no nio): customers registered in bulk through the shared-secret
admin API, each creating an encrypted direct room with the bot invited, as Element's "Start
chat" does. The bot opens a session for each (joins, creates the agent room, invites the
agent). The agent leaves those invitations pending: only the probe's agent room is joined, so
the probe agent's client stays small while the bot is in two rooms per chat. Creation is paced
(at most ``CREATE_CONCURRENCY`` requests in flight and ``BACKLOG`` chats the bot has not
opened yet) so Synapse is kept busy without being flooded.

At each level, once the bot and Synapse are idle, the probe (a customer and the agent, both
real E2EE nio clients, :class:`~bench.harness.Actor`) measures:

* text → shown to the agent, upload → card shown, and ✅ → file shown for a click the
  instant the card arrives and for a click 1.5 s after it (p50), with Synapse's CPU, and the
  bot's events, syncs and requests (through the proxy), per accepted file;
* the bot's RSS, running and just restarted (per open chat: the restarted process's RSS
  minus the first level's, over the chats added);
* Synapse's CPU per bot /sync: raw incremental syncs made with the bot's own access token,
  filter and saved position while both instances are stopped;
* restart → first relay: both instances stopped (SIGTERM), the leader started again; the clock
  starts when the process is spawned, and the customer's text is sent right then (its send
  returns before the bot has even logged in); it stops when the agent's client shows the
  relayed text. The bot's own "Parcel running as" and "first sync done; ready" log lines, when
  it logs them, split that time;
* standby takeover → first relay: the leader SIGKILLed, a text sent at once (``bench.ha``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench import report
from bench.ha import (
    READY,
    STANDING_BY,
    PgParcelBot,
    Postgres,
    _failover_round,
    failover_summary,
    first_line_at,
)
from bench.harness import (
    Actor,
    BenchError,
    Child,
    Seen,
    proc_cpu_seconds,
    quantile,
    summary,
)
from bench.proxy import CountingProxy, per_offer
from bench.scenarios import (
    ACCEPT,
    KB,
    OFFER_KEY,
    Bench,
    Chat,
    _wait_idle,
    edit_state,
    gather_limited,
    is_card,
    relayed_text_latency,
    say,
)
from bot.devserver import RegisteredUser

RUNNING = "Parcel running as"
"""The bot's log line once it is logged in and about to sync (absent lines leave gaps)."""

CREATE_CONCURRENCY = 6
"""createRoom requests in flight: enough to keep Synapse's one core busy, not drowned."""

BACKLOG = 60
"""Chats created but not yet opened by the bot, at most: the bot's own work competes with the
creations for Synapse, and a backlog of thousands would only measure a queue."""

RESTART_RELAY_TIMEOUT_S = 120.0
"""A restart that relays nothing in two minutes has failed (with 5000 open chats before issue
25's change, the leader's first sync outlasted its lease again and again and never ended)."""

CLICK_DELAY_S = 1.5
"""The 'slow' click: 1.5 s after the card appeared (the bot's seed reactions are done by then)."""

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@dataclass(frozen=True)
class ChatsParams:
    """How many samples and rounds a mode takes at each level."""

    texts: int
    files: int  # per click kind (instant, delayed)
    restarts: int
    takeovers: int
    sync_probes: int  # raw syncs per level: /proc counts CPU in 10 ms ticks, so many


CHATS_FULL = ChatsParams(texts=15, files=8, restarts=3, takeovers=2, sync_probes=30)
CHATS_QUICK = ChatsParams(texts=6, files=4, restarts=2, takeovers=1, sync_probes=15)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def parse_levels(text: str) -> tuple[int, ...]:
    """``"1,1000,5000"`` → ``(1, 1000, 5000)``: positive, distinct, in increasing order.

    Raises ValueError naming the bad entry: the levels are cumulative, so a repeated or
    decreasing one cannot be measured.
    """
    levels: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            level = int(item)
        except ValueError:
            raise ValueError(f"--chats: {item!r} is not a whole number of chats") from None
        if level < 1:
            raise ValueError(f"--chats: {level} open chats cannot be measured (at least 1)")
        if levels and level <= levels[-1]:
            raise ValueError(f"--chats: {level} after {levels[-1]}; the levels are cumulative, "
                             "give them in increasing order")
        levels.append(level)
    if not levels:
        raise ValueError("--chats: no level given")
    return tuple(levels)


def per_chat_kib(rss_kib: int | None, base_kib: int | None, chats: int,
                 base_chats: int) -> float | None:
    """RSS growth per open chat between two levels (KiB), or None when not measurable."""
    if rss_kib is None or base_kib is None or chats <= base_chats:
        return None
    return round((rss_kib - base_kib) / (chats - base_chats), 1)


def interval_summary(values: list[float | None]) -> dict[str, Any]:
    """n, p50 and max of seconds, leaving out the rounds that did not measure it."""
    got = [v for v in values if v is not None]
    return {"n": len(got),
            "p50": None if not got else round(quantile(got, 0.5) or 0.0, 3),
            "max": None if not got else round(max(got), 3)}


def file_costs(tallies: list[dict[str, dict[str, int]]], synapse_cpu: list[float]
               ) -> dict[str, Any]:
    """Per accepted file: the bot's events, syncs and requests, and Synapse's CPU (ms)."""
    if not tallies:
        return {"files": 0, "events": None, "syncs": None, "requests": None,
                "synapse_cpu_ms": None, "kinds": {}}
    kinds = per_offer(tallies)
    return {
        "files": len(tallies),
        "events": round(sum(v["count"] for k, v in kinds.items() if k.startswith("event:")), 2),
        "syncs": kinds.get("sync", {}).get("count", 0),
        "requests": round(sum(v["count"] for v in kinds.values()), 2),
        "synapse_cpu_ms": (round(sum(synapse_cpu) / len(synapse_cpu) * 1000, 1)
                           if synapse_cpu else None),
        "kinds": {k: v["count"] for k, v in kinds.items()},
    }


# --------------------------------------------------------------------------------------------
# Opening chats in bulk, raw HTTP
# --------------------------------------------------------------------------------------------


class BulkChats:
    """Customers that only open a chat, through raw client-server API requests."""

    def __init__(self, b: Bench, parcel: PgParcelBot) -> None:
        self.b = b
        self.parcel = parcel
        self.customers: list[RegisteredUser] = []
        self.rooms: list[str] = []
        self.failures: list[str] = []

    def opened(self) -> int:
        """Sessions the bot has opened (agent room created), from its store."""
        rows = self.parcel._rows(
            "SELECT COUNT(*) FROM sessions WHERE state = 'open' AND agent_room IS NOT NULL", 1)
        return int(rows[0][0] or 0) if rows else 0

    def work_left(self) -> int:
        rows = self.parcel._rows("SELECT COUNT(*) FROM work", 1)
        return int(rows[0][0] or 0) if rows else -1

    async def register(self, count: int) -> None:
        """``count`` more customers (shared-secret registration, several at a time)."""
        start = len(self.customers)
        users = await gather_limited(8, [
            lambda i=i: self.b.user(f"bulk{i}", f"Bulk {i}") for i in range(start, start + count)])
        for user in users:
            if isinstance(user, BaseException):
                raise BenchError(f"registering bulk customers failed: {user!r}")
            self.customers.append(user)

    async def open(self, count: int, opened_before: int, timeout: float) -> None:
        """``count`` more chats, each a new encrypted DM with the bot; returns when the bot has
        opened them all and its work queue is empty."""
        deadline = time.monotonic() + timeout
        await self.register(count)
        todo = self.customers[len(self.rooms):]
        target = opened_before + count
        opened = opened_before
        last_report = time.monotonic()
        sem = asyncio.Semaphore(CREATE_CONCURRENCY)
        created = 0

        async def poll() -> None:
            nonlocal opened, last_report
            while True:
                opened = await asyncio.to_thread(self.opened)
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    say(f"    {opened - opened_before}/{count} chats opened by the bot "
                        f"({created} created)")
                await asyncio.sleep(1.0)

        poller = asyncio.create_task(poll())
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=CREATE_CONCURRENCY + 2),
                    timeout=aiohttp.ClientTimeout(total=120)) as http:

                async def create(user: RegisteredUser) -> None:
                    nonlocal created
                    async with sem:
                        # Back-pressure: never more than BACKLOG chats waiting for the bot.
                        while (opened_before + created) - opened >= BACKLOG:
                            if time.monotonic() > deadline:
                                raise BenchError("the bot stopped opening chats")
                            await asyncio.sleep(0.2)
                        created += 1
                        room = await self._create_room(http, user)
                    if room is not None:
                        self.rooms.append(room)
                    else:
                        created -= 1

                results = await asyncio.gather(*(create(u) for u in todo),
                                               return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise BenchError(f"opening chats failed: {errors[0]!r}")
            while True:
                done = opened >= target and await asyncio.to_thread(self.work_left) == 0
                if done:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"the bot opened {opened - opened_before} of {count} "
                                     f"chats in {timeout:.0f} s")
                await asyncio.sleep(1.0)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if self.failures:
            self.b.notes.append(f"chats: {len(self.failures)} rooms could not be created "
                                f"(first: {self.failures[0]})")

    async def _create_room(self, http: aiohttp.ClientSession, user: RegisteredUser
                           ) -> str | None:
        body = {"preset": "trusted_private_chat", "is_direct": True,
                "invite": [self.parcel.user_id], "initial_state": [ENCRYPTION]}
        for attempt in range(3):
            try:
                async with http.post(f"{self.b.hs.url}/_matrix/client/v3/createRoom",
                                     json=body,
                                     headers={"Authorization": f"Bearer {user.access_token}"}
                                     ) as response:
                    data = await response.json(content_type=None)
                    if response.status == 200:
                        return str(data["room_id"])
                    error = f"{response.status} {data}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = repr(exc)
            await asyncio.sleep(0.5 * (attempt + 1))
        self.failures.append(f"{user.user_id}: {error}")
        return None


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------


@dataclass
class Instances:
    """The leader and the standby (they swap at a takeover) and the chat through them."""

    leader: Child
    standby: Child
    parcel: PgParcelBot
    proxy: CountingProxy
    chat: Chat | None = None
    spid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def settle(b: Bench, pid: int, max_wait: float = 60.0) -> float:
    """Until the bot and Synapse are idle: a probe must not queue behind the set-up."""
    waited = await _wait_idle(pid, max_wait=max_wait)
    if b.synapse_pid:
        waited += await _wait_idle(b.synapse_pid, max_wait=max_wait, threshold=0.1)
    return waited


async def text_latencies(b: Bench, chat: Chat, n: int) -> list[float]:
    """Customer's text (origin_server_ts) → the relayed copy shown by the agent's client."""
    out = []
    for i in range(n):
        out.append(await relayed_text_latency(b, chat, f"ctext-{i}-{secrets.token_hex(4)}"))
        await asyncio.sleep(0.05)
    return out


async def file_cycle(b: Bench, inst: Instances, name: str, delay: float
                     ) -> tuple[float, float, dict[str, dict[str, int]], float]:
    """One encrypted 4 KB file: upload → card, ✅ (``delay`` s after the card) → file shown.

    Returns (offer latency, delivery latency, the bot's requests until it was idle again,
    Synapse CPU seconds over the same span)."""
    chat = inst.chat
    assert chat is not None
    customer, agent = chat.customer, chat.agent
    mark = inst.proxy.mark()
    syn0 = proc_cpu_seconds(inst.spid) if inst.spid else 0.0
    event_id, _, _ = await b.send_file(chat, name, 4 * KB)
    card = await agent.wait_for(lambda s: s.room_id == chat.agent_room and is_card(s, name),
                                f"the offer card for {name}", timeout=b.p.step_timeout)
    offer = card.at - await b._own_ts(customer, event_id)
    offer_id = card.content[OFFER_KEY]["id"]
    if delay > 0:
        await asyncio.sleep(max(0.0, card.at + delay - time.time()))
    reaction_id, _ = await agent.react(chat.agent_room, str(card.source["event_id"]), ACCEPT)

    def delivered(s: Seen) -> bool:
        return (s.room_id == chat.agent_room and s.sender == chat.bot_id
                and ("url" in s.content or "file" in s.content)
                and name in (s.content.get("body"), s.content.get("filename")))

    media = await agent.wait_for(delivered, f"the delivery of {name}",
                                 timeout=b.p.step_timeout)
    delivery = media.at - await b._own_ts(agent, reaction_id)
    await agent.wait_for(lambda s: s.room_id == chat.agent_room
                         and edit_state(s, offer_id) == "accepted", "the card's edit",
                         timeout=b.p.step_timeout)
    # Counted until the bot is idle: its last requests for this file are in the tally.
    await _wait_idle(inst.leader.pid, max_wait=10.0)
    await asyncio.sleep(0.3)
    syn1 = proc_cpu_seconds(inst.spid) if inst.spid else 0.0
    return offer, delivery, inst.proxy.tally(mark), syn1 - syn0


async def file_probes(b: Bench, inst: Instances, level: int, n: int) -> dict[str, Any]:
    """``n`` instant and ``n`` delayed clicks, interleaved so drift hits both alike."""
    offers: list[float] = []
    by_kind: dict[str, list[float]] = {"instant": [], "delayed": []}
    tallies: list[dict[str, dict[str, int]]] = []
    cpu: list[float] = []
    for i in range(n):
        for kind, delay in (("instant", 0.0), ("delayed", CLICK_DELAY_S)):
            o, d, tally, syn = await file_cycle(b, inst, f"chats-{level}-{kind}-{i}.bin", delay)
            offers.append(o)
            by_kind[kind].append(d)
            tallies.append(tally)
            cpu.append(syn)
    return {"offer": summary(offers), "accept_instant": summary(by_kind["instant"]),
            "accept_delayed": summary(by_kind["delayed"]), "per_file": file_costs(tallies, cpu)}


async def sync_cost(b: Bench, inst: Instances, runs: int) -> dict[str, Any]:
    """Synapse CPU per incremental /sync of the bot: its token, filter and saved position,
    made raw ``runs`` times while no instance runs (so nothing else moves Synapse)."""
    from bot.matrix.sync import SYNC_FILTER as BOT_SYNC_FILTER

    token = inst.proxy.bearer
    rows = inst.parcel._rows("SELECT value FROM kv WHERE key = 'sync_token'", 1)
    since = rows[0][0] if rows else None
    if token is None or since is None:
        return {"error": "no access token or saved position of the bot"}
    spid = b.synapse_pid
    if spid:
        await _wait_idle(spid, max_wait=30.0, threshold=0.05)
    cpu: list[float] = []
    walls: list[float] = []
    size = 0
    joined = None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=300)) as http:
        async with http.get(f"{b.hs.url}/_matrix/client/v3/joined_rooms") as response:
            if response.status == 200:
                joined = len((await response.json())["joined_rooms"])
        for k in range(runs):
            # Synapse answers a repeated identical request from a cache: a new filter text
            # (trailing spaces, same filter) makes each a request of its own.
            params = {"since": str(since), "timeout": "0",
                      "filter": json.dumps(BOT_SYNC_FILTER) + " " * (k + 1)}
            syn0 = proc_cpu_seconds(spid) if spid else 0.0
            began = time.monotonic()
            async with http.get(f"{b.hs.url}/_matrix/client/v3/sync", params=params) as response:
                body = await response.read()
                if response.status != 200:
                    return {"error": f"/sync: {response.status} {body[:200]!r}"}
            walls.append(time.monotonic() - began)
            cpu.append((proc_cpu_seconds(spid) if spid else 0.0) - syn0)
            size = len(body)
    return {"runs": runs, "bot_joined_rooms": joined,
            "synapse_cpu_ms": round(sum(cpu) / len(cpu) * 1000, 1),
            "wall_ms_p50": round((quantile(walls, 0.5) or 0.0) * 1000, 1), "bytes": size}


async def restart_round(b: Bench, inst: Instances, k: int, sync_runs: int) -> dict[str, Any]:
    """Both instances stopped (SIGTERM); the leader spawned and, at once, a customer's text."""
    chat = inst.chat
    assert chat is not None
    leader, standby = inst.leader, inst.standby
    await b.probe(chat)  # relayed, its position saved
    await settle(b, leader.pid, max_wait=30.0)
    await standby.stop()
    await leader.stop()
    out: dict[str, Any] = {"round": k + 1}
    if sync_runs:
        out["sync_cost"] = await sync_cost(b, inst, sync_runs)
    token = f"after-restart-{k}-{secrets.token_hex(4)}"
    spawned = time.time()
    leader.ready_marker = READY.encode()  # it may have come back as a standby last time
    starting = asyncio.create_task(leader.start(timeout=600.0))
    await asyncio.sleep(0)  # the process is spawned before the text is sent
    await chat.customer.say(chat.customer_room, token)
    out["text_sent_after_s"] = round(time.time() - spawned, 3)
    try:
        seen = await chat.agent.wait_for(
            lambda s: s.room_id == chat.agent_room
            and str(s.content.get("body", "")).endswith(token),
            "the text sent as the bot restarted", timeout=RESTART_RELAY_TIMEOUT_S)
        out["to_relayed_s"] = round(seen.at - spawned, 3)
    except BenchError as exc:
        out["to_relayed_s"] = None
        out["error"] = str(exc)
    # The ready line is not waited for past the relay: a bot that no longer logs it must not
    # stall the bench (the relay says the bot works).
    done, _ = await asyncio.wait({starting}, timeout=30.0)
    if not done:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, BenchError):
            await starting
    elif starting.exception() is not None:
        raise starting.exception()  # type: ignore[misc]
    log = leader.log_since_start().decode("utf-8", "replace")
    running, ready = first_line_at(log, RUNNING), first_line_at(log, READY)
    out["to_running_s"] = None if running is None else round(running - spawned, 3)
    out["to_ready_s"] = None if ready is None else round(ready - spawned, 3)
    out["first_sync_s"] = (None if running is None or ready is None
                           else round(ready - running, 3))
    # A first sync longer than the lease's trust window loses the lease mid-sync (and retakes
    # it, and loses it again): the count says whether that happened.
    out["leases_lost"] = log.count("lost the leader lease")
    if out["to_relayed_s"] is None:
        return out  # the caller stops: the standby would only make matters murkier
    standby.ready_marker = STANDING_BY
    await standby.start(timeout=300.0)
    return out


async def restarts(b: Bench, inst: Instances, rounds: int, sync_runs: int) -> dict[str, Any]:
    """``rounds`` restarts (the first also measures Synapse's CPU per bot /sync)."""
    rows = []
    for k in range(rounds):
        rows.append(await restart_round(b, inst, k, sync_runs if k == 0 else 0))
        if rows[-1]["to_relayed_s"] is None:
            break  # a bot that cannot restart at this level would fail every round the same
    out: dict[str, Any] = {"rounds": rows}
    for key in ("to_relayed_s", "to_running_s", "to_ready_s", "first_sync_s"):
        out[key] = interval_summary([r.get(key) for r in rows])
    out["failed"] = sum(1 for r in rows if r.get("to_relayed_s") is None)
    out["sync_cost"] = rows[0].get("sync_cost") if rows else None
    return out


async def takeovers(b: Bench, inst: Instances, rounds: int) -> dict[str, Any]:
    """SIGKILL the leader ``rounds`` times (``bench.ha``'s round); the killed one stands by."""
    assert inst.chat is not None
    rows = []
    for k in range(rounds):
        await settle(b, inst.leader.pid, max_wait=30.0)
        row = await _failover_round(b, inst.chat, inst.leader, inst.standby, k)
        rows.append(row)
        killed = inst.leader
        killed.ready_marker = STANDING_BY
        await killed.start(timeout=300.0)
        inst.leader, inst.standby = inst.standby, killed
    return {**failover_summary(rows), "per_round": rows}


# --------------------------------------------------------------------------------------------
# The part
# --------------------------------------------------------------------------------------------


async def measure_level(b: Bench, inst: Instances, cp: ChatsParams, level: int
                        ) -> dict[str, Any]:
    """Everything measured at one level (the chats are open, the bot idle)."""
    chat = inst.chat
    assert chat is not None
    entry: dict[str, Any] = {"level": level}
    entry["idle_wait_s"] = round(await settle(b, inst.leader.pid, max_wait=120.0), 1)
    entry["rss_kib"] = inst.leader.memory()["VmRSS"]
    await b.probe(chat)
    entry["text"] = summary(await text_latencies(b, chat, cp.texts))
    entry.update(await file_probes(b, inst, level, cp.files))
    say(f"  {level} chats: text p50 {entry['text']['p50'] * 1000:.0f} ms, card p50 "
        f"{entry['offer']['p50'] * 1000:.0f} ms, ✅ → file p50 "
        f"{entry['accept_instant']['p50'] * 1000:.0f} ms (instant) / "
        f"{entry['accept_delayed']['p50'] * 1000:.0f} ms (after {CLICK_DELAY_S:g} s); per "
        f"file {entry['per_file']['events']} events, {entry['per_file']['syncs']} syncs, "
        f"Synapse {entry['per_file']['synapse_cpu_ms']} ms CPU")
    began = time.monotonic()
    entry["restart"] = await restarts(b, inst, cp.restarts, cp.sync_probes)
    entry["restart"]["seconds"] = round(time.monotonic() - began, 1)
    r = entry["restart"]
    say(f"  {level} chats: restart → first relay p50 {r['to_relayed_s']['p50']} s (ready "
        f"{r['to_ready_s']['p50']} s, first sync {r['first_sync_s']['p50']} s); Synapse per "
        f"bot /sync {(r.get('sync_cost') or {}).get('synapse_cpu_ms')} ms")
    if r["failed"]:
        entry["takeover"] = None
        entry["rss_after_restart_kib"] = None
        b.notes.append(f"chats, {level} open chats: the restarted bot relayed nothing within "
                       f"{RESTART_RELAY_TIMEOUT_S:.0f} s (it lost its lease "
                       f"{r['rounds'][-1].get('leases_lost')} times meanwhile); takeover not "
                       "measured, no further level")
        return entry
    # The per-chat figure compares like with like: a process just restarted with the level's
    # chats, past its first sync and one relayed text, idle (the running leader's RSS also
    # carries whatever the set-up and earlier levels left in its heap).
    await b.probe(chat)
    await settle(b, inst.leader.pid, max_wait=60.0)
    entry["rss_after_restart_kib"] = inst.leader.memory()["VmRSS"]
    began = time.monotonic()
    entry["takeover"] = await takeovers(b, inst, cp.takeovers)
    entry["takeover"]["seconds"] = round(time.monotonic() - began, 1)
    t = entry["takeover"]
    say(f"  {level} chats: takeover → first relay p50 {t['to_relayed_s']['p50']} s (lease "
        f"taken {t['to_lease_s']['p50']} s, ready {t['to_ready_s']['p50']} s)")
    return entry


async def part_chats(b: Bench) -> None:
    """Open chats at each level of ``b.p.chats_levels``; fills ``results['chats']``."""
    levels = b.p.chats_levels
    cp = CHATS_FULL if b.p.mode == "full" else CHATS_QUICK
    say(f"part chats: open encrypted chats {levels}, leader + standby on PostgreSQL")
    began = time.monotonic()
    result: dict[str, Any] = {
        "how": "Parcel leader + standby on PostgreSQL (fsync off), E2EE on, through a counting "
               "proxy; chats beyond the probe's opened by raw HTTP customers (encrypted DM, "
               "bot invited; the agent's invitations to them left pending); probes once the "
               "bot and Synapse are idle. Latencies: origin_server_ts of the customer's text / "
               "file / the agent's ✅ → the agent's nio client showing the result. Restart: "
               "both instances SIGTERMed, the leader spawned, the customer's text sent at "
               "once; spawn → the agent sees it. Takeover: SIGKILL of the leader, text sent at "
               "once → the agent sees it. Synapse CPU per bot /sync: raw incremental syncs "
               "with the bot's token, filter and saved position while no instance runs.",
        "levels": [],
        "create_concurrency": CREATE_CONCURRENCY,
        "backlog": BACKLOG,
        "samples": {"texts": cp.texts, "files_per_click": cp.files, "restarts": cp.restarts,
                    "takeovers": cp.takeovers},
    }
    b.results["chats"] = result
    pg = Postgres(b)
    await pg.start()
    try:
        async with CountingProxy(b.hs.url) as proxy:
            customer = await b.actor("chats-cust", "Carol", encrypted=True)
            agent = await b.actor("chats-agent", "Alice", encrypted=True)
            leader, standby, parcel = await pg.leader_and_standby(
                "chats", [agent.user_id], homeserver=proxy.url)
            inst = Instances(leader, standby, parcel, proxy, spid=b.synapse_pid)
            inst.chat = await open_probe_chat(b, parcel, customer, agent)
            bulk = BulkChats(b, parcel)
            for level in levels:
                more = level - 1 - len(bulk.rooms)
                if more > 0:
                    say(f"  opening {more} more chats")
                    t0 = time.monotonic()
                    spid = b.synapse_pid
                    syn0 = proc_cpu_seconds(spid) if spid else 0.0
                    bot0 = inst.leader.cpu()
                    opened0 = bulk.opened()
                    await bulk.open(more, opened0, timeout=max(600.0, more * 1.5))
                    seconds = time.monotonic() - t0
                    setup = {"chats": more, "seconds": round(seconds, 1),
                             "chats_per_s": round(more / seconds, 2),
                             "synapse_cpu_s": round((proc_cpu_seconds(spid) if spid else 0.0)
                                                    - syn0, 1),
                             "bot_cpu_s": round(inst.leader.cpu() - bot0, 1)}
                    say(f"  {more} chats opened in {seconds:.0f} s ({setup['chats_per_s']}/s; "
                        f"CPU s: Synapse {setup['synapse_cpu_s']}, bot {setup['bot_cpu_s']})")
                else:
                    setup = None
                t_level = time.monotonic()
                busy0 = report.busy_mark()
                entry = {"open_chats": 1 + len(bulk.rooms), "setup": setup}
                entry.update(await measure_level(b, inst, cp, level))
                entry["measure_s"] = round(time.monotonic() - t_level, 1)
                # Everyone's processes: on a shared machine a level measured while others ran
                # tests is slower for reasons of its own.
                entry["machine_load"] = report.load_since(busy0)
                result["levels"].append(entry)
                first = result["levels"][0]
                entry["rss_kib_per_chat"] = per_chat_kib(
                    entry["rss_after_restart_kib"], first["rss_after_restart_kib"],
                    entry["open_chats"], first["open_chats"])
                if entry["takeover"] is None:
                    break
            for child in (inst.leader, inst.standby):
                await child.stop()
    finally:
        result["seconds"] = round(time.monotonic() - began, 1)
        await pg.stop()


async def open_probe_chat(b: Bench, parcel: PgParcelBot, customer: Actor, agent: Actor
                          ) -> Chat:
    """The probe's encrypted chat; the agent joins only this chat's agent room."""
    room = await customer.create_room([parcel.user_id], encrypted=True)
    agent_room = await b._agent_room_of(parcel, room, timeout=120.0)
    await agent.wait_until(lambda: agent_room in agent.client.invited_rooms
                           or agent_room in agent.client.rooms, "the invitation", timeout=60)
    for _ in range(5):
        response = await agent.client.join(agent_room)
        if getattr(response, "room_id", None) == agent_room:
            break
        await asyncio.sleep(0.5)
    await agent.wait_until(lambda: agent_room in agent.client.rooms
                           and agent_room not in agent.client.invited_rooms,
                           "joining the agent room")
    chat = Chat("parcel", parcel.user_id, customer, agent, room, agent_room, True,
                parcel.data_dir)
    await customer.wait_for(lambda s: s.room_id == room and s.sender == parcel.user_id
                            and s.type == "m.room.message", "the bot's welcome")
    await b.probe(chat)
    return chat
