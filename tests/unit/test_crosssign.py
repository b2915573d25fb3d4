"""Canonical JSON, Ed25519 JSON signatures and the cross-signing seeds file."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from bot.documents import FileDocuments
from bot.matrix.crosssign import (
    SEEDS_FILE,
    CrossSigningError,
    CrossSigningSeeds,
    SigningKey,
    canonical_json,
    decode_base64,
    ed25519_public_key,
    encode_base64,
    load_seeds,
    save_seeds,
    sign_json,
    verify_signed_json,
)

ALICE = "@alice:parcel.test"

# The key of the spec's "Signing JSON" examples (appendices), and its published signatures.
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_CASES = [
    ({}, "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"),
    (
        {"one": 1, "two": "Two"},
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
    ),
]

CANONICAL_CASES: list[tuple[str, Any, bytes]] = [
    ("empty object", {}, b"{}"),
    ("keys sorted, no spaces", {"b": 2, "a": 1}, b'{"a":1,"b":2}'),
    ("nested objects sorted too", {"z": {"y": 1, "x": [3, {"b": 0, "a": 0}]}},
     b'{"z":{"x":[3,{"a":0,"b":0}],"y":1}}'),
    ("non-ASCII stays raw UTF-8", {"a": "日本語"}, '{"a":"日本語"}'.encode()),
    ("non-ASCII keys sorted by code point", {"本": 2, "日": 1}, '{"日":1,"本":2}'.encode()),
    ("astral after BMP (code point, not UTF-16 order)", {"\U0001f600": 1, "\uffff": 2},
     '{"\uffff":2,"\U0001f600":1}'.encode()),
    ("control characters escaped", {"a": "\x00\x1f\n\t"}, b'{"a":"\\u0000\\u001f\\n\\t"}'),
    ("quote and backslash escaped", {"a": '"\\'}, b'{"a":"\\"\\\\"}'),
    ("U+2028 and DEL stay raw", {"a": "\u2028\x7f"}, '{"a":"\u2028\x7f"}'.encode()),
    ("slash not escaped", {"a": "a/b"}, b'{"a":"a/b"}'),
    ("literals", {"t": True, "f": False, "n": None}, b'{"f":false,"n":null,"t":true}'),
    ("minus zero is zero", {"a": -0}, b'{"a":0}'),
    ("largest safe integers", {"a": 2**53 - 1, "b": -(2**53) + 1},
     b'{"a":9007199254740991,"b":-9007199254740991}'),
    ("empty containers", {"a": [], "b": {}, "c": ""}, b'{"a":[],"b":{},"c":""}'),
]  # fmt: skip

NOT_CANONICAL: list[tuple[str, Any]] = [
    ("float", {"a": 1.5}),
    ("integral float", {"a": 1e10}),
    ("NaN", {"a": float("nan")}),
    ("integer too large", {"a": 2**53}),
    ("integer too small", {"a": -(2**53)}),
    ("non-string key", {1: "a"}),
    ("bytes", {"a": b"x"}),
]


@pytest.mark.parametrize(("case", "value", "expected"), CANONICAL_CASES,
                         ids=[c[0] for c in CANONICAL_CASES])
def test_canonical_json(case: str, value: Any, expected: bytes) -> None:
    """Canonical JSON sorts keys by code point, drops whitespace and keeps UTF-8 raw."""
    assert canonical_json(value) == expected


@pytest.mark.parametrize(("case", "value"), NOT_CANONICAL, ids=[c[0] for c in NOT_CANONICAL])
def test_canonical_json_refuses_what_the_spec_forbids(case: str, value: Any) -> None:
    """Values Matrix canonical JSON cannot express raise instead of encoding ambiguously."""
    with pytest.raises(ValueError):
        canonical_json(value)


@pytest.mark.parametrize(("case", "value", "expected"), CANONICAL_CASES,
                         ids=[c[0] for c in CANONICAL_CASES])
def test_canonical_json_matches_synapse(case: str, value: Any, expected: bytes) -> None:
    """Our encoding agrees byte for byte with Synapse's canonicaljson library."""
    canonicaljson = pytest.importorskip("canonicaljson")
    assert canonical_json(value) == canonicaljson.encode_canonical_json(value)


@pytest.mark.parametrize(("raw", "encoded"), [
    (b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"),
    (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy"),
])  # fmt: skip
def test_unpadded_base64(raw: bytes, encoded: str) -> None:
    """Keys and signatures use standard base64 without padding; decoding accepts both."""
    assert encode_base64(raw) == encoded
    assert decode_base64(encoded) == raw
    assert decode_base64(encoded + "=" * (-len(encoded) % 4)) == raw


@pytest.mark.parametrize("bad", ["a", "@@@@", "Zm9v!"])
def test_decode_base64_refuses_garbage(bad: str) -> None:
    """Malformed base64 is a ValueError, never silently skipped characters."""
    with pytest.raises(ValueError):
        decode_base64(bad)


@pytest.mark.parametrize(("obj", "signature"), SPEC_CASES)
def test_sign_json_reproduces_the_spec_examples(obj: dict[str, Any], signature: str) -> None:
    """Signing the spec's examples with the spec's key gives the spec's signatures."""
    key = SigningKey(decode_base64(SPEC_SEED))
    signed = sign_json(obj, key, "domain", "ed25519:1")
    assert signed["signatures"] == {"domain": {"ed25519:1": signature}}
    assert verify_signed_json(signed, "domain", key.public_key, "ed25519:1")


def _device(user_id: str = ALICE) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": "DEVICE",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:DEVICE": "c" * 43, "ed25519:DEVICE": "e" * 43},
        "signatures": {user_id: {"ed25519:DEVICE": "device-self-signature"}},
        "unsigned": {"device_display_name": "Parcel 🤖"},
    }


def test_sign_then_verify_round_trip() -> None:
    """A signature verifies; other signatures and ``unsigned`` are kept; the input is untouched."""
    key = SigningKey.generate()
    device = _device()
    signed = sign_json(device, key, ALICE)
    assert verify_signed_json(signed, ALICE, key.public_key)
    assert signed["signatures"][ALICE]["ed25519:DEVICE"] == "device-self-signature"
    assert signed["unsigned"] == device["unsigned"]
    assert key.key_id not in device["signatures"][ALICE]
    assert key.key_id == f"ed25519:{key.public_key}" and "=" not in key.key_id
    assert len(decode_base64(signed["signatures"][ALICE][key.key_id])) == 64


def test_signature_ignores_signatures_and_unsigned() -> None:
    """Changing ``unsigned`` or adding other signatures leaves the signature valid."""
    key = SigningKey.generate()
    signed = sign_json(_device(), key, ALICE)
    signed["unsigned"] = {"device_display_name": "renamed"}
    signed["signatures"]["@bob:parcel.test"] = {"ed25519:X": "whatever"}
    assert verify_signed_json(signed, ALICE, key.public_key)
    del signed["unsigned"]
    assert verify_signed_json(signed, ALICE, key.public_key)


def _change_value(o: dict[str, Any]) -> None:
    o["keys"]["ed25519:DEVICE"] = "f" * 43


def _add_field(o: dict[str, Any]) -> None:
    o["extra"] = True


def _drop_algorithm(o: dict[str, Any]) -> None:
    o["algorithms"].pop()


def _flip_signature(o: dict[str, Any]) -> None:
    sigs = o["signatures"][ALICE]
    key_id = next(k for k in sigs if k != "ed25519:DEVICE")
    raw = bytearray(decode_base64(sigs[key_id]))
    raw[0] ^= 1
    sigs[key_id] = encode_base64(bytes(raw))


def _garble_signature(o: dict[str, Any]) -> None:
    sigs = o["signatures"][ALICE]
    key_id = next(k for k in sigs if k != "ed25519:DEVICE")
    sigs[key_id] = "not base64!"


def _drop_signatures(o: dict[str, Any]) -> None:
    del o["signatures"]


@pytest.mark.parametrize("tamper", [_change_value, _add_field, _drop_algorithm, _flip_signature,
                                    _garble_signature, _drop_signatures])
def test_tampered_object_fails(tamper: Any) -> None:
    """Any change to the signed content or to the signature makes verification fail."""
    key = SigningKey.generate()
    signed = sign_json(_device(), key, ALICE)
    tamper(signed)
    assert not verify_signed_json(signed, ALICE, key.public_key)


def test_verify_needs_the_right_key_and_user() -> None:
    """A signature counts only for the key and user it was filed under."""
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = sign_json(_device(), key, ALICE)
    assert not verify_signed_json(signed, ALICE, other.public_key)
    assert not verify_signed_json(signed, "@bob:parcel.test", key.public_key)
    # The right signature filed under another key's id does not verify either.
    signed["signatures"][ALICE][other.key_id] = signed["signatures"][ALICE][key.key_id]
    assert not verify_signed_json(signed, ALICE, other.public_key)
    assert not verify_signed_json(signed, ALICE, "not a key")


def test_interoperates_with_signedjson() -> None:
    """Synapse's signedjson verifies our signatures, and we verify its signatures."""
    sign = pytest.importorskip("signedjson.sign")
    skey = pytest.importorskip("signedjson.key")
    key = SigningKey.generate()
    ours = sign_json(_device(), key, ALICE)
    verify_key = skey.decode_verify_key_bytes(key.key_id, decode_base64(key.public_key))
    sign.verify_signed_json(ours, ALICE, verify_key)  # raises if invalid

    their_key = skey.decode_signing_key_base64("ed25519", "theirs", encode_base64(key.seed))
    theirs = sign.sign_json(_device(), ALICE, their_key)
    assert verify_signed_json(theirs, ALICE, key.public_key, "ed25519:theirs")
    assert theirs["signatures"][ALICE]["ed25519:theirs"] == ours["signatures"][ALICE][key.key_id]


def test_upload_body_is_signed_by_master() -> None:
    """The self-signing and user-signing keys are signed by the master key; all is stable."""
    seeds = CrossSigningSeeds.generate(ALICE)
    body = seeds.upload_body()
    master = ed25519_public_key(body["master_key"])
    assert master == seeds.master.public_key
    assert body["master_key"]["usage"] == ["master"]
    for field, usage, key in [("self_signing_key", "self_signing", seeds.self_signing),
                              ("user_signing_key", "user_signing", seeds.user_signing)]:
        assert body[field]["usage"] == [usage]
        assert body[field]["user_id"] == ALICE
        assert ed25519_public_key(body[field]) == key.public_key
        assert verify_signed_json(body[field], ALICE, master)
    # Deterministic: a repeat upload is byte-identical, which Synapse accepts without auth.
    assert canonical_json(seeds.upload_body()) == canonical_json(body)


async def test_seeds_round_trip_with_private_mode(tmp_path: Path) -> None:
    """Saved seeds load back as the same keys, from a 0600 file, with no temp files left."""
    path = tmp_path / "data" / SEEDS_FILE
    seeds = CrossSigningSeeds.generate(ALICE)
    await save_seeds(FileDocuments(path.parent), seeds, KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [SEEDS_FILE]
    loaded = await load_seeds(FileDocuments(path.parent), ALICE, KEY)
    assert loaded is not None
    for name in ("master", "self_signing", "user_signing"):
        assert getattr(loaded, name).seed == getattr(seeds, name).seed
    assert await load_seeds(FileDocuments(tmp_path / "missing"), ALICE, KEY) is None


async def test_loose_seeds_file_is_narrowed(tmp_path: Path) -> None:
    """A seeds file readable by others is narrowed to 0600 when loaded."""
    path = tmp_path / SEEDS_FILE
    await save_seeds(FileDocuments(path.parent), CrossSigningSeeds.generate(ALICE), KEY)
    path.chmod(0o644)
    assert await load_seeds(FileDocuments(path.parent), ALICE, KEY) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"version": 2}', '{"version": 3, "user_id": "@alice:parcel.test"}',
    json.dumps({"version": 2, "user_id": ALICE, "cipher": "A256GCM", "nonce": "AAAA",
                "ciphertext": "!"}),
    '{"version": 1, "user_id": "@alice:parcel.test"}',
    json.dumps({"version": 1, "user_id": ALICE, "master": "AAAA", "self_signing": "AAAA",
                "user_signing": "AAAA"}),
])  # fmt: skip
async def test_damaged_seeds_file_raises(tmp_path: Path, content: str) -> None:
    """A damaged seeds file is an error naming the file, never treated as absent."""
    path = tmp_path / SEEDS_FILE
    path.write_text(content)
    with pytest.raises(CrossSigningError, match=SEEDS_FILE):
        await load_seeds(FileDocuments(path.parent), ALICE, KEY)


async def test_seeds_of_another_account_raise(tmp_path: Path) -> None:
    """Seeds saved for another user id are refused rather than published for this one."""
    path = tmp_path / SEEDS_FILE
    other = CrossSigningSeeds.generate("@other:parcel.test")
    await save_seeds(FileDocuments(path.parent), other, KEY)
    with pytest.raises(CrossSigningError, match="@other:parcel.test"):
        await load_seeds(FileDocuments(path.parent), ALICE, KEY)


def test_signing_key_repr_hides_the_seed() -> None:
    """A key in a log line or traceback shows its public id, never its seed."""
    key = SigningKey.generate()
    assert encode_base64(key.seed) not in repr(key)
    assert key.public_key in repr(key)


KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


async def test_seeds_file_holds_no_seed_in_the_clear(tmp_path: Path) -> None:
    """The saved file contains none of the three seeds, in any encoding we write."""
    path = tmp_path / SEEDS_FILE
    seeds = CrossSigningSeeds.generate(ALICE)
    await save_seeds(FileDocuments(path.parent), seeds, KEY)
    text = path.read_text()
    for name in ("master", "self_signing", "user_signing"):
        seed = getattr(seeds, name).seed
        assert encode_base64(seed) not in text and seed.hex() not in text
    assert json.loads(text)["version"] == 2 and json.loads(text)["cipher"] == "A256GCM"


async def test_seeds_with_the_wrong_key_are_refused_and_kept(tmp_path: Path) -> None:
    """Seeds that do not decrypt with the key raise, naming the key sources; the file stays."""
    path = tmp_path / SEEDS_FILE
    await save_seeds(FileDocuments(path.parent), CrossSigningSeeds.generate(ALICE), KEY)
    before = path.read_bytes()
    with pytest.raises(CrossSigningError, match="PARCEL_ENCRYPTION_KEY"):
        await load_seeds(FileDocuments(path.parent), ALICE, OTHER_KEY)
    assert path.read_bytes() == before


async def test_plaintext_seeds_of_an_older_version_are_rewritten_encrypted(tmp_path: Path) -> None:
    """A version-1 (plain base64) seeds file loads, and is re-written encrypted at once."""
    path = tmp_path / SEEDS_FILE
    seeds = CrossSigningSeeds.generate(ALICE)
    plain = {"version": 1, "user_id": ALICE,
             "master": encode_base64(seeds.master.seed),
             "self_signing": encode_base64(seeds.self_signing.seed),
             "user_signing": encode_base64(seeds.user_signing.seed)}
    path.write_text(json.dumps(plain))
    loaded = await load_seeds(FileDocuments(path.parent), ALICE, KEY)
    assert loaded is not None and loaded.master.seed == seeds.master.seed
    text = path.read_text()
    assert json.loads(text)["version"] == 2
    assert encode_base64(seeds.master.seed) not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = await load_seeds(FileDocuments(path.parent), ALICE, KEY)
    assert again is not None and again.user_signing.seed == seeds.user_signing.seed
