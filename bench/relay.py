"""The baseline: a minimal relay bot that forwards a customer room's events to an agent room.

No inspection, no store, no offers: every non-state timeline event of a paired customer room
is sent as is (same type, same content; an encrypted file keeps its key, so nothing is
downloaded or uploaded) to the paired agent room. That is the cost floor of "two hops
through the homeserver" that Parcel is compared with.

Run as its own process, like Parcel is in the benchmark::

    python -m bench.relay CONFIG.json

CONFIG names ``homeserver``, ``user_id``, ``device_id``, ``access_token``, ``store_dir``,
``encryption`` and ``pairs_file``. The pairs file (``{"customer room": "agent room"}``) is
re-read whenever it changes, so the benchmark can add pairs while the relay runs. The relay
joins every room it is invited to. It logs "relay ready" after its first sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, MegolmEvent, RoomSendResponse, SyncResponse

from bot.matrix.sync import maintain_keys
from bot.tasks import Stopped, unless_stopped

logger = logging.getLogger("relay")

SYNC_FILTER = {"room": {"timeline": {"limit": 500}}, "presence": {"types": []}}
SKIPPED_TYPES = frozenset({"m.room.redaction", "m.room.encrypted"})


class Relay:
    def __init__(self, config: dict[str, Any]) -> None:
        self.own = config["user_id"]
        self.encryption = bool(config.get("encryption"))
        self.client = AsyncClient(
            config["homeserver"], self.own, device_id=config["device_id"],
            store_path=config["store_dir"],
            config=AsyncClientConfig(encryption_enabled=self.encryption,
                                     store_sync_tokens=False, request_timeout=120),
        )
        self.client.restore_login(self.own, config["device_id"], config["access_token"])
        self.pairs_path = Path(config["pairs_file"])
        self.pairs: dict[str, str] = {}
        self._pairs_mtime: float | None = None
        self.queues: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.joining: set[str] = set()
        self.forwarded = 0

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _reload_pairs(self) -> None:
        try:
            mtime = self.pairs_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime != self._pairs_mtime:
            with contextlib.suppress(ValueError):
                self.pairs = json.loads(self.pairs_path.read_text())
                self._pairs_mtime = mtime

    async def run(self, stop: asyncio.Event) -> None:
        since: str | None = None
        first = True
        while not stop.is_set():
            request = self.client.sync(
                timeout=0 if first else 30_000, sync_filter=SYNC_FILTER, since=since,
                full_state=first)
            try:
                response = await unless_stopped(request, stop)
            except Stopped:
                break
            except Exception as exc:  # noqa: BLE001 - retry after a pause
                response = exc
            if not isinstance(response, SyncResponse):
                logger.warning("sync failed: %r", response)
                await asyncio.sleep(0.5)
                continue
            await self._housekeeping()
            self._reload_pairs()
            for room_id in response.rooms.invite:
                if room_id not in self.joining:
                    self.joining.add(room_id)
                    self._spawn(self.client.join(room_id))
            if not first:  # the first sync is history from before the relay started
                self._forward_batch(response)
            since = response.next_batch
            if first:
                first = False
                logger.info("relay ready")

    def _forward_batch(self, response: SyncResponse) -> None:
        for room_id, info in response.rooms.join.items():
            target = self.pairs.get(room_id)
            if target is None:
                continue
            for event in info.timeline.events:
                source = getattr(event, "source", None)
                if (not isinstance(source, dict) or isinstance(event, MegolmEvent)
                        or source.get("sender") == self.own or "state_key" in source):
                    continue
                event_type, content = source.get("type"), source.get("content")
                if event_type in SKIPPED_TYPES or not isinstance(content, dict):
                    continue
                queue = self.queues.get(target)
                if queue is None:
                    queue = self.queues[target] = asyncio.Queue()
                    self._spawn(self._worker(target, queue))
                queue.put_nowait((str(event_type), content))

    async def _worker(self, room_id: str, queue: asyncio.Queue[tuple[str, dict]]) -> None:
        """One sender per agent room keeps each pair's order, pairs go in parallel."""
        while True:
            event_type, content = await queue.get()
            for attempt in range(5):
                try:
                    response = await self.client.room_send(
                        room_id, event_type, content, ignore_unverified_devices=True)
                except Exception as exc:  # noqa: BLE001 - e.g. room not synced yet
                    response = exc
                if isinstance(response, RoomSendResponse):
                    self.forwarded += 1
                    break
                logger.warning("forward to %s failed (attempt %d): %r", room_id, attempt + 1,
                               response)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _housekeeping(self) -> None:
        client = self.client
        if not self.encryption:
            return
        try:
            await maintain_keys(client)
        except Exception as exc:  # noqa: BLE001 - retried after the next sync
            logger.warning("key maintenance failed: %r", exc)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


async def _main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    relay = Relay(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await relay.run(stop)
    finally:
        logger.info("relay stopping after %d forwards", relay.forwarded)
        await relay.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("nio", "nio.client", "nio.rooms", "nio.crypto", "nio.responses", "peewee"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if len(sys.argv) != 2:
        print("usage: python -m bench.relay CONFIG.json", file=sys.stderr)
        return 2
    return asyncio.run(_main(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
