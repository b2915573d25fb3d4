"""The PostgreSQL crypto store's pure parts: REPLACE → upsert, unique keys, schemas, the timer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import peewee
import pytest
from nio.crypto import TrustState
from nio.store import models as nio

from bot.matrix.pgstore import (
    DefaultPickleKeyRefused,
    NioPostgresDatabase,
    ReplaceNotTranslatable,
    StoreTimer,
    percentile,
    postgres_crypto_store,
    replace_target,
    store_schema,
    unique_keys,
)

WHEN = datetime(2026, 1, 2, 3, 4, 5)


class Pair(peewee.Model):
    """A composite primary key."""

    left = peewee.TextField()
    right = peewee.TextField()
    value = peewee.TextField()

    class Meta:
        primary_key = peewee.CompositeKey("left", "right")


class Badge(peewee.Model):
    """A unique field and a unique index besides the automatic id."""

    code = peewee.TextField(unique=True)
    owner = peewee.TextField()
    kind = peewee.TextField()
    label = peewee.TextField(default="")

    class Meta:
        indexes = ((("owner", "kind"), True),)


MODELS = [nio.Accounts, nio.OlmSessions, nio.MegolmInboundSessions, nio.ForwardedChains,
          nio.DeviceKeys, nio.Keys, nio.DeviceTrustState, nio.EncryptedRooms, nio.SyncTokens,
          nio.OutgoingKeyRequests, nio.TrackedUsers, Pair, Badge]

# (what, the query, the ON CONFLICT clause expected after VALUES)
REPLACES: list[tuple[str, Callable[[], peewee.Insert], str]] = [
    ("nio save_session: the session id is the primary key",
     lambda: nio.OlmSessions.replace(account=1, sender_key="curve", session=b"pickle",
                                     session_id="S", creation_time=WHEN, last_usage_date=WHEN),
     'ON CONFLICT ("session_id") DO UPDATE SET "account_id" = EXCLUDED."account_id", '
     '"sender_key" = EXCLUDED."sender_key", "session" = EXCLUDED."session", '
     '"creation_time" = EXCLUDED."creation_time", '
     '"last_usage_date" = EXCLUDED."last_usage_date"'),
    ("nio save_sync_token: one token per account",
     lambda: nio.SyncTokens.replace(account=1, token="s72"),
     'ON CONFLICT ("account_id") DO UPDATE SET "token" = EXCLUDED."token"'),
    ("nio save_device_keys: one key per device and type",
     lambda: nio.Keys.replace(key_type="ed25519", key="K", device=3),
     'ON CONFLICT ("device_id", "key_type") DO UPDATE SET "key" = EXCLUDED."key"'),
    ("nio verify_device: the trust row is keyed by its device",
     lambda: nio.DeviceTrustState.replace(device=3, state=TrustState.verified),
     'ON CONFLICT ("device_id") DO UPDATE SET "state" = EXCLUDED."state"'),
    ("nio ignore_devices: replace_many with rows keyed by column name",
     lambda: nio.DeviceTrustState.replace_many([
         {"device_id": 3, "state": TrustState.ignored},
         {"device_id": 4, "state": TrustState.ignored}]),
     'ON CONFLICT ("device_id") DO UPDATE SET "state" = EXCLUDED."state"'),
    ("nio save_inbound_group_session: a chain row is all key, so a clash keeps it",
     lambda: nio.ForwardedChains.replace(sender_key="curve", session="M"),
     'ON CONFLICT ("sender_key", "session_id") DO NOTHING'),
    ("a field default counts as inserted and is updated too",
     lambda: nio.DeviceKeys.replace(account=1, user_id="@u:x", device_id="D", deleted=False),
     'ON CONFLICT ("account_id", "user_id", "device_id") DO UPDATE SET '
     '"deleted" = EXCLUDED."deleted", "display_name" = EXCLUDED."display_name"'),
    ("a composite primary key",
     lambda: Pair.replace(left="a", right="b", value="v"),
     'ON CONFLICT ("left", "right") DO UPDATE SET "value" = EXCLUDED."value"'),
    ("a unique field",
     lambda: Badge.replace(code="c", owner="o", label="l"),
     'ON CONFLICT ("code") DO UPDATE SET "owner" = EXCLUDED."owner", '
     '"label" = EXCLUDED."label"'),
    ("a unique index",
     lambda: Badge.replace(owner="o", kind="k", label="l"),
     'ON CONFLICT ("owner", "kind") DO UPDATE SET "label" = EXCLUDED."label"'),
    ("an insert that ignores conflicts is left as peewee writes it",
     lambda: nio.Accounts.insert(account=b"p", user_id="@u:x", device_id="D",
                                 shared=False).on_conflict_ignore(),
     "ON CONFLICT DO NOTHING"),
]

# (what, the query, words the refusal must contain)
REFUSED: list[tuple[str, Callable[[], peewee.Insert], str]] = [
    ("no unique key among the columns", lambda: nio.EncryptedRooms.replace(room_id="!r:x"),
     "no unique key"),
    ("an explicit id and the account key could both clash",
     lambda: nio.Accounts.replace(id=1, account=b"p", user_id="@u:x", device_id="D",
                                  shared=False),
     "several unique keys could clash (id; user_id, device_id)"),
    ("a unique field and a unique index could both clash",
     lambda: Badge.replace(code="c", owner="o", kind="k"), "several unique keys"),
]


def _sql(build: Callable[[], peewee.Insert]) -> str:
    database = NioPostgresDatabase("postgresql://parcel@127.0.0.1/none", "nio_test")
    with database.bind_ctx(MODELS):
        text, _params = build().sql()
    return str(text)


def _conflict_clause(text: str) -> str:
    clause = text[text.index(" ON CONFLICT") + 1:]
    return clause.split(" RETURNING ")[0]


@pytest.mark.parametrize(("what", "build", "expected"), REPLACES, ids=[c[0] for c in REPLACES])
def test_replace_becomes_an_upsert_on_the_models_unique_key(
    what: str, build: Callable[[], peewee.Insert], expected: str
) -> None:
    """Every REPLACE turns into INSERT … ON CONFLICT on the one unique key it names."""
    text = _sql(build)
    assert text.startswith("INSERT INTO ")
    assert "REPLACE" not in text
    assert _conflict_clause(text) == expected


@pytest.mark.parametrize(("what", "build", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_replace_without_one_clear_key_is_refused(
    what: str, build: Callable[[], peewee.Insert], words: str
) -> None:
    """A REPLACE no single upsert can express raises instead of guessing."""
    with pytest.raises(ReplaceNotTranslatable, match=r"^REPLACE into .*") as raised:
        _sql(build)
    assert words in str(raised.value)


# model -> every unique key, as column names
UNIQUE_KEYS = [
    (nio.Accounts, [("id",), ("user_id", "device_id")]),
    (nio.OlmSessions, [("session_id",)]),
    (nio.MegolmInboundSessions, [("session_id",)]),
    (nio.ForwardedChains, [("id",), ("sender_key", "session_id")]),
    (nio.DeviceKeys, [("id",), ("account_id", "user_id", "device_id")]),
    (nio.Keys, [("id",), ("device_id", "key_type")]),
    (nio.DeviceTrustState, [("device_id",)]),
    (nio.EncryptedRooms, [("id",), ("room_id", "account_id")]),
    (nio.SyncTokens, [("id",), ("account_id",)]),
    (nio.StoreVersion, [("id",)]),
    (Pair, [("left", "right")]),
    (Badge, [("id",), ("code",), ("owner", "kind")]),
]


@pytest.mark.parametrize(("model", "expected"), UNIQUE_KEYS,
                         ids=[m.__name__ for m, _ in UNIQUE_KEYS])
def test_unique_keys_of_nios_models(model: type[peewee.Model],
                                    expected: list[tuple[str, ...]]) -> None:
    """Primary keys, unique fields, unique indexes and UNIQUE(...) constraints all count."""
    assert unique_keys(model) == expected


def test_replace_target_names_the_model_in_its_refusal() -> None:
    """The refusal says which table and columns the REPLACE was for."""
    with pytest.raises(ReplaceNotTranslatable,
                       match=r"REPLACE into encryptedrooms \(room_id\): no unique key"):
        replace_target(nio.EncryptedRooms, ["room_id"])


SCHEMAS = [
    ("@parcel:example.org", "ABCDEFGHIJ"),
    ("@parcel:example.org", "KLMNOPQRST"),
    ("@other:example.org", "ABCDEFGHIJ"),
    ('@we"ird;drop:example.org', "x" * 200),
]


def test_each_device_has_its_own_short_schema() -> None:
    """Schema names are stable, distinct per user and device, plain and within 63 bytes."""
    names = [store_schema(user, device) for user, device in SCHEMAS]
    assert len(set(names)) == len(names)
    assert names == [store_schema(user, device) for user, device in SCHEMAS]
    for name in names:
        assert name.startswith("nio_") and len(name) == 28 and name.isascii()
        assert name[4:].isalnum() and name == name.lower()


@pytest.mark.parametrize("key", ["", "DEFAULT_KEY"])
def test_the_default_pickle_key_is_refused_before_connecting(key: str) -> None:
    """A store that would pickle under nio's public default (or no) key is never opened."""
    store = postgres_crypto_store("postgresql://parcel@127.0.0.1:1/never")
    with pytest.raises(DefaultPickleKeyRefused, match="default"):
        store("@bot:example.org", "DEV", "", key, "")


# (values, fraction, nearest-rank percentile)
PERCENTILES = [
    ([], 0.5, 0.0),
    ([3.0], 0.5, 3.0),
    ([3.0], 0.99, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
    ([4.0, 3.0, 2.0, 1.0], 0.75, 3.0),
    ([float(n) for n in range(1, 101)], 0.99, 99.0),
    ([float(n) for n in range(1, 101)], 0.5, 50.0),
    ([float(n) for n in range(1, 11)], 0.99, 10.0),
    ([5.0, 1.0], 0.0, 1.0),
    ([5.0, 1.0], 1.0, 5.0),
]


@pytest.mark.parametrize(("values", "fraction", "expected"), PERCENTILES)
def test_percentile_is_nearest_rank(values: list[float], fraction: float,
                                    expected: float) -> None:
    """p50/p99 pick an observed value by nearest rank."""
    assert percentile(values, fraction) == expected


def test_timer_sums_calls_per_sync_cycle() -> None:
    """Calls add up into the open cycle; cycle() closes it and the summary is in ms."""
    timer = StoreTimer()
    timer.record("save_session", 0.002)
    timer.record("save_inbound_group_session", 0.001)
    assert timer.cycle() == pytest.approx(0.003)
    assert timer.cycle() == 0.0
    timer.record("save_session", 0.004)
    assert timer.cycle() == pytest.approx(0.004)
    summary = timer.summary()
    assert summary["cycles"] == 3 and summary["calls"] == 3
    assert summary["cycle_p50_ms"] == pytest.approx(3.0)
    assert summary["cycle_max_ms"] == pytest.approx(4.0)
    assert summary["call_p50_ms"] == pytest.approx(2.0)
    assert {k: len(v) for k, v in timer.by_method.items()} == {
        "save_session": 2, "save_inbound_group_session": 1}
