"""Test-side actors: a person behind a real nio client, and the bot run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    Event,
    InviteMemberEvent,
    MegolmEvent,
    MemoryDownloadResponse,
    RoomCreateResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from bot import config as config_module
from bot.app import Parcel
from bot.config import Config
from bot.devserver import Homeserver, RegisteredUser
from tests.helpers import sync_until

OFFER_KEY = "io.parcel.offer"


class Person:
    """A chat participant: a real nio client that records every event it receives."""

    def __init__(self, client: AsyncClient, user: RegisteredUser) -> None:
        self.client = client
        self.user = user
        self.user_id = user.user_id
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.undecryptable: list[MegolmEvent] = []
        client.add_event_callback(self._record, Event)
        client.add_event_callback(self._record_megolm, MegolmEvent)

    async def _record(self, room: Any, event: Event) -> None:
        self.events[room.room_id].append(event.source)

    async def _record_megolm(self, room: Any, event: MegolmEvent) -> None:
        self.undecryptable.append(event)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Sync until ``predicate`` holds (failing with ``what`` after ``timeout`` s)."""
        await sync_until(self.client, predicate, timeout=timeout, what=what)

    def messages(self, room_id: str, sender: str | None = None) -> list[dict[str, Any]]:
        """m.room.message events seen in a room (optionally from one sender)."""
        return [
            e for e in self.events[room_id]
            if e.get("type") == "m.room.message" and (sender is None or e.get("sender") == sender)
        ]

    def bodies(self, room_id: str, sender: str | None = None) -> list[str]:
        """Bodies of the messages seen in a room."""
        return [str(e["content"].get("body")) for e in self.messages(room_id, sender)]

    def offers(self, room_id: str) -> list[dict[str, Any]]:
        """Messages (not edits) carrying an io.parcel.offer block."""
        return [
            e for e in self.messages(room_id)
            if OFFER_KEY in e["content"] and "m.new_content" not in e["content"]
        ]

    def offer_state(self, room_id: str, offer_id: int) -> str | None:
        """The latest state of an offer as shown by its messages and their edits in a room."""
        state = None
        for event in self.messages(room_id):
            content = event["content"]
            block = content.get("m.new_content", content).get(OFFER_KEY)
            if isinstance(block, dict) and block.get("id") == offer_id:
                state = block.get("state")
        return state

    def media_events(self, room_id: str) -> list[dict[str, Any]]:
        """Messages in a room that carry media (a url or an encrypted file)."""
        return [
            e for e in self.messages(room_id)
            if "url" in e["content"] or "file" in e["content"]
        ]

    async def open_chat_with(self, bot_id: str, encrypted: bool = False) -> str:
        """Start a DM with the bot, like Element's "Start chat"."""
        initial_state = []
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        response = await self.client.room_create(is_direct=True, invite=[bot_id],
                                                 initial_state=initial_state)
        assert isinstance(response, RoomCreateResponse), response
        return response.room_id

    async def accept_invite(self, what: str = "an invite", timeout: float = 30.0) -> str:
        """Wait for an invite and join the room; returns its id."""
        joined_before = set(self.client.rooms)
        await self.until(lambda: bool(set(self.client.invited_rooms) - joined_before), what,
                         timeout)
        room_id = sorted(set(self.client.invited_rooms) - joined_before)[0]
        await self.client.join(room_id)
        await self.until(lambda: room_id in self.client.rooms
                         and room_id not in self.client.invited_rooms, f"joining {room_id}")
        return room_id

    async def say(self, room_id: str, text: str, **extra: Any) -> str:
        """Send a text message; returns its event id."""
        content = {"msgtype": "m.text", "body": text, **extra}
        response = await self.client.room_send(room_id, "m.room.message", content,
                                               ignore_unverified_devices=True)
        return response.event_id

    async def send_file(
        self,
        room_id: str,
        data: bytes,
        name: str,
        mimetype: str,
        msgtype: str = "m.file",
        *,
        encrypt: bool = False,
        info: dict[str, Any] | None = None,
    ) -> str:
        """Upload ``data`` and post it as a file message, like a client would."""
        response, keys = await self.client.upload(
            lambda *_: io.BytesIO(data), content_type="application/octet-stream" if encrypt
            else mimetype, filename=name, encrypt=encrypt, filesize=len(data),
        )
        assert isinstance(response, UploadResponse), response
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": name,
            "info": info if info is not None else {"mimetype": mimetype, "size": len(data)},
        }
        if encrypt:
            assert keys is not None
            content["file"] = {**keys, "url": response.content_uri}
        else:
            content["url"] = response.content_uri
        sent = await self.client.room_send(room_id, "m.room.message", content,
                                           ignore_unverified_devices=True)
        return sent.event_id

    async def download(self, content: dict[str, Any]) -> bytes:
        """The bytes of a received media message (decrypted if it is encrypted)."""
        if "file" in content:
            response = await self.client.download(content["file"]["url"])
            assert isinstance(response, MemoryDownloadResponse), response
            return decrypt_attachment(response.body, content["file"]["key"]["k"],
                                      content["file"]["hashes"]["sha256"], content["file"]["iv"])
        response = await self.client.download(content["url"])
        assert isinstance(response, MemoryDownloadResponse), response
        return response.body

    def reactions_on(self, room_id: str, event_id: str) -> list[dict[str, Any]]:
        """Reactions seen on an event."""
        return [
            e for e in self.events[room_id]
            if e.get("type") == "m.reaction"
            and e["content"].get("m.relates_to", {}).get("event_id") == event_id
        ]

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """React to an event."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                                    "key": key}}
        response = await self.client.room_send(room_id, "m.reaction", content,
                                               ignore_unverified_devices=True)
        return response.event_id


def bot_config(homeserver: Homeserver, bot: RegisteredUser, agent_ids: list[str], data_dir: Path,
               **overrides: Any) -> Config:
    """A bot configuration for the test homeserver."""
    raw: dict[str, Any] = {
        "homeserver": homeserver.url,
        "user_id": bot.user_id,
        "password": bot.password,
        "device_name": "parcel-test",
        "data_dir": str(data_dir),
        "encryption": True,
        "agents": {"users": agent_ids, "room_encryption": False},
        "policy": {"max_size": "5MB", "offer_ttl": "1h"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return config_module.parse(raw, env={})


class BotRunner:
    """The bot running in this event loop, as ``parcel-bot run`` would run it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.parcel: Parcel | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> Parcel:
        """Start the bot and wait for its first sync."""
        self._stop = asyncio.Event()
        self.parcel = Parcel(self.config)
        self._task = asyncio.create_task(self.parcel.run(self._stop))
        ready = asyncio.create_task(self.parcel.ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()
            raise AssertionError("the bot stopped during start-up")
        if ready not in done:
            ready.cancel()
            raise AssertionError("the bot did not become ready in time")
        return self.parcel

    async def stop(self) -> None:
        """Stop the bot the way SIGTERM does."""
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, timeout=30)
        self._task = None

    async def restart(self) -> Parcel:
        """Stop and start again with the same data directory."""
        await self.stop()
        return await self.start()


async def first_invite_sender(client: AsyncClient) -> str | None:
    """Who invited ``client`` to its first pending invite (for diagnostics)."""
    for info in client.invited_rooms.values():
        for event in getattr(info, "invite_state", []):
            if isinstance(event, InviteMemberEvent):
                return event.sender
    return None
