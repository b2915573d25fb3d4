"""Part 7: start-up with real history, made through Synapse by the real bot.

Customers open chats the way Element's "Start chat" does (an encrypted direct room with the
bot invited); Parcel opens a session for each (its agent room created, the agent invited).
Most chats are then ended by the customer with ``!end``, so the bot renames the agent room
"[closed] …" and leaves both rooms, as it does in production; the rest stay open, the agent
joined. Then Parcel is restarted several times with its saved device and timed from process
start to its "first sync done; ready" log line, and its peak RSS is read after it is ready.

The history grows in steps (``Params.startup_cases``, cumulative): the small case is measured
first, then more chats are added to the same bot and homeserver and the big case is measured.
Each customer opens its chats one after the other (a new DM room each time), several
customers at a time, so the homeserver is kept busy without being flooded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from nio import RoomPreset

from bench.harness import Actor, BenchError, Child, proc_cpu_seconds, ratio
from bench.scenarios import Bench, ParcelBot, _wait_idle, say
from bot.documents import FileDocuments
from bot.matrix.client import load_credentials
from bot.matrix.sync import SYNC_FILTER as BOT_SYNC_FILTER

READY = "first sync done; ready"
RUNNING = "Parcel running as"
_PROBES = itertools.count(1)
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _log_times(log: str) -> dict[str, float]:
    """Wall-clock times of the bot's start-up log lines (the first of each)."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        match = _LOG_TIME.match(line)
        if match is None:
            continue
        at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp() \
            + int(match.group(2)) / 1000
        out.setdefault("first_line", at)
        for key, marker in (("running", RUNNING), ("ready", READY)):
            if marker in line:
                out.setdefault(key, at)
    return out


class History:
    """The bot under test, its customers and agent, and the chats opened so far."""

    def __init__(self, b: Bench, parcel: ParcelBot, agent: Actor,
                 customers: list[Actor]) -> None:
        self.b = b
        self.parcel = parcel
        self.agent = agent
        self.customers = customers
        self.closed = 0
        self.open = 0
        self.failures: list[str] = []

    @property
    def bot_id(self) -> str:
        return self.parcel.user_id

    def _db(self, query: str) -> list[tuple[Any, ...]]:
        db = self.parcel.data_dir / "parcel.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()

    async def _session_of(self, room: str, timeout: float) -> str:
        """The agent room of the open session for ``room`` (from the bot's store)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agent_room, state = self.parcel.sessions().get(room, (None, ""))
            if agent_room and state == "open":
                return agent_room
            await asyncio.sleep(0.1)
        raise BenchError(f"Parcel opened no session for {room} in {timeout:.0f} s")

    async def chat(self, customer: Actor, end: bool) -> None:
        """One chat: DM the bot, wait for its welcome, then ``!end`` it or have the agent join."""
        timeout = 180.0
        room = await customer.create_room([self.bot_id], encrypted=True,
                                          preset=RoomPreset.trusted_private_chat)

        # The welcome (encrypted; decrypted or not) says the session is open and the bot in.
        await customer.wait_for(lambda s: s.room_id == room and s.sender == self.bot_id
                                and s.type in ("m.room.message", "m.room.encrypted"),
                                "the bot's welcome", timeout=timeout)
        agent_room = await self._session_of(room, timeout)
        if end:
            # The customer moves on at once; the bot's close and leaves run in its work queue
            # (``drained`` waits for them at the end).
            await customer.say(room, "!end")
            self.closed += 1
        else:
            response = await self.agent.client.join(agent_room)
            if getattr(response, "room_id", None) != agent_room:
                raise BenchError(f"the agent could not join {agent_room}: {response}")
            self.open += 1

    async def grow(self, closed: int, open_: int) -> dict[str, Any]:
        """Add chats until ``closed`` ended and ``open_`` open ones exist; returns the cost."""
        began = time.monotonic()
        spid = self.b.synapse_pid
        syn0 = proc_cpu_seconds(spid) if spid else 0.0
        bot0, own0 = self.parcel.child.cpu(), time.process_time()
        todo = [True] * max(0, closed - self.closed) + [False] * max(0, open_ - self.open)
        queues: list[list[bool]] = [todo[i::len(self.customers)]
                                    for i in range(len(self.customers))]
        total = len(todo)
        done_before = self.closed + self.open
        last_report = time.monotonic()

        async def customer_loop(customer: Actor, plan: list[bool]) -> None:
            nonlocal last_report
            for end in plan:
                try:
                    await self.chat(customer, end)
                except BenchError as exc:
                    self.failures.append(str(exc))
                    if len(self.failures) > 10:
                        raise
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    done = self.closed + self.open - done_before
                    say(f"  history: {done}/{total} chats "
                        f"({done / (time.monotonic() - began):.1f}/s)")

        await asyncio.gather(*(customer_loop(c, q) for c, q in
                               zip(self.customers, queues, strict=True)))
        await self.drained(closed, timeout=300.0)
        elapsed = time.monotonic() - began
        return {
            "chats": total,
            "seconds": round(elapsed, 1),
            "chats_per_s": round(total / elapsed, 2) if elapsed > 0 else None,
            "synapse_cpu_s": round((proc_cpu_seconds(spid) if spid else 0.0) - syn0, 1),
            "bot_cpu_s": round(self.parcel.child.cpu() - bot0, 1),
            "harness_cpu_s": round(time.process_time() - own0, 1),
        }

    async def drained(self, closed: int, timeout: float) -> None:
        """Wait until ``closed`` sessions are closed and the bot has no work left.

        (The last ``!end`` may not have reached the bot yet when its work queue is empty.)
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.counts().get("closed", 0) >= closed
            if done and self._db("SELECT COUNT(*) FROM work")[0][0] == 0:
                return
            await asyncio.sleep(0.5)
        raise BenchError(f"Parcel had not closed {closed} sessions and finished their work "
                         f"after {timeout:.0f} s (store: {self.counts()})")

    def counts(self) -> dict[str, int]:
        rows = self._db("SELECT state, COUNT(*) FROM sessions GROUP BY state")
        return {str(state): int(n) for state, n in rows}


async def _bot_get(hs_url: str, token: str, path: str,
                   params: dict[str, str] | None = None) -> tuple[bytes, float]:
    """GET a client-API path as the bot; returns (body, seconds to the last byte)."""
    async with aiohttp.ClientSession() as http:
        began = time.monotonic()
        async with http.get(f"{hs_url}{path}", params=params,
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=aiohttp.ClientTimeout(total=300)) as response:
            body = await response.read()
            seconds = time.monotonic() - began
            if response.status != 200:
                raise BenchError(f"GET {path} as the bot: {response.status} {body[:200]!r}")
    return body, seconds


async def sync_probe(hs_url: str, data_dir: Path, runs: int = 3) -> dict[str, Any]:
    """Time the bot's first sync after a restart as the bot itself makes it (from the saved
    position, its own filter, no full state), raw.

    Also a sync without a position, as a fresh device would make it (full state). Only while
    the bot is stopped: it reuses the bot's saved access token and sync position, and changes
    neither.
    """
    creds = await load_credentials(FileDocuments(data_dir))
    if creds is None:
        raise BenchError(f"no saved credentials in {data_dir}")
    conn = sqlite3.connect(f"file:{data_dir / 'parcel.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = 'sync_token'").fetchone()
    finally:
        conn.close()
    since = row[0] if row else None
    joined, _ = await _bot_get(hs_url, creds.access_token, "/_matrix/client/v3/joined_rooms")
    out: dict[str, Any] = {"bot_joined_rooms": len(json.loads(joined)["joined_rooms"])}
    for label, params in (("restart_sync", {"timeout": "0", "since": since} if since else None),
                          ("initial_sync", {"full_state": "true", "timeout": "0"})):
        if params is None:
            continue
        times, size, body = [], 0, b""
        for _ in range(runs):
            # Synapse keeps a sync response for 2 minutes for a repeat of the same request; the
            # filter text (trailing spaces, same filter) makes every probe a new request.
            unique = json.dumps(BOT_SYNC_FILTER) + " " * next(_PROBES)
            body, seconds = await _bot_get(hs_url, creds.access_token,
                                           "/_matrix/client/v3/sync",
                                           {**params, "filter": unique})
            times.append(seconds)
            size = len(body)
        data = json.loads(body)
        rooms = data.get("rooms", {})
        state_events = sum(len(r.get("state", {}).get("events", []))
                           for r in rooms.get("join", {}).values())
        timeline_events = sum(len(r.get("timeline", {}).get("events", []))
                              for r in rooms.get("join", {}).values())
        out[label] = {
            "median_s": round(statistics.median(times), 3),
            "bytes": size,
            "rooms_join": len(rooms.get("join", {})),
            "rooms_invite": len(rooms.get("invite", {})),
            "rooms_leave": len(rooms.get("leave", {})),
            "state_events": state_events,
            "timeline_events": timeline_events,
            "to_device_events": len(data.get("to_device", {}).get("events", [])),
        }
    return out


async def _measure(b: Bench, child: Child, runs: int) -> dict[str, Any]:
    """``runs`` warm starts: time to ready, first sync (from the log), CPU and RSS."""
    spid = b.synapse_pid
    rows = []
    for _ in range(runs):
        if spid:
            await _wait_idle(spid, max_wait=20.0, threshold=0.1)
        wall0 = time.time()
        ready = await child.start(timeout=180.0)
        cpu_ready = child.cpu()
        hwm_ready = child.memory()["VmHWM"]
        # Let the work that starts at "ready" run (it leaves rooms of closed sessions).
        await _wait_idle(child.pid, max_wait=10.0)
        mem = child.memory()
        times = _log_times(child.log_since_start().decode("utf-8", "replace"))
        await child.stop()
        first_sync = (times["ready"] - times["running"]) if {"ready", "running"} <= set(times) \
            else None
        rows.append({
            "ready_s": round(ready, 3),
            "first_sync_s": None if first_sync is None else round(first_sync, 3),
            "before_sync_s": None if "running" not in times
            else round(times["running"] - wall0, 3),
            "cpu_to_ready_s": round(cpu_ready, 2),
            "peak_rss_at_ready_kib": hwm_ready,
            "peak_rss_kib": mem["VmHWM"],
            "rss_settled_kib": mem["VmRSS"],
        })

    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "runs": rows,
        "warm_median_s": med("ready_s"),
        "first_sync_median_s": med("first_sync_s"),
        "before_sync_median_s": med("before_sync_s"),
        "cpu_to_ready_median_s": med("cpu_to_ready_s"),
        "peak_rss_median_kib": med("peak_rss_kib"),
        "rss_settled_median_kib": med("rss_settled_kib"),
    }


async def part_startup(b: Bench) -> None:
    """7. Process start -> "first sync done; ready" with real history: few vs many sessions."""
    cases = b.p.startup_cases
    say(f"part 7: start-up with real history, cases (closed, open) {cases}, "
        f"{b.p.startup_customers} customers at a time")
    agent = await b.actor("start-agent", "Start Agent", listen=False)
    parcel = await b.parcel("start", encryption=True, agents=[agent.user_id])
    cold = parcel.child.ready_after
    began = time.monotonic()
    customers: list[Actor] = []
    for i in range(b.p.startup_customers):
        customers.append(await b.actor(f"start-cust{i}", f"Customer {i}", encrypted=True))
    history = History(b, parcel, agent, customers)
    # Filled in as the cases are measured, so a part that runs out of time keeps what it has.
    result: dict[str, Any] = {
        "how": "E2EE on (the default), encrypted DMs opened like Element's \"Start chat\" by "
               f"{b.p.startup_customers} customers in parallel, each chat in turn; ended chats "
               "ended by the customer with !end (the bot renames the agent room and leaves "
               "both rooms); the agent joined the open ones. Warm start: process start -> the "
               "\"first sync done; ready\" log line, restarting with the saved device; first "
               "sync: the bot's \"Parcel running\" -> \"ready\" log lines; peak RSS: VmHWM once "
               "the bot is idle after ready. sync_probe: the same sync request made raw as the "
               "bot (saved position, its filter) while it is stopped.",
        "customers": b.p.startup_customers,
        "first_start_s": None if cold is None else round(cold, 3),
        "cases": [],
    }
    b.results["startup"] = result
    try:
        await _cases(b, history, cases, result)
    finally:  # their sync loops would only load the homeserver during the later parts
        for customer in customers:
            b.actors.remove(customer)
            await customer.close()
        if history.failures:
            b.notes.append(f"start-up history: {len(history.failures)} chats could not be set "
                           f"up (first: {history.failures[0]})")
        result["history_total_s"] = round(time.monotonic() - began, 1)


async def _cases(b: Bench, history: History, cases: tuple[tuple[int, int], ...],
                 result: dict[str, Any]) -> None:
    """Grow the history to each case in turn, measure the bot's restarts there, record."""
    parcel = history.parcel
    rows: list[dict[str, Any]] = result["cases"]
    for closed, open_ in cases:
        if not parcel.child.process or parcel.child.process.returncode is not None:
            await parcel.child.start(timeout=180.0)
        built = await history.grow(closed, open_)
        counts = history.counts()
        say(f"  history of {closed} ended + {open_} open chats: {built['chats']} new in "
            f"{built['seconds']:.0f} s, CPU s: Synapse {built['synapse_cpu_s']}, bot "
            f"{built['bot_cpu_s']}, harness {built['harness_cpu_s']} (store: {counts})")
        await parcel.child.stop()
        probe = await sync_probe(b.hs.url, parcel.data_dir)
        measured = await _measure(b, parcel.child, b.p.startup_warm_runs)
        row = {
            "sessions": closed + open_,
            "closed": closed,
            "open": open_,
            "store_sessions": counts,
            "history_build": built,
            **measured,
            "sync_probe": probe,
        }
        rows.append(row)
        small, big = rows[0], rows[-1]
        if len(rows) > 1:
            result["ratio_warm_big_vs_small"] = ratio(big["warm_median_s"],
                                                      small["warm_median_s"])
            result["ratio_rss_big_vs_small"] = ratio(big["peak_rss_median_kib"],
                                                     small["peak_rss_median_kib"])
        if probe["bot_joined_rooms"] != 2 * open_:
            b.notes.append(f"start-up, {closed + open_} sessions: the bot is in "
                           f"{probe['bot_joined_rooms']} rooms, not the {2 * open_} of the "
                           "open sessions")
        say(f"  {closed + open_} sessions: warm start {row['warm_median_s']:.2f} s (median of "
            f"{len(measured['runs'])}), first sync {row['first_sync_median_s']} s, peak RSS "
            f"{(row['peak_rss_median_kib'] or 0) / 1024:.0f} MiB; the bot is in "
            f"{probe['bot_joined_rooms']} rooms, its restart sync is "
            f"{probe.get('restart_sync', {}).get('bytes', 0) / 1024:.0f} KiB")
