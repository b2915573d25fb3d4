"""The chunk worker: per-chunk work in a thread, in order, one call pending, errors raised."""

from __future__ import annotations

import asyncio
import hashlib
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
