"""Login and device persistence, and idempotent sending on top of matrix-nio."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    LocalProtocolError,
    LoginResponse,
    RoomSendResponse,
    WhoamiResponse,
)
from nio.store import MatrixStore

from bot import errors
from bot.config import Config
from bot.documents import Documents
from bot.errors import PermanentError, TransientError
from bot.matrix.groupsessions import LazySqliteStore
from bot.store import Store

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"


class LoginRefused(PermanentError):
    """The homeserver refused the bot's credentials, or they are unusable: an admin's problem."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="login")


# Checks a room before anything is sent into it; raises TransientError while it must wait.
RoomGuard = Callable[[str], Awaitable[None]]

TOKEN_REFUSED = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_FORBIDDEN"})


@dataclass(frozen=True)
class Credentials:
    """What identifies the bot's device across restarts."""

    homeserver: str
    user_id: str
    device_id: str
    access_token: str


async def load_credentials(documents: Documents) -> Credentials | None:
    """The saved device of an earlier run, if any."""
    text = await documents.read(CREDENTIALS_FILE)
    if text is None:
        return None
    try:
        raw = json.loads(text)
        return Credentials(
            homeserver=raw["homeserver"],
            user_id=raw["user_id"],
            device_id=raw["device_id"],
            access_token=raw["access_token"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise LoginRefused(
            f"{documents.where(CREDENTIALS_FILE)} is damaged ({exc}); remove it to log in afresh"
        ) from exc


async def save_credentials(documents: Documents, credentials: Credentials) -> None:
    """Persist the device so a restart reuses it (the crypto store depends on it)."""
    await documents.write(CREDENTIALS_FILE, json.dumps(credentials.__dict__, indent=2))


def client_config(
    encryption: bool, pickle_key: str, crypto_store: type[MatrixStore] | None = None
) -> AsyncClientConfig:
    """nio settings: our own loop persists sync tokens, and nio never retries by itself.

    Every request is tried once; a 429 comes back as an error response and a dropped
    connection as an exception, both classified by ``bot.errors`` and retried by the one
    scheduler, so retries are never nested. ``pickle_key`` protects the crypto store (never
    nio's public default; see bot/keys.py). ``crypto_store`` replaces nio's SQLite store in
    ``data_dir/crypto`` (``bot.matrix.pgstore.postgres_crypto_store(url)`` for PostgreSQL).
    Either way inbound group sessions are read when needed (:mod:`bot.matrix.groupsessions`).
    """
    extra: dict[str, Any] = {"store": crypto_store or LazySqliteStore}
    return AsyncClientConfig(
        encryption_enabled=encryption,
        pickle_key=pickle_key,
        **extra,
        store_sync_tokens=False,
        max_limit_exceeded=0,
        max_timeouts=0,
        request_timeout=60,
    )


class FencedClient(AsyncClient):
    """A nio client that asks ``fence`` before every request and before taking in any answer.

    nio sends everything (syncs, events, room keys to other devices, key uploads) through
    :meth:`send`, and applies every answer (a sync's to-device messages ratchet Olm sessions
    and are written to the shared crypto store) in :meth:`receive_response`. With several
    instances ``fence`` raises unless this one holds the leader lease, so a deposed leader
    neither sends nor overwrites the new leader's keys, even with a request that was under
    way when it lost the lease.
    """

    def __init__(self, *args: Any, fence: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fence = fence

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        self._fence()
        return await super().send(*args, **kwargs)

    async def receive_response(self, response: Any) -> None:
        self._fence()
        await super().receive_response(response)


async def connect(
    config: Config, pickle_key: str, documents: Documents,
    fence: Callable[[], None] | None = None,
    crypto_store: type[MatrixStore] | None = None,
) -> AsyncClient:
    """Log in, or restore the saved device (kept in ``documents``), return a ready nio client.

    ``fence`` (see :class:`FencedClient`) is asked before every request when given.
    ``crypto_store`` (see :func:`client_config`) puts nio's crypto store elsewhere; nio still
    wants a ``store_path``, which such a store leaves empty.
    """
    store_path = config.data_dir / "crypto"
    store_path.mkdir(parents=True, exist_ok=True)
    client_class = AsyncClient if fence is None else functools.partial(FencedClient, fence=fence)
    client = client_class(
        config.homeserver,
        config.user_id,
        store_path=str(store_path),
        config=client_config(config.encryption, pickle_key, crypto_store),
    )
    try:
        saved = await load_credentials(documents)
        if saved is not None and saved.user_id == config.user_id:
            client.restore_login(saved.user_id, saved.device_id, saved.access_token)
            whoami = await client.whoami()
            if isinstance(whoami, WhoamiResponse):
                logger.info("restored device %s for %s", saved.device_id, saved.user_id)
                return client
            if whoami.status_code not in TOKEN_REFUSED:
                raise TransientError(f"the homeserver answered {whoami.message!r}")
            logger.warning("saved access token no longer works (%s); logging in again", whoami)
        credentials = await _login(client, config, saved)
    except BaseException:
        await client.close()
        raise
    await save_credentials(documents, credentials)
    return client


async def _login(client: AsyncClient, config: Config, saved: Credentials | None) -> Credentials:
    if config.access_token:
        client.access_token = config.access_token
        whoami = await client.whoami()
        if not isinstance(whoami, WhoamiResponse):
            raise LoginRefused(f"the access token was refused: {whoami.message}")
        if whoami.user_id != config.user_id:
            raise LoginRefused(
                f"the access token belongs to {whoami.user_id}, not to {config.user_id}"
            )
        if not whoami.device_id:
            raise LoginRefused("the access token has no device; log in with a password instead")
        client.restore_login(whoami.user_id, whoami.device_id, config.access_token)
    else:
        if saved is not None and saved.user_id == config.user_id:
            client.device_id = saved.device_id  # keep the device (and its crypto identity)
        response = await client.login(password=config.password, device_name=config.device_name)
        if not isinstance(response, LoginResponse):
            error = errors.from_response(response, f"login as {config.user_id}")
            if isinstance(error, TransientError):
                raise error
            raise LoginRefused(f"login as {config.user_id} failed: {response.message}")
        logger.info("logged in as %s, device %s", response.user_id, response.device_id)
    assert client.device_id is not None and client.access_token
    return Credentials(config.homeserver, config.user_id, client.device_id, client.access_token)


class Sender:
    """Sends room events exactly once per transaction id, even across restarts.

    The transaction id is derived from what the event is for (``offer-12-card``), so a retry
    after a crash reuses it: the homeserver returns the same event for 24 hours, and the store's
    outbox remembers it for longer. Each call is one attempt: failures are raised as
    :class:`~bot.errors.TransientError` or :class:`~bot.errors.PermanentError` for the
    scheduler to handle. ``guard`` vets the room first (no sending, and so no sharing of room
    keys, while someone is in a room who must not be).
    """

    def __init__(self, client: AsyncClient, store: Store, guard: RoomGuard | None = None) -> None:
        self._client = client
        self._store = store
        self.guard = guard

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        *,
        txn_id: str,
        event_type: str = "m.room.message",
    ) -> str:
        """Send once; returns the event id (the earlier one if this txn id was sent before)."""
        already = await self._store.outbox.sent_event(txn_id)
        if already is not None:
            return already
        if self.guard is not None:
            await self.guard(room_id)
        what = f"sending {txn_id} to {room_id}"
        try:
            response = await self._client.room_send(
                room_id, event_type, content, tx_id=txn_id, ignore_unverified_devices=True
            )
        except LocalProtocolError as exc:
            # A room nio has not seen in a sync yet: the next sync adds it.
            raise TransientError(f"{what}: the room is not synced yet ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        if not isinstance(response, RoomSendResponse):
            raise errors.from_response(response, what)
        await self._store.outbox.record_sent(txn_id, room_id, response.event_id)
        return response.event_id

    async def react(self, room_id: str, event_id: str, key: str, *, txn_id: str) -> str:
        """Add a reaction (annotation) from the bot to an event."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        return await self.send(room_id, content, txn_id=txn_id, event_type="m.reaction")

    async def edit(
        self, room_id: str, event_id: str, new_content: dict[str, Any], *, txn_id: str
    ) -> str:
        """Replace the content of one of the bot's own messages (m.replace)."""
        content = dict(new_content)
        content["body"] = f"* {new_content.get('body', '')}"
        if "formatted_body" in new_content:
            content["formatted_body"] = f"* {new_content['formatted_body']}"
        content["m.new_content"] = new_content
        content["m.relates_to"] = {"rel_type": "m.replace", "event_id": event_id}
        return await self.send(room_id, content, txn_id=txn_id)

    async def redact(self, room_id: str, event_id: str, reason: str, *, txn_id: str) -> None:
        """Redact an event, idempotently."""
        if await self._store.outbox.sent_event(txn_id) is not None:
            return
        what = f"redacting {event_id} in {room_id}"
        try:
            response = await self._client.room_redact(room_id, event_id, reason=reason,
                                                      tx_id=txn_id)
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        if isinstance(response, ErrorResponse):
            raise errors.from_response(response, what)
        await self._store.outbox.record_sent(txn_id, room_id, response.event_id)


async def call(what: str, request: Awaitable[Any], expected: type) -> Any:
    """Await one nio request; return its response if it is ``expected``, else raise it classified.

    For the requests that are not sends (join, leave, kick, create room, state): one attempt,
    transport exceptions and error responses both turned into ``bot.errors`` exceptions.
    """
    try:
        response = await request
    except Exception as exc:  # noqa: BLE001 - classified here, once
        raise errors.from_exception(exc, what) from exc
    if not isinstance(response, expected):
        raise errors.from_response(response, what)
    return response
