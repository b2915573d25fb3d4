"""The chunk worker: per-chunk work in a thread, in order, one call pending, errors raised."""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import subprocess
import sys
import threading

import pytest

from bot.matrix.chunks import ChunkWorker


async def test_calls_run_in_the_order_started_and_see_every_chunk() -> None:
    """A hash fed chunk by chunk through the worker equals the hash of the whole."""
    chunks = [bytes([i]) * (1000 + i) for i in range(50)]
    digest = hashlib.sha256()
    order: list[int] = []

    def work(i: int, chunk: bytes) -> int:
        order.append(i)
        digest.update(chunk)
        return len(chunk)

    total = 0
    async with ChunkWorker() as worker:
        for i, chunk in enumerate(chunks):
            total += await worker.submit(work, i, chunk) or 0
        total += await worker.result()
    assert order == list(range(50))
    assert total == sum(len(c) for c in chunks)
    assert digest.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_the_caller_goes_on_while_a_call_runs() -> None:
    """submit returns while the call it started is still running (the overlap)."""
    release = threading.Event()
    async with ChunkWorker() as worker:
        await worker.submit(release.wait, 5)
        assert worker.busy  # started, not finished: the loop is free to read the next chunk
        release.set()


async def test_only_one_call_is_pending_at_a_time() -> None:
    """Starting a call before the previous result was collected is refused (bounded work)."""
    release = threading.Event()
    worker = ChunkWorker()
    worker.start(release.wait, 5)
    with pytest.raises(RuntimeError):
        worker.start(release.wait, 5)
    release.set()
    assert await worker.result() is True
    assert not worker.busy


async def test_an_error_in_a_call_is_raised_by_the_next_submit() -> None:
    """A failed chunk stops the transfer at the next submit, with the call's own error."""

    def fail() -> None:
        raise ValueError("bad chunk")

    ran: list[int] = []
    with pytest.raises(ValueError, match="bad chunk"):
        async with ChunkWorker() as worker:
            await worker.submit(fail)
            await worker.submit(ran.append, 1)
    assert ran == []  # nothing after the failed call ran


async def test_an_error_in_the_last_call_is_raised_on_leaving_the_block() -> None:
    """The final call's failure (a checksum at the end, say) is not lost."""

    def fail() -> None:
        raise ValueError("bad tail")

    with pytest.raises(ValueError, match="bad tail"):
        async with ChunkWorker() as worker:
            await worker.submit(fail)


async def test_leaving_with_an_error_waits_for_the_running_call() -> None:
    """On a failure the block ends only once no call touches the transfer's file any more."""
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    async def fail_while_running() -> None:
        async with ChunkWorker() as worker:
            await worker.submit(slow)
            release.set()  # the call is still finishing when the block is left
            raise OSError("network gone")

    with pytest.raises(OSError, match="network gone"):
        await fail_while_running()
    assert finished.is_set()


async def test_a_cancelled_wait_leaves_the_call_to_settle() -> None:
    """Cancelling the task waiting on a call still lets the block wait for that call."""
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(5)
        finished.set()

    async def transfer() -> None:
        async with ChunkWorker() as worker:
            worker.start(slow)
            await worker.result()

    task = asyncio.create_task(transfer())
    assert await asyncio.to_thread(entered.wait, 5)
    release.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


# A child process that frees chunks in threads other than the one that allocated them (as a
# download does) and prints how many malloc arenas (glibc's malloc_info "heap"s) it made.
_ARENAS_CHILD = """
import ctypes, re, sys, tempfile, threading
from bot.matrix.chunks import limit_malloc_arenas
if sys.argv[1] == "limited":
    assert limit_malloc_arenas()
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # all eight allocate at once, so each wants an arena of its own
    chunks = [bytearray(1 << 16) for _ in range(64)]
    del chunks
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(len(re.findall(r'<heap nr="', open(out.name).read())))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize(("mode", "expected"), [("limited", 2), ("default", None)])
def test_malloc_arenas_are_capped_for_chunks_freed_in_other_threads(
        mode: str, expected: int | None) -> None:
    """With the cap, eight threads share two arenas; without it glibc makes more."""
    result = subprocess.run([sys.executable, "-c", _ARENAS_CHILD, mode], check=True,
                            capture_output=True, text=True, timeout=60,
                            env={name: value for name, value in os.environ.items()
                                 if name != "MALLOC_ARENA_MAX"})
    arenas = int(result.stdout.strip())
    if expected is None:
        assert arenas > 2
    else:
        assert arenas <= expected
