"""Part ``ha``: Parcel on PostgreSQL, and what a standby instance gives (issue 11, "Measure").

A throwaway PostgreSQL server (:class:`bot.devdb.PostgresServer`, ``fsync=off`` as in the
tests) next to the bench's Synapse. Four measurements, printed, never asserted:

1. **Failover**: two ``parcel-bot run`` processes with the same config (their own empty
   data_dirs) on one database, the default lease, E2EE on, one chat open. Each round SIGKILLs
   the leader and, right after, the customer sends a text; the clock runs from the kill to the
   standby's "took the leader lease" and "first sync done" log lines (their millisecond
   timestamps) and to the relayed text's arrival at the agent's client. The killed instance
   is restarted as the next standby.
2. **Offer and delivery latency, PostgreSQL vs SQLite**: the latency part's exchange
   (:meth:`bench.scenarios.Bench.parcel_cycle`) through two Parcel bots, one per backend,
   samples interleaved (SQLite, PostgreSQL, SQLite, ...) so drift hits both alike; the same
   sample counts as the latency part (4 KB, 1 MB, 20 MB).
3. **Throughput on PostgreSQL**: the scale part's windows (one 4 KB file per session per
   second) through Parcel on PostgreSQL, with bot, Synapse and PostgreSQL CPU per offer.
4. **nio's crypto store on PostgreSQL**: :func:`bench.crypto_store.run_backend` (a
   :class:`~bot.matrix.pgstore.StoreTimer` around every store call) with 10 and 50 rooms: how
   long store calls block the loop per sync, p50 / p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.harness import (
    BenchError,
    Child,
    quantile,
    ratio,
    summary_ab,
)
from bench.history import _LOG_TIME
from bench.scenarios import (
    KB,
    Bench,
    Chat,
    ParcelBot,
    ScaleSide,
    _open_scale_sessions,
    _scale_watcher,
    _scale_window,
    say,
    scale_customers,
)
from bot.config import DEFAULT_LEADER_LEASE, ENV_DATABASE_PASSWORD
from bot.devdb import PostgresServer
from bot.devserver import RegisteredUser

ENCRYPTION_KEY = "the bench's shared encryption key for the PostgreSQL instances"
TOOK_LEASE = "took the leader lease"
READY = "first sync done; ready"
STANDING_BY = b"waiting for its lease to lapse"
"""Logged by a standby once it has seen who leads: it is logged in and polling the lease."""

HA_SIZES = ("4 KB", "1 MB", "20 MB")
"""The latency part's sizes compared between the backends (100 MB would add minutes)."""


@dataclass(frozen=True)
class HaParams:
    """How much of the ``ha`` part a mode does."""

    kills: int
    scale_levels: tuple[int, ...]
    scale_setup_budget: float
    crypto_rooms: tuple[int, ...]


HA_FULL = HaParams(kills=10, scale_levels=(50, 200), scale_setup_budget=300.0,
                   crypto_rooms=(10, 50))
HA_QUICK = HaParams(kills=3, scale_levels=(20,), scale_setup_budget=60.0, crypto_rooms=(10,))


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def first_line_at(log: str, marker: str) -> float | None:
    """Wall-clock time (epoch seconds, to the ms) of the first log line containing ``marker``."""
    for line in log.splitlines():
        if marker not in line:
            continue
        match = _LOG_TIME.match(line)
        if match is None:
            continue
        return (dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                + int(match.group(2)) / 1000)
    return None


def failover_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 / p95 / max of each kill → X interval over the rounds that measured it (seconds).

    A round that failed has ``None`` where it could not measure; it is counted in ``failed``
    and left out of the quantiles instead of being guessed.
    """
    out: dict[str, Any] = {"rounds": len(rounds)}
    for key in ("to_lease_s", "to_ready_s", "to_relayed_s"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = {
            "n": len(values),
            "p50": None if not values else round(quantile(values, 0.5) or 0.0, 3),
            "p95": None if not values else round(quantile(values, 0.95) or 0.0, 3),
            "max": None if not values else round(max(values), 3),
        }
    out["failed"] = sum(1 for r in rounds if r.get("to_relayed_s") is None)
    return out


def parse_psql_rows(text: str, columns: int) -> list[list[str | None]]:
    """Rows of ``psql -A -t`` output ('|' between columns); an empty field is NULL."""
    rows: list[list[str | None]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != columns:
            continue
        rows.append([f if f != "" else None for f in fields])
    return rows


def postgres_cpu_seconds(data_dir: Path) -> float | None:
    """CPU seconds of a PostgreSQL server: the postmaster, its reaped children (cutime) and
    the live backends. None when the server's pid file cannot be read."""
    try:
        master = int((data_dir / "postmaster.pid").read_text().split()[0])
        with open(f"/proc/{master}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    clk = os.sysconf("SC_CLK_TCK")
    # utime, stime, cutime, cstime are fields 14-17 (fields[11:15] after the state).
    total = sum(int(x) for x in fields[11:15]) / clk
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "stat", encoding="ascii") as handle:
                rest = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == master:  # ppid
            total += (int(rest[11]) + int(rest[12])) / clk
    return total


# --------------------------------------------------------------------------------------------
# Parcel on PostgreSQL
# --------------------------------------------------------------------------------------------


@dataclass
class PgParcelBot(ParcelBot):
    """Parcel with its store in PostgreSQL: the bench's look-ups read the database (psql)."""

    pg: PostgresServer | None = None
    database: str = ""

    def _rows(self, sql: str, columns: int) -> list[list[str | None]]:
        assert self.pg is not None
        try:
            return parse_psql_rows(self.pg.sql(self.database, sql), columns)
        except Exception:  # noqa: BLE001 - not created yet: nothing to report
            return []

    def sessions(self) -> dict[str, tuple[str | None, str]]:
        rows = self._rows("SELECT customer_room, agent_room, state FROM sessions", 3)
        return {str(r[0]): (r[1], str(r[2])) for r in rows}

    def offer_count(self) -> int:
        rows = self._rows("SELECT COUNT(*) FROM offers", 1)
        return int(rows[0][0] or 0) if rows else -1


class Postgres:
    """The part's PostgreSQL server and the Parcel instances it starts on it."""

    def __init__(self, b: Bench) -> None:
        self.b = b
        self.server = PostgresServer(b.workdir / "postgres")

    async def start(self) -> None:
        began = time.monotonic()
        await asyncio.to_thread(self.server.start)
        say(f"PostgreSQL ready on port {self.server.port} after "
            f"{time.monotonic() - began:.1f} s")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.server.stop)

    def cpu(self) -> float | None:
        return postgres_cpu_seconds(self.server.data_dir)

    async def database(self) -> str:
        return await asyncio.to_thread(self.server.create_database, "bench")

    def child(self, bot: RegisteredUser, data_dir: Path, database: str, agents: list[str],
              encryption: bool, marker: bytes, homeserver: str | None = None) -> Child:
        """A Parcel process on ``database`` (password in the environment, as deployed),
        talking to ``homeserver`` (a proxy, say) or to the bench's Synapse."""
        data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.b.parcel_config(bot, data_dir, agents, encryption,
                                           homeserver=homeserver)
        raw = yaml.safe_load(config_path.read_text())
        raw["database"] = self.server.url(database)
        raw["encryption_key"] = ENCRYPTION_KEY
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        child = Bench.parcel_child(config_path, data_dir.parent / f"{data_dir.name}.log")
        child.ready_marker = marker
        child.env = {**os.environ, ENV_DATABASE_PASSWORD: self.server.password}
        self.b.children.append(child)
        return child

    async def leader_and_standby(self, name: str, agents: list[str],
                                 homeserver: str | None = None
                                 ) -> tuple[Child, Child, PgParcelBot]:
        """Two encrypted instances of one bot ``parcel-<name>`` on a new database, started:
        the first leads (past its first sync), the second stands by; with the chat's view of
        the bot as the first. ``homeserver``: where both connect (default the bench's)."""
        bot = await self.b.user(f"parcel-{name}", "Parcel")
        database = await self.database()
        leader, standby = (
            self.child(bot, self.b._dir("bots") / f"parcel-{name}-{n}", database, agents, True,
                       READY.encode() if n == 1 else STANDING_BY, homeserver)
            for n in (1, 2)
        )
        await leader.start()
        await standby.start()
        parcel = PgParcelBot(bot, self.b.workdir / "bots" / f"parcel-{name}-1",
                             Path(leader.argv[-1]), leader, pg=self.server, database=database)
        return leader, standby, parcel

    async def parcel(self, name: str, *, encryption: bool, agents: list[str]) -> PgParcelBot:
        """One Parcel instance on a new database, started and past its first sync."""
        bot = await self.b.user(f"parcel-{name}", "Parcel")
        database = await self.database()
        data_dir = self.b._dir("bots") / f"parcel-{name}"
        child = self.child(bot, data_dir, database, agents, encryption, READY.encode())
        seconds = await child.start()
        say(f"Parcel '{name}' on PostgreSQL (pid {child.pid}) ready in {seconds:.1f} s")
        return PgParcelBot(bot, data_dir, Path(child.argv[-1]), child, pg=self.server,
                           database=database)


# --------------------------------------------------------------------------------------------
# 1. Failover
# --------------------------------------------------------------------------------------------


async def _failover_round(b: Bench, chat: Chat, leader: Child, standby: Child,
                          k: int) -> dict[str, Any]:
    """SIGKILL ``leader``, send a text at once; when did the standby lead, and relay it?"""
    await b.probe(chat)  # the leader relays, its sync position is saved
    await standby_ready(standby)
    token = f"after-kill-{k}-{secrets.token_hex(4)}"
    assert leader.process is not None
    killed_at = time.time()
    leader.process.kill()
    await chat.customer.say(chat.customer_room, token)
    out: dict[str, Any] = {"round": k + 1, "to_lease_s": None, "to_ready_s": None,
                           "to_relayed_s": None}
    try:
        seen = await chat.agent.wait_for(
            lambda s: s.room_id == chat.agent_room
            and str(s.content.get("body", "")).endswith(token),
            "the text sent right after the kill, relayed by the new leader", timeout=90)
        out["to_relayed_s"] = round(seen.at - killed_at, 3)
    except BenchError as exc:
        out["error"] = str(exc)
    await leader.process.wait()
    log = standby.log_since_start().decode("utf-8", "replace")
    for key, marker in (("to_lease_s", TOOK_LEASE), ("to_ready_s", READY)):
        at = first_line_at(log, marker)
        if at is not None:
            out[key] = round(at - killed_at, 3)
    return out


async def standby_ready(child: Child, timeout: float = 60.0) -> None:
    """Wait until ``child`` has logged that it stands by (it knows who leads)."""
    deadline = time.monotonic() + timeout
    while STANDING_BY not in child.log_since_start():
        if time.monotonic() > deadline:
            raise BenchError(f"the standby is not waiting for the lease after {timeout:.0f} s; "
                             f"end of its log:\n{child.log_tail()}")
        await asyncio.sleep(0.05)


async def part_failover(b: Bench, pg: Postgres, kills: int) -> dict[str, Any]:
    """1. Two instances on one database; SIGKILL the leader ``kills`` times."""
    say(f"  failover: {kills} kills, lease {DEFAULT_LEADER_LEASE:g} s (the default), E2EE on")
    customer = await b.actor("ha-cust", "Carol", encrypted=True)
    agent = await b.actor("ha-agent", "Alice", encrypted=True, auto_join=True)
    leader, standby, parcel = await pg.leader_and_standby("ha", [agent.user_id])
    instances = [leader, standby]
    chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=True)
    rounds = []
    for k in range(kills):
        result = await _failover_round(b, chat, leader, standby, k)
        rounds.append(result)
        say(f"    kill {k + 1}: lease taken after {result['to_lease_s']} s, ready after "
            f"{result['to_ready_s']} s, text relayed after {result['to_relayed_s']} s")
        if result["to_relayed_s"] is None:
            b.notes.append(f"ha failover round {k + 1}: {result.get('error', 'no relay')}")
        # The killed instance comes back as the next standby.
        leader.ready_marker = STANDING_BY
        await leader.start()
        leader, standby = standby, leader
    for child in instances:
        await child.stop()
    return {
        "lease_s": DEFAULT_LEADER_LEASE,
        "encryption": True,
        "instances": 2,
        "kills": kills,
        **failover_summary(rounds),
        "per_round": rounds,
        "how": "SIGKILL of the leader -> the standby's 'took the leader lease' / 'first sync "
               "done' log lines (ms timestamps) and -> a text the customer sent right after "
               "the kill arriving at the agent's client (relayed by the new leader); the "
               "killed instance is restarted as the next standby each round",
    }


# --------------------------------------------------------------------------------------------
# 2. Offer and delivery latency, PostgreSQL vs SQLite
# --------------------------------------------------------------------------------------------


async def part_backends(b: Bench, pg: Postgres) -> dict[str, Any]:
    """2. The latency part's offer / ✅ exchange on SQLite and on PostgreSQL, interleaved."""
    customer = await b.actor("hab-cust", "Carol")
    agent = await b.actor("hab-agent", "Alice", auto_join=True)
    lite = await b.parcel("ha-sqlite", encryption=False, agents=[agent.user_id])
    post = await pg.parcel("ha-pg", encryption=False, agents=[agent.user_id])
    chats = {"sqlite": await b.open_parcel_chat(lite, customer, agent, encrypted=False),
             "postgresql": await b.open_parcel_chat(post, customer, agent, encrypted=False)}
    for backend, chat in chats.items():  # warm-up, not measured
        await b.parcel_cycle(chat, f"warm-ha-{backend}.bin", 4 * KB)
    out: dict[str, Any] = {}
    for size_label, size, n in b.p.sizes:
        if size_label not in HA_SIZES:
            continue
        say(f"  backends: {size_label} x {n} each")
        offer: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        delivery: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for i in range(n):
            for backend, chat in chats.items():
                tag = size_label.replace(" ", "")
                o, d, _ = await b.parcel_cycle(chat, f"ha-{backend[:2]}-{tag}-{i}.bin", size)
                offer[backend].append(o)
                delivery[backend].append(d)
        entry: dict[str, Any] = {"bytes": size}
        for backend in chats:
            entry[backend] = {"offer": summary_ab(offer[backend]),
                              "delivery": summary_ab(delivery[backend])}
        for what in ("offer", "delivery"):
            entry[f"ratio_{what}_p50"] = ratio(entry["postgresql"][what]["p50"],
                                               entry["sqlite"][what]["p50"])
        out[size_label] = entry
        say(f"    offer p50 SQLite {entry['sqlite']['offer']['p50'] * 1000:.0f} ms, PostgreSQL "
            f"{entry['postgresql']['offer']['p50'] * 1000:.0f} ms; delivery p50 SQLite "
            f"{entry['sqlite']['delivery']['p50'] * 1000:.0f} ms, PostgreSQL "
            f"{entry['postgresql']['delivery']['p50'] * 1000:.0f} ms")
    await lite.child.stop()
    await post.child.stop()
    return out


# --------------------------------------------------------------------------------------------
# 3. Throughput on PostgreSQL
# --------------------------------------------------------------------------------------------


async def part_pg_scale(b: Bench, pg: Postgres, levels: tuple[int, ...],
                        setup_budget: float) -> dict[str, Any]:
    """3. The scale part's windows through Parcel on PostgreSQL (no relay: the scale part has
    it), with PostgreSQL's CPU per offer beside the bot's and Synapse's."""
    nmax = max(levels)
    agent = await b.actor("ha-scale-agent", "Agent", auto_join=True, keep_events=False)
    parcel = await pg.parcel("ha-scale", encryption=False, agents=[agent.user_id])
    side = ScaleSide("parcel", parcel.user_id, parcel.child, agent)
    agent.watchers.append(_scale_watcher(side))
    began = time.monotonic()
    customers, media = await scale_customers(b, "hacust", nmax)
    say(f"  scale on PostgreSQL: {nmax} customers registered ({time.monotonic() - began:.0f} s)")
    deadline = time.monotonic() + setup_budget
    out_levels: list[dict[str, Any]] = []
    for level in levels:
        indices = list(range(level))
        await _open_scale_sessions(b, side, customers, indices, deadline, parcel, None)
        ready = sorted(i for i in indices if i in side.ready and i in media)
        measured = out_levels[-1]["sessions"] if out_levels else 0
        if len(ready) <= measured:
            # The same sessions again, under the last window's backlog and the unfinished
            # set-up of the new ones, would say nothing about this level.
            b.notes.append(f"ha scale level {level}: no more than the {measured} sessions "
                           f"already measured could be set up within the set-up budget "
                           f"({setup_budget:.0f} s for all levels); not measured")
            continue
        if len(ready) < level:
            b.notes.append(f"ha scale level {level}: only {len(ready)} of {level} sessions "
                           f"could be set up within the set-up budget ({setup_budget:.0f} s "
                           f"for all levels); measured with {len(ready)}")
        pg0 = pg.cpu()
        result = await _scale_window(b, side, customers, media, ready, level)
        pg1 = pg.cpu()
        result["offers_in_store"] = parcel.offer_count()
        result["postgres_cpu_s"] = None if pg0 is None or pg1 is None else round(pg1 - pg0, 2)
        result["postgres_cpu_s_per_offer"] = (
            round((pg1 - pg0) / result["arrived"], 4)
            if pg0 is not None and pg1 is not None and result["arrived"] else None)
        out_levels.append({"level": level, "sessions": len(ready), "parcel": result})
        say(f"  level {level} on PostgreSQL ({len(ready)} sessions): "
            f"{result['throughput_per_s']} files/s, bot CPU/offer "
            f"{result['bot_cpu_s_per_offer']}, Synapse "
            f"{result['during_window']['synapse_cpu_utilisation']:.0%}")
    await parcel.child.stop()
    return {"window_s": b.p.scale_window, "drain_s": b.p.scale_drain, "file_bytes": 4 * KB,
            "levels": out_levels, "setup_s": round(time.monotonic() - began, 1)}


# --------------------------------------------------------------------------------------------
# 4. nio's crypto store
# --------------------------------------------------------------------------------------------


async def part_crypto_store(b: Bench, pg: Postgres, room_counts: tuple[int, ...]) -> list[dict]:
    """4. How long nio's store calls block the loop per sync, on PostgreSQL."""
    from bench.crypto_store import run_backend

    out = []
    for rooms in room_counts:
        database = await pg.database()
        url = pg.server.url(database, with_password=True)
        began = time.monotonic()
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines: stdout has tables
            result = await run_backend(b.hs, "postgresql", url, b._dir(f"crypto-{rooms}"),
                                       rooms, customers=5, devices=2, rounds=3)
        result.pop("by_method", None)
        result["seconds"] = round(time.monotonic() - began, 1)
        out.append(result)
        say(f"  crypto store on PostgreSQL, {rooms} rooms: per sync p50 "
            f"{result['sync_p50_ms']} ms, p99 {result['sync_p99_ms']} ms")
    return out


# --------------------------------------------------------------------------------------------
# The part
# --------------------------------------------------------------------------------------------


async def part_ha(b: Bench) -> None:
    """PostgreSQL vs SQLite, failover and the crypto store; fills ``results['ha']``."""
    hp = HA_FULL if b.p.mode == "full" else HA_QUICK
    say("part ha: Parcel on PostgreSQL, failover")
    pg = Postgres(b)
    await pg.start()
    ha: dict[str, Any] = {"postgres": "throwaway server, fsync=off, on the same machine"}
    b.results["ha"] = ha
    seconds: dict[str, float] = {}
    failed: list[str] = []
    try:
        for name, step in (
            ("backends", lambda: part_backends(b, pg)),
            ("failover", lambda: part_failover(b, pg, hp.kills)),
            ("crypto_store", lambda: part_crypto_store(b, pg, hp.crypto_rooms)),
            ("scale", lambda: part_pg_scale(b, pg, hp.scale_levels, hp.scale_setup_budget)),
        ):
            began = time.monotonic()
            try:
                ha[name] = await step()
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next piece
                detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
                b.notes.append(f"ha {name} failed: {detail}")
                say(f"  ha {name} FAILED: {detail}")
                failed.append(name)
            seconds[name] = round(time.monotonic() - began, 1)
            ha["seconds"] = seconds
    finally:
        await pg.stop()
    if failed:
        raise BenchError(f"ha: {', '.join(failed)} failed (the others were measured)")

