"""Benchmark plumbing: clients that listen, child processes we can measure, small statistics.

Nothing here imports from ``tests/``: the benchmark has its own (simpler) actors.

* :class:`Actor` is one person behind a real matrix-nio client. It keeps a long-polling sync
  loop running in the background and stamps every timeline event with the wall-clock time at
  which its client handed it over (after decryption), so "appeared at the recipient" is
  measured where a person would see it.
* :class:`Child` runs a bot (Parcel or the baseline relay) as a separate process and reads its
  CPU time and memory from ``/proc/<pid>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    JoinError,
    MegolmEvent,
    RoomCreateResponse,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
)

from bot.devserver import RegisteredUser
from bot.matrix.sync import maintain_keys

logger = logging.getLogger("bench")

SYNC_FILTER = {"room": {"timeline": {"limit": 500}}, "presence": {"types": []}}
"""Timeline limit far above what arrives between two syncs, so no event is skipped."""

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """A step of the benchmark did not happen in time; the message says which."""


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def quantile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated quantile (like numpy's default); None for no values."""
    data = sorted(values)
    if not data:
        return None
    pos = (len(data) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p95, mean, min and max of latencies in seconds (rounded to 0.1 ms)."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "n": len(values),
        "p50": r(quantile(values, 0.5)),
        "p95": r(quantile(values, 0.95)),
        "mean": r(sum(values) / len(values)) if values else None,
        "min": r(min(values)) if values else None,
        "max": r(max(values)) if values else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None if either is missing or b is 0."""
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def halves(values: list[float]) -> dict[str, Any]:
    """The sample set as two interleaved halves A (even samples) and B (odd samples).

    Both halves ran in the same run, under the same conditions; ``spread`` =
    |p50_A - p50_B| / p50 says how much of a difference between two runs is noise.
    """
    a, b = values[0::2], values[1::2]
    p50, p50_a, p50_b = quantile(values, 0.5), quantile(a, 0.5), quantile(b, 0.5)
    spread = None
    if p50 and p50_a is not None and p50_b is not None:
        spread = round(abs(p50_a - p50_b) / p50, 3)
    return {"p50_a": None if p50_a is None else round(p50_a, 4),
            "p50_b": None if p50_b is None else round(p50_b, 4), "spread": spread}


def summary_ab(values: list[float]) -> dict[str, Any]:
    """:func:`summary` plus the two-halves spread (``values`` in the order they were taken)."""
    return {**summary(values), **halves(values)}


# --------------------------------------------------------------------------------------------
# Actors
# --------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One timeline event as it reached an actor's client."""

    at: float
    room_id: str
    source: dict[str, Any]

    @property
    def content(self) -> dict[str, Any]:
        content = self.source.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def sender(self) -> str:
        return str(self.source.get("sender"))

    @property
    def type(self) -> str:
        return str(self.source.get("type"))


Watcher = Callable[[Seen], None]


@dataclass
class _Waiter:
    predicate: Callable[[Seen], bool]
    future: asyncio.Future[Seen]


class Actor:
    """A person behind a real nio client with a background sync loop.

    ``listen=False`` makes a sender-only actor (no sync at all; fine for plain rooms): the
    scale run has hundreds of customers that only post files.
    """

    def __init__(
        self,
        homeserver_url: str,
        user: RegisteredUser,
        store_root: Path,
        *,
        encrypted: bool = False,
        auto_join: bool = False,
        keep_events: bool = True,
    ) -> None:
        self.user = user
        self.user_id = user.user_id
        self.encrypted = encrypted
        self.auto_join = auto_join
        self.keep_events = keep_events
        store = Path(tempfile.mkdtemp(prefix=f"{user.localpart}-", dir=store_root))
        self.client = AsyncClient(
            homeserver_url,
            user.user_id,
            device_id=user.device_id,
            store_path=str(store),
            config=AsyncClientConfig(
                encryption_enabled=encrypted, store_sync_tokens=False, request_timeout=120,
                max_timeouts=3,
            ),
        )
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self.seen: list[Seen] = []
        self.watchers: list[Watcher] = []
        self._waiters: list[_Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._since: str | None = None
        self._joining: set[str] = set()
        self._join_sem = asyncio.Semaphore(4)
        self._join_tasks: set[asyncio.Task[None]] = set()
        self.sync_count = 0
        self.synced = asyncio.Event()
        self.client.add_event_callback(self._on_event, Event)
        self.client.add_event_callback(self._on_event, MegolmEvent)

    # -- the sync loop ---------------------------------------------------------------------

    async def start(self) -> None:
        """First (full-state) sync, device keys, then the background long-poll loop."""
        await self._sync_once(timeout=0, full_state=True)
        if self.encrypted and self.client.should_upload_keys:
            await self.client.keys_upload()
        self._task = asyncio.create_task(self._loop(), name=f"sync-{self.user.localpart}")

    async def _sync_once(self, timeout: int, full_state: bool = False) -> None:
        response = await self.client.sync(
            timeout=timeout, sync_filter=SYNC_FILTER, since=self._since, full_state=full_state
        )
        if not isinstance(response, SyncResponse):
            await asyncio.sleep(0.2)
            return
        self._since = response.next_batch
        self.sync_count += 1
        if self.encrypted:
            await self._housekeeping()
        if self.auto_join:
            for room_id in list(self.client.invited_rooms):
                if room_id not in self._joining:
                    self._joining.add(room_id)
                    task = asyncio.create_task(self._join(room_id))
                    self._join_tasks.add(task)
                    task.add_done_callback(self._join_tasks.discard)
        self.synced.set()

    async def _housekeeping(self) -> None:
        client = self.client
        with contextlib.suppress(Exception):
            await maintain_keys(client)

    async def _join(self, room_id: str) -> None:
        async with self._join_sem:
            for _ in range(5):
                response = await self.client.join(room_id)
                if not isinstance(response, JoinError):
                    return
                await asyncio.sleep(0.5)
            logger.warning("%s could not join %s", self.user_id, room_id)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self._sync_once(timeout=30_000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening; deadlines bound waits
                logger.warning("sync of %s failed: %r", self.user_id, exc)
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self._join_tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.client.close()

    # -- events ----------------------------------------------------------------------------

    async def _on_event(self, room: Any, event: Any) -> None:
        source = getattr(event, "source", None)
        if not isinstance(source, dict):
            return
        if isinstance(event, MegolmEvent):
            source = {**source, "type": "m.room.encrypted", "undecryptable": True}
        seen = Seen(time.time(), room.room_id, source)
        if self.keep_events:
            self.seen.append(seen)
        for watch in self.watchers:
            watch(seen)
        if self._waiters:
            still = []
            for waiter in self._waiters:
                if waiter.future.done():
                    continue
                if waiter.predicate(seen):
                    waiter.future.set_result(seen)
                else:
                    still.append(waiter)
            self._waiters = still

    async def wait_for(
        self, predicate: Callable[[Seen], bool], what: str, timeout: float = 60.0
    ) -> Seen:
        """The first event (already seen or still to come) for which ``predicate`` holds."""
        for seen in self.seen:
            if predicate(seen):
                return seen
        future: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(predicate, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BenchError(f"timed out after {timeout:.0f} s: {self.user_id} waiting for "
                             f"{what}") from None

    async def wait_until(self, condition: Callable[[], bool], what: str,
                         timeout: float = 60.0) -> None:
        """Poll a condition on this actor's state (rooms, joins) with a deadline."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s: {self.user_id} waiting for "
                                 f"{what}")
            await asyncio.sleep(0.05)

    # -- actions ---------------------------------------------------------------------------

    async def create_room(self, invite: list[str], *, encrypted: bool = False,
                          direct: bool = True, name: str | None = None,
                          preset: RoomPreset | None = None) -> str:
        initial_state = []
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        for attempt in range(3):
            response = await self.client.room_create(
                is_direct=direct, invite=invite, initial_state=initial_state, name=name,
                preset=preset,
            )
            if isinstance(response, RoomCreateResponse):
                return response.room_id
            await asyncio.sleep(0.5 * (attempt + 1))
        raise BenchError(f"{self.user_id} could not create a room: {response}")

    async def send(self, room_id: str, content: dict[str, Any],
                   event_type: str = "m.room.message") -> tuple[str, float]:
        """Send an event; returns (event id, wall-clock time at which the send returned)."""
        response = await self.client.room_send(room_id, event_type, content,
                                               ignore_unverified_devices=True)
        if not isinstance(response, RoomSendResponse):
            raise BenchError(f"{self.user_id} could not send to {room_id}: {response}")
        return response.event_id, time.time()

    async def say(self, room_id: str, text: str) -> tuple[str, float]:
        return await self.send(room_id, {"msgtype": "m.text", "body": text})

    async def upload(self, data_or_path: bytes | Path, name: str, mimetype: str,
                     encrypt: bool = False) -> dict[str, Any]:
        """Upload a file; returns the media part of a file message (``url`` or ``file``)."""
        if isinstance(data_or_path, Path):
            size = data_or_path.stat().st_size
            if encrypt:
                data = data_or_path.read_bytes()

                def provider(*_: Any) -> Any:
                    return io.BytesIO(data)
            else:
                def provider(*_: Any) -> Any:
                    return data_or_path.open("rb")
        else:
            size = len(data_or_path)
            blob = data_or_path

            def provider(*_: Any) -> Any:
                return io.BytesIO(blob)
        response, keys = await self.client.upload(
            provider, content_type="application/octet-stream" if encrypt else mimetype,
            filename=name, encrypt=encrypt, filesize=size,
        )
        if not isinstance(response, UploadResponse):
            raise BenchError(f"{self.user_id} could not upload {name}: {response}")
        if encrypt:
            assert keys is not None
            return {"file": {**keys, "url": response.content_uri}}
        return {"url": response.content_uri}

    @staticmethod
    def file_content(media: dict[str, Any], name: str, mimetype: str, size: int) -> dict:
        return {"msgtype": "m.file", "body": name, "filename": name,
                "info": {"mimetype": mimetype, "size": size}, **media}

    async def react(self, room_id: str, event_id: str, key: str) -> tuple[str, float]:
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                                    "key": key}}
        return await self.send(room_id, content, "m.reaction")


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat.

    Two readings give how many cores the whole machine kept busy in between: the bench's
    own processes and everyone else's (a shared machine is noisy; the report says how noisy).
    """
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/<pid>/clear_refs``, Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class Child:
    """A bot process: ``argv`` with stdout and stderr appended to ``log_path``."""

    argv: list[str]
    log_path: Path
    ready_marker: bytes
    env: dict[str, str] | None = None
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready_after: float | None = None
    _log_offset: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 120.0) -> float:
        """Start the process and wait for ``ready_marker`` in its log; returns seconds taken."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        deadline = self.started_at + timeout
        while True:
            if self.ready_marker in self.log_since_start():
                self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            if self.process.returncode is not None:
                raise BenchError(f"{self.argv[2:4]} exited with {self.process.returncode}; end "
                                 f"of its log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                await self.stop()
                raise BenchError(f"{self.argv[2:4]} not ready after {timeout:.0f} s; end of "
                                 f"its log:\n{self.log_tail()}")
            await asyncio.sleep(0.01)

    def log_since_start(self) -> bytes:
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_since_start().decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        return proc_memory_kb(self.pid)

    async def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` s. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        return process.returncode


def synapse_pid(base_dir: Path) -> int | None:
    """Synapse's pid: the process whose command line names this server's config file."""
    config = str(base_dir / "homeserver.yaml").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"synapse.app.homeserver" in cmdline and config in cmdline:
            return int(entry.name)
    return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
