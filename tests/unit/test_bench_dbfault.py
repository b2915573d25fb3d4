"""The dbfault part's bookkeeping: per-fault figures over its rounds, and its report rows."""

from __future__ import annotations

from bench.dbfault import fault_summary
from bench.report import dbfault_markdown_rows, dbfault_tables

ROUNDS = [
    {"fault": "restart", "round": 1, "to_text_s": 0.8, "to_file_s": 2.0},
    {"fault": "restart", "round": 2, "to_text_s": 1.2, "to_file_s": 3.0},
    {"fault": "restart", "round": 3, "to_text_s": 0.4, "to_file_s": 1.0},
    {"fault": "outage", "round": 1, "to_text_s": 5.0, "to_file_s": None, "error": "timed out"},
    {"fault": "outage", "round": 2, "to_text_s": 9.0, "to_file_s": 11.0},
]


def test_fault_summary_per_fault_leaves_out_what_a_round_did_not_measure() -> None:
    """Quantiles per fault over the rounds that measured; a round missing either is 'failed'."""
    assert fault_summary(ROUNDS) == {
        "restart": {"rounds": 3, "failed": 0,
                    "to_text_s": {"n": 3, "p50": 0.8, "max": 1.2},
                    "to_file_s": {"n": 3, "p50": 2.0, "max": 3.0}},
        "outage": {"rounds": 2, "failed": 1,
                   "to_text_s": {"n": 2, "p50": 7.0, "max": 9.0},
                   "to_file_s": {"n": 1, "p50": 11.0, "max": 11.0}},
    }


def test_dbfault_rows_say_each_fault_with_its_figures() -> None:
    """One table row and one README row per fault; no part, no rows."""
    results = {"dbfault": {"lease_s": 8.0, "outage_s": 60.0, **fault_summary(ROUNDS),
                           "instances_exited": []}}
    ((title, header, rows, note),) = dbfault_tables(results)
    assert "lease 8 s" in title and len(header) == 5
    assert rows == [["pg_ctl restart -m fast", "3", "0.8 / 1.2 s", "2.0 / 3.0 s", "0"],
                    ["PostgreSQL stopped for 60 s", "2", "7.0 / 9.0 s", "11.0 / 11.0 s", "1"]]
    assert "exited" not in note
    md = dbfault_markdown_rows(results)
    assert len(md) == 2 and md[1].count("|") == 6
    assert "7.0 / 9.0 s; 11.0 / 11.0 s; 1 of 2 rounds without" in md[1]
    assert dbfault_tables({}) == [] and dbfault_markdown_rows({}) == []
