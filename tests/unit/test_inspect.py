"""Facts about files on disk, from real sample files generated on the fly.

The expected types are what libmagic 5.44 (Debian bookworm) reports for each sample.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from bot.attachments.inspect import (
    EMPTY_MIMETYPE,
    StreamingDigest,
    describe_mimetype,
    executable_kind,
    inspect_file,
    normalize_mimetype,
)

# --- sample builders: each writes one file and returns its path -----------------------------

Builder = Callable[[Path], Path]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _image(fmt: str, suffix: str, size: tuple[int, int] = (3, 2)) -> Builder:
    def build(d: Path) -> Path:
        path = d / f"sample.{suffix}"
        Image.new("RGB", size, "red").save(path, format=fmt)
        return path

    return build


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature, an IHDR chunk (valid CRC) and IEND: no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


MINIMAL_PDF = (
    b"%PDF-1.4\n"
    b"1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def _elf_binary(d: Path) -> Path:
    return _write(d / "true", Path("/bin/true").read_bytes())


def _elf_header(length: int) -> Builder:
    return lambda d: _write(d / f"elf{length}", Path("/bin/true").read_bytes()[:length])


def _mz_stub(d: Path) -> Path:
    return _write(d / "stub", b"MZ" + b"\x00" * 200)


def _pe_stub(d: Path) -> Path:
    data = bytearray(128)
    data[0:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 64)  # e_lfanew: where the PE header starts
    data[64:68] = b"PE\x00\x00"
    struct.pack_into("<H", data, 68, 0x14C)  # machine: i386
    return _write(d / "pe", bytes(data))


def _macho(d: Path) -> Path:
    header = struct.pack("<IiiIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0)
    return _write(d / "macho", header + b"\x00" * 100)


def _text(name: str, data: bytes) -> Builder:
    return lambda d: _write(d / name, data)


def _zip(name: str, entries: list[tuple[str, bytes]], first_extra: bytes = b"") -> Builder:
    def build(d: Path) -> Path:
        path = d / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for index, (entry, data) in enumerate(entries):
                info = zipfile.ZipInfo(entry)
                info.compress_type = zipfile.ZIP_DEFLATED
                if index == 0 and first_extra:
                    info.extra = first_extra
                archive.writestr(info, data)
        return path

    return build


MANIFEST = b"Manifest-Version: 1.0\n"
DOCX_ENTRIES = [
    ("[Content_Types].xml", b"<Types/>"),
    ("_rels/.rels", b"<Relationships/>"),
    ("word/document.xml", b"<w:document/>"),
]

# (id, builder, mimetype, description, is_executable, width, height)
SAMPLES: list[tuple[str, Builder, str, str, bool, int | None, int | None]] = [
    ("png", _image("PNG", "png"), "image/png", "PNG image", False, 3, 2),
    ("jpeg", _image("JPEG", "jpg", (640, 480)), "image/jpeg", "JPEG image", False, 640, 480),
    ("gif", _image("GIF", "gif"), "image/gif", "GIF image", False, 3, 2),
    ("webp", _image("WEBP", "webp"), "image/webp", "WebP image", False, 3, 2),
    ("bmp", _image("BMP", "bmp"), "image/bmp", "BMP image", False, 3, 2),
    ("png header only", _text("h.png", _png_header(7, 5)), "image/png", "PNG image", False, 7, 5),
    (
        "decompression bomb",
        _text("bomb.png", _png_header(100_000, 100_000)),
        "image/png", "PNG image", False, None, None,
    ),
    # a bare PNG signature is too little for libmagic
    ("png signature only", _text("t.png", b"\x89PNG\r\n\x1a\n"), "application/octet-stream",
     "file of unknown type", False, None, None),
    ("corrupt png", _text("c.png", _png_header(7, 5)[:30] + b"garbage"), "image/png", "PNG image",
     False, None, None),
    ("pdf", _text("doc.pdf", MINIMAL_PDF), "application/pdf", "PDF document", False, None, None),
    ("text", _text("t.txt", b"hello world\n"), "text/plain", "text file", False, None, None),
    ("utf-8 text", _text("u.txt", "h\u00e9llo\n".encode()), "text/plain", "text file", False,
     None, None),
    ("csv", _text("c.csv", b"a,b\n1,2\n"), "text/plain", "text file", False, None, None),
    ("json", _text("j.json", b'{"a": 1}\n'), "application/json", "JSON file", False, None, None),
    ("html", _text("h.html", b"<!DOCTYPE html><html><body>x</body></html>\n"),
     "text/html", "HTML document", False, None, None),
    ("random bytes", _text("r.bin", random.Random(0).randbytes(2048)),
     "application/octet-stream", "file of unknown type", False, None, None),
    ("empty", _text("e", b""), EMPTY_MIMETYPE, "empty file", False, None, None),
    ("zip", _zip("z.zip", [("a.txt", b"hi")]), "application/zip", "ZIP archive", False, None, None),
    ("docx", _zip("d.docx", DOCX_ENTRIES),
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "Word document", False, None, None),
    # executables: programs
    # Inspection reads bytes (the checked copy is sealed at rest), so libmagic has no file
    # descriptor to read a PIE binary's program headers from: it calls it a library. Both
    # are programs.
    ("elf binary", _elf_binary, "application/x-sharedlib", "program library (Linux)", True,
     None, None),
    ("elf 64-byte header", _elf_header(64), "application/x-sharedlib",
     "program library (Linux)", True, None, None),
    # libmagic's answer here is "application/x-sharedlib, can't read elf program headers…"
    ("elf 256-byte header", _elf_header(256), "application/x-sharedlib",
     "program library (Linux)", True, None, None),
    ("mz stub", _mz_stub, "application/x-dosexec", "program (Windows)", True, None, None),
    ("pe stub", _pe_stub, "application/vnd.microsoft.portable-executable",
     "program (Windows)", True, None, None),
    ("mach-o", _macho, "application/x-mach-binary", "program (macOS)", True, None, None),
    ("jar (magic)", _zip("a.jar", [("META-INF/", b""), ("META-INF/MANIFEST.MF", MANIFEST)],
                         first_extra=b"\xfe\xca\x00\x00"),
     "application/java-archive", "Java program", True, None, None),
    # libmagic calls this a plain zip; the manifest gives it away
    ("jar (manifest)", _zip("b.jar", [("META-INF/MANIFEST.MF", MANIFEST), ("A.class", b"x")]),
     "application/java-archive", "Java program", True, None, None),
    ("apk", _zip("c.apk", [("AndroidManifest.xml", b"x"), ("classes.dex", b"dex\n035\x00")]),
     "application/vnd.android.package-archive", "Android app", True, None, None),
    ("java class", _text("A.class", b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\x00" * 50),
     "application/x-java-applet", "Java program", True, None, None),
    ("windows shortcut",
     _text("l.lnk", b"L\0\0\0\x01\x14\x02\0\0\0\0\0\xc0\0\0\0\0\0\0\x46" + b"\0" * 60),
     "application/x-ms-shortcut", "shortcut (Windows)", True, None, None),
    # executables: scripts
    ("sh script", _text("s.sh", b"#!/bin/sh\necho hi\n"), "text/x-shellscript", "shell script",
     True, None, None),
    ("bash script", _text("b", b"#!/bin/bash\necho hi\n"), "text/x-shellscript", "shell script",
     True, None, None),
    ("python shebang", _text("p", b"#!/usr/bin/env python3\nprint(1)\n"),
     "text/x-script.python", "Python script", True, None, None),
    ("python no shebang", _text("q.txt", b"import os\n\ndef main():\n    print(os.getcwd())\n"),
     "text/x-script.python", "Python script", True, None, None),
    ("perl", _text("pl", b"#!/usr/bin/perl\nprint 1;\n"), "text/x-perl", "Perl script", True,
     None, None),
    ("ruby", _text("rb", b"#!/usr/bin/env ruby\nputs 1\n"), "text/x-ruby", "Ruby script", True,
     None, None),
    ("node", _text("n", b"#!/usr/bin/env node\nconsole.log(1)\n"), "application/javascript",
     "JavaScript", True, None, None),
    ("batch", _text("b.bat", b"@echo off\r\necho hi\r\n"), "text/x-msdos-batch",
     "batch script (Windows)", True, None, None),
    # not detectable from content: only the name gives these away (see the policy)
    ("powershell", _text("p.ps1", b"Write-Host 'hi'\n"), "text/plain", "text file", False,
     None, None),
    ("plain javascript", _text("j.js", b"var x = 1;\nconsole.log(x);\n"), "text/plain",
     "text file", False, None, None),
    ("vbscript", _text("v.vbs", b'MsgBox "hi"\n'), "text/plain", "text file", False, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "mimetype", "description", "is_executable", "width", "height"),
    [pytest.param(*case[1:], id=case[0]) for case in SAMPLES],
)
def test_inspect_sample_files(
    tmp_path: Path,
    build: Builder,
    mimetype: str,
    description: str,
    is_executable: bool,
    width: int | None,
    height: int | None,
) -> None:
    """Each sample file gets the type, description, executable flag and size libmagic implies."""
    path = build(tmp_path)
    data = path.read_bytes()
    facts = inspect_file(path)
    assert facts.mimetype == mimetype
    assert facts.description == description
    assert facts.is_executable is is_executable
    assert (facts.width, facts.height) == (width, height)
    assert facts.size == len(data)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_given_sha256_is_used_without_rehashing(tmp_path: Path) -> None:
    """A hash computed while downloading is trusted as given (lower-cased), the size is stat'd."""
    path = _write(tmp_path / "t.txt", b"hello\n")
    facts = inspect_file(path, sha256="AB" * 32)
    assert facts.sha256 == "ab" * 32
    assert facts.size == 6


def test_large_file_is_hashed_in_chunks(tmp_path: Path) -> None:
    """A file spanning several read chunks hashes to the same digest as the whole."""
    data = os.urandom(3 * (1 << 20) + 12345)
    path = _write(tmp_path / "big.bin", data)
    facts = inspect_file(path)
    assert facts.size == len(data)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


def test_manifest_behind_many_entries_is_still_found(tmp_path: Path) -> None:
    """The central directory is read entry by entry, so 10 000 entries cannot hide a manifest."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", b"first")
        for i in range(10_001):
            archive.writestr(f"f{i}", b"")
        archive.writestr("META-INF/MANIFEST.MF", MANIFEST)
    assert inspect_file(path).mimetype == "application/java-archive"


@pytest.mark.parametrize(
    ("chunks", "size"),
    [([], 0), ([b""], 0), ([b"abc"], 3), ([b"a", b"bc"], 3), ([b"x" * 1000] * 5, 5000)],
)
def test_streaming_digest(chunks: list[bytes], size: int) -> None:
    """The streaming digest counts bytes and hashes them as if fed at once."""
    digest = StreamingDigest()
    for chunk in chunks:
        digest.update(chunk)
    assert digest.size == size
    assert digest.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("text/plain; charset=us-ascii", "text/plain"),
        (
            "application/x-sharedlib, can't read elf program headers at 232",
            "application/x-sharedlib",
        ),
        ("inode/x-empty", EMPTY_MIMETYPE),
        ("application/x-empty", EMPTY_MIMETYPE),
        ("", "application/octet-stream"),
        ("garbage", "application/octet-stream"),
        ("text/", "application/octet-stream"),
        ("a b/c", "application/octet-stream"),
    ],
)
def test_normalize_mimetype(raw: str, expected: str) -> None:
    """MIME types are reduced to lower-case type/subtype; libmagic's notes and junk go away."""
    assert normalize_mimetype(raw) == expected


@pytest.mark.parametrize(
    ("mimetype", "expected"),
    [
        ("image/png", "PNG image"),
        ("application/pdf", "PDF document"),
        ("application/zip", "ZIP archive"),
        ("application/x-dosexec", "program (Windows)"),
        ("text/plain; charset=utf-8", "text file"),
        ("image/jxl", "JXL image"),
        ("video/x-flv", "FLV video"),
        ("audio/x-aiff", "AIFF audio"),
        ("application/x-foo", "FOO file"),
        ("application/vnd.acme.thing+json", "THING file"),
        ("text/x-script.tcsh", "TCSH file"),
        ("image/<script>alert(1)</script>", "image"),
        ("text/" + "x" * 40, "text file"),
        ("application/we!rd", "file"),
        ("nonsense", "file of unknown type"),
        ("", "file of unknown type"),
    ],
)
def test_describe_mimetype(mimetype: str, expected: str) -> None:
    """Known types read as plain words; others are named from a short subtype or generically."""
    assert describe_mimetype(mimetype) == expected


@pytest.mark.parametrize(
    ("mimetype", "expected"),
    [
        ("application/x-executable", "program"),
        ("application/vnd.microsoft.portable-executable", "program"),
        ("application/x-msi", "program"),
        ("application/java-archive", "program"),
        ("text/x-shellscript", "script"),
        ("application/x-sh", "script"),
        ("text/x-script.python", "script"),
        ("text/x-script.whatever", "script"),
        ("TEXT/X-SHELLSCRIPT; charset=us-ascii", "script"),
        ("text/plain", None),
        ("image/png", None),
        ("application/zip", None),
    ],
)
def test_executable_kind(mimetype: str, expected: str | None) -> None:
    """Runnable content is classed as a program or a script; everything else is not runnable."""
    assert executable_kind(mimetype) == expected


# --- polyglots: runnable content whatever the detected type -----------------------------------


def _jar_bytes(extra_entries: int = 0) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(extra_entries):
            archive.writestr(f"f{i}.txt", b"")
        archive.writestr("META-INF/MANIFEST.MF", MANIFEST + b"Main-Class: Evil\n")
        archive.writestr("Evil.class", b"\xca\xfe\xba\xbe" + bytes(40))
    return out.getvalue()


def _apk_bytes() -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("AndroidManifest.xml", b"<manifest/>")
        archive.writestr("classes.dex", b"dex\n035\x00")
    return out.getvalue()


def _docx_bytes() -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in DOCX_ENTRIES:
            archive.writestr(name, data)
    return out.getvalue()


def _png_bytes() -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, format="PNG")
    return out.getvalue()


# (id, bytes, detected type, also runnable)
POLYGLOTS: list[tuple[str, bytes, str, str | None]] = [
    ("pdf+jar", MINIMAL_PDF + _jar_bytes(), "application/pdf", "application/java-archive"),
    ("png+jar", _png_bytes() + _jar_bytes(), "image/png", "application/java-archive"),
    ("pdf+apk", MINIMAL_PDF + _apk_bytes(), "application/pdf",
     "application/vnd.android.package-archive"),
    ("pdf+jar-with-comment", MINIMAL_PDF + _jar_bytes()[:-2] + b"\x05\x00hello",
     "application/pdf", "application/java-archive"),
    ("pdf+plain-zip", MINIMAL_PDF + _docx_bytes(), "application/pdf", None),
    ("plain-pdf", MINIMAL_PDF, "application/pdf", None),
    ("bytes-mentioning-eocd", b"hello PK\x05\x06 there\n" * 3, "application/octet-stream",
     None),
    ("text-starting-MZ", b"MZ is a postcode prefix, not a program\n", "text/plain", None),
]


@pytest.mark.parametrize(
    ("data", "mimetype", "also"),
    [pytest.param(*case[1:], id=case[0]) for case in POLYGLOTS],
)
def test_runnable_archives_are_found_whatever_the_detected_type(
    tmp_path: Path, data: bytes, mimetype: str, also: str | None
) -> None:
    """A ZIP central directory at the end is read even when the file starts as a document."""
    facts = inspect_file(_write(tmp_path / "f", data))
    assert facts.mimetype == mimetype
    assert facts.also_runnable == also
    assert facts.is_executable is (also is not None)


def test_a_plain_jar_is_still_a_java_archive_not_a_polyglot(tmp_path: Path) -> None:
    """A JAR alone is detected as a Java program (no "also" reading)."""
    facts = inspect_file(_write(tmp_path / "app.jar", _jar_bytes()))
    assert facts.mimetype == "application/java-archive"
    assert facts.also_runnable is None and facts.is_executable


def _as_zip64(archive: bytes) -> bytes:
    """The same archive ending in ZIP64 records (as archives over 4 GB or 65 535 entries do)."""
    at = archive.rfind(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<HII", archive, at + 10)
    body = archive[:at]
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries,
                         size, offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
    classic = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF,
                          0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + record + locator + classic


def test_zip64_directory_is_followed(tmp_path: Path) -> None:
    """A JAR ending in ZIP64 records is still found behind a PDF."""
    data = _as_zip64(_jar_bytes())
    with zipfile.ZipFile(_write(tmp_path / "plain64.jar", data)) as archive:
        assert "META-INF/MANIFEST.MF" in archive.namelist()  # a valid archive
    facts = inspect_file(_write(tmp_path / "z.pdf", MINIMAL_PDF + data))
    assert facts.also_runnable == "application/java-archive"


def test_program_header_needs_a_real_pe_signature(tmp_path: Path) -> None:
    """ "MZ" alone is not a Windows program; "MZ" with a PE header at e_lfanew is."""
    from bot.attachments.inspect import program_header

    assert program_header(_mz_stub(tmp_path)) is None
    assert program_header(_pe_stub(tmp_path)) == "application/x-dosexec"
    assert program_header(_elf_binary(tmp_path)) == "application/x-executable"
    assert program_header(_macho(tmp_path)) == "application/x-mach-binary"
