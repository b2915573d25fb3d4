"""The checked copy of a file, kept encrypted at rest.

From inspection until the offer settles the bot keeps a copy of the file in
``data_dir/media``. It is written encrypted while it downloads: AES-256-CTR under a fresh
random key per file, the construction Matrix uses for encrypted attachments
(:mod:`bot.attachments.mediacrypto`). The key, a ``file`` block without URL (key, IV, SHA-256
of the ciphertext), lives in the store with the offer, never next to the file. The plaintext
exists only in the streams that read it back:

* :func:`open_sealed`: a seekable, decrypting file object, for inspection (hashing, libmagic,
  zip directories, image headers);
* :class:`Unsealer`: chunk-by-chunk decryption, for the upload of the delivery;
* :func:`plaintext_copy`: a private (0600) temporary plaintext file for the external malware
  scanner, which needs a path; it is deleted as soon as the scan ends.

Everything streams: memory stays flat whatever the file size.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import aiofiles
import aiofiles.os
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from bot.attachments.inspect import FileFacts, inspect_file
from bot.attachments.mediacrypto import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    BadEncryptedFile,
    key_and_iv,
)
from bot.attachments.model import OfferState
from bot.attachments.scanner import ScanResult
from bot.attachments.scanner import scan as run_scanner
from bot.config import ScannerConfig

if TYPE_CHECKING:
    from bot.store import Store

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
PLAIN_SUFFIX = ".plain"  # the scanner's temporary plaintext copies: ".offer-N.<random>.plain"
_BLOCK = 16


class SealedFileError(OSError):
    """A sealed copy that cannot be read back (damaged file or key); redoing the work helps."""


class Sealer:
    """Encrypts one local copy as it is written; :meth:`key` once it is complete."""

    def __init__(self) -> None:
        self._encryptor = AttachmentEncryptor()

    def update(self, chunk: bytes) -> bytes:
        """Encrypt the next chunk of plaintext (same length out)."""
        return self._encryptor.update(chunk)

    def reader(self) -> Unsealer:
        """Decrypts what this sealer writes, from its start: the copy can be read (uploaded)
        while it is still being written, before :meth:`key` exists."""
        return Unsealer.of(self._encryptor.decryptor())

    def key(self) -> str:
        """Finish and return the key to keep in the store (JSON; the file has no tail)."""
        self._encryptor.finalize()
        block = self._encryptor.file_info("")
        block.pop("url")
        return json.dumps(block, separators=(",", ":"))


def _block(key: str) -> dict[str, object]:
    try:
        block = json.loads(key)
    except ValueError:
        raise SealedFileError("the key of the checked copy is damaged") from None
    if not isinstance(block, dict):
        raise SealedFileError("the key of the checked copy is damaged")
    return block


def _unusable(exc: BadEncryptedFile) -> SealedFileError:
    return SealedFileError(f"the key of the checked copy is unusable: {exc.reason}")


class Unsealer:
    """Decrypts a sealed copy read from its start, chunk by chunk (for uploads)."""

    def __init__(self, key: str) -> None:
        try:
            self._decryptor: AttachmentDecryptor | CipherContext = \
                AttachmentDecryptor(_block(key))
        except BadEncryptedFile as exc:
            raise _unusable(exc) from None

    @classmethod
    def of(cls, cipher: CipherContext) -> Unsealer:
        """An unsealer around a CTR decryptor already set to the file's start."""
        unsealer = cls.__new__(cls)
        unsealer._decryptor = cipher
        return unsealer

    def update(self, chunk: bytes) -> bytes:
        """Decrypt the next chunk of the file."""
        return self._decryptor.update(chunk)


class _SealedReader(io.RawIOBase):
    """Random-access decryption: CTR lets any offset be decrypted without what precedes it."""

    def __init__(self, path: Path, key: str) -> None:
        try:
            self._key, iv = key_and_iv(_block(key))
        except BadEncryptedFile as exc:
            raise _unusable(exc) from None
        self._counter = int.from_bytes(iv, "big")
        self._file = path.open("rb")
        self._pos = 0
        self._cipher: CipherContext | None = None
        self._cipher_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = os.fstat(self._file.fileno()).st_size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError("negative seek position")
        self._pos = target
        return target

    def _cipher_at(self, pos: int) -> CipherContext:
        if self._cipher is None or self._cipher_pos != pos:
            block, skip = divmod(pos, _BLOCK)
            counter = ((self._counter + block) % (1 << 128)).to_bytes(16, "big")
            self._cipher = Cipher(algorithms.AES(self._key), modes.CTR(counter)).decryptor()
            self._cipher.update(b"\0" * skip)
            self._cipher_pos = pos
        return self._cipher

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        self._file.seek(self._pos)
        # At most a chunk at a time, so a large read never holds the file twice over.
        data = self._file.read(min(len(buffer), CHUNK_SIZE))
        if not data:
            return 0
        plain = self._cipher_at(self._pos).update(data)
        self._pos += len(data)
        self._cipher_pos = self._pos
        buffer[: len(plain)] = plain
        return len(plain)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_sealed(path: Path, key: str) -> BinaryIO:
    """A seekable binary file object reading the plaintext of the sealed copy at ``path``."""
    return io.BufferedReader(_SealedReader(path, key), CHUNK_SIZE)  # type: ignore[return-value]


def inspect(path: Path, key: str, sha256: str | None = None) -> FileFacts:
    """:func:`~bot.attachments.inspect.inspect_file` on the plaintext of a sealed copy."""
    with open_sealed(path, key) as handle:
        return inspect_file(handle, sha256)


@contextlib.asynccontextmanager
async def plaintext_copy(path: Path, key: str) -> AsyncIterator[Path]:
    """A private (0600) plaintext copy of the sealed file, deleted when the block ends.

    The ciphertext's SHA-256 is checked: a damaged copy raises :class:`SealedFileError`.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PLAIN_SUFFIX, dir=path.parent)
    os.close(fd)
    plain = Path(name)
    try:
        try:
            decryptor = AttachmentDecryptor(_block(key))
            async with aiofiles.open(path, "rb") as reader, aiofiles.open(plain, "wb") as writer:
                while chunk := await reader.read(CHUNK_SIZE):
                    await writer.write(decryptor.update(chunk))
                await writer.write(decryptor.finalize())
        except BadEncryptedFile as exc:
            raise SealedFileError(f"the checked copy {path.name} is damaged: {exc.reason}") \
                from None
        yield plain
    finally:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(plain)


async def scan(path: Path, key: str, scanner: ScannerConfig) -> ScanResult:
    """Run the malware scanner on a plaintext copy that exists only while it runs."""
    async with plaintext_copy(path, key) as plain:
        return await run_scanner(plain, scanner)


def _remove_stale_plaintext(media_dir: Path) -> None:
    if media_dir.is_dir():
        for stale in media_dir.glob(f".*{PLAIN_SUFFIX}"):
            stale.unlink(missing_ok=True)
            logger.warning("removed %s, a plaintext copy for the scanner left by a crash",
                           stale.name)


def _seal_beside(path: Path, sealing: Path, finish_only: bool) -> str | None:
    """Write the sealed copy of ``path`` to ``sealing`` and return its key.

    With ``finish_only`` (the key is recorded already) only a pending replacement is finished.
    None when there is nothing (more) to record. Local file work, once at start-up.
    """
    if finish_only:
        if sealing.exists():
            os.replace(sealing, path)
        return None
    if not path.exists():
        return None  # delivery will report the missing copy
    sealer = Sealer()
    with open(path, "rb") as reader, open(sealing, "wb") as writer:
        while chunk := reader.read(CHUNK_SIZE):
            writer.write(sealer.update(chunk))
        writer.flush()
        os.fsync(writer.fileno())
    return sealer.key()


async def secure_leftovers(store: Store, media_dir: Path) -> int:
    """At start-up: delete the scanner's plaintext copies a crash left behind, and encrypt
    the plaintext copies an older version kept for waiting offers; returns how many of those.

    Crash-safe: the sealed file is written beside the plaintext, its key recorded, then it
    replaces the plaintext; a start that finds a sealed file beside a recorded key finishes
    the replacement.
    """
    _remove_stale_plaintext(media_dir)
    count = 0
    for offer in await store.offers.offers_in_states([OfferState.OFFERED, OfferState.ACCEPTED]):
        if offer.temp_path is None:
            continue
        path = Path(offer.temp_path)
        sealing = path.with_name(path.name + ".sealing")
        key = _seal_beside(path, sealing, finish_only=offer.temp_key is not None)
        if key is None:
            continue
        await store.offers.update_offer(offer.id, temp_key=key)
        os.replace(sealing, path)
        count += 1
    if count:
        logger.warning("encrypted %d checked copies that an older version kept in plain text",
                       count)
    return count
