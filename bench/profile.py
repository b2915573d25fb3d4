"""``python -m bench.profile``: where Parcel's time goes, for the targets the benchmark misses.

Needs py-spy in the virtualenv (``.venv/bin/pip install py-spy``; the benchmark itself does
not). Three looks, each on a fresh throwaway Synapse:

* ``latency``: offer + ✅ + delivery exchanges of 4 KB, 1 MB and 20 MB files (E2EE off) with
  py-spy sampling the bot, plus a per-offer timeline from the bot's own log lines (event
  received, inspected, accepted, delivered) against the clients' timestamps.
* ``e2ee``: the same exchanges with E2EE on.
* ``scale``: 50 sessions x 1 file/s for 30 s (``--quick``: 20 sessions, 10 s) with py-spy
  sampling the bot and Synapse.

py-spy counts only samples where a thread is running (not waiting), so percentages are shares
of the process's CPU time. Summaries go to stdout and ``bench/results/profile.json``;
``--keep`` keeps the raw collapsed stacks (flamegraph input) in the working directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import BenchError, Child, summary, write_json
from bench.report import machine
from bench.scenarios import FULL, KB, MB, QUICK, Bench, Chat, part_scale, say

RESULTS = Path(__file__).resolve().parent / "results"
PY_SPY = Path(sys.executable).parent / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+\s+[\w.]+: "
                  r"offer (\d+) \(session \d+\): (.*)$")


class Sampler:
    """py-spy attached to a running process until :meth:`stop` (SIGINT makes it write)."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(PY_SPY), "record", "--pid", str(self.pid), "--rate", str(self.rate),
            "--format", "raw", "--output", str(self.out), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # attached

    async def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _short(file: str) -> str:
    """A source path shortened to the package-relative part."""
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _component(file: str) -> str:
    """Which library a frame's file belongs to (bot, nio, aiohttp, sqlite3, asyncio...)."""
    short = _short(file)
    head = short.split("/", 1)[0]
    if head.endswith(".py"):
        head = head[:-3]
    return head or file


def summarize_stacks(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function, and self share per library, of a raw profile."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_component: Counter[str] = Counter()
    bot_inclusive: Counter[str] = Counter()
    synapse_files: Counter[str] = Counter()
    samples = 0
    if not path.exists():
        return {"samples": 0, "error": f"no profile written at {path}"}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            match = _FRAME.match(raw.strip())
            if match is None:
                continue  # the process / thread label
            frames.append((match["func"], match["file"]))
        if not frames:
            continue
        samples += count
        func, file = frames[-1]
        own[f"{func} ({_short(file)})"] += count
        by_component[_component(file)] += count
        seen = set()
        seen_bot = set()
        for func, file in frames:
            key = f"{func} ({_short(file)})"
            if key not in seen:
                seen.add(key)
                total[key] += count
            if _short(file).startswith("bot/") and key not in seen_bot:
                seen_bot.add(key)
                bot_inclusive[key] += count
        areas = {_short(f) for _, f in frames
                 if _short(f).startswith(("synapse/handlers/", "synapse/rest/",
                                          "synapse/storage/databases/", "synapse/media/",
                                          "synapse/notifier", "synapse/events/",
                                          "synapse/storage/controllers/"))}
        for area in areas:
            synapse_files[area] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": k, "percent": round(100.0 * v / samples, 1)}
                for k, v in counter.most_common(top)]

    return {
        "samples": samples,
        "self": share(own),
        "inclusive": share(total),
        "bot_functions_inclusive": share(bot_inclusive),
        "self_by_library": share(by_component),
        "synapse_inclusive_by_file": share(synapse_files) if synapse_files else [],
    }


def offer_log_times(log_path: Path) -> dict[int, dict[str, float]]:
    """offer id -> {"received", "offered", "accepted", "delivered"} wall times, from the log."""
    times: dict[int, dict[str, float]] = {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LOG.match(line)
        if match is None:
            continue
        stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
        offer, text = int(match[3]), match[4]
        for key, prefix in (("received", "customer_to_agent from"), ("offered", "offered,"),
                            ("staged", "delivery staged as"),
                            ("accepted", "accepted by"), ("delivered", "delivered as")):
            if text.startswith(prefix):
                times.setdefault(offer, {})[key] = stamp
    return times


async def _timed_cycles(b: Bench, chat: Chat, label: str, size: int, n: int,
                        ) -> list[dict[str, Any]]:
    """Offer/✅/delivery exchanges that also keep each step's client-side timestamps."""
    rows = []
    for i in range(n):
        name = f"prof-{label}-{i}.bin"
        t_up = time.monotonic()
        media_part = await chat.customer.upload(b.blob(size), name, "application/octet-stream",
                                                encrypt=chat.encrypted)
        t_send = time.monotonic()
        event_id, _ = await chat.customer.send(chat.customer_room, chat.customer.file_content(
            media_part, name, "application/octet-stream", size))
        t_done = time.monotonic()
        card = await chat.agent.wait_for(
            lambda s, n=name: s.room_id == chat.agent_room and s.content.get(
                "io.parcel.offer", {}).get("filename") == n
            and "m.new_content" not in s.content, "a card", timeout=120)
        upload_ts = await b._own_ts(chat.customer, event_id)
        offer_id = card.content["io.parcel.offer"]["id"]
        await b.offer_shown(chat, card, offer_id)
        reaction_id, _ = await chat.agent.react(chat.agent_room, str(card.source["event_id"]),
                                                "\u2705")
        media = await chat.agent.wait_for(
            lambda s, n=name: s.room_id == chat.agent_room and s.sender == chat.bot_id
            and ("url" in s.content or "file" in s.content) and s.content.get("body") == n,
            "a delivery", timeout=120)
        reaction_ts = await b._own_ts(chat.agent, reaction_id)
        await chat.agent.wait_for(
            lambda s, o=offer_id: s.room_id == chat.agent_room and isinstance(
                s.content.get("m.new_content"), dict) and s.content["m.new_content"].get(
                "io.parcel.offer", {}).get("id") == o, "the card's edit", timeout=120)
        rows.append({"offer": offer_id, "upload_ts": upload_ts, "card_at": card.at,
                     "reaction_ts": reaction_ts, "media_at": media.at,
                     "client_upload_s": t_send - t_up, "client_send_s": t_done - t_send})
        await asyncio.sleep(0.05)
    return rows


def _breakdown(rows: list[dict[str, Any]], logged: dict[int, dict[str, float]]) -> dict:
    """Median milliseconds of each step of the offer and of the delivery."""
    steps: dict[str, list[float]] = {k: [] for k in (
        "offer: upload event -> bot logs it (sync hop)",
        "offer: logged -> inspected (download, hash, libmagic, store)",
        "offer: inspected -> card at the agent (send + sync hop)",
        "delivery: reaction -> bot logs the decision (sync hop)",
        "delivery: decision -> delivery sent (waits for the staged copy, then a send)",
        "staging: inspected -> recipient's copy uploaded (from the bot's log)",
        "delivery: sent -> file at the agent (sync hop)",
        "offer total", "delivery total",
        "reference: a client's media upload request of the same file",
        "reference: a client's event send request")}
    keys = list(steps)
    for row in rows:
        t = logged.get(row["offer"], {})
        if not {"received", "offered", "accepted", "delivered"} <= set(t):
            continue
        staged = t.get("staged", t["offered"]) - t["offered"]  # 0 without prestaging
        values = [t["received"] - row["upload_ts"], t["offered"] - t["received"],
                  row["card_at"] - t["offered"], t["accepted"] - row["reaction_ts"],
                  t["delivered"] - t["accepted"], staged, row["media_at"] - t["delivered"],
                  row["card_at"] - row["upload_ts"], row["media_at"] - row["reaction_ts"],
                  row["client_upload_s"], row["client_send_s"]]
        for key, value in zip(keys, values, strict=True):
            steps[key].append(value)
    return {k: (round(statistics.median(v) * 1000, 1) if v else None) for k, v in steps.items()}


PROFILE_SIZES = (("4 KB", 4 * KB), ("1 MB", 1 * MB), ("20 MB", 20 * MB), ("100 MB", 100 * MB))


async def profile_latency(b: Bench, encrypted: bool, reps: tuple[int, ...],
                          workdir: Path) -> dict[str, Any]:
    tag = "e2ee" if encrypted else "plain"
    say(f"profile: latency, E2EE {'on' if encrypted else 'off'}")
    customer = await b.actor(f"p-cust-{tag}", "Carol", encrypted=encrypted)
    agent = await b.actor(f"p-agent-{tag}", "Alice", encrypted=encrypted, auto_join=True)
    parcel = await b.parcel(f"prof-{tag}", encryption=encrypted, agents=[agent.user_id])
    chat = await b.open_parcel_chat(parcel, customer, agent, encrypted)
    await _timed_cycles(b, chat, f"{tag}-warm", 4 * KB, 2)
    out_path = workdir / f"bot-latency-{tag}.collapsed"
    sampler = Sampler(parcel.child.pid, out_path)
    cpu0 = parcel.child.cpu()
    began = time.monotonic()
    await sampler.start()
    result: dict[str, Any] = {"sizes": {}}
    for (label, size), n in zip(PROFILE_SIZES, reps, strict=True):
        rows = await _timed_cycles(b, chat, f"{tag}-{label.replace(' ', '')}", size, n)
        result["sizes"][label] = {
            "n": n,
            "breakdown_ms_median": _breakdown(rows, offer_log_times(parcel.child.log_path)),
            "offer": summary([r["card_at"] - r["upload_ts"] for r in rows]),
            "delivery": summary([r["media_at"] - r["reaction_ts"] for r in rows]),
        }
    await sampler.stop()
    wall = time.monotonic() - began
    result["bot_cpu_utilisation"] = round((parcel.child.cpu() - cpu0) / wall, 3)
    result["bot_profile"] = summarize_stacks(out_path)
    await parcel.child.stop()
    return result


async def profile_scale(b: Bench, workdir: Path) -> dict[str, Any]:
    say(f"profile: scale, {b.p.scale_levels[0]} sessions")
    samplers: dict[str, Sampler] = {}

    async def hook(phase: str, kind: str, level: int, child: Child) -> None:
        if phase == "start":
            samplers["bot"] = Sampler(child.pid, workdir / f"bot-scale-{level}.collapsed")
            spid = b.synapse_pid
            if spid:
                samplers["synapse"] = Sampler(spid, workdir / f"synapse-scale-{level}.collapsed",
                                              rate=100)
            for sampler in samplers.values():
                await sampler.start()
        else:
            for sampler in samplers.values():
                await sampler.stop()

    b.scale_sides = ("parcel",)
    b.window_hooks.append(hook)
    await part_scale(b)
    level = b.results["scale"]["levels"][-1]
    return {
        "level": level,
        "bot_profile": summarize_stacks(samplers["bot"].out) if "bot" in samplers else None,
        "synapse_profile": summarize_stacks(samplers["synapse"].out)
        if "synapse" in samplers else None,
    }


def _print(results: dict[str, Any]) -> None:
    def table(title: str, entries: list[dict[str, Any]] | None) -> None:
        print(f"  {title}:")
        for e in entries or []:
            print(f"    {e['percent']:5.1f}%  {e['function']}")

    for name, part in results.items():
        if name in ("meta",) or not isinstance(part, dict):
            continue
        print(f"\n== {name} ==")
        for label, size in part.get("sizes", {}).items():
            print(f"  {label}: offer {size['offer']['p50']}, delivery {size['delivery']['p50']} "
                  f"s (p50)")
            for step, ms in size["breakdown_ms_median"].items():
                print(f"      {ms!s:>8} ms  {step}")
        if "bot_cpu_utilisation" in part:
            print(f"  bot CPU while profiled: {part['bot_cpu_utilisation']:.0%}")
        if "level" in part:
            lv = part["level"]["parcel"]
            print(f"  {lv['sessions']} sessions: {lv['throughput_per_s']} files/s, latency "
                  f"p50/p95 {lv['latency']['p50']}/{lv['latency']['p95']} s, bot CPU "
                  f"{lv['during_window']['bot_cpu_utilisation']:.0%}, Synapse CPU "
                  f"{lv['during_window']['synapse_cpu_utilisation']:.0%}")
        for key in ("bot_profile", "synapse_profile"):
            prof = part.get(key)
            if not prof:
                continue
            print(f"  {key} ({prof.get('samples')} samples):")
            table("self time by library", prof.get("self_by_library"))
            table("self time by function", prof.get("self", [])[:12])
            table("inclusive time, bot functions", prof.get("bot_functions_inclusive",
                                                            [])[:12])
            if key == "synapse_profile":
                table("inclusive time by Synapse source file (handlers, servlets, storage)",
                      prof.get("synapse_inclusive_by_file", [])[:25])


async def _main(quick: bool, scenarios: list[str], keep: bool, out: Path | None = None) -> int:
    if not PY_SPY.exists():
        print(f"py-spy is not installed in this virtualenv ({PY_SPY}); run "
              f"'.venv/bin/pip install py-spy' first", file=sys.stderr)
        return 2
    params = QUICK if quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="parcel-profile-"))
    results: dict[str, Any] = {"meta": {"machine": machine(), "mode": params.mode,
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    reps = (5, 5, 3, 2) if quick else (20, 15, 8, 4)
    try:
        if "latency" in scenarios or "e2ee" in scenarios:
            async with Bench(params, workdir / "latency") as b:
                if "latency" in scenarios:
                    results["latency_plain"] = await profile_latency(b, False, reps, workdir)
                if "e2ee" in scenarios:
                    results["latency_e2ee"] = await profile_latency(b, True, reps, workdir)
        if "scale" in scenarios:
            level = 20 if quick else 50
            p = replace(params, scale_levels=(level,), scale_setup_budget=300.0)
            async with Bench(p, workdir / "scale") as b:
                results["scale"] = await profile_scale(b, workdir)
    except BenchError as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    out = out or RESULTS / ("profile-quick.json" if quick else "profile.json")
    write_json(out, results)
    _print(results)
    print(f"\nProfile summary: {out}")
    if keep:
        say(f"raw stacks kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="latency,e2ee,scale")
    parser.add_argument("--keep", action="store_true", help="keep the raw stacks")
    parser.add_argument("--out", type=Path, default=None,
                        help="summary JSON (default bench/results/profile.json, or "
                             "profile-quick.json with --quick)")
    args = parser.parse_args()
    return asyncio.run(_main(args.quick, [s.strip() for s in args.only.split(",")], args.keep,
                             args.out))


if __name__ == "__main__":
    sys.exit(main())
