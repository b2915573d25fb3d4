"""The inspection floor: what no inspecting bot can beat, measured beside it in the same run.

Parcel must fetch a file before it can say what it is, so its offer can never come sooner
than the plain relay's forward (two hops through the homeserver) *plus* one download of the
same file from the same Synapse. :class:`Downloader` times that download as a client does
it: the authenticated media endpoint, the body streamed to a file on disk in 64 KiB pieces
(a bot may not hold a file in memory either), nothing else (no hashing, no decryption: an
encrypted file's ciphertext is downloaded, as a client must before it can decrypt).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bench.harness import BenchError

CHUNK = 1 << 16


def mxc_of(media: dict) -> str:
    """The content URI of a file message's media part (``url`` or ``file.url``)."""
    uri = media.get("url") or (media.get("file") or {}).get("url")
    if not isinstance(uri, str) or not uri.startswith("mxc://"):
        raise BenchError(f"no content URI in {media!r}")
    return uri


class Downloader:
    """Times downloads with one user's token; one HTTP session, reused like a client's."""

    def __init__(self, homeserver_url: str, access_token: str, scratch: Path) -> None:
        self.url = homeserver_url.rstrip("/")
        self.token = access_token
        self.scratch = scratch
        self._session: aiohttp.ClientSession | None = None

    async def seconds(self, mxc: str, expected_size: int | None = None) -> float:
        """Seconds from sending the request to the last byte written; checks the size."""
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        url = (f"{self.url}/_matrix/client/v1/media/download/"
               f"{quote(server, safe='')}/{quote(media_id, safe='')}")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        self.scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.scratch, prefix="floor-")
        path = Path(name)
        size = 0
        try:
            # Plain blocking 64 KiB writes to the page cache: the cheapest a client can do.
            with open(handle, "wb") as out:  # noqa: ASYNC230
                began = time.perf_counter()
                async with self._session.get(
                        url, headers={"Authorization": f"Bearer {self.token}"}) as response:
                    if response.status != 200:
                        raise BenchError(f"downloading {mxc}: HTTP {response.status}")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                elapsed = time.perf_counter() - began
        finally:
            path.unlink(missing_ok=True)
        if expected_size is not None and size < expected_size:
            raise BenchError(f"downloading {mxc}: {size} bytes, expected {expected_size}")
        return elapsed

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
