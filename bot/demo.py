"""``parcel-bot demo``: a scripted support chat on a throwaway Synapse, shown as each side saw it.

In a temporary directory the demo starts Synapse on loopback (:class:`bot.devserver.Homeserver`),
registers the bot, an agent (Alice) and a customer (Carol), runs Parcel in-process and plays a
short chat with two real nio clients: Carol opens an encrypted DM with the bot, Alice joins the
agent room, they greet each other, Carol's image is accepted with ✅, Alice's PDF is declined
with ❌, and Carol asks for ``!attachments``. Then it prints both transcripts, the attachment
log and the admin export, and cleans everything up (``--keep`` leaves it running for Element).

Every step waits on a condition with a deadline; a step that does not happen in time ends the
demo with one line naming it and exit code 1. Nothing here imports from ``tests/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import yaml
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    Event,
    KeysUploadError,
    MegolmEvent,
    MemoryDownloadResponse,
    RoomCreateResponse,
    RoomPreset,
    RoomSendResponse,
    SyncError,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment

from bot import config as config_module
from bot.attachments.text import human_size
from bot.config import Config
from bot.devserver import Homeserver, HomeserverError, RegisteredUser
from bot.matrix.sync import maintain_keys
from bot.render import OFFER_KEY, latest_offer_state

ACCEPT, DECLINE = "\u2705", "\u274c"
STEP_TIMEOUT = 60.0
"""Seconds any one step of the script may take before the demo gives up."""

ENCRYPTED = True
"""Carol's DM and the agent room are end-to-end encrypted, like Element's defaults."""

PARTICIPANT_FILTER = {"room": {"timeline": {"limit": 200}}, "presence": {"not_types": ["*"]}}
"""Carol and Alice sync like a person's client: every room's whole state, no presence."""

# The script. The integration test looks for these in the output.
CAROL_HELLO = "Hi! My router keeps dropping the Wi-Fi every few minutes."
ALICE_ANSWER = "Hi Carol, I'm Alice. Sorry about that! Could you send me a photo of its lights?"
IMAGE_NAME, IMAGE_SIZE = "router.png", (320, 200)
PDF_NAME = "terms.pdf"
ALICE_AFTER_PDF = "No problem. Please unplug it for 30 seconds and plug it back in."
MEDIA_MSGTYPES = {"m.image": "image", "m.file": "file", "m.video": "video", "m.audio": "audio"}


class DemoError(Exception):
    """A step of the demo failed; ``str()`` is the one line shown to the user."""


# --------------------------------------------------------------------------------------------
# Sample files
# --------------------------------------------------------------------------------------------


def command_name() -> str:
    """How the reader's shell can run this ``parcel-bot``, for the hints the demo prints.

    The bare name when PATH finds this same install (an activated virtualenv, or a system
    install); otherwise the script's path, relative when it is under the current folder
    (``.venv/bin/parcel-bot`` in a clone, as the README's Quick start runs it).
    """
    script = Path(sys.executable).with_name("parcel-bot")
    found = shutil.which("parcel-bot")
    if found is not None and Path(found).resolve() == script.resolve():
        return "parcel-bot"
    if not script.exists():
        return f"{sys.executable} -m bot"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def router_png(width: int = IMAGE_SIZE[0], height: int = IMAGE_SIZE[1]) -> bytes:
    """A small real PNG: a router with its status lights (one of them red)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (232, 240, 250))
    draw = ImageDraw.Draw(image)
    sx, sy = width / 320, height / 200
    # Antennas, body, feet.
    for x in (90, 230):
        draw.line([(x * sx, 40 * sy), (x * sx, 110 * sy)], fill=(60, 60, 70), width=6)
        draw.ellipse([(x - 6) * sx, 32 * sy, (x + 6) * sx, 44 * sy], fill=(60, 60, 70))
    draw.rounded_rectangle([40 * sx, 100 * sy, 280 * sx, 160 * sy], radius=12,
                           fill=(40, 44, 56))
    draw.rectangle([70 * sx, 160 * sy, 90 * sx, 168 * sy], fill=(30, 30, 36))
    draw.rectangle([230 * sx, 160 * sy, 250 * sx, 168 * sy], fill=(30, 30, 36))
    # Status lights: power, internet, Wi-Fi (red: the problem), LAN.
    for i, color in enumerate([(80, 220, 100), (80, 220, 100), (235, 60, 50), (80, 220, 100)]):
        cx = (90 + i * 46) * sx
        draw.ellipse([cx - 7 * sx, 123 * sy, cx + 7 * sx, 137 * sy], fill=color)
    draw.text((48 * sx, 178 * sy), "router - Wi-Fi light is red", fill=(40, 44, 56))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def terms_pdf() -> bytes:
    """A small valid one-page PDF (with a correct cross-reference table)."""
    text = (
        b"BT /F1 20 Tf 72 720 Td (Service terms) Tj ET\n"
        b"BT /F1 12 Tf 72 690 Td (Your router is covered for 24 months.) Tj ET\n"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"endstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# A person behind a real nio client
# --------------------------------------------------------------------------------------------


class Participant:
    """Alice or Carol: a nio client that records every event it receives, in timeline order."""

    def __init__(self, name: str, user: RegisteredUser, client: AsyncClient,
                 health: Callable[[], None]) -> None:
        self.name = name
        self.user = user
        self.user_id = user.user_id
        self.client = client
        self.events: dict[str, list[dict[str, Any]]] = {}
        self._pending: list[tuple[str, int, MegolmEvent]] = []  # (room, index, event)
        self._health = health
        client.add_event_callback(self._record, Event)

    @classmethod
    async def login(cls, name: str, homeserver: Homeserver, user: RegisteredUser,
                    store_dir: Path, health: Callable[[], None]) -> Participant:
        """A client on the user's registered device, synced once, device keys uploaded."""
        store_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at set-up
        client = AsyncClient(
            homeserver.url, user.user_id, device_id=user.device_id, store_path=str(store_dir),
            config=AsyncClientConfig(encryption_enabled=ENCRYPTED, store_sync_tokens=False),
        )
        client.restore_login(user.user_id, user.device_id, user.access_token)
        person = cls(name, user, client, health)
        try:
            synced = await client.sync(timeout=0, full_state=True, sync_filter=PARTICIPANT_FILTER)
            if isinstance(synced, SyncError):
                raise DemoError(f"{name}'s first sync failed: {synced.message}")
            if ENCRYPTED and client.should_upload_keys:
                uploaded = await client.keys_upload()
                if isinstance(uploaded, KeysUploadError):
                    raise DemoError(f"{name}'s device keys were not accepted: "
                                    f"{uploaded.message}")
        except BaseException:
            await client.close()
            raise
        return person

    async def _record(self, room: Any, event: Event) -> None:
        timeline = self.events.setdefault(room.room_id, [])
        if isinstance(event, MegolmEvent):
            self._pending.append((room.room_id, len(timeline), event))
        timeline.append(event.source)

    def _retry_decryption(self) -> None:
        """Decrypt events whose keys arrived after them (replacing them in place)."""
        still = []
        for room_id, index, event in self._pending:
            try:
                decrypted = self.client.decrypt_event(event)
            except Exception:  # noqa: BLE001 - no key yet
                still.append((room_id, index, event))
                continue
            self.events[room_id][index] = decrypted.source
        self._pending = still

    async def sync_once(self, timeout_ms: int = 1000) -> None:
        """One sync plus what ``sync_forever`` does for E2EE after each sync."""
        response = await self.client.sync(timeout=timeout_ms, sync_filter=PARTICIPANT_FILTER)
        if isinstance(response, SyncError):
            await asyncio.sleep(0.2)  # no spinning on errors; the caller's deadline holds
            return
        await maintain_keys(self.client)
        self._retry_decryption()

    async def until(self, predicate: Callable[[], object], what: str,
                    timeout: float | None = None) -> None:
        """Sync until ``predicate()`` is true; DemoError naming ``what`` after ``timeout`` s
        (default :data:`STEP_TIMEOUT`)."""
        timeout = STEP_TIMEOUT if timeout is None else timeout

        async def loop() -> None:
            while not predicate():
                self._health()
                await self.sync_once()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    # -- what the client has seen -----------------------------------------------------------

    def messages(self, room_id: str, sender: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events.get(room_id, [])
                if e.get("type") == "m.room.message"
                and (sender is None or e.get("sender") == sender)]

    def bodies(self, room_id: str, sender: str | None = None) -> list[str]:
        return [str(e.get("content", {}).get("body")) for e in self.messages(room_id, sender)]

    def offers(self, room_id: str) -> list[dict[str, Any]]:
        """Messages (not edits) carrying an io.parcel.offer block."""
        return [e for e in self.messages(room_id)
                if OFFER_KEY in e["content"] and "m.new_content" not in e["content"]]

    def offer_card(self, room_id: str, filename: str) -> dict[str, Any] | None:
        for event in self.offers(room_id):
            if event["content"][OFFER_KEY].get("filename") == filename:
                return event
        return None

    def offer_state(self, room_id: str, offer_id: int) -> str | None:
        """The latest state of an offer as its messages and their edits in a room show it."""
        return latest_offer_state(self.messages(room_id), offer_id)

    def media(self, room_id: str, sender: str, filename: str) -> dict[str, Any] | None:
        for event in self.messages(room_id, sender):
            content = event["content"]
            if ("url" in content or "file" in content) and content.get("body") == filename:
                return event
        return None

    def reactions_on(self, room_id: str, event_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events.get(room_id, [])
                if e.get("type") == "m.reaction"
                and e.get("content", {}).get("m.relates_to", {}).get("event_id") == event_id]

    # -- what the person does ---------------------------------------------------------------

    async def open_chat_with(self, bot_id: str) -> str:
        """Start a DM with the bot, like Element's "Start chat": encrypted by default, preset
        trusted_private_chat (the invitee gets the creator's power, so the bot may pin)."""
        initial_state = []
        if ENCRYPTED:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        response = await self.client.room_create(is_direct=True, invite=[bot_id],
                                                 initial_state=initial_state,
                                                 preset=RoomPreset.trusted_private_chat)
        if not isinstance(response, RoomCreateResponse):
            raise DemoError(f"{self.name} could not create a room: {response.message}")
        room_id = response.room_id
        await self.until(lambda: room_id in self.client.rooms, f"{self.name}'s new room")
        return room_id

    async def accept_invite(self, what: str) -> str:
        """Wait for an invite and join that room; returns its id."""
        await self.until(lambda: self.client.invited_rooms, what)
        room_id = sorted(self.client.invited_rooms)[0]
        await self.client.join(room_id)
        await self.until(lambda: room_id in self.client.rooms
                         and room_id not in self.client.invited_rooms,
                         f"{self.name} to join the agent room")
        return room_id

    async def _send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        response = await self.client.room_send(room_id, event_type, content,
                                               ignore_unverified_devices=True)
        if not isinstance(response, RoomSendResponse):
            raise DemoError(f"{self.name} could not send a message: {response}")
        return response.event_id

    async def say(self, room_id: str, text: str) -> str:
        return await self._send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})

    async def send_file(self, room_id: str, data: bytes, name: str, mimetype: str,
                        msgtype: str, info: dict[str, Any] | None = None) -> str:
        """Upload ``data`` (encrypted in an encrypted room) and post it, like a client would."""
        encrypt = bool(self.client.rooms[room_id].encrypted)
        response, keys = await self.client.upload(
            lambda *_: io.BytesIO(data),
            content_type="application/octet-stream" if encrypt else mimetype,
            filename=name, encrypt=encrypt, filesize=len(data),
        )
        if not isinstance(response, UploadResponse):
            raise DemoError(f"{self.name} could not upload {name}: {response}")
        content: dict[str, Any] = {
            "msgtype": msgtype, "body": name,
            "info": {"mimetype": mimetype, "size": len(data), **(info or {})},
        }
        if encrypt:
            assert keys is not None
            content["file"] = {**keys, "url": response.content_uri}
        else:
            content["url"] = response.content_uri
        return await self._send(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """React like Element: in an encrypted room the reaction is encrypted too.

        nio's ``room_send`` sends reactions in the clear, so this encrypts it itself (nio keeps
        the relation in the clear part, as the spec asks) and sends the result as is.
        """
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                                    "key": key}}
        client = self.client
        if not (client.olm and client.rooms[room_id].encrypted):
            return await self._send(room_id, "m.reaction", content)
        if client.olm.should_share_group_session(room_id):
            await client.share_group_session(room_id, ignore_unverified_devices=True)
        event_type, encrypted = client.encrypt(room_id, "m.reaction", content)
        method, path, data = Api.room_send(client.access_token, room_id, event_type, encrypted,
                                           uuid.uuid4())
        response = await client.send(method, path, data,
                                     headers={"Content-Type": "application/json"})
        answer = await response.json()
        if response.status != 200 or "event_id" not in answer:
            raise DemoError(f"{self.name} could not react: {answer}")
        return str(answer["event_id"])

    async def download(self, content: dict[str, Any]) -> bytes:
        """The bytes of a received media message (decrypted when encrypted)."""
        url = content["file"]["url"] if "file" in content else content["url"]
        response = await self.client.download(url)
        if not isinstance(response, MemoryDownloadResponse):
            raise DemoError(f"{self.name} could not download {url}: {response}")
        if "file" in content:
            block = content["file"]
            return decrypt_attachment(response.body, block["key"]["k"],
                                      block["hashes"]["sha256"], block["iv"])
        return response.body

    # -- the transcript ---------------------------------------------------------------------

    def transcript(self, room_id: str, collapse: Collection[str] = ()) -> list[str]:
        """One entry per message as this client shows it: media, replies, reactions, and for an
        edited message first the text as it first appeared, then what it was edited to (so the
        offer card and the waiting status line show the decision moment, not only the end).

        Messages whose event id is in ``collapse`` show only their first line.
        """
        room = self.client.rooms.get(room_id)

        def who(user_id: str) -> str:
            if room is None:
                return user_id
            name = room.user_name(user_id)
            return name or user_id

        items: dict[str, dict[str, Any]] = {}
        reactions: dict[str, tuple[str, str, str]] = {}  # reaction id -> (target, key, who)
        order: list[dict[str, Any]] = []
        for event in self.events.get(room_id, []):
            kind, content = event.get("type"), event.get("content") or {}
            relates = content.get("m.relates_to") or {}
            target = relates.get("event_id")
            if kind == "m.room.encrypted":
                order.append({"sender": event.get("sender", "?"),
                              "text": "🔒 (could not decrypt)", "edits": [], "reactions": {}})
            elif kind == "m.room.message" and relates.get("rel_type") == "m.replace" \
                    and target in items:
                new = content.get("m.new_content")
                if isinstance(new, dict):
                    items[target]["edits"].append(_describe_content(new))
            elif kind == "m.room.message":
                text = _describe_content(content)
                if event.get("event_id") in collapse:
                    text = f"{text.split(chr(10), 1)[0]} … (listed below)"
                replied = (relates.get("m.in_reply_to") or {}).get("event_id")
                if replied in items:
                    text = f"↳ (reply to {items[replied]['text'].split(chr(10), 1)[0]}) {text}"
                item = {"sender": event.get("sender", "?"), "text": text, "edits": [],
                        "reactions": {}}
                items[event.get("event_id", "")] = item
                order.append(item)
            elif kind == "m.reaction" and target in items:
                key, person = str(relates.get("key")), who(event["sender"])
                items[target]["reactions"].setdefault(key, []).append(person)
                reactions[event.get("event_id", "")] = (target, key, person)
            elif kind == "m.room.redaction" and event.get("redacts") in reactions:
                target, key, person = reactions.pop(event["redacts"])
                people = items[target]["reactions"][key]
                people.remove(person)
                if not people:
                    del items[target]["reactions"][key]
            elif kind == "m.room.redaction" and event.get("redacts") in items:
                items[event["redacts"]]["text"] = "(deleted)"

        names = [who(item["sender"]) for item in order]
        width = max((len(n) for n in names), default=0)
        lines = []
        for name, item in zip(names, order, strict=True):
            text = item["text"]
            if item["edits"]:
                text += "\n✏️ edited to: " + item["edits"][-1]
            if item["reactions"]:
                text += "   [" + " · ".join(
                    f"{key} {', '.join(people)}" for key, people in item["reactions"].items()
                ) + "]"
            head, *rest = text.split("\n")
            lines.append(f"  {name:<{width}}  {head}")
            lines.extend(f"  {'':<{width}}  {more}" for more in rest)
        return lines


def _describe_content(content: dict[str, Any]) -> str:
    """A message as one (or a few) lines of text; media as ``[image a.png 320×200, 1.2 KB]``."""
    msgtype = content.get("msgtype")
    if msgtype in MEDIA_MSGTYPES and ("url" in content or "file" in content):
        raw_info = content.get("info")
        info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
        text = f"{MEDIA_MSGTYPES[msgtype]} {content.get('filename') or content.get('body')}"
        if msgtype == "m.image" and info.get("w") and info.get("h"):
            text += f" {info['w']}×{info['h']}"
        if isinstance(info.get("size"), int):
            text += f", {human_size(info['size'])}"
        lock = " 🔒" if "file" in content else ""  # sent encrypted
        return f"[{text}]{lock}"
    body = str(content.get("body", ""))
    if msgtype == "m.emote":
        return f"* {body}"
    return body


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


class Demo:
    """Owns everything the demo starts, so :meth:`close` can stop it in the right order."""

    def __init__(self, base: Path, port: int | None = None, language: str = "en") -> None:
        self.base = base
        self.language = language  # both sides' (``parcel-bot demo --language de``)
        self.began = time.monotonic()
        self.homeserver = Homeserver(base / "synapse", port=port)
        self.config: Config | None = None
        self.config_path = base / "parcel.yaml"
        self.bot_user: RegisteredUser | None = None
        self.alice: Participant | None = None
        self.carol: Participant | None = None
        self.customer_room = ""
        self.agent_room = ""
        self.attachments_reply = ""
        self.attachments_event = ""
        self._bot_stop = asyncio.Event()
        self._bot_task: asyncio.Task[None] | None = None

    def step(self, text: str) -> None:
        print(f"  {time.monotonic() - self.began:5.1f}s  {text}", flush=True)

    # -- the bot ----------------------------------------------------------------------------

    def check_bot(self) -> None:
        """Raise DemoError if the bot has stopped (so no wait runs into its deadline blindly)."""
        task = self._bot_task
        if task is not None and task.done():
            problem = task.exception() if not task.cancelled() else None
            raise DemoError(f"the bot stopped unexpectedly: {problem or 'it exited'}")

    async def start_bot(self) -> None:
        from bot.app import Parcel

        assert self.config is not None
        parcel = Parcel(self.config)
        self._bot_task = asyncio.create_task(parcel.run(self._bot_stop), name="parcel")
        ready = asyncio.create_task(parcel.ready.wait())
        done, _ = await asyncio.wait({ready, self._bot_task}, timeout=STEP_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
        self.check_bot()
        if ready not in done:
            raise DemoError(f"timed out after {STEP_TIMEOUT:.0f} s waiting for the bot's "
                            "first sync")

    async def stop_bot(self) -> None:
        task, self._bot_task = self._bot_task, None
        if task is None:
            return
        self._bot_stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)

    # -- set-up ------------------------------------------------------------------------------

    async def setup(self) -> None:
        await self.homeserver.start()
        self.step(f"Synapse is up at {self.homeserver.url} "
                  f"({self.homeserver.startup_seconds:.1f} s)")
        hs = self.homeserver
        self.bot_user = await hs.register("parcel", displayname="Parcel")
        alice_user = await hs.register("alice", displayname="Alice")
        carol_user = await hs.register("carol", displayname="Carol")
        raw = {
            "homeserver": hs.url,
            "user_id": self.bot_user.user_id,
            "password": self.bot_user.password,
            "device_name": "parcel-demo",
            "data_dir": str(self.base / "bot"),
            "encryption": True,
            "agents": {"users": [alice_user.user_id], "room_encryption": ENCRYPTED},
            "policy": {"max_size": "10MB", "offer_ttl": "1h"},
            "logging": {"level": "WARNING"},
            "language": self.language,
        }
        self.config = config_module.parse(raw, env={})
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        clients = self.base / "clients"
        self.alice = await Participant.login("Alice", hs, alice_user, clients / "alice",
                                             self.check_bot)
        self.carol = await Participant.login("Carol", hs, carol_user, clients / "carol",
                                             self.check_bot)
        self.step(f"registered {self.bot_user.user_id} (the bot), {alice_user.user_id} "
                  f"(Alice, agent), {carol_user.user_id} (Carol, customer)")
        await self.start_bot()
        self.step("Parcel is running (end-to-end encryption on)")

    # -- the script ---------------------------------------------------------------------------

    async def play(self) -> None:
        alice, carol, bot = self.alice, self.carol, self.bot_user
        assert alice is not None and carol is not None and bot is not None

        # Carol starts a chat; the bot opens a session and invites Alice.
        self.customer_room = croom = await carol.open_chat_with(bot.user_id)
        self.agent_room = aroom = await alice.accept_invite("Alice's invite to the agent room")
        await carol.until(lambda: carol.messages(croom, bot.user_id),
                          "the bot's welcome in Carol's chat")
        self.step(f"Carol opened {'an encrypted' if ENCRYPTED else 'a'} chat with the bot; "
                  "Alice joined the agent room")

        # Hello, both ways.
        await carol.say(croom, CAROL_HELLO)
        await alice.until(lambda: any(CAROL_HELLO in b for b in alice.bodies(aroom)),
                          "Carol's hello to reach Alice")
        await alice.say(aroom, ALICE_ANSWER)
        await carol.until(lambda: any(ALICE_ANSWER in b for b in carol.bodies(croom)),
                          "Alice's answer to reach Carol")
        self.step("Carol and Alice said hello")

        # Carol's photo: offered to Alice, accepted with ✅, delivered in-line.
        image = router_png()
        await carol.send_file(croom, image, IMAGE_NAME, "image/png", "m.image",
                              {"w": IMAGE_SIZE[0], "h": IMAGE_SIZE[1]})
        await alice.until(lambda: alice.offer_card(aroom, IMAGE_NAME),
                          f"the offer card for {IMAGE_NAME} in the agent room")
        found = alice.offer_card(aroom, IMAGE_NAME)
        assert found is not None
        card: dict[str, Any] = found
        image_offer = card["content"][OFFER_KEY]["id"]
        await alice.until(lambda: len(alice.reactions_on(aroom, card["event_id"])) >= 2,
                          "the bot's ✅/❌ on the image offer")
        await alice.react(aroom, card["event_id"], ACCEPT)
        await alice.until(lambda: alice.media(aroom, bot.user_id, IMAGE_NAME)
                          and alice.offer_state(aroom, image_offer) == "accepted",
                          f"{IMAGE_NAME} to be delivered to Alice")
        await carol.until(lambda: carol.offer_state(croom, image_offer) == "accepted",
                          f"Carol's status line for {IMAGE_NAME} to say received")
        delivered = alice.media(aroom, bot.user_id, IMAGE_NAME)
        assert delivered is not None
        if hashlib.sha256(await alice.download(delivered["content"])).digest() != \
                hashlib.sha256(image).digest():
            raise DemoError(f"the {IMAGE_NAME} Alice received differs from what Carol sent")
        self.step(f"Carol sent {IMAGE_NAME}; Alice accepted it {ACCEPT} and got the same bytes")

        # Alice's PDF: offered to Carol, declined with ❌, never delivered.
        await alice.send_file(aroom, terms_pdf(), PDF_NAME, "application/pdf", "m.file")
        await carol.until(lambda: carol.offer_card(croom, PDF_NAME),
                          f"the offer card for {PDF_NAME} in Carol's chat")
        found = carol.offer_card(croom, PDF_NAME)
        assert found is not None
        pdf_card: dict[str, Any] = found
        pdf_offer = pdf_card["content"][OFFER_KEY]["id"]
        await carol.until(lambda: len(carol.reactions_on(croom, pdf_card["event_id"])) >= 2,
                          "the bot's ✅/❌ on the PDF offer")
        await carol.react(croom, pdf_card["event_id"], DECLINE)
        await carol.until(lambda: carol.offer_state(croom, pdf_offer) == "declined",
                          f"Carol's offer card for {PDF_NAME} to say declined")
        await alice.until(lambda: alice.offer_state(aroom, pdf_offer) == "declined",
                          f"Alice's status line for {PDF_NAME} to say declined")
        if carol.media(croom, bot.user_id, PDF_NAME) is not None:
            raise DemoError(f"{PDF_NAME} reached Carol although she declined it")
        await alice.say(aroom, ALICE_AFTER_PDF)
        await carol.until(lambda: any(ALICE_AFTER_PDF in b for b in carol.bodies(croom)),
                          "Alice's last message to reach Carol")
        self.step(f"Alice sent {PDF_NAME}; Carol declined it {DECLINE}; it never reached her")

        # The attachment log.
        await carol.say(croom, "!attachments")

        # The log's heading in the chat's language, up to its count: "Attachments (".
        assert self.config is not None
        heading = self.config.translator(self.language)._("Attachments ({count}):", count="")
        heading = heading.split("(")[0] + "("

        def reply() -> dict[str, Any] | None:
            for event in carol.messages(croom, bot.user_id):
                if str(event["content"].get("body", "")).startswith(heading):
                    return event
            return None

        await carol.until(reply, "the bot's answer to !attachments")
        found = reply()
        assert found is not None
        self.attachments_reply = str(found["content"]["body"])
        self.attachments_event = found["event_id"]
        # Catch up on anything still in flight (the last edits, the bot's last reactions).
        await alice.sync_once(timeout_ms=0)
        await carol.sync_once(timeout_ms=0)
        self.step("Carol typed !attachments")

    # -- the report ---------------------------------------------------------------------------

    async def report(self) -> None:
        from bot.__main__ import print_log

        alice, carol = self.alice, self.carol
        assert alice is not None and carol is not None and self.config is not None
        lock = " (end-to-end encrypted)" if ENCRYPTED else ""
        print(f"\nWhat Carol saw — her chat with Parcel{lock}:")
        for line in carol.transcript(self.customer_room, {self.attachments_event}):
            print(line)
        print(f"\nWhat Alice saw — the agent room{lock}:")
        for line in alice.transcript(self.agent_room):
            print(line)
        print("\nAttachment log (the bot's answer to !attachments in Carol's chat):")
        for line in self.attachments_reply.splitlines():
            print(f"  {line}")
        print(f"\nAdmin export ({command_name()} log --format csv):")
        sys.stdout.flush()
        await print_log(self.config, None, None, "csv")
        sys.stdout.flush()

    async def keep_running(self, stop: asyncio.Event) -> None:
        """Leave Synapse and the bot up for a person with Element, until ``stop``."""
        alice, carol = self.alice, self.carol
        assert alice is not None and carol is not None
        # The scripted devices go quiet; a person signs in with a new one.
        for person in (alice, carol):
            await person.client.close()
        url = self.homeserver.url
        print(f"\nStill running (Ctrl-C to stop and clean up). Homeserver: {url}")
        for person, role in ((alice, "agent"), (carol, "customer")):
            print(f"  {person.name} ({role}): {person.user_id}  password: {person.user.password}")
        print(f"  Element Web/Desktop: sign in with a custom homeserver {url} and a login above "
              "(on this machine: loopback only).")
        print("  A local Element Web for a look, if ../shared/element-web is present:")
        print(f"    python3 ../shared/element-web/serve.py --homeserver {url}")
        print("    then open the URL it prints and sign in with a login above.")
        print(f"  Attachment log any time: {command_name()} log --config {self.config_path}",
              flush=True)
        waiter = asyncio.create_task(stop.wait())
        assert self._bot_task is not None
        await asyncio.wait({waiter, self._bot_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self.check_bot()

    # -- clean-up -----------------------------------------------------------------------------

    async def close(self) -> None:
        await self.stop_bot()
        for person in (self.alice, self.carol):
            if person is not None:
                with contextlib.suppress(Exception):
                    await person.client.close()
        await self.homeserver.stop()


class _QuietNioSessionWarnings(logging.Filter):
    """Drop nio's "Missing session for device X" warning: it is routine, not a problem.

    nio logs it whenever it is about to claim one-time keys for a device it has not talked
    to yet, i.e. on the first encrypted message to every new device, then carries on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Missing session for device")


@contextlib.contextmanager
def _quiet_nio() -> Iterator[None]:
    quiet = _QuietNioSessionWarnings()
    nio_crypto = logging.getLogger("nio.crypto.log")
    nio_crypto.addFilter(quiet)
    try:
        yield
    finally:
        nio_crypto.removeFilter(quiet)


@contextlib.contextmanager
def _signals(handler: Callable[[], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``handler`` while the demo runs."""
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def run_demo(keep: bool = False, port: int | None = None, language: str = "en") -> int:
    """Play the scripted chat; with ``keep``, stay up until Ctrl-C/SIGTERM. Returns an exit code.

    ``port`` fixes the homeserver's port (so a browser tab or an Element login survives a
    restart of the demo); by default a free one is chosen. ``language`` is the language both
    sides are spoken to in.
    """
    base = Path(tempfile.mkdtemp(prefix="parcel-demo-"))
    demo = Demo(base, port, language)
    stop = asyncio.Event()
    main = asyncio.current_task()
    keeping = cleaning = False
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if cleaning:
            return  # already on the way out
        interrupted = True
        if keeping:
            stop.set()
        elif main is not None:
            main.cancel()

    print("Parcel demo: a scripted support chat on a throwaway Matrix homeserver", flush=True)
    code = 0
    with _signals(on_signal), _quiet_nio():
        try:
            await demo.setup()
            await demo.play()
            await demo.report()
            print(f"\nDemo finished in {time.monotonic() - demo.began:.1f} s.", flush=True)
            if keep:
                keeping = True
                await demo.keep_running(stop)
        except DemoError as exc:
            print(f"parcel-bot demo: {exc}", file=sys.stderr)
            code = 1
        except asyncio.CancelledError:
            if not interrupted:
                raise
            print("parcel-bot demo: interrupted", file=sys.stderr)
            code = 130
        except HomeserverError as exc:
            # The cause in one line, then the end of Synapse's output: its folder is removed
            # on the way out, so this is the only copy.
            first, _, tail = str(exc).strip().partition("\n")
            print(f"parcel-bot demo: {first}", file=sys.stderr)
            for line in tail.splitlines():
                print(f"  {line}", file=sys.stderr)
            code = 1
        except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
            first = (str(exc).strip().splitlines() or [""])[0]
            print(f"parcel-bot demo: {type(exc).__name__}: {first}", file=sys.stderr)
            code = 1
        finally:
            cleaning = True
            try:
                await demo.close()
            finally:
                shutil.rmtree(base, ignore_errors=True)
    return code
