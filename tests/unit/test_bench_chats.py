"""The chats part's bookkeeping: its levels, per-chat and per-file figures, targets and rows."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import main
from bench.chats import file_costs, interval_summary, parse_levels, per_chat_kib
from bench.report import chats_markdown_rows, chats_tables, chats_targets, targets

# --chats text -> the levels measured
LEVELS = [
    ("1,1000,5000", (1, 1000, 5000)),
    ("1, 200", (1, 200)),
    ("50", (50,)),
    ("1,1000,", (1, 1000)),
]


@pytest.mark.parametrize(("text", "expected"), LEVELS)
def test_parse_levels(text: str, expected: tuple[int, ...]) -> None:
    """Comma-separated whole numbers, in increasing order, become the cumulative levels."""
    assert parse_levels(text) == expected


# --chats text -> what the error says
BAD_LEVELS = [
    ("1,x", "'x' is not a whole number"),
    ("0,10", "0 open chats cannot be measured"),
    ("1000,1", "1 after 1000"),
    ("1,1", "1 after 1"),
    ("", "no level given"),
    (" , ", "no level given"),
]


@pytest.mark.parametrize(("text", "message"), BAD_LEVELS)
def test_parse_levels_refuses(text: str, message: str) -> None:
    """A level that cannot be measured cumulatively is refused, naming the bad entry."""
    with pytest.raises(ValueError, match=message):
        parse_levels(text)


def test_bad_chats_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --chats stops the command before anything runs, with one line and exit code 2."""
    assert main(["--only", "chats", "--chats", "5,1"]) == 2
    assert "1 after 5" in capsys.readouterr().err


# (rss at the level, rss at the base, chats, base chats) -> KiB per chat
PER_CHAT = [
    ((120_000, 100_000, 1001, 1), 20.0),
    ((100_500, 100_000, 101, 1), 5.0),
    ((99_000, 100_000, 11, 1), -100.0),
    ((100_000, 100_000, 1, 1), None),
    ((None, 100_000, 1000, 1), None),
]


@pytest.mark.parametrize(("args", "expected"), PER_CHAT)
def test_per_chat_kib(args: tuple[Any, ...], expected: float | None) -> None:
    """RSS growth per chat is the difference over the added chats; no added chats, no figure."""
    assert per_chat_kib(*args) == expected


def test_interval_summary_leaves_out_unmeasured_rounds() -> None:
    """Rounds that did not measure an interval are left out of its p50 and max."""
    assert interval_summary([1.0, None, 3.0, 2.0]) == {"n": 3, "p50": 2.0, "max": 3.0}
    assert interval_summary([None]) == {"n": 0, "p50": None, "max": None}


def test_file_costs() -> None:
    """Events are every event kind, syncs the sync kind, requests everything; per file."""
    tallies = [
        {"event:card": {"count": 1, "sent": 10, "received": 5},
         "event:edit": {"count": 2, "sent": 20, "received": 10},
         "sync": {"count": 10, "sent": 0, "received": 900},
         "upload": {"count": 1, "sent": 4000, "received": 50}},
        {"event:card": {"count": 1, "sent": 10, "received": 5},
         "event:edit": {"count": 2, "sent": 20, "received": 10},
         "sync": {"count": 12, "sent": 0, "received": 900}},
    ]
    got = file_costs(tallies, [0.1, 0.3])
    assert got == {"files": 2, "events": 3.0, "syncs": 11.0, "requests": 14.5,
                   "synapse_cpu_ms": 200.0,
                   "kinds": {"event:card": 1.0, "event:edit": 2.0, "sync": 11.0,
                             "upload": 0.5}}
    assert file_costs([], [])["events"] is None


def _level(level: int, *, offer: float, instant: float, delayed: float, restart: float | None,
           rss: int, per_chat: float | None) -> dict[str, Any]:
    return {
        "level": level, "open_chats": level,
        "setup": None if level == 1 else {"chats": level - 1, "seconds": 100.0,
                                          "chats_per_s": (level - 1) / 100.0},
        "text": {"p50": 0.05}, "offer": {"p50": offer}, "accept_instant": {"p50": instant},
        "accept_delayed": {"p50": delayed},
        "restart": {"to_relayed_s": {"n": 3, "p50": restart, "max": restart},
                    "to_ready_s": {"n": 3, "p50": 0.7, "max": 0.8},
                    "first_sync_s": {"n": 3, "p50": 0.1, "max": 0.1},
                    "sync_cost": {"synapse_cpu_ms": 1.5, "bot_joined_rooms": 2 * level}},
        "takeover": {"to_relayed_s": {"p50": 9.0}, "to_lease_s": {"p50": 8.5}},
        "per_file": {"events": 11.5, "syncs": 12.0, "requests": 27.0, "synapse_cpu_ms": 300.0},
        "rss_kib": rss, "rss_kib_per_chat": per_chat,
        "machine_load": {"busy_cores": 1.25, "cores": 2, "loadavg_1min": 2.0},
    }


FULL = {"chats": {"levels": [
    _level(1, offer=0.100, instant=0.100, delayed=0.060, restart=0.8, rss=100_000,
           per_chat=None),
    _level(1000, offer=0.120, instant=0.150, delayed=0.070, restart=7.0, rss=117_000,
           per_chat=17.0),
    _level(5000, offer=0.200, instant=0.300, delayed=0.100, restart=0.9, rss=400_000,
           per_chat=60.0),
]}}


def _by_key(results: dict[str, Any]) -> dict[str, tuple[Any, bool | None, str]]:
    return {g["key"]: (g["measured"], g["met"], g["note"]) for g in chats_targets(results)}


def test_chats_targets_full_run() -> None:
    """Each issue-25 target is judged at its level against the first one."""
    assert _by_key(FULL) == {
        "chats:restart:1000": (7.0, False, ""),
        "chats:restart_ratio:1000": (8.75, False, "vs 1 open chat"),
        "chats:restart:5000": (0.9, True, ""),
        "chats:restart_ratio:5000": (1.125, True, "vs 1 open chat"),
        "chats:offer:1000": (1.2, True, "vs 1 open chat"),
        "chats:accept_instant:1000": (1.5, False, "vs 1 open chat"),
        "chats:accept_delayed:1000": (1.167, True, "vs 1 open chat"),
        "chats:rss": (60.0, False, "5000 vs 1 open chats"),
    }


def test_chats_targets_quick_run_falls_back_for_1000_only() -> None:
    """Without a 1000 level the largest smaller one stands in, saying so; 5000 is unmeasured."""
    quick = {"chats": {"levels": [FULL["chats"]["levels"][0],
                                  _level(200, offer=0.110, instant=0.100, delayed=0.060,
                                         restart=1.2, rss=103_000, per_chat=15.1)]}}
    got = _by_key(quick)
    fell_back = "measured at 200 open chats: no 1000 level"
    assert got["chats:restart:1000"] == (1.2, False, fell_back)
    assert got["chats:restart_ratio:1000"] == (1.5, False, f"{fell_back}; vs 1 open chat")
    assert got["chats:offer:1000"] == (1.1, True, f"{fell_back}; vs 1 open chat")
    assert got["chats:restart:5000"] == (None, None, "no 5000 level in this run")
    assert got["chats:restart_ratio:5000"] == (None, None,
                                               "no 5000 level in this run; vs 1 open chat")
    assert got["chats:rss"] == (15.1, True, "200 vs 1 open chats")


def test_chats_targets_absent_without_the_part() -> None:
    """A run without the chats part has none of its targets, in the list of all targets too."""
    assert chats_targets({}) == []
    assert not [g for g in targets({}) if str(g["key"]).startswith("chats:")]


def test_chats_tables_and_rows() -> None:
    """One table row per level; README rows compare each level with the first."""
    (_, _, latency, _), (_, _, costs, _) = chats_tables(FULL)
    assert latency[1] == ["1000", "999 in 100 s (10.0/s)", "50", "120", "150", "70",
                          "7.00 s (ready 0.70 s, first sync 0.10 s)", "9.00 s (lease 8.50 s)"]
    assert costs[2] == ["5000", "11.5 / 12.0 / 27.0", "300 ms", "1.5 ms (10000 rooms)",
                        "391 MiB", "60.0 KiB", "1.2 of 2"]
    rows = chats_markdown_rows(FULL)
    assert len(rows) == 9
    assert rows[3] == ("| 1000 open encrypted chats: upload → card; ✅ → file, instant click; "
                       "✅ → file, click after 1.5 s (p50) | 120; 150; 70 ms | 1 open chat(s): "
                       "100; 100; 60 ms | 1.20×; 1.50×; 1.17× | ≤ 1.3 ✅ met; ≤ 1.3 ❌ missed; "
                       "≤ 1.3 ✅ met |")
    assert rows[7] == ("| 5000 open encrypted chats: restart → first relay (first sync); "
                       "standby takeover → first relay (p50) | 0.90 s (0.10 s); 9.00 s | "
                       "0.8 s with 1 | 1.12× | ≤ 1 s ✅ met; ≤ 1.3 ✅ met |")
    assert rows[8].endswith("| 11.5 / 12.0 / 27.0, 300.0 ms; 1.5 ms; 60.0 KiB | — | — | "
                            "≤ 50 KiB ❌ missed |")
