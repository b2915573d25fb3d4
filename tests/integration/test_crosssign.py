"""Cross-signing the bot's device through the real Synapse, checked as another user sees it."""

from __future__ import annotations

import asyncio
import logging
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, AsyncClientConfig, LoginResponse
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot.devserver import Homeserver, RegisteredUser
from bot.documents import FileDocuments
from bot.matrix.crosssign import (
    SEEDS_FILE,
    CrossSigningSeeds,
    CrossSigningStatus,
    IdentityMismatch,
    decode_base64,
    ensure_cross_signed,
    save_seeds,
)
from tests.helpers import MakeClient, MakeUser

LOGGER = "bot.matrix.crosssign"
UPLOADS = ("/keys/device_signing/upload", "/keys/signatures/upload")
SEEDS_KEY = bytes(range(32))


class Recorder:
    """An aiohttp session factory that records every request's method and path."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def session(self) -> aiohttp.ClientSession:
        async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
            self.requests.append((params.method, params.url.path))

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        return aiohttp.ClientSession(trace_configs=[trace])

    def uploads(self) -> list[str]:
        return [path for _, path in self.requests if path.endswith(UPLOADS)]


async def run(client: AsyncClient, data_dir: Path, password: str | None = None,
              recorder: Recorder | None = None, reset: bool = False) -> CrossSigningStatus:
    """ensure_cross_signed, through a recording session when a recorder is given."""
    documents = FileDocuments(data_dir)
    if recorder is None:
        return await ensure_cross_signed(client, documents, password, seeds_key=SEEDS_KEY,
                                         reset=reset)
    async with recorder.session() as session:
        return await ensure_cross_signed(client, documents, password, seeds_key=SEEDS_KEY,
                                         reset=reset, session=session)


async def keys_seen_by(homeserver: Homeserver, observer: RegisteredUser,
                       user_id: str) -> dict[str, Any]:
    """What ``observer`` gets from /keys/query about ``user_id``."""
    async with aiohttp.ClientSession() as session:
        async with session.post(
            homeserver.url + "/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {observer.access_token}"},
        ) as response:
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            return body


def _single_key(key_object: dict[str, Any]) -> str:
    (public,) = key_object["keys"].values()
    return str(public)


def _verifies(obj: dict[str, Any], user_id: str, public: str) -> bool:
    """Check a signature with signedjson (Synapse's library), independent of our code."""
    verify_key = decode_verify_key_bytes(f"ed25519:{public}", decode_base64(public))
    try:
        verify_signed_json(obj, user_id, verify_key)
    except SignatureVerifyException:
        return False
    return True


def assert_chain(keys: dict[str, Any], user_id: str, device_id: str) -> tuple[str, str]:
    """Assert device ← self-signing ← master as published; return (master, self-signing)."""
    master = _single_key(keys["master_keys"][user_id])
    self_signing_key = keys["self_signing_keys"][user_id]
    self_signing = _single_key(self_signing_key)
    assert self_signing_key["usage"] == ["self_signing"]
    assert _verifies(self_signing_key, user_id, master), "self-signing key not signed by master"
    device = keys["device_keys"][user_id][device_id]
    assert _verifies(device, user_id, self_signing), "device not signed by self-signing key"
    return master, self_signing


async def new_device(homeserver: Homeserver, user: RegisteredUser) -> RegisteredUser:
    """Log ``user`` in again with the password: a second device of the same account."""
    client = AsyncClient(homeserver.url, user.user_id,
                         config=AsyncClientConfig(store_sync_tokens=False))
    try:
        response = await client.login(user.password, device_name="second")
        assert isinstance(response, LoginResponse), response
    finally:
        await client.close()
    return RegisteredUser(user.user_id, user.password, response.access_token, response.device_id)


async def test_bot_device_is_cross_signed_for_others(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """After the call another user sees the device signed by the self-signing key and that
    key signed by the master key; the seeds file is private."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    bot = await make_client(bot_user, encrypted=True)

    status = await run(bot, tmp_path)

    assert status.cross_signed, status.detail
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    master, self_signing = assert_chain(keys, bot_user.user_id, bot_user.device_id)
    assert (status.master_key, status.self_signing_key) == (master, self_signing)
    assert bot_user.user_id not in keys.get("user_signing_keys", {})  # private to the owner
    assert stat.S_IMODE((tmp_path / SEEDS_FILE).stat().st_mode) == 0o600


async def test_second_call_is_a_no_op(
    make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """Calling again only queries the keys: nothing is uploaded and the status is the same."""
    bot_user = await make_user("parcel")
    bot = await make_client(bot_user, encrypted=True)
    first_recorder, second_recorder = Recorder(), Recorder()

    first = await run(bot, tmp_path, recorder=first_recorder)
    second = await run(bot, tmp_path, recorder=second_recorder)

    assert first_recorder.uploads() == ["/_matrix/client/v3" + path for path in UPLOADS]
    assert second.cross_signed, second.detail
    assert second_recorder.requests == [("POST", "/_matrix/client/v3/keys/query")]
    assert "already published" in second.detail and "already signed" in second.detail
    assert (second.master_key, second.self_signing_key) == (first.master_key,
                                                            first.self_signing_key)


async def test_new_device_with_same_data_dir_keeps_identity(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """A restart on a new device with the same data dir keeps the master key and signs the
    new device without re-publishing the cross-signing keys."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    first = await run(await make_client(bot_user, encrypted=True), tmp_path)
    second_user = await new_device(homeserver, bot_user)
    recorder = Recorder()

    second = await run(await make_client(second_user, encrypted=True), tmp_path,
                       recorder=recorder)

    assert second.cross_signed, second.detail
    assert second.master_key == first.master_key
    assert recorder.uploads() == ["/_matrix/client/v3/keys/signatures/upload"]
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    assert assert_chain(keys, bot_user.user_id, second_user.device_id)[0] == first.master_key
    assert assert_chain(keys, bot_user.user_id, bot_user.device_id)[0] == first.master_key


@pytest.mark.parametrize("password", [None, "configured"])
@pytest.mark.parametrize("lost", ["seeds deleted", "other seeds"])
async def test_never_replaces_the_identity_by_itself(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path,
    lost: str, password: str | None,
) -> None:
    """With seeds missing or different, start-up stops with the key and the reset command,
    password or not: nothing is uploaded and the published master key stays."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    bot = await make_client(bot_user, encrypted=True)
    first = await run(bot, tmp_path)
    seeds_path = tmp_path / SEEDS_FILE
    seeds_path.unlink()
    if lost == "other seeds":
        await save_seeds(FileDocuments(tmp_path), CrossSigningSeeds.generate(bot_user.user_id),
                         SEEDS_KEY)
    other_seeds = seeds_path.read_bytes() if seeds_path.exists() else None
    recorder = Recorder()

    with pytest.raises(IdentityMismatch) as caught:
        await run(bot, tmp_path, password=bot_user.password if password else None,
                  recorder=recorder)

    assert first.master_key in str(caught.value)
    assert "parcel-bot reset-identity --config" in str(caught.value)
    assert recorder.uploads() == []
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    assert _single_key(keys["master_keys"][bot_user.user_id]) == first.master_key
    # The seeds file is left as it was: not created, not overwritten.
    assert (seeds_path.read_bytes() if seeds_path.exists() else None) == other_seeds


async def test_reset_without_a_password_changes_nothing(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """The explicit reset still needs the password: without one the status says so."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    bot = await make_client(bot_user, encrypted=True)
    first = await run(bot, tmp_path)
    (tmp_path / SEEDS_FILE).unlink()
    status = await run(bot, tmp_path, password=None, reset=True)
    assert not status.cross_signed and "needs its password" in status.detail
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    assert _single_key(keys["master_keys"][bot_user.user_id]) == first.master_key


async def test_replaces_identity_with_password(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the seeds lost, the admin's reset replaces the identity through password auth,
    with a warning, and the device is signed by it."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    bot = await make_client(bot_user, encrypted=True)
    first = await run(bot, tmp_path)
    (tmp_path / SEEDS_FILE).unlink()
    caplog.set_level(logging.WARNING, logger=LOGGER)

    status = await run(bot, tmp_path, password=bot_user.password, reset=True)

    assert status.cross_signed, status.detail
    assert status.master_key not in (None, first.master_key)
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    master, self_signing = assert_chain(keys, bot_user.user_id, bot_user.device_id)
    assert (master, self_signing) == (status.master_key, status.self_signing_key)
    assert stat.S_IMODE((tmp_path / SEEDS_FILE).stat().st_mode) == 0o600
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("identity" in w and first.master_key in w and master in w for w in warnings)
    # The new identity is now the stable one.
    again = await run(bot, tmp_path, password=bot_user.password)
    assert again.cross_signed and again.master_key == master and "already" in again.detail


async def test_wrong_password_leaves_identity(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """A refused password means no replacement: not cross-signed, old master key stays."""
    bot_user, observer = await make_user("parcel"), await make_user("alice")
    bot = await make_client(bot_user, encrypted=True)
    first = await run(bot, tmp_path)
    (tmp_path / SEEDS_FILE).unlink()

    status = await run(bot, tmp_path, password="not-the-password", reset=True)

    assert not status.cross_signed
    assert "refused the password" in status.detail
    keys = await keys_seen_by(homeserver, observer, bot_user.user_id)
    assert _single_key(keys["master_keys"][bot_user.user_id]) == first.master_key


async def test_unencrypted_client_is_not_cross_signed(
    make_user: MakeUser, make_client: MakeClient, tmp_path: Path
) -> None:
    """Without end-to-end encryption there is nothing to sign, and nothing is published."""
    bot = await make_client(await make_user("parcel"), encrypted=False)
    recorder = Recorder()

    status = await run(bot, tmp_path, recorder=recorder)

    assert not status.cross_signed and "encryption is off" in status.detail
    assert recorder.requests == [] and not (tmp_path / SEEDS_FILE).exists()


async def test_lost_seeds_stop_start_up_until_the_admin_resets(start_chat) -> None:
    """A bot whose seeds file is gone refuses to start, naming the command; after
    ``parcel-bot reset-identity`` it starts cross-signed with a new identity."""
    chat = await start_chat(as_process=True)
    await chat.bot.stop()
    seeds = chat.bot.config.data_dir / SEEDS_FILE
    old = seeds.read_bytes()
    seeds.unlink()

    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", "--config", str(chat.bot.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 1
    assert b"reset-identity --config" in err and not seeds.exists()

    reset = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "reset-identity", "--config", str(chat.bot.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(reset.communicate(), 60)
    assert reset.returncode == 0, err.decode()
    assert b"replaced master key" in out
    assert seeds.exists() and seeds.read_bytes() != old

    await chat.bot.start()
    await chat.open_session()
    await chat.customer.say(chat.customer_room, "after the reset")
    await chat.agent.until(lambda: "Carol: after the reset" in chat.agent.bodies(chat.agent_room),
                           "a relay after the reset")
