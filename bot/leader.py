"""Which of several Parcel instances sharing one PostgreSQL database does the work.

Every instance with the same configuration starts; one holds the **lease**, a row in
``parcel_leader`` that names the holder and its expiry. The leader renews it every
``renew_every`` seconds; the others try every ``poll_every`` seconds to take a lease whose
expiry has passed. All times in the row are the database server's (``now()``), so the
instances' clocks never matter.

A leader trusts its own lease only until ``renewal sent + ttl - margin`` on its monotonic clock:
the database set the expiry *after* the renewal was sent, so the leader stops believing a moment
before any standby may take over. A leader that is paused (SIGSTOP), cut off from the database
or out-voted learns it when it next looks (:meth:`Lease.valid` before every request to the
homeserver), stops sending, and :meth:`Lease.lost` fires. The ``token`` grows by one with every
new holder (a fencing token) and is logged, so two leaders are told apart in the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bot.errors import NotLeader, database_transient

__all__ = ["Lease", "NotLeader", "instance_name"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS parcel_leader (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
)
"""

# Take the lease if nobody holds it, or if its holder let it expire. Returns the new token.
_TAKE = """
INSERT INTO parcel_leader AS lease (name, holder, token, expires_at)
VALUES ($1, $2, 1, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
    SET holder = EXCLUDED.holder, token = lease.token + 1, expires_at = EXCLUDED.expires_at
    WHERE lease.expires_at < now() OR lease.holder = EXCLUDED.holder
RETURNING token
"""

_RENEW = """
UPDATE parcel_leader SET expires_at = now() + make_interval(secs => $4)
WHERE name = $1 AND holder = $2 AND token = $3
RETURNING token
"""

_RELEASE = """
UPDATE parcel_leader SET expires_at = now() - interval '1 second'
WHERE name = $1 AND holder = $2 AND token = $3
"""

# Errors that mean "the database cannot be reached now", not "the lease is someone else's":
# the one classification (bot/errors.py) decides; a permanent one (a bug, a refused grant)
# is raised.

_HOLDER = "SELECT holder, token, expires_at > now() FROM parcel_leader WHERE name = $1"


def instance_name() -> str:
    """A name for this process that no other instance has: host, pid and a random suffix."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class Lease:
    """The leader lease in one PostgreSQL database, held over a dedicated connection.

    ``connect`` opens that connection (``asyncpg.connect`` with the configured URL and
    password); it is reopened whenever it is lost.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        ttl: float = 8.0,
        name: str = "parcel",
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 3.0:
            raise ValueError("the lease must last at least 3 s")
        self._connect = connect
        self.ttl = ttl
        self.name = name
        self.holder = holder or instance_name()
        self.renew_every = ttl / 4
        self.poll_every = min(1.0, ttl / 8)
        # Room for a request already under way when the lease runs out, and for clock rates.
        self.margin = max(1.0, ttl / 4)
        self._clock = clock
        self._conn: asyncpg.Connection | None = None
        self.token: int | None = None
        self._valid_until = 0.0
        self.lost = asyncio.Event()
        """Set once a held lease is gone; the leader must stop and start over as a standby."""
        self.reachable = True
        """Whether the last look at the lease reached the database (a standby that cannot
        reach it could not take over; a leader that cannot renew will lose it: ``/health``
        says so)."""

    # -- state -----------------------------------------------------------------------------

    @property
    def role(self) -> str:
        """``leader`` while the lease is held and trusted, else ``standby``."""
        return "leader" if self.valid() else "standby"

    def valid(self) -> bool:
        """Whether this instance holds the lease now, by its own clock (no database query)."""
        if self.token is None or self._clock() >= self._valid_until:
            if self.token is not None:
                self._lose("its lease ran out before it could be renewed")
            return False
        return True

    def check(self) -> None:
        """Raise :class:`NotLeader` unless :meth:`valid`: call before every homeserver request."""
        if not self.valid():
            raise NotLeader("another instance may hold the lease")

    # -- acquiring and holding -------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait as a standby until this instance holds the lease; False if ``stop`` came first."""
        logged_holder: str | None = None
        while not stop.is_set():
            try:
                token = await self._take()
                self.reachable = True
            except Exception as exc:  # noqa: BLE001 - classified below
                _unless_unreachable(exc)
                if self.reachable:
                    logger.warning("standby: the database is unreachable (%s); retrying", exc)
                self.reachable = False
                await self._drop_connection()
                token = None
            if token is not None:
                logger.info("took the leader lease (token %d) as %s", token, self.holder)
                return True
            holder = await self._current_holder()
            if holder is not None and holder != logged_holder:
                logger.info("standby: %s leads; waiting for its lease to lapse", holder)
                logged_holder = holder
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_every)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew the lease until ``stop`` or until it is lost (then :attr:`lost` is set)."""
        while not stop.is_set() and not self.lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_every)
            if stop.is_set() or not self.valid():
                break
            await self._renew()

    async def release(self) -> None:
        """Give the lease up at a clean shutdown, so a standby takes over at once."""
        token, self.token = self.token, None
        if token is None:
            return
        try:
            conn = await self._connection()
            await conn.execute(_RELEASE, self.name, self.holder, token)
            logger.info("released the leader lease (token %d)", token)
        except Exception as exc:  # noqa: BLE001 - at worst the lease lapses by itself
            logger.warning("could not release the lease (%s); it lapses in %.0f s", exc, self.ttl)
        finally:
            await self._drop_connection()

    # -- internals -------------------------------------------------------------------------

    async def _take(self) -> int | None:
        conn = await self._connection()
        sent = self._clock()
        token = await asyncio.wait_for(
            conn.fetchval(_TAKE, self.name, self.holder, self.ttl), self.renew_every
        )
        if token is None:
            return None
        self.token = int(token)
        self._valid_until = sent + self.ttl - self.margin
        self.lost.clear()
        return self.token

    async def _renew(self) -> None:
        assert self.token is not None
        sent = self._clock()
        try:
            conn = await self._connection()
            renewed = await asyncio.wait_for(
                conn.fetchval(_RENEW, self.name, self.holder, self.token, self.ttl),
                self.renew_every,
            )
        except Exception as exc:  # noqa: BLE001 - classified below
            _unless_unreachable(exc)
            # Still trusted until _valid_until; the next renewal may get through.
            self.reachable = False
            logger.warning("could not renew the lease (%s); trusted for %.1f s more", exc,
                           max(0.0, self._valid_until - self._clock()))
            await self._drop_connection()
            return
        self.reachable = True
        if renewed is None:
            self._lose("another instance took the lease")
            return
        self._valid_until = sent + self.ttl - self.margin

    def _lose(self, why: str) -> None:
        token, self.token = self.token, None
        logger.error("lost the leader lease (token %s): %s; stopping all sending", token, why)
        self.lost.set()

    async def _current_holder(self) -> str | None:
        try:
            conn = await self._connection()
            row = await conn.fetchrow(_HOLDER, self.name)
        except Exception as exc:  # noqa: BLE001 - classified below
            _unless_unreachable(exc)
            return None
        return None if row is None or not row[2] else f"{row[0]} (token {row[1]})"

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncio.wait_for(self._connect(), self.renew_every * 2)
            try:
                async with conn.transaction():
                    # Two instances starting together must not both create the table.
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('parcel_leader'))")
                    await conn.execute(_SCHEMA)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()


def _unless_unreachable(exc: Exception) -> None:
    """Re-raise ``exc`` unless the one classification calls it a transient database failure."""
    if not database_transient(exc):
        raise exc
