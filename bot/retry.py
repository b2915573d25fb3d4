"""The one backoff policy: capped exponential with jitter, honouring the server's retry_after.

The scheduler, the sync loop and the start-up connection all wait with it, so an outage is
ridden out the same way everywhere: quickly at first, then at most ``cap`` apart, never in
lockstep with other instances (jitter), and never sooner than a 429 asked for.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot.errors import TransientError, from_exception

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: ``initial`` doubling per attempt up to ``cap``, jittered."""

    initial: float = 1.0
    cap: float = 300.0
    jitter: float = 0.5  # the delay is drawn from [base * (1 - jitter), base]
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure)."""
        exponent = min(max(attempt, 1) - 1, 62)
        base = min(self.cap, self.initial * 2.0**exponent)
        jittered = base * (1.0 - self.jitter * self.rand())
        if retry_after is not None:
            # The server said when: never sooner; a little spread so instances don't collide.
            return max(retry_after, 0.0) + min(jittered, 1.0) * 0.1
        return jittered


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds or until ``stop`` is set; True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(delay, 0.0))
    except TimeoutError:
        return False
    return True


async def until_done(
    action: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event, backoff: Backoff
) -> T | None:
    """Run ``action`` until it succeeds, for start-up steps that come before the scheduler.

    Transient failures wait out the backoff and try again, without a limit; a permanent one
    is raised. Returns None when ``stop`` is set first.
    """
    attempt = 0
    while not stop.is_set():
        try:
            return await action()
        except Exception as exc:  # noqa: BLE001 - classified; permanent ones are raised
            error = from_exception(exc, what)
            if not isinstance(error, TransientError):
                raise
        attempt += 1
        delay = backoff.delay(attempt, error.retry_after)
        # The first few and then every tenth: an hour's outage is not a thousand lines.
        log = logger.warning if attempt <= 3 or attempt % 10 == 0 else logger.debug
        log("%s; retrying in %.0f s (attempt %d)", error.reason, delay, attempt)
        await sleep_or_stop(stop, delay)
    return None
