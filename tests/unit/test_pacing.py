"""Pacing of the bot's bookkeeping: panel edit delays and room holds."""

from __future__ import annotations

import pytest

from bot.attachments.pacing import RoomHolds, held_until, panel_delay

# (now, last edit, interval, gather, expected delay)
PANEL_DELAYS = [
    (100.0, None, 1.0, 1.0, 1.0),    # first edit in this process: gather the burst only
    (100.0, 50.0, 1.0, 1.0, 1.0),    # last edit long ago: gather only
    (100.0, 99.8, 1.0, 1.0, 1.0),    # gather is longer than what is left of the interval
    (100.0, 99.8, 1.0, 0.25, 0.8),   # short gather: the interval since the last edit rules
    (100.0, 100.0, 1.0, 0.0, 1.0),   # just edited: a whole interval
    (100.0, 98.0, 1.0, 0.0, 0.0),    # nothing to wait for
    (100.0, 101.0, 1.0, 0.0, 2.0),   # clock stepped back: still an interval after it
    (100.0, None, 1.0, -1.0, 0.0),   # never negative
]


@pytest.mark.parametrize(("now", "last", "interval", "gather", "expected"), PANEL_DELAYS)
def test_panel_delay(now: float, last: float | None, interval: float, gather: float,
                     expected: float) -> None:
    """A room's panel edit waits for the burst and keeps one interval after the last edit."""
    assert panel_delay(now, last, interval, gather) == pytest.approx(expected)


A, B, C = "!a:hs", "!b:hs", "!c:hs"

# (holds as (rooms, deadline), room, now, expected)
HELD = [
    ([], A, 10.0, None),                                   # no holds
    ([(frozenset({A, B}), 20.0)], A, 10.0, 20.0),          # held
    ([(frozenset({A, B}), 20.0)], C, 10.0, None),          # another room's hold
    ([(frozenset({A}), 5.0)], A, 10.0, None),              # expired
    ([(frozenset({A}), 10.0)], A, 10.0, None),             # expires right now
    ([(frozenset({A}), 15.0), (frozenset({A, C}), 25.0)], A, 10.0, 25.0),  # the latest
    ([(frozenset({A}), 5.0), (frozenset({A}), 12.0)], A, 10.0, 12.0),  # one expired, one not
]


@pytest.mark.parametrize(("holds", "room", "now", "expected"), HELD)
def test_held_until(holds: list[tuple[frozenset[str], float]], room: str, now: float,
                    expected: float | None) -> None:
    """A room is held until the latest unexpired hold that covers it."""
    assert held_until(holds, room, now) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_holds_release_renew_and_expire() -> None:
    """Holds end on release or past their bound; holding again under a token renews it."""
    clock = FakeClock()
    holds = RoomHolds(clock)
    holds.hold("card", [A, B], at_most=5.0)
    assert holds.held(A) == 5.0 and holds.held(B) == 5.0 and holds.held(C) is None
    clock.now = 3.0
    holds.hold("card", [A], at_most=5.0)  # renewed, for A only
    assert holds.held(A) == 8.0 and holds.held(B) is None
    holds.release("card")
    assert holds.held(A) is None
    holds.release("card")  # twice is harmless
    holds.hold("deliver", [C], at_most=1.0)
    clock.now = 4.0
    assert holds.held(C) is None  # past its bound: a stuck hold never stalls a panel
