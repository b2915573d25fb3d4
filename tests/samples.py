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
