"""Matrix encrypted attachments (client-server API, "Sending encrypted attachments"), streamed.

AES-256-CTR with a JWK key, a 16-byte IV whose low 8 bytes (the counter) start at zero, and
``hashes.sha256``: the SHA-256 of the *ciphertext*, unpadded standard base64, version "v2".
Both directions work chunk by chunk in constant memory. Decrypted bytes come out before the
checksum can be verified (at :meth:`AttachmentDecryptor.finalize`), so callers write them to a
temporary file and discard it when finalize raises; :func:`decrypt_into` does exactly that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from bot.errors import PermanentError

CHUNK_SIZE = 1 << 20
_KEY_BYTES = 32
_IV_BYTES = 16
_BLOCK = 16
_COUNTER_SPACE = 1 << 64


class BadEncryptedFile(PermanentError):
    """An encrypted attachment that cannot be decrypted; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="bad_encryption")


def _unpadded_b64(data: bytes, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def _b64decode(value: object) -> bytes | None:
    """Decode unpadded (or padded) base64, standard or URL-safe alphabet; None if invalid."""
    if not isinstance(value, str) or not value.isascii():
        return None
    text = value.rstrip("=").replace("-", "+").replace("_", "/")
    if len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_key(jwk: object) -> bytes:
    if not isinstance(jwk, Mapping):
        raise BadEncryptedFile("the file's decryption key is missing")
    if jwk.get("kty") != "oct":
        raise BadEncryptedFile("the file's decryption key is not a symmetric key")
    if jwk.get("alg") != "A256CTR":
        raise BadEncryptedFile(
            "the file is encrypted with an unsupported algorithm (only A256CTR is supported)"
        )
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "decrypt" not in key_ops):
        raise BadEncryptedFile("the file's decryption key may not be used to decrypt")
    if "k" not in jwk:
        raise BadEncryptedFile("the file's decryption key is missing")
    key = _b64decode(jwk["k"])
    if key is None:
        raise BadEncryptedFile("the file's decryption key is not valid base64")
    if len(key) != _KEY_BYTES:
        raise BadEncryptedFile(
            f"the file's decryption key is {len(key)} bytes long instead of {_KEY_BYTES}"
        )
    return key


def _parse_iv(value: object) -> bytes:
    if value is None:
        raise BadEncryptedFile("the file's initialisation vector (iv) is missing")
    iv = _b64decode(value)
    if iv is None:
        raise BadEncryptedFile("the file's initialisation vector (iv) is not valid base64")
    if len(iv) != _IV_BYTES:
        raise BadEncryptedFile(
            f"the file's initialisation vector (iv) is {len(iv)} bytes long instead of {_IV_BYTES}"
        )
    return iv


def _parse_sha256(hashes: object) -> bytes:
    if not isinstance(hashes, Mapping) or "sha256" not in hashes:
        raise BadEncryptedFile("the file's checksum (hashes.sha256) is missing")
    digest = _b64decode(hashes["sha256"])
    if digest is None or len(digest) != hashlib.sha256().digest_size:
        raise BadEncryptedFile("the file's checksum (hashes.sha256) is malformed")
    return digest


def key_and_iv(file_info: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The AES key and the IV of a ``file`` block; raises :class:`BadEncryptedFile`."""
    if not isinstance(file_info, Mapping):
        raise BadEncryptedFile("the file's encryption details are missing")
    return _parse_key(file_info.get("key")), _parse_iv(file_info.get("iv"))


class AttachmentDecryptor:
    """Decrypts one encrypted attachment chunk by chunk and checks its ciphertext hash.

    Built from the event's ``file`` block; raises :class:`BadEncryptedFile` at once if the
    block is unusable, and from :meth:`finalize` if the checksum does not match.
    """

    def __init__(self, file_info: Mapping[str, Any]) -> None:
        if not isinstance(file_info, Mapping):
            raise BadEncryptedFile("the file's encryption details are missing")
        version = file_info.get("v")
        if version != "v2":
            shown = "missing" if version is None else repr(version)[:20]
            raise BadEncryptedFile(
                f"the file's encryption version is {shown}; only v2 is supported"
            )
        key = _parse_key(file_info.get("key"))
        iv = _parse_iv(file_info.get("iv"))
        self._expected = _parse_sha256(file_info.get("hashes"))
        # cryptography's CTR counter is the whole 128-bit block; Matrix's is the low 64 bits.
        # They only differ if the low half wraps, which is refused in update().
        self._blocks_left = _COUNTER_SPACE - int.from_bytes(iv[8:], "big")
        self._cipher: CipherContext = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
        self._hash = hashlib.sha256()
        self._size = 0
        self._finalized = False

    def update(self, chunk: bytes) -> bytes:
        """Decrypt the next chunk of ciphertext (and add it to the checksum)."""
        if self._finalized:
            raise RuntimeError("update() after finalize()")
        self._size += len(chunk)
        if -(-self._size // _BLOCK) > self._blocks_left:
            raise BadEncryptedFile("the file's encryption counter overflows: it is damaged")
        self._hash.update(chunk)
        return self._cipher.update(chunk)

    def finalize(self) -> bytes:
        """Finish decryption; raises :class:`BadEncryptedFile` if the checksum does not match."""
        if self._finalized:
            raise RuntimeError("finalize() called twice")
        self._finalized = True
        tail = self._cipher.finalize()
        if not hmac.compare_digest(self._hash.digest(), self._expected):
            raise BadEncryptedFile("the file's checksum does not match: it was altered or damaged")
        return tail

    @property
    def ciphertext_size(self) -> int:
        """Bytes of ciphertext fed so far."""
        return self._size


def new_key_and_iv() -> tuple[bytes, bytes]:
    """A fresh AES key and IV for one attachment (the IV's counter half starts at zero)."""
    # 8 random bytes of nonce, then the 64-bit counter starting at zero.
    return os.urandom(_KEY_BYTES), os.urandom(8) + b"\x00" * 8


class AttachmentEncryptor:
    """Encrypts one attachment chunk by chunk, with a fresh random key and IV unless given
    (the same key and IV over the same plaintext give the same ciphertext: a repeated upload
    to a reserved address can be checked against the first)."""

    def __init__(self, key: bytes | None = None, iv: bytes | None = None) -> None:
        if key is None or iv is None:
            key, iv = new_key_and_iv()
        self._key, self._iv = key, iv
        self._cipher: CipherContext = Cipher(
            algorithms.AES(self._key), modes.CTR(self._iv)
        ).encryptor()
        self._hash = hashlib.sha256()
        self._size = 0
        self._digest: bytes | None = None

    def update(self, chunk: bytes) -> bytes:
        """Encrypt the next chunk of plaintext; returns ciphertext of the same length."""
        if self._digest is not None:
            raise RuntimeError("update() after finalize()")
        out = self._cipher.update(chunk)
        self._hash.update(out)
        self._size += len(out)
        return out

    def finalize(self) -> bytes:
        """Finish encryption; returns any last ciphertext (always empty for CTR)."""
        if self._digest is not None:
            raise RuntimeError("finalize() called twice")
        tail = self._cipher.finalize()
        self._hash.update(tail)
        self._size += len(tail)
        self._digest = self._hash.digest()
        return tail

    @property
    def ciphertext_size(self) -> int:
        """Bytes of ciphertext produced so far (equal to the plaintext size)."""
        return self._size

    def decryptor(self) -> CipherContext:
        """A decryptor of this stream's ciphertext from its first byte (to read back a copy
        while it is still being written)."""
        return Cipher(algorithms.AES(self._key), modes.CTR(self._iv)).decryptor()

    def file_info(self, url: str, mimetype: str | None = None) -> dict[str, Any]:
        """Return the complete ``file`` block for the event: v2, key, iv, hashes, url.

        Adds ``mimetype`` when given. Only valid after :meth:`finalize`.
        """
        if self._digest is None:
            raise RuntimeError("file_info() before finalize()")
        info: dict[str, Any] = {
            "v": "v2",
            "key": {
                "kty": "oct",
                "alg": "A256CTR",
                "ext": True,
                "k": _unpadded_b64(self._key, urlsafe=True),
                "key_ops": ["encrypt", "decrypt"],
            },
            "iv": _unpadded_b64(self._iv),
            "hashes": {"sha256": _unpadded_b64(self._digest)},
            "url": url,
        }
        if mimetype is not None:
            info["mimetype"] = mimetype
        return info


@dataclass(frozen=True)
class DecryptedFile:
    """Size and hex SHA-256 of the plaintext written by :func:`decrypt_into`."""

    size: int
    sha256: str


async def encrypt_file(src: Path, dst: Path, chunk_size: int = CHUNK_SIZE) -> AttachmentEncryptor:
    """Encrypt ``src`` into ``dst`` chunk by chunk; returns the finalized encryptor.

    Call ``file_info(url)`` on the result once the ciphertext is uploaded. ``dst`` is removed
    if encryption fails part-way.
    """
    encryptor = AttachmentEncryptor()
    try:
        async with aiofiles.open(src, "rb") as reader, aiofiles.open(dst, "wb") as writer:
            while chunk := await reader.read(chunk_size):
                await writer.write(encryptor.update(chunk))
            await writer.write(encryptor.finalize())
    except BaseException:
        await _remove_quietly(dst)
        raise
    return encryptor


async def decrypt_into(
    src: Path,
    dst: Path,
    file_info: Mapping[str, Any],
    chunk_size: int = CHUNK_SIZE,
) -> DecryptedFile:
    """Decrypt the ciphertext in ``src`` into ``dst`` using the event's ``file`` block.

    Returns the plaintext's size and SHA-256 (hashed on the way, ready for ``inspect_file``).
    Raises :class:`BadEncryptedFile` if the block is unusable or the checksum does not match;
    ``dst`` is then removed, so no unverified plaintext is left behind.
    """
    decryptor = AttachmentDecryptor(file_info)
    plain_hash = hashlib.sha256()
    size = 0
    try:
        async with aiofiles.open(src, "rb") as reader, aiofiles.open(dst, "wb") as writer:
            while chunk := await reader.read(chunk_size):
                out = decryptor.update(chunk)
                plain_hash.update(out)
                size += len(out)
                await writer.write(out)
            tail = decryptor.finalize()
            plain_hash.update(tail)
            size += len(tail)
            await writer.write(tail)
    except BaseException:
        await _remove_quietly(dst)
        raise
    return DecryptedFile(size=size, sha256=plain_hash.hexdigest())


async def _remove_quietly(path: Path) -> None:
    try:
        await aiofiles.os.remove(path)
    except FileNotFoundError:
        pass
