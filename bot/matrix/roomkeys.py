"""Forgetting the Megolm keys of rooms the bot has left for good.

matrix-nio keeps every inbound group session it ever received in its store (Parcel reads them
into memory only when needed: bot/matrix/groupsessions.py). A support bot leaves every closed
chat's rooms and never reads their history again, so those keys only cost space — and they
would let anyone holding the store read old conversations. They are dropped when the bot
leaves a room, and at start for rooms it left before this existed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nio import AsyncClient
from nio.store.models import ForwardedChains, MegolmInboundSessions

from bot.matrix.groupsessions import store_call

logger = logging.getLogger(__name__)


def forget_room_keys(client: AsyncClient, room_ids: Iterable[str]) -> int:
    """Drop the inbound Megolm sessions of ``room_ids``, rooms the bot has left, from nio's
    memory and store. Returns how many sessions were dropped."""
    olm, store = client.olm, client.store
    gone = list(room_ids)
    if olm is None or store is None or not gone:
        return 0
    # nio has no API for this; GroupSessionStore keeps room -> sender key -> session id.
    entries = olm.inbound_group_store._entries
    for room_id in gone:
        entries.pop(room_id, None)
        olm.outbound_group_sessions.pop(room_id, None)

    def delete() -> int:
        with store.database.bind_ctx(store.models), store.database.atomic():
            account = store._get_account()
            if account is None:
                return 0
            sessions = (MegolmInboundSessions.select(MegolmInboundSessions.session_id)
                        .where(MegolmInboundSessions.account == account,
                               MegolmInboundSessions.room_id.in_(gone)))
            ForwardedChains.delete().where(ForwardedChains.session.in_(sessions)).execute()
            return int(MegolmInboundSessions.delete().where(
                MegolmInboundSessions.account == account,
                MegolmInboundSessions.room_id.in_(gone),
            ).execute())

    count = store_call(store, "forget_room_keys", delete)
    if count:
        logger.info("forgot %d room keys of %d rooms the bot has left", count, len(gone))
    return count


def forget_keys_of_left_rooms(client: AsyncClient, closed_rooms: Iterable[str]) -> int:
    """After the first sync: forget the keys of closed sessions' rooms the bot is not in.

    Only rooms of closed sessions: a room missing from nio's view for another reason keeps
    its keys, since losing the key of a live conversation makes it unreadable.
    """
    olm, store = client.olm, client.store
    if olm is None or store is None:
        return 0
    # Sessions are read from the store only when needed (bot/matrix/groupsessions.py), so
    # which rooms have some is asked of the store, in one query.
    listed = getattr(store, "rooms_with_inbound_sessions", None)
    held: set[str] = (set(olm.inbound_group_store._entries) if listed is None
                      else store_call(store, "rooms_with_inbound_sessions", listed))
    return forget_room_keys(client, [
        room for room in set(closed_rooms)
        if room in held and room not in client.rooms and room not in client.invited_rooms
    ])
