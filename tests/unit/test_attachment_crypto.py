"""Matrix encrypted attachments: streaming encryption/decryption, interop with nio, bad input."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES
from Crypto.Util import Counter
from nio.crypto.attachments import (
    decrypt_attachment,
    encrypt_attachment,
    encrypted_attachment_generator,
)

from bot.attachments.mediacrypto import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    BadEncryptedFile,
    DecryptedFile,
    decrypt_into,
    encrypt_file,
)

TAMPERED = "the file's checksum does not match: it was altered or damaged"
SIZES = [0, 1, 15, 16, 17, 1000, 65_536, 200_003]


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _encrypt(data: bytes, chunk: int = 4096) -> tuple[bytes, AttachmentEncryptor]:
    encryptor = AttachmentEncryptor()
    out = b"".join(encryptor.update(c) for c in _chunks(data, chunk)) + encryptor.finalize()
    return out, encryptor


def _decrypt(ciphertext: bytes, info: dict[str, Any], chunk: int = 4096) -> bytes:
    decryptor = AttachmentDecryptor(info)
    out = b"".join(decryptor.update(c) for c in _chunks(ciphertext, chunk))
    return out + decryptor.finalize()


def _nio_decrypt(ciphertext: bytes, info: dict[str, Any]) -> bytes:
    result = decrypt_attachment(ciphertext, info["key"]["k"], info["hashes"]["sha256"], info["iv"])
    assert isinstance(result, bytes)
    return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize("size", SIZES)
def test_our_encryption_decrypts_with_nio(size: int) -> None:
    """What we encrypt, nio decrypts to the same bytes using our file block."""
    plaintext = os.urandom(size)
    ciphertext, encryptor = _encrypt(plaintext, chunk=7919)
    info = encryptor.file_info("mxc://example.org/abc")
    assert len(ciphertext) == size == encryptor.ciphertext_size
    assert _nio_decrypt(ciphertext, info) == plaintext


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(size, chunk) for size in SIZES for chunk in (1, 16, 4097) if size < 20_000 or chunk > 1],
)
def test_nio_encryption_decrypts_with_ours(size: int, chunk: int) -> None:
    """What nio encrypts, we decrypt chunk by chunk, whatever the chunk size."""
    plaintext = os.urandom(size)
    ciphertext, keys = encrypt_attachment(plaintext)
    keys["url"] = "mxc://example.org/abc"
    assert _decrypt(ciphertext, keys, chunk) == plaintext


def test_nio_streaming_generator_interop() -> None:
    """nio's chunked generator output decrypts with ours, chunk boundaries notwithstanding."""
    pieces = [os.urandom(n) for n in (5, 1 << 16, 3, 100_000)]
    *encrypted, keys = list(encrypted_attachment_generator(iter(pieces)))
    assert isinstance(keys, dict)
    ciphertext = b"".join(e for e in encrypted if isinstance(e, bytes))
    assert _decrypt(ciphertext, keys, chunk=12_345) == b"".join(pieces)


def test_nonzero_counter_in_iv_matches_nio() -> None:
    """An IV whose counter half is not zero decrypts as nio (64-bit counter) does."""
    key, nonce, start = os.urandom(32), os.urandom(8), 2**40 + 7
    plaintext = os.urandom(5000)
    cipher = AES.new(key, AES.MODE_CTR, counter=Counter.new(64, prefix=nonce, initial_value=start))
    ciphertext = cipher.encrypt(plaintext)
    iv = nonce + start.to_bytes(8, "big")
    info = {
        "v": "v2",
        "key": {"kty": "oct", "alg": "A256CTR", "ext": True, "key_ops": ["encrypt", "decrypt"],
                "k": base64.urlsafe_b64encode(key).decode().rstrip("=")},
        "iv": _b64(iv),
        "hashes": {"sha256": _b64(hashlib.sha256(ciphertext).digest())},
    }  # fmt: skip
    assert _decrypt(ciphertext, info) == plaintext
    assert _nio_decrypt(ciphertext, info) == plaintext


def test_counter_overflow_is_refused() -> None:
    """A counter that would wrap its 64 bits mid-file is refused rather than mis-decrypted."""
    info = _valid_info()
    info["iv"] = _b64(os.urandom(8) + b"\xff" * 8)
    decryptor = AttachmentDecryptor(info)
    decryptor.update(b"x" * 16)  # exactly the last counter value
    with pytest.raises(BadEncryptedFile, match="counter overflows"):
        decryptor.update(b"x")


def test_file_info_block_shape() -> None:
    """The file block is v2 with a JWK key, a zero-counter IV, the ciphertext hash and the url."""
    ciphertext, encryptor = _encrypt(b"hello world")
    info = encryptor.file_info("mxc://example.org/xyz", mimetype="text/plain")
    assert set(info) == {"v", "key", "iv", "hashes", "url", "mimetype"}
    assert info["v"] == "v2"
    assert info["url"] == "mxc://example.org/xyz"
    assert info["mimetype"] == "text/plain"
    key = info["key"]
    assert {k: key[k] for k in ("kty", "alg", "ext", "key_ops")} == {
        "kty": "oct", "alg": "A256CTR", "ext": True, "key_ops": ["encrypt", "decrypt"],
    }  # fmt: skip
    for text in (key["k"], info["iv"], info["hashes"]["sha256"]):
        assert "=" not in text
    assert "+" not in key["k"] and "/" not in key["k"]
    assert len(base64.urlsafe_b64decode(key["k"] + "=")) == 32
    iv = base64.b64decode(info["iv"] + "==")
    assert len(iv) == 16 and iv[8:] == b"\x00" * 8
    assert base64.b64decode(info["hashes"]["sha256"] + "=") == hashlib.sha256(ciphertext).digest()
    assert "mimetype" not in encryptor.file_info("mxc://example.org/xyz")


def test_each_encryptor_has_a_fresh_key_and_iv() -> None:
    """Two encryptions of the same bytes share neither key, IV nor ciphertext."""
    c1, e1 = _encrypt(b"same")
    c2, e2 = _encrypt(b"same")
    i1, i2 = e1.file_info("mxc://a/b"), e2.file_info("mxc://a/b")
    assert i1["key"]["k"] != i2["key"]["k"]
    assert i1["iv"] != i2["iv"]
    assert c1 != c2


def test_encryptor_misuse_is_refused() -> None:
    """The file block exists only after finalize, and nothing may follow finalize."""
    encryptor = AttachmentEncryptor()
    encryptor.update(b"abc")
    with pytest.raises(RuntimeError):
        encryptor.file_info("mxc://a/b")
    encryptor.finalize()
    with pytest.raises(RuntimeError):
        encryptor.update(b"more")
    with pytest.raises(RuntimeError):
        encryptor.finalize()


def _flip_first(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x80])


TAMPERINGS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("first byte flipped", _flip_first),
    ("last byte flipped", _flip_last),
    ("truncated", lambda d: d[:-1]),
    ("extended", lambda d: d + b"\x00"),
    ("emptied", lambda d: b""),
]


@pytest.mark.parametrize(("_name", "tamper"), TAMPERINGS)
def test_tampered_ciphertext_is_rejected(_name: str, tamper: Callable[[bytes], bytes]) -> None:
    """Any change to the ciphertext fails the checksum at finalize."""
    ciphertext, encryptor = _encrypt(os.urandom(3000))
    info = encryptor.file_info("mxc://a/b")
    decryptor = AttachmentDecryptor(info)
    for chunk in _chunks(tamper(ciphertext), 1000):
        decryptor.update(chunk)
    with pytest.raises(BadEncryptedFile) as caught:
        decryptor.finalize()
    assert caught.value.reason == TAMPERED == str(caught.value)


def test_wrong_hash_in_event_is_rejected() -> None:
    """A file block whose hash belongs to other data is rejected even for intact ciphertext."""
    ciphertext, encryptor = _encrypt(b"payload")
    info = encryptor.file_info("mxc://a/b")
    info["hashes"]["sha256"] = _b64(hashlib.sha256(b"other").digest())
    with pytest.raises(BadEncryptedFile, match="checksum does not match"):
        _decrypt(ciphertext, info)


def _valid_info() -> dict[str, Any]:
    _, encryptor = _encrypt(b"x")
    return encryptor.file_info("mxc://a/b")


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(info: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = info
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(info: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = info
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no version", _delete("v"), "the file's encryption version is missing; only v2 is supported"),
    ("v1", _set("v", "v1"), "the file's encryption version is 'v1'; only v2 is supported"),
    ("no key", _delete("key"), "the file's decryption key is missing"),
    ("key not a dict", _set("key", "abc"), "the file's decryption key is missing"),
    ("no k", _delete("key.k"), "the file's decryption key is missing"),
    ("k not a string", _set("key.k", 12345), "the file's decryption key is not valid base64"),
    ("k not base64", _set("key.k", "not base64!"), "the file's decryption key is not valid base64"),
    ("k non-ascii", _set("key.k", "\u00e9" * 43), "the file's decryption key is not valid base64"),
    ("k too short", _set("key.k", _b64(b"k" * 16)),
     "the file's decryption key is 16 bytes long instead of 32"),
    ("k too long", _set("key.k", _b64(b"k" * 33)),
     "the file's decryption key is 33 bytes long instead of 32"),
    ("wrong kty", _set("key.kty", "RSA"), "the file's decryption key is not a symmetric key"),
    ("wrong alg", _set("key.alg", "A128CBC"),
     "the file is encrypted with an unsupported algorithm (only A256CTR is supported)"),
    ("no alg", _delete("key.alg"),
     "the file is encrypted with an unsupported algorithm (only A256CTR is supported)"),
    ("key_ops without decrypt", _set("key.key_ops", ["encrypt"]),
     "the file's decryption key may not be used to decrypt"),
    ("key_ops not a list", _set("key.key_ops", "decrypt"),
     "the file's decryption key may not be used to decrypt"),
    ("no iv", _delete("iv"), "the file's initialisation vector (iv) is missing"),
    ("iv not base64", _set("iv", "@@@@"),
     "the file's initialisation vector (iv) is not valid base64"),
    ("iv 8 bytes", _set("iv", _b64(b"\x01" * 8)),
     "the file's initialisation vector (iv) is 8 bytes long instead of 16"),
    ("iv 32 bytes", _set("iv", _b64(b"\x01" * 32)),
     "the file's initialisation vector (iv) is 32 bytes long instead of 16"),
    ("no hashes", _delete("hashes"), "the file's checksum (hashes.sha256) is missing"),
    ("no sha256", _set("hashes", {"sha512": "abc"}),
     "the file's checksum (hashes.sha256) is missing"),
    ("hashes not a dict", _set("hashes", "abc"), "the file's checksum (hashes.sha256) is missing"),
    ("sha256 too short", _set("hashes.sha256", _b64(b"h" * 20)),
     "the file's checksum (hashes.sha256) is malformed"),
    ("sha256 not base64", _set("hashes.sha256", "%%%"),
     "the file's checksum (hashes.sha256) is malformed"),
]  # fmt: skip


@pytest.mark.parametrize(("_name", "mutate", "reason"), MALFORMED)
def test_malformed_file_blocks_are_rejected_with_clear_reasons(
    _name: str, mutate: Callable[[dict[str, Any]], None], reason: str
) -> None:
    """Each malformed file block is refused up front, saying what is wrong in plain words."""
    info = copy.deepcopy(_valid_info())
    mutate(info)
    with pytest.raises(BadEncryptedFile) as caught:
        AttachmentDecryptor(info)
    assert caught.value.reason == reason


@pytest.mark.parametrize("bad", [None, "file", 42, ["v2"]])
def test_non_mapping_file_block_is_rejected(bad: object) -> None:
    """Something that is not a file block at all is refused, not crashed on."""
    with pytest.raises(BadEncryptedFile, match="encryption details are missing"):
        AttachmentDecryptor(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mutate", "name"),
    [
        (lambda info: _set("key.k", info["key"]["k"] + "=")(info), "padded key"),
        (lambda info: _set("iv", info["iv"] + "==")(info), "padded iv"),
        (lambda info: _set("key.k", info["key"]["k"].replace("-", "+").replace("_", "/"))(info),
         "standard-alphabet key"),
        (_delete("key.key_ops"), "no key_ops"),
        (_delete("key.ext"), "no ext"),
        (_delete("url"), "no url"),
    ],
)  # fmt: skip
def test_tolerated_variations_still_decrypt(
    mutate: Callable[[dict[str, Any]], None], name: str
) -> None:
    """Harmless variations seen from other clients (padding, alphabet, missing extras) work."""
    ciphertext, encryptor = _encrypt(b"tolerant " * 100)
    info = encryptor.file_info("mxc://a/b")
    mutate(info)
    assert _decrypt(ciphertext, info) == b"tolerant " * 100, name


def test_decryptor_misuse_is_refused() -> None:
    """Nothing may follow finalize on a decryptor."""
    ciphertext, encryptor = _encrypt(b"abc")
    decryptor = AttachmentDecryptor(encryptor.file_info("mxc://a/b"))
    decryptor.update(ciphertext)
    decryptor.finalize()
    with pytest.raises(RuntimeError):
        decryptor.update(b"")
    with pytest.raises(RuntimeError):
        decryptor.finalize()


@pytest.mark.parametrize("size", [0, 1, 4096, 1_000_003])
async def test_encrypt_file_and_decrypt_into_round_trip(tmp_path: Path, size: int) -> None:
    """Files encrypted and decrypted on disk in small chunks come back identical, nio agreeing."""
    plaintext = os.urandom(size)
    src, enc, dec = tmp_path / "plain", tmp_path / "cipher", tmp_path / "out"
    src.write_bytes(plaintext)
    encryptor = await encrypt_file(src, enc, chunk_size=65_537)
    info = encryptor.file_info("mxc://example.org/file", mimetype="application/octet-stream")
    ciphertext = enc.read_bytes()
    assert _nio_decrypt(ciphertext, info) == plaintext
    result = await decrypt_into(enc, dec, info, chunk_size=10_007)
    assert result == DecryptedFile(size=size, sha256=hashlib.sha256(plaintext).hexdigest())
    assert dec.read_bytes() == plaintext


async def test_decrypt_into_accepts_nio_ciphertext(tmp_path: Path) -> None:
    """A file nio encrypted decrypts to disk through decrypt_into."""
    plaintext = os.urandom(300_000)
    ciphertext, keys = encrypt_attachment(plaintext)
    (tmp_path / "c").write_bytes(ciphertext)
    result = await decrypt_into(tmp_path / "c", tmp_path / "p", keys, chunk_size=4096)
    assert result.size == len(plaintext)
    assert (tmp_path / "p").read_bytes() == plaintext


async def test_decrypt_into_removes_unverified_output(tmp_path: Path) -> None:
    """When the checksum fails, the partly written plaintext is deleted and the error raised."""
    ciphertext, keys = encrypt_attachment(os.urandom(50_000))
    (tmp_path / "c").write_bytes(_flip_last(ciphertext))
    with pytest.raises(BadEncryptedFile) as caught:
        await decrypt_into(tmp_path / "c", tmp_path / "p", keys, chunk_size=4096)
    assert caught.value.reason == TAMPERED
    assert not (tmp_path / "p").exists()


async def test_decrypt_into_rejects_a_bad_block_before_writing(tmp_path: Path) -> None:
    """A malformed file block is refused before any output file is created."""
    (tmp_path / "c").write_bytes(b"whatever")
    info = _valid_info()
    info["v"] = "v3"
    with pytest.raises(BadEncryptedFile, match="'v3'; only v2"):
        await decrypt_into(tmp_path / "c", tmp_path / "p", info)
    assert not (tmp_path / "p").exists()


async def test_encrypt_file_missing_source_leaves_nothing(tmp_path: Path) -> None:
    """Encrypting a file that does not exist raises and leaves no output behind."""
    with pytest.raises(FileNotFoundError):
        await encrypt_file(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
