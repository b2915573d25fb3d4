"""The benchmark's own logic: halves, request kinds, target verdicts, where results may go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import RESULTS, _output_path
from bench.harness import halves
from bench.proxy import classify
from bench.report import targets

# values (in the order taken) -> (p50 of even samples, p50 of odd samples, spread)
HALVES = [
    ([1.0, 1.0, 1.0, 1.0], 1.0, 1.0, 0.0),
    ([1.0, 2.0, 1.0, 2.0], 1.0, 2.0, 0.667),
    ([0.1, 0.3, 0.2, 0.3, 0.3, 0.3], 0.2, 0.3, 0.333),
    ([5.0], 5.0, None, None),
    ([], None, None, None),
]


@pytest.mark.parametrize(("values", "a", "b", "spread"), HALVES)
def test_halves(values: list[float], a: float | None, b: float | None,
                spread: float | None) -> None:
    """Even samples make half A, odd ones half B; the spread is |A - B| over the whole p50."""
    got = halves(values)
    assert (got["p50_a"], got["p50_b"], got["spread"]) == (a, b, spread)


SEND = "/_matrix/client/v3/rooms/!r:hs/send"
KINDS = [
    ("PUT", f"{SEND}/m.room.message/offer-7-card", "event:card"),
    ("PUT", f"{SEND}/m.reaction/offer-7-react-accept", "event:reaction"),
    ("PUT", f"{SEND}/m.room.encrypted/offer-7-react-decline", "event:reaction"),
    ("PUT", f"{SEND}/m.room.encrypted/offer-7-status", "event:status"),
    ("PUT", f"{SEND}/m.room.message/offer-7-deliver", "event:delivery"),
    ("PUT", f"{SEND}/m.room.message/offer-7-accepted-card", "event:edit"),
    ("PUT", f"{SEND}/m.room.encrypted/offer-7-declined-status", "event:edit"),
    ("PUT", f"{SEND}/m.room.message/offer-7-rejected", "event:offer-rejected"),
    ("PUT", f"{SEND}/m.room.message/relay-3", "event:other:m.room.message"),
    ("POST", "/_matrix/media/v3/upload", "upload"),
    ("GET", "/_matrix/client/v1/media/download/hs/abc", "download"),
    ("GET", "/_matrix/client/v3/sync", "sync"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/1", "to-device"),
    ("POST", "/_matrix/client/v3/keys/query", "keys"),
    ("PUT", "/_matrix/client/v3/rooms/!r:hs/redact/$e/t1", "redaction"),
    ("PUT", "/_matrix/client/v3/rooms/!r:hs/redact/$e/offer-7-unreact-accept", "event:unreact"),
    ("PUT", f"{SEND}/m.room.message/session-3-panel-!r:hs", "event:panel"),
    ("PUT", f"{SEND}/m.room.encrypted/session-3-panel-!r:hs-v4", "event:panel"),
    ("PUT", "/_matrix/client/v3/rooms/!r:hs/state/m.room.name/", "state"),
    ("POST", "/_matrix/client/v3/rooms/!r:hs/receipt/m.read/$e", "receipt"),
    ("GET", "/_matrix/client/v3/profile/@a:hs", "other"),
]


@pytest.mark.parametrize(("method", "path", "kind"), KINDS)
def test_request_kinds(method: str, path: str, kind: str) -> None:
    """Parcel's transaction ids tell card, reactions, status, delivery and edits apart."""
    assert classify(method, path) == kind


def _latency(delivery: float, offer_floor: float) -> dict[str, Any]:
    # The instant click is reported, not a target: far off, it must not decide anything.
    return {"ratio_delivery_person_p50": delivery, "ratio_delivery_p50": 9.9,
            "ratio_offer_floor_p50": offer_floor}


def _results() -> dict[str, Any]:
    sizes = ("4 KB", "1 MB", "20 MB", "100 MB")
    return {
        "latency_plain": {size: _latency(1.05, 1.02) for size in sizes},
        "latency_e2ee": {**{size: _latency(1.08, 1.09) for size in sizes},
                         "100 MB": _latency(3.5, 1.2)},
        "memory": {"files": [{"file": "250 MB", "bytes": 250_000_000,
                              "peak_minus_idle_mib": 23.5}]},
        "memory_e2ee": {"files": [{"file": "50 MB", "bytes": 50_000_000,
                                   "peak_minus_idle_mib": 10.0}]},
        "scale": {"levels": [{"level": 50, "sessions": 50,
                              "parcel": {"bot_cpu_s_per_offer": 0.0062}}]},
    }


# target key -> met (True, False, or None for "not measured")
VERDICTS = [
    ("delivery:plain:100 MB", True),
    ("delivery:e2ee:20 MB", True),
    ("delivery:e2ee:100 MB", False),
    ("offer_floor:plain:4 KB", True),
    ("offer_floor:e2ee:100 MB", False),
    ("delivery:all", False),
    ("offer_floor:all", False),
    ("peak RSS growth relaying 250 MB (MB)", True),  # 23.5 MiB is 24.6 MB
    ("rss250:all", None),  # the encrypted run had no 250 MB file
    ("cpu50", False),  # 6.2 ms
]


@pytest.mark.parametrize(("key", "met"), VERDICTS)
def test_target_verdicts(key: str, met: bool | None) -> None:
    """Each target is met, missed, or unknown when a part of it was not measured."""
    found = {t["key"]: t for t in targets(_results())}
    assert found[key]["met"] is met


def test_a_size_not_measured_leaves_the_overall_target_open() -> None:
    """Without a 100 MB run, "at every size up to 100 MB" is not claimed as met."""
    results = _results()
    results["latency_e2ee"] = {size: _latency(1.0, 1.0) for size in ("4 KB", "1 MB", "20 MB")}
    results["latency_plain"] = dict(results["latency_e2ee"])
    found = {t["key"]: t for t in targets(results)}
    assert found["delivery:all"]["met"] is None
    assert found["offer_floor:all"]["met"] is None


CLEAN = {"commit": "abc", "dirty": False, "changed_paths": []}
DIRTY = {"commit": "abc", "dirty": True, "changed_paths": ["bot/app.py"]}
UNKNOWN = {"commit": None, "dirty": None, "changed_paths": []}
STAMP = "20250101-120000"
OUTPUTS = [
    # (requested --out, mode, git state) -> (path written, refused?)
    (None, "full", CLEAN, RESULTS / "latest.json", False),
    (None, "quick", CLEAN, RESULTS / "quick.json", False),
    (None, "full", DIRTY, RESULTS / f"dirty-{STAMP}.json", True),
    (None, "quick", DIRTY, RESULTS / f"dirty-{STAMP}.json", True),
    (None, "full", UNKNOWN, RESULTS / f"dirty-{STAMP}.json", True),
    (RESULTS / "latest.json", "full", DIRTY, RESULTS / f"dirty-{STAMP}.json", True),
    (Path("/tmp/bench-x/run.json"), "full", DIRTY, Path("/tmp/bench-x/run.json"), False),
    (Path("/tmp/bench-x/"), "quick", DIRTY, Path("/tmp/bench-x/quick.json"), False),
]


@pytest.mark.parametrize(("requested", "mode", "git", "written", "refused"), OUTPUTS)
def test_results_from_a_dirty_tree_never_overwrite_the_committed_ones(
        requested: Path | None, mode: str, git: dict[str, Any], written: Path,
        refused: bool) -> None:
    """Uncommitted changes send the results to dirty-<timestamp>.* or --out, and say so."""
    path, message = _output_path(requested, mode, git, STAMP)
    assert path == written
    assert (message is not None) is refused
    if refused:
        assert "NOT writing" in message


def test_halves_that_disagree_mark_the_verdict_as_noise() -> None:
    """A target met in one half and missed in the other says so next to the figure."""
    results = _results()
    results["latency_plain"]["4 KB"]["ratio_delivery_person_p50_ab"] = [1.02, 1.2]
    results["latency_plain"]["1 MB"]["ratio_delivery_person_p50_ab"] = [1.02, 1.08]
    found = {t["key"]: t for t in targets(results)}
    assert "within the noise" in found["delivery:plain:4 KB"]["note"]
    assert found["delivery:plain:1 MB"]["note"] == "halves A/B 1.02 / 1.08"
