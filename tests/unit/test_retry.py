"""The one backoff: exponential from ``initial``, capped, jittered, never sooner than asked."""

from __future__ import annotations

import pytest

from bot.retry import Backoff

# (attempt, random draw, retry_after) -> delay, for initial=1, cap=300, jitter=0.5
CASES = [
    (1, 0.0, None, 1.0),
    (1, 1.0, None, 0.5),
    (2, 0.0, None, 2.0),
    (3, 0.0, None, 4.0),
    (4, 0.5, None, 6.0),
    (9, 0.0, None, 256.0),
    (10, 0.0, None, 300.0),
    (10, 1.0, None, 150.0),
    (500, 0.0, None, 300.0),
    (0, 0.0, None, 1.0),
    (3, 0.0, 12.0, 12.1),
    (3, 1.0, 12.0, 12.1),
    (1, 1.0, 0.25, 0.3),
    (20, 0.0, 600.0, 600.1),
]


@pytest.mark.parametrize(("attempt", "draw", "retry_after", "expected"), CASES)
def test_backoff_delays(attempt: int, draw: float, retry_after: float | None,
                        expected: float) -> None:
    """Delays double per attempt up to the cap, jitter shortens them, retry_after wins."""
    backoff = Backoff(initial=1.0, cap=300.0, jitter=0.5, rand=lambda: draw)
    assert backoff.delay(attempt, retry_after) == pytest.approx(expected)


def test_backoff_cap_is_configurable() -> None:
    """A small cap (as the outage test configures) bounds every delay."""
    backoff = Backoff(initial=1.0, cap=2.0, rand=lambda: 0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 50)] == [1.0, 2.0, 2.0, 2.0]
