"""Helpers for integration tests: wait on conditions with deadlines, never with bare sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from nio import AsyncClient, SyncError

from bot.devserver import RegisteredUser

# Without it a burst of more than ten events between two syncs comes back "limited".
TIMELINE_FILTER = {"room": {"timeline": {"limit": 200}}}

Predicate = Callable[[], bool | Awaitable[bool]]
"""A condition to wait for: a plain or async function without arguments."""


async def _holds(predicate: Predicate) -> bool:
    """Evaluate ``predicate``, awaiting it when it is async."""
    result = predicate()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def wait_for(
    predicate: Predicate,
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await _holds(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(interval)


async def sync_until(
    client: AsyncClient,
    predicate: Predicate,
    timeout: float = 20.0,
    what: str = "condition",
) -> None:
    """Run ``client.sync(timeout=1000)`` until ``predicate`` is true or ``timeout`` s pass.

    Event callbacks registered on the client run during each sync, so the predicate can look
    at what they collected as well as at the client's rooms. The whole wait is bounded, even
    when nio is silently retrying a connection that fails.
    """

    async def loop() -> None:
        while not await _holds(predicate):
            response = await client.sync(timeout=1000, sync_filter=TIMELINE_FILTER)
            if isinstance(response, SyncError):
                # Don't spin on an error answer; the deadline still bounds the wait.
                await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout:.1f} s syncing {client.user_id} until {what}"
        ) from None


class MakeUser(Protocol):
    """Signature of the ``make_user`` fixture in ``tests/conftest.py``."""

    def __call__(
        self,
        prefix: str = "user",
        *,
        displayname: str | None = None,
        admin: bool = False,
        password: str | None = None,
    ) -> Awaitable[RegisteredUser]: ...


class MakeClient(Protocol):
    """Signature of the ``make_client`` fixture in ``tests/conftest.py``."""

    def __call__(self, user: RegisteredUser, encrypted: bool = False) -> Awaitable[AsyncClient]: ...
