"""Composition root: builds the client, store and services, runs them, stops them cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

import asyncpg
from aiohttp import web
from nio import AsyncClient, KeysUploadResponse
from nio.store import MatrixStore

from bot import i18n
from bot.attachments import sealed
from bot.attachments.offers import OfferService
from bot.attachments.panel import PanelService
from bot.config import Config
from bot.datadir import make_private
from bot.documents import Documents, FileDocuments, StoreDocuments
from bot.errors import from_exception
from bot.keys import EncryptionKey, encryption_key
from bot.leader import Lease, NotLeader
from bot.matrix.client import Sender, call, connect
from bot.matrix.crosssign import CrossSigningError, CrossSigningStatus, ensure_cross_signed
from bot.matrix.cryptostore import protect_stores
from bot.matrix.media import MediaClient
from bot.matrix.pgstore import close_crypto_store, postgres_crypto_store
from bot.matrix.profile import apply_profile
from bot.matrix.rooms import RoomDirectory
from bot.matrix.sync import SyncLoop
from bot.metrics import Metrics
from bot.retry import Backoff, sleep_or_stop, until_done
from bot.router import Router
from bot.sessions import language
from bot.sessions.service import SessionService
from bot.store import DELIVERY_RECORDS_KEPT, SessionState, Store
from bot.store.db import IDLE_TRANSACTION_LIMIT
from bot.supervision import LoopHealth, supervise
from bot.tasks import TaskGroup
from bot.work import Scheduler

logger = logging.getLogger(__name__)


class Parcel:
    """The running bot. ``await Parcel(config).run(stop)`` until ``stop`` is set."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.client: AsyncClient | None = None
        self.sync: SyncLoop | None = None
        self.ready = asyncio.Event()
        self.cross_signing: CrossSigningStatus | None = None
        self.metrics = Metrics()
        self.loops = LoopHealth(on_progress=self.metrics.loop_progressed,
                                on_failure=self.metrics.loop_failed)
        """The supervised loops' progress and outages (``/health`` reads them)."""
        self.work: Scheduler | None = None
        self._backoff = Backoff(cap=config.retry.max_backoff)
        self.key: EncryptionKey | None = None
        self.panels: PanelService | None = None
        self._tasks = TaskGroup()
        self.documents: Documents = FileDocuments(config.data_dir)
        self.lease: Lease | None = None
        """Set when instances share a PostgreSQL database: only its holder works."""
        self._crypto_store: type[MatrixStore] | None = None  # None: nio's SQLite in data_dir

    async def run(self, stop: asyncio.Event) -> None:
        """Open the store, then do the work until ``stop`` is set; then shut down.

        With a :attr:`lease` (instances sharing PostgreSQL), wait as a standby until this
        instance holds it, work while it does, and go back to waiting when it is lost.
        """
        config = self.config
        # The catalogs in use, compiled now: a broken translation fails at start-up.
        i18n.load_all(tuple(dict.fromkeys((config.language, config.agents.language,
                                           *config.languages))))
        make_private(config.data_dir)  # before anything is written there
        self.key = encryption_key(config)
        (config.data_dir / "crypto").mkdir(exist_ok=True)
        if config.database is None:
            protect_stores(config.data_dir / "crypto", self.key.pickle_key)
        opened = await self._open_store(stop)
        if opened is None:
            return  # stopped before the database could be reached
        self.store = store = opened
        if config.database is not None:
            url, password = config.database, config.database_password
            self.lease = Lease(lambda: asyncpg.connect(url, password=password),
                               ttl=config.leader_lease)
        self.documents, self._crypto_store = device_state(
            config, store, fence=None if self.lease is None else self.lease.check)
        await sealed.secure_leftovers(store, config.data_dir / "media")
        if self.lease is not None:
            store.write_as(self.lease.name, None)  # a standby writes nothing until it leads
        metrics_server: web.AppRunner | None = None
        try:
            if config.metrics is not None:
                metrics_server = await self.metrics.serve(
                    config.metrics.listen_host, config.metrics.listen_port, self.health,
                    config.metrics.token,
                )
            if self.lease is None:
                await self._lead(stop)
            else:
                await self._lead_while_leader(self.lease, stop)
        finally:
            if metrics_server is not None:
                await metrics_server.cleanup()
            await store.close()

    async def _lead_while_leader(self, lease: Lease, stop: asyncio.Event) -> None:
        """Stand by until the lease is ours, lead until it is lost or ``stop``, and again."""
        while not stop.is_set():
            self.metrics.set_leader(False)
            logger.info("standby: waiting for the leader lease (%s)", lease.holder)
            if not await lease.acquire(stop):
                return
            assert self.store is not None
            # Every store write of this leadership carries its term; the database refuses
            # them once another instance holds the lease (bot/store/db.py).
            self.store.write_as(lease.name, lease.token)
            term = asyncio.Event()  # this leadership ends at ``stop`` or when the lease is lost
            ending = asyncio.create_task(_first_of(stop, lease.lost, then=term))
            renewing = asyncio.create_task(lease.hold(term))
            self.metrics.set_leader(True)
            try:
                await self._lead(term)
            except NotLeader:
                if not lease.lost.is_set():
                    raise
            finally:
                self.store.write_as(lease.name, None)
                term.set()
                await renewing
                ending.cancel()
                if lease.lost.is_set():
                    logger.error("no longer the leader: stopped; standing by again")
                else:
                    await lease.release()
                self.ready.clear()
                self.sync = None

    async def _lead(self, stop: asyncio.Event) -> None:
        """Connect, resume pending work, and sync until ``stop`` is set; then shut down."""
        config = self.config
        store = self.store
        assert store is not None
        media: MediaClient | None = None
        try:
            connected = await self._connect(stop)
            if connected is None:
                return  # stopped before the homeserver could be reached
            self.client = client = connected
            if config.encryption:
                await self._establish_identity(client, stop)
            try:
                await until_done(lambda: apply_profile(client, store, config.profile),
                                 "setting the bot's profile", stop, self._backoff)
            except Exception as exc:  # noqa: BLE001 - how it looks must not stop it working
                logger.warning("could not apply the profile: %s", from_exception(exc,
                               "setting the bot's profile").reason)
            # Bound to this leadership: a transfer is cut when the lease is lost.
            media = MediaClient(config.homeserver, self._access_token,
                                config.media.transfer_timeout, fence=self.lease)
            sender = Sender(client, store)
            rooms = RoomDirectory(client)
            self.work = work = Scheduler(store, self._backoff, self.metrics, health=self.loops)
            sessions = SessionService(config, store, client, sender, rooms, work, self.metrics)
            offers = OfferService(config, store, sender, media, rooms, work, self.metrics)
            sessions.offers = offers
            panels = PanelService(store, client, sender, rooms, work,
                                  reader=partial(language.reader, config))
            offers.on_change = panels.changed
            offers.holds = panels.holds  # the panels wait while a card or a file is on its way
            sessions.panels = panels
            self.panels = panels
            router = Router(config, store, client, rooms, sessions, offers, work)
            self.sync = SyncLoop(client, store, router.handle_batch, metrics=self.metrics,
                                 backoff=Backoff(cap=min(60.0, config.retry.max_backoff)),
                                 on_recovered=work.hurry,
                                 fence=None if self.lease is None else self.lease.check,
                                 health=self.loops, restore=rooms.restore)

            async def resume() -> None:
                open_sessions = await store.sessions.sessions(SessionState.OPEN)
                self.metrics.set_sessions_open(len(open_sessions))
                await offers.resume()
                await panels.resume()

            await until_done(resume, "resuming the work in the store", stop, self._backoff)
            self._tasks.spawn(self._maintenance_loop(offers, stop), name="maintenance")
            self._tasks.spawn(self._start_work(sessions, work, stop), name="work")
            logger.info("Parcel running as %s (device %s)", config.user_id, client.device_id)
            await self.sync.run(stop)
        finally:
            logger.info("shutting down")
            # Every piece of work is durable and resumable, so waiting long buys nothing.
            await self._tasks.drain(timeout=2.0)
            if media is not None:
                await media.close()
            if self.client is not None:
                await self.client.close()
                close_crypto_store(self.client)
                self.client = None

    def _access_token(self) -> str:
        """The token for media requests: given out only while this instance may send."""
        if self.lease is not None:
            self.lease.check()
        assert self.client is not None
        return str(self.client.access_token)

    async def _open_store(self, stop: asyncio.Event) -> Store | None:
        """Open the store, waiting out a PostgreSQL server that is not up yet.

        A refused login or a missing database is a configuration problem and ends the run.
        """
        config = self.config
        return await until_done(
            lambda: Store.open(config.database, config.data_dir,
                               password=config.database_password,
                               idle_transaction_limit=IDLE_TRANSACTION_LIMIT),
            "opening the store", stop, self._backoff,
        )

    async def _connect(self, stop: asyncio.Event) -> AsyncClient | None:
        """Log in, waiting out a homeserver that is not up yet (as after a host reboot).

        A refused login is a configuration problem and ends the run; an unreachable
        homeserver is retried with the shared backoff until ``stop``.
        """
        key = self.key
        assert key is not None
        fence = None if self.lease is None else self.lease.check
        return await until_done(
            lambda: connect(self.config, key.pickle_key, self.documents, fence,
                            crypto_store=self._crypto_store),
            f"connecting to {self.config.homeserver}", stop, self._backoff,
        )

    async def _establish_identity(self, client: AsyncClient, stop: asyncio.Event) -> None:
        """Upload device keys and cross-sign the device, so Element trusts the bot.

        Waits out an unreachable homeserver; an identity on the server whose seeds are
        missing here stops start-up (``IdentityMismatch``): only the admin may replace it.
        """
        key = self.key
        assert key is not None

        async def establish() -> CrossSigningStatus:
            if client.should_upload_keys:
                await call("uploading the device keys", client.keys_upload(),
                           KeysUploadResponse)
            return await ensure_cross_signed(client, self.documents, self.config.password,
                                             seeds_key=key.seeds_key)

        status = await until_done(establish, "establishing the bot's identity", stop,
                                  self._backoff)
        if status is None:
            return
        self.cross_signing = status
        if self.cross_signing.cross_signed:
            logger.info("device cross-signed (%s)", self.cross_signing.detail)
        else:
            logger.error("the bot's device is NOT cross-signed: %s; Element users who exclude "
                         "insecure devices will not see its messages", self.cross_signing.detail)

    def health(self) -> tuple[bool, str]:
        """What ``/health`` answers: (healthy, status).

        ``ok`` (``leader`` with a lease) once the first sync is done while every loop makes
        progress; ``standby`` while another instance leads and the lease can still be taken
        over; otherwise ``degraded: <reasons>`` (the database or the homeserver unreachable, a
        loop stalled) or ``starting: …``, which a load balancer or probe sees as 503.
        """
        problems = self.loops.problems()
        if self.lease is not None and not self.lease.valid():
            if self.lease.reachable:
                return True, "standby"
            return False, "degraded: the database is unreachable (standby cannot take over)"
        if self.lease is not None and not self.lease.reachable:
            # Still leading on the lease's remaining time, but it cannot be renewed.
            problems = ["the database is unreachable (the leader lease cannot be renewed)",
                        *problems]
        if problems:
            return False, "degraded: " + "; ".join(problems)
        if not self.ready.is_set():
            return False, "starting: the first sync has not completed"
        assert self.sync is not None
        if not self.sync.healthy:
            return False, "degraded: the homeserver is unreachable"
        return True, "ok" if self.lease is None else "leader"

    async def _start_work(self, sessions: SessionService, work: Scheduler,
                          stop: asyncio.Event) -> None:
        """After the first sync (nio knows the rooms only then), run the durable work; the
        tidy-up of closed sessions' rooms goes beside it (it reads every closed session and
        every joined room, which must not hold up the first message after a restart)."""
        assert self.sync is not None
        await self.sync.first_sync_done.wait()

        async def tidy() -> None:
            tidied = await until_done(sessions.tidy_closed_rooms,
                                      "leaving closed sessions' rooms", stop, self._backoff)
            if tidied:
                logger.info("leaving %d rooms of closed sessions", tidied)

        self._tasks.spawn(tidy(), name="tidy")
        self.ready.set()
        logger.info("first sync done; ready")
        await work.run(stop)

    async def _maintenance_loop(self, offers: OfferService, stop: asyncio.Event) -> None:
        """Expire overdue offers, purge old closed sessions, prune delivery records."""
        store = self.store
        assert store is not None
        purge_after = self.config.retention.purge_after
        interval = max(1.0, min(30.0, self.config.policy.offer_ttl / 4, (purge_after or 60) / 2))

        async def round_() -> None:
            await offers.expire_due()
            if purge_after is not None:
                purged = await store.sessions.purge_closed_sessions(time.time() - purge_after)
                if purged:
                    logger.info("retention: purged %d closed sessions", purged)
            handled, sent = await store.outbox.prune_delivery_records(
                time.time() - DELIVERY_RECORDS_KEPT
            )
            if handled or sent:
                logger.info("pruned %d handled events and %d sent-message records", handled,
                            sent)
            self.loops.progressed("maintenance")
            await sleep_or_stop(stop, interval)

        await supervise("maintenance", round_, stop, self.loops, self._backoff)


async def reset_identity(config: Config) -> CrossSigningStatus:
    """The admin's explicit decision: give the bot a new cross-signing identity.

    Logs in as the saved device, publishes fresh cross-signing keys through password auth and
    signs the device with them. Everyone who verified the bot must verify it again. With
    PostgreSQL, stop every instance first: the seeds and the crypto store are shared.
    """
    if not config.encryption:
        raise CrossSigningError("encryption is off in the configuration: there is no identity "
                                "to reset")
    make_private(config.data_dir)
    key = encryption_key(config)
    if config.database is None:
        protect_stores(config.data_dir / "crypto", key.pickle_key)
    store = await Store.open(config.database, config.data_dir, password=config.database_password)
    documents, crypto_store = device_state(config, store)
    try:
        client = await connect(config, key.pickle_key, documents, crypto_store=crypto_store)
        try:
            if client.should_upload_keys:
                await call("uploading the device keys", client.keys_upload(),
                           KeysUploadResponse)
            return await ensure_cross_signed(client, documents, config.password,
                                             seeds_key=key.seeds_key, reset=True)
        finally:
            await client.close()
            close_crypto_store(client)
    finally:
        await store.close()


def device_state(config: Config, store: Store, fence: Callable[[], None] | None = None,
                 ) -> tuple[Documents, type[MatrixStore] | None]:
    """Where the device's credentials, seeds and crypto store live: files in data_dir, or,
    with PostgreSQL, the database (so that any instance, on any disk, is the same device).

    Returns the documents and the nio store class (None: nio's SQLite store in data_dir);
    ``fence`` (the lease's check) refuses the crypto store's writes once the lease is lost,
    and they carry the store's term, so the database refuses a deposed leader's late ones.
    """
    if config.database is None:
        return FileDocuments(config.data_dir), None
    return StoreDocuments(store.values), postgres_crypto_store(
        config.database, password=config.database_password, fence=fence,
        term=store.term_setting,
    )


async def _first_of(*events: asyncio.Event, then: asyncio.Event) -> None:
    """Set ``then`` as soon as any of ``events`` is set."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        then.set()
    finally:
        for wait in waits:
            wait.cancel()
