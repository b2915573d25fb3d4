"""The ``parcel-bot`` command line; the only place where an exception becomes an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot import config as config_module
from bot.config import Config, ConfigError
from bot.logs import setup_logging
from bot.matrix.chunks import limit_malloc_arenas

logger = logging.getLogger("bot")


def _since(text: str) -> float:
    """``--since``: a date or ISO 8601 time (UTC unless it names a zone), as a timestamp."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date like 2026-11-24 or a time like 2026-11-24T08:00, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


CONFIG_HELP = "the YAML configuration (see config.example.yaml)"


def _version() -> str:
    """The installed package's version ("0.1.0"), or "unknown" when run from a bare tree."""
    try:
        return importlib.metadata.version("parcel-bot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    # --log-level is accepted before and after the subcommand ("run --config c --log-level
    # DEBUG", as the README shows); SUPPRESS keeps a later default from hiding an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        help="DEBUG, INFO, WARNING or ERROR (overrides logging.level)")
    parser = argparse.ArgumentParser(
        prog="parcel-bot", description="Consent-gated attachments for Matrix support chats.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"parcel-bot {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the bot", parents=[common])
    run.add_argument("--config", required=True, type=Path, metavar="FILE", help=CONFIG_HELP)
    check = commands.add_parser("check-config", help="validate a configuration file",
                                parents=[common])
    check.add_argument("--config", required=True, type=Path, metavar="FILE", help=CONFIG_HELP)
    log = commands.add_parser("log", help="print the attachment log", parents=[common])
    log.add_argument("--config", required=True, type=Path, metavar="FILE", help=CONFIG_HELP)
    log.add_argument("--session", type=int, default=None, help="only this session number")
    log.add_argument("--since", default=None, type=_since,
                     help="only offers since this date (YYYY-MM-DD or ISO 8601 time, UTC "
                     "unless it names a zone)")
    log.add_argument("--format", choices=("csv", "json"), default="csv")
    reset = commands.add_parser(
        "reset-identity",
        help="replace the bot's cross-signing identity (when its seeds file is lost); stop the "
             "bot first",
        parents=[common],
    )
    reset.add_argument("--config", required=True, type=Path, metavar="FILE", help=CONFIG_HELP)
    migrate = commands.add_parser(
        "migrate-store",
        help="copy an embedded (SQLite) install into PostgreSQL; stop the bot first",
        parents=[common],
    )
    migrate.add_argument("--config", required=True, type=Path, metavar="FILE",
                         help="the configuration of the SQLite install (no database setting)")
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="postgresql://user@host[:port]/db (an empty database); the "
                              "password from PARCEL_DATABASE_PASSWORD or the URL")
    demo = commands.add_parser("demo", help="play a scripted chat on a throwaway Synapse",
                               parents=[common])
    demo.add_argument("--keep", action="store_true",
                      help="leave everything running and print the logins")
    demo.add_argument("--port", type=int, default=None,
                      help="with --keep: the homeserver's port (default: a free one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``parcel-bot`` and ``python -m bot``."""
    args = _parser().parse_args(argv)
    log_level = getattr(args, "log_level", None)
    limit_malloc_arenas()  # before any thread: memory stays flat however large the file
    try:
        if args.command == "demo":
            from bot.demo import run_demo

            setup_logging(log_level or "WARNING")
            return asyncio.run(run_demo(keep=args.keep, port=args.port))
        if args.command == "log":
            # Reading the store needs no login: the password may stay out of the environment.
            config = config_module.load(args.config, require_credentials=False)
            return asyncio.run(print_log(config, args.session, args.since, args.format))
        if args.command == "migrate-store":
            config = config_module.load(args.config, require_credentials=False)
            setup_logging(log_level or "WARNING")
            return asyncio.run(_migrate_store(config, args.to))
        config = config_module.load(args.config)
        if args.command == "check-config":
            return check_config(args.config, config)
        setup_logging(log_level or config.logging.level, config.logging.format)
        if args.command == "reset-identity":
            return asyncio.run(_reset_identity(config))
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"parcel-bot: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `parcel-bot log | head`: the reader has gone; stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        logger.debug("fatal error", exc_info=True)
        print(f"parcel-bot: {exc}", file=sys.stderr)
        return 1


def check_config(path: Path, config: Config) -> int:
    """Report what start-up would use; raises ConfigError for what it would refuse."""
    from bot import datadir, keys

    # The same creation start-up does (so both refuse the same paths), then undone; a folder
    # that something else (a bot starting meanwhile) has begun to use is left to it.
    for folder in reversed(datadir.create(config.data_dir)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    at_rest = datadir.describe(config.data_dir)  # raises for a data_dir start-up refuses
    print(f"{path}: OK ({len(config.agents.users)} agents, data in {config.data_dir})")
    print(at_rest)
    print(f"encryption key: {keys.describe_source(config)}")
    print(f"store: {describe_database(config)}")
    if config.metrics is not None:
        guarded = "bearer token required" if config.metrics.token else "no token (open)"
        print(f"metrics: {config.metrics.listen_host}:{config.metrics.listen_port}, /metrics "
              f"{guarded}, /health open")
    return 0


def describe_database(config: Config) -> str:
    """Where the store lives, the URL's password redacted."""
    from bot.config import ENV_DATABASE_PASSWORD
    from bot.store.db import redact_url

    if config.database is None:
        return f"SQLite at {config.data_dir / 'parcel.db'}"
    source = (f"password from {ENV_DATABASE_PASSWORD}" if config.database_password
              else "password from the URL" if ":***@" in redact_url(config.database)
              else "no password")
    return f"PostgreSQL at {redact_url(config.database)} ({source})"


async def _run(config: Config) -> int:
    from bot.app import Parcel

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Parcel(config).run(stop)
    return 0


async def _reset_identity(config: Config) -> int:
    import aiohttp

    from bot import errors
    from bot.app import reset_identity

    try:
        status = await reset_identity(config)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # One attempt (an admin is waiting), in the words `run` uses while it retries.
        raise errors.from_exception(exc, f"connecting to {config.homeserver}") from exc
    print(f"parcel-bot: {status.detail}")
    return 0 if status.cross_signed else 1


async def _migrate_store(config: Config, url: str) -> int:
    from bot.migrate import migrate_store

    url = config_module.check_database_url(url)
    report = await migrate_store(config, url, os.environ.get(config_module.ENV_DATABASE_PASSWORD))
    print(f"parcel-bot: copied {config.data_dir} into {report.target}:")
    for table, count in report.rows.items():
        print(f"  {table}: {count} rows")
    crypto = sum(report.crypto_rows.values())
    print(f"  crypto store: {crypto} rows "
          f"({report.crypto_rows.get('megolminboundsessions', 0)} room keys, "
          f"{report.crypto_rows.get('olmsessions', 0)} Olm sessions)")
    print(f"  documents: {', '.join(report.documents) or 'none'}")
    print("Next: set `database:` to that URL in the configuration, give every instance the "
          f"same encryption key ({config_module.ENV_ENCRYPTION_KEY}; now from "
          f"{report.key_source}), start the bot, then archive the old data_dir.")
    return 0


LOG_COLUMNS = ("offer", "session", "direction", "sender", "recipient_side", "filename",
               "mimetype", "size", "sha256", "delivered_sha256", "state", "reason", "created_at",
               "updated_at", "transitions")


async def print_log(config: Config, session: int | None, since: float | None, fmt: str) -> int:
    """Print the attachment log for admins as CSV or JSON on stdout."""
    from bot.store import Store

    path = config.data_dir / "parcel.db"
    if config.database is None and not path.exists():
        print(f"parcel-bot: no store at {path} yet", file=sys.stderr)
        return 1
    # Only reads: a store of another version (a bot not upgraded yet) is never migrated here.
    store = await Store.open(config.database, config.data_dir, password=config.database_password,
                             upgrade=False)
    try:
        entries = await store.offers.attachment_log(session, since)
    finally:
        await store.close()
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
            # The copy delivered when metadata was removed (else the checked copy itself).
            "delivered_sha256": offer.delivered_sha256 or offer.sha256,
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
        sys.stdout.flush()  # a closed pipe shows here, inside main's handler
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for row in rows:
            row["transitions"] = " ".join(f"{t['state']}@{t['at']}" for t in row["transitions"])
            writer.writerow({key: _spreadsheet_safe(value) for key, value in row.items()})
        sys.stdout.flush()
    return 0


# A Matrix user id as the spec's grammar has it: a localpart of [a-z0-9._=/+-] and a server
# name (host name, IPv4 or [IPv6], optional port). Such a cell cannot call anything: no
# parentheses, no "|" for DDE, no quotes, so a spreadsheet shows it as it is.
_MATRIX_USER_ID = re.compile(
    r"@[a-z0-9._=/+\-]+:(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
# What makes a spreadsheet read a cell as a formula (OWASP's list for CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(value: object) -> object:
    """Keep spreadsheets from running a cell as a formula (a file named "=HYPERLINK(...)").

    A cell that starts like a formula gets a leading ``'``, except a whole Matrix user id
    (every sender starts with ``@``), which is exported as it is.
    """
    if (isinstance(value, str) and value.startswith(_FORMULA_STARTS)
            and not _MATRIX_USER_ID.fullmatch(value)):
        return "'" + value
    return value


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
