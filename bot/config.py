"""The bot's configuration: one YAML file, loaded into frozen, typed sections.

Pipeline: ``yaml.safe_load`` → every mapping checked against the known key schema (an unknown
key is an error, with the closest known key suggested) → values converted into frozen
dataclasses (sizes and durations through :func:`parse_size` / :func:`parse_duration`) →
cross-field checks. Every problem is one :class:`ConfigError` that names the dotted key path
and says what was expected and what was found; ``main()`` prints it as one line.

Two conventions hold for every key: a key that is absent or set to ``null`` takes its default
(in ``policy.customer_to_agent`` / ``policy.agent_to_customer`` that means "inherit the
policy-wide value"), and secrets may come from the environment (``PARCEL_PASSWORD``,
``PARCEL_ACCESS_TOKEN``, ``PARCEL_ENCRYPTION_KEY``, ``PARCEL_DATABASE_PASSWORD``), which wins
over the file when set and non-empty.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from bot import i18n
from bot.i18n import N_

_T = TypeVar("_T")

ENV_PASSWORD = "PARCEL_PASSWORD"
ENV_ACCESS_TOKEN = "PARCEL_ACCESS_TOKEN"
ENV_ENCRYPTION_KEY = "PARCEL_ENCRYPTION_KEY"
ENV_DATABASE_PASSWORD = "PARCEL_DATABASE_PASSWORD"
DATABASE_SCHEMES = ("postgresql", "postgres")
# A configured encryption key shorter than this is refused: it protects the bot's identity.
MIN_ENCRYPTION_KEY_LENGTH = 16

DEFAULT_MAX_SIZE = 25_000_000  # "25MB"
DEFAULT_OFFER_TTL = 24 * 3600.0  # "24h"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels: about 160 MB once a client decodes it
LARGE_IMAGE_MODES = ("file", "reject")
DEFAULT_SCANNER_TIMEOUT = 60.0  # "60s"
DEFAULT_TRANSFER_TIMEOUT = 300.0  # "5m"
DEFAULT_FOLLOW_DOWNLOAD_FROM = 200 * 1000 * 1000  # "200 MB": see MediaConfig
# A standby takes over within the lease plus a second of polling: 8 s keeps that under 10 s
# while a leader may miss three renewals (one every lease / 4) before it stands down.
DEFAULT_LEADER_LEASE = 8.0
MIN_LEADER_LEASE = 3.0
MAX_LEADER_LEASE = 120.0
DEFAULT_DATA_DIR = "./data"
DEFAULT_DEVICE_NAME = "parcel"
PATH_PLACEHOLDER = "{path}"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
SCANNER_FAILURE_MODES = ("reject", "allow")
CARD_NUMBER_MODES = ("allow", "redact", "refuse")  # policy.card_numbers (files)
CARD_TEXT_MODES = ("allow", "mask", "refuse")  # policy.card_numbers_in_text (chat text)
UNINSPECTABLE_MODES = ("allow", "refuse")
DEFAULT_OCR_TIMEOUT = 20.0  # "20s"
_VARIATION_SELECTOR_16 = "\ufe0f"
_TOP_LEVEL = "<top level>"


class ConfigError(Exception):
    """A configuration problem.

    ``key`` is the dotted path of the offending key (``policy.customer_to_agent.max_size``,
    ``agents.users[2]``), or the file path for problems that are not about one key (missing
    file, YAML syntax); ``problem`` says what is wrong. ``str(err)`` is ``"{key}: {problem}"``.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


# --------------------------------------------------------------------------------------------
# Typed sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentsConfig:
    """Who staffs the agent rooms and how customers see them."""

    users: tuple[str, ...]
    room_encryption: bool = True
    label: str = "support"
    # The language of the agent rooms (a shipped code); the top-level ``language`` if unset.
    language: str = "en"


@dataclass(frozen=True)
class DirectionPolicy:
    """What may travel in one direction; MIME patterns are matched on the detected type."""

    max_size: int
    allowed_types: tuple[str, ...]
    blocked_types: tuple[str, ...]
    block_executables: bool = True
    # Payment card numbers (bot/attachments/cards.py): in files "allow", "redact" or "refuse";
    # in chat text "allow", "mask" or "refuse"; a file that cannot be looked into for them (an
    # archive, an encrypted PDF, an OCR past its time) "allow"ed or "refuse"d.
    card_numbers: str = "allow"
    card_numbers_in_text: str = "allow"
    uninspectable: str = "allow"

    @property
    def looks_for_card_numbers(self) -> bool:
        """Whether files in this direction are searched for card numbers at all."""
        return self.card_numbers != "allow"


@dataclass(frozen=True)
class ScannerConfig:
    """An external scanner command; ``{path}`` in an argument becomes the file to scan."""

    command: tuple[str, ...]
    timeout: float = DEFAULT_SCANNER_TIMEOUT
    on_failure: str = "reject"


@dataclass(frozen=True)
class PolicyConfig:
    """The attachment policy for both directions."""

    offer_ttl: float
    customer_to_agent: DirectionPolicy
    agent_to_customer: DirectionPolicy
    scanner: ScannerConfig | None = None
    # Images with more pixels are never shown in-line: sent as files, or refused ("reject").
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    large_images: str = "file"
    # Remove EXIF/XMP (GPS, camera) from JPEG, PNG and WebP images before they are offered.
    strip_metadata: bool = True
    # How long searching one file for card numbers (OCR, a PDF, a large text) may take before
    # the file counts as one that cannot be looked into (policy.uninspectable).
    ocr_timeout: float = DEFAULT_OCR_TIMEOUT


@dataclass(frozen=True)
class ReactionsConfig:
    """The reaction keys the bot adds to offers and reads back as decisions."""

    accept: str = "\u2705"
    decline: str = "\u274c"


@dataclass(frozen=True)
class MessagesConfig:
    """Admin-chosen wording, for every language or by language code.

    A string is used for every language, except that Parcel's own default wording is
    translated for each reader (it is a catalog message). ``*_by_language`` holds wording
    given as a map by language code (``welcome`` is then the default language's entry).
    """

    welcome: str = N_(
        "Hello! You are connected to our support team. Files you send are offered to the "
        "agent, who accepts them before they see them."
    )
    agent_room_name: str = N_("Chat with {customer} (#{session})")
    welcome_by_language: tuple[tuple[str, str], ...] = ()
    agent_room_name_by_language: tuple[tuple[str, str], ...] = ()

    def welcome_in(self, language: str) -> str:
        """The configured welcome for ``language`` (the map's entry, else the one for all)."""
        return dict(self.welcome_by_language).get(language, self.welcome)

    def agent_room_name_in(self, language: str) -> str:
        """The agent room name template for ``language`` (the map's entry, else the one for
        all)."""
        return dict(self.agent_room_name_by_language).get(language, self.agent_room_name)


@dataclass(frozen=True)
class MediaConfig:
    """Limits and housekeeping for media transfers."""

    transfer_timeout: float = DEFAULT_TRANSFER_TIMEOUT
    purge_refused: bool = False
    prestage: bool = True
    # From this size on the recipient's copy is uploaded while the file downloads (following
    # the download) rather than after the card: measured, following slows the card, and below
    # this the copy is up before a person has read the card.
    follow_download_from: int = DEFAULT_FOLLOW_DOWNLOAD_FROM


@dataclass(frozen=True)
class LoggingConfig:
    """Log level (stored upper case) and output format."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class MetricsConfig:
    """Where the Prometheus endpoint listens, and the bearer token ``/metrics`` requires."""

    listen_host: str
    listen_port: int
    token: str | None = dataclasses.field(default=None, repr=False)


@dataclass(frozen=True)
class RetentionConfig:
    """How long the store keeps what."""

    purge_after: float | None = None
    redact_delivered_on_close: bool = False
    leave_closed_rooms: bool = True


@dataclass(frozen=True)
class RetryConfig:
    """How work that failed for a passing reason is tried again."""

    max_backoff: float = 300.0
    undecryptable_for: float = 6 * 3600.0


@dataclass(frozen=True)
class ProfileConfig:
    """The bot's public face: the name and picture customers see beside its messages."""

    display_name: str | None = None
    avatar: Path | None = None


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    homeserver: str
    user_id: str
    password: str | None = dataclasses.field(repr=False)
    access_token: str | None = dataclasses.field(repr=False)
    device_name: str
    data_dir: Path
    encryption: bool
    agents: AgentsConfig
    policy: PolicyConfig
    reactions: ReactionsConfig
    messages: MessagesConfig
    media: MediaConfig
    logging: LoggingConfig
    metrics: MetricsConfig | None
    retention: RetentionConfig
    allowed_servers: tuple[str, ...]
    retry: RetryConfig = RetryConfig()
    # The secret protecting the crypto store and the cross-signing seeds (bot/keys.py), and
    # where it came from: ENV_ENCRYPTION_KEY, "encryption_key", or None (generated file).
    encryption_key: str | None = dataclasses.field(default=None, repr=False)
    encryption_key_source: str | None = None
    notify_agents_of_refusals: bool = True
    profile: ProfileConfig = ProfileConfig()
    # None: the embedded SQLite store in data_dir; else a postgresql:// URL (its password, if
    # any, stays in it; never log it unredacted: bot.store.redact_url).
    database: str | None = dataclasses.field(default=None, repr=False)
    # From ENV_DATABASE_PASSWORD; wins over a password in the URL.
    database_password: str | None = dataclasses.field(default=None, repr=False)
    # With PostgreSQL: how long the leader's lease lasts without a renewal, so how soon a
    # standby takes over from a dead leader (bot/leader.py).
    leader_lease: float = DEFAULT_LEADER_LEASE
    # The language of customer rooms (a shipped code), the ones a customer may switch to
    # with !language, and the time zone times are shown in (IANA name).
    language: str = "en"
    languages: tuple[str, ...] = i18n.SHIPPED
    timezone: str = "UTC"

    def translator(self, language: str) -> i18n.Translator:
        """The translator for a reader of ``language`` in the configured time zone."""
        return i18n.translator(language, self.timezone)


# --------------------------------------------------------------------------------------------
# Key schema: a leaf is None, a section is a nested mapping.
# --------------------------------------------------------------------------------------------

_Schema = Mapping[str, "_Schema | None"]

_DIRECTION_SCHEMA: _Schema = {
    "max_size": None,
    "allowed_types": None,
    "blocked_types": None,
    "block_executables": None,
    "card_numbers": None,
    "card_numbers_in_text": None,
    "uninspectable": None,
}

_SCHEMA: _Schema = {
    "homeserver": None,
    "user_id": None,
    "password": None,
    "access_token": None,
    "encryption_key": None,
    "device_name": None,
    "data_dir": None,
    "database": None,
    "leader_lease": None,
    "encryption": None,
    "allowed_servers": None,
    "notify_agents_of_refusals": None,
    "profile": {"display_name": None, "avatar": None},
    "language": None,
    "languages": None,
    "timezone": None,
    "agents": {"users": None, "room_encryption": None, "label": None, "language": None},
    "policy": {
        "max_size": None,
        "offer_ttl": None,
        "allowed_types": None,
        "blocked_types": None,
        "block_executables": None,
        "scanner": None,
        "scanner_timeout": None,
        "scanner_failure": None,
        "max_image_pixels": None,
        "large_images": None,
        "strip_metadata": None,
        "card_numbers": None,
        "card_numbers_in_text": None,
        "uninspectable": None,
        "ocr_timeout": None,
        "customer_to_agent": _DIRECTION_SCHEMA,
        "agent_to_customer": _DIRECTION_SCHEMA,
    },
    "reactions": {"accept": None, "decline": None},
    "messages": {"welcome": None, "agent_room_name": None},
    "media": {"transfer_timeout": None, "purge_refused": None, "prestage": None,
              "follow_download_from": None},
    "logging": {"level": None, "format": None},
    "metrics": {"listen": None, "token": None},
    "retention": {
        "purge_after": None,
        "redact_delivered_on_close": None,
        "leave_closed_rooms": None,
    },
    "retry": {"max_backoff": None, "undecryptable_for": None},
}


def _walk_schema(schema: _Schema, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Yield ``(dotted path, is_leaf)`` for every key of the schema, depth first."""
    for name, sub in schema.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, sub is None
        if sub is not None:
            yield from _walk_schema(sub, path)


def known_keys() -> tuple[str, ...]:
    """Every settable (leaf) key as a dotted path, in schema order."""
    return tuple(path for path, leaf in _walk_schema(_SCHEMA) if leaf)


# --------------------------------------------------------------------------------------------
# Describing values in messages
# --------------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """A short, YAML-flavoured rendering of a value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    return _kind(value)


def _kind(value: object) -> str:
    """The kind of a value without its content (for secrets and containers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a YAML {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# Converters: value -> typed value, raising ValueError with the problem (not the key)
# --------------------------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_EXPECTED = 'expected a size like "25MB"'


def parse_size(value: object) -> int:
    """Convert a size to bytes.

    Accepts a whole number of bytes or a string such as ``"512KB"``, ``"25MB"``, ``"1.5 GB"``,
    ``"10B"`` or ``"64MiB"``: KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024,
    units are case-insensitive and may follow a space. Fractions of a byte are rounded down.
    Raises ValueError for negatives, booleans and anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_SIZE_EXPECTED}, got {_describe(value)}")
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{_SIZE_EXPECTED}, got {_describe(value)}")
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(
                f'unknown size unit "{match.group(2)}" in {_describe(value)}; '
                "use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            )
        number, multiplier = Decimal(match.group(1)), _SIZE_UNITS[unit]
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_SIZE_EXPECTED}, got {_describe(value)}")
    else:
        number, multiplier = Decimal(value), 1
    if number < 0:
        raise ValueError(f"a size cannot be negative, got {_describe(value)}")
    total = number * multiplier
    if multiplier == 1 and total != total.to_integral_value():
        raise ValueError(f"expected a whole number of bytes, got {_describe(value)}")
    return int(total)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)"
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART}\s*)+", re.IGNORECASE)
_DURATION_PART_RE = re.compile(_DURATION_PART, re.IGNORECASE)
_PLAIN_NUMBER_RE = re.compile(_NUMBER)
_DURATION_EXPECTED = 'expected a duration like "90s", "30m", "24h" or "7d"'


def parse_duration(value: object) -> float:
    """Convert a duration to seconds.

    Accepts a number of seconds or a string such as ``"500ms"``, ``"90s"``, ``"30m"``,
    ``"24h"``, ``"7d"`` or a combination like ``"1h30m"`` (units case-insensitive). Raises
    ValueError for negatives, booleans and anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_DURATION_EXPECTED}, got {_describe(value)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"a duration cannot be negative, got {_describe(value)}")
        if _PLAIN_NUMBER_RE.fullmatch(text):
            seconds = float(text)
        elif _DURATION_RE.fullmatch(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit.lower()]
                for number, unit in _DURATION_PART_RE.findall(text)
            )
        else:
            raise ValueError(f"{_DURATION_EXPECTED}, got {_describe(value)}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{_DURATION_EXPECTED}, got {_describe(value)}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_describe(value)}")
    return seconds


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be greater than 0, got {_describe(value)}")
    return size


BARE_BYTES_MINIMUM = 1024
"""A size limit written without a unit must be at least this many bytes."""


def _size_limit(value: object) -> int:
    """A file size limit: a bare number is bytes, but one below 1 KiB needs its unit written.

    ``max_size: 25`` is far more likely to mean 25 MB than 25 bytes (no real file is that
    small), so it is refused with the fix rather than silently refusing every file.
    """
    size = _positive_size(value)
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    has_unit = match is not None and bool(match.group(2))
    if not has_unit and size < BARE_BYTES_MINIMUM:
        raise ValueError(
            f'{_describe(value)} would be {size} bytes; write the unit: "{size}MB" for '
            f'megabytes, or "{size}B" if bytes are meant'
        )
    return size


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0 seconds, got {_describe(value)}")
    return seconds


def _lease(value: object) -> float:
    seconds = parse_duration(value)
    if not MIN_LEADER_LEASE <= seconds <= MAX_LEADER_LEASE:
        raise ValueError(f"must be between {MIN_LEADER_LEASE:g} s and {MAX_LEADER_LEASE:g} s, "
                         f"got {_describe(value)}")
    return seconds


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number like 40000000, got {_describe(value)}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {_describe(value)}")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _text(value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _secret(value: object) -> str | None:
    """A string secret; an empty one counts as unset. Never echoes the value."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)} (quote it in YAML)")
    return value or None


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[object], str]:
    if upper:
        expected = f"expected one of {', '.join(options)}"
    else:
        quoted = [f'"{option}"' for option in options]
        expected = f"expected {', '.join(quoted[:-1])} or {quoted[-1]}"

    def convert(value: object) -> str:
        if isinstance(value, str):
            normalised = value.strip().upper() if upper else value.strip().lower()
            if normalised in options:
                return normalised
        raise ValueError(f"{expected}, got {_describe(value)}")

    return convert


def _url(value: object) -> str:
    problem = f"expected an http:// or https:// URL, got {_describe(value)}"
    if not isinstance(value, str):
        raise ValueError(problem)
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(problem) from None
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(char.isspace() for char in text)
    ):
        raise ValueError(problem)
    return text.rstrip("/")


# server_name = hostname / IPv4 / "[" IPv6 "]", optional ":port" (Matrix spec, appendix).
_SERVER_NAME = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?"
_SERVER_NAME_RE = re.compile(_SERVER_NAME)
# Historical user id grammar: any printable ASCII but ":" in the localpart.
_USER_ID_RE = re.compile(rf"@[\x21-\x39\x3b-\x7e]+:{_SERVER_NAME}")


def _database_url(value: object) -> str:
    """A ``postgresql://user@host[:port]/database`` URL; never echoed (it may hold a password)."""
    problem = "expected a URL like postgresql://parcel@db:5432/parcel"
    if not isinstance(value, str):
        raise ValueError(f"{problem}, got {_kind(value)}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{problem}: the host or port cannot be read") from None
    if parts.scheme.lower() not in DATABASE_SCHEMES:
        scheme = parts.scheme or "no scheme"
        raise ValueError(f"{problem}: only PostgreSQL is supported here, got {scheme!r} "
                         "(leave database out for the embedded SQLite store)")
    if any(char.isspace() for char in text):
        raise ValueError(f"{problem}: it contains spaces")
    # A Unix socket may be given as ?host=/run/postgresql instead of a host name.
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"{problem}: the host is missing")
    if not parts.path.strip("/"):
        raise ValueError(f"{problem}: the database name is missing (…/parcel)")
    if "/" in parts.path.strip("/"):
        raise ValueError(f"{problem}: the path must be just the database name")
    return text


def check_database_url(value: str, key: str = "--to") -> str:
    """A PostgreSQL URL given outside the file (``migrate-store --to``), or ConfigError."""
    try:
        return _database_url(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _user_id(example: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if not (isinstance(value, str) and len(value) <= 255 and _USER_ID_RE.fullmatch(value)):
            raise ValueError(f'expected a Matrix user id like "{example}", got {_describe(value)}')
        return value

    return convert


def _server_name(value: object) -> str:
    if not (isinstance(value, str) and len(value) <= 255 and _SERVER_NAME_RE.fullmatch(value)):
        raise ValueError(f'expected a homeserver name like "example.org", got {_describe(value)}')
    return value


_MIME_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
_MIME_PATTERN_RE = re.compile(rf"{_MIME_TOKEN}/(?:{_MIME_TOKEN}|\*)|\*/\*")


def _mime_pattern(value: object) -> str:
    if isinstance(value, str) and _MIME_PATTERN_RE.fullmatch(value.lower()):
        return value.lower()
    raise ValueError(
        f'expected a MIME type pattern like "image/*" or "application/pdf", got {_describe(value)}'
    )


def _scanner_argument(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return value


def _reaction_key(value: object) -> str:
    text = _text(value)
    if any(char.isspace() for char in text):
        raise ValueError(f"expected a single emoji without spaces, got {_describe(value)}")
    return text


def _room_name_template(value: object) -> str:
    text = _text(value)
    help_text = "use {customer} and {session}"
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); {help_text}") from None
    for field in fields:
        if field not in ("customer", "session"):
            raise ValueError(f'unknown placeholder "{{{field}}}"; {help_text}')
    try:
        for session in (1, "1"):
            text.format(customer="Customer", session=session)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"not a valid template ({exc}); {help_text}") from None
    return text


_LISTEN_RE = re.compile(r"\[([^\[\]]+)\]:(\d+)|([A-Za-z0-9.-]+):(\d+)")
_LISTEN_EXPECTED = 'expected "host:port" like "127.0.0.1:9108" or "[::1]:9108"'


def _listen(value: object) -> tuple[str, int]:
    if not isinstance(value, str):
        raise ValueError(f"{_LISTEN_EXPECTED}, got {_describe(value)}")
    match = _LISTEN_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{_LISTEN_EXPECTED}, got {_describe(value)}")
    if match.group(1) is not None:
        host, port_text = match.group(1), match.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_LISTEN_EXPECTED}, got {_describe(value)}") from None
    else:
        host, port_text = match.group(3), match.group(4)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


# --------------------------------------------------------------------------------------------
# Reading sections
# --------------------------------------------------------------------------------------------


class _Section:
    """One mapping of the raw YAML with its dotted path; converters report under the key."""

    def __init__(self, data: Mapping[Any, Any], path: str) -> None:
        self.data = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, convert: Callable[[object], _T], default: _T) -> _T:
        """The converted value, or ``default`` when the key is absent or null."""
        value = self.data.get(name)
        if value is None:
            return default
        return _convert(self.key(name), value, convert)

    def required(self, name: str, convert: Callable[[object], _T]) -> _T:
        """The converted value; absent or null is an error."""
        value = self.data.get(name)
        if value is None:
            raise ConfigError(self.key(name), "missing required key")
        return _convert(self.key(name), value, convert)

    def items(
        self, name: str, convert: Callable[[object], _T], expected: str
    ) -> tuple[_T, ...] | None:
        """A list converted item by item (errors name ``key[i]``); None when absent or null."""
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected {expected}, got {_describe(value)}")
        return tuple(
            _convert(f"{self.key(name)}[{index}]", item, convert)
            for index, item in enumerate(value)
        )

    def section(self, name: str, schema: _Schema) -> _Section | None:
        """A nested mapping, or None when absent or null."""
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(
                self.key(name),
                f"expected a mapping with the keys {', '.join(schema)}, got {_describe(value)}",
            )
        return _Section(value, self.key(name))


def _convert(key: str, value: object, convert: Callable[[object], _T]) -> _T:
    try:
        return convert(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else _describe(key)


def _suggestion(name: str, schema: _Schema) -> str:
    """Advice for an unknown key, best first: the same name in another section, a close match
    in this section, a close match anywhere, or else the list of keys this section knows."""
    elsewhere = sorted(
        (path for path, _ in _walk_schema(_SCHEMA) if path.rsplit(".", 1)[-1] == name),
        key=lambda path: (path.count("."), path),
    )
    if elsewhere:
        return f" (did you mean '{elsewhere[0]}'?)"
    by_lower = {known.lower(): known for known in schema}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{by_lower[close[0]]}'?)"
    all_leaves = {path.rsplit(".", 1)[-1]: path for path in known_keys()}
    close = difflib.get_close_matches(name.lower(), list(all_leaves), n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{all_leaves[close[0]]}'?)"
    return f" (known keys here: {', '.join(schema)})"


def _check_keys(data: object, schema: _Schema, path: str) -> None:
    """Raise ConfigError for the first key that the schema does not know, depth first."""
    if not isinstance(data, Mapping):
        return  # wrong types are reported, with the expected shape, during conversion
    for raw_key, value in data.items():
        name = _key_text(raw_key)
        key = f"{path}.{name}" if path else name
        if not isinstance(raw_key, str) or raw_key not in schema:
            raise ConfigError(key, "unknown key" + _suggestion(name, schema))
        sub = schema[raw_key]
        if sub is not None:
            _check_keys(value, sub, key)


# --------------------------------------------------------------------------------------------
# Building the sections
# --------------------------------------------------------------------------------------------


def _empty(path: str) -> _Section:
    return _Section({}, path)


def _language(value: object) -> str:
    """A language code Parcel ships."""
    try:
        return i18n.check_language(value)
    except i18n.UnknownLanguage as exc:
        raise ValueError(str(exc)) from None


def _timezone(value: object) -> str:
    """An IANA time zone name."""
    i18n.check_timezone(value)
    assert isinstance(value, str)
    return value


def _wording(
    section: _Section, name: str, convert: Callable[[object], str], default: str,
    default_language: str,
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A string for every language, or a map by language code that has the default one."""
    value = section.data.get(name)
    if not isinstance(value, Mapping):
        return section.get(name, convert, default), ()
    key = section.key(name)
    by_language: dict[str, str] = {}
    for code, text in value.items():
        _convert(f"{key}.{_key_text(code)}", code, _language)
        by_language[code] = _convert(f"{key}.{code}", text, convert)
    if default_language not in by_language:
        raise ConfigError(key, f"the map has no entry for the default language "
                               f"'{default_language}' (language)")
    return by_language[default_language], tuple(sorted(by_language.items()))


def _agents(section: _Section, encryption: bool, user_id: str,
            language: str = "en") -> AgentsConfig:
    users = section.items("users", _user_id("@alice:example.org"), "a list of Matrix user ids")
    users = users or ()
    first_index: dict[str, int] = {}
    for index, user in enumerate(users):
        key = f"{section.key('users')}[{index}]"
        if user in first_index:
            raise ConfigError(
                key, f"duplicate of {section.key('users')}[{first_index[user]}] ({_describe(user)})"
            )
        if user == user_id:
            raise ConfigError(key, "is the bot's own user id (user_id); list the human agents")
        first_index[user] = index
    room_encryption = section.get("room_encryption", _boolean, encryption)
    if room_encryption and not encryption:
        raise ConfigError(
            section.key("room_encryption"),
            "cannot be true while encryption is false (the bot could not read encrypted rooms)",
        )
    return AgentsConfig(
        users=users,
        room_encryption=room_encryption,
        label=section.get("label", _text, AgentsConfig.label),
        language=section.get("language", _language, language),
    )


def _types(section: _Section, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    patterns = section.items(name, _mime_pattern, 'a list of MIME type patterns like ["image/*"]')
    if patterns is None:
        return default
    return tuple(dict.fromkeys(patterns))  # drop repeats, keep order


def _policy(section: _Section) -> PolicyConfig:
    base = DirectionPolicy(
        max_size=section.get("max_size", _size_limit, DEFAULT_MAX_SIZE),
        allowed_types=_types(section, "allowed_types", ()),
        blocked_types=_types(section, "blocked_types", ()),
        block_executables=section.get("block_executables", _boolean, True),
        card_numbers=section.get("card_numbers", _choice(CARD_NUMBER_MODES), "allow"),
        card_numbers_in_text=section.get("card_numbers_in_text", _choice(CARD_TEXT_MODES),
                                         "allow"),
        uninspectable=section.get("uninspectable", _choice(UNINSPECTABLE_MODES), "allow"),
    )

    def direction(name: str) -> DirectionPolicy:
        sub = section.section(name, _DIRECTION_SCHEMA) or _empty(section.key(name))
        return DirectionPolicy(
            max_size=sub.get("max_size", _size_limit, base.max_size),
            allowed_types=_types(sub, "allowed_types", base.allowed_types),
            blocked_types=_types(sub, "blocked_types", base.blocked_types),
            block_executables=sub.get("block_executables", _boolean, base.block_executables),
            card_numbers=sub.get("card_numbers", _choice(CARD_NUMBER_MODES), base.card_numbers),
            card_numbers_in_text=sub.get("card_numbers_in_text", _choice(CARD_TEXT_MODES),
                                         base.card_numbers_in_text),
            uninspectable=sub.get("uninspectable", _choice(UNINSPECTABLE_MODES),
                                  base.uninspectable),
        )

    example = '["clamdscan", "--no-summary", "{path}"]'
    command = section.items("scanner", _scanner_argument, f"a list of strings like {example}")
    timeout = section.get("scanner_timeout", _positive_duration, DEFAULT_SCANNER_TIMEOUT)
    on_failure = section.get("scanner_failure", _choice(SCANNER_FAILURE_MODES), "reject")
    scanner = None
    if command is not None:
        if not command or not command[0].strip():
            raise ConfigError(
                section.key("scanner"), f"expected a command like {example}, got an empty one"
            )
        if not any(PATH_PLACEHOLDER in argument for argument in command):
            raise ConfigError(
                section.key("scanner"),
                f'the command must contain the placeholder "{PATH_PLACEHOLDER}" in one of its '
                f"arguments, e.g. {example}",
            )
        scanner = ScannerConfig(command=command, timeout=timeout, on_failure=on_failure)
    return PolicyConfig(
        offer_ttl=section.get("offer_ttl", _positive_duration, DEFAULT_OFFER_TTL),
        customer_to_agent=direction("customer_to_agent"),
        agent_to_customer=direction("agent_to_customer"),
        scanner=scanner,
        max_image_pixels=section.get("max_image_pixels", _positive_int,
                                     DEFAULT_MAX_IMAGE_PIXELS),
        large_images=section.get("large_images", _choice(LARGE_IMAGE_MODES), "file"),
        strip_metadata=section.get("strip_metadata", _boolean, True),
        ocr_timeout=section.get("ocr_timeout", _positive_duration, DEFAULT_OCR_TIMEOUT),
    )


def _reactions(section: _Section) -> ReactionsConfig:
    accept = section.get("accept", _reaction_key, ReactionsConfig.accept)
    decline = section.get("decline", _reaction_key, ReactionsConfig.decline)
    if accept.replace(_VARIATION_SELECTOR_16, "") == decline.replace(_VARIATION_SELECTOR_16, ""):
        raise ConfigError(
            section.key("decline"),
            f"must differ from {section.key('accept')} (both are {_describe(accept)})",
        )
    return ReactionsConfig(accept=accept, decline=decline)


def _display_name(value: object) -> str:
    text = _text(value)
    if len(text) > 64:
        raise ValueError(f"must be at most 64 characters, got {len(text)}")
    return text


def _avatar(value: object, base_dir: Path) -> Path:
    path = Path(os.path.normpath(os.path.abspath(base_dir / Path(_text(value)).expanduser())))
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ValueError(f"cannot read {_describe(str(path))}: {exc}") from None
    if not is_file:
        raise ValueError(f"no image file at {_describe(str(path))}")
    return path


def _data_dir(value: object, base_dir: Path) -> Path:
    path = Path(_text(value)).expanduser()
    return Path(os.path.normpath(os.path.abspath(base_dir / path)))


def _credentials(
    top: _Section, env: Mapping[str, str], required: bool = True
) -> tuple[str | None, str | None]:
    password = top.get("password", _secret, None)
    access_token = top.get("access_token", _secret, None)
    password = env.get(ENV_PASSWORD) or password
    access_token = env.get(ENV_ACCESS_TOKEN) or access_token
    if required and password is None and access_token is None:
        raise ConfigError(
            "password",
            f"missing: set password or access_token (or the {ENV_PASSWORD} / "
            f"{ENV_ACCESS_TOKEN} environment variable)",
        )
    return password, access_token


def _encryption_key(top: _Section, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The configured encryption key and its source (the environment wins), or (None, None)."""
    from_file = top.get("encryption_key", _secret, None)
    key, source = (env.get(ENV_ENCRYPTION_KEY), ENV_ENCRYPTION_KEY)
    if not key:
        key, source = from_file, "encryption_key"
    if key is None:
        return None, None
    if len(key.strip()) < MIN_ENCRYPTION_KEY_LENGTH:
        raise ConfigError(
            source,
            f"too short ({len(key.strip())} characters): use at least "
            f"{MIN_ENCRYPTION_KEY_LENGTH}, e.g. the output of `openssl rand -base64 32`",
        )
    return key, source


def parse(
    raw: object, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate already-loaded YAML data and build the :class:`Config`.

    ``env`` (default ``os.environ``) supplies ``PARCEL_PASSWORD`` / ``PARCEL_ACCESS_TOKEN`` /
    ``PARCEL_ENCRYPTION_KEY``, which override the file when set and non-empty. A relative
    ``data_dir`` is resolved against ``base_dir`` (default: the current directory). Raises
    :class:`ConfigError` on any problem.
    """
    return _parse(raw, os.environ if env is None else env, base_dir, _TOP_LEVEL)


def _parse(
    raw: object, env: Mapping[str, str], base_dir: Path | None, top_key: str,
    require_credentials: bool = True,
) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(top_key, f"expected a mapping of settings, got {_describe(raw)}")
    _check_keys(raw, _SCHEMA, "")
    top = _Section(raw, "")

    def section(name: str) -> _Section:
        sub = _SCHEMA[name]
        assert sub is not None
        return top.section(name, sub) or _empty(name)

    homeserver = top.required("homeserver", _url)
    user_id = top.required("user_id", _user_id("@parcel:example.org"))
    password, access_token = _credentials(top, env, require_credentials)
    encryption_key, encryption_key_source = _encryption_key(top, env)
    encryption = top.get("encryption", _boolean, True)
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path.cwd()))

    metrics_schema = _SCHEMA["metrics"]
    assert metrics_schema is not None
    metrics_section = top.section("metrics", metrics_schema)
    metrics = None
    listen = metrics_section.get("listen", _listen, None) if metrics_section else None
    if metrics_section is not None and listen is not None:  # absent or null: no endpoint
        host, port = listen
        token = metrics_section.get("token", _secret, None)
        if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
            raise ConfigError(
                metrics_section.key("token"),
                "expected at least 16 characters without spaces, e.g. the output of "
                "`openssl rand -hex 16`",
            )
        metrics = MetricsConfig(listen_host=host, listen_port=port, token=token)

    media = section("media")
    logging_section = section("logging")
    messages = section("messages")
    retention = section("retention")
    retry = section("retry")
    profile = section("profile")
    language = top.get("language", _language, "en")
    languages = tuple(dict.fromkeys(
        top.items("languages", _language, 'a list of language codes like ["de", "en"]')
        or i18n.SHIPPED
    ))
    if language not in languages:
        raise ConfigError("languages", f"must include the default language '{language}' "
                                       "(language)")
    welcome, welcome_by_language = _wording(messages, "welcome", _text,
                                            MessagesConfig.welcome, language)
    room_name, room_name_by_language = _wording(messages, "agent_room_name",
                                                _room_name_template,
                                                MessagesConfig.agent_room_name, language)
    config = Config(
        homeserver=homeserver,
        user_id=user_id,
        password=password,
        access_token=access_token,
        device_name=top.get("device_name", _text, DEFAULT_DEVICE_NAME),
        data_dir=top.get(
            "data_dir", lambda value: _data_dir(value, base), _data_dir(DEFAULT_DATA_DIR, base)
        ),
        encryption=encryption,
        agents=_agents(section("agents"), encryption, user_id, language),
        policy=_policy(section("policy")),
        reactions=_reactions(section("reactions")),
        messages=MessagesConfig(
            welcome=welcome,
            agent_room_name=room_name,
            welcome_by_language=welcome_by_language,
            agent_room_name_by_language=room_name_by_language,
        ),
        media=MediaConfig(
            transfer_timeout=media.get(
                "transfer_timeout", _positive_duration, DEFAULT_TRANSFER_TIMEOUT
            ),
            purge_refused=media.get("purge_refused", _boolean, False),
            prestage=media.get("prestage", _boolean, True),
            follow_download_from=media.get("follow_download_from", _positive_size,
                                           DEFAULT_FOLLOW_DOWNLOAD_FROM),
        ),
        logging=LoggingConfig(
            level=logging_section.get("level", _choice(LOG_LEVELS, upper=True), "INFO"),
            format=logging_section.get("format", _choice(LOG_FORMATS), "text"),
        ),
        metrics=metrics,
        retention=RetentionConfig(
            purge_after=retention.get("purge_after", _positive_duration, None),
            redact_delivered_on_close=retention.get("redact_delivered_on_close", _boolean, False),
            leave_closed_rooms=retention.get("leave_closed_rooms", _boolean, True),
        ),
        retry=RetryConfig(
            max_backoff=retry.get("max_backoff", _positive_duration, RetryConfig.max_backoff),
            undecryptable_for=retry.get(
                "undecryptable_for", _positive_duration, RetryConfig.undecryptable_for
            ),
        ),
        allowed_servers=tuple(
            dict.fromkeys(
                top.items("allowed_servers", _server_name, 'a list of names like ["example.org"]')
                or ()
            )
        ),
        encryption_key=encryption_key,
        encryption_key_source=encryption_key_source,
        notify_agents_of_refusals=top.get("notify_agents_of_refusals", _boolean, True),
        profile=ProfileConfig(
            display_name=profile.get("display_name", _display_name, None),
            avatar=profile.get("avatar", lambda value: _avatar(value, base), None),
        ),
        database=top.get("database", _database_url, None),
        database_password=env.get(ENV_DATABASE_PASSWORD) or None,
        leader_lease=top.get("leader_lease", _lease, DEFAULT_LEADER_LEASE),
        language=language,
        languages=languages,
        timezone=top.get("timezone", _timezone, "UTC"),
    )
    if config.database is not None and config.encryption_key is None and require_credentials:
        # A key generated into data_dir would be lost with the container and unknown to the
        # other instances, and the database alone must never open the keys it holds.
        raise ConfigError(
            "encryption_key",
            f"with database on PostgreSQL the encryption key must be given: set "
            f"{ENV_ENCRYPTION_KEY} (or encryption_key), the same for every instance",
        )
    return config


# --------------------------------------------------------------------------------------------
# Loading the file
# --------------------------------------------------------------------------------------------


def _check_duplicate_keys(root: yaml.Node | None) -> None:
    """Refuse a key given twice in one mapping (PyYAML would silently keep the last one)."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                child = path
                if isinstance(key_node, yaml.ScalarNode):
                    child = f"{path}.{key_node.value}" if path else str(key_node.value)
                    identity = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if identity in first_line:
                        raise ConfigError(
                            child,
                            f"duplicate key on line {line} (first set on line "
                            f"{first_line[identity]})",
                        )
                    first_line[identity] = line
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{context}, {problem}"
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def load(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    require_credentials: bool = True,
) -> Config:
    """Read, validate and return the configuration in the YAML file at ``path``.

    ``env`` defaults to ``os.environ``. A relative ``data_dir`` is resolved against the file's
    directory. ``require_credentials=False`` is for commands that never log in (``parcel-bot
    log`` reads only the store), so they work without the password. Raises
    :class:`ConfigError`; problems that are not about one key (missing file, YAML syntax)
    carry the file path as their key.
    """
    file_key = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file_key, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file_key, "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(file_key, "permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(file_key, "not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file_key, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        _check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file_key, _yaml_problem(exc)) from None
    except RecursionError:
        raise ConfigError(file_key, "invalid YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError(file_key, "expected a mapping of settings, but the file is empty")
    base_dir = Path(os.path.abspath(path)).parent
    return _parse(raw, os.environ if env is None else env, base_dir, file_key,
                  require_credentials)


def redacted_summary(config: Config) -> dict[str, Any]:
    """The configuration as plain data (for logs), with every secret masked."""
    data = _plain(dataclasses.asdict(config))
    assert isinstance(data, dict)
    data["password"] = "***" if config.password is not None else None
    data["access_token"] = "***" if config.access_token is not None else None
    data["encryption_key"] = "***" if config.encryption_key is not None else None
    if config.metrics is not None and config.metrics.token is not None:
        data["metrics"]["token"] = "***"
    return data


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
