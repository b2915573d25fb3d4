"""Configuration loading: parsing, defaults, overrides and every validation message."""

from __future__ import annotations

import copy
import json
import pickle
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import (
    AgentsConfig,
    Config,
    ConfigError,
    DirectionPolicy,
    LoggingConfig,
    MediaConfig,
    MessagesConfig,
    MetricsConfig,
    PolicyConfig,
    ProfileConfig,
    ReactionsConfig,
    RetentionConfig,
    ScannerConfig,
    known_keys,
    load,
    parse,
    parse_duration,
    parse_size,
    redacted_summary,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config.example.yaml"
BASE_DIR = Path("/srv/parcel")

MINIMAL: dict[str, Any] = {
    "homeserver": "http://127.0.0.1:8008",
    "user_id": "@parcel:example.org",
    "password": "pw",
}

DEFAULT_DIRECTION = DirectionPolicy(
    max_size=25_000_000, allowed_types=(), blocked_types=(), block_executables=True
)

DEFAULTS = Config(
    homeserver="http://127.0.0.1:8008",
    user_id="@parcel:example.org",
    password="pw",
    access_token=None,
    device_name="parcel",
    data_dir=BASE_DIR / "data",
    encryption=True,
    agents=AgentsConfig(users=(), room_encryption=True, label="support"),
    policy=PolicyConfig(
        offer_ttl=86400.0,
        customer_to_agent=DEFAULT_DIRECTION,
        agent_to_customer=DEFAULT_DIRECTION,
        scanner=None,
    ),
    reactions=ReactionsConfig(accept="\u2705", decline="\u274c"),
    messages=MessagesConfig(),
    media=MediaConfig(transfer_timeout=300.0, purge_refused=False),
    logging=LoggingConfig(level="INFO", format="text"),
    metrics=None,
    retention=RetentionConfig(purge_after=None, redact_delivered_on_close=False),
    allowed_servers=(),
)

FULL_YAML = """\
homeserver: https://matrix.example.org/
user_id: "@parcel:example.org"
password: file-password
access_token: file-token
device_name: parcel-prod
data_dir: state
encryption: true
allowed_servers: [example.org, "partner.example:8448"]
agents:
  users: ["@alice:example.org", "@bob:partner.example:8448"]
  room_encryption: false
  label: helpdesk
policy:
  max_size: 10MB
  offer_ttl: 2h
  allowed_types: ["image/*", "Application/PDF"]
  blocked_types: ["image/svg+xml"]
  block_executables: true
  scanner: ["clamdscan", "--no-summary", "--fdpass", "{path}"]
  scanner_timeout: 90s
  scanner_failure: allow
  card_numbers: redact
  card_numbers_in_text: mask
  ocr_timeout: 45s
  customer_to_agent:
    max_size: 1GiB
    uninspectable: refuse
  agent_to_customer:
    allowed_types: []
    blocked_types: ["video/*"]
    block_executables: false
    card_numbers: refuse
    card_numbers_in_text: allow
reactions:
  accept: "👍"
  decline: "👎"
messages:
  welcome: Hi there.
  agent_room_name: "{customer} / {session}"
media:
  transfer_timeout: 10m
  purge_refused: true
logging:
  level: debug
  format: JSON
metrics:
  listen: "[::1]:9200"
retention:
  purge_after: 30d
  redact_delivered_on_close: true
"""


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def config_from(overlay_yaml: str = "", env: dict[str, str] | None = None) -> Config:
    """Parse MINIMAL with the YAML overlay deep-merged into it."""
    overlay = yaml.safe_load(overlay_yaml) or {}
    raw = _merge(copy.deepcopy(MINIMAL), overlay)
    return parse(raw, env={} if env is None else env, base_dir=BASE_DIR)


def error_from(overlay_yaml: str, env: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError that parsing MINIMAL plus the overlay raises."""
    with pytest.raises(ConfigError) as info:
        config_from(overlay_yaml, env)
    return info.value


# ---------------------------------------------------------------------------------------------
# Valid configurations
# ---------------------------------------------------------------------------------------------


def test_full_config_parses_to_expected_values(tmp_path: Path) -> None:
    """Every key set to a non-default value lands in the typed sections, converted."""
    path = tmp_path / "config.yaml"
    path.write_text(FULL_YAML, encoding="utf-8")
    config = load(path, env={})
    assert config == Config(
        homeserver="https://matrix.example.org",
        user_id="@parcel:example.org",
        password="file-password",
        access_token="file-token",
        device_name="parcel-prod",
        data_dir=tmp_path / "state",
        encryption=True,
        agents=AgentsConfig(
            users=("@alice:example.org", "@bob:partner.example:8448"),
            room_encryption=False,
            label="helpdesk",
        ),
        policy=PolicyConfig(
            offer_ttl=7200.0,
            customer_to_agent=DirectionPolicy(
                max_size=1024**3,
                allowed_types=("image/*", "application/pdf"),
                blocked_types=("image/svg+xml",),
                block_executables=True,
                card_numbers="redact",
                card_numbers_in_text="mask",
                uninspectable="refuse",
            ),
            agent_to_customer=DirectionPolicy(
                max_size=10_000_000,
                allowed_types=(),
                blocked_types=("video/*",),
                block_executables=False,
                card_numbers="refuse",
                card_numbers_in_text="allow",
            ),
            scanner=ScannerConfig(
                command=("clamdscan", "--no-summary", "--fdpass", "{path}"),
                timeout=90.0,
                on_failure="allow",
            ),
            ocr_timeout=45.0,
        ),
        reactions=ReactionsConfig(accept="👍", decline="👎"),
        messages=MessagesConfig(welcome="Hi there.", agent_room_name="{customer} / {session}"),
        media=MediaConfig(transfer_timeout=600.0, purge_refused=True),
        logging=LoggingConfig(level="DEBUG", format="json"),
        metrics=MetricsConfig(listen_host="::1", listen_port=9200),
        retention=RetentionConfig(purge_after=30 * 86400.0, redact_delivered_on_close=True),
        allowed_servers=("example.org", "partner.example:8448"),
    )


def test_minimal_config_takes_every_default() -> None:
    """Only the required keys given: every other field has its documented default."""
    assert config_from() == DEFAULTS


def test_null_sections_and_keys_take_defaults() -> None:
    """A section or key written as null (e.g. everything under it commented out) is unset."""
    overlay = """
    agents: null
    policy: {max_size: null, customer_to_agent: null}
    reactions: null
    messages: null
    media: null
    logging: {level: null}
    metrics: null
    retention: {purge_after: null}
    device_name: null
    data_dir: null
    """
    assert config_from(overlay) == DEFAULTS


def test_config_is_frozen() -> None:
    """Sections cannot be changed after loading."""
    config = config_from()
    with pytest.raises(AttributeError):
        config.policy.customer_to_agent.max_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overlay", "customer_to_agent", "agent_to_customer"),
    [
        pytest.param(
            "policy: {max_size: 5MB, allowed_types: [image/*]}",
            DirectionPolicy(5_000_000, ("image/*",), (), True),
            DirectionPolicy(5_000_000, ("image/*",), (), True),
            id="top-level-applies-to-both",
        ),
        pytest.param(
            "policy: {max_size: 5MB, customer_to_agent: {max_size: 50MB}}",
            DirectionPolicy(50_000_000, (), (), True),
            DirectionPolicy(5_000_000, (), (), True),
            id="one-key-overridden-one-direction",
        ),
        pytest.param(
            "policy: {allowed_types: [image/*], agent_to_customer: {allowed_types: []}}",
            DirectionPolicy(25_000_000, ("image/*",), (), True),
            DirectionPolicy(25_000_000, (), (), True),
            id="empty-list-overrides-not-inherits",
        ),
        pytest.param(
            "policy: {blocked_types: [a/b], customer_to_agent: {blocked_types: [c/d]}}",
            DirectionPolicy(25_000_000, (), ("c/d",), True),
            DirectionPolicy(25_000_000, (), ("a/b",), True),
            id="lists-replace-not-append",
        ),
        pytest.param(
            "policy: {block_executables: false, agent_to_customer: {block_executables: true}}",
            DirectionPolicy(25_000_000, (), (), False),
            DirectionPolicy(25_000_000, (), (), True),
            id="boolean-override",
        ),
        pytest.param(
            "policy: {max_size: 1024, customer_to_agent: {max_size: 25B}}",
            DirectionPolicy(25, (), (), True),
            DirectionPolicy(1024, (), (), True),
            id="bare-bytes-from-1KiB-and-tiny-sizes-with-their-unit",
        ),
        pytest.param(
            "policy: {max_size: 5MB, customer_to_agent: {max_size: null}}",
            DirectionPolicy(5_000_000, (), (), True),
            DirectionPolicy(5_000_000, (), (), True),
            id="null-inherits",
        ),
        pytest.param(
            "policy: {card_numbers: redact, card_numbers_in_text: mask, uninspectable: refuse,"
            " agent_to_customer: {card_numbers: allow, card_numbers_in_text: refuse}}",
            DirectionPolicy(25_000_000, (), (), True, card_numbers="redact",
                            card_numbers_in_text="mask", uninspectable="refuse"),
            DirectionPolicy(25_000_000, (), (), True, card_numbers="allow",
                            card_numbers_in_text="refuse", uninspectable="refuse"),
            id="card-numbers-inherited-and-overridden",
        ),
        pytest.param(
            "policy: {customer_to_agent: {card_numbers: REFUSE}}",
            DirectionPolicy(25_000_000, (), (), True, card_numbers="refuse"),
            DirectionPolicy(25_000_000, (), (), True),
            id="card-numbers-one-direction-only",
        ),
        pytest.param(
            "policy: {allowed_types: [image/png, IMAGE/PNG, image/*]}",
            DirectionPolicy(25_000_000, ("image/png", "image/*"), (), True),
            DirectionPolicy(25_000_000, ("image/png", "image/*"), (), True),
            id="types-lowercased-and-deduplicated",
        ),
    ],
)
def test_direction_overrides_merge_with_policy_values(
    overlay: str, customer_to_agent: DirectionPolicy, agent_to_customer: DirectionPolicy
) -> None:
    """Per-direction keys override the policy-wide value for that direction only."""
    policy = config_from(overlay).policy
    assert policy.customer_to_agent == customer_to_agent
    assert policy.agent_to_customer == agent_to_customer


@pytest.mark.parametrize(
    ("overlay", "env", "password", "access_token"),
    [
        ("", {}, "pw", None),
        ("", {"PARCEL_PASSWORD": "from-env"}, "from-env", None),
        ("", {"PARCEL_PASSWORD": ""}, "pw", None),
        ("", {"PARCEL_ACCESS_TOKEN": "tok"}, "pw", "tok"),
        ("{password: null, access_token: file-tok}", {}, None, "file-tok"),
        ("{password: null, access_token: file-tok}", {"PARCEL_ACCESS_TOKEN": "e"}, None, "e"),
        ("{password: null}", {"PARCEL_PASSWORD": "from-env"}, "from-env", None),
        ("{password: ''}", {"PARCEL_ACCESS_TOKEN": "tok"}, None, "tok"),
    ],
)
def test_environment_overrides_secrets(
    overlay: str, env: dict[str, str], password: str | None, access_token: str | None
) -> None:
    """PARCEL_PASSWORD / PARCEL_ACCESS_TOKEN win over the file when set and non-empty."""
    config = config_from(overlay, env)
    assert (config.password, config.access_token) == (password, access_token)


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping, the process environment is used."""
    monkeypatch.setenv("PARCEL_PASSWORD", "process-env")
    assert parse(dict(MINIMAL)).password == "process-env"


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("", BASE_DIR / "data"),
        ("data_dir: store", BASE_DIR / "store"),
        ("data_dir: ../elsewhere/./x", Path("/srv/elsewhere/x")),
        ("data_dir: /var/lib/parcel/", Path("/var/lib/parcel")),
    ],
)
def test_data_dir_is_absolute(overlay: str, expected: Path) -> None:
    """A relative data_dir is resolved against the base directory and normalised."""
    assert config_from(overlay).data_dir == expected


def test_load_resolves_data_dir_against_the_config_file(tmp_path: Path) -> None:
    """load() resolves a relative data_dir against the config file's directory, not the cwd."""
    path = tmp_path / "etc" / "parcel.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(dict(MINIMAL, data_dir="data")), encoding="utf-8")
    assert load(path, env={}).data_dir == tmp_path / "etc" / "data"


@pytest.mark.parametrize(
    ("overlay", "field", "expected"),
    [
        (
            "homeserver: 'https://hs.example.org/matrix/'",
            "homeserver",
            "https://hs.example.org/matrix",
        ),
        ("logging: {level: warning}", "logging.level", "WARNING"),
        ("logging: {format: Json}", "logging.format", "json"),
        (
            "policy: {scanner_failure: ALLOW, scanner: [s, '{path}']}",
            "policy.scanner.on_failure",
            "allow",
        ),
        ("encryption: false", "agents.room_encryption", False),
        ("encryption: false", "encryption", False),
        ("agents: {room_encryption: false}", "agents.room_encryption", False),
        ("metrics: {listen: '0.0.0.0:9108'}", "metrics", MetricsConfig("0.0.0.0", 9108)),
        ("metrics: {listen: 'localhost:1'}", "metrics", MetricsConfig("localhost", 1)),
        ("metrics: {}", "metrics", None),
        ("metrics: {listen: null}", "metrics", None),
        ("notify_agents_of_refusals: false", "notify_agents_of_refusals", False),
        ("profile: {display_name: Acme Support}", "profile",
         ProfileConfig(display_name="Acme Support")),
        ("reactions: {accept: '✔️', decline: '✖️'}", "reactions.decline", "✖️"),
        ("allowed_servers: [a.org, a.org, b.org]", "allowed_servers", ("a.org", "b.org")),
        ("policy: {offer_ttl: 1h30m}", "policy.offer_ttl", 5400.0),
        ("policy: {}", "policy.max_image_pixels", 40_000_000),
        ("policy: {max_image_pixels: 1000}", "policy.max_image_pixels", 1000),
        ("policy: {}", "policy.large_images", "file"),
        ("policy: {large_images: REJECT}", "policy.large_images", "reject"),
        (
            "messages: {agent_room_name: 'Session {session}'}",
            "messages.agent_room_name",
            "Session {session}",
        ),
    ],
)
def test_values_are_normalised(overlay: str, field: str, expected: object) -> None:
    """Values are normalised on load: URL slash, upper-case level, derived defaults."""
    value: Any = config_from(overlay)
    for part in field.split("."):
        value = getattr(value, part)
    assert value == expected


# ---------------------------------------------------------------------------------------------
# Validation errors
# ---------------------------------------------------------------------------------------------

SCANNER_EXAMPLE = '["clamdscan", "--no-summary", "{path}"]'
SIZE_UNITS = "use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
DURATION = 'expected a duration like "90s", "30m", "24h" or "7d"'
TEMPLATE_HELP = "use {customer} and {session}"
LISTEN = 'expected "host:port" like "127.0.0.1:9108" or "[::1]:9108"'
MIME = 'expected a MIME type pattern like "image/*" or "application/pdf"'

VALIDATION_CASES = [
    # connection
    ("homeserver: null", "homeserver: missing required key"),
    ("homeserver: ftp://x", 'homeserver: expected an http:// or https:// URL, got "ftp://x"'),
    ("homeserver: 8008", "homeserver: expected an http:// or https:// URL, got 8008"),
    ("homeserver: 'https://'", 'homeserver: expected an http:// or https:// URL, got "https://"'),
    (
        "homeserver: 'http://[::1'",
        'homeserver: expected an http:// or https:// URL, got "http://[::1"',
    ),
    (
        "homeserver: 'http://h:99999'",
        'homeserver: expected an http:// or https:// URL, got "http://h:99999"',
    ),
    ("user_id: null", "user_id: missing required key"),
    (
        "user_id: parcel",
        'user_id: expected a Matrix user id like "@parcel:example.org", got "parcel"',
    ),
    (
        "user_id: '@parcel'",
        'user_id: expected a Matrix user id like "@parcel:example.org", got "@parcel"',
    ),
    ("password: 1234", "password: expected a string, got a number (quote it in YAML)"),
    ("access_token: [a]", "access_token: expected a string, got a list (quote it in YAML)"),
    (
        "password: null",
        "password: missing: set password or access_token "
        "(or the PARCEL_PASSWORD / PARCEL_ACCESS_TOKEN environment variable)",
    ),
    ("device_name: ''", "device_name: must not be empty"),
    ("device_name: 7", "device_name: expected a string, got 7"),
    ("data_dir: []", "data_dir: expected a string, got a list"),
    ("encryption: maybe", 'encryption: expected true or false, got "maybe"'),
    ("encryption: 1", "encryption: expected true or false, got 1"),
    (
        "allowed_servers: example.org",
        'allowed_servers: expected a list of names like ["example.org"], got "example.org"',
    ),
    (
        "allowed_servers: ['@a:b']",
        'allowed_servers[0]: expected a homeserver name like "example.org", got "@a:b"',
    ),
    # agents
    (
        "agents: ['@a:b']",
        "agents: expected a mapping with the keys users, room_encryption, label, got a list",
    ),
    ("agents: {users: '@a:b'}", 'agents.users: expected a list of Matrix user ids, got "@a:b"'),
    (
        "agents: {users: ['@a:example.org', alice]}",
        'agents.users[1]: expected a Matrix user id like "@alice:example.org", got "alice"',
    ),
    (
        "agents: {users: [{a: 1}]}",
        'agents.users[0]: expected a Matrix user id like "@alice:example.org", got a mapping',
    ),
    (
        "agents: {users: ['@alice:example.org', '@b:example.org', '@alice:example.org']}",
        'agents.users[2]: duplicate of agents.users[0] ("@alice:example.org")',
    ),
    (
        "agents: {users: ['@parcel:example.org']}",
        "agents.users[0]: is the bot's own user id (user_id); list the human agents",
    ),
    ("agents: {label: 5}", "agents.label: expected a string, got 5"),
    (
        "agents: {room_encryption: sure}",
        'agents.room_encryption: expected true or false, got "sure"',
    ),
    (
        "{encryption: false, agents: {room_encryption: true}}",
        "agents.room_encryption: cannot be true while encryption is false "
        "(the bot could not read encrypted rooms)",
    ),
    # policy
    (
        "policy: [max_size]",
        "policy: expected a mapping with the keys max_size, offer_ttl, allowed_types, "
        "blocked_types, block_executables, scanner, scanner_timeout, scanner_failure, "
        "max_image_pixels, large_images, strip_metadata, card_numbers, card_numbers_in_text, "
        "uninspectable, ocr_timeout, customer_to_agent, agent_to_customer, got a list",
    ),
    ("policy: {max_size: lots}", 'policy.max_size: expected a size like "25MB", got "lots"'),
    ("policy: {max_size: 0}", "policy.max_size: must be greater than 0, got 0"),
    ("policy: {max_size: 25}",
     'policy.max_size: 25 would be 25 bytes; write the unit: "25MB" for megabytes, or "25B" '
     "if bytes are meant"),
    ("policy: {max_size: '1023'}",
     'policy.max_size: "1023" would be 1023 bytes; write the unit: "1023MB" for megabytes, or '
     '"1023B" if bytes are meant'),
    ("policy: {agent_to_customer: {max_size: 10}}",
     'policy.agent_to_customer.max_size: 10 would be 10 bytes; write the unit: "10MB" for '
     'megabytes, or "10B" if bytes are meant'),
    ("policy: {max_size: -1MB}", 'policy.max_size: a size cannot be negative, got "-1MB"'),
    ("policy: {max_size: yes}", 'policy.max_size: expected a size like "25MB", got true'),
    (
        "policy: {max_size: 10 parsecs}",
        f'policy.max_size: unknown size unit "parsecs" in "10 parsecs"; {SIZE_UNITS}',
    ),
    (
        "policy: {customer_to_agent: {max_size: 0MB}}",
        'policy.customer_to_agent.max_size: must be greater than 0, got "0MB"',
    ),
    (
        "policy: {agent_to_customer: big}",
        "policy.agent_to_customer: expected a mapping with the keys max_size, allowed_types, "
        "blocked_types, block_executables, card_numbers, card_numbers_in_text, uninspectable, "
        'got "big"',
    ),
    ("policy: {offer_ttl: soon}", f'policy.offer_ttl: {DURATION}, got "soon"'),
    ("policy: {max_image_pixels: 0}", "policy.max_image_pixels: must be greater than 0, got 0"),
    (
        "policy: {max_image_pixels: 40MP}",
        'policy.max_image_pixels: expected a whole number like 40000000, got "40MP"',
    ),
    (
        "policy: {max_image_pixels: true}",
        "policy.max_image_pixels: expected a whole number like 40000000, got true",
    ),
    ("policy: {card_numbers: mask}",
     'policy.card_numbers: expected "allow", "redact" or "refuse", got "mask"'),
    ("policy: {customer_to_agent: {card_numbers_in_text: redact}}",
     'policy.customer_to_agent.card_numbers_in_text: expected "allow", "mask" or "refuse", '
     'got "redact"'),
    ("policy: {agent_to_customer: {uninspectable: maybe}}",
     'policy.agent_to_customer.uninspectable: expected "allow" or "refuse", got "maybe"'),
    ("policy: {card_numbers: true}",
     'policy.card_numbers: expected "allow", "redact" or "refuse", got true'),
    ("policy: {ocr_timeout: 0}", "policy.ocr_timeout: must be longer than 0 seconds, got 0"),
    ("policy: {ocr_timeout: soon}", f'policy.ocr_timeout: {DURATION}, got "soon"'),
    ("policy: {large_images: inline}",
     'policy.large_images: expected "file" or "reject", got "inline"'),
    ("policy: {offer_ttl: 0}", "policy.offer_ttl: must be longer than 0 seconds, got 0"),
    ("policy: {offer_ttl: -5m}", 'policy.offer_ttl: a duration cannot be negative, got "-5m"'),
    (
        "policy: {allowed_types: image/*}",
        "policy.allowed_types: expected a list of MIME type patterns like "
        '["image/*"], got "image/*"',
    ),
    ("policy: {blocked_types: [pdf]}", f'policy.blocked_types[0]: {MIME}, got "pdf"'),
    (
        "policy: {agent_to_customer: {allowed_types: [image/png, '*/png']}}",
        f'policy.agent_to_customer.allowed_types[1]: {MIME}, got "*/png"',
    ),
    (
        "policy: {customer_to_agent: {blocked_types: [image/ png]}}",
        f'policy.customer_to_agent.blocked_types[0]: {MIME}, got "image/ png"',
    ),
    (
        "policy: {block_executables: nope}",
        'policy.block_executables: expected true or false, got "nope"',
    ),
    (
        "policy: {scanner: 'clamdscan {path}'}",
        f"policy.scanner: expected a list of strings like {SCANNER_EXAMPLE}, "
        'got "clamdscan {path}"',
    ),
    (
        "policy: {scanner: []}",
        f"policy.scanner: expected a command like {SCANNER_EXAMPLE}, got an empty one",
    ),
    (
        "policy: {scanner: [clamdscan]}",
        'policy.scanner: the command must contain the placeholder "{path}" in one of its '
        f"arguments, e.g. {SCANNER_EXAMPLE}",
    ),
    ("policy: {scanner: [clamdscan, 5]}", "policy.scanner[1]: expected a string, got 5"),
    (
        "policy: {scanner_timeout: -5s}",
        'policy.scanner_timeout: a duration cannot be negative, got "-5s"',
    ),
    (
        "policy: {scanner_failure: maybe}",
        'policy.scanner_failure: expected "reject" or "allow", got "maybe"',
    ),
    # wording
    ("reactions: {accept: ''}", "reactions.accept: must not be empty"),
    (
        "reactions: {accept: ok go}",
        'reactions.accept: expected a single emoji without spaces, got "ok go"',
    ),
    (
        'reactions: {decline: "\u2705\ufe0f"}',
        'reactions.decline: must differ from reactions.accept (both are "✅")',
    ),
    (
        "reactions: {accept: '❌'}",
        'reactions.decline: must differ from reactions.accept (both are "❌")',
    ),
    ("messages: {welcome: 3}", "messages.welcome: expected a string, got 3"),
    ("messages: {welcome: '  '}", "messages.welcome: must not be empty"),
    (
        "messages: {agent_room_name: '{name}'}",
        f'messages.agent_room_name: unknown placeholder "{{name}}"; {TEMPLATE_HELP}',
    ),
    (
        "messages: {agent_room_name: 'Room {}'}",
        f'messages.agent_room_name: unknown placeholder "{{}}"; {TEMPLATE_HELP}',
    ),
    (
        "messages: {agent_room_name: '{customer.name}'}",
        f'messages.agent_room_name: unknown placeholder "{{customer.name}}"; {TEMPLATE_HELP}',
    ),
    (
        "messages: {agent_room_name: 'Chat {'}",
        "messages.agent_room_name: not a valid template (Single '{' encountered in format string); "
        + TEMPLATE_HELP,
    ),
    (
        "messages: {agent_room_name: '{session:04d}'}",
        "messages.agent_room_name: not a valid template (Unknown format code 'd' for object of "
        f"type 'str'); {TEMPLATE_HELP}",
    ),
    # operations
    ("media: {transfer_timeout: forever}", f'media.transfer_timeout: {DURATION}, got "forever"'),
    (
        "media: {purge_refused: yes please}",
        'media.purge_refused: expected true or false, got "yes please"',
    ),
    (
        "logging: {level: verbose}",
        'logging.level: expected one of DEBUG, INFO, WARNING, ERROR, got "verbose"',
    ),
    ("logging: {format: xml}", 'logging.format: expected "text" or "json", got "xml"'),
    (
        "metrics: '127.0.0.1:9108'",
        'metrics: expected a mapping with the keys listen, token, got "127.0.0.1:9108"',
    ),
    ("metrics: {listen: 9108}", f"metrics.listen: {LISTEN}, got 9108"),
    ("metrics: {listen: '::1:9108'}", f'metrics.listen: {LISTEN}, got "::1:9108"'),
    ("metrics: {listen: '[nope]:9108'}", f'metrics.listen: {LISTEN}, got "[nope]:9108"'),
    (
        "metrics: {listen: '127.0.0.1:70000'}",
        "metrics.listen: port must be between 1 and 65535, got 70000",
    ),
    ("metrics: {listen: '127.0.0.1:0'}", "metrics.listen: port must be between 1 and 65535, got 0"),
    (
        "retention: {purge_after: 0s}",
        'retention.purge_after: must be longer than 0 seconds, got "0s"',
    ),
    (
        "retention: {redact_delivered_on_close: 1}",
        "retention.redact_delivered_on_close: expected true or false, got 1",
    ),
]


PG_URL = "expected a URL like postgresql://parcel@db:5432/parcel"

DATABASE_CASES = [
    ("database: 42", f"database: {PG_URL}, got a number"),
    ("database: 'sqlite:///data/parcel.db'", f"database: {PG_URL}: only PostgreSQL is supported "
     "here, got 'sqlite' (leave database out for the embedded SQLite store)"),
    ("database: 'mysql://u:hunter22@db/parcel'", f"database: {PG_URL}: only PostgreSQL is "
     "supported here, got 'mysql' (leave database out for the embedded SQLite store)"),
    ("database: 'db:5432/parcel'", f"database: {PG_URL}: only PostgreSQL is supported here, "
     "got 'db' (leave database out for the embedded SQLite store)"),
    ("database: 'postgresql://parcel@/parcel'", f"database: {PG_URL}: the host is missing"),
    ("database: 'postgresql://parcel:hunter22@db'",
     f"database: {PG_URL}: the database name is missing (…/parcel)"),
    ("database: 'postgresql://parcel@db/a/b'",
     f"database: {PG_URL}: the path must be just the database name"),
    ("database: 'postgresql://parcel:hunter22@db:99999/parcel'",
     f"database: {PG_URL}: the host or port cannot be read"),
    ("database: 'postgresql://parcel@db/par cel'", f"database: {PG_URL}: it contains spaces"),
]


@pytest.mark.parametrize(("overlay", "message"), DATABASE_CASES)
def test_a_bad_database_url_names_the_key_and_hides_the_password(overlay: str,
                                                                 message: str) -> None:
    """A database setting that is not a usable PostgreSQL URL fails start-up naming the key,
    without echoing the URL (it may carry a password)."""
    err = error_from(overlay)
    assert str(err) == message
    assert "hunter22" not in str(err)


@pytest.mark.parametrize(
    ("overlay", "env", "database", "password"),
    [
        ("", {}, None, None),
        ("database: null", {}, None, None),
        ("database: 'postgresql://parcel@db/parcel'", {}, "postgresql://parcel@db/parcel", None),
        ("database: ' postgres://parcel:in-url@db:5433/parcel?sslmode=require '",
         {"PARCEL_DATABASE_PASSWORD": "from-env"},
         "postgres://parcel:in-url@db:5433/parcel?sslmode=require", "from-env"),
        ("database: 'postgresql://parcel@/parcel?host=/run/postgresql'",
         {"PARCEL_DATABASE_PASSWORD": ""}, "postgresql://parcel@/parcel?host=/run/postgresql",
         None),
    ],
    ids=["absent", "null", "url", "env-password-wins", "unix-socket"],
)
def test_database_setting_and_its_password(overlay: str, env: dict[str, str],
                                           database: str | None, password: str | None) -> None:
    """database is None (SQLite in data_dir) or the URL; PARCEL_DATABASE_PASSWORD, when set
    and non-empty, is the password to use (winning over the URL's); neither shows in repr."""
    config = config_from(overlay, env={**env, "PARCEL_ENCRYPTION_KEY": "k" * 32})
    assert (config.database, config.database_password) == (database, password)
    assert "in-url" not in repr(config) and "from-env" not in repr(config)


def test_postgres_without_an_explicit_encryption_key_is_refused() -> None:
    """With PostgreSQL the key cannot be a file generated into data_dir: start-up says so."""
    err = error_from("database: 'postgresql://parcel@db/parcel'")
    assert str(err) == (
        "encryption_key: with database on PostgreSQL the encryption key must be given: set "
        "PARCEL_ENCRYPTION_KEY (or encryption_key), the same for every instance"
    )


@pytest.mark.parametrize(("overlay", "seconds"), [
    ("", 8.0), ("leader_lease: 3s", 3.0), ("leader_lease: 15s", 15.0),
    ("leader_lease: 2m", 120.0),
])  # fmt: skip
def test_leader_lease(overlay: str, seconds: float) -> None:
    """leader_lease is a duration from 3 s to 2 min, 8 s by default."""
    assert config_from(overlay).leader_lease == seconds


@pytest.mark.parametrize("value", ["2s", "0", "3m", "soon"])
def test_leader_lease_out_of_range_is_refused(value: str) -> None:
    """A lease shorter than 3 s (a busy leader would lose it) or longer than 2 min is refused."""
    err = error_from(f"leader_lease: {value!r}")
    assert err.key == "leader_lease"


@pytest.mark.parametrize(("overlay", "message"), VALIDATION_CASES)
def test_validation_error_names_the_key(overlay: str, message: str) -> None:
    """Each wrong value fails with one message naming the dotted key, what was expected and got."""
    err = error_from(overlay)
    assert str(err) == message
    assert message == f"{err.key}: {err.problem}"


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ("policy: {max_sise: 1}", "policy.max_sise: unknown key (did you mean 'max_size'?)"),
        ("homserver: x", "homserver: unknown key (did you mean 'homeserver'?)"),
        ("Encryption: true", "Encryption: unknown key (did you mean 'encryption'?)"),
        ("max_size: 5MB", "max_size: unknown key (did you mean 'policy.max_size'?)"),
        ("users: []", "users: unknown key (did you mean 'agents.users'?)"),
        (
            "policy: {customer_to_agent: {offer_ttl: 1h}}",
            "policy.customer_to_agent.offer_ttl: unknown key (did you mean 'policy.offer_ttl'?)",
        ),
        ("agents: {user: []}", "agents.user: unknown key (did you mean 'users'?)"),
        ("metrics: {listen_port: 1}", "metrics.listen_port: unknown key (did you mean 'listen'?)"),
        ("logging: {levle: INFO}", "logging.levle: unknown key (did you mean 'level'?)"),
        (
            "agents: {scaner_timeout: 1}",
            "agents.scaner_timeout: unknown key (did you mean 'policy.scanner_timeout'?)",
        ),
        ("reactions: {zzz: 1}", "reactions.zzz: unknown key (known keys here: accept, decline)"),
        (
            "policy: {1: x}",
            "policy.1: unknown key (known keys here: max_size, offer_ttl, allowed_types, "
            "blocked_types, block_executables, scanner, scanner_timeout, scanner_failure, "
            "max_image_pixels, large_images, strip_metadata, card_numbers, card_numbers_in_text, "
            "uninspectable, ocr_timeout, customer_to_agent, agent_to_customer)",
        ),
    ],
)
def test_unknown_key_suggests_the_closest_known_key(overlay: str, message: str) -> None:
    """A misspelt or misplaced key is an error that points at the key it probably meant."""
    assert str(error_from(overlay)) == message


def test_unknown_keys_are_found_before_type_errors() -> None:
    """A typo elsewhere is reported even when another key's value is also wrong."""
    assert error_from("{policy: {max_size: lots}, agents: {lable: x}}").key == "agents.lable"


@pytest.mark.parametrize("raw", [None, [], ["homeserver"], 42, "homeserver: x", True])
def test_top_level_must_be_a_mapping(raw: object) -> None:
    """parse() refuses data that is not a mapping with a clear message."""
    with pytest.raises(ConfigError, match=r"^<top level>: expected a mapping of settings, got "):
        parse(raw, env={})


def test_secrets_never_appear_in_errors() -> None:
    """A wrongly typed password is described by its kind, not echoed."""
    err = error_from("password: 987654321")
    assert "987654321" not in str(err)


def test_config_error_survives_pickling() -> None:
    """ConfigError keeps key and problem through pickling (e.g. across processes)."""
    err = pickle.loads(pickle.dumps(ConfigError("a.b", "wrong")))
    assert (err.key, err.problem, str(err)) == ("a.b", "wrong", "a.b: wrong")


# ---------------------------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "expected a mapping of settings, but the file is empty"),
        ("# only comments\n", "expected a mapping of settings, but the file is empty"),
        ("- a\n- b\n", "expected a mapping of settings, got a list"),
        (
            "homeserver: x\n  user_id: y\n",
            "invalid YAML at line 2, column 10: mapping values are not allowed here",
        ),
        (
            "a: [1, 2\nb: 3\n",
            "invalid YAML at line 2, column 2: while parsing a flow sequence, expected ',' or ']', "
            "but got ':'",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "invalid YAML at line 2, column 1: expected a single document in the stream, "
            "but found another document",
        ),
        ("a: !!python/object:os.system x\n", None),
    ],
)
def test_load_reports_file_level_problems_under_the_path(
    tmp_path: Path, content: str, problem: str | None
) -> None:
    """Problems with the file as a whole carry the file path as key, and a line number."""
    path = tmp_path / "config.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.key == str(path)
    if problem is not None:
        assert info.value.problem == problem


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is one error: the path and "file not found"."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: file not found"


def test_load_directory_and_bad_encoding(tmp_path: Path) -> None:
    """A directory or a non-UTF-8 file gives a ConfigError, not an OSError."""
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"homeserver: \xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "policy:\n  max_size: 1MB\n  max_size: 2MB\n",
            "policy.max_size: duplicate key on line 3 (first set on line 2)",
        ),
        (
            "agents: {}\nuser_id: x\nagents: {}\n",
            "agents: duplicate key on line 3 (first set on line 1)",
        ),
    ],
)
def test_load_refuses_duplicate_keys(tmp_path: Path, content: str, message: str) -> None:
    """A key given twice in one mapping is an error instead of silently keeping the last."""
    path = tmp_path / "config.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert str(info.value) == message


def test_no_raw_exception_escapes_for_odd_input() -> None:
    """Random odd values anywhere in the tree give a ConfigError, never KeyError/TypeError."""
    odd: list[object] = [
        None,
        True,
        0,
        -1,
        1.5,
        float("inf"),
        float("nan"),
        "",
        "x",
        "@a:b",
        "25MB",
        "{",
        "{}",
        "[::1]:9108",
        [],
        [1],
        [None],
        [[1]],
        {},
        {"a": 1},
        {1: 2},
        {None: 1},
        b"\x00",
        "a" * 300,
    ]
    paths = list(known_keys()) + ["agents", "policy", "metrics", "policy.customer_to_agent"]
    rng = random.Random(1234)
    for _ in range(2000):
        raw = copy.deepcopy(MINIMAL)
        for _ in range(rng.randint(1, 3)):
            node: dict[str, Any] = raw
            *parents, leaf = rng.choice(paths).split(".")
            for parent in parents:
                if not isinstance(node.get(parent), dict):
                    node[parent] = {}
                node = node[parent]
            node[leaf] = rng.choice(odd)
        try:
            redacted_summary(parse(raw, env={}))
        except ConfigError as err:
            assert err.key and err.problem


# ---------------------------------------------------------------------------------------------
# Sizes and durations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1024, 1024),
        (1e6, 1_000_000),
        ("10B", 10),
        ("10", 10),
        ("512KB", 512_000),
        ("25MB", 25_000_000),
        ("25mb", 25_000_000),
        ("25 MB", 25_000_000),
        (" 1GB ", 1_000_000_000),
        ("2TB", 2_000_000_000_000),
        ("1.5MB", 1_500_000),
        (".5KB", 500),
        ("1KiB", 1024),
        ("64MiB", 64 * 1024**2),
        ("1gib", 1024**3),
        ("1TiB", 1024**4),
        ("0.1MiB", 104_857),
    ],
)
def test_parse_size_accepts(value: object, expected: int) -> None:
    """Sizes: bytes, decimal units (powers of 1000) and binary units (powers of 1024)."""
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", 'expected a size like "25MB", got "lots"'),
        ("", 'expected a size like "25MB", got ""'),
        ("MB", 'expected a size like "25MB", got "MB"'),
        ("1.2.3MB", 'expected a size like "25MB", got "1.2.3MB"'),
        ("25 M B", 'expected a size like "25MB", got "25 M B"'),
        ("10 parsecs", 'unknown size unit "parsecs" in "10 parsecs"; ' + SIZE_UNITS),
        ("5K", 'unknown size unit "K" in "5K"; ' + SIZE_UNITS),
        (-1, "a size cannot be negative, got -1"),
        ("-2MB", 'a size cannot be negative, got "-2MB"'),
        (True, 'expected a size like "25MB", got true'),
        (None, 'expected a size like "25MB", got null'),
        ([1], 'expected a size like "25MB", got a list'),
        (float("inf"), 'expected a size like "25MB", got inf'),
        (1.5, "expected a whole number of bytes, got 1.5"),
        ("1.5B", 'expected a whole number of bytes, got "1.5B"'),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    """Bad sizes raise ValueError with a message saying what was expected and got."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("24H", 86400.0),
        (" 5 m ", 300.0),
        ("1h30m", 5400.0),
        ("1d 12h", 129600.0),
    ],
)
def test_parse_duration_accepts(value: object, expected: float) -> None:
    """Durations: seconds as a number, or numbers with ms/s/m/h/d units, combinable."""
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", f'{DURATION}, got "soon"'),
        ("", f'{DURATION}, got ""'),
        ("5 minutes", f'{DURATION}, got "5 minutes"'),
        ("5w", f'{DURATION}, got "5w"'),
        ("h", f'{DURATION}, got "h"'),
        (-1, "a duration cannot be negative, got -1"),
        ("-5m", 'a duration cannot be negative, got "-5m"'),
        (True, f"{DURATION}, got true"),
        (None, f"{DURATION}, got null"),
        ({"m": 5}, f"{DURATION}, got a mapping"),
        (float("nan"), f"{DURATION}, got nan"),
        ("1e400", f'{DURATION}, got "1e400"'),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    """Bad durations raise ValueError with a message saying what was expected and got."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(value)


# ---------------------------------------------------------------------------------------------
# Redacted summary
# ---------------------------------------------------------------------------------------------


def test_redacted_summary_masks_secrets_and_is_plain_data() -> None:
    """The summary for logs masks password and token and serialises to JSON as is."""
    config = config_from("{access_token: tok-secret, metrics: {listen: '127.0.0.1:9108'}}")
    summary = redacted_summary(config)
    text = json.dumps(summary)
    assert "tok-secret" not in text and '"pw"' not in text
    assert summary["password"] == "***" and summary["access_token"] == "***"
    assert summary["data_dir"] == str(BASE_DIR / "data")
    assert summary["policy"]["customer_to_agent"]["max_size"] == 25_000_000
    assert summary["metrics"] == {"listen_host": "127.0.0.1", "listen_port": 9108,
                                  "token": None}


def test_redacted_summary_shows_unset_secrets_as_null() -> None:
    """An unset secret stays null, so the log shows which credential is in use."""
    summary = redacted_summary(config_from())
    assert (summary["password"], summary["access_token"]) == ("***", None)


# ---------------------------------------------------------------------------------------------
# The example file
# ---------------------------------------------------------------------------------------------


def _leaf_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        paths |= _leaf_paths(value, path) if isinstance(value, dict) else {path}
    return paths


def test_example_config_loads_with_password_from_env() -> None:
    """config.example.yaml loads; its placeholder password is overridden by PARCEL_PASSWORD."""
    config = load(EXAMPLE, env={"PARCEL_PASSWORD": "from-env"})
    assert config.password == "from-env"
    assert config.homeserver == "http://127.0.0.1:8008"
    assert config.user_id == "@parcel:example.org"
    assert config.data_dir == REPO_ROOT / "data"


def test_example_config_shows_the_defaults() -> None:
    """Every value in the example is the default (metrics off, as the README says)."""
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    example = parse(raw, env={}, base_dir=BASE_DIR)
    minimal = parse(dict(MINIMAL, password=raw["password"]), env={}, base_dir=BASE_DIR)
    assert example.metrics is None
    assert example == minimal


def test_example_config_lists_every_known_key() -> None:
    """The example sets every key the loader knows, so admins see the full reference."""
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert _leaf_paths(raw) == set(known_keys())


def test_example_config_comments_every_key_with_its_default() -> None:
    """Every key has a comment (above or inline) giving its default or saying it is required."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^\s*([a-z_]+):", line)
        if match is None or line.rstrip().endswith(":"):
            continue  # not a key, or a section header
        comment = line.partition("#")[2]
        above = number - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            comment = lines[above] + "\n" + comment
            above -= 1
        assert re.search(r"default|required", comment, re.IGNORECASE), (
            f"{match.group(1)} (line {number + 1}) has no comment with its default"
        )


# ---------------------------------------------------------------------------------------------
# Secrets at rest: the encryption key and the metrics token
# ---------------------------------------------------------------------------------------------

LONG_KEY = "k" * 16


@pytest.mark.parametrize(
    ("overlay", "env", "key", "source"),
    [
        ("", {}, None, None),
        (f"{{encryption_key: {LONG_KEY}}}", {}, LONG_KEY, "encryption_key"),
        ("", {"PARCEL_ENCRYPTION_KEY": "e" * 20}, "e" * 20, "PARCEL_ENCRYPTION_KEY"),
        (f"{{encryption_key: {LONG_KEY}}}", {"PARCEL_ENCRYPTION_KEY": "e" * 20}, "e" * 20,
         "PARCEL_ENCRYPTION_KEY"),
        (f"{{encryption_key: {LONG_KEY}}}", {"PARCEL_ENCRYPTION_KEY": ""}, LONG_KEY,
         "encryption_key"),
    ],
)
def test_encryption_key_comes_from_env_then_file(
    overlay: str, env: dict[str, str], key: str | None, source: str | None
) -> None:
    """PARCEL_ENCRYPTION_KEY wins over encryption_key; neither means the generated file."""
    config = config_from(overlay, env)
    assert (config.encryption_key, config.encryption_key_source) == (key, source)


@pytest.mark.parametrize(
    ("overlay", "env", "message"),
    [
        ("{encryption_key: short}", {},
         "encryption_key: too short (5 characters): use at least 16"),
        ("", {"PARCEL_ENCRYPTION_KEY": "fifteen-chars!!"},
         "PARCEL_ENCRYPTION_KEY: too short (15 characters): use at least 16"),
        ("{encryption_key: 1234567890123456}", {},
         "encryption_key: expected a string, got a number (quote it in YAML)"),
        ("{metrics: {listen: '127.0.0.1:9108', token: short}}", {},
         "metrics.token: expected at least 16 characters without spaces"),
        ("{metrics: {listen: '127.0.0.1:9108', token: 'with a space in it ok'}}", {},
         "metrics.token: expected at least 16 characters without spaces"),
    ],
)
def test_weak_secrets_are_refused_without_echoing_them(
    overlay: str, env: dict[str, str], message: str
) -> None:
    """A short key or token is refused with a message naming the key, never the value."""
    error = error_from(overlay, env)
    assert str(error).startswith(message), str(error)
    assert "fifteen-chars" not in str(error) and "with a space" not in str(error)


def test_secrets_at_rest_are_masked_in_the_summary() -> None:
    """The encryption key and the metrics token are masked like the password."""
    config = config_from(
        f"{{encryption_key: {LONG_KEY}, metrics: {{listen: '127.0.0.1:9108', "
        "token: tok-tok-tok-tok-tok}}"
    )
    assert config.metrics is not None and config.metrics.token == "tok-tok-tok-tok-tok"
    summary = redacted_summary(config)
    assert summary["encryption_key"] == "***" and summary["metrics"]["token"] == "***"
    text = json.dumps(summary) + repr(config)
    assert LONG_KEY not in text and "tok-tok" not in text


def test_secrets_never_show_in_the_configs_repr() -> None:
    """A Config printed or logged (a traceback's locals, a debug line) shows no secret."""
    config = config_from(
        "access_token: syt_secret_token\ndatabase: postgresql://parcel@db/parcel",
        {"PARCEL_PASSWORD": "hunter2-secret", "PARCEL_DATABASE_PASSWORD": "pg-secret",
         "PARCEL_ENCRYPTION_KEY": "k" * 44},
    )
    shown = repr(config)
    for secret in ("hunter2-secret", "syt_secret_token", "pg-secret"):
        assert secret not in shown
    assert "homeserver=" in shown
