"""Streaming media transfer: downloads to disk with a size cap and decryption, uploads from disk.

nio's ``download``/``upload`` have no timeout and cannot stop at a size limit, so Parcel talks
to the media endpoints itself with aiohttp: constant memory, a deadline per transfer. Each call
is one attempt; failures are raised classified (``bot.errors``) and retried by the scheduler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiofiles
import aiofiles.os
import aiohttp

from bot import errors
from bot.attachments.inspect import StreamingDigest
from bot.attachments.mediacrypto import AttachmentDecryptor, AttachmentEncryptor
from bot.attachments.sealed import Sealer, Unsealer
from bot.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
_MXC = re.compile(r"^mxc://([A-Za-z0-9.\-:\[\]]+)/([A-Za-z0-9_\-]+)$")


class MediaError(PermanentError):
    """A transfer failed for good; ``reason`` is fit to show to the person who sent the file."""

    def __init__(self, reason: str, code: str = "media") -> None:
        super().__init__(reason, code)


class TooLarge(MediaError):
    """The download passed the size limit; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__("it is larger than the limit", code="too_large")
        self.limit = limit


@dataclass(frozen=True)
class Uploaded:
    """A finished upload: its URI, the SHA-256 of the plaintext sent, and the encryption used."""

    uri: str
    sha256: str
    encryptor: AttachmentEncryptor | None

    def file_block(self, mimetype: str | None) -> dict[str, Any] | None:
        """The event's ``file`` block for an encrypted upload, else None."""
        if self.encryptor is None:
            return None
        return self.encryptor.file_info(self.uri, mimetype)


@dataclass(frozen=True)
class Downloaded:
    """What a finished download measured on the plaintext, and the key it is sealed with."""

    size: int
    sha256: str
    sealed_key: str | None = field(default=None, repr=False)


def parse_mxc(uri: object) -> tuple[str, str]:
    """Split an ``mxc://server/id`` URI, refusing anything else."""
    if not isinstance(uri, str):
        raise MediaError("the message has no valid file address")
    match = _MXC.match(uri)
    if match is None:
        raise MediaError("the message has no valid file address")
    return match.group(1), match.group(2)


class MediaClient:
    """Uploads and downloads with the bot's access token."""

    def __init__(
        self,
        homeserver: str,
        token: Callable[[], str],
        transfer_timeout: float,
    ) -> None:
        self._homeserver = homeserver.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=transfer_timeout, sock_connect=15)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token()}"}
        headers.update(extra or {})
        return headers

    async def download(
        self,
        mxc: str,
        dest: Path,
        *,
        max_bytes: int,
        encrypted_file: dict[str, Any] | None = None,
        seal: bool = False,
    ) -> Downloaded:
        """Stream ``mxc`` into ``dest``, decrypting if needed, stopping past ``max_bytes``.

        With ``seal`` the plaintext is written encrypted under a fresh key
        (:mod:`bot.attachments.sealed`), returned as ``sealed_key``.

        Raises :class:`TooLarge` or :class:`MediaError` (permanent), the decryptor's
        ``BadEncryptedFile``, or :class:`~bot.errors.TransientError` (try again later).
        ``dest`` is removed on any failure.
        """
        server, media_id = parse_mxc(mxc)
        url = (
            f"{self._homeserver}/_matrix/client/v1/media/download/"
            f"{quote(server, safe='')}/{quote(media_id, safe='')}"
        )
        decryptor = AttachmentDecryptor(encrypted_file) if encrypted_file is not None else None
        what = f"downloading {mxc}"
        try:
            async with self._http().get(url, headers=self._headers()) as response:
                if response.status == 200:
                    return await self._save(response, dest, max_bytes, decryptor,
                                            Sealer() if seal else None)
                if response.status in (404, 403):
                    raise MediaError("the file is not available on the server any more",
                                     code="M_NOT_FOUND")
                raise await _refusal(response, what)
        except BaseException as exc:
            dest.unlink(missing_ok=True)  # noqa: ASYNC240 - local metadata; also on cancellation
            if isinstance(exc, Exception) and not isinstance(exc, errors.WorkError):
                raise errors.from_exception(exc, what) from exc
            raise

    async def _save(
        self,
        response: aiohttp.ClientResponse,
        dest: Path,
        max_bytes: int,
        decryptor: AttachmentDecryptor | None,
        sealer: Sealer | None = None,
    ) -> Downloaded:
        digest = StreamingDigest()
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise TooLarge(max_bytes)
        async with aiofiles.open(dest, "wb") as out:
            async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                plain = decryptor.update(chunk) if decryptor is not None else chunk
                if digest.size + len(plain) > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(plain)
                await out.write(sealer.update(plain) if sealer is not None else plain)
            if decryptor is not None:
                tail = decryptor.finalize()
                if tail:
                    digest.update(tail)
                    await out.write(sealer.update(tail) if sealer is not None else tail)
        return Downloaded(size=digest.size, sha256=digest.hexdigest(),
                          sealed_key=sealer.key() if sealer is not None else None)

    async def upload(
        self, path: Path, content_type: str, filename: str, *, encrypt: bool = False,
        sealed_key: str | None = None,
    ) -> Uploaded:
        """Stream the file at ``path`` to the content repository as a new upload.

        With ``encrypt``, the bytes are encrypted on the way (a fresh key per attempt), so no
        ciphertext copy is written to disk. The plaintext is hashed as it is read, so the
        caller can check it is still the file it inspected. A file sealed at rest is decrypted
        on the way with ``sealed_key``.
        """
        size = (await aiofiles.os.stat(path)).st_size
        url = f"{self._homeserver}/_matrix/media/v3/upload?filename={quote(filename, safe='')}"
        if encrypt:
            content_type = "application/octet-stream"
        headers = self._headers({"Content-Type": content_type, "Content-Length": str(size)})
        encryptor = AttachmentEncryptor() if encrypt else None
        digest = StreamingDigest()
        what = f"uploading {filename}"
        try:
            async with self._http().post(
                url, data=_read_chunks(path, digest, encryptor,
                                       Unsealer(sealed_key) if sealed_key else None),
                headers=headers,
            ) as response:
                if response.status != 200:
                    if response.status == 413:
                        raise MediaError("the file is larger than the homeserver allows",
                                         code="M_TOO_LARGE")
                    raise await _refusal(response, what)
                body = await response.json(content_type=None)
        except errors.WorkError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        uri = body.get("content_uri") if isinstance(body, dict) else None
        parse_mxc(uri)
        if digest.size != size:
            raise MediaError("the file changed while it was being uploaded")
        if encryptor is not None:
            # CTR has no final block; finalize only seals the checksum. aiohttp stops pulling
            # at Content-Length, so it is done here, not at EOF.
            encryptor.finalize()
        return Uploaded(str(uri), digest.hexdigest(), encryptor)

    async def purge(self, mxc: str) -> bool:
        """Delete media from the homeserver with the Synapse admin API (needs admin rights)."""
        try:
            server, media_id = parse_mxc(mxc)
        except MediaError:
            return False
        url = (
            f"{self._homeserver}/_synapse/admin/v1/media/"
            f"{quote(server, safe='')}/{quote(media_id, safe='')}"
        )
        try:
            async with self._http().delete(url, headers=self._headers()) as response:
                if response.status == 200:
                    return True
                if response.status == 403:
                    # Expected for a bot that is not a homeserver admin: the copy stays,
                    # referenced by nothing.
                    logger.info("not purging %s: the bot is not a homeserver admin", mxc)
                else:
                    logger.warning("purging %s: HTTP %d", mxc, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("purging %s failed: %r", mxc, exc)
        return False


async def _read_chunks(
    path: Path, digest: StreamingDigest, encryptor: AttachmentEncryptor | None,
    unsealer: Unsealer | None = None,
) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as handle:
        while chunk := await handle.read(CHUNK_SIZE):
            if unsealer is not None:
                chunk = unsealer.update(chunk)
            digest.update(chunk)
            yield encryptor.update(chunk) if encryptor is not None else chunk


async def _refusal(response: aiohttp.ClientResponse, what: str) -> errors.WorkError:
    """Classify a media endpoint's error answer (429 and 5xx transient, other 4xx permanent)."""
    errcode: str | None = None
    message = ""
    retry_after_ms: object = None
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    if isinstance(body, dict):
        errcode = body.get("errcode") if isinstance(body.get("errcode"), str) else None
        message = str(body.get("error", ""))[:200]
        retry_after_ms = body.get("retry_after_ms")
    error = errors.from_http(response.status, errcode, message or f"HTTP {response.status}",
                             what, retry_after_ms)
    if isinstance(error, TransientError):
        logger.warning("%s: HTTP %d", what, response.status)
        return error
    return MediaError(f"the server refused it ({response.status}: {message or errcode})",
                      code=errcode or f"http_{response.status}")
