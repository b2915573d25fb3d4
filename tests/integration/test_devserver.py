"""The throwaway Synapse harness: it answers, users talk through it, and restarts keep data."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MatrixRoom,
    ProfileGetDisplayNameResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageText,
    RoomSendResponse,
)

from bot.devserver import Homeserver, RegisteredUser
from tests.helpers import MakeClient, MakeUser, sync_until, wait_for


async def _password_login(url: str, user: RegisteredUser) -> LoginResponse:
    """Log in with the user's password on a fresh nio client and return the response."""
    client = AsyncClient(url, user.user_id, config=AsyncClientConfig(store_sync_tokens=False))
    try:
        response = await client.login(user.password, device_name="harness-test")
        assert isinstance(response, LoginResponse), f"login failed: {response}"
        return response
    finally:
        await client.close()


async def test_server_answers_versions(homeserver: Homeserver) -> None:
    """The session homeserver listens on loopback and answers /_matrix/client/versions."""
    assert homeserver.url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        async with session.get(homeserver.url + "/_matrix/client/versions") as response:
            assert response.status == 200
            assert (await response.json())["versions"]


async def test_two_users_exchange_a_message(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient
) -> None:
    """Registered users log in, one invites the other to a room and a text message arrives."""
    alice_user = await make_user("alice", displayname="Alice")
    bob_user = await make_user("bob")
    assert alice_user.user_id != bob_user.user_id
    assert alice_user.user_id.endswith(":" + homeserver.server_name)
    await _password_login(homeserver.url, bob_user)

    alice = await make_client(alice_user)
    bob = await make_client(bob_user)
    name = await alice.get_displayname()
    assert isinstance(name, ProfileGetDisplayNameResponse) and name.displayname == "Alice"

    created = await alice.room_create(name="harness")
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    invited = await alice.room_invite(room_id, bob_user.user_id)
    assert isinstance(invited, RoomInviteResponse), invited

    await sync_until(bob, lambda: room_id in bob.invited_rooms, what="bob sees the invite")
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), joined

    received: list[str] = []

    async def on_text(room: MatrixRoom, event: RoomMessageText) -> None:
        if room.room_id == room_id and event.sender == alice_user.user_id:
            received.append(event.body)

    bob.add_event_callback(on_text, RoomMessageText)  # type: ignore[arg-type]

    def bob_joined() -> bool:
        room = alice.rooms.get(room_id)
        return room is not None and bob_user.user_id in room.users

    await sync_until(alice, bob_joined, what="alice sees bob joined")
    sent = await alice.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bob"}
    )
    assert isinstance(sent, RoomSendResponse), sent
    await sync_until(bob, lambda: "hello bob" in received, what="bob receives the message")


async def test_encrypted_client_publishes_device_keys(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient
) -> None:
    """make_client(encrypted=True) uploads the device keys, so others can encrypt to it."""
    user = await make_user("erin")
    client = await make_client(user, encrypted=True)
    assert client.olm is not None and not client.should_upload_keys
    async with aiohttp.ClientSession() as session:
        async with session.post(
            homeserver.url + "/_matrix/client/v3/keys/query",
            json={"device_keys": {user.user_id: []}},
            headers={"Authorization": f"Bearer {user.access_token}"},
        ) as response:
            assert response.status == 200
            devices = (await response.json())["device_keys"][user.user_id]
    assert user.device_id in devices


@pytest.mark.integration
async def test_restart_keeps_data_and_port(tmp_path: Path) -> None:
    """After restart() the server is back on the same URL and earlier users can log in."""
    async with Homeserver(tmp_path / "synapse", server_name="restart.test") as server:
        url = server.url
        user = await server.register(server.unique_localpart("dave"), password="s3cret-pw")
        await server.restart()
        assert server.url == url and server.running
        login = await _password_login(server.url, user)
        assert login.user_id == user.user_id
        # The token from registration survives the restart as well.
        async with aiohttp.ClientSession() as session:
            async with session.get(
                url + "/_matrix/client/v3/account/whoami",
                headers={"Authorization": f"Bearer {user.access_token}"},
            ) as response:
                assert response.status == 200
                assert (await response.json())["user_id"] == user.user_id
    assert not server.running



async def test_wait_for_names_what_it_waited_for() -> None:
    """wait_for accepts sync and async predicates and fails with the given description."""
    calls: list[int] = []

    async def third_time_lucky() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await wait_for(third_time_lucky, timeout=5, what="three calls", interval=0.01)
    with pytest.raises(AssertionError, match="the impossible"):
        await wait_for(lambda: False, timeout=0.1, what="the impossible", interval=0.01)
