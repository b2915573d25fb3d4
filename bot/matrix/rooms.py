"""What the bot knows about rooms: readiness for sending, members and their names."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from nio import AsyncClient, MatrixRoom

from bot.attachments.text import strip_invisible
from bot.errors import TransientError


class RoomDirectory:
    """Tracks which rooms nio has state for (nio can send only to rooms it has synced)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)

    def refresh(self) -> None:
        """Wake whoever waits for a room that the last sync brought in."""
        for room_id in list(self._waiters):
            if room_id in self._client.rooms:
                for waiter in self._waiters.pop(room_id):
                    if not waiter.done():
                        waiter.set_result(None)

    async def ready(self, room_id: str, timeout: float = 30.0) -> MatrixRoom:
        """Wait until nio knows ``room_id`` (after a sync) and return it.

        Raises :class:`TransientError` when no sync brought the room within ``timeout``.
        """
        room = self._client.rooms.get(room_id)
        if room is not None:
            return room
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[room_id].append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError as exc:
            raise TransientError(f"room {room_id} has not come in a sync yet") from exc
        return self._client.rooms[room_id]

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
