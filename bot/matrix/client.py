"""Login and device persistence, and idempotent sending on top of matrix-nio."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
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

from bot.config import Config
from bot.store import Store

logger = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"


class MatrixError(RuntimeError):
    """A homeserver request failed for good (after the retries it deserved)."""


class HomeserverUnavailable(OSError):
    """The homeserver is there but not answering properly (5xx); worth retrying."""


TOKEN_REFUSED = frozenset({"M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_FORBIDDEN"})


@dataclass(frozen=True)
class Credentials:
    """What identifies the bot's device across restarts."""

    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def _write_private(path: Path, text: str) -> None:
    """Write a secret file atomically with mode 0600."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_credentials(data_dir: Path) -> Credentials | None:
    """The saved device of an earlier run, if any."""
    path = data_dir / CREDENTIALS_FILE
    try:
        raw = json.loads(path.read_text())
        return Credentials(
            homeserver=raw["homeserver"],
            user_id=raw["user_id"],
            device_id=raw["device_id"],
            access_token=raw["access_token"],
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise MatrixError(f"{path} is damaged ({exc}); move it away to log in afresh") from exc


def save_credentials(data_dir: Path, credentials: Credentials) -> None:
    """Persist the device so a restart reuses it (the crypto store depends on it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_private(data_dir / CREDENTIALS_FILE, json.dumps(credentials.__dict__, indent=2))


def client_config(encryption: bool) -> AsyncClientConfig:
    """nio settings: our own loop persists sync tokens; nio gives up after a few timeouts."""
    return AsyncClientConfig(
        encryption_enabled=encryption,
        store_sync_tokens=False,
        max_limit_exceeded=50,
        max_timeouts=2,
        max_timeout_retry_wait_time=5,
        request_timeout=60,
    )


async def connect(config: Config) -> AsyncClient:
    """Log in, or restore the saved device, and return a ready nio client."""
    store_path = config.data_dir / "crypto"
    store_path.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(
        config.homeserver,
        config.user_id,
        store_path=str(store_path),
        config=client_config(config.encryption),
    )
    try:
        saved = load_credentials(config.data_dir)
        if saved is not None and saved.user_id == config.user_id:
            client.restore_login(saved.user_id, saved.device_id, saved.access_token)
            whoami = await client.whoami()
            if isinstance(whoami, WhoamiResponse):
                logger.info("restored device %s for %s", saved.device_id, saved.user_id)
                return client
            if whoami.status_code not in TOKEN_REFUSED:
                raise HomeserverUnavailable(f"the homeserver answered {whoami.message!r}")
            logger.warning("saved access token no longer works (%s); logging in again", whoami)
        credentials = await _login(client, config, saved)
    except BaseException:
        await client.close()
        raise
    save_credentials(config.data_dir, credentials)
    return client


async def _login(client: AsyncClient, config: Config, saved: Credentials | None) -> Credentials:
    if config.access_token:
        client.access_token = config.access_token
        whoami = await client.whoami()
        if not isinstance(whoami, WhoamiResponse):
            raise MatrixError(f"the access token was refused: {whoami.message}")
        if whoami.user_id != config.user_id:
            raise MatrixError(
                f"the access token belongs to {whoami.user_id}, not to {config.user_id}"
            )
        if not whoami.device_id:
            raise MatrixError("the access token has no device; log in with a password instead")
        client.restore_login(whoami.user_id, whoami.device_id, config.access_token)
    else:
        if saved is not None and saved.user_id == config.user_id:
            client.device_id = saved.device_id  # keep the device (and its crypto identity)
        response = await client.login(password=config.password, device_name=config.device_name)
        if not isinstance(response, LoginResponse):
            raise MatrixError(f"login as {config.user_id} failed: {response.message}")
        logger.info("logged in as %s, device %s", response.user_id, response.device_id)
    assert client.device_id is not None and client.access_token
    return Credentials(config.homeserver, config.user_id, client.device_id, client.access_token)


class Sender:
    """Sends room events exactly once per transaction id, even across restarts.

    The transaction id is derived from what the event is for (``offer-12-card``), so a retry
    after a crash reuses it: the homeserver returns the same event for 24 hours, and the store's
    outbox remembers it for longer.
    """

    def __init__(self, client: AsyncClient, store: Store) -> None:
        self._client = client
        self._store = store

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        *,
        txn_id: str,
        event_type: str = "m.room.message",
    ) -> str:
        """Send once; returns the event id (the earlier one if this txn id was sent before)."""
        already = self._store.sent_event(txn_id)
        if already is not None:
            return already
        delay = 1.0
        for attempt in range(1, 6):
            try:
                response = await self._client.room_send(
                    room_id,
                    event_type,
                    content,
                    tx_id=txn_id,
                    ignore_unverified_devices=True,
                )
            except LocalProtocolError as exc:
                # An encrypted room nio has not seen in a sync yet: let the next sync add it.
                response = None
                logger.info("room %s not ready for sending yet (%s)", room_id, exc)
            if isinstance(response, RoomSendResponse):
                self._store.record_sent(txn_id, room_id, response.event_id)
                return response.event_id
            if isinstance(response, ErrorResponse) and response.status_code in (
                "M_FORBIDDEN",
                "M_NOT_FOUND",
                "M_BAD_JSON",
                "M_TOO_LARGE",
            ):
                raise MatrixError(f"sending {txn_id} to {room_id} failed: {response.message}")
            logger.warning("sending %s to %s failed (attempt %d): %s", txn_id, room_id, attempt,
                           response)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise MatrixError(f"sending {txn_id} to {room_id} kept failing")

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
        if self._store.sent_event(txn_id) is not None:
            return
        response = await self._client.room_redact(room_id, event_id, reason=reason, tx_id=txn_id)
        if isinstance(response, ErrorResponse):
            raise MatrixError(f"redacting {event_id} failed: {response.message}")
        self._store.record_sent(txn_id, room_id, response.event_id)
