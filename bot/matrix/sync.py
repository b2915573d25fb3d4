"""Parcel's own sync loop: at-least-once handling, position saved after each batch.

nio's ``sync_forever`` saves the token before callbacks run and dies when one raises. Here the
batch is handed to ``handle`` first (which handles or durably queues every event), and only
then is ``next_batch`` persisted. Errors back off exponentially, capped, and are logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nio import AsyncClient, SyncResponse

from bot.metrics import Metrics
from bot.retry import Backoff, sleep_or_stop
from bot.store import Store
from bot.tasks import Stopped, unless_stopped

logger = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
BatchHandler = Callable[[SyncResponse, bool], Awaitable[None]]
# Ask for long timelines so a burst between two polls rarely arrives "limited"; the router
# backfills the gap when it still does.
SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}


class SyncLoop:
    """Long-polls the homeserver and hands every batch to ``handle`` before saving the position.

    ``fence`` raises (a :class:`~bot.errors.TransientError`) when this instance may no longer
    save the position (it lost the leader lease).

    ``handle(response, catching_up)`` gets ``catching_up=True`` for the very first sync of a
    fresh store, whose timeline is history from before Parcel existed.
    """

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        handle: BatchHandler,
        *,
        poll_timeout_ms: int = 30_000,
        backoff: Backoff | None = None,
        metrics: Metrics | None = None,
        on_recovered: Callable[[], Awaitable[None]] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._client = client
        self._store = store
        self._handle = handle
        self._poll_timeout_ms = poll_timeout_ms
        self._backoff = backoff or Backoff(cap=60.0)
        self._on_recovered = on_recovered
        self._fence = fence or (lambda: None)
        self.first_sync_done = asyncio.Event()
        self.healthy = False
        self.last_sync_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set."""
        since = await self._store.values.get_value(SYNC_TOKEN_KEY)
        catching_up = since is None
        full_state = True  # nio does not persist rooms: the first sync must rebuild them
        failures = 0
        while not stop.is_set():
            response = await self._poll(stop, since, full_state)
            if response is None:
                break  # stopping: the position of the unfinished poll is simply not saved
            if not isinstance(response, SyncResponse):
                failures += 1
                self.healthy = False
                self._metrics.homeserver_error("sync")
                delay = self._backoff.delay(failures, _retry_after(response))
                logger.warning(
                    "sync failed (%s); retrying in %.1f s (failure %d)",
                    _describe(response),
                    delay,
                    failures,
                )
                await sleep_or_stop(stop, delay)
                continue
            if failures:
                logger.info("sync recovered after %d failures", failures)
                if self._on_recovered is not None:
                    await self._on_recovered()  # the homeserver is back: waiting work goes now
            failures = 0
            self.healthy = True
            await self._crypto_housekeeping()
            await self._handle(response, catching_up)
            self._fence()  # a leader deposed meanwhile must not move the shared position
            await self._store.values.set_value(SYNC_TOKEN_KEY, response.next_batch)
            since = response.next_batch
            full_state = False
            catching_up = False
            self.last_sync_at = asyncio.get_running_loop().time()
            self._metrics.synced()
            self.first_sync_done.set()

    async def _poll(self, stop: asyncio.Event, since: str | None, full_state: bool) -> object:
        """One sync request; None when ``stop`` came first, a failure returned, not raised."""
        request = self._client.sync(
            timeout=0 if full_state else self._poll_timeout_ms,
            since=since,
            full_state=full_state,
            sync_filter=SYNC_FILTER,
        )
        try:
            return await unless_stopped(request, stop)
        except Stopped:
            return None
        except Exception as exc:  # noqa: BLE001 - network trouble: log and retry
            return exc

    async def _crypto_housekeeping(self) -> None:
        try:
            await maintain_keys(self._client)
        except Exception as exc:  # noqa: BLE001 - keys are retried after the next sync
            logger.warning("key maintenance failed: %r", exc)


async def maintain_keys(client: AsyncClient) -> None:
    """What nio's ``sync_forever`` does for E2EE after each sync: upload, query, claim, send."""
    if not client.olm:
        return
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()


def _retry_after(response: object) -> float | None:
    """The wait a 429 answer asked for, in seconds."""
    retry_after_ms = getattr(response, "retry_after_ms", None)
    if isinstance(retry_after_ms, int | float) and not isinstance(retry_after_ms, bool):
        return max(0.0, retry_after_ms / 1000.0)
    return None


def _describe(response: object) -> str:
    if isinstance(response, BaseException):
        return f"{type(response).__name__}: {response}" if str(response) else repr(response)
    message = getattr(response, "message", None)
    status = getattr(response, "status_code", None)
    return f"{status}: {message}" if message else repr(response)
