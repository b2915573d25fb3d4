"""Sample files made on the fly: real images, a PDF, a program."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    """A real PNG image."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def pdf() -> bytes:
    """A small valid PDF document."""
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


def elf_program() -> bytes:
    """A real executable (this machine's /bin/true)."""
    return Path("/bin/true").read_bytes()


def noise(size: int, seed: int = 7) -> bytes:
    """``size`` bytes of reproducible random data (libmagic calls it application/octet-stream)."""
    return random.Random(seed).randbytes(size)


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG of ``width``×``height`` pixels, all black, that compresses to ~100 KB.

    Written by hand, row by row, so making it never holds the image in memory.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte "none", then the pixels
    packer = zlib.compressobj(9)
    compressed = [packer.compress(row * 1000) for _ in range(height // 1000)]
    compressed.append(packer.compress(row * (height % 1000)))
    compressed.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(compressed))
            + chunk(b"IEND", b""))


def jar(main_class: str = "Evil") -> bytes:
    """A runnable Java archive: a manifest naming a main class, and that class's bytes."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF",
                         f"Manifest-Version: 1.0\nMain-Class: {main_class}\n")
        archive.writestr(f"{main_class}.class", b"\xca\xfe\xba\xbe" + bytes(60))
    return out.getvalue()


def pdf_jar_polyglot() -> bytes:
    """A file that is a valid PDF (header first) and a runnable JAR (central directory last)."""
    return pdf() + jar()
