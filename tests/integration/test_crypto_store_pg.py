"""nio's crypto store on a real PostgreSQL: encrypted chats, a replaced client, trust, isolation."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import asyncpg
import psycopg
import pytest
import vodozemac
from nio import AsyncClient, KeysUploadError, RoomCreateResponse, SyncError
from nio.crypto import InboundGroupSession, OlmAccount, OlmDevice, Session, TrustState

from bot.devdb import PostgresServer
from bot.devserver import Homeserver, RegisteredUser
from bot.errors import TransientError
from bot.keys import NIO_DEFAULT_PICKLE_KEY
from bot.leader import Lease, NotLeader
from bot.matrix import pgstore
from bot.matrix.client import client_config
from bot.matrix.cryptostore import CryptoStoreKeyError
from bot.matrix.pgstore import (
    StoreTimer,
    close_crypto_store,
    postgres_crypto_store,
    store_schema,
)
from bot.matrix.roomkeys import forget_room_keys
from bot.store import Store
from tests.chat import Person
from tests.helpers import MakeClient, MakeUser

KEY = "pickle-key-for-the-postgres-crypto-store-tests"


async def _pg_client(homeserver: Homeserver, user: RegisteredUser, url: str, store_dir: Path,
                     timer: StoreTimer | None = None) -> AsyncClient:
    """A client configured as Parcel's, with its crypto store in PostgreSQL, synced once."""
    store_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local temp dir, once
    client = AsyncClient(homeserver.url, user.user_id, device_id=user.device_id,
                         store_path=str(store_dir),
                         config=client_config(True, KEY, postgres_crypto_store(url, timer=timer)))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    synced = await client.sync(timeout=0, full_state=True)
    assert not isinstance(synced, SyncError), synced
    if client.should_upload_keys:
        uploaded = await client.keys_upload()
        assert not isinstance(uploaded, KeysUploadError), uploaded
    return client


async def _close(client: AsyncClient) -> None:
    await client.close()
    close_crypto_store(client)


def _rows(url: str, statement: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()


async def _encrypted_room(carol: Person, *bots: RegisteredUser) -> str:
    response = await carol.client.room_create(
        is_direct=len(bots) == 1, invite=[b.user_id for b in bots],
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    )
    assert isinstance(response, RoomCreateResponse), response
    return response.room_id


async def _joined(carol: Person, room: str, *people: Person) -> None:
    for person in people:
        await person.accept_invite(f"{person.user_id}'s invite")
    await carol.until(lambda: room in carol.client.rooms
                      and all(p.user_id in carol.client.rooms[room].users for p in people),
                      "everyone joined")


async def test_encrypted_dm_survives_replacing_the_client(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, postgres_url: str,
    tmp_path: Path,
) -> None:
    """A new client on the same database is the same device and reads old and new messages."""
    bot_user, carol_user = await make_user("pgbot"), await make_user("carol")
    timer = StoreTimer()
    first = await _pg_client(homeserver, bot_user, postgres_url, tmp_path / "first", timer)
    bot = Person(first, bot_user)
    carol = Person(await make_client(carol_user, encrypted=True), carol_user)
    room = await _encrypted_room(carol, bot_user)
    await _joined(carol, room, bot)

    await carol.say(room, "old from carol")
    await bot.until(lambda: "old from carol" in bot.bodies(room), "the bot decrypting")
    await bot.say(room, "old from the bot")
    await carol.until(lambda: "old from the bot" in carol.bodies(room), "carol decrypting")
    identity = dict(first.olm.account.identity_keys)
    assert timer.by_method["save_inbound_group_session"] and timer.by_method["save_session"]
    await _close(first)

    second = await _pg_client(homeserver, bot_user, postgres_url, tmp_path / "second")
    assert second.olm.account.identity_keys == identity
    assert not second.should_upload_keys
    reborn = Person(second, bot_user)
    await reborn.until(lambda: "old from carol" in reborn.bodies(room),
                       "the old message decrypted with the stored Megolm session")
    await carol.say(room, "new from carol")
    await reborn.until(lambda: "new from carol" in reborn.bodies(room), "a new message")
    await reborn.say(room, "new from the new client")
    await carol.until(lambda: "new from the new client" in carol.bodies(room),
                      "carol decrypting the new client")
    assert reborn.undecryptable == [] and carol.undecryptable == []

    devices = await second.devices()
    assert [d.id for d in devices.devices] == [bot_user.device_id]
    known = carol.client.device_store[bot_user.user_id]  # as the server gave them to carol
    assert [(d.id, d.ed25519) for d in known.values()] == [(bot_user.device_id,
                                                           identity["ed25519"])]
    assert list((tmp_path / "first").iterdir()) == [] == list((tmp_path / "second").iterdir())

    # The pickles in the database open with the configured key, never with nio's default.
    schema = store_schema(bot_user.user_id, bot_user.device_id)
    (account,), = _rows(postgres_url, f"SELECT account FROM {schema}.accounts")
    olm = _rows(postgres_url, f"SELECT session, creation_time FROM {schema}.olmsessions")
    megolm = _rows(postgres_url, f"SELECT session, fp_key, sender_key, room_id "
                                 f"FROM {schema}.megolminboundsessions")
    assert olm and megolm
    assert OlmAccount.from_pickle(account, KEY).identity_keys == identity
    with pytest.raises((vodozemac.PickleException, ValueError)):
        OlmAccount.from_pickle(account, NIO_DEFAULT_PICKLE_KEY)
    for pickle, _created in olm:
        Session.from_pickle(pickle, _created, KEY)
        with pytest.raises((vodozemac.PickleException, ValueError)):
            Session.from_pickle(pickle, _created, NIO_DEFAULT_PICKLE_KEY)
    for pickle, fp_key, sender_key, room_id in megolm:
        InboundGroupSession.from_pickle(pickle, fp_key, sender_key, room_id, KEY)
        with pytest.raises((vodozemac.PickleException, ValueError)):
            InboundGroupSession.from_pickle(pickle, fp_key, sender_key, room_id,
                                            NIO_DEFAULT_PICKLE_KEY)
    await _close(second)


async def test_trust_sync_tokens_and_device_keys_are_replaced_in_place(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, postgres_url: str,
    tmp_path: Path,
) -> None:
    """nio's REPLACE writes (trust, sync token, device keys) update one row and persist."""
    bot_user, carol_user = await make_user("pgbot"), await make_user("carol")
    client = await _pg_client(homeserver, bot_user, postgres_url, tmp_path / "store")
    bot = Person(client, bot_user)
    carol = Person(await make_client(carol_user, encrypted=True), carol_user)
    room = await _encrypted_room(carol, bot_user)
    await _joined(carol, room, bot)
    await bot.say(room, "hello carol")  # queries carol's device keys, shares a session
    await carol.until(lambda: "hello carol" in carol.bodies(room), "carol decrypting")
    store = client.store
    device = client.device_store[carol_user.user_id][carol_user.device_id]
    schema = store_schema(bot_user.user_id, bot_user.device_id)

    def reopened_trust() -> TrustState:
        other = postgres_crypto_store(postgres_url)(bot_user.user_id, bot_user.device_id, "",
                                                    KEY, "")
        try:
            return other.load_device_keys()[carol_user.user_id][carol_user.device_id].trust_state
        finally:
            other.close()

    assert not store.is_device_verified(device)  # now cached as unset
    assert store.verify_device(device) and reopened_trust() is TrustState.verified
    assert store.is_device_verified(device) and not store.verify_device(device)
    assert store.blacklist_device(device) and reopened_trust() is TrustState.blacklisted
    assert store.is_device_blacklisted(device) and not store.is_device_verified(device)
    assert store.unblacklist_device(device) and reopened_trust() is TrustState.unset
    store.ignore_devices([device])  # replace_many
    assert reopened_trust() is TrustState.ignored and store.is_device_ignored(device)
    assert store.unignore_device(device) and not store.is_device_ignored(device)
    store.ignore_devices([device])
    assert _rows(postgres_url, f"SELECT count(*) FROM {schema}.devicetruststate") == [(1,)]

    store.save_sync_token("s1")
    store.save_sync_token("s2")
    assert store.load_sync_token() == "s2"
    assert _rows(postgres_url, f"SELECT token FROM {schema}.synctokens") == [("s2",)]

    changed = OlmDevice(carol_user.user_id, carol_user.device_id,
                        {"ed25519": device.ed25519, "curve25519": "rotated-curve-key"},
                        display_name="Carol's phone")
    store.save_device_keys({carol_user.user_id: {carol_user.device_id: changed}})
    loaded = store.load_device_keys()[carol_user.user_id][carol_user.device_id]
    assert loaded.curve25519 == "rotated-curve-key" and loaded.ed25519 == device.ed25519
    assert _rows(postgres_url, f"SELECT k.key_type, count(*) FROM {schema}.keys k "
                               f"JOIN {schema}.devicekeys d ON d.id = k.device_id "
                               f"WHERE d.device_id = '{carol_user.device_id}' "
                               "GROUP BY k.key_type ORDER BY k.key_type") == [
        ("curve25519", 1), ("ed25519", 1)]
    await _close(client)


async def test_two_accounts_in_one_database_keep_their_own_sessions(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, postgres_url: str,
    tmp_path: Path,
) -> None:
    """Two bots in one encrypted room, one database: each decrypts, sees only its own rows."""
    one_user, two_user = await make_user("pgbot"), await make_user("pgbot")
    carol_user = await make_user("carol")
    one = Person(await _pg_client(homeserver, one_user, postgres_url, tmp_path / "one"), one_user)
    two = Person(await _pg_client(homeserver, two_user, postgres_url, tmp_path / "two"), two_user)
    carol = Person(await make_client(carol_user, encrypted=True), carol_user)
    room = await _encrypted_room(carol, one_user, two_user)
    await _joined(carol, room, one, two)

    await carol.say(room, "for both bots")
    for bot in (one, two):
        await bot.until(lambda bot=bot: "for both bots" in bot.bodies(room), "decrypting")
    await one.say(room, "from bot one")
    await two.until(lambda: "from bot one" in two.bodies(room), "bot two reading bot one")

    sessions = {}
    for user in (one_user, two_user):
        schema = store_schema(user.user_id, user.device_id)
        assert _rows(postgres_url, f"SELECT user_id, device_id FROM {schema}.accounts") == [
            (user.user_id, user.device_id)]
        sessions[user.user_id] = {
            sid for sid, in _rows(postgres_url,
                                  f"SELECT session_id FROM {schema}.megolminboundsessions")}
    # The same Megolm session ids live in both stores: shared tables would have clashed.
    assert sessions[one_user.user_id] & sessions[two_user.user_id]
    assert one.undecryptable == [] and two.undecryptable == []

    # Forgetting the room's keys in one store leaves the other's.
    assert forget_room_keys(one.client, [room]) == len(sessions[one_user.user_id])
    for user, left in ((one_user, 0), (two_user, len(sessions[two_user.user_id]))):
        schema = store_schema(user.user_id, user.device_id)
        assert _rows(postgres_url,
                     f"SELECT count(*) FROM {schema}.megolminboundsessions") == [(left,)]
    await _close(one.client)
    await _close(two.client)


async def test_a_dropped_connection_or_restarted_server_heals_on_the_next_call(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient, tmp_path: Path,
) -> None:
    """A killed connection reconnects unseen; a server that is down raises TransientError."""
    server = PostgresServer(tmp_path / "pg")
    server.start()
    try:
        url = server.url(server.create_database(), with_password=True)
        bot_user, carol_user = await make_user("pgbot"), await make_user("carol")
        client = await _pg_client(homeserver, bot_user, url, tmp_path / "store")
        bot = Person(client, bot_user)
        carol = Person(await make_client(carol_user, encrypted=True), carol_user)
        room = await _encrypted_room(carol, bot_user)
        await _joined(carol, room, bot)

        _rows(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'parcel-nio-store'")
        await carol.say(room, "after the connection was killed")
        await bot.until(lambda: "after the connection was killed" in bot.bodies(room),
                        "decrypting after a reconnect")

        server.stop()
        with pytest.raises(TransientError, match="crypto store"):
            client.store.load_sync_token()
        server.start()
        await carol.say(room, "after the restart")
        await bot.until(lambda: "after the restart" in bot.bodies(room),
                        "decrypting after the server came back")
        await _close(client)
    finally:
        server.stop()


def test_a_store_written_under_another_key_is_refused_clearly(postgres_url: str) -> None:
    """Opening a PostgreSQL crypto store with the wrong pickle key names the problem."""
    store = postgres_crypto_store(postgres_url)("@bot:example.org", "DEV", "", KEY, "")
    store.save_account(OlmAccount())
    store.close()
    other = postgres_crypto_store(postgres_url)("@bot:example.org", "DEV", "", "another-key", "")
    with pytest.raises(CryptoStoreKeyError, match="another key"):
        other.load_account()
    other.close()


def test_writes_are_refused_once_the_fence_says_the_lease_is_lost(postgres_url: str) -> None:
    """With the lease held the store writes; once its fence refuses, every write (nio's own
    and Parcel's through run_guarded) raises NotLeader and changes nothing; reads go on."""
    held = True

    def fence() -> None:
        if not held:
            raise NotLeader("the lease was lost")

    store = postgres_crypto_store(postgres_url, fence=fence)("@bot:example.org", "DEV", "", KEY,
                                                             "")
    try:
        store.save_account(OlmAccount())
        store.save_sync_token("s1")
        store.save_encrypted_rooms(["!one:example.org"])
        held = False
        with pytest.raises(NotLeader):
            store.save_sync_token("s2")
        with pytest.raises(NotLeader):
            store.save_encrypted_rooms(["!two:example.org"])
        with pytest.raises(NotLeader):
            store.save_account(OlmAccount())
        with pytest.raises(NotLeader):
            store.run_guarded("a write of Parcel's", lambda: store.save_sync_token("s3"))
        assert store.load_sync_token() == "s1"
        assert store.load_encrypted_rooms() == {"!one:example.org"}
    finally:
        store.close()


def test_a_frozen_server_blocks_a_call_only_briefly_and_the_store_heals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PostgreSQL frozen (SIGSTOP: connections open, nothing answers) a store call gives
    up on its own with TransientError while the server is still frozen, the calls right after
    fail without waiting, and once the server runs again the store works again."""
    monkeypatch.setattr(pgstore, "QUIET_AFTER_SILENCE", 0.5)
    server = PostgresServer(tmp_path / "pg")
    server.start()
    frozen: list[int] = []
    thawed = threading.Event()

    def thaw() -> None:
        for pid in reversed(frozen):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        thawed.set()

    safety = threading.Timer(30, thaw)  # never leave the server frozen, whatever happens here
    try:
        url = server.url(server.create_database(), with_password=True)
        store = postgres_crypto_store(url)("@bot:example.org", "DEV", "", KEY, "")
        store.save_account(OlmAccount())
        store.save_sync_token("before")
        frozen.extend(server.pids())
        safety.start()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        with pytest.raises(TransientError, match="did not answer"):
            store.save_sync_token("while frozen")
        with pytest.raises(TransientError, match="did not answer a moment ago"):
            store.load_sync_token()
        assert not thawed.is_set(), "the call returned only once the server was thawed"
        thaw()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert store.load_sync_token() == "before"
                break
            except TransientError:
                assert time.monotonic() < deadline, "the store did not heal"
                time.sleep(0.2)
        store.save_sync_token("after")
        assert store.load_sync_token() == "after"
        store.close()
    finally:
        safety.cancel()
        thaw()
        server.stop()


async def test_the_database_refuses_a_crypto_store_write_of_an_older_term(
    postgres_url: str,
) -> None:
    """With Parcel's store in the database, the crypto store's writes carry the store's term:
    after another instance took the lease, a write of the old term is refused by the database
    (even with no fence asked first), and writes go through again under the current term."""
    store = await Store.open(postgres_url)
    stop = asyncio.Event()
    old = Lease(lambda: asyncpg.connect(postgres_url), ttl=3.0, holder="old")
    new = Lease(lambda: asyncpg.connect(postgres_url), ttl=3.0, holder="new")
    crypto = None
    try:
        assert await old.acquire(stop)
        store.write_as(old.name, old.token)
        crypto = postgres_crypto_store(postgres_url, term=store.term_setting)(
            "@bot:example.org", "DEV", "", KEY, "")
        crypto.save_account(OlmAccount())
        crypto.save_sync_token("first term")
        await old.release()
        assert await new.acquire(stop)
        with pytest.raises(NotLeader):
            crypto.save_sync_token("the deposed leader's")
        assert crypto.load_sync_token() == "first term"
        store.write_as(new.name, new.token)  # this process leads again, in the new term
        crypto.save_sync_token("second term")
        assert crypto.load_sync_token() == "second term"
    finally:
        if crypto is not None:
            crypto.close()
        await new.release()
        await store.close()
