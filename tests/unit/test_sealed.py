"""The checked copy sealed at rest: ciphertext on disk, plaintext only in the reading streams."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import stat
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from bot.attachments.inspect import inspect_file
from bot.attachments.model import Direction, OfferState
from bot.attachments.sealed import (
    SealedFileError,
    Sealer,
    Unsealer,
    inspect,
    open_sealed,
    plaintext_copy,
    secure_leftovers,
)
from bot.store import Store
from tests import samples


def seal(path: Path, data: bytes, chunk: int = 1 << 16) -> str:
    """Write ``data`` sealed to ``path`` the way a download does; returns the key."""
    sealer = Sealer()
    with path.open("wb") as out:
        for start in range(0, len(data), chunk):
            out.write(sealer.update(data[start:start + chunk]))
    return sealer.key()


def _jar() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        archive.writestr("Main.class", b"\xca\xfe\xba\xbe" + b"\0" * 64)
    return buffer.getvalue()


def test_sealed_copy_is_not_the_plaintext(tmp_path: Path) -> None:
    """Same length, different bytes, a different SHA-256; a fresh key every time."""
    data = samples.png(40, 30, "blue")
    first, second = tmp_path / "a", tmp_path / "b"
    key_a, key_b = seal(first, data), seal(second, data)
    assert len(first.read_bytes()) == len(data) and first.read_bytes() != data
    assert hashlib.sha256(first.read_bytes()).digest() != hashlib.sha256(data).digest()
    assert first.read_bytes() != second.read_bytes() and key_a != key_b
    block = json.loads(key_a)
    assert block["v"] == "v2" and "url" not in block and block["key"]["alg"] == "A256CTR"


@pytest.mark.parametrize("offset", [0, 1, 15, 16, 17, 4095, 65536 + 3, 199_999])
def test_any_offset_reads_back_the_plaintext(tmp_path: Path, offset: int) -> None:
    """The decrypting reader seeks anywhere (CTR) and returns exactly the plaintext there."""
    data = random.Random(offset).randbytes(200_000)
    path = tmp_path / "copy"
    key = seal(path, data, chunk=7777)
    with open_sealed(path, key) as handle:
        handle.seek(offset)
        assert handle.read(5000) == data[offset:offset + 5000]
        handle.seek(-10, 2)
        assert handle.read() == data[-10:]
        handle.seek(0)
        assert handle.read() == data


@pytest.mark.parametrize(
    ("name", "data"),
    [("png", samples.png(40, 30, "blue")), ("pdf", samples.pdf()), ("jar", _jar()),
     ("text", b"hello\n" * 100), ("empty", b"")],
)
def test_inspection_of_the_sealed_copy_matches_the_plaintext(
    tmp_path: Path, name: str, data: bytes
) -> None:
    """Type, size, hash and image size come out the same as from the plaintext itself."""
    plain, sealed_path = tmp_path / f"{name}.plain", tmp_path / name
    plain.write_bytes(data)
    key = seal(sealed_path, data)
    assert inspect(sealed_path, key) == inspect_file(plain)
    digest = hashlib.sha256(data).hexdigest()
    assert inspect(sealed_path, key, digest).sha256 == digest


def test_unsealer_streams_the_plaintext_back(tmp_path: Path) -> None:
    """Chunk-by-chunk decryption from the start gives the plaintext (the upload path)."""
    data = random.Random(1).randbytes(300_001)
    path = tmp_path / "copy"
    unsealer = Unsealer(seal(path, data))
    raw = path.read_bytes()
    assert b"".join(unsealer.update(raw[i:i + 4096]) for i in range(0, len(raw), 4096)) == data


def test_scanner_copy_is_private_and_exists_only_inside_the_block(tmp_path: Path) -> None:
    """The plaintext handed to the scanner is 0600 and is gone when the block ends."""
    data = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR" * 10
    path = tmp_path / "offer-3"
    key = seal(path, data)

    async def scan() -> Path:
        async with plaintext_copy(path, key) as plain:
            assert plain.read_bytes() == data and plain.parent == path.parent
            assert stat.S_IMODE(plain.stat().st_mode) == 0o600
            return plain

    plain = asyncio.run(scan())
    assert not plain.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offer-3"]


def test_damaged_copy_or_key_is_an_error_and_leaves_no_plaintext(tmp_path: Path) -> None:
    """A flipped byte fails the ciphertext checksum; a broken key fails at once."""
    path = tmp_path / "offer-4"
    key = seal(path, b"some file contents" * 100)
    raw = bytearray(path.read_bytes())
    raw[5] ^= 1
    path.write_bytes(bytes(raw))

    async def scan() -> None:
        async with plaintext_copy(path, key):
            raise AssertionError("a damaged copy must not be handed out")

    with pytest.raises(SealedFileError, match="damaged"):
        asyncio.run(scan())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offer-4"]
    for broken in ("not json", "[]", json.dumps({"v": "v2"})):
        with pytest.raises(SealedFileError):
            Unsealer(broken)
        with pytest.raises(SealedFileError):
            open_sealed(path, broken)


def test_memory_stays_flat_reading_a_large_sealed_copy(tmp_path: Path) -> None:
    """Sealing, inspecting and unsealing 64 MiB allocates a bounded amount, not the file."""
    size = 64 << 20
    path = tmp_path / "big"
    block = random.Random(2).randbytes(1 << 20)
    tracemalloc.start()
    try:
        sealer = Sealer()
        with path.open("wb") as out:
            for _ in range(size // len(block)):
                out.write(sealer.update(block))
        key = sealer.key()
        facts = inspect(path, key)  # hashes the whole file through the decrypting reader
        unsealer = Unsealer(key)
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                unsealer.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert facts.size == size
    # libmagic looks at the first 7 MiB; everything else streams in 1 MiB chunks.
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"


# --- what an older version or a crash left behind ----------------------------------------------


async def _waiting_offer(store: Store, path: Path) -> int:
    session, _ = await store.sessions.create_session("!c:parcel.test", "@carol:parcel.test",
                                                     "Carol")
    await store.sessions.attach_agent_room(session.id, "!a:parcel.test")
    offer, _ = await store.offers.create_offer(
        session_id=session.id, direction=Direction.CUSTOMER_TO_AGENT,
        sender="@carol:parcel.test", sender_name="Carol", source_room="!c:parcel.test",
        source_event_id=f"$up-{path.name}", source_content="{}", msgtype="m.file",
        filename="report.pdf", declared_mimetype=None, declared_size=None,
    )
    offered = await store.offers.transition(offer.id, OfferState.OFFERED, temp_path=str(path))
    assert offered is not None
    return offer.id


async def test_plaintext_copy_of_an_older_version_is_sealed_at_start(
    tmp_path: Path, store_database: Path | str
) -> None:
    """A waiting offer's plaintext copy (no key in the store) is encrypted in place."""
    media = tmp_path / "media"
    media.mkdir()
    data = samples.pdf()
    copy = media / "offer-1"
    copy.write_bytes(data)
    store = await Store.open(store_database)
    try:
        offer_id = await _waiting_offer(store, copy)
        assert await secure_leftovers(store, media) == 1
        offer = await store.offers.get_offer(offer_id)
        assert offer is not None and offer.temp_key is not None
        assert offer.temp_key not in repr(offer)
        assert copy.read_bytes() != data and sorted(p.name for p in media.iterdir()) == [copy.name]
        with open_sealed(copy, offer.temp_key) as handle:
            assert handle.read() == data
        assert await secure_leftovers(store, media) == 0  # already sealed: left alone
    finally:
        await store.close()


async def test_interrupted_sealing_and_stale_scanner_copies_are_finished_at_start(
    tmp_path: Path, store_database: Path | str
) -> None:
    """A sealed file beside a recorded key replaces the plaintext; scanner copies are deleted."""
    media = tmp_path / "media"
    media.mkdir()
    data = b"the customer's file" * 50
    copy = media / "offer-2"
    copy.write_bytes(data)  # the plaintext, not yet replaced when the crash came
    key = seal(media / "offer-2.sealing", data)
    (media / ".offer-3.k2j3h4.plain").write_bytes(b"plaintext for the scanner")
    store = await Store.open(store_database)
    try:
        offer_id = await _waiting_offer(store, copy)
        await store.offers.update_offer(offer_id, temp_key=key)
        assert await secure_leftovers(store, media) == 0
    finally:
        await store.close()
    assert sorted(p.name for p in media.iterdir()) == ["offer-2"]
    with open_sealed(copy, key) as handle:
        assert handle.read() == data
