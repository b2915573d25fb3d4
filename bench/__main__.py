"""``python -m bench [--quick] [--only PARTS] [--out FILE] [--keep]``: run the benchmarks.

Starts a throwaway Synapse on 127.0.0.1 (rate limits raised, uploads up to 300 MB), runs
Parcel and the baseline relay as separate processes, and drives them with real nio clients.
Progress goes to stderr; the tables and the README markdown go to stdout; every figure goes
to a JSON file (``bench/results/latest.json``, or ``quick.json`` with ``--quick``) and the
markdown to the ``.md`` file beside it. The JSON records the commit measured; a tree with
uncommitted changes never writes the committed results: such a run writes
``bench/results/dirty-<timestamp>.*`` (ignored by git) or where ``--out`` says, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.burst import part_burst
from bench.chats import parse_levels, part_chats
from bench.dbfault import part_dbfault
from bench.ha import part_ha
from bench.harness import write_json
from bench.history import part_startup
from bench.scenarios import (
    FULL,
    QUICK,
    Bench,
    Params,
    part_latencies,
    part_memory,
    part_scale,
    say,
)
from bench.traffic import part_traffic

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("latency", "e2ee", "memory", "startup", "burst", "scale", "ha", "dbfault", "chats")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, 5 and 20 sessions for 10 s, start-up with 10 "
                             "and 110 sessions, 3 failover kills (about 7 minutes)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: all of {','.join(PARTS)};"
                             " 'latency' includes the one-hop baseline, 'e2ee' needs 'latency')")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file (NAME.json), or a directory for latest.json / "
                             "quick.json (default bench/results/latest.json, or quick.json with "
                             "--quick); the markdown goes beside it as .md")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (homeserver, bot logs) afterwards")
    parser.add_argument("--chats", default=None, metavar="LEVELS",
                        help="open encrypted chats measured by the 'chats' part, cumulative "
                             "(default 1,1000,5000; --quick 1,200)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="print the tables of an earlier results file and rewrite its .md; "
                             "runs nothing")
    return parser


def _render(path: Path) -> int:
    results = json.loads(path.read_text(encoding="utf-8"))
    results["targets"] = report.targets(results)
    md = report.markdown(results)
    path.with_suffix(".md").write_text(md, encoding="utf-8")
    print(report.text_report(results))
    print(md)
    return 0


def _part_timeout(params: Params, part: str) -> float:
    full = params.mode == "full"
    if part == "chats":
        # Opening a chat costs Synapse and the bot a fraction of a second each; restarts and
        # takeovers at each level add minutes.
        return 900.0 + 300.0 * len(params.chats_levels) + 0.6 * max(params.chats_levels)
    return {
        "latency": 1800.0 if full else 600.0,
        "memory": 600.0 if full else 240.0,
        # Real history: about 0.6 s of Synapse CPU per chat opened and ended (two rooms).
        "startup": 1800.0 if full else 600.0,
        "burst": 300.0 if full else 180.0,
        "scale": 1200.0 if full else 400.0,
        "traffic": 600.0 if full else 300.0,
        # PostgreSQL: failover kills, the backends' latencies, its scale windows, nio's store.
        "ha": 1200.0 if full else 600.0,
        # PostgreSQL restarted and stopped (a minute; 20 s --quick) under live traffic.
        "dbfault": 1500.0 if full else 900.0,
    }[part]


def _output_path(requested: Path | None, mode: str, git: dict[str, Any],
                 stamp: str) -> tuple[Path, str | None]:
    """Where the results go, and why not where asked when the tree had uncommitted changes.

    The committed results (anything in bench/results/ but ``dirty-*``) are written only from
    a clean tree whose commit is known: a figure must say which code it measured.
    """
    name = "quick.json" if mode == "quick" else "latest.json"
    if requested is None:
        out = RESULTS / name
    elif requested.is_dir() or not requested.suffix:  # a directory, existing or to be
        out = requested / name
    else:
        out = requested
    committed = (out.resolve().parent == RESULTS.resolve()
                 and not out.name.startswith("dirty-"))
    if committed and git.get("dirty") is not False:
        why = ("uncommitted changes in " + ", ".join(git.get("changed_paths") or ["the tree"])
               if git.get("dirty") else "git could not tell which commit this is")
        redirected = RESULTS / f"dirty-{stamp}.json"
        return redirected, (f"NOT writing {out.relative_to(RESULTS.parent.parent)}: {why}. "
                            f"Results go to {redirected.relative_to(RESULTS.parent.parent)} "
                            "instead; commit (or use --out DIR) and run again for the "
                            "committed figures.")
    return out, None


async def _run(params: Params, parts: list[str], workdir: Path) -> tuple[dict[str, Any], bool]:
    results: dict[str, Any] = {}
    failed = False
    async with Bench(params, workdir) as bench:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if "latency" in parts:
            steps.append(("latency", lambda: part_latencies(bench, "e2ee" in parts)))

            async def traffic() -> None:
                await part_traffic(bench, encrypted=False)
                if "e2ee" in parts:
                    await part_traffic(bench, encrypted=True)
            steps.append(("traffic", traffic))
        if "memory" in parts:
            async def memory() -> None:
                await part_memory(bench)
                if "e2ee" in parts:
                    await part_memory(bench, encrypted=True)
            steps.append(("memory", memory))
        if "burst" in parts:
            steps.append(("burst", lambda: part_burst(bench)))
        if "startup" in parts:  # it leaves two thousand rooms on the homeserver
            steps.append(("startup", lambda: part_startup(bench)))
        if "scale" in parts:  # last: it leaves hundreds of rooms on the homeserver
            steps.append(("scale", lambda: part_scale(bench)))
        if "ha" in parts:  # after scale: its own scale windows leave hundreds of rooms too
            steps.append(("ha", lambda: part_ha(bench)))
        if "dbfault" in parts:
            steps.append(("dbfault", lambda: part_dbfault(bench)))
        if "chats" in parts:  # last: it leaves thousands of rooms on the homeserver
            steps.append(("chats", lambda: part_chats(bench)))
        for name, step in steps:
            began = time.monotonic()
            busy0 = report.busy_mark()
            try:
                await asyncio.wait_for(step(), _part_timeout(params, name))
            except Exception as exc:  # noqa: BLE001 - record it, go on with the next part
                failed = True
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
                bench.notes.append(f"part '{name}' failed: {detail.splitlines()[0]}")
                say(f"part '{name}' FAILED: {detail}")
                traceback.print_exc(file=sys.stderr)
            bench.results.setdefault("part_seconds", {})[name] = round(
                time.monotonic() - began, 1)
            bench.results.setdefault("machine_load", {})[name] = report.load_since(busy0)
            say(f"part '{name}' took {time.monotonic() - began:.0f} s")
        results = dict(bench.results)
        results["notes"] = list(bench.notes)
        results["synapse_startup_s"] = round(bench.hs.startup_seconds or 0.0, 2)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render is not None:
        return _render(args.render)
    params = QUICK if args.quick else FULL
    if args.chats is not None:
        try:
            params = dataclasses.replace(params, chats_levels=parse_levels(args.chats))
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}",
              file=sys.stderr)
        return 2
    git = report.git_state()
    out, refused = _output_path(args.out, params.mode, git, time.strftime("%Y%m%d-%H%M%S"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("nio", "nio.client", "nio.rooms", "nio.crypto", "nio.responses", "peewee"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    workdir = Path(tempfile.mkdtemp(prefix="parcel-bench-"))
    started = time.time()
    say(f"{params.mode} run of {', '.join(parts)} at commit {git.get('commit')}; working "
        f"directory {workdir}")
    if refused:
        say(refused)
    try:
        results, failed = asyncio.run(_run(params, parts, workdir))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finished = time.time()
    after = report.git_state()
    if (after.get("commit"), after.get("dirty")) != (git.get("commit"), git.get("dirty")):
        # The code changed under the run: its figures belong to no single commit.
        git = {**git, "dirty": True, "changed_during_run": True,
               "commit_after": after.get("commit"),
               "changed_paths": after.get("changed_paths") or git.get("changed_paths")}
        out, refused = _output_path(args.out, params.mode, git, time.strftime("%Y%m%d-%H%M%S",
                                    time.localtime(started)))
        if refused:
            refused = "the tree changed during the run; " + refused
    command = " ".join([".venv/bin/python -m bench", *map(shlex.quote, sys.argv[1:])])
    results = {
        "meta": {
            "mode": params.mode,
            "parts": parts,
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(finished - started, 1),
            "machine": report.machine(),
            "git": git,
            "results_file": str(out.name),
            "params": {k: v for k, v in vars(params).items()},
            "profile": "python -m bench.profile (needs py-spy) writes bench/results/profile.json",
            "timing": "latency parts: origin_server_ts of the triggering event -> the recipient "
                      "client handing over the resulting event (after decryption); scale: "
                      "the customer's send returning -> the recipient client; ha failover: "
                      "the SIGKILL -> the standby's log line / the agent's client",
        },
        **results,
    }
    results["targets"] = report.targets(results)
    write_json(out, results)
    md = report.markdown(results)
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(report.text_report(results))
    print("Markdown for the README's Performance section "
          f"(also in {out.with_suffix('.md')}):\n")
    print(md)
    print(f"Results: {out}  ({params.mode} run took {finished - started:.0f} s)")
    if refused:
        print(refused)
    if args.keep or failed:
        say(f"working directory kept: {workdir}")
    else:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
