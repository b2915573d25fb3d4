"""Per-chunk work of a transfer (hashing, sealing, encrypting, disk I/O) beside the network.

A transfer moves 1 MiB chunks. The work on a chunk (SHA-256, AES, a file read or write) is
blocking and costs milliseconds; on the event loop it stalls every other chat, and handed to
a thread one chunk at a time it still runs *in series* with the network. A
:class:`ChunkWorker` runs it in a worker thread while the loop reads (or sends) the next
chunk: at most one call is pending per transfer, calls run one after another in the order
they were started (so hashes and ciphers see the bytes in order), and the caller never holds
more than the chunk in hand plus the one being worked on: memory stays flat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# glibc's mallopt() parameter for the most malloc arenas a process may make.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2

# Shared by every transfer; each keeps at most one call in it, so a few threads serve many
# transfers. The work is mostly in C (hashlib, OpenSSL, file I/O), which lets go of the GIL.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                  thread_name_prefix="parcel-chunks")


class ChunkWorker:
    """One transfer's blocking per-chunk calls, run in a worker thread one at a time, in order.

    :meth:`submit` waits for the previous call (raising its error) and starts the next, so
    the caller goes on reading the network while the worker works. Use it as an async
    context manager: leaving the block normally waits for the last call; leaving it with an
    error waits (without raising again) until no call is running any more, so a file the
    calls write is never closed under them.
    """

    def __init__(self) -> None:
        self._pending: concurrent.futures.Future[Any] | None = None

    @property
    def busy(self) -> bool:
        """Whether a call was started and its result not yet collected."""
        return self._pending is not None

    def start(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start ``fn(*args)`` in the worker; the previous result must have been collected."""
        if self._pending is not None:
            raise RuntimeError("the previous call's result was not collected")
        self._pending = _EXECUTOR.submit(fn, *args)

    async def result(self) -> Any:
        """Wait for the pending call and return its result (raising its error); None if idle."""
        pending = self._pending
        if pending is None:
            return None
        try:
            return await asyncio.wrap_future(pending)
        finally:
            if pending.done():  # a cancelled wait leaves a running call pending, for settle()
                self._pending = None

    async def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Collect the previous call's result, then start ``fn(*args)``; returns that result."""
        previous = await self.result()
        self.start(fn, *args)
        return previous

    def settle(self) -> None:
        """Block until no call is running (for failure paths; its outcome is dropped).

        At most one chunk's work is waited for, a few milliseconds.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            concurrent.futures.wait([pending])

    async def __aenter__(self) -> ChunkWorker:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.result()
        else:
            self.settle()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process; call it before any thread starts.

    A chunk is allocated in one thread (aiohttp's, on the loop) and freed in another (a
    worker's), and by default glibc gives each thread an arena of its own: the freed chunks
    are kept, scattered over arenas no thread reuses in time, so the resident size grew with
    the file (``bench``'s memory part: +18.8 MiB over idle for 50 MB, +31.6 MiB for 250 MB).
    With two arenas: +17.0 and +21.7 MiB (+14.6 and +24.7 MiB encrypted).
    Returns whether the cap was set: False off glibc (musl, macOS), where it does not apply.
    """
    try:
        # The process's own symbols (libc among them): no library search, no subprocess.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_ARENA_MAX, arenas) != 1:
        logger.debug("mallopt(M_ARENA_MAX, %d) was refused", arenas)
        return False
    return True
