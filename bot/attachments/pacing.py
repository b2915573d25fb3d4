"""When the bot's bookkeeping may reach the homeserver: after the messages people wait for.

Synapse handles one request at a time per process, so a panel edit that lands beside an offer
card or a delivered file makes that card or file slower for the person waiting for it. Two
rules keep the bookkeeping behind:

* **Holds.** From the start of an offer's check until its card and the sender's status line
  are out, and while its delivered file is on its way, its rooms are *held*
  (:class:`RoomHolds`): a panel edit for a held room waits until the hold is released, or
  until its bound passes (a hold is in memory and must never stall a panel for good, e.g.
  after the step that set it failed; the panel also waits :data:`HOLD_AT_MOST` at most in
  all, however many holds follow one another).
* **Pace.** A room's panel is edited at most once per ``interval`` (:func:`panel_delay`): a
  burst of changes is one edit, and the edits of a busy room never crowd its messages.

Both are in memory on purpose: what is owed is durable elsewhere (a panel's version in the
store, the offer's state); after a restart the first edit simply is not paced against the
previous process's last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# A card or a delivery is one request or a few; a staging upload that a ✅ waits for is
# longer. Beyond this a hold is assumed stuck (its step failed or was cancelled) and ignored.
HOLD_AT_MOST = 30.0


def panel_delay(now: float, last_edit: float | None, interval: float, gather: float) -> float:
    """Seconds to wait before a room's panel edit that became owed at ``now``.

    At least ``gather`` (the rest of a burst arrives meanwhile) and never sooner than
    ``interval`` after the room's previous edit at ``last_edit`` (None: none in this process).
    """
    wait = gather
    if last_edit is not None:
        wait = max(wait, last_edit + interval - now)
    return max(0.0, wait)


def held_until(holds: Iterable[tuple[frozenset[str], float]], room_id: str,
               now: float) -> float | None:
    """The latest deadline among the unexpired ``holds`` (rooms, deadline) covering
    ``room_id``; None when the room is free."""
    deadlines = [deadline for rooms, deadline in holds if room_id in rooms and deadline > now]
    return max(deadlines) if deadlines else None


@dataclass
class _Hold:
    rooms: frozenset[str]
    deadline: float


class RoomHolds:
    """Rooms held while a card or a delivered file is on its way (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._holds: dict[str, _Hold] = {}

    def hold(self, token: str, rooms: Iterable[str], at_most: float = HOLD_AT_MOST) -> None:
        """Hold ``rooms`` under ``token`` (holding again under a token renews it)."""
        self._holds[token] = _Hold(frozenset(rooms), self._clock() + at_most)

    def release(self, token: str) -> None:
        """End the hold ``token`` (nothing if there is none)."""
        self._holds.pop(token, None)

    def held(self, room_id: str) -> float | None:
        """The monotonic time until which ``room_id`` is held; None when it is free."""
        now = self._clock()
        for token in [t for t, h in self._holds.items() if h.deadline <= now]:
            del self._holds[token]  # expired: its step is gone
        return held_until(((h.rooms, h.deadline) for h in self._holds.values()), room_id, now)
