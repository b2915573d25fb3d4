"""The durable scheduler: every side effect on the homeserver is a unit of work in the store.

A unit is a row (kind, key, lane, payload, attempts, next attempt time, last error). One loop
runs the units that are due; a unit whose work raises a :class:`~bot.errors.TransientError`
is tried again after the shared backoff, without a limit on attempts, until it succeeds or its
handler finds its purpose gone; a :class:`~bot.errors.PermanentError` ends it, and the kind's
``give_up`` tells the person waiting. Units sharing a lane run one at a time, oldest first (a
session's messages keep their order; an offer's steps never overlap). New work, keys that
arrive and a homeserver that comes back wake the loop at once. A restart resumes from the
table as it is.

A unit that must wait for another (its session's agent room being created, a stranger's
removal, its offers settling) raises :class:`~bot.errors.Waiting` naming that unit's key: it
is parked, not counted as a failure, and woken the moment that unit finishes (or after the
wait's bound, for what nobody announces). The loop itself runs under
:func:`~bot.supervision.supervise`: a store that fails (a PostgreSQL restart) delays the work
and never ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.errors import PermanentError, TransientError, Waiting, from_exception
from bot.metrics import Metrics
from bot.retry import Backoff
from bot.store import Store, WorkUnit
from bot.supervision import LoopHealth, supervise

logger = logging.getLogger(__name__)

Run = Callable[[WorkUnit], Awaitable[None]]
GiveUp = Callable[[WorkUnit, PermanentError], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    """What a kind of unit does (``run``) and who is told when it fails for good."""

    run: Run
    give_up: GiveUp | None = None


class Scheduler:
    """Runs due work units, at most ``concurrency`` at a time, lanes in order."""

    def __init__(
        self,
        store: Store,
        backoff: Backoff,
        metrics: Metrics | None = None,
        *,
        concurrency: int = 16,
        clock: Callable[[], float] = time.time,
        health: LoopHealth | None = None,
    ) -> None:
        self._store = store
        self._health = health or LoopHealth()
        self._backoff = backoff
        self._metrics = metrics or Metrics()
        self._concurrency = concurrency
        self._clock = clock
        self._kinds: dict[str, Kind] = {}
        self._wakeup = asyncio.Event()
        self._busy_lanes: set[str] = set()
        self._busy_units: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: tuple[int, float | None] = (0, None)
        self._checked_at = 0.0  # the time _start_due last looked for due units
        self._metrics.watch_backlog(self.backlog)

    def register(self, kind: str, run: Run, give_up: GiveUp | None = None) -> None:
        """Declare a kind of unit: ``run(unit)`` does the work, ``give_up`` reports failure."""
        self._kinds[kind] = Kind(run, give_up)

    async def submit(
        self,
        kind: str,
        key: str,
        payload: dict[str, Any],
        *,
        lane: str | None = None,
        handled_event: str | None = None,
    ) -> None:
        """Durably add a unit (or ask an existing one with this key to run again) and wake up."""
        await self._store.work.submit_work(kind, key, payload, lane=lane,
                                           handled_event=handled_event, now=self._clock())
        self._wakeup.set()

    async def hurry(self, kind: str | None = None) -> None:
        """Try waiting units (of one kind) now: the homeserver is back, or keys arrived."""
        if await self._store.work.hurry_work(self._clock(), kind):
            self._wakeup.set()

    def backlog(self) -> tuple[int, float]:
        """(units waiting, age in seconds of the oldest), as of the scheduler's last look.

        Synchronous for the metrics scrape; the run loop refreshes it every time it wakes up
        (every submit and every finished unit wakes it).
        """
        count, oldest = self._backlog
        return count, 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    async def refresh_backlog(self) -> None:
        """Read the backlog from the store now."""
        self._backlog = await self._store.work.work_backlog()

    async def wake(self, key: str) -> None:
        """Wake the units waiting for ``key`` (what they waited for happened elsewhere)."""
        if await self._store.work.wake_work(key, self._clock()):
            self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run due units until ``stop``; then cancel what still runs (it is all resumable).

        A failing store fails one round, which is retried with the backoff: units started
        before go on, and nothing is lost (every unit is still in the table).
        """

        async def round_() -> None:
            self._wakeup.clear()
            await self._start_due()
            await self.refresh_backlog()
            self._health.progressed("work")
            await self._sleep(stop)

        try:
            await supervise("work", round_, stop, self._health, self._backoff)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _start_due(self) -> None:
        free = self._concurrency - len(self._tasks)
        if free <= 0:
            self._checked_at = self._clock()
            return
        self._checked_at = self._clock()
        candidates = await self._store.work.due_work(self._checked_at,
                                                     free + len(self._busy_units))
        for unit in candidates:
            if free <= 0:
                break
            if unit.id in self._busy_units or (unit.lane is not None
                                               and unit.lane in self._busy_lanes):
                continue
            self._busy_units.add(unit.id)
            if unit.lane is not None:
                self._busy_lanes.add(unit.lane)
            task = asyncio.create_task(self._drive(unit), name=f"work-{unit.kind}-{unit.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            free -= 1

    async def _sleep(self, stop: asyncio.Event) -> None:
        due = await self._store.work.next_work_at()
        delay = 60.0 if due is None else min(60.0, max(0.0, due - self._clock()))
        if delay <= 0 and due is not None and due <= self._checked_at:
            # Due when _start_due looked, so its lane is busy or every slot is taken: a
            # finishing unit wakes us. (One that fell due since then runs at once.)
            delay = 60.0
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(delay, 0.0),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drive(self, unit: WorkUnit) -> None:
        """Run ``unit``, then the following units of its lane while they are due.

        The store failing around a unit (recording its end or its retry) leaves the unit in
        the table as it was: it runs again once the store is back (every unit is idempotent).
        """
        current: WorkUnit | None = unit
        try:
            while current is not None:
                if current.id != unit.id:
                    self._busy_units.add(current.id)
                finished = await self._attempt(current)
                self._busy_units.discard(current.id)
                if not finished or current.lane is None:
                    break
                following = await self._store.work.lane_head(current.lane)
                current = (
                    following if following is not None and following.next_at <= self._clock()
                    else None
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the loop's health says it, once per outage
            self._health.failed("work", from_exception(exc, f"recording {unit.kind} work"), exc)
        finally:
            self._busy_units.discard(unit.id)
            if current is not None:
                self._busy_units.discard(current.id)
            if unit.lane is not None:
                self._busy_lanes.discard(unit.lane)
            self._wakeup.set()

    async def _attempt(self, unit: WorkUnit) -> bool:
        """One try at a unit; True when it is over (done or given up), False when postponed."""
        kind = self._kinds.get(unit.kind)
        if kind is None:
            logger.error("work unit %d has unknown kind %r; dropped", unit.id, unit.kind)
            await self._store.work.drop_work(unit)
            return True
        try:
            await kind.run(unit)
        except asyncio.CancelledError:
            raise
        except Waiting as waiting:
            await self._wait(unit, waiting)
            return False
        except Exception as exc:  # noqa: BLE001 - classified right here, once
            error = from_exception(exc, unit.kind)
            if isinstance(error, TransientError):
                await self._postpone(unit, error)
                return False
            assert isinstance(error, PermanentError)
            await self._give_up(kind, unit, error, exc)
            return True
        if not await self._store.work.finish_work(unit):
            logger.debug("work unit %d (%s) was asked for again while it ran", unit.id,
                         unit.key)
        return True

    async def _wait(self, unit: WorkUnit, waiting: Waiting) -> None:
        await self._store.work.wait_work(unit, self._clock() + waiting.at_most, waiting.reason,
                                         waiting.key)
        logger.debug("%s (%s) waits for %s: %s", unit.kind, unit.key, waiting.key or "a while",
                     waiting.reason)

    async def _postpone(self, unit: WorkUnit, error: TransientError) -> None:
        attempts = unit.attempts + 1
        delay = self._backoff.delay(attempts, error.retry_after)
        await self._store.work.postpone_work(unit, self._clock() + delay, error.reason)
        self._metrics.retry(unit.kind)
        log = logger.warning if attempts <= 3 or attempts % 10 == 0 else logger.info
        log("%s (%s) failed, attempt %d: %s; retrying in %.1f s", unit.kind, unit.key,
            attempts, error.reason, delay)

    async def _give_up(self, kind: Kind, unit: WorkUnit, error: PermanentError,
                       exc: Exception) -> None:
        self._metrics.work_failed(unit.kind, error.code)
        if error.code == "internal":
            logger.error("%s (%s) failed: %s", unit.kind, unit.key, error.reason, exc_info=exc)
        else:
            logger.error("%s (%s) failed for good: %s", unit.kind, unit.key, error.reason)
        if kind.give_up is not None:
            try:
                await kind.give_up(unit, error)
            except Exception:  # noqa: BLE001 - reporting must not keep the unit alive
                logger.exception("telling about the failure of %s (%s) failed", unit.kind,
                                 unit.key)
        # If it was asked for again meanwhile (an offer changed state), that run still happens.
        await self._store.work.finish_work(unit)
