"""The ``parcel-bot`` command line; the only place where an exception becomes an exit code."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import config as config_module
from bot.config import Config, ConfigError
from bot.logs import setup_logging

logger = logging.getLogger("bot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parcel-bot", description="Consent-gated attachments for Matrix support chats."
    )
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING or ERROR (overrides logging.level)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the bot")
    run.add_argument("--config", required=True, type=Path)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("--config", required=True, type=Path)
    log = commands.add_parser("log", help="print the attachment log")
    log.add_argument("--config", required=True, type=Path)
    log.add_argument("--session", type=int, default=None, help="only this session number")
    log.add_argument("--since", default=None, help="only offers since this date (YYYY-MM-DD "
                     "or ISO 8601 time, UTC unless it names a zone)")
    log.add_argument("--format", choices=("csv", "json"), default="csv")
    reset = commands.add_parser(
        "reset-identity",
        help="replace the bot's cross-signing identity (when its seeds file is lost); stop the "
             "bot first",
    )
    reset.add_argument("--config", required=True, type=Path)
    demo = commands.add_parser("demo", help="play a scripted chat on a throwaway Synapse")
    demo.add_argument("--keep", action="store_true",
                      help="leave everything running and print the logins")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``parcel-bot`` and ``python -m bot``."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from bot.demo import run_demo

            setup_logging(args.log_level or "WARNING")
            return asyncio.run(run_demo(keep=args.keep))
        config = config_module.load(args.config)
        if args.command == "check-config":
            return check_config(args.config, config)
        if args.command == "log":
            return print_log(config, args.session, args.since, args.format)
        setup_logging(args.log_level or config.logging.level, config.logging.format)
        if args.command == "reset-identity":
            return asyncio.run(_reset_identity(config))
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"parcel-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        logger.debug("fatal error", exc_info=True)
        print(f"parcel-bot: {exc}", file=sys.stderr)
        return 1


def check_config(path: Path, config: Config) -> int:
    """Report what start-up would use; raises ConfigError for what it would refuse."""
    from bot import datadir, keys

    at_rest = datadir.describe(config.data_dir)  # raises for a data_dir start-up refuses
    print(f"{path}: OK ({len(config.agents.users)} agents, data in {config.data_dir})")
    print(at_rest)
    print(f"encryption key: {keys.describe_source(config)}")
    if config.metrics is not None:
        guarded = "bearer token required" if config.metrics.token else "no token (open)"
        print(f"metrics: {config.metrics.listen_host}:{config.metrics.listen_port}, /metrics "
              f"{guarded}, /health open")
    return 0


async def _run(config: Config) -> int:
    from bot.app import Parcel

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Parcel(config).run(stop)
    return 0


async def _reset_identity(config: Config) -> int:
    from bot.app import reset_identity

    status = await reset_identity(config)
    print(f"parcel-bot: {status.detail}")
    return 0 if status.cross_signed else 1


def _parse_since(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError("--since", f"expected a date like 2026-11-24, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


LOG_COLUMNS = ("offer", "session", "direction", "sender", "recipient_side", "filename",
               "mimetype", "size", "sha256", "state", "reason", "created_at", "updated_at",
               "transitions")


def print_log(config: Config, session: int | None, since: str | None, fmt: str) -> int:
    """Print the attachment log for admins as CSV or JSON on stdout."""
    from bot.store import Store

    path = config.data_dir / "parcel.db"
    if not path.exists():
        print(f"parcel-bot: no store at {path} yet", file=sys.stderr)
        return 1
    store = Store.open(path)
    try:
        entries = store.attachment_log(session, _parse_since(since) if since else None)
    finally:
        store.close()
    rows: list[dict[str, Any]] = []
    for entry in entries:
        offer = entry.offer
        rows.append({
            "offer": offer.id,
            "session": offer.session_id,
            "direction": offer.direction.value,
            "sender": offer.sender,
            "recipient_side": "agent" if offer.direction.value == "customer_to_agent"
            else "customer",
            "filename": offer.filename,
            "mimetype": offer.mimetype,
            "size": offer.size,
            "sha256": offer.sha256,
            "state": offer.state.value,
            "reason": offer.reason,
            "created_at": _iso(offer.created_at),
            "updated_at": _iso(offer.updated_at),
            "transitions": [
                {"state": state, "at": _iso(at), "actor": actor, "reason": reason}
                for state, at, actor, reason in entry.transitions
            ],
        })
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for row in rows:
            row["transitions"] = " ".join(f"{t['state']}@{t['at']}" for t in row["transitions"])
            writer.writerow({key: _spreadsheet_safe(value) for key, value in row.items()})
    return 0


def _spreadsheet_safe(value: object) -> object:
    """Keep spreadsheets from running a cell as a formula (a file named "=HYPERLINK(...)")."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
