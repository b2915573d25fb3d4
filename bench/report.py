"""Turning results into targets, text tables for stdout and the README's markdown table."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, and the versions that matter."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "synapse": version("matrix-synapse"),
        "synapse_database": "sqlite3",
        "matrix_nio": version("matrix-nio"),
        "vodozemac": version("vodozemac"),
        "aiohttp": version("aiohttp"),
        "parcel_bot": version("parcel-bot"),
    }


def git_state() -> dict[str, Any]:
    """The commit measured, and whether bot/ had uncommitted changes (it runs from the tree)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "bot")
    return {"commit": git("rev-parse", "HEAD"),
            "bot_uncommitted_changes": None if status is None else bool(status)}


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f}"


def _pp(stats: dict[str, Any] | None) -> str:
    """'p50 / p95 ms'."""
    if not stats or stats.get("p50") is None:
        return "—"
    return f"{_ms(stats['p50'])} / {_ms(stats['p95'])} ms"


def _p95(side: dict[str, Any]) -> str:
    """p95 of a scale window; '> max' when over 5 % of the files never arrived."""
    lat = side["latency"]
    if lat.get("p95") is None:
        return "—"
    if side.get("latency_censored"):
        return f"> {lat['max']:.0f} s"
    return f"{_ms(lat['p95'])} ms"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _scale_level(results: dict[str, Any], wanted: int) -> tuple[dict[str, Any] | None, str]:
    """The scale entry for ``wanted`` sessions, else the nearest level at or below it."""
    levels = results.get("scale", {}).get("levels", [])
    for entry in levels:
        if entry["level"] == wanted:
            return entry, ""
    below = [e for e in levels if e["level"] <= wanted] or levels
    if not below:
        return None, ""
    entry = max(below, key=lambda e: e["level"])
    return entry, (f"measured at {entry['sessions']} sessions: "
                   f"no {wanted}-session level in this mode")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6 with the measured figure and whether it was met."""
    out: list[dict[str, Any]] = []

    def add(name: str, limit: str, value: float | None, met: bool | None, note: str = "") -> None:
        out.append({"target": name, "limit": limit, "measured": value, "met": met,
                    "note": note})

    plain = results.get("latency_plain", {})
    for size, entry in plain.items():
        value = entry["ratio_offer_p50"]
        add(f"offer latency p50, {size}: Parcel / baseline", "≤ 1.3", value,
            None if value is None else value <= 1.3)
    for size, entry in plain.items():
        value = entry["ratio_delivery_p50"]
        add(f"delivery latency p50, {size}: Parcel / baseline", "≤ 1.3", value,
            None if value is None else value <= 1.3)
    for size, entry in results.get("latency_e2ee", {}).items():
        for what in ("offer", "delivery"):
            value = entry[f"enc_vs_plain_{what}_p50"]
            add(f"{what} latency p50, {size}: encrypted / plain", "≤ 1.5", value,
                None if value is None else value <= 1.5)
    entry, note = _scale_level(results, 50)
    if entry is not None and "ratio_throughput" in entry:
        value = entry["ratio_throughput"]
        add("throughput at 50 sessions: Parcel / baseline", "≥ 0.8", value,
            None if value is None else value >= 0.8, note.strip())
    for key, suffix in (("memory", ""), ("memory_e2ee", ", E2EE")):
        memory = results.get(key, {}).get("files", [])
        if memory:
            biggest = max(memory, key=lambda r: r["bytes"])
            value = biggest["peak_minus_idle_mib"]
            note = "" if biggest["bytes"] >= 250_000_000 else (
                f"measured with {biggest['file']}: no 250 MB file in this mode")
            add(f"peak RSS growth relaying 250 MB{suffix} (MiB)", "< 64", value, value < 64,
                note)
    cases = results.get("startup", {}).get("cases", [])
    if cases:
        big = cases[-1]
        value = big["warm_median_s"]
        note = "" if big["sessions"] >= 1000 else (
            f"measured with {big['sessions']} sessions: no 1000-session case in this mode")
        add(STARTUP_TARGET, "< 2 s", value, None if value is None else value < 2.0, note)
        flat = results["startup"].get("ratio_warm_big_vs_small")
        if flat is not None:
            add(STARTUP_FLAT_TARGET, "≤ 1.25", flat, flat <= 1.25,
                f"{big['sessions']} vs {cases[0]['sessions']} sessions")
    return out


STARTUP_TARGET = "warm start-up to ready with the most sessions (s)"
STARTUP_FLAT_TARGET = "warm start-up, most / fewest sessions"


def _mib(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.0f} MiB"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f} s"


def _case_label(case: dict[str, Any]) -> str:
    return f"{case['sessions']} sessions ({case['closed']} ended, {case['open']} open)"


def text_report(results: dict[str, Any]) -> str:
    """Plain-text tables for stdout, one per part."""
    lines: list[str] = []

    def table(title: str, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        lines.append("")
        lines.append(title)
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        for row in rows:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))

    base = results.get("baseline")
    if base:
        table("1. Baseline hops (text; p50 / p95)", ["path", "latency", "n"], [
            ["one hop: client -> client", _pp(base["one_hop_text"]),
             str(base["one_hop_text"]["n"])],
            ["two hops: baseline relay", _pp(base["relay_two_hop_text"]),
             str(base["relay_two_hop_text"]["n"])],
            ["two hops: Parcel text relay", _pp(base["parcel_text_relay"]),
             str(base["parcel_text_relay"]["n"])],
        ])
    for key, title in (("latency_plain", "2-3. Offer and delivery latency, E2EE off"),
                       ("latency_e2ee", "4. Offer and delivery latency, E2EE on")):
        data = results.get(key)
        if not data:
            continue
        rows = []
        for size, e in data.items():
            row = [size, str(e["parcel_offer"]["n"]), _pp(e["baseline_forward"]),
                   _pp(e["parcel_offer"]), _x(e["ratio_offer_p50"]),
                   _pp(e["parcel_delivery"]), _x(e["ratio_delivery_p50"])]
            if key == "latency_e2ee":
                row += [_x(e["enc_vs_plain_offer_p50"]), _x(e["enc_vs_plain_delivery_p50"]),
                        _x(e["enc_vs_plain_relay_p50"])]
            rows.append(row)
        header = ["file", "n", "baseline forward", "Parcel offer", "offer/base p50",
                  "Parcel delivery", "deliv/base p50"]
        if key == "latency_e2ee":
            header += ["offer enc/plain", "deliv enc/plain", "relay enc/plain"]
        table(title, header, rows)
    scale = results.get("scale")
    if scale:
        rows = []
        for e in scale["levels"]:
            for kind in ("relay", "parcel"):
                if kind not in e:
                    continue
                s = e[kind]
                rows.append([
                    str(e["level"]), str(s["sessions"]), kind, f"{s['throughput_per_s']:.1f}",
                    f"{s['in_window_arrivals_per_s']:.1f}",
                    f"{s['sent']}/{s['attempted']}", f"{s['arrived']}/{s['sent']}",
                    f"{_ms(s['latency']['p50'])} / {_p95(s)}",
                    "—" if s["bot_cpu_s_per_offer"] is None
                    else f"{s['bot_cpu_s_per_offer'] * 1000:.1f} ms",
                    f"{s['bot_cpu_utilisation'] * 100:.0f}%",
                    "—" if s["synapse_cpu_s_per_offer"] is None
                    else f"{s['synapse_cpu_s_per_offer'] * 1000:.1f} ms",
                    f"{s['synapse_cpu_utilisation'] * 100:.0f}%",
                    _x(e.get("ratio_throughput")) if kind == "parcel" else "",
                ])
        table(f"5. Scale: each session posts a 4 KB file per second for "
              f"{scale['window_s']:.0f} s (latency from send return to the recipient)",
              ["level", "sessions", "bot", "files/s", "in-window/s", "sent/attempted",
               "arrived/sent", "latency p50 / p95",
               "bot CPU/file", "bot CPU", "Synapse CPU/file", "Synapse CPU",
               "Parcel/relay"], rows)
        lines.append("files/s: files completed from the first send to the last arrival (drain "
                     f"up to {scale['drain_s']:.0f} s); in-window/s: arrivals during the window "
                     "after its first 5 s; sent/attempted: file events the homeserver accepted "
                     "(a customer skips a beat while 3 of its sends are pending); CPU shares are "
                     "of one core, from the window start to the end of the drain.")
    for key, label in (("memory", "E2EE off"), ("memory_e2ee", "E2EE on")):
        memory = results.get(key)
        if not memory:
            continue
        table(f"6. Memory, {label} (Parcel process; idle RSS "
              f"{memory['idle_rss_kib'] / 1024:.0f} MiB)",
              ["file", "peak RSS", "peak - idle", "to offer", "to delivered"],
              [[r["file"], f"{r['peak_rss_kib'] / 1024:.0f} MiB",
                f"{r['peak_minus_idle_mib']:.1f} MiB", f"{r['seconds_to_offer']:.1f} s",
                f"{r['seconds_to_delivered']:.1f} s"] for r in memory["files"]])
    startup = results.get("startup")
    if startup and "cases" in startup:
        rows = []
        for c in startup["cases"]:
            probe = c.get("sync_probe", {})
            restart = probe.get("restart_sync", {})
            initial = probe.get("initial_sync", {})
            build = c.get("history_build", {})
            rows.append([
                _case_label(c), _s(c["warm_median_s"]), str(len(c["runs"])),
                _s(c["before_sync_median_s"]), _s(c["first_sync_median_s"]),
                _s(c["cpu_to_ready_median_s"]), _mib(c["peak_rss_median_kib"]),
                str(probe.get("bot_joined_rooms", "—")),
                f"{_s(restart.get('median_s'))}, {restart.get('bytes', 0) / 1024:.0f} KiB",
                f"{_s(initial.get('median_s'))}, {initial.get('bytes', 0) / 1024:.0f} KiB",
                f"{build.get('chats', 0)} in {build.get('seconds', 0):.0f} s",
            ])
        table("7. Start-up to 'first sync done; ready' with real history (E2EE on; warm "
              "restarts with the saved device)",
              ["history", "warm start (median)", "runs", "before sync", "first sync",
               "CPU to ready", "peak RSS", "bot's rooms", "restart sync (raw)",
               "initial sync (raw)", "chats added"], rows)
        lines.append("before sync: process start -> 'Parcel running' (imports, store, crypto "
                     "store, login check, identity); first sync: 'Parcel running' -> 'ready' "
                     "(request, nio, the bot's handling); raw syncs: the same request made by "
                     "the bench as the bot while it is stopped (time to the last byte, size).")
    burst = results.get("burst")
    if burst:
        rows = []
        for r in burst["runs"]:
            order = r["order"]
            rows.append([
                r["bot"], str(r["messages"]), _s(r["drain_s"]), f"{r['messages_per_s']:.1f}",
                f"{r['send_rate_per_s']:.0f}", _s(r["lag_after_last_send_s"]),
                "—" if r.get("copy_interval_ms_p50") is None
                else f"{r['copy_interval_ms_p50']:.0f} ms",
                f"{r['bot_cpu_ms_per_message']:.1f} ms",
                "yes" if order["in_order"] else
                f"NO ({order['steps_backwards']} back, {order['missing']} missing, "
                f"{order['duplicates']} twice)",
            ])
        table(f"8. Text burst: {burst['messages']} texts from one customer "
              f"({burst.get('in_flight', 1)} sends in flight), first send -> last copy at "
              f"the agent",
              ["bot", "texts", "drain", "texts/s", "client sent/s", "after last send",
               "copy interval p50", "bot CPU/text", "in order"], rows)
        lines.append(f"Parcel / relay rate (medians over {burst['rounds']} round(s)): "
                     f"{_x(burst['ratio_rate'])}")
    goals = results.get("targets", [])
    if goals:
        table("Targets", ["target", "limit", "measured", "met"],
              [[g["target"] + (f" [{g['note']}]" if g["note"] else ""), g["limit"],
                "—" if g["measured"] is None else f"{g['measured']:.2f}",
                {True: "yes", False: "NO", None: "?"}[g["met"]]] for g in goals])
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    """One table for the README's "Performance" section."""
    meta = results["meta"]
    m = meta["machine"]
    mode = "" if meta["mode"] == "full" else f" --{meta['mode']}"
    out = [
        f"Measured with `.venv/bin/python -m bench{mode}` on {m['cpu_model']} "
        f"({m['cores']} cores, {m['memory_gib']} GiB), Python {m['python']}, Synapse "
        f"{m['synapse']} (SQLite) and matrix-nio {m['matrix_nio']}, all on one machine over "
        f"loopback. Latencies are p50 / p95. The baseline is a relay that forwards events "
        f"unchanged (`bench/relay.py`): two hops through the homeserver, nothing else.",
        "",
        "| Measure | Parcel | Baseline relay | Parcel / baseline | Target |",
        "|---|---|---|---|---|",
    ]
    met = {g["target"]: g for g in results.get("targets", [])}

    def verdict(name: str) -> str:
        g = met.get(name)
        if g is None:
            return ""
        mark = {True: "✅", False: "❌ missed", None: "?"}[g["met"]]
        return f"{g['limit']} {mark}"

    base = results.get("baseline")
    if base:
        out.append(f"| Text, one hop (client → client) | — | {_pp(base['one_hop_text'])} | — | — |")
        out.append(f"| Text, two hops | {_pp(base['parcel_text_relay'])} | "
                   f"{_pp(base['relay_two_hop_text'])} | "
                   f"{_x(base['ratio_parcel_text_p50'])} | — |")
    plain = results.get("latency_plain", {})
    for size, e in plain.items():
        out.append(f"| File {size}: upload → offer card shown | {_pp(e['parcel_offer'])} | "
                   f"{_pp(e['baseline_forward'])} (file forwarded) | "
                   f"{_x(e['ratio_offer_p50'])} | "
                   f"{verdict(f'offer latency p50, {size}: Parcel / baseline')} |")
    for size, e in plain.items():
        out.append(f"| File {size}: ✅ → file shown | {_pp(e['parcel_delivery'])} | "
                   f"{_pp(e['baseline_forward'])} (file forwarded) | "
                   f"{_x(e['ratio_delivery_p50'])} | "
                   f"{verdict(f'delivery latency p50, {size}: Parcel / baseline')} |")
    for size, e in results.get("latency_e2ee", {}).items():
        out.append(f"| E2EE file {size}: offer; delivery | offer {_pp(e['parcel_offer'])}; "
                   f"delivery {_pp(e['parcel_delivery'])} | {_pp(e['baseline_forward'])} "
                   f"(encrypted file forwarded) | encrypted / plain Parcel: offer "
                   f"{_x(e['enc_vs_plain_offer_p50'])}, delivery "
                   f"{_x(e['enc_vs_plain_delivery_p50'])} | "
                   f"{verdict(f'offer latency p50, {size}: encrypted / plain')}; "
                   f"{verdict(f'delivery latency p50, {size}: encrypted / plain')} |")
    scale = results.get("scale")
    if scale:
        target_entry, _ = _scale_level(results, 50)
        for e in scale["levels"]:
            if "parcel" not in e or "relay" not in e:
                continue
            p, r = e["parcel"], e["relay"]
            target = "—"
            if target_entry is not None and e["level"] == target_entry["level"]:
                target = verdict("throughput at 50 sessions: Parcel / baseline")
                if e["level"] != 50:
                    target += " (the 50-session target, at this level)"
            cpu = ("—" if p["bot_cpu_s_per_offer"] is None
                   else f"{p['bot_cpu_s_per_offer'] * 1000:.1f} ms")
            rcpu = ("—" if r["bot_cpu_s_per_offer"] is None
                    else f"{r['bot_cpu_s_per_offer'] * 1000:.1f} ms")
            out.append(
                f"| {p['sessions']} sessions × 1 file/s ({scale['window_s']:.0f} s): files/s, "
                f"p95, bot CPU per file | {p['throughput_per_s']:.1f}/s, "
                f"{_p95(p)}, {cpu} | {r['throughput_per_s']:.1f}/s, "
                f"{_p95(r)}, {rcpu} | {_x(e['ratio_throughput'])} | "
                f"{target} |")
    for key, suffix in (("memory", ""), ("memory_e2ee", ", E2EE")):
        memory = results.get(key)
        if not memory:
            continue
        for r in memory["files"]:
            target = verdict(f"peak RSS growth relaying 250 MB{suffix} (MiB)") \
                if r["bytes"] == max(x["bytes"] for x in memory["files"]) else "—"
            out.append(f"| Bot peak RSS − idle, relaying {r['file']}{suffix} | "
                       f"+{r['peak_minus_idle_mib']:.1f} MiB | — | — | {target} |")
    burst = results.get("burst")
    if burst:
        p, r = burst["parcel"], burst["relay"]

        def order(side: dict[str, Any]) -> str:
            return "in order" if side["in_order"] else "ORDER BROKEN"

        out.append(f"| Burst of {burst['messages']} texts from one customer: drain rate | "
                   f"{p['messages_per_s']:.1f}/s ({p['drain_s']:.1f} s), {order(p)} | "
                   f"{r['messages_per_s']:.1f}/s ({r['drain_s']:.1f} s), {order(r)} | "
                   f"{_x(burst['ratio_rate'])} | — |")
    startup = results.get("startup")
    if startup and "cases" in startup:
        cases = startup["cases"]
        for c in cases:
            target = "—"
            if c is cases[-1]:
                target = verdict(STARTUP_TARGET)
                if len(cases) > 1:
                    target += f"; flat: {verdict(STARTUP_FLAT_TARGET)}"
            ratio_cell = (f"{_x(startup.get('ratio_warm_big_vs_small'))} of "
                          f"{cases[0]['sessions']} sessions"
                          if c is cases[-1] and len(cases) > 1 else "—")
            out.append(f"| Start-up to ready, {_case_label(c)}: warm median; first sync; "
                       f"peak RSS | {_s(c['warm_median_s'])}; {_s(c['first_sync_median_s'])}; "
                       f"{_mib(c['peak_rss_median_kib'])} | — | {ratio_cell} | {target} |")
    notes = results.get("notes", [])
    if notes:
        out.append("")
        out.extend(f"Note: {n}" for n in notes)
    return "\n".join(out) + "\n"
