"""Tracked background tasks: long work leaves the sync loop, and shutdown waits for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Stopped(Exception):
    """Raised by :func:`unless_stopped` when the stop event won the race."""


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``awaitable``, abandoning (cancelling) it as soon as ``stop`` is set.

    A long poll can take 30 s; shutting down must not wait for it. Raises :class:`Stopped`.
    """
    request = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({request, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not request.done():
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
        raise Stopped
    return request.result()


class TaskGroup:
    """Runs coroutines as tasks, logs their failures, and can cancel or drain them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start ``coro`` in the background; an exception is logged, never lost or fatal."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Let running tasks finish for up to ``timeout`` seconds, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
