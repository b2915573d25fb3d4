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


XMP_PACKET = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
              b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/"'
              b' exif:GPSLatitude="52,31.2N"/></rdf:RDF></x:xmpmeta>')


def photo_exif(orientation: int | None = None) -> Image.Exif:
    """EXIF as a phone writes it: camera make and model, a GPS position, maybe an orientation."""
    exif = Image.Exif()
    exif[0x010F] = "Acme"  # Make
    exif[0x0110] = "Phone 9"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 18.0)})
    return exif


def jpeg_with_location(width: int = 320, height: int = 240, orientation: int | None = None,
                       ) -> bytes:
    """A JPEG photo with EXIF (GPS, camera), an XMP packet and a comment."""
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256)
                   for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, exif=photo_exif(orientation).tobytes(),
               comment=b"taken at home")
    data = out.getvalue()
    xmp = b"http://ns.adobe.com/xap/1.0/\x00" + XMP_PACKET
    segment = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    return data[:2] + segment + data[2:]


def png_with_metadata(mode: str = "RGB") -> bytes:
    """A PNG with EXIF, text chunks (one an XMP packet) and a time stamp."""
    from PIL import PngImagePlugin

    image = Image.new(mode, (40, 30), (10, 120, 200, 128)[: len(mode)])
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at home")
    info.add_itxt("XML:com.adobe.xmp", XMP_PACKET.decode())
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, exif=photo_exif().tobytes())
    return out.getvalue()


def webp_with_metadata() -> bytes:
    """A lossless WebP with EXIF and XMP chunks."""
    image = Image.new("RGB", (40, 30), (200, 80, 20))
    out = io.BytesIO()
    image.save(out, format="WEBP", lossless=True, exif=photo_exif().tobytes(),
               xmp=XMP_PACKET)
    return out.getvalue()


def jpeg(width: int = 1600, height: int = 1200) -> bytes:
    """A plain JPEG photo (no metadata)."""
    image = Image.new("RGB", (width, height), (30, 90, 160))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
