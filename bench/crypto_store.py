"""``python -m bench.crypto_store [--rooms 10,50,100] [--customers 5] [--devices 2] [--rounds 3]
[--freeze 8]``.

How long nio's crypto store blocks the event loop, PostgreSQL vs SQLite. nio calls its store
synchronously, so every millisecond in a store call is a millisecond the bot's loop does
nothing else. A throwaway Synapse and PostgreSQL; one bot account per backend (its store in
PostgreSQL via :func:`bot.matrix.pgstore.postgres_crypto_store`, or nio's ``SqliteStore``
in a temp dir), ``--rooms`` encrypted rooms shared with ``--customers`` customers of
``--devices`` devices each. Each round every room gets one message from a customer device;
the bot syncs until it has decrypted them all, then answers in every room (sharing its
Megolm session on the first round). Customers alternate devices, so rounds 1 and 2 bring new
Megolm sessions (to-device keys, Olm decryption); later rounds are the steady state. The
store time per sync and per answer comes from a :class:`~bot.matrix.pgstore.StoreTimer`; the
longest event-loop block per sync from a :class:`LoopLag` probe (a task that asks to wake every
5 ms and records how late it woke), which sees every blocking call, the store's and nio's own.

With ``--freeze N`` (PostgreSQL only) the server is then frozen for N seconds (SIGSTOP of all
its processes: connections stay open, nothing answers) while customers write and the bot keeps
syncing: the longest block of a sync while frozen, the store failures, and the seconds from
the thaw until every message was decrypted. Printed, not asserted. The PostgreSQL server runs
with ``fsync=off`` (as in the tests): a commit on a real disk adds its flush time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, RoomCreateResponse, RoomMessageText
from nio.store import SqliteStore

from bot.devdb import PostgresServer
from bot.devserver import Homeserver, RegisteredUser, unique_localpart
from bot.errors import TransientError
from bot.matrix.client import client_config
from bot.matrix.pgstore import StoreTimer, percentile, postgres_crypto_store

PICKLE_KEY = "bench-crypto-store-pickle-key"
FILTER = {"room": {"timeline": {"limit": 200}}}


class LoopLag:
    """How long the event loop was blocked: a task asks to wake every ``tick`` seconds and
    records how late it woke; :meth:`take` returns the longest delay since the last take."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self._longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.tick)
            self._longest = max(self._longest, loop.time() - asked - self.tick)

    def start(self) -> None:
        """Start probing."""
        self._task = asyncio.create_task(self._probe())

    def take(self) -> float:
        """The longest block (seconds) since the previous take."""
        longest, self._longest = self._longest, 0.0
        return longest

    def stop(self) -> None:
        """Stop probing."""
        if self._task is not None:
            self._task.cancel()


@contextlib.contextmanager
def frozen(server: PostgresServer, longest: float) -> Iterator[None]:
    """``server`` frozen (SIGSTOP) inside the block; thawed at its end, or after ``longest``
    seconds whatever happens (a bench must never leave a frozen server behind)."""
    pids = server.pids()
    done = threading.Lock()

    def thaw() -> None:
        if done.acquire(blocking=False):
            for pid in reversed(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    safety = threading.Timer(longest, thaw)
    safety.start()
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        safety.cancel()
        thaw()


def timed_sqlite_store(timer: StoreTimer) -> type[SqliteStore]:
    """nio's SqliteStore with the same per-call timing as the PostgreSQL store."""
    namespace: dict[str, Any] = {"_depth": 0}

    def wrap(name: str, method: Any) -> Any:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(self, *args, **kwargs)
            self._depth += 1
            began = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self._depth -= 1
                timer.record(name, time.perf_counter() - began)
        return call

    for name in dir(SqliteStore):
        if not name.startswith("_") and callable(getattr(SqliteStore, name)):
            namespace[name] = wrap(name, getattr(SqliteStore, name))
    return type("TimedSqliteStore", (SqliteStore,), namespace)


async def _customer_device(hs: Homeserver, user: RegisteredUser, first: bool,
                           store: Path) -> AsyncClient:
    client = AsyncClient(hs.url, user.user_id, store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True,
                                                  store_sync_tokens=False))
    store.mkdir(parents=True, exist_ok=True)
    if first:
        client.restore_login(user.user_id, user.device_id, user.access_token)
    else:
        await client.login(user.password)
    await client.sync(timeout=0, full_state=True)
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def _bot(hs: Homeserver, user: RegisteredUser, backend: str, url: str, tmp: Path,
               timer: StoreTimer) -> AsyncClient:
    store = (postgres_crypto_store(url, timer=timer) if backend == "postgresql"
             else timed_sqlite_store(timer))
    path = tmp / f"bot-{backend}"
    path.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(hs.url, user.user_id, device_id=user.device_id, store_path=str(path),
                         config=client_config(True, PICKLE_KEY, store))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    await client.sync(timeout=0, full_state=True)
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def run_backend(hs: Homeserver, backend: str, url: str, tmp: Path, rooms: int,
                      customers: int, devices: int, rounds: int,
                      freeze: tuple[PostgresServer, float] | None = None) -> dict[str, Any]:
    """One bot on ``backend`` with ``rooms`` rooms; returns the store-time figures.

    ``freeze`` (server, seconds): afterwards, freeze that PostgreSQL server under traffic (see
    the module's docstring) and add its figures.
    """
    timer = StoreTimer()
    bot_user = await hs.register(unique_localpart(f"csbot-{backend[:2]}"))
    bot = await _bot(hs, bot_user, backend, url, tmp, timer)
    people = [await hs.register(unique_localpart("cust")) for _ in range(customers)]
    clients = [[await _customer_device(hs, p, d == 0, tmp / f"{p.localpart}-{d}")
                for d in range(devices)] for p in people]
    room_ids: list[tuple[str, int]] = []
    for index in range(rooms):
        owner = index % customers
        response = await clients[owner][0].room_create(
            invite=[bot_user.user_id], is_direct=True,
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        assert isinstance(response, RoomCreateResponse), response
        room_ids.append((response.room_id, owner))
    while len(bot.rooms) < rooms:
        await bot.sync(timeout=500, sync_filter=FILTER)
        for room_id in list(bot.invited_rooms):
            await bot.join(room_id)
    for group in clients:
        for client in group:
            await client.sync(timeout=0, full_state=True)
    timer.cycle()  # set-up is not measured
    seen: set[str] = set()
    bot.add_event_callback(lambda room, event: seen.add(event.body), RoomMessageText)
    lag = LoopLag()
    lag.start()
    lag.take()
    blocks: list[float] = []
    sync_cycles: list[float] = []
    send_cycles: list[float] = []
    per_round: list[dict[str, float]] = []
    for round_no in range(rounds):
        expected = set()
        for index, (room_id, owner) in enumerate(room_ids):
            device = clients[owner][(index + round_no) % devices]
            body = f"r{round_no} room {index}"
            await device.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                   ignore_unverified_devices=True)
            expected.add(body)
        deadline = time.monotonic() + 120
        syncs_before, sends_before = len(sync_cycles), len(send_cycles)
        while not expected <= seen and time.monotonic() < deadline:
            await bot.sync(timeout=500, sync_filter=FILTER)
            sync_cycles.append(timer.cycle())
            blocks.append(lag.take())
        missing = expected - seen
        for room_id, _ in room_ids:
            await bot.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "ok"},
                                ignore_unverified_devices=True)
            send_cycles.append(timer.cycle())
        per_round.append({
            "syncs": len(sync_cycles) - syncs_before,
            "sync_store_ms": round(sum(sync_cycles[syncs_before:]) * 1000, 1),
            "send_store_ms": round(sum(send_cycles[sends_before:]) * 1000, 1),
        })
        print(f"  {backend} {rooms} rooms round {round_no + 1}: "
              f"{len(expected) - len(missing)}/{len(expected)} decrypted", flush=True)
    summary = timer.summary()
    per_method = {name: {"calls": len(v), "total_ms": round(sum(v) * 1000, 1)}
                  for name, v in sorted(timer.by_method.items())}
    result = {
        "backend": backend, "rooms": rooms, "customer_devices": customers * devices,
        "syncs": len(sync_cycles),
        "sync_p50_ms": _ms(sync_cycles, 0.5), "sync_p99_ms": _ms(sync_cycles, 0.99),
        "sync_max_ms": round(max(sync_cycles, default=0) * 1000, 2),
        "send_p50_ms": _ms(send_cycles, 0.5), "send_p99_ms": _ms(send_cycles, 0.99),
        "send_max_ms": round(max(send_cycles, default=0) * 1000, 2),
        "call_p50_ms": round(summary["call_p50_ms"], 3),
        "call_p99_ms": round(summary["call_p99_ms"], 3),
        "block_p50_ms": _ms(blocks, 0.5), "block_p99_ms": _ms(blocks, 0.99),
        "block_max_ms": round(max(blocks, default=0) * 1000, 2),
        "per_round": per_round,
        "by_method": per_method,
    }
    if freeze is not None and backend == "postgresql":
        result["freeze"] = await _frozen_phase(bot, clients, room_ids, seen, lag, *freeze)
    lag.stop()
    for group in clients:
        for client in group:
            await client.close()
    await bot.close()
    if backend == "postgresql":
        bot.store.close()
    return result


def _ms(values: list[float], fraction: float) -> float:
    return round(percentile(values, fraction) * 1000, 2)


async def _frozen_phase(bot: AsyncClient, clients: list[list[AsyncClient]],
                        room_ids: list[tuple[str, int]], seen: set[str], lag: LoopLag,
                        server: PostgresServer, seconds: float) -> dict[str, Any]:
    """Freeze ``server`` for ``seconds`` while customers write (new devices' messages need
    the store) and the bot syncs; then thaw and sync until all were decrypted."""
    expected = set()
    for index, (room_id, owner) in enumerate(room_ids):
        body = f"frozen room {index}"
        await clients[owner][index % len(clients[owner])].room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True)
        expected.add(body)
    blocks: list[float] = []
    failures = 0
    lag.take()
    with frozen(server, longest=seconds + 30):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                await bot.sync(timeout=500, sync_filter=FILTER)
            except TransientError:
                failures += 1
                await asyncio.sleep(0.2)  # the sync loop's backoff, short
            blocks.append(lag.take())
    thawed = time.monotonic()
    deadline = thawed + 120
    while not expected <= seen and time.monotonic() < deadline:
        try:
            await bot.sync(timeout=500, sync_filter=FILTER)
        except TransientError:
            failures += 1
            await asyncio.sleep(0.2)
    recovered = time.monotonic() - thawed if expected <= seen else None
    return {
        "frozen_s": seconds, "syncs": len(blocks), "store_failures": failures,
        "block_max_ms": round(max(blocks, default=0) * 1000, 1),
        "block_p50_ms": _ms(blocks, 0.5),
        "decrypted": len(expected & seen), "messages": len(expected),
        "thaw_to_all_decrypted_s": None if recovered is None else round(recovered, 2),
    }


async def main(args: argparse.Namespace) -> None:
    """Run every room count on both backends and print one JSON line per run."""
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as tmpdir:
        tmp = Path(tmpdir)
        with PostgresServer(tmp / "pg") as pg:
            async with Homeserver(tmp / "synapse") as hs:
                for rooms in args.rooms:
                    for backend in ("postgresql", "sqlite"):
                        url = pg.url(pg.create_database(), with_password=True)
                        freeze = (pg, args.freeze) if args.freeze else None
                        result = await run_backend(hs, backend, url, tmp / f"{backend}{rooms}",
                                                   rooms, args.customers, args.devices,
                                                   args.rounds, freeze)
                        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.crypto_store",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=lambda s: [int(x) for x in s.split(",")],
                        default=[10, 50, 100])
    parser.add_argument("--customers", type=int, default=5)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--freeze", type=float, default=0.0,
                        help="then freeze PostgreSQL this many seconds under traffic")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args()))
