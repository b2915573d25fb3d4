"""Shared fixtures: one real Synapse for the session, a user factory and a nio client factory.

Tests that use the ``homeserver`` fixture (directly or through ``make_user`` /
``make_client``) are marked ``integration`` automatically; ``-m "not integration"`` runs the
fast unit tests alone. Tests share the one server, so every user gets a unique localpart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nio import AsyncClient, AsyncClientConfig, KeysUploadError, SyncError

from bot.devdb import PostgresServer
from bot.devserver import Homeserver, RegisteredUser, unique_localpart
from tests.chat import BotProcess, BotRunner, Person, bot_config
from tests.helpers import MakeClient, MakeUser

logger = logging.getLogger(__name__)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real homeserver as ``integration``."""
    for item in items:
        if "homeserver" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


# --- homeserver, users, clients ------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def homeserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Homeserver]:
    """One Synapse on loopback for the whole session, stopped at the end."""
    server = Homeserver(tmp_path_factory.mktemp("synapse"))
    await server.start()
    logger.info("Session homeserver at %s started in %.2f s", server.url, server.startup_seconds)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL server (Debian's binaries, a cluster in a temp dir) for the session."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL for one test alone (its faults must not reach the session's shared one);
    stopped at the end, thawed first if the test left it frozen."""
    pg = PostgresServer(tmp_path / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL, as a URL with its password."""
    return postgres.url(postgres.create_database(), with_password=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The ``database`` a store test opens, once per backend: a SQLite file, an empty PG one."""
    if request.param == "sqlite":
        return tmp_path / "data" / "parcel.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def bot_store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``start_chat`` settings putting the bot's store on one backend: SQLite in data_dir (no
    setting) or an empty PostgreSQL database (``database: URL``)."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("postgres_url")
    # With PostgreSQL the encryption key must be given (it may not be generated into data_dir).
    return {"database": url, "encryption_key": "a test key shared by every instance"}


@pytest.fixture
def make_user(homeserver: Homeserver) -> MakeUser:
    """Factory: ``await make_user("carol", displayname="Carol")`` registers ``@carol-<n>…``."""

    async def make(
        prefix: str = "user",
        *,
        displayname: str | None = None,
        admin: bool = False,
        password: str | None = None,
    ) -> RegisteredUser:
        return await homeserver.register(
            unique_localpart(prefix), password=password, admin=admin, displayname=displayname
        )

    return make


@pytest_asyncio.fixture(loop_scope="session")
async def make_client(
    homeserver: Homeserver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MakeClient]:
    """Factory for logged-in nio clients that have synced once; all are closed afterwards.

    ``await make_client(user, encrypted=True)`` also loads the crypto store (in its own temp
    directory) and uploads the device keys, so others can encrypt to this device.
    """
    clients: list[AsyncClient] = []

    async def make(user: RegisteredUser, encrypted: bool = False) -> AsyncClient:
        store: Path = tmp_path_factory.mktemp("nio-store")
        client = AsyncClient(
            homeserver.url,
            user.user_id,
            device_id=user.device_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=encrypted, store_sync_tokens=False),
        )
        clients.append(client)
        client.restore_login(user.user_id, user.device_id, user.access_token)
        synced = await client.sync(timeout=0, full_state=True)
        assert not isinstance(synced, SyncError), f"initial sync failed: {synced}"
        if encrypted and client.should_upload_keys:
            uploaded = await client.keys_upload()
            assert not isinstance(uploaded, KeysUploadError), f"keys_upload failed: {uploaded}"
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


# --- Parcel bot fixtures (added by the lead) ------------------------------------------------


@dataclass
class Chat:
    """A running bot with one agent and one customer, ready for a session."""

    bot: Any  # BotRunner, or BotProcess for crash tests
    bot_user: RegisteredUser
    agent: Person
    customer: Person
    homeserver: Homeserver
    customer_room: str = ""
    agent_room: str = ""

    @property
    def bot_id(self) -> str:
        """The bot's user id."""
        return self.bot_user.user_id

    async def open_session(self, encrypted: bool = False) -> None:
        """The customer starts a DM with the bot; the agent joins the new agent room."""
        self.customer_room = await self.customer.open_chat_with(self.bot_user.user_id, encrypted)
        self.agent_room = await self.agent.accept_invite("the agent room invite")
        await self.customer.until(
            lambda: any("connected" in b for b in self.customer.bodies(self.customer_room)),
            "the welcome message",
        )


@pytest_asyncio.fixture(loop_scope="session")
async def start_chat(
    homeserver: Homeserver, make_user: MakeUser, make_client: MakeClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Callable[..., Awaitable[Chat]]]:
    """Factory: ``await start_chat(**config_overrides)`` → a running bot, agent and customer."""
    runners: list[Any] = []

    async def start(
        encrypted: bool = False, as_process: bool = False, bot_admin: bool = False,
        extra_agents: tuple[str, ...] | list[str] = (), **overrides: Any,
    ) -> Chat:
        bot_user = await make_user("parcel", displayname="Parcel", admin=bot_admin)
        agent_user = await make_user("alice", displayname="Alice")
        customer_user = await make_user("carol", displayname="Carol")
        agent = Person(await make_client(agent_user, encrypted=encrypted), agent_user)
        customer = Person(await make_client(customer_user, encrypted=encrypted), customer_user)
        config = bot_config(homeserver, bot_user, [agent_user.user_id, *extra_agents],
                            tmp_path_factory.mktemp("parcel-data"), **overrides)
        runner: Any
        if as_process:
            runner = BotProcess(config, config.data_dir.parent / f"{config.data_dir.name}.yaml")
        else:
            runner = BotRunner(config)
        runners.append(runner)
        await runner.start()
        return Chat(runner, bot_user, agent, customer, homeserver)

    try:
        yield start
    finally:
        for runner in runners:
            if isinstance(runner, BotProcess):
                await runner.kill()
            else:
                await runner.stop()
