"""The durable scheduler on a real store (SQLite and PostgreSQL): order, unlimited retries,
failures, restarts."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest_asyncio

from bot.errors import PermanentError, TransientError, Waiting, from_database
from bot.metrics import Metrics
from bot.retry import Backoff
from bot.store import Store, WorkUnit
from bot.work import Scheduler


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    return bool(await result) if inspect.isawaitable(result) else bool(result)


async def no_units(store: Store) -> bool:
    """Whether the store has no work left."""
    return await store.work.work_units() == []


async def tries(store: Store) -> list[int]:
    """How often each waiting unit was tried, oldest first."""
    return [unit.attempts for unit in await store.work.work_units()]


def async_eq(get: Callable[[], Awaitable[object]], expected: object
             ) -> Callable[[], Awaitable[bool]]:
    """A predicate: whether what ``get()`` returns equals ``expected``."""
    async def holds() -> bool:
        return await get() == expected
    return holds


FAST = Backoff(initial=0.001, cap=0.01)


class Running:
    """A scheduler running in the background on its own stop event."""

    def __init__(self, store: Store, backoff: Backoff = FAST) -> None:
        self.metrics = Metrics()
        self.scheduler = Scheduler(store, backoff, self.metrics)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.scheduler.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest_asyncio.fixture
async def store(store_database: Path | str) -> AsyncIterator[Store]:
    opened = await Store.open(store_database)
    yield opened
    await opened.close()


@pytest_asyncio.fixture
async def running(store: Store) -> AsyncIterator[Running]:
    runner = Running(store)
    yield runner
    await runner.close()


async def until(predicate: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _holds(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_lane_runs_in_order_through_transient_failures(store: Store,
                                                               running: Running) -> None:
    """The head of a lane failing transiently holds the rest; all then run once, in order."""
    done: list[int] = []
    failures = {"left": 5}

    async def send(unit: WorkUnit) -> None:
        if unit.payload["n"] == 1 and failures["left"]:
            failures["left"] -= 1
            raise TransientError("homeserver down")
        done.append(unit.payload["n"])

    running.scheduler.register("send", send)
    for n in range(1, 6):
        await running.scheduler.submit("send", f"m{n}", {"n": n}, lane="session:1")
    running.start()
    await until(lambda: len(done) == 5, "all five sends")
    assert done == [1, 2, 3, 4, 5]
    # The run function returns before the unit is recorded done: wait for that too.
    await until(lambda: no_units(store), "the units to be recorded done")


async def test_transient_failures_are_retried_without_a_limit(store: Store,
                                                              running: Running) -> None:
    """Fifty transient failures in a row are ridden out; the work is done once at the end."""
    attempts: list[int] = []

    async def flaky(unit: WorkUnit) -> None:
        attempts.append(unit.attempts)
        if len(attempts) <= 50:
            raise ConnectionResetError("reset by peer")

    running.scheduler.register("flaky", flaky)
    await running.scheduler.submit("flaky", "k", {})
    running.start()
    await until(lambda: len(attempts) == 51, "the 51st attempt")
    await until(lambda: no_units(store), "the unit's end")
    assert attempts == list(range(51))


async def test_a_permanent_failure_ends_the_unit_tells_and_frees_the_lane(
    store: Store, running: Running
) -> None:
    """A permanent error calls give_up with it once, removes the unit, and the lane goes on."""
    done: list[str] = []
    told: list[tuple[str, str]] = []

    async def send(unit: WorkUnit) -> None:
        if unit.key == "bad":
            raise PermanentError("the bot is not allowed to post there", code="M_FORBIDDEN")
        done.append(unit.key)

    async def give_up(unit: WorkUnit, error: PermanentError) -> None:
        told.append((unit.key, error.code))

    running.scheduler.register("send", send, give_up)
    for key in ("first", "bad", "after"):
        await running.scheduler.submit("send", key, {}, lane="session:1")
    running.start()
    await until(lambda: done == ["first", "after"], "the unit after the failed one")
    assert told == [("bad", "M_FORBIDDEN")]
    # The run function returns before the unit is recorded done: wait for that too.
    await until(lambda: no_units(store), "the units to be recorded done")


async def test_an_unexpected_exception_is_a_permanent_internal_failure(
    store: Store, running: Running
) -> None:
    """A bug in a handler ends that unit as "internal" and the scheduler keeps running."""
    told: list[str] = []
    done: list[str] = []

    async def buggy(unit: WorkUnit) -> None:
        if unit.key == "bug":
            raise KeyError("missing")
        done.append(unit.key)

    async def give_up(unit: WorkUnit, error: PermanentError) -> None:
        told.append(error.code)

    running.scheduler.register("job", buggy, give_up)
    await running.scheduler.submit("job", "bug", {}, lane="l")
    await running.scheduler.submit("job", "fine", {}, lane="l")
    running.start()
    await until(lambda: done == ["fine"], "the next unit")
    assert told == ["internal"]


async def test_a_unit_asked_for_again_while_it_runs_runs_again(store: Store,
                                                               running: Running) -> None:
    """Submitting the key of a running unit makes it run once more after this run."""
    runs: list[int] = []
    gate = asyncio.Event()

    async def look(unit: WorkUnit) -> None:
        runs.append(unit.generation)
        if len(runs) == 1:
            await gate.wait()

    running.scheduler.register("offer", look)
    await running.scheduler.submit("offer", "offer:1", {}, lane="offer:1")
    running.start()
    await until(lambda: runs == [0], "the first run")
    await running.scheduler.submit("offer", "offer:1", {}, lane="offer:1")
    gate.set()
    await until(lambda: runs == [0, 1], "the second run")
    await until(lambda: no_units(store), "the unit's end")


async def test_work_left_by_a_stopped_scheduler_runs_after_a_restart(store: Store) -> None:
    """Units still waiting when the process stops run when a new scheduler starts on the store."""
    first = Running(store, Backoff(initial=60.0, cap=60.0))

    async def down(unit: WorkUnit) -> None:
        raise TransientError("homeserver down")

    first.scheduler.register("send", down)
    await first.scheduler.submit("send", "m1", {"n": 1}, lane="s")
    await first.scheduler.submit("send", "m2", {"n": 2}, lane="s")
    first.start()
    await until(async_eq(lambda: tries(store), [1, 0]), "the failed attempt")
    await first.close()

    second = Running(store)
    done: list[int] = []

    async def up(unit: WorkUnit) -> None:
        done.append(unit.payload["n"])

    second.scheduler.register("send", up)
    second.start()
    await second.scheduler.hurry()  # as the sync loop does when the homeserver answers again
    try:
        await until(lambda: done == [1, 2], "both sends after the restart")
    finally:
        await second.close()


async def test_hurry_runs_waiting_units_at_once(store: Store) -> None:
    """Units postponed for long run at once when hurried (keys arrived, homeserver back)."""
    runner = Running(store, Backoff(initial=3600.0, cap=3600.0))
    state = {"up": False}
    done: list[str] = []

    async def decrypt(unit: WorkUnit) -> None:
        if not state["up"]:
            raise TransientError("no keys yet")
        done.append(unit.key)

    runner.scheduler.register("decrypt", decrypt)
    await runner.scheduler.submit("decrypt", "d1", {})
    runner.start()
    try:
        await until(async_eq(lambda: tries(store), [1]),
                    "the first failure")
        state["up"] = True
        await runner.scheduler.hurry("decrypt")
        await until(lambda: done == ["d1"], "the hurried unit")
    finally:
        await runner.close()


async def test_backlog_reports_waiting_units_and_retries_are_counted(store: Store) -> None:
    """The backlog gauge sees waiting units; each transient failure counts as a retry."""
    runner = Running(store, Backoff(initial=3600.0, cap=3600.0))

    async def down(unit: WorkUnit) -> None:
        raise TransientError("down")

    runner.scheduler.register("send", down)
    await runner.scheduler.submit("send", "a", {})
    await runner.scheduler.submit("send", "b", {})
    runner.start()
    try:
        await until(async_eq(lambda: tries(store), [1, 1]), "two failures")
        # The store records the postponement before the counter moves; on PostgreSQL the
        # second unit's write may still be in flight when both rows read 1.
        retries = 'parcel_homeserver_retries_total{kind="send"} 2.0'
        await until(lambda: retries in runner.metrics.exposition().decode(), "two retries")
        count, oldest = runner.scheduler.backlog()
        assert count == 2 and oldest >= 0.0
        text = runner.metrics.exposition().decode()
        assert "parcel_work_units_waiting 2.0" in text
    finally:
        await runner.close()


async def test_a_waiting_unit_is_woken_when_what_it_waits_for_finishes(store: Store,
                                                                       running: Running) -> None:
    """A unit that waits for another is parked without counting a failure, and runs as soon
    as that unit finishes, long before its wait's bound."""
    done: list[str] = []
    opened = asyncio.Event()

    async def relay(unit: WorkUnit) -> None:
        if not opened.is_set():
            raise Waiting("the agent room is not there yet", key="open:1", at_most=3600.0)
        done.append(unit.key)

    async def open_room(unit: WorkUnit) -> None:
        await opened.wait()
        done.append(unit.key)

    running.scheduler.register("relay", relay)
    running.scheduler.register("open", open_room)
    await running.scheduler.submit("relay", "relay:1", {})
    running.start()
    await until(async_eq(lambda: _waits(store), [("relay:1", "open:1", 0)]), "the parked relay")
    await running.scheduler.submit("open", "open:1", {})
    opened.set()
    await until(lambda: done == ["open:1", "relay:1"], "the relay woken by the room")
    assert "parcel_homeserver_retries_total{" not in running.metrics.exposition().decode()


async def _waits(store: Store) -> list[tuple[str, str | None, int]]:
    return [(u.key, u.waits_for, u.attempts) for u in await store.work.work_units()]


class FlakyWork:
    """The store's work table failing for the next ``failures`` calls of the loop's queries,
    as asyncpg fails while PostgreSQL restarts."""

    def __init__(self, store: Store, failures: int) -> None:
        self.left = failures
        self._due = store.work.due_work
        store.work.due_work = self._due_work  # type: ignore[method-assign]

    async def _due_work(self, now: float, limit: int) -> list[WorkUnit]:
        if self.left > 0:
            self.left -= 1
            raise from_database(asyncpg.CannotConnectNowError("the database system is "
                                                             "starting up"), "the store")
        return await self._due(now, limit)


async def test_the_loop_outlives_store_failures_and_reports_them(store: Store,
                                                                caplog) -> None:
    """Store errors fail rounds of the loop, never the loop: the outage is logged once, shown
    by the loop's health, and work submitted meanwhile runs once the store answers."""
    runner = Running(store)
    done: list[str] = []

    async def send(unit: WorkUnit) -> None:
        done.append(unit.key)

    runner.scheduler.register("send", send)
    flaky = FlakyWork(store, failures=20)
    health = runner.scheduler._health
    caplog.set_level(logging.INFO, logger="bot.supervision")
    runner.start()
    try:
        await until(lambda: flaky.left < 15, "failing rounds")
        assert any("the database is unreachable" in p for p in health.problems())
        await runner.scheduler.submit("send", "m1", {})
        await until(lambda: done == ["m1"], "the unit submitted during the outage")
        await until(lambda: health.problems() == [], "the outage to end")
        assert runner.task is not None and not runner.task.done()
    finally:
        await runner.close()
    failures = [r for r in caplog.records if "transient failure (database)" in r.getMessage()]
    recoveries = [r for r in caplog.records if "work loop recovered" in r.getMessage()]
    assert len(failures) == 1 and len(recoveries) == 1
