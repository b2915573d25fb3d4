"""The durable scheduler survives its database failing under it (issue 19): PostgreSQL restarted,
its connections killed, or down for seconds while units run; afterwards it runs what was
submitted, gives nothing up, and its loop is still the one that was started."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
import pytest_asyncio

from bot.devdb import PostgresServer
from bot.errors import TransientError
from bot.metrics import Metrics
from bot.retry import Backoff
from bot.store import Store, WorkUnit
from bot.work import Scheduler
from tests.helpers import wait_for

# Retries 0.25-0.5 s apart: the loop wakes up on its own often, but not so often that the test
# cannot take the lock between two wake-ups.
PACED = Backoff(initial=0.5, cap=0.5)


@pytest.fixture
def server(own_postgres: PostgresServer) -> PostgresServer:
    """A PostgreSQL of its own: these tests break it."""
    return own_postgres


class Harness:
    """A store on ``server``, a scheduler running on it, and what its units did."""

    def __init__(self, server: PostgresServer, database: str, store: Store) -> None:
        self.server = server
        self.database = database
        self.url = server.url(database, with_password=True)
        self.store = store
        self.metrics = Metrics()
        self.scheduler = Scheduler(store, PACED, self.metrics)
        self.ran: Counter[str] = Counter()
        self.submitted: list[str] = []
        self.flaky_may_succeed = False
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

        async def note(unit: WorkUnit) -> None:
            self.ran[unit.key] += 1

        async def flaky(unit: WorkUnit) -> None:
            # Keeps the loop waking up on a timer (its retry), so that the loop's own queries
            # are the ones caught by the lock and the fault.
            if not self.flaky_may_succeed:
                raise TransientError("not yet")
            self.ran[unit.key] += 1

        self.scheduler.register("note", note)
        self.scheduler.register("flaky", flaky)

    async def submit(self, kind: str, key: str, lane: str | None = None) -> None:
        """Submit as a caller would: its own store errors are retried (they are not what is
        tested here; the scheduler is)."""
        async def accepted() -> bool:
            try:
                await self.scheduler.submit(kind, key, {}, lane=lane)
            except Exception:  # noqa: BLE001 - the database is still coming back
                return False
            return True

        await wait_for(accepted, timeout=60, what=f"the store taking unit {key}", interval=0.2)
        self.submitted.append(key)

    async def blocked_reads(self, holder: asyncpg.Connection) -> list[str]:
        """The store's SELECTs on ``work`` waiting for the lock ``holder`` holds (the
        scheduler's loop reads; units only write)."""
        # Inside a transaction pg_stat_activity is a snapshot taken at its first read.
        await holder.execute("SELECT pg_stat_clear_snapshot()")
        rows = await holder.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return [r["query"] for r in rows
                if r["query"].lstrip().upper().startswith("SELECT") and "work" in r["query"]]

    def given_up(self) -> dict[str, float]:
        """parcel_work_failed_total by kind and code, non-zero entries only."""
        out = {}
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "parcel_work_failed_total" and sample.value:
                    out[f"{sample.labels.get('kind')}/{sample.labels.get('code')}"] = sample.value
        return out

    def loop_state(self) -> str:
        """'running', or how the scheduler's loop ended."""
        assert self.task is not None
        if not self.task.done():
            return "running"
        if self.task.cancelled():
            return "cancelled"
        return f"ended: {self.task.exception()!r}"


@pytest_asyncio.fixture
async def harness(server: PostgresServer) -> AsyncIterator[Harness]:
    database = server.create_database()
    store = await Store.open(server.url(database, with_password=True))
    h = Harness(server, database, store)
    h.task = asyncio.create_task(h.scheduler.run(h.stop))
    try:
        yield h
    finally:
        h.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(h.task, 30)
        await store.close()


def _restart(h: Harness) -> None:
    h.server.restart()


def _terminate(h: Harness) -> None:
    assert h.server.terminate_connections(h.database) >= 1, "the store had no connection"


def _outage(h: Harness) -> None:
    h.server.outage(3.0)


FAULTS: dict[str, Callable[[Harness], None]] = {
    "pg_ctl restart -m fast": _restart,
    "its connections terminated": _terminate,
    "down for 3 s": _outage,
}


async def _hold_the_loop_in_a_read(h: Harness, holder: asyncpg.Connection) -> None:
    """Lock the work table (in an open transaction of ``holder``) just after the flaky unit's
    retry was recorded, so that the loop's next wake-up (the retry's, in 0.25-0.5 s) reads
    behind the lock: its query is in flight inside PostgreSQL when the fault comes."""
    for _ in range(10):
        attempts = await holder.fetchval("SELECT attempts FROM work WHERE key = 'flaky'")

        async def retried(before: int = attempts) -> bool:
            now = await holder.fetchval("SELECT attempts FROM work WHERE key = 'flaky'")
            return bool(now != before)

        await wait_for(retried, timeout=10, what="the flaky unit's next retry", interval=0.01)
        lock = holder.transaction()
        await lock.start()
        await holder.execute("LOCK TABLE work IN ACCESS EXCLUSIVE MODE")
        deadline = asyncio.get_running_loop().time() + 2.0
        while asyncio.get_running_loop().time() < deadline:
            if await h.blocked_reads(holder):
                return
            await asyncio.sleep(0.05)
        await lock.rollback()  # the lock caught the unit, not the loop: again
    raise AssertionError("the scheduler's loop never read the work table behind the lock "
                         f"(its loop: {h.loop_state()})")


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_the_scheduler_keeps_working_after_its_database_failed(
    harness: Harness, fault: str,
) -> None:
    """PostgreSQL fails while the scheduler's loop is inside a query (held there by a table
    lock) and units wait in a lane; afterwards every unit submitted before, during and after
    runs, the loop is the same one still running, and no unit was given up."""
    h = harness
    await h.submit("note", "before")
    await wait_for(lambda: h.ran["before"] >= 1, what="the unit submitted before the fault")
    await h.submit("flaky", "flaky", lane="lane-1")
    await h.submit("note", "behind-in-lane", lane="lane-1")
    holder = await asyncpg.connect(h.url)
    await _hold_the_loop_in_a_read(h, holder)

    async def ticks() -> None:
        for n in range(20):
            await h.submit("note", f"tick-{n}")
            await asyncio.sleep(0.02)

    ticking = asyncio.create_task(ticks())
    await asyncio.to_thread(FAULTS[fault], h)  # the blocked reads fail with the connection
    holder.terminate()
    await ticking
    h.flaky_may_succeed = True
    await h.submit("note", "after")

    async def all_ran() -> bool:
        return all(h.ran[key] >= 1 for key in h.submitted)

    try:
        await wait_for(all_ran, timeout=30, what="every submitted unit to run")
    except AssertionError:
        missing = [key for key in h.submitted if not h.ran[key]]
        left: list[object]
        try:
            left = [(u.key, u.attempts, u.last_error) for u in await h.store.work.work_units()]
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            left = [repr(exc)]
        raise AssertionError(
            f"after the database failed ({fault}) these units never ran: {missing}; the "
            f"scheduler's loop: {h.loop_state()}; left in the work table: {left}"
        ) from None

    async def table_empty() -> bool:
        return await h.store.work.work_units() == []

    await wait_for(table_empty, timeout=30, what="the work table to empty")
    assert h.given_up() == {}, f"units given up after {fault}: {h.given_up()}"
    assert h.loop_state() == "running", f"the scheduler's loop {h.loop_state()}"
    # At least once is the contract (a unit whose finish could not be recorded runs again);
    # more than twice would be a retry storm.
    storms = {key: n for key, n in h.ran.items() if n > 2}
    assert not storms, f"units run more than twice: {storms}"
