"""The ha part's bookkeeping: failover quantiles, log times, psql rows, its README rows."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bench.ha import failover_summary, first_line_at, parse_psql_rows
from bench.report import ha_markdown_rows, ha_tables


def _at(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


LOG = "\n".join([
    "2026-12-01 12:00:00,100 INFO bot.app: standby: waiting for the leader lease (h/1/ab)",
    "a line without a time: took the leader lease (a traceback, say)",
    "2026-12-01 12:00:07,830 INFO bot.leader: took the leader lease (token 2) as h/1/ab",
    "2026-12-01 12:00:08,040 INFO bot.app: first sync done; ready",
    "2026-12-01 12:00:09,000 INFO bot.leader: took the leader lease (token 3) as h/1/ab",
])

# marker -> the time of the first timestamped line holding it
LOG_CASES = [
    ("took the leader lease", _at("2026-12-01 12:00:07.830")),
    ("first sync done; ready", _at("2026-12-01 12:00:08.040")),
    ("standby: waiting", _at("2026-12-01 12:00:00.100")),
    ("lost the leader lease", None),
]


@pytest.mark.parametrize(("marker", "expected"), LOG_CASES)
def test_first_line_at(marker: str, expected: float | None) -> None:
    """A marker's time is the millisecond timestamp of its first timestamped line."""
    got = first_line_at(LOG, marker)
    assert got == (None if expected is None else pytest.approx(expected))


def test_failover_summary_leaves_failed_rounds_out_of_the_quantiles() -> None:
    """Quantiles use only the rounds that measured an interval; a round without a relay fails."""
    rounds = [
        {"to_lease_s": 7.0, "to_ready_s": 7.2, "to_relayed_s": 7.3},
        {"to_lease_s": 8.0, "to_ready_s": 8.2, "to_relayed_s": 8.3},
        {"to_lease_s": 6.0, "to_ready_s": 6.2, "to_relayed_s": 6.3},
        {"to_lease_s": 9.0, "to_ready_s": None, "to_relayed_s": None},
    ]
    got = failover_summary(rounds)
    assert got["rounds"] == 4
    assert got["failed"] == 1
    assert got["to_lease_s"] == {"n": 4, "p50": 7.5, "p95": 8.85, "max": 9.0}
    assert got["to_relayed_s"] == {"n": 3, "p50": 7.3, "p95": 8.2, "max": 8.3}
    assert got["to_ready_s"]["n"] == 3


def test_failover_summary_of_nothing() -> None:
    """No rounds: every interval is unmeasured, nothing failed."""
    got = failover_summary([])
    assert got["to_relayed_s"] == {"n": 0, "p50": None, "p95": None, "max": None}
    assert got["failed"] == 0


# psql -A -t output -> rows (an empty field is NULL; a malformed line is skipped)
PSQL_CASES = [
    ("!a:hs|!b:hs|open\n!c:hs||opening\n", 3,
     [["!a:hs", "!b:hs", "open"], ["!c:hs", None, "opening"]]),
    ("42\n", 1, [["42"]]),
    ("\n\n", 3, []),
    ("!a:hs|open\n", 3, []),
]


@pytest.mark.parametrize(("text", "columns", "expected"), PSQL_CASES)
def test_parse_psql_rows(text: str, columns: int, expected: list[list[str | None]]) -> None:
    """Unaligned psql rows split on '|', NULL as None, lines of the wrong width dropped."""
    assert parse_psql_rows(text, columns) == expected


def _lat(p50: float, p95: float) -> dict[str, Any]:
    return {"n": 30, "p50": p50, "p95": p95, "spread": 0.05}


def test_ha_markdown_rows() -> None:
    """Failover, the backends side by side and the crypto store each get a README row."""
    results = {"ha": {
        "failover": {"lease_s": 8.0, "to_lease_s": {"n": 10, "p50": 7.2, "p95": 8.1, "max": 8.2},
                     "to_relayed_s": {"n": 10, "p50": 7.5, "p95": 16.0, "max": 16.2}},
        "backends": {"4 KB": {
            "postgresql": {"offer": _lat(0.12, 0.2), "delivery": _lat(0.094, 0.15)},
            "sqlite": {"offer": _lat(0.1, 0.18), "delivery": _lat(0.083, 0.14)},
            "ratio_offer_p50": 1.2, "ratio_delivery_p50": 1.133}},
        "crypto_store": [{"rooms": 10, "sync_p50_ms": 45.5, "sync_p99_ms": 74.5}],
    }}
    assert ha_markdown_rows(results) == [
        "| Failover, SIGKILL of the leader (two instances on PostgreSQL, lease 8 s, 10 kills): "
        "kill → standby took the lease; → a text sent after the kill shown to the agent | "
        "7.2 / 8.1 s; 7.5 / 16.0 s | — | — | ≤ 15 s (p95) ❌ missed |",
        "| File 4 KB on PostgreSQL: upload → offer shown | 120 / 200 ms (±5%) | SQLite, "
        "interleaved 100 / 180 ms (±5%) | 1.20× SQLite | — |",
        "| File 4 KB on PostgreSQL: ✅ → file shown | 94 / 150 ms (±5%) | SQLite, "
        "interleaved 83 / 140 ms (±5%) | 1.13× SQLite | — |",
        "| nio crypto store on PostgreSQL, 10 encrypted rooms: event loop blocked per sync "
        "p50 / p99 | 45.5 / 74.5 ms | — | — | — |",
    ]


def _scale_side(sessions: int, rate: float, bot_cpu: float) -> dict[str, Any]:
    return {"sessions": sessions, "throughput_per_s": rate, "latency": {"p50": 0.2, "p95": 0.5,
            "max": 0.6}, "latency_censored": False, "bot_cpu_s_per_offer": bot_cpu,
            "synapse_cpu_s_per_offer": 0.2, "postgres_cpu_s_per_offer": 0.015,
            "during_window": {"synapse_cpu_utilisation": 0.5, "bot_cpu_utilisation": 0.1,
                              "harness_cpu_utilisation": 0.1, "machine_busy_cores": 0.8}}


def test_ha_scale_row_sits_beside_the_sqlite_scale_part() -> None:
    """A PostgreSQL scale level is shown next to the SQLite level that aimed for as many."""
    results = {
        "scale": {"levels": [{"level": 50, "sessions": 40,
                              "parcel": _scale_side(40, 4.0, 0.020)}]},
        "ha": {"scale": {"window_s": 30.0, "levels": [
            {"level": 50, "sessions": 50, "parcel": _scale_side(50, 5.0, 0.030)},
            {"level": 200, "sessions": 120, "parcel": _scale_side(120, 6.0, 0.025)}]}},
    }
    rows = ha_markdown_rows(results)
    assert rows[0].startswith(
        "| 50 sessions × 1 file/s (30 s) on PostgreSQL: files/s, p95, CPU per file bot / "
        "Synapse / PostgreSQL, limited by | 5.0/s, 500 ms, 30.0 ms / 200.0 ms / 15.0 ms, ")
    assert rows[0].endswith("| SQLite (40 sessions) 4.0/s, 500 ms, 20.0 ms / 200.0 ms | "
                            "1.25× SQLite | — |")
    assert rows[1].endswith("| — | — | — |")


def test_ha_tables_name_every_piece_that_ran() -> None:
    """Each measured piece of the ha part gets its stdout table; missing ones get none."""
    results = {"ha": {
        "failover": {"kills": 3, "lease_s": 8.0, "rounds": 3, "failed": 0,
                     **{k: {"n": 3, "p50": 7.0, "p95": 7.9, "max": 8.0}
                        for k in ("to_lease_s", "to_ready_s", "to_relayed_s")}},
        "crypto_store": [{"rooms": 10, "customer_devices": 10, "syncs": 3, "sync_p50_ms": 45.5,
                          "sync_p99_ms": 74.5, "sync_max_ms": 74.5, "send_p50_ms": 0.0,
                          "send_p99_ms": 20.1, "call_p50_ms": 1.76, "call_p99_ms": 5.56}],
        "seconds": {"failover": 30.0, "crypto_store": 7.0},
    }}
    tables = ha_tables(results)
    assert [t[0][:3] for t in tables] == ["9a.", "9d.", "9. "]
    assert tables[0][2][2] == ["a text sent after the kill at the agent", "7.0 / 7.9 s",
                               "8.0 s", "3"]
