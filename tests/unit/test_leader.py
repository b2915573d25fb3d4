"""The leader lease on a real PostgreSQL server: one holder, takeover after a lapse, fencing
(of the lease itself and of the store's writes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from bot.devdb import PostgresServer
from bot.leader import Lease, NotLeader
from bot.store import Store

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


async def test_a_leader_that_cannot_renew_says_so_until_a_renewal_gets_through(
    postgres_url: str,
) -> None:
    """While renewals fail the leader still leads on the lease's remaining time, but reports
    the database unreachable (``/health`` says degraded); a renewal that gets through ends
    that."""
    stop = asyncio.Event()
    refuse = False

    async def connect() -> asyncpg.Connection:
        if refuse:
            raise ConnectionRefusedError("connection refused")
        return await asyncpg.connect(postgres_url)

    lease = Lease(connect, ttl=8.0, holder="cut-off leader")
    assert await lease.acquire(stop)
    assert lease.reachable
    holding = asyncio.create_task(lease.hold(stop))
    try:
        refuse = True
        await lease._drop_connection()  # the server went away under it
        await until(lambda: not lease.reachable, deadline=lease.renew_every * 3)
        assert lease.role == "leader"  # still trusted for what is left of the lease
        refuse = False
        await until(lambda: lease.reachable, deadline=lease.renew_every * 3)
        assert lease.role == "leader"
    finally:
        stop.set()
        await holding
        await lease.release()


# -- term fencing of the store's writes ----------------------------------------------------------


async def test_a_write_from_an_older_term_fails_and_the_current_terms_succeeds(
    leases: Callable[..., Lease], postgres_url: str
) -> None:
    """After a takeover the old leader's store writes fail with NotLeader; the new one's land."""
    stop = asyncio.Event()
    old_store, new_store = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        old, new = leases(holder="old"), leases(holder="new")
        assert await old.acquire(stop)
        old_store.write_as(old.name, old.token)
        await old_store.values.set_value("written by", "the first term")
        await old.release()  # deposed (as if its lease had lapsed); it does not know yet
        assert await new.acquire(stop)
        new_store.write_as(new.name, new.token)

        with pytest.raises(NotLeader):
            await old_store.values.set_value("written by", "the deposed leader")
        with pytest.raises(NotLeader):
            await old_store.sessions.create_session("!customer:test", "@carol:test", "Carol")
        await new_store.values.set_value("written by", "the second term")
        assert await old_store.values.get_value("written by") == "the second term"  # reads work
        assert await new_store.sessions.sessions() == []  # the refused transaction rolled back
    finally:
        await old_store.close()
        await new_store.close()


async def test_a_transaction_open_across_the_takeover_fails_at_its_commit(
    leases: Callable[..., Lease], postgres_url: str
) -> None:
    """A transaction that began under the old term and commits after the takeover is refused."""
    stop = asyncio.Event()
    store = await Store.open(postgres_url)
    try:
        old, new = leases(holder="old"), leases(holder="new")
        assert await old.acquire(stop)
        store.write_as(old.name, old.token)
        with pytest.raises(NotLeader):
            async with store.transaction():
                await store.values.set_value("half", "written")
                await old.release()
                assert await new.acquire(stop)
        assert await store.values.get_value("half") is None
    finally:
        await store.close()


async def test_writing_as_nobody_is_refused_and_an_unfenced_store_is_not(
    leases: Callable[..., Lease], postgres_url: str
) -> None:
    """A process that stopped leading writes nothing; a store never given a term (a tool) is
    not fenced, whoever holds the lease."""
    stop = asyncio.Event()
    stepped_down, tool = await Store.open(postgres_url), await Store.open(postgres_url)
    try:
        leader = leases(holder="leader")
        assert await leader.acquire(stop)
        stepped_down.write_as(leader.name, leader.token)
        await stepped_down.values.set_value("k", "led")
        stepped_down.write_as(leader.name, None)
        with pytest.raises(NotLeader):
            await stepped_down.values.set_value("k", "after stepping down")
        await tool.values.set_value("k", "a tool's write")
        assert await tool.values.get_value("k") == "a tool's write"
    finally:
        await stepped_down.close()
        await tool.close()


async def test_every_table_of_the_store_is_fenced(postgres_url: str,
                                                  postgres: PostgresServer) -> None:
    """Each of Parcel's tables carries the term trigger; the lease and schema tables do not."""
    store = await Store.open(postgres_url)
    await store.close()
    database = postgres_url.rsplit("/", 1)[1]
    fenced = set(postgres.sql(database, "SELECT tgrelid::regclass FROM pg_trigger "
                                        "WHERE tgname = 'parcel_term'").split())
    tables = set(postgres.sql(database, "SELECT tablename FROM pg_tables "
                                        "WHERE schemaname = current_schema()").split())
    assert fenced == tables - {"parcel_leader", "parcel_schema"}
    assert {"work", "offers", "sessions", "outbox", "kv", "panels"} <= fenced
