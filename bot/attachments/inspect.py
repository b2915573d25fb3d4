"""Facts about a file on disk: size, SHA-256, detected type, plain-words description, image size.

Pure and synchronous (the caller runs :func:`inspect_file` in a thread). The type is detected
from the content with libmagic, never taken from the sender's claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import magic
from PIL import Image

from bot.i18n import N_

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
EMPTY_MIMETYPE = "application/x-empty"
UNKNOWN_MIMETYPE = "application/octet-stream"
# libmagic says "inode/x-empty" for an empty file and "application/x-empty" for an empty
# buffer; both become EMPTY_MIMETYPE.
_EMPTY_ALIASES = frozenset({"inode/x-empty", "application/x-empty"})
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})


@dataclass(frozen=True)
class FileFacts:
    """What inspection found out about a file, from its content alone."""

    size: int
    sha256: str
    mimetype: str
    description: str
    width: int | None
    height: int | None
    is_executable: bool
    # A runnable format the content is *as well as* its detected type (a PDF that is also a
    # JAR): the MIME type of that other reading, or None.
    also_runnable: str | None = None


class StreamingDigest:
    """SHA-256 and byte count of data seen chunk by chunk (hash while writing a download)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    def update(self, chunk: bytes) -> None:
        """Feed the next chunk of data."""
        self._hash.update(chunk)
        self._size += len(chunk)

    @property
    def size(self) -> int:
        """Number of bytes fed so far."""
        return self._size

    def hexdigest(self) -> str:
        """Hex SHA-256 of the bytes fed so far."""
        return self._hash.hexdigest()


# --- kinds of executable content ------------------------------------------------------------

_PROGRAM_TYPES = frozenset(
    {
        # ELF (libmagic reports PIE binaries and bare headers as shared objects)
        "application/x-executable",
        "application/x-pie-executable",
        "application/x-sharedlib",
        "application/x-elf",
        "application/x-object",
        # Windows PE / MZ
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-msdownload",
        "application/x-ms-dos-executable",
        "application/x-msi",
        "application/x-ms-installer",
        "application/x-ms-shortcut",
        # macOS
        "application/x-mach-binary",
        "application/x-mach-o-executable",
        "application/x-apple-diskimage",
        # Java and Android
        "application/java-archive",
        "application/x-java-archive",
        "application/x-java-applet",
        "application/java-vm",
        "application/vnd.android.package-archive",
    }
)
_SCRIPT_TYPES = frozenset(
    {
        "text/x-shellscript",
        "application/x-sh",
        "application/x-shellscript",
        "application/x-csh",
        "text/x-python",
        "application/x-python",
        "text/x-perl",
        "application/x-perl",
        "text/x-ruby",
        "application/x-ruby",
        "text/x-php",
        "application/x-php",
        "text/x-lua",
        "text/x-tcl",
        "text/x-awk",
        "text/x-msdos-batch",
        "application/x-bat",
        "application/bat",
        "application/javascript",
        "text/javascript",
        "application/x-javascript",
        "text/vbscript",
        "application/x-powershell",
    }
)


def normalize_mimetype(mimetype: str) -> str:
    """Reduce a MIME type to lower-case ``type/subtype``, dropping parameters.

    libmagic sometimes appends notes after a comma ("application/x-sharedlib, can't read elf
    program headers at 232"); those go too. Anything without a slash becomes
    ``application/octet-stream``; both spellings of "empty" become ``application/x-empty``.
    """
    base = mimetype.split(";", 1)[0].split(",", 1)[0].strip().lower()
    if base in _EMPTY_ALIASES:
        return EMPTY_MIMETYPE
    kind, _, sub = base.partition("/")
    if not kind or not sub or " " in base:
        return UNKNOWN_MIMETYPE
    return base


def executable_kind(mimetype: str) -> str | None:
    """Return "program" or "script" when the (detected) type is runnable code, else None."""
    base = normalize_mimetype(mimetype)
    if base in _PROGRAM_TYPES:
        return "program"
    if base in _SCRIPT_TYPES or base.startswith(("text/x-script.", "application/x-script.")):
        return "script"
    return None


# --- plain-words descriptions ---------------------------------------------------------------
# In English here (policy reasons and logs); bot.render translates them for each reader.

_DESCRIPTIONS: dict[str, str] = {
    EMPTY_MIMETYPE: N_("empty file"),
    UNKNOWN_MIMETYPE: N_("file of unknown type"),
    # images
    "image/png": N_("PNG image"),
    "image/jpeg": N_("JPEG image"),
    "image/gif": N_("GIF image"),
    "image/webp": N_("WebP image"),
    "image/bmp": N_("BMP image"),
    "image/x-ms-bmp": N_("BMP image"),
    "image/tiff": N_("TIFF image"),
    "image/heic": N_("HEIC image"),
    "image/heif": N_("HEIF image"),
    "image/avif": N_("AVIF image"),
    "image/svg+xml": N_("SVG image"),
    "image/x-icon": N_("icon"),
    "image/vnd.microsoft.icon": N_("icon"),
    # documents
    "application/pdf": N_("PDF document"),
    "text/plain": N_("text file"),
    "text/csv": N_("CSV file"),
    "text/html": N_("HTML document"),
    "text/markdown": N_("Markdown text"),
    "text/xml": N_("XML file"),
    "application/xml": N_("XML file"),
    "application/json": N_("JSON file"),
    "text/rtf": N_("RTF document"),
    "application/rtf": N_("RTF document"),
    "application/msword": N_("Word document"),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": N_("Word document"),
    "application/vnd.ms-excel": N_("Excel spreadsheet"),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (
        N_("Excel spreadsheet")
    ),
    "application/vnd.ms-powerpoint": N_("PowerPoint presentation"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        N_("PowerPoint presentation")
    ),
    "application/vnd.oasis.opendocument.text": N_("OpenDocument text"),
    "application/vnd.oasis.opendocument.spreadsheet": N_("OpenDocument spreadsheet"),
    "application/vnd.oasis.opendocument.presentation": N_("OpenDocument presentation"),
    "application/x-ole-storage": N_("Office document (old format)"),
    "application/epub+zip": N_("e-book"),
    # archives
    "application/zip": N_("ZIP archive"),
    "application/x-zip-compressed": N_("ZIP archive"),
    "application/gzip": N_("gzip archive"),
    "application/x-gzip": N_("gzip archive"),
    "application/x-tar": N_("tar archive"),
    "application/x-bzip2": N_("bzip2 archive"),
    "application/x-xz": N_("xz archive"),
    "application/x-7z-compressed": N_("7-Zip archive"),
    "application/vnd.rar": N_("RAR archive"),
    "application/x-rar": N_("RAR archive"),
    "application/x-iso9660-image": N_("disk image"),
    # audio and video
    "video/mp4": N_("MP4 video"),
    "video/quicktime": N_("QuickTime video"),
    "video/webm": N_("WebM video"),
    "video/x-matroska": N_("Matroska video"),
    "video/x-msvideo": N_("AVI video"),
    "audio/mpeg": N_("MP3 audio"),
    "audio/ogg": N_("Ogg audio"),
    "application/ogg": N_("Ogg media"),
    "audio/wav": N_("WAV audio"),
    "audio/x-wav": N_("WAV audio"),
    "audio/flac": N_("FLAC audio"),
    "audio/x-flac": N_("FLAC audio"),
    "audio/mp4": N_("M4A audio"),
    "audio/x-m4a": N_("M4A audio"),
    # programs
    "application/x-dosexec": N_("program (Windows)"),
    "application/vnd.microsoft.portable-executable": N_("program (Windows)"),
    "application/x-msdownload": N_("program (Windows)"),
    "application/x-ms-dos-executable": N_("program (Windows)"),
    "application/x-msi": N_("installer (Windows)"),
    "application/x-ms-installer": N_("installer (Windows)"),
    "application/x-ms-shortcut": N_("shortcut (Windows)"),
    "application/x-executable": N_("program (Linux)"),
    "application/x-pie-executable": N_("program (Linux)"),
    "application/x-sharedlib": N_("program library (Linux)"),
    "application/x-elf": N_("program (Linux)"),
    "application/x-object": N_("compiled code"),
    "application/x-mach-binary": N_("program (macOS)"),
    "application/x-mach-o-executable": N_("program (macOS)"),
    "application/x-apple-diskimage": N_("disk image (macOS)"),
    "application/java-archive": N_("Java program"),
    "application/x-java-archive": N_("Java program"),
    "application/x-java-applet": N_("Java program"),
    "application/java-vm": N_("Java program"),
    "application/vnd.android.package-archive": N_("Android app"),
    # scripts
    "text/x-shellscript": N_("shell script"),
    "application/x-sh": N_("shell script"),
    "application/x-shellscript": N_("shell script"),
    "application/x-csh": N_("shell script"),
    "text/x-script.python": N_("Python script"),
    "text/x-python": N_("Python script"),
    "application/x-python": N_("Python script"),
    "text/x-perl": N_("Perl script"),
    "application/x-perl": N_("Perl script"),
    "text/x-ruby": N_("Ruby script"),
    "application/x-ruby": N_("Ruby script"),
    "text/x-php": N_("PHP script"),
    "application/x-php": N_("PHP script"),
    "text/x-lua": N_("Lua script"),
    "text/x-tcl": N_("Tcl script"),
    "text/x-awk": N_("awk script"),
    "text/x-msdos-batch": N_("batch script (Windows)"),
    "application/x-bat": N_("batch script (Windows)"),
    "application/bat": N_("batch script (Windows)"),
    "application/javascript": N_("JavaScript"),
    "text/javascript": N_("JavaScript"),
    "application/x-javascript": N_("JavaScript"),
    "text/vbscript": N_("VBScript"),
    "application/x-powershell": N_("PowerShell script"),
}

# Short, plain subtype labels only: a declared type is untrusted text and may be anything.
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_MEDIA_NOUNS = {"image": N_("image"), "video": N_("video"), "audio": N_("audio")}


def describe_mimetype(mimetype: str) -> str:
    """Return plain words for a MIME type: "PNG image", "PDF document", "program (Windows)".

    Types not in the table are named from their subtype ("image/jxl" → "JXL image",
    "application/x-foo" → "FOO file"); when the subtype is not a short plain word the result
    is "image", "video", "audio", "text file" or "file".
    """
    base = normalize_mimetype(mimetype)
    if base in _DESCRIPTIONS:
        return _DESCRIPTIONS[base]
    kind, _, sub = base.partition("/")
    if sub.startswith("x-"):
        sub = sub[2:]
    sub = sub.split("+", 1)[0].rsplit(".", 1)[-1]
    noun = _MEDIA_NOUNS.get(kind, N_("file"))
    if 0 < len(sub) <= 12 and set(sub) <= _LABEL:
        return f"{sub.upper()} {noun}"
    if kind == "text":
        return "text file"
    return noun


# --- inspection ----------------------------------------------------------------------------


def _hash_file(handle: BinaryIO) -> tuple[int, str]:
    digest = StreamingDigest()
    handle.seek(0)
    while chunk := handle.read(CHUNK_SIZE):
        digest.update(chunk)
    return digest.size, digest.hexdigest()


def _magic_head_size() -> int:
    """How much of a file libmagic looks at (its ``bytes_max``, 7 MiB in file 5.4x)."""
    try:
        return int(magic.Magic(mime=True).getparam(magic.MAGIC_PARAM_BYTES_MAX))
    except Exception:  # an old libmagic without getparam: its documented default
        return 1 << 20


_MAGIC_HEAD = _magic_head_size()


def _detect_mimetype(handle: BinaryIO) -> str:
    # libmagic sees the same bytes it would read from the file itself, from a stream that may
    # be decrypting (bot/attachments/sealed.py), so no plaintext copy is needed.
    handle.seek(0)
    head = handle.read(_MAGIC_HEAD)
    try:
        raw = magic.from_buffer(head, mime=True)
    except Exception:  # libmagic can fail on odd input; the file is then "unknown"
        logger.warning("libmagic could not identify a file", exc_info=True)
        return UNKNOWN_MIMETYPE
    return normalize_mimetype(raw if isinstance(raw, str) else UNKNOWN_MIMETYPE)


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_CENTRAL_ENTRY = b"PK\x01\x02"
_EOCD_SIZE = 22
_CENTRAL_HEADER_SIZE = 46
_TAIL = _EOCD_SIZE + 0xFFFF  # the record plus the longest possible archive comment


@dataclass(frozen=True)
class ZipDirectory:
    """What a ZIP central directory at the end of a file lists (whatever precedes it)."""

    entries: int
    has_manifest: bool  # META-INF/MANIFEST.MF: runnable with "java -jar"
    is_android_app: bool  # AndroidManifest.xml and classes.dex


def _central_directory_span(f: BinaryIO, end: int) -> tuple[int, int, int] | None:
    """(start, size, entries) of the central directory that the EOCD record describes.

    Only the tail of the file is read. The directory is located from the record's own position
    (record offset − directory size), as unzip and Java do, so data put in front of the archive
    (a PDF, an image) does not hide it. ZIP64 records are followed.
    """
    tail_size = min(end, _TAIL)
    f.seek(end - tail_size)
    tail = f.read(tail_size)
    at = tail.rfind(_EOCD)
    while at >= 0 and at + _EOCD_SIZE > len(tail):
        at = tail.rfind(_EOCD, 0, at)
    if at < 0:
        return None
    eocd_pos = end - tail_size + at
    entries, size, _offset = struct.unpack_from("<HII", tail, at + 10)
    if entries == 0xFFFF or size == 0xFFFFFFFF:
        # ZIP64: a locator just before the record points at the ZIP64 record, which normally
        # sits right before the locator (its claimed offset counts from the archive's start).
        if eocd_pos < 20 + 56:
            return None
        f.seek(eocd_pos - 20)
        locator = f.read(20)
        if locator[:4] != _ZIP64_LOCATOR:
            return None
        (claimed,) = struct.unpack_from("<Q", locator, 8)
        record_pos = eocd_pos - 20 - 56
        f.seek(record_pos)
        record = f.read(56)
        if record[:4] != _ZIP64_EOCD and claimed < end:
            record_pos = claimed
            f.seek(record_pos)
            record = f.read(56)
        if record[:4] != _ZIP64_EOCD or len(record) < 56:
            return None
        entries, size = struct.unpack_from("<QQ", record, 32)
        start = record_pos - size
    else:
        start = eocd_pos - size
    if start < 0 or size == 0:
        return None
    return start, size, entries


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """A binary handle on ``source``: opened (and closed) for a path, as is for a handle."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield handle
    else:
        yield source


def zip_directory(source: Path | BinaryIO) -> ZipDirectory | None:
    """The ZIP central directory at the end of ``source``, or None if it has none.

    Streaming: seeks to the tail for the end-of-central-directory record, then reads the
    directory entry by entry (names only; nothing is decompressed), so memory stays flat
    whatever the file's size or entry count.
    """
    with _opened(source) as f:
        end = f.seek(0, io.SEEK_END)
        span = _central_directory_span(f, end)
        if span is None:
            return None
        start, size, expected = span
        f.seek(start)
        names_seen = 0
        manifest = android = dex = False
        consumed = 0
        while consumed < size and names_seen < expected:
            header = f.read(_CENTRAL_HEADER_SIZE)
            if len(header) < _CENTRAL_HEADER_SIZE or header[:4] != _CENTRAL_ENTRY:
                break
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", header, 28)
            name = f.read(name_len).decode("utf-8", "replace").replace("\\", "/").lower()
            f.seek(extra_len + comment_len, io.SEEK_CUR)
            consumed += _CENTRAL_HEADER_SIZE + name_len + extra_len + comment_len
            names_seen += 1
            name = name.lstrip("/")
            manifest = manifest or name == "meta-inf/manifest.mf"
            android = android or name == "androidmanifest.xml"
            dex = dex or name == "classes.dex"
    if names_seen == 0:
        return None
    return ZipDirectory(entries=names_seen, has_manifest=manifest,
                        is_android_app=android and dex)


# Signatures of programs at the start of a file, whatever libmagic made of the rest.
_ELF = b"\x7fELF"
_MACHO = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")


def program_header(source: Path | BinaryIO) -> str | None:
    """The MIME type of a program header at offset 0 (ELF, PE, Mach-O), read in a few bytes.

    A PE file is "MZ" with the offset of its "PE\\0\\0" header at 0x3C; the header itself is
    checked, so text that merely begins with "MZ" is not a program.
    """
    with _opened(source) as f:
        f.seek(0)
        head = f.read(64)
        if head.startswith(_ELF):
            return "application/x-executable"
        if head[:4] in _MACHO:
            return "application/x-mach-binary"
        if head.startswith(b"MZ") and len(head) == 64:
            (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
            if 0 < pe_offset < 1 << 20:
                f.seek(pe_offset)
                if f.read(4) == b"PE\0\0":
                    return "application/x-dosexec"
    return None


def _runnable_inside(handle: BinaryIO) -> str | None:
    """A runnable format the content also is, whatever its detected type (a polyglot's other
    half): a Java or Android archive by its central directory, or a program header."""
    try:
        directory = zip_directory(handle)
        header = program_header(handle)
    except (OSError, struct.error, ValueError):
        return None
    if directory is not None and directory.is_android_app:
        return "application/vnd.android.package-archive"
    if directory is not None and directory.has_manifest:
        return "application/java-archive"
    return header


def _image_size(handle: BinaryIO) -> tuple[int | None, int | None]:
    """Width and height from the image header; never decodes the pixels."""
    try:
        handle.seek(0)
        with Image.open(handle) as image:
            width, height = image.size
    except Exception:  # includes Image.DecompressionBombError and any unreadable header
        return None, None
    if width <= 0 or height <= 0:
        return None, None
    return int(width), int(height)


def inspect_file(source: Path | BinaryIO, sha256: str | None = None) -> FileFacts:
    """Inspect the file at ``source`` (a path, or a seekable binary file) and return its facts.

    Synchronous: run it in a thread. The SHA-256 is computed by streaming the file unless the
    caller already has it (hex, e.g. from hashing while downloading).
    """
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return _inspect(handle, sha256)
    return _inspect(source, sha256)


def _inspect(handle: BinaryIO, sha256: str | None) -> FileFacts:
    if sha256 is None:
        size, sha256 = _hash_file(handle)
    else:
        size = handle.seek(0, 2)
        sha256 = sha256.lower()
    mimetype = EMPTY_MIMETYPE if size == 0 else _detect_mimetype(handle)
    # Whatever libmagic saw at the start, the end may hold a runnable archive.
    runnable = _runnable_inside(handle) if size else None
    also_runnable = None
    if mimetype in _ZIP_TYPES and runnable is not None:
        mimetype = runnable  # a JAR or APK that libmagic calls a plain zip
    elif runnable is not None and executable_kind(mimetype) is None:
        also_runnable = runnable
    width: int | None = None
    height: int | None = None
    if mimetype.startswith("image/"):
        width, height = _image_size(handle)
    return FileFacts(
        size=size,
        sha256=sha256,
        mimetype=mimetype,
        description=describe_mimetype(mimetype),
        width=width,
        height=height,
        is_executable=executable_kind(mimetype) is not None or also_runnable is not None,
        also_runnable=also_runnable,
    )
