"""Images as clients expect them: metadata removed, a thumbnail and a blurhash.

* :func:`strip_metadata` copies a JPEG, PNG or WebP image without the data that tells where and
  with what it was taken (EXIF, with its GPS and camera tags; XMP; IPTC; text chunks), without
  decoding it: segments and chunks are dropped, the compressed pixels are copied as they are
  (no JPEG re-encode). An EXIF orientation other than "upright" survives as a minimal EXIF
  block, so the picture is not shown rotated. It streams: memory stays flat.
* :func:`preview` decodes an image once, small, for the ``xyz.amorgan.blurhash`` placeholder
  Element shows while the image loads, and a JPEG/PNG thumbnail for large images.
* :func:`strip_sealed` applies :func:`strip_metadata` to the checked copy, which is kept
  encrypted at rest (:mod:`bot.attachments.sealed`): read through its decrypting stream,
  written as a new sealed copy under a new key.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import blurhash
from PIL import Image

from bot.attachments.sealed import Sealer, open_sealed

STRIPPABLE = frozenset({"image/jpeg", "image/png", "image/webp"})
THUMBNAIL_BOX = (800, 600)  # what Element asks the media repository for, too
BLURHASH_COMPONENTS = (4, 3)
_CHUNK = 1 << 20
# Decoding for a preview costs about 4 bytes a pixel; JPEG decodes at 1/8 scale (draft), other
# formats in full, so those get a preview only up to this size (48 MB decoded).
PREVIEW_MAX_PIXELS = 12_000_000
_ORIENTATION = 0x0112

Write = Callable[[bytes], None]


class BadImage(ValueError):
    """The image's container is not what its type says (the file is then left unchanged)."""


def _copy(reader: BinaryIO, write: Write, count: int | None = None) -> None:
    """Copy ``count`` bytes (or everything left) from ``reader`` to ``write``, by chunks."""
    while count is None or count > 0:
        chunk = reader.read(_CHUNK if count is None else min(_CHUNK, count))
        if not chunk:
            if count:
                raise BadImage("the file ends inside a segment")
            return
        write(chunk)
        if count is not None:
            count -= len(chunk)


def _read(reader: BinaryIO, count: int) -> bytes:
    data = reader.read(count)
    if len(data) != count:
        raise BadImage("the file ends inside a header")
    return data


# -- JPEG ------------------------------------------------------------------------------------

# Application segments that carry where/how/by whom: APP1 (EXIF, XMP), APP13 (IPTC/Photoshop),
# and comments. APP0 (JFIF), APP2 (ICC colour profile) and APP14 (Adobe colour) stay: they
# change how the pixels look.
_JPEG_DROPPED = frozenset({0xE1, 0xED, 0xFE})
_SOS = 0xDA


def _orientation_segment(payload: bytes) -> bytes:
    """A minimal APP1 keeping only a non-upright EXIF orientation, or b"" when there is none."""
    if not payload.startswith(b"Exif\x00\x00"):
        return b""
    try:
        exif = Image.Exif()
        exif.load(payload[6:])
        orientation = exif.get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: nothing worth keeping
        return b""
    if not isinstance(orientation, int) or orientation in (0, 1) or orientation > 8:
        return b""
    kept = Image.Exif()
    kept[_ORIENTATION] = orientation
    data = kept.tobytes()
    return b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data


def _strip_jpeg(reader: BinaryIO, write: Write) -> bool:
    if _read(reader, 2) != b"\xff\xd8":
        raise BadImage("not a JPEG (no start-of-image marker)")
    write(b"\xff\xd8")
    changed = False
    while True:
        marker = _read(reader, 2)
        if marker[0] != 0xFF:
            raise BadImage("a JPEG segment does not start with a marker")
        while marker[1] == 0xFF:  # fill bytes before a marker
            marker = b"\xff" + _read(reader, 1)
        kind = marker[1]
        if kind == 0xD9 or 0xD0 <= kind <= 0xD7 or kind == 0x01:
            write(marker)  # markers without a length (EOI, RSTn, TEM)
            if kind == 0xD9:
                _copy(reader, write)
                return changed
            continue
        length_bytes = _read(reader, 2)
        length = struct.unpack(">H", length_bytes)[0]
        if length < 2:
            raise BadImage("a JPEG segment has an impossible length")
        if kind in _JPEG_DROPPED:
            payload = _read(reader, length - 2)
            write(_orientation_segment(payload) if kind == 0xE1 else b"")
            changed = True
            continue
        write(marker + length_bytes)
        _copy(reader, write, length - 2)
        if kind == _SOS:
            # The compressed pixels follow: copied as they are, to the end of the file.
            _copy(reader, write)
            return changed


# -- PNG -------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunks (where XMP lives too, as iTXt "XML:com.adobe.xmp"), EXIF and the time stamp.
_PNG_DROPPED = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"})


def _strip_png(reader: BinaryIO, write: Write) -> bool:
    if _read(reader, 8) != _PNG_SIGNATURE:
        raise BadImage("not a PNG (no signature)")
    write(_PNG_SIGNATURE)
    changed = False
    while True:
        header = reader.read(8)
        if not header:
            return changed
        if len(header) != 8:
            raise BadImage("the PNG ends inside a chunk header")
        length, kind = struct.unpack(">I4s", header)
        if kind in _PNG_DROPPED:
            reader.seek(length + 4, io.SEEK_CUR)  # data and CRC
            changed = True
            continue
        write(header)
        _copy(reader, write, length + 4)
        if kind == b"IEND":
            return changed


# -- WebP ------------------------------------------------------------------------------------

_WEBP_DROPPED = frozenset({b"EXIF", b"XMP "})
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _webp_chunks(reader: BinaryIO, end: int) -> list[tuple[bytes, int, int]]:
    """(kind, offset of the data, length) of every chunk, read from their headers."""
    chunks = []
    offset = 12
    while offset < end:
        reader.seek(offset)
        header = reader.read(8)
        if len(header) != 8:
            raise BadImage("the WebP ends inside a chunk header")
        kind, length = struct.unpack("<4sI", header)
        chunks.append((kind, offset + 8, length))
        offset += 8 + length + (length & 1)
    return chunks


def _strip_webp(reader: BinaryIO, write: Write) -> bool:
    head = _read(reader, 12)
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise BadImage("not a WebP (no RIFF/WEBP header)")
    end = 8 + struct.unpack("<I", head[4:8])[0]
    chunks = _webp_chunks(reader, end)
    kept = [c for c in chunks if c[0] not in _WEBP_DROPPED]
    if len(kept) == len(chunks):
        return False
    size = 4 + sum(8 + length + (length & 1) for _, _, length in kept)
    write(b"RIFF" + struct.pack("<I", size) + b"WEBP")
    for kind, offset, length in kept:
        reader.seek(offset)
        write(struct.pack("<4sI", kind, length))
        if kind == b"VP8X" and length >= 1:
            flags = _read(reader, 1)[0] & ~(_VP8X_EXIF | _VP8X_XMP)
            write(bytes([flags]))
            _copy(reader, write, length - 1 + (length & 1))
        else:
            _copy(reader, write, length + (length & 1))
    return True


_STRIPPERS: dict[str, Callable[[BinaryIO, Write], bool]] = {
    "image/jpeg": _strip_jpeg,
    "image/png": _strip_png,
    "image/webp": _strip_webp,
}


def strip_metadata(reader: BinaryIO, write: Write, mimetype: str) -> bool:
    """Copy the image in ``reader`` to ``write`` without its metadata; False when it had none.

    ``reader`` must be seekable. Raises :class:`BadImage` for a damaged container and
    ``KeyError`` for a type not in :data:`STRIPPABLE`.
    """
    return _STRIPPERS[mimetype](reader, write)


# -- the checked copy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stripped:
    """A sealed copy without metadata: where it is, its key, and what will be delivered."""

    path: Path
    key: str = field(repr=False)
    sha256: str
    size: int


def strip_sealed(path: Path, key: str, mimetype: str) -> Stripped | None:
    """Write the sealed checked copy at ``path`` again without its metadata, beside it.

    Returns None (and writes nothing) when the image had no metadata or its container is
    damaged: then the checked copy is delivered as it is. The original stays until the caller
    has recorded the new copy, so a crash in between loses nothing.
    """
    target = path.with_name(path.name + ".stripped")
    sealer = Sealer()
    digest = hashlib.sha256()
    size = 0
    try:
        with open_sealed(path, key) as source, target.open("wb") as out:

            def write(chunk: bytes) -> None:
                nonlocal size
                digest.update(chunk)
                size += len(chunk)
                out.write(sealer.update(chunk))

            changed = strip_metadata(source, write, mimetype)
    except BadImage:
        changed = False
    if not changed:
        target.unlink(missing_ok=True)
        return None
    return Stripped(target, sealer.key(), digest.hexdigest(), size)


# -- preview: blurhash and thumbnail ---------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    """What an m.image carries besides the image: a blurhash and, for large ones, a thumbnail."""

    blurhash: str | None
    thumbnail: bytes | None = field(default=None, repr=False)
    mimetype: str | None = None
    width: int | None = None
    height: int | None = None


def preview(reader: BinaryIO) -> Preview:
    """Decode the image once, reduced, for its blurhash and (when larger than 800×600) a
    thumbnail: JPEG, or PNG when the image has transparency. An unreadable image gets none."""
    try:
        with Image.open(reader) as image:
            if image.format != "JPEG" and image.width * image.height > PREVIEW_MAX_PIXELS:
                return Preview(None)  # memory stays bounded: the client loads the image itself
            large = image.width > THUMBNAIL_BOX[0] or image.height > THUMBNAIL_BOX[1]
            image.draft("RGB", THUMBNAIL_BOX)  # JPEG: decode at a reduced scale, cheaply
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            small = image.convert("RGBA" if has_alpha else "RGB")
            small.thumbnail(THUMBNAIL_BOX)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds; the image just goes without
        return Preview(None)
    tiny = small.convert("RGB").resize((32, 32))
    pixels = [[tiny.getpixel((x, y)) for x in range(32)] for y in range(32)]
    hashed = blurhash.encode(pixels, *BLURHASH_COMPONENTS)
    if not large:
        return Preview(hashed)
    out = io.BytesIO()
    if has_alpha:
        small.save(out, format="PNG", optimize=True)
        mimetype = "image/png"
    else:
        small.save(out, format="JPEG", quality=80)
        mimetype = "image/jpeg"
    return Preview(hashed, out.getvalue(), mimetype, small.width, small.height)


def sealed_preview(path: Path, key: str) -> Preview:
    """:func:`preview` of the sealed copy at ``path``."""
    with open_sealed(path, key) as reader:
        return preview(reader)
