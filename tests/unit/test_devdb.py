"""The test PostgreSQL's fault helpers fail a real client the way a production database does."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bot.devdb import PostgresServer


@pytest.fixture
def server(own_postgres: PostgresServer) -> PostgresServer:
    """A PostgreSQL of its own: these tests break it."""
    return own_postgres


# What a client's query on a connection the server cut raises: asyncpg reports it in several
# ways, depending on when the server's goodbye arrives (InternalClientError among them).
CUT = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


async def _select(url: str, value: int) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT $1::int", value))
    finally:
        await connection.close()


async def test_restart_cuts_open_connections_and_comes_back(server: PostgresServer) -> None:
    """After restart() a connection opened before fails, a new one answers on the same port."""
    url = server.url(server.create_database(), with_password=True)
    before = await asyncpg.connect(url)
    port = server.port
    await asyncio.to_thread(server.restart)
    with pytest.raises(CUT):
        await before.fetchval("SELECT 1")
    before.terminate()
    assert server.port == port
    assert await _select(url, 2) == 2


async def test_a_stopped_server_refuses_and_answers_once_started(
    server: PostgresServer,
) -> None:
    """While stopped, connecting is refused; after outage() the same URL works again."""
    url = server.url(server.create_database(), with_password=True)
    await asyncio.to_thread(server.stop)
    assert not server.running
    with pytest.raises(OSError):
        await _select(url, 1)
    await asyncio.to_thread(server.start)
    assert await _select(url, 3) == 3
    await asyncio.to_thread(server.outage, 0.2)
    assert await _select(url, 4) == 4


async def test_freeze_makes_queries_and_connects_hang_until_thaw(
    server: PostgresServer,
) -> None:
    """A frozen server neither fails nor answers (open connection and new ones alike); once
    thawed, the query that waited completes."""
    url = server.url(server.create_database(), with_password=True)
    connection = await asyncpg.connect(url)
    stopped = server.freeze()
    assert server.frozen and stopped[0] == server.pids()[0]
    assert set(server.pids()) <= set(stopped), "a process of the cluster escaped the freeze"
    waiting = asyncio.create_task(connection.fetchval("SELECT 5"))
    connecting = asyncio.create_task(_select(url, 6))
    done, _ = await asyncio.wait({waiting, connecting}, timeout=1.5)
    assert not done, f"frozen, yet these finished: {[t.result() for t in done]}"
    server.thaw()
    assert not server.frozen
    assert await asyncio.wait_for(waiting, 30) == 5
    assert await asyncio.wait_for(connecting, 30) == 6
    await connection.close()


async def test_terminate_connections_fails_each_clients_next_query(
    server: PostgresServer,
) -> None:
    """terminate_connections() kills the database's backends: the next query on them fails."""
    database = server.create_database()
    url = server.url(database, with_password=True)
    connection = await asyncpg.connect(url)
    assert await asyncio.to_thread(server.terminate_connections, database) == 1
    with pytest.raises(CUT):
        await connection.fetchval("SELECT 1")
    connection.terminate()
    assert await _select(url, 7) == 7
