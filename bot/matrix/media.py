"""Streaming media transfer: downloads to disk with a size cap and decryption, uploads from disk.

nio's ``download``/``upload`` have no timeout and cannot stop at a size limit, so Parcel talks
to the media endpoints itself with aiohttp: constant memory, a deadline per transfer. Each call
is one attempt; failures are raised classified (``bot.errors``) and retried by the scheduler.

With a leader lease (instances sharing PostgreSQL) every transfer is bound to the leadership
that started it (the client's :class:`Fence`, the lease): it is refused when the lease is not
held, checked again at every chunk (a clock comparison), and cancelled the moment the lease is
lost even while it waits on the network; either way it ends with
:class:`~bot.leader.NotLeader`, so a deposed leader stops streaming at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

import aiofiles.os
import aiohttp

from bot import errors
from bot.attachments.inspect import StreamingDigest
from bot.attachments.mediacrypto import AttachmentDecryptor, AttachmentEncryptor, new_key_and_iv
from bot.attachments.sealed import Sealer, Unsealer
from bot.errors import NotLeader, PermanentError, TransientError
from bot.matrix.chunks import ChunkWorker

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
OCTET_STREAM = "application/octet-stream"
_MXC = re.compile(r"^mxc://([A-Za-z0-9.\-:\[\]]+)/([A-Za-z0-9_\-]+)$")


class Fence(Protocol):
    """What a transfer is bound to: the leader lease (:class:`bot.leader.Lease`) of this term."""

    lost: asyncio.Event
    """Set once the lease is gone."""

    def check(self) -> None:
        """Raise :class:`~bot.leader.NotLeader` unless the lease is held now (no I/O)."""


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
class Reservation:
    """A content URI the homeserver handed out before its bytes (``POST /media/v1/create``),
    with what the upload to it goes up as: its Content-Type and, for an encrypted room, the
    AES key and IV (base64). Recorded before the upload, so a retry puts the same bytes to
    the same address, or finds them there."""

    uri: str
    content_type: str
    key: str | None = field(default=None, repr=False)
    iv: str | None = field(default=None, repr=False)

    @property
    def encrypted(self) -> bool:
        """Whether the bytes go up encrypted (for an encrypted room)."""
        return self.key is not None

    def encryptor(self) -> AttachmentEncryptor | None:
        """The encryptor of this upload: the same key and IV on every attempt."""
        if self.key is None or self.iv is None:
            return None
        return AttachmentEncryptor(base64.b64decode(self.key), base64.b64decode(self.iv))

    def to_json(self) -> str:
        """The record kept in the store (a secret when encrypted)."""
        return json.dumps({"uri": self.uri, "content_type": self.content_type, "key": self.key,
                           "iv": self.iv})

    @classmethod
    def from_json(cls, text: str) -> Reservation:
        """Read a record written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(str(data["uri"]), str(data["content_type"]), data.get("key"),
                   data.get("iv"))


@dataclass(frozen=True)
class Downloaded:
    """What a finished download measured on the plaintext, and the key it is sealed with."""

    size: int
    sha256: str
    sealed_key: str | None = field(default=None, repr=False)


class GrowingCopy:
    """A download's local copy while it is written, for an upload that follows it.

    The download announces the file's length (:meth:`begin`), says how much of it is on disk
    (:meth:`written`) and how it ended (:meth:`complete`, :meth:`fail`). A reader may read
    only what is *released*: everything written but the last byte, until the download has
    ended well (within the size limit, as long as announced, and for an encrypted upload with
    a matching checksum) and, with ``hold``, until :meth:`release`. So an upload that follows
    a file that turns out bad never completes: the homeserver drops a partial upload.
    """

    def __init__(self, hold: bool = False) -> None:
        # With ``hold`` the last byte waits for :meth:`release` even after the download
        # ended well: the caller's own checks come first.
        self._hold = hold
        self._downloaded = False
        self.size: int | None = None
        self.released = 0
        self._reader: Unsealer | None = None
        self._error: BaseException | None = None
        self._started = asyncio.Event()
        self._changed = asyncio.Event()

    def begin(self, size: int, reader: Unsealer) -> None:
        """The download started: ``size`` bytes are coming, sealed for ``reader``."""
        self.size, self._reader = size, reader
        self._started.set()

    def written(self, count: int) -> None:
        """``count`` bytes of the copy are on disk (flushed)."""
        if self.size is None or self._error is not None:
            return  # not followed (or no longer)
        self.released = max(self.released, min(count, self.size - 1))
        self._changed.set()

    def complete(self, count: int) -> None:
        """The download ended well after ``count`` bytes: all of it may be read."""
        if self._error is not None:
            return
        if count != self.size:
            self.fail(MediaError("the file was not as long as the server said"))
            return
        self._downloaded = True
        if not self._hold:
            self.release()

    def release(self) -> bool:
        """Let the last byte go (the file passed the caller's checks); False if it cannot."""
        if self._error is not None or not self._downloaded or self.size is None:
            return False
        self.released = self.size
        self._changed.set()
        return True

    def fail(self, error: BaseException) -> None:
        """The download failed (or cannot be followed): the reader stops with ``error``."""
        if self._error is None:
            self._error = error
        self._started.set()
        self._changed.set()

    async def started(self) -> tuple[int, Unsealer]:
        """Wait for the download to start; its size and the reader of the sealed bytes."""
        await self._started.wait()
        if self._error is not None:
            raise self._error
        assert self.size is not None and self._reader is not None
        return self.size, self._reader

    async def readable(self, offset: int) -> int:
        """Wait until bytes past ``offset`` are released; how far the copy may be read."""
        while self._error is None and self.released <= offset:
            self._changed.clear()
            await self._changed.wait()
        if self._error is not None:
            raise self._error
        return self.released


def upload_content_type(mimetype: str | None, encrypted: bool) -> str:
    """The Content-Type a file goes up with: its own type, but ciphertext is opaque bytes
    (an encrypted file's real type travels inside the event, not to the media repository)."""
    return OCTET_STREAM if encrypted or not mimetype else mimetype


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
        fence: Fence | None = None,
    ) -> None:
        self._homeserver = homeserver.rstrip("/")
        self._token = token
        self._fence = fence
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

    def _check_fence(self) -> None:
        if self._fence is not None:
            self._fence.check()

    @asynccontextmanager
    async def _fenced(self, what: str) -> AsyncIterator[None]:
        """Run a transfer bound to the fence: refused without the lease, cancelled and raised
        as :class:`NotLeader` as soon as the lease is lost."""
        fence = self._fence
        if fence is None:
            yield
            return
        fence.check()
        task = asyncio.current_task()
        assert task is not None
        cut = False
        active = True

        def lost(_: object) -> None:
            nonlocal cut
            if active and not cut:
                cut = True
                task.cancel("the leader lease was lost")

        watch = asyncio.ensure_future(fence.lost.wait())
        watch.add_done_callback(lost)
        try:
            yield
        except asyncio.CancelledError:
            # Our own cancellation becomes NotLeader; one from outside stays a cancellation.
            if cut and task.uncancel() == 0:
                raise NotLeader(f"{what}: stopped, the leader lease was lost") from None
            raise
        finally:
            active = False  # a callback already scheduled must not cancel what comes next
            watch.cancel()

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
        follow: GrowingCopy | None = None,
    ) -> Downloaded:
        """Stream ``mxc`` into ``dest``, decrypting if needed, stopping past ``max_bytes``.

        With ``seal`` the plaintext is written encrypted under a fresh key
        (:mod:`bot.attachments.sealed`), returned as ``sealed_key``. ``follow`` (with
        ``seal``) is kept told how far ``dest`` is written, for :meth:`upload_following`.

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
            async with (self._fenced(what),
                        self._http().get(url, headers=self._headers()) as response):
                if response.status == 200:
                    return await self._save(response, dest, max_bytes, decryptor,
                                            Sealer() if seal else None, follow)
                if response.status in (404, 403):
                    raise MediaError("the file is not available on the server any more",
                                     code="M_NOT_FOUND")
                raise await _refusal(response, what)
        except BaseException as exc:
            dest.unlink(missing_ok=True)  # noqa: ASYNC240 - local metadata; also on cancellation
            if follow is not None:
                follow.fail(exc)
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
        follow: GrowingCopy | None = None,
    ) -> Downloaded:
        digest = StreamingDigest()
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise TooLarge(max_bytes)
        received = written = 0
        out = await asyncio.to_thread(dest.open, "wb")
        # Only now may the follower open the file: told before it exists, it could lose that
        # race and stage only after the verdict.
        if follow is not None:
            if declared and sealer is not None:  # the follower's upload needs its length
                follow.begin(declared, sealer.reader())
            else:
                follow.fail(MediaError("the file's length was not announced"))
        try:
            # Decrypting, hashing, sealing and writing chunk N run in a worker thread while
            # chunk N+1 comes in from the network.
            async with ChunkWorker() as worker:
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    self._check_fence()
                    # AES-CTR keeps lengths: the plaintext is as long as what came in.
                    received += len(chunk)
                    if received > max_bytes:
                        raise TooLarge(max_bytes)
                    written += await worker.submit(_store_chunk, out, chunk, decryptor, digest,
                                                   sealer) or 0
                    if follow is not None:
                        follow.written(written)
                written += await worker.submit(_store_tail, out, decryptor, digest,
                                               sealer) or 0
                written += await worker.result() or 0
        finally:
            out.close()  # buffers were flushed chunk by chunk: this only releases the handle
        if follow is not None:
            follow.complete(written)
        return Downloaded(size=digest.size, sha256=digest.hexdigest(),
                          sealed_key=sealer.key() if sealer is not None else None)

    async def reserve(self, content_type: str, encrypt: bool) -> Reservation | None:
        """Ask the homeserver for a content URI before uploading (``POST /media/v1/create``,
        Matrix 1.7), so the caller can record where the bytes will be before sending them.

        None when the homeserver grants none: it does not know the endpoint, or the bot has
        as many pending reservations as it allows (Synapse's ``max_pending_media_uploads``;
        its answer would make us wait until the oldest expires, up to a day). Transient
        failures are raised.
        """
        url = f"{self._homeserver}/_matrix/media/v1/create"
        what = "reserving a content URI"
        try:
            async with self._http().post(url, json={}, headers=self._headers()) as response:
                if response.status != 200:
                    refusal = await _refusal(response, what)
                    if response.status in (400, 404, 405) or (
                        isinstance(refusal, TransientError)
                        and response.status == 429
                        and (refusal.retry_after is None or refusal.retry_after > 60)
                    ):
                        logger.info("%s: the homeserver grants none (HTTP %d); uploading "
                                    "without one", what, response.status)
                        return None
                    raise refusal
                body = await response.json(content_type=None)
        except errors.WorkError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        uri = body.get("content_uri") if isinstance(body, dict) else None
        parse_mxc(uri)
        content_type = upload_content_type(content_type, encrypt)
        if not encrypt:
            return Reservation(str(uri), content_type)
        key, iv = new_key_and_iv()
        return Reservation(str(uri), content_type, base64.b64encode(key).decode(),
                           base64.b64encode(iv).decode())

    async def upload(
        self, path: Path, content_type: str, filename: str, *, encrypt: bool = False,
        sealed_key: str | None = None, reserved: Reservation | None = None,
    ) -> Uploaded:
        """Stream the file at ``path`` to the content repository as a new upload.

        With ``encrypt``, the bytes are encrypted on the way (a fresh key per attempt), so no
        ciphertext copy is written to disk. The plaintext is hashed as it is read, so the
        caller can check it is still the file it inspected. A file sealed at rest is decrypted
        on the way with ``sealed_key``. With ``reserved`` the bytes go to that URI, as it
        says (type, key): when an earlier attempt already put them there, they are read back
        and measured instead of uploaded again (:meth:`_read_back`).
        """
        size = (await aiofiles.os.stat(path)).st_size
        unsealer = Unsealer(sealed_key) if sealed_key else None
        return await self._post(path, size, content_type, filename, encrypt, unsealer, None,
                                reserved)

    async def upload_following(
        self, path: Path, copy: GrowingCopy, content_type: str, filename: str, *,
        encrypt: bool = False, reserved: Reservation | None = None,
    ) -> Uploaded:
        """Upload the sealed copy a download is writing at ``path`` while it is written.

        Reads only what ``copy`` released; when the download fails the upload is abandoned
        before its last byte, so the homeserver never completes a bad file.
        """
        size, unsealer = await copy.started()
        return await self._post(path, size, content_type, filename, encrypt, unsealer, copy,
                                reserved)

    async def _post(
        self, path: Path, size: int, content_type: str, filename: str, encrypt: bool,
        unsealer: Unsealer | None, growing: GrowingCopy | None,
        reserved: Reservation | None = None,
    ) -> Uploaded:
        name = quote(filename, safe="")
        if reserved is not None:
            server, media_id = parse_mxc(reserved.uri)
            url = (f"{self._homeserver}/_matrix/media/v3/upload/{quote(server, safe='')}/"
                   f"{quote(media_id, safe='')}?filename={name}")
            content_type, encryptor = reserved.content_type, reserved.encryptor()
        else:
            url = f"{self._homeserver}/_matrix/media/v3/upload?filename={name}"
            content_type = upload_content_type(content_type, encrypt)
            encryptor = AttachmentEncryptor() if encrypt else None
        headers = self._headers({"Content-Type": content_type, "Content-Length": str(size)})
        digest = StreamingDigest()
        what = f"uploading {filename}"
        try:
            async with self._fenced(what), self._http().request(
                "PUT" if reserved is not None else "POST",
                url, data=_read_chunks(path, size, digest, encryptor, unsealer, growing,
                                       self._check_fence),
                headers=headers,
            ) as response:
                if response.status == 409 and reserved is not None:
                    # M_CANNOT_OVERWRITE_MEDIA: an earlier attempt's bytes are there.
                    body = None
                elif response.status != 200:
                    if response.status == 413:
                        raise MediaError("the file is larger than the homeserver allows",
                                         code="M_TOO_LARGE")
                    raise await _refusal(response, what)
                else:
                    body = await response.json(content_type=None)
        except errors.WorkError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, once
            # The body's own fence check comes back wrapped by aiohttp ("failed to send").
            self._check_fence()
            raise errors.from_exception(exc, what) from exc
        if reserved is not None:
            if body is None:
                logger.info("%s: %s has its bytes already; reading them back", what,
                            reserved.uri)
                return await self._read_back(reserved, size)
            uri: object = reserved.uri
        else:
            uri = body.get("content_uri") if isinstance(body, dict) else None
        parse_mxc(uri)
        if digest.size != size:
            raise MediaError("the file changed while it was being uploaded")
        if encryptor is not None:
            # CTR has no final block; finalize only seals the checksum. aiohttp stops pulling
            # at Content-Length, so it is done here, not at EOF.
            encryptor.finalize()
        return Uploaded(str(uri), digest.hexdigest(), encryptor)

    async def _read_back(self, reserved: Reservation, size: int) -> Uploaded:
        """What an earlier upload to ``reserved`` put there, measured as :meth:`upload`
        measures what it sends (the plaintext's SHA-256; for an encrypted upload the same
        key and IV give the ciphertext's hash for the event's ``file`` block)."""
        server, media_id = parse_mxc(reserved.uri)
        url = (f"{self._homeserver}/_matrix/client/v1/media/download/"
               f"{quote(server, safe='')}/{quote(media_id, safe='')}")
        encryptor = reserved.encryptor()
        decryptor = encryptor.decryptor() if encryptor is not None else None
        digest = StreamingDigest()
        what = f"reading back {reserved.uri}"
        try:
            async with self._http().get(url, headers=self._headers()) as response:
                if response.status != 200:
                    raise await _refusal(response, what)
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    if digest.size + len(chunk) > size:
                        raise MediaError("the reserved upload is not the file")
                    plain = decryptor.update(chunk) if decryptor is not None else chunk
                    digest.update(plain)
                    if encryptor is not None:
                        encryptor.update(plain)  # the same ciphertext again, to hash it
        except errors.WorkError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        if digest.size != size:
            raise MediaError("the reserved upload is not the file")
        if encryptor is not None:
            encryptor.finalize()
        return Uploaded(reserved.uri, digest.hexdigest(), encryptor)

    async def discard(self, reserved: Reservation) -> bool:
        """Give up a reservation: delete it where the bot may (:meth:`purge`), else close it
        with an empty upload if it has no bytes yet, so it stops counting against the
        homeserver's limit of pending uploads. True when it is deleted."""
        if await self.purge(reserved.uri):
            return True
        server, media_id = parse_mxc(reserved.uri)
        url = (f"{self._homeserver}/_matrix/media/v3/upload/{quote(server, safe='')}/"
               f"{quote(media_id, safe='')}")
        headers = self._headers({"Content-Type": OCTET_STREAM, "Content-Length": "0"})
        try:
            async with self._http().put(url, data=b"", headers=headers) as response:
                if response.status not in (200, 409):  # 409: it has its bytes, left as is
                    logger.info("closing the reservation %s: HTTP %d", reserved.uri,
                                response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.info("closing the reservation %s failed: %r", reserved.uri, exc)
        return False

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


def _store_chunk(
    out: BinaryIO, chunk: bytes, decryptor: AttachmentDecryptor | None,
    digest: StreamingDigest, sealer: Sealer | None,
) -> int:
    """Worker side of a download: decrypt, hash, seal and write one chunk; bytes written."""
    plain = decryptor.update(chunk) if decryptor is not None else chunk
    digest.update(plain)
    data = sealer.update(plain) if sealer is not None else plain
    out.write(data)
    out.flush()  # a follower reads it through another handle
    return len(data)


def _store_tail(
    out: BinaryIO, decryptor: AttachmentDecryptor | None, digest: StreamingDigest,
    sealer: Sealer | None,
) -> int:
    """Worker side of a download's end: check the checksum, write what is left (CTR: nothing)."""
    if decryptor is None:
        return 0
    tail = decryptor.finalize()  # raises BadEncryptedFile on a checksum mismatch
    if not tail:
        return 0
    return _store_chunk(out, tail, None, digest, sealer)


def _load_chunk(
    handle: BinaryIO, count: int, digest: StreamingDigest,
    encryptor: AttachmentEncryptor | None, unsealer: Unsealer | None,
) -> bytes:
    """Worker side of an upload: read, unseal, hash and encrypt the next ``count`` bytes."""
    chunk = handle.read(count)
    if len(chunk) != count:
        raise MediaError("the file changed while it was being uploaded")
    if unsealer is not None:
        chunk = unsealer.update(chunk)
    digest.update(chunk)
    return encryptor.update(chunk) if encryptor is not None else chunk


async def _read_chunks(
    path: Path, size: int, digest: StreamingDigest, encryptor: AttachmentEncryptor | None,
    unsealer: Unsealer | None = None, growing: GrowingCopy | None = None,
    check: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """The upload's body: the next chunk is read and prepared in a worker thread while
    aiohttp sends this one. With ``growing``, only what the download released is read;
    ``check`` runs before each chunk goes out (the fence)."""
    handle = await asyncio.to_thread(path.open, "rb")
    asked = 0

    def ask(limit: int) -> None:
        nonlocal asked
        count = min(CHUNK_SIZE, limit - asked)
        worker.start(_load_chunk, handle, count, digest, encryptor, unsealer)
        asked += count

    try:
        async with ChunkWorker() as worker:
            while asked < size or worker.busy:
                if not worker.busy:
                    ask(await growing.readable(asked) if growing is not None else size)
                chunk = await worker.result()
                released = growing.released if growing is not None else size
                if asked < released:
                    ask(released)  # read ahead while this chunk is sent
                if check is not None:
                    check()
                yield chunk
    finally:
        handle.close()


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
