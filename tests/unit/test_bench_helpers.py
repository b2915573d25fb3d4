"""The benchmark's own bookkeeping: burst order checks and start-up log timestamps."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.burst import order_report
from bench.history import _log_times

# (arrival order at the agent, the originals' order) -> (in order, backwards steps, missing,
# duplicates, originals in send order)
ORDER_CASES = [
    ([0, 1, 2, 3], [0, 1, 2, 3], (True, 0, 0, 0, True)),
    ([0, 2, 1, 3], [0, 2, 1, 3], (True, 0, 0, 0, False)),
    ([0, 1, 2, 3], [0, 2, 1, 3], (False, 1, 0, 0, False)),
    ([3, 2, 1, 0], [0, 1, 2, 3], (False, 3, 0, 0, True)),
    ([0, 1, 3], [0, 1, 2, 3], (False, 0, 1, 0, True)),
    ([0, 1, 1, 2, 3], [0, 1, 2, 3], (False, 0, 0, 1, True)),
    ([], [0, 1], (False, 0, 2, 0, True)),
]


@pytest.mark.parametrize(("arrived", "originals", "expected"), ORDER_CASES)
def test_order_report(arrived: list[int], originals: list[int],
                      expected: tuple[bool, int, int, int, bool]) -> None:
    """Copies count as in order only when they arrive exactly in the originals' order."""
    report = order_report(arrived, originals)
    assert (report["in_order"], report["steps_backwards"], report["missing"],
            report["duplicates"], report["originals_in_send_order"]) == expected


def _at(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def test_log_times_reads_the_first_running_and_ready_lines() -> None:
    """The bot's start-up phases come from the first matching log lines, to the millisecond."""
    log = "\n".join([
        "2026-12-01 09:31:11,741 INFO    bot.matrix.client: restored device X for @p:t",
        "  a continuation line without a time",
        "2026-12-01 09:31:11,753 INFO    bot.app: Parcel running as @p:t (device X)",
        "2026-12-01 09:31:12,615 INFO    bot.app: first sync done; ready",
        "2026-12-01 09:31:13,000 INFO    bot.app: first sync done; ready",
    ])
    times = _log_times(log)
    assert times["first_line"] == pytest.approx(_at("2026-12-01 09:31:11.741"))
    assert times["running"] == pytest.approx(_at("2026-12-01 09:31:11.753"))
    assert times["ready"] - times["running"] == pytest.approx(0.862)


def test_log_times_without_the_lines() -> None:
    """A log that never reached ready has no 'ready' time (the row then shows none)."""
    times = _log_times("2026-12-01 09:31:11,741 INFO    bot.app: shutting down")
    assert "ready" not in times and "running" not in times
