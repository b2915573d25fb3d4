"""What the bot knows about rooms: readiness for sending, members and their names.

The bot never asks the homeserver for the whole state of all its rooms (a ``full_state`` sync
costs seconds with thousands of open chats and grows with every one). At a restart the rooms
are rebuilt from one ``/joined_rooms`` list and nio's own record of which are encrypted
(:meth:`RoomDirectory.restore`); a room's members are read with ``/joined_members`` the first
time they matter (:meth:`RoomDirectory.ready`, :meth:`RoomDirectory.load_members`), and from
then on kept current by the membership events of each sync.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from nio import AsyncClient, JoinedMembersResponse, JoinedRoomsResponse, MatrixRoom

from bot.attachments.text import strip_invisible
from bot.errors import PermanentError, TransientError
from bot.matrix.client import call

logger = logging.getLogger(__name__)


class RoomDirectory:
    """Tracks which rooms nio knows, and whether it knows their members."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._loading: dict[str, asyncio.Future[None]] = {}  # one members request per room

    async def restore(self) -> int:
        """Make every room the bot has joined known to nio without syncing its state.

        One ``/joined_rooms`` request; whether a room is encrypted comes from nio's store. The
        members of each room are left to :meth:`load_members`. Returns how many rooms were
        added.
        """
        joined = await call("listing the bot's rooms", self._client.joined_rooms(),
                            JoinedRoomsResponse)
        added = 0
        for room_id in joined.rooms:
            if room_id not in self._client.rooms:
                self._client.rooms[room_id] = MatrixRoom(
                    room_id, self._client.user_id, room_id in self._client.encrypted_rooms)
                added += 1
        self.refresh()
        return added

    def refresh(self) -> None:
        """Wake whoever waits for a room that the last sync brought in."""
        for room_id in list(self._waiters):
            if room_id in self._client.rooms:
                for waiter in self._waiters.pop(room_id):
                    if not waiter.done():
                        waiter.set_result(None)

    async def ready(self, room_id: str, timeout: float = 30.0) -> MatrixRoom:
        """Wait until nio knows ``room_id`` and its members, and return it.

        Raises :class:`TransientError` when no sync brought the room within ``timeout``, or
        when its members could not be read.
        """
        room = self._client.rooms.get(room_id)
        if room is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters[room_id].append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError as exc:
                raise TransientError(f"room {room_id} has not come in a sync yet") from exc
            room = self._client.rooms[room_id]
        await self.load_members(room_id)
        return room

    async def load_members(self, *room_ids: str | None) -> None:
        """Read the members of each known room whose members are not known yet (after a
        restart, or after a gap in the sync); rooms nio does not know are left alone."""
        for room_id in room_ids:
            room = self._client.rooms.get(room_id) if room_id is not None else None
            if room is None or room.members_synced:
                continue
            loading = self._loading.get(room.room_id)
            if loading is None:
                loading = asyncio.ensure_future(self._read_members(room))
                self._loading[room.room_id] = loading
            await asyncio.shield(loading)

    async def _read_members(self, room: MatrixRoom) -> None:
        before = set(room.users)
        try:
            # nio's handler fills the members, marks them synced and tracks their devices.
            await call(f"reading the members of {room.room_id}",
                       self._client.joined_members(room.room_id), JoinedMembersResponse)
        except PermanentError as exc:
            # Not readable: the bot is no longer in the room (the sync will say so). What is
            # known stands; asking again for every event would only repeat the refusal.
            logger.info("%s", exc.reason)
            room.members_synced = True
            return
        finally:
            self._loading.pop(room.room_id, None)  # the next caller asks again if this failed
        arrived = set(room.users) - before - {self._client.user_id}
        if arrived and before and room.encrypted and self._client.olm is not None:
            # Members nio had missed (a gap in the sync): a key already shared must not be
            # used for them, or they could not read what follows.
            self._client.invalidate_outbound_session(room.room_id)

    def forget_members(self, room_id: str) -> None:
        """The room's members may have changed unseen (the sync skipped events): read them
        again before the next use."""
        room = self._client.rooms.get(room_id)
        if room is not None:
            room.members_synced = False

    def room(self, room_id: str) -> MatrixRoom | None:
        """The room as of the last sync, if known."""
        return self._client.rooms.get(room_id)

    def display_name(self, room_id: str, user_id: str) -> str:
        """A member's display name in a room, falling back to the localpart."""
        room = self._client.rooms.get(room_id)
        user = room.users.get(user_id) if room is not None else None
        name = user.display_name if user is not None else None
        if isinstance(name, str):
            cleaned = " ".join(strip_invisible(name).split())[:64]
            if cleaned:
                return cleaned
        return user_id.split(":", 1)[0].lstrip("@") or user_id

    def names_in(self, room_id: str) -> dict[str, str]:
        """Every member's display name in a room, keyed by user id."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return {}
        return {uid: self.display_name(room_id, uid) for uid in room.users}

    def members(self, room_id: str) -> set[str]:
        """Joined and invited members of a room, as of the last sync."""
        room = self._client.rooms.get(room_id)
        return set(room.users) if room is not None else set()
