"""Pure verdicts: may this file go to the other side, and if not, why (in plain words)?

Rules, in order: empty files, files over the size limit, polyglots (a document or image that
is at the same time a runnable archive or program), disguised code (a name or declared
type claiming a harmless type over executable content), executables (by content, or by a
dangerous name extension) when the direction blocks them, then the blocked and allowed type
lists matched on the *detected* type. A declared type that merely differs from the detected
one is fine: the detected type wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.attachments.inspect import (
    FileFacts,
    describe_mimetype,
    executable_kind,
    normalize_mimetype,
)
from bot.attachments.text import human_size, strip_invisible

if TYPE_CHECKING:
    from bot.config import DirectionPolicy


# Raster types clients decode and show in-line; one whose size cannot be read is not trusted.
_RASTER_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/x-ms-bmp",
     "image/tiff", "image/avif", "image/heic", "image/heif"}
)  # fmt: skip


def image_too_large(
    mimetype: str | None, width: int | None, height: int | None, max_pixels: int
) -> bool:
    """Whether an image has more pixels than ``max_pixels`` (a decompression bomb, perhaps).

    Measured from the header only. A raster image whose size could not be read (Pillow
    refuses to even open images of hundreds of megapixels) counts as too large; anything that
    is not an image never does.
    """
    if width and height:
        return width * height > max_pixels
    return mimetype in _RASTER_TYPES


def megapixels(pixels: int) -> str:
    """ "40 megapixels", "1.5 megapixels"."""
    value = round(pixels / 1_000_000, 1)
    return f"{value:g} megapixels"


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one file.

    ``reason`` completes "<file name> was not sent: <reason>" and is "" when allowed.
    """

    allowed: bool
    code: str
    reason: str


OK = Verdict(allowed=True, code="ok", reason="")

# Extensions that make an operating system run the file (or hand it to an interpreter) when it
# is opened. Matched on the last extension, after invisible characters are removed.
DANGEROUS_EXTENSIONS = frozenset(
    {
        # Windows programs, installers, libraries, shortcuts
        "exe", "scr", "com", "pif", "cpl", "dll", "sys", "msi", "msp", "msu", "mst",
        "lnk", "url", "scf", "reg", "inf", "hta", "chm", "msc", "gadget",
        "application", "appref-ms", "appx", "appxbundle", "msix", "msixbundle", "xll",
        "vhd", "vhdx",
        # Windows scripts
        "bat", "cmd", "js", "jse", "vbs", "vbe", "vb", "wsf", "wsh", "ws", "wsc",
        "ps1", "psm1", "psd1", "ps1xml",
        # Unix scripts and packages
        "sh", "bash", "csh", "ksh", "zsh", "command", "run", "deb", "rpm",
        # macOS
        "app", "dmg", "pkg",
        # Java, Android, Python, Perl
        "jar", "jnlp", "class", "apk", "py", "pyw", "pyc", "pyz", "pl",
    }
)  # fmt: skip

# Extensions that claim a harmless type, mapped to that type (for the "disguised" rule).
_HARMLESS_EXTENSIONS: dict[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "jfif": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "heic": "image/heic",
    "heif": "image/heif",
    "avif": "image/avif",
    "svg": "image/svg+xml",
    "pdf": "application/pdf",
    "txt": "text/plain",
    "csv": "text/csv",
    "md": "text/markdown",
    "rtf": "application/rtf",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
}
_HARMLESS_PATTERNS = (
    "image/*",
    "audio/*",
    "video/*",
    "application/pdf",
    "text/plain",
    "text/csv",
    "text/markdown",
    "text/rtf",
    "application/rtf",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
)
_QUALIFIED = re.compile(r"^(.+) \((\w+)\)$")
# How many allowed patterns a "not allowed" reason lists before cutting short.
_LISTED_PATTERNS = 5


def mime_matches(mimetype: str, pattern: str) -> bool:
    """Whether ``mimetype`` matches ``pattern``: exact, "image/*", "*/*" (or "*").

    Case-insensitive; parameters (";charset=…") are ignored on both sides. A subtype pattern
    ending in "*" matches by prefix ("application/vnd.ms-*").
    """
    pattern = pattern.split(";", 1)[0].strip().lower()
    if pattern in ("*", "*/*"):
        return True
    mime = mimetype.split(";", 1)[0].strip().lower()
    kind, sep, sub = mime.partition("/")
    pkind, psep, psub = pattern.partition("/")
    if not sep or not psep:
        return False
    if pkind != "*" and pkind != kind:
        return False
    if psub.endswith("*"):
        return sub.startswith(psub[:-1])
    return psub == sub


def too_large(size_so_far: int, policy: DirectionPolicy) -> Verdict:
    """Verdict while streaming, before the facts exist: refused once past ``max_size``."""
    if size_so_far > policy.max_size:
        return Verdict(
            allowed=False,
            code="too_large",
            reason=f"it is larger than the limit of {human_size(policy.max_size)}",
        )
    return OK


def file_extension(filename: str) -> str:
    """Return the lower-case last extension of a name, without the dot ("" if none).

    Invisible characters are removed first (``invoice\\u202efdp.exe`` → "exe"), and so are
    trailing dots and spaces, which Windows ignores (``evil.exe.`` → "exe").
    """
    name = strip_invisible(filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = name.rstrip(". ")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem.strip("."):
        return ""
    return ext.strip().lower()


def _with_article(description: str) -> str:
    """ "PNG image" → "a PNG image", "MP4 video" → "an MP4 video", "Excel…" → "an Excel…"."""
    word = description.split(" ", 1)[0]
    if (len(word) > 1 and word.isupper()) or word[:1].isdigit():
        vowel_sound = word[0] in "AEFHILMNORSX8"
    else:
        vowel_sound = word[:1].lower() in "aeiou"
    return ("an " if vowel_sound else "a ") + description


def _inline(description: str) -> str:
    """ "program (Windows)" → "Windows program", so a MIME type can follow in parentheses."""
    match = _QUALIFIED.match(description)
    return f"{match.group(2)} {match.group(1)}" if match else description


def _harmless_claim(filename: str, declared_mimetype: str | None) -> str | None:
    """The harmless type the sender claims (declared type first, then extension), if any."""
    if declared_mimetype:
        declared = normalize_mimetype(declared_mimetype)
        if any(mime_matches(declared, p) for p in _HARMLESS_PATTERNS):
            return declared
    return _HARMLESS_EXTENSIONS.get(file_extension(filename))


def _list_patterns(patterns: tuple[str, ...]) -> str:
    shown = ", ".join(patterns[:_LISTED_PATTERNS])
    return shown + (", …" if len(patterns) > _LISTED_PATTERNS else "")


def evaluate(
    facts: FileFacts,
    filename: str,
    declared_mimetype: str | None,
    policy: DirectionPolicy,
    reject_large_images_over: int | None = None,
) -> Verdict:
    """Decide whether a file may be offered to the other side.

    ``filename`` and ``declared_mimetype`` are the sender's (untrusted) claims; every type
    rule is applied to ``facts.mimetype``, the type detected from the content. With
    ``reject_large_images_over`` (``policy.large_images: reject``), images with more pixels
    are refused.
    """
    detected = facts.mimetype
    if facts.size == 0:
        return Verdict(False, "empty", "it is empty")
    if facts.size > policy.max_size:
        return Verdict(
            False,
            "too_large",
            f"it is {human_size(facts.size)}, and the limit is {human_size(policy.max_size)}",
        )

    if facts.also_runnable is not None:
        # A polyglot: shown as a document, runnable as a program. Refused whatever the rules on
        # programs say, since the recipient would trust what the card calls it.
        return Verdict(
            False,
            "polyglot",
            f"it is {_with_article(_inline(facts.description))} ({detected}) but also a "
            f"runnable {_inline(describe_mimetype(facts.also_runnable))} "
            f"({facts.also_runnable}), and a file that is both is never sent",
        )

    kind = executable_kind(detected) or ("program" if facts.is_executable else None)
    if kind is not None:
        claim = _harmless_claim(filename, declared_mimetype)
        if claim is not None:
            return Verdict(
                False,
                "disguised",
                f"it claims to be {_with_article(_inline(describe_mimetype(claim)))} "
                f"but is a {kind} ({detected})",
            )
        if policy.block_executables:
            return Verdict(
                False,
                "executable",
                f"it is a {kind} ({detected}), and {kind}s are not allowed",
            )

    extension = file_extension(filename)
    if policy.block_executables and extension in DANGEROUS_EXTENSIONS:
        return Verdict(
            False,
            "executable",
            f"its name ends in .{extension}, which is run as a program, "
            "and programs are not allowed",
        )

    description = f"{_with_article(_inline(facts.description))} ({detected})"
    if reject_large_images_over is not None and image_too_large(
        detected, facts.width, facts.height, reject_large_images_over
    ):
        if facts.width and facts.height:
            what = (f"a {facts.width}×{facts.height} image "
                    f"({megapixels(facts.width * facts.height)})")
        else:
            what = "an image too large to measure"
        return Verdict(
            False,
            "image_too_large",
            f"it is {what}, and images over {megapixels(reject_large_images_over)} are not "
            "allowed",
        )
    if any(mime_matches(detected, p) for p in policy.blocked_types):
        return Verdict(False, "blocked_type", f"it is {description}, and this type is not allowed")
    if policy.allowed_types and not any(mime_matches(detected, p) for p in policy.allowed_types):
        return Verdict(
            False,
            "not_allowed_type",
            f"it is {description}, and only these types are allowed: "
            f"{_list_patterns(policy.allowed_types)}",
        )
    return OK
