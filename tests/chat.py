"""Test-side actors: a person behind a real nio client, and the bot run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from nio import (
    AsyncClient,
    Event,
    InviteMemberEvent,
    MegolmEvent,
    MemoryDownloadResponse,
    RoomCreateResponse,
    RoomRedactResponse,
    RoomSendResponse,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from bot import config as config_module
from bot import failpoints
from bot.app import Parcel
from bot.config import Config
from bot.devserver import Homeserver, RegisteredUser
from bot.render import OFFER_KEY, latest_offer_state
from tests.helpers import Predicate, sync_until

PANEL_HEAD = "📋 Files in this chat"  # how the bot's activity panel begins


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

    async def until(self, predicate: Predicate, what: str, timeout: float = 30.0) -> None:
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
        return latest_offer_state(self.messages(room_id), offer_id)

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

    def offer_named(self, room_id: str, filename: str) -> dict[str, Any] | None:
        """The first offer card (or status line) about ``filename`` seen in a room."""
        for event in self.offers(room_id):
            if event["content"][OFFER_KEY]["filename"] == filename:
                return event
        return None

    def deliveries(self, room_id: str, bot_id: str) -> list[dict[str, Any]]:
        """Media messages the bot posted in a room (delivered files, not anyone's upload)."""
        return [e for e in self.media_events(room_id) if e["sender"] == bot_id]

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

    async def send_raw(self, room_id: str, content: dict[str, Any],
                       event_type: str = "m.room.message") -> str:
        """Send any content as is (malformed on purpose, say); fails unless the server takes it."""
        response = await self.client.room_send(room_id, event_type, content,
                                               ignore_unverified_devices=True)
        assert isinstance(response, RoomSendResponse), response
        return response.event_id

    async def redact(self, room_id: str, event_id: str) -> str:
        """Redact (delete) one of the events in a room."""
        response = await self.client.room_redact(room_id, event_id)
        assert isinstance(response, RoomRedactResponse), response
        return response.event_id

    def bot_bodies(self, room_id: str, bot_id: str) -> list[str]:
        """Bodies of the bot's messages in a room that are not edits, nor its activity panel
        (which appears on its own schedule, so it is no answer to anything)."""
        return [
            str(e["content"].get("body")) for e in self.messages(room_id, bot_id)
            if "m.new_content" not in e["content"]
            and not str(e["content"].get("body")).startswith(PANEL_HEAD)
        ]

    def replies(self, room_id: str, bot_id: str, start: str) -> list[dict[str, Any]]:
        """The bot's messages (not edits) in a room whose body starts with ``start``."""
        return [
            e for e in self.messages(room_id, bot_id)
            if "m.new_content" not in e["content"]
            and str(e["content"].get("body")).startswith(start)
        ]

    def edits_of(self, room_id: str, event_id: str) -> list[dict[str, Any]]:
        """The m.replace edits of one event seen in a room, oldest first."""
        return [
            e for e in self.messages(room_id)
            if isinstance(e["content"].get("m.relates_to"), dict)
            and e["content"]["m.relates_to"].get("rel_type") == "m.replace"
            and e["content"]["m.relates_to"].get("event_id") == event_id
        ]

    def membership(self, room_id: str, user_id: str) -> str | None:
        """The latest membership of ``user_id`` in a room as seen in its timeline."""
        state = None
        for event in self.events[room_id]:
            if event.get("type") == "m.room.member" and event.get("state_key") == user_id:
                state = event["content"].get("membership")
        return state


async def barrier(sender: Person, sender_room: str, receiver: Person, receiver_room: str,
                  timeout: float = 30.0) -> None:
    """Send a unique text and wait until it is relayed to the other side.

    The bot handles a room's events in order, so once the text is relayed every event sent
    before it in that room has been handled (its decision, if any, is in the store).
    """
    token = f"barrier-{uuid.uuid4().hex[:12]}"
    await sender.say(sender_room, token)
    await receiver.until(lambda: any(b.endswith(f": {token}") for b in
                                     receiver.bodies(receiver_room)),
                         f"the relayed barrier text {token}", timeout)


async def new_person(make_user: Any, make_client: Any, prefix: str, displayname: str,
                     encrypted: bool = False) -> Person:
    """Register a user and log a recording client in for them."""
    user = await make_user(prefix, displayname=displayname)
    return Person(await make_client(user, encrypted=encrypted), user)


def config_yaml(config: Config) -> str:
    """A YAML configuration file with the settings a test bot runs with."""
    policy = config.policy
    raw = {
        "homeserver": config.homeserver,
        "user_id": config.user_id,
        "password": config.password,
        "device_name": config.device_name,
        "data_dir": str(config.data_dir),
        "encryption": config.encryption,
        "agents": {"users": list(config.agents.users),
                   "room_encryption": config.agents.room_encryption,
                   "language": config.agents.language},
        "language": config.language,
        "languages": list(config.languages),
        "timezone": config.timezone,
        "policy": {"max_size": policy.customer_to_agent.max_size,
                   "offer_ttl": policy.offer_ttl},
        "allowed_servers": list(config.allowed_servers),
        "media": {"purge_refused": config.media.purge_refused,
                  "prestage": config.media.prestage,
                  "follow_download_from": config.media.follow_download_from},
        "retention": {"leave_closed_rooms": config.retention.leave_closed_rooms},
        "retry": {"max_backoff": config.retry.max_backoff,
                  "undecryptable_for": config.retry.undecryptable_for},
    }
    if config.database is not None:
        raw["database"] = config.database
        raw["leader_lease"] = config.leader_lease
    if config.encryption_key is not None:
        raw["encryption_key"] = config.encryption_key
    if config.metrics is not None:
        raw["metrics"] = {"listen": f"{config.metrics.listen_host}:{config.metrics.listen_port}"}
    return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)


def bot_config(server: Homeserver, bot: RegisteredUser, agent_ids: list[str], data_dir: Path,
               **overrides: Any) -> Config:
    """A bot configuration for the test homeserver (``homeserver=URL`` reaches it otherwise)."""
    raw: dict[str, Any] = {
        "homeserver": server.url,
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

    @property
    def running(self) -> bool:
        """Whether the bot's main task is still going."""
        return self._task is not None and not self._task.done()

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


class BotProcess:
    """The bot as a separate ``parcel-bot run`` process, so a test can SIGKILL it."""

    def __init__(self, config: Config, config_path: Path) -> None:
        self.config = config
        self.config_path = config_path
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = config.data_dir.parent / f"{config.data_dir.name}-bot.log"
        self._log_offset = 0
        write_config(config, config_path)

    async def start(self, failpoint: str | None = None, timeout: float = 60.0,
                    ready: bytes = b"first sync done") -> None:
        """Start ``python -m bot run`` and wait until it logs ``ready`` (its first sync)."""
        env = dict(os.environ)
        env.pop(failpoints.ENV_VAR, None)
        if failpoint:
            env[failpoints.ENV_VAR] = failpoint
        # Only this run's lines count: the log is appended to across restarts.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: ASYNC230, SIM115 - handed to the child
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "--log-level", "INFO", "run",
            "--config", str(self.config_path), stdout=log, stderr=log, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while ready not in self.log_since_start():
            if self.process.returncode is not None:
                raise AssertionError(f"the bot exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the bot process did not become ready")
            await asyncio.sleep(0.1)

    def log_since_start(self) -> bytes:
        """What the current run has logged so far."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read()

    async def wait_killed(self, timeout: float = 60.0) -> None:
        """Wait for the process to die at its failpoint."""
        assert self.process is not None
        await asyncio.wait_for(self.process.wait(), timeout)
        assert self.process.returncode == -signal.SIGKILL, self.process.returncode

    async def kill(self) -> None:
        """SIGKILL the bot, like a crash."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM the bot and wait for a clean exit."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 30)


def write_config(config: Config, path: Path) -> None:
    """Write ``config`` as YAML for ``parcel-bot`` to read."""
    path.write_text(config_yaml(config))
