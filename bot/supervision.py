"""The loops that run forever survive their dependencies' outages, and say how they are.

The scheduler, the maintenance loop and the sync loop each run under :func:`supervise`: an
exception ends one round, never the loop; it is classified once (``bot/errors.py``), waited
out with the shared backoff, and the loop starts its next round. An outage is logged once when
it begins (with its cause), once more every so often while it lasts, and once when it ends —
never once per attempt. :class:`LoopHealth` keeps, per loop, the time of its last progress and
its current outage; ``/health`` reads it to say ``degraded`` with the reason, and the metrics
expose both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.errors import Source, TransientError, WorkError, from_exception
from bot.retry import Backoff, sleep_or_stop

logger = logging.getLogger(__name__)

# How long a loop may go without progress before /health calls it stalled. The scheduler and
# the maintenance loop wake at least once a minute, the sync loop every long poll (30 s).
STALLED_AFTER = 120.0
# While an outage lasts, it is logged again this often (not at every attempt).
REMIND_EVERY = 300.0

ProgressHook = Callable[[str, float], None]
FailureHook = Callable[[str, Source], None]


@dataclass
class Outage:
    """A loop's run of failures: since when, how many, and the latest cause."""

    since: float
    failures: int
    error: WorkError
    reminded_at: float


class LoopHealth:
    """Each supervised loop's last progress and current outage, by loop name.

    ``on_progress(loop, unix_time)`` and ``on_failure(loop, source)`` feed the metrics.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 on_progress: ProgressHook | None = None,
                 on_failure: FailureHook | None = None) -> None:
        self._clock = clock
        self._on_progress = on_progress
        self._on_failure = on_failure
        self._progress: dict[str, float] = {}
        self._outages: dict[str, Outage] = {}

    def started(self, loop: str) -> None:
        """A loop begins (its stall clock starts now)."""
        self._progress[loop] = self._clock()

    def stopped(self, loop: str) -> None:
        """A loop ended on purpose (shutdown, or the lease was lost): it is no longer watched."""
        self._progress.pop(loop, None)
        self._outages.pop(loop, None)

    def progressed(self, loop: str) -> None:
        """A loop finished a round; an outage it was in is over."""
        now = self._clock()
        self._progress[loop] = now
        if self._on_progress is not None:
            self._on_progress(loop, time.time())
        outage = self._outages.pop(loop, None)
        if outage is not None:
            logger.warning("%s loop recovered after %.0f s and %d failed attempts (last: %s)",
                           loop, now - outage.since, outage.failures, outage.error.reason)

    def failed(self, loop: str, error: WorkError, exc: BaseException | None = None) -> int:
        """A round of ``loop`` failed with ``error`` (classified from ``exc``); returns the
        failures of this outage. Its first failure is logged, with the traceback for a bug."""
        now = self._clock()
        if self._on_failure is not None:
            self._on_failure(loop, error.source)
        outage = self._outages.get(loop)
        if outage is None:
            self._outages[loop] = Outage(now, 1, error, now)
            kind = "transient" if isinstance(error, TransientError) else "unexpected"
            logger.error("%s loop: %s failure (%s): %s; retrying with backoff", loop, kind,
                         error.source.value, error.reason,
                         exc_info=exc if error.source is Source.INTERNAL else None)
            return 1
        outage.failures += 1
        outage.error = error
        if now - outage.reminded_at >= REMIND_EVERY:
            outage.reminded_at = now
            logger.error("%s loop: still failing after %.0f s and %d attempts: %s", loop,
                         now - outage.since, outage.failures, error.reason)
        return outage.failures

    def problems(self) -> list[str]:
        """Why the bot is degraded now (empty when it is not), one phrase per problem."""
        now = self._clock()
        found: list[str] = []
        for loop, outage in sorted(self._outages.items()):
            what = {
                Source.DATABASE: "the database is unreachable",
                Source.HOMESERVER: "the homeserver is unreachable",
                Source.DISK: "a data_dir problem",
                Source.INTERNAL: "an unexpected error",
            }[outage.error.source]
            found.append(f"{what} ({loop} loop failing for {now - outage.since:.0f} s: "
                         f"{outage.error.reason})")
        for loop, at in sorted(self._progress.items()):
            if loop not in self._outages and now - at > STALLED_AFTER:
                found.append(f"the {loop} loop stalled for {now - at:.0f} s")
        return found


async def supervise(loop: str, round_: Callable[[], Awaitable[None]], stop: asyncio.Event,
                    health: LoopHealth, backoff: Backoff) -> None:
    """Run ``round_`` again and again until ``stop``; a failure waits out the backoff.

    ``round_`` is one round of the loop (it reports its own progress to ``health``, which also
    ends an outage). Cancellation ends the loop; any exception is classified and logged by
    ``health``, once per outage.
    """
    health.started(loop)
    try:
        while not stop.is_set():
            try:
                await round_()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified and logged once per outage
                error = from_exception(exc, f"{loop} loop")
                failures = health.failed(loop, error, exc)
                retry_after = error.retry_after if isinstance(error, TransientError) else None
                await sleep_or_stop(stop, backoff.delay(failures, retry_after))
    finally:
        health.stopped(loop)
