"""Parcel's own sync loop: at-least-once handling, position saved after each batch.

nio's ``sync_forever`` saves the token before callbacks run and dies when one raises. Here the
batch is handed to ``handle`` first (which handles or durably queues every event), and only
then is ``next_batch`` persisted. A batch whose handling failed for now (the store restarting)
is kept and handed over again — not polled again, since nio has already taken in its keys and
state — until it is handled; the position never moves past an event that was not. The loop
runs under :func:`~bot.supervision.supervise`: failures of the homeserver or the store back
off, are logged once per outage, and never end it.

Only a fresh store's first sync asks for the rooms' full state. A restart (or a standby taking
over) goes on from the saved position: ``restore`` rebuilds the rooms from the bot's own
records first (:meth:`bot.matrix.rooms.RoomDirectory.restore`), and the incremental sync
brings whatever happened meanwhile — a customer who left while the bot was down included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nio import AsyncClient, SyncResponse

from bot.errors import from_exception, from_response
from bot.metrics import Metrics
from bot.retry import Backoff
from bot.store import Store
from bot.supervision import LoopHealth, supervise
from bot.tasks import Stopped, unless_stopped

logger = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "sync_token"
BatchHandler = Callable[[SyncResponse, bool], Awaitable[None]]
# Only what the bot reads. Long timelines, so a burst between two polls rarely arrives
# "limited" (the router backfills the gap when it still does). Of the rooms' state only the
# members, encryption and name, and members lazily: those of the people who speak (the others
# are read with /joined_members when they matter). No presence (each presence event costs nio
# a loop over every room), typing, receipts or account data: the bot reads none of them.
ROOM_STATE_READ = ["m.room.member", "m.room.encryption", "m.room.name"]
SYNC_FILTER = {
    "room": {
        "timeline": {"limit": 200},
        "state": {"types": ROOM_STATE_READ, "lazy_load_members": True,
                  "include_redundant_members": True},
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    },
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
}
_UNREAD = object()  # the saved position has not been read yet


class SyncLoop:
    """Long-polls the homeserver and hands every batch to ``handle`` before saving the position.

    ``fence`` raises (a :class:`~bot.errors.TransientError`) when this instance may no longer
    save the position (it lost the leader lease).

    ``handle(response, catching_up)`` gets ``catching_up=True`` for the very first sync of a
    fresh store, whose timeline is history from before Parcel existed. ``restore`` runs once
    before the first sync from a saved position (it rebuilds what nio does not persist).
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
        health: LoopHealth | None = None,
        restore: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._client = client
        self._store = store
        self._handle = handle
        self._poll_timeout_ms = poll_timeout_ms
        self._backoff = backoff or Backoff(cap=60.0)
        self._on_recovered = on_recovered
        self._fence = fence or (lambda: None)
        self._health = health or LoopHealth()
        self._restore = restore
        self.first_sync_done = asyncio.Event()
        self.healthy = False
        self.last_sync_at: float | None = None
        self._since: str | None | object = _UNREAD  # read from the store on the first round
        self._catching_up = False
        self._first = True  # the first poll returns at once, whatever there is to say
        self._restored = False  # ``restore`` has run (or is not needed)
        self._pending: SyncResponse | None = None  # polled, not handled yet
        self._failing = False  # the last poll failed

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until ``stop`` is set."""
        await supervise("sync", lambda: self._round(stop), stop, self._health, self._backoff)

    async def _round(self, stop: asyncio.Event) -> None:
        """One poll (unless a batch is still to be handled), its handling, the saved position."""
        if self._since is _UNREAD:
            since = await self._store.values.get_value(SYNC_TOKEN_KEY)
            self._since, self._catching_up = since, since is None
            self._restored = since is None or self._restore is None
        if self._pending is None:
            # The rooms are rebuilt while the first sync is on its way (both are needed only
            # once the batch is handled); a failed rebuild is tried again before handling.
            restoring = None if self._restored else asyncio.ensure_future(self._restore_once())
            try:
                response = await self._poll(stop)
            finally:
                if restoring is not None:
                    await asyncio.wait([restoring])
                    if not restoring.cancelled():
                        restoring.exception()  # a failure is seen: the rebuild runs again below
            if response is None:
                return  # stopping: the position of the unfinished poll is simply not saved
            self._pending = response
            self.healthy = True
            if self._failing:  # the supervisor logs the recovery; here the work is told
                self._failing = False
                if self._on_recovered is not None:
                    await self._on_recovered()  # the homeserver is back: waiting work goes now
            await self._crypto_housekeeping()
        response = self._pending
        if not self._restored:
            await self._restore_once()
        await self._handle(response, self._catching_up)
        self._fence()  # a leader deposed meanwhile must not move the shared position
        await self._store.values.set_value(SYNC_TOKEN_KEY, response.next_batch)
        self._pending = None
        self._since = response.next_batch
        self._first = False
        self._catching_up = False
        self.last_sync_at = asyncio.get_running_loop().time()
        self._metrics.synced()
        self._health.progressed("sync")
        self.first_sync_done.set()

    async def _restore_once(self) -> None:
        """Rebuild what nio does not persist (see ``restore``), once per start."""
        if not self._restored and self._restore is not None:
            await self._restore()
            self._restored = True

    async def _poll(self, stop: asyncio.Event) -> SyncResponse | None:
        """One sync request; None when ``stop`` came first. A failure is raised classified
        (the supervisor backs off and logs it once per outage)."""
        since = self._since if isinstance(self._since, str) else None
        request = self._client.sync(
            timeout=0 if self._first else self._poll_timeout_ms,
            since=since,
            full_state=since is None,  # a fresh store: nothing to go on from
            sync_filter=SYNC_FILTER,
        )
        try:
            response = await unless_stopped(request, stop)
        except Stopped:
            return None
        except Exception as exc:  # noqa: BLE001 - classified here, once
            self._failed()
            raise from_exception(exc, "syncing") from exc
        if not isinstance(response, SyncResponse):
            self._failed()
            raise from_response(response, "syncing")
        return response

    def _failed(self) -> None:
        self._failing = True
        self.healthy = False
        self._metrics.homeserver_error("sync")

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
