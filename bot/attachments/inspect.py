"""Facts about a file on disk: size, SHA-256, detected type, plain-words description, image size.

Pure and synchronous (the caller runs :func:`inspect_file` in a thread). The type is detected
from the content with libmagic, never taken from the sender's claims.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import magic
from PIL import Image

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
EMPTY_MIMETYPE = "application/x-empty"
UNKNOWN_MIMETYPE = "application/octet-stream"
# libmagic says "inode/x-empty" for an empty file and "application/x-empty" for an empty
# buffer; both become EMPTY_MIMETYPE.
_EMPTY_ALIASES = frozenset({"inode/x-empty", "application/x-empty"})
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed"})
# A zip with more entries than this is not opened to look for a JAR manifest (bounded memory).
_MAX_ZIP_ENTRIES = 10_000


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

_DESCRIPTIONS: dict[str, str] = {
    EMPTY_MIMETYPE: "empty file",
    UNKNOWN_MIMETYPE: "file of unknown type",
    # images
    "image/png": "PNG image",
    "image/jpeg": "JPEG image",
    "image/gif": "GIF image",
    "image/webp": "WebP image",
    "image/bmp": "BMP image",
    "image/x-ms-bmp": "BMP image",
    "image/tiff": "TIFF image",
    "image/heic": "HEIC image",
    "image/heif": "HEIF image",
    "image/avif": "AVIF image",
    "image/svg+xml": "SVG image",
    "image/x-icon": "icon",
    "image/vnd.microsoft.icon": "icon",
    # documents
    "application/pdf": "PDF document",
    "text/plain": "text file",
    "text/csv": "CSV file",
    "text/html": "HTML document",
    "text/markdown": "Markdown text",
    "text/xml": "XML file",
    "application/xml": "XML file",
    "application/json": "JSON file",
    "text/rtf": "RTF document",
    "application/rtf": "RTF document",
    "application/msword": "Word document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word document",
    "application/vnd.ms-excel": "Excel spreadsheet",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "Excel spreadsheet",
    "application/vnd.ms-powerpoint": "PowerPoint presentation",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "PowerPoint presentation"
    ),
    "application/vnd.oasis.opendocument.text": "OpenDocument text",
    "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument spreadsheet",
    "application/vnd.oasis.opendocument.presentation": "OpenDocument presentation",
    "application/x-ole-storage": "Office document (old format)",
    "application/epub+zip": "e-book",
    # archives
    "application/zip": "ZIP archive",
    "application/x-zip-compressed": "ZIP archive",
    "application/gzip": "gzip archive",
    "application/x-gzip": "gzip archive",
    "application/x-tar": "tar archive",
    "application/x-bzip2": "bzip2 archive",
    "application/x-xz": "xz archive",
    "application/x-7z-compressed": "7-Zip archive",
    "application/vnd.rar": "RAR archive",
    "application/x-rar": "RAR archive",
    "application/x-iso9660-image": "disk image",
    # audio and video
    "video/mp4": "MP4 video",
    "video/quicktime": "QuickTime video",
    "video/webm": "WebM video",
    "video/x-matroska": "Matroska video",
    "video/x-msvideo": "AVI video",
    "audio/mpeg": "MP3 audio",
    "audio/ogg": "Ogg audio",
    "application/ogg": "Ogg media",
    "audio/wav": "WAV audio",
    "audio/x-wav": "WAV audio",
    "audio/flac": "FLAC audio",
    "audio/x-flac": "FLAC audio",
    "audio/mp4": "M4A audio",
    "audio/x-m4a": "M4A audio",
    # programs
    "application/x-dosexec": "program (Windows)",
    "application/vnd.microsoft.portable-executable": "program (Windows)",
    "application/x-msdownload": "program (Windows)",
    "application/x-ms-dos-executable": "program (Windows)",
    "application/x-msi": "installer (Windows)",
    "application/x-ms-installer": "installer (Windows)",
    "application/x-ms-shortcut": "shortcut (Windows)",
    "application/x-executable": "program (Linux)",
    "application/x-pie-executable": "program (Linux)",
    "application/x-sharedlib": "program library (Linux)",
    "application/x-elf": "program (Linux)",
    "application/x-object": "compiled code",
    "application/x-mach-binary": "program (macOS)",
    "application/x-mach-o-executable": "program (macOS)",
    "application/x-apple-diskimage": "disk image (macOS)",
    "application/java-archive": "Java program",
    "application/x-java-archive": "Java program",
    "application/x-java-applet": "Java program",
    "application/java-vm": "Java program",
    "application/vnd.android.package-archive": "Android app",
    # scripts
    "text/x-shellscript": "shell script",
    "application/x-sh": "shell script",
    "application/x-shellscript": "shell script",
    "application/x-csh": "shell script",
    "text/x-script.python": "Python script",
    "text/x-python": "Python script",
    "application/x-python": "Python script",
    "text/x-perl": "Perl script",
    "application/x-perl": "Perl script",
    "text/x-ruby": "Ruby script",
    "application/x-ruby": "Ruby script",
    "text/x-php": "PHP script",
    "application/x-php": "PHP script",
    "text/x-lua": "Lua script",
    "text/x-tcl": "Tcl script",
    "text/x-awk": "awk script",
    "text/x-msdos-batch": "batch script (Windows)",
    "application/x-bat": "batch script (Windows)",
    "application/bat": "batch script (Windows)",
    "application/javascript": "JavaScript",
    "text/javascript": "JavaScript",
    "application/x-javascript": "JavaScript",
    "text/vbscript": "VBScript",
    "application/x-powershell": "PowerShell script",
}

# Short, plain subtype labels only: a declared type is untrusted text and may be anything.
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_MEDIA_NOUNS = {"image": "image", "video": "video", "audio": "audio"}


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
    noun = _MEDIA_NOUNS.get(kind, "file")
    if 0 < len(sub) <= 12 and set(sub) <= _LABEL:
        return f"{sub.upper()} {noun}"
    if kind == "text":
        return "text file"
    return noun


# --- inspection ----------------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[int, str]:
    digest = StreamingDigest()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.size, digest.hexdigest()


def _detect_mimetype(path: Path) -> str:
    try:
        raw = magic.from_file(str(path), mime=True)
    except Exception:  # libmagic can fail on odd input; the file is then "unknown"
        logger.warning("libmagic could not identify %s", path, exc_info=True)
        return UNKNOWN_MIMETYPE
    return normalize_mimetype(raw if isinstance(raw, str) else UNKNOWN_MIMETYPE)


def _zip_entry_count(path: Path) -> int | None:
    """Entry count from the zip's end-of-central-directory record, or None if not found."""
    with path.open("rb") as f:
        f.seek(0, 2)
        end = f.tell()
        tail_size = min(end, 22 + 0xFFFF)
        f.seek(end - tail_size)
        tail = f.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (count,) = struct.unpack_from("<H", tail, at + 10)
    return None if count == 0xFFFF else int(count)


def _refine_zip(path: Path) -> str | None:
    """Spot a JAR or APK that libmagic calls a plain zip (it only checks the first entry)."""
    try:
        count = _zip_entry_count(path)
        if count is None or count > _MAX_ZIP_ENTRIES:
            return None
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except Exception:  # a damaged zip is still a zip
        return None
    if "AndroidManifest.xml" in names and "classes.dex" in names:
        return "application/vnd.android.package-archive"
    if "META-INF/MANIFEST.MF" in names:
        return "application/java-archive"
    return None


def _image_size(path: Path) -> tuple[int | None, int | None]:
    """Width and height from the image header; never decodes the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # includes Image.DecompressionBombError and any unreadable header
        return None, None
    if width <= 0 or height <= 0:
        return None, None
    return int(width), int(height)


def inspect_file(path: Path, sha256: str | None = None) -> FileFacts:
    """Inspect the file at ``path`` and return its facts.

    Synchronous: run it in a thread. The SHA-256 is computed by streaming the file unless the
    caller already has it (hex, e.g. from hashing while downloading).
    """
    if sha256 is None:
        size, sha256 = _hash_file(path)
    else:
        size = path.stat().st_size
        sha256 = sha256.lower()
    mimetype = EMPTY_MIMETYPE if size == 0 else _detect_mimetype(path)
    if mimetype in _ZIP_TYPES:
        mimetype = _refine_zip(path) or mimetype
    width: int | None = None
    height: int | None = None
    if mimetype.startswith("image/"):
        width, height = _image_size(path)
    return FileFacts(
        size=size,
        sha256=sha256,
        mimetype=mimetype,
        description=describe_mimetype(mimetype),
        width=width,
        height=height,
        is_executable=executable_kind(mimetype) is not None,
    )
