"""The leader lease on a real PostgreSQL server: one holder, takeover after a lapse, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from bot.devdb import PostgresServer
from bot.leader import Lease, NotLeader

TTL = 3.0  # the shortest lease allowed, so takeovers happen within seconds


@pytest.fixture
async def leases(postgres_url: str) -> AsyncIterator[Callable[..., Lease]]:
    """Factory for leases on one fresh database; all released afterwards."""
    made: list[Lease] = []

    def make(**kwargs: object) -> Lease:
        lease = Lease(lambda: asyncpg.connect(postgres_url), ttl=TTL, **kwargs)  # type: ignore[arg-type]
        made.append(lease)
        return lease

    yield make
    for lease in made:
        await lease.release()


async def until(condition: Callable[[], bool], deadline: float = 15.0) -> None:
    """Wait until ``condition()`` holds, failing after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_one_holder_and_takeover_after_release(leases: Callable[..., Lease]) -> None:
    """The first instance leads, the second waits; a release hands over with a new token."""
    stop = asyncio.Event()
    first, second = leases(holder="a"), leases(holder="b")
    assert await first.acquire(stop)
    assert first.role == "leader" and first.token == 1
    waiting = asyncio.create_task(second.acquire(stop))
    await asyncio.sleep(TTL / 2)
    assert not waiting.done() and second.role == "standby"
    await first.release()
    assert await asyncio.wait_for(waiting, TTL)
    assert second.token == 2 and second.role == "leader" and first.role == "standby"


async def test_dead_leader_is_replaced_after_its_lease(leases: Callable[..., Lease]) -> None:
    """A leader that stops renewing (killed) is replaced once its lease has run out, not before."""
    stop = asyncio.Event()
    dead, standby = leases(holder="dead"), leases(holder="standby")
    assert await dead.acquire(stop)
    died = time.monotonic()
    assert await asyncio.wait_for(standby.acquire(stop), TTL + 5)
    assert time.monotonic() - died >= TTL - 0.5  # the database never grants it early
    assert standby.token == 2


async def test_paused_leader_stops_before_the_takeover(leases: Callable[..., Lease]) -> None:
    """A leader paused past its lease distrusts it by its own clock, before anyone takes over."""
    stop = asyncio.Event()
    paused, standby = leases(holder="paused"), leases(holder="standby")
    assert await paused.acquire(stop)
    taking = asyncio.create_task(standby.acquire(stop))
    await until(lambda: not paused.valid(), deadline=TTL)
    assert not taking.done(), "the standby took over while the old leader still trusted its lease"
    assert paused.lost.is_set()
    with pytest.raises(NotLeader):
        paused.check()
    assert await asyncio.wait_for(taking, TTL + 2)
    # Resumed, it renews: the row is the standby's now, so it stays deposed.
    await paused.hold(stop)
    assert paused.role == "standby" and standby.role == "leader"


async def test_renewals_keep_the_lease_across_a_lost_connection(
    leases: Callable[..., Lease], postgres: PostgresServer, postgres_url: str
) -> None:
    """A leader whose database connection is cut reconnects and keeps its lease."""
    stop = asyncio.Event()
    leader, standby = leases(holder="leader"), leases(holder="standby")
    assert await leader.acquire(stop)
    holding = asyncio.create_task(leader.hold(stop))
    taking = asyncio.create_task(standby.acquire(stop))
    database = postgres_url.rsplit("/", 1)[1]
    for _ in range(3):
        postgres.sql(database, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        await asyncio.sleep(TTL / 2)
    assert leader.role == "leader" and not taking.done()
    stop.set()
    await holding
    await taking


async def test_outvoted_leader_learns_at_the_next_renewal(
    leases: Callable[..., Lease], postgres: PostgresServer, postgres_url: str
) -> None:
    """A renewal that finds another holder in the row loses the lease at once."""
    stop = asyncio.Event()
    leader = leases(holder="leader")
    assert await leader.acquire(stop)
    database = postgres_url.rsplit("/", 1)[1]
    postgres.sql(database, "UPDATE parcel_leader SET holder = 'usurper', token = token + 1")
    await asyncio.wait_for(leader.hold(stop), TTL)
    assert leader.lost.is_set() and leader.role == "standby"


async def test_standby_waits_out_an_unreachable_database(leases: Callable[..., Lease]) -> None:
    """A standby whose database refuses connections keeps trying until it is stopped."""
    stop = asyncio.Event()

    async def refused() -> asyncpg.Connection:
        raise ConnectionRefusedError("connection refused")

    lease = Lease(refused, ttl=TTL, holder="cut-off")
    waiting = asyncio.create_task(lease.acquire(stop))
    await asyncio.sleep(2.5 * lease.poll_every)
    assert not waiting.done()
    stop.set()
    assert await waiting is False
    assert lease.role == "standby"
