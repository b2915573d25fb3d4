"""Pure verdicts: may this file go to the other side, and if not, why (in plain words)?

Rules, in order: empty files, files over the size limit, polyglots (a document or image that
is at the same time a runnable archive or program), disguised code (a name or declared
type claiming a harmless type over executable content), executables (by content, or by a
dangerous name extension) when the direction blocks them, then the blocked and allowed type
lists matched on the *detected* type. A declared type that merely differs from the detected
one is fine: the detected type wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.attachments import reasons
from bot.attachments.inspect import (
    FileFacts,
    executable_kind,
    normalize_mimetype,
)
from bot.attachments.text import strip_invisible
from bot.i18n import N_

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
    return reasons.Reason("{value}", {"value": reasons.megapixels(pixels)}).render()


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one file.

    ``reason`` completes "<file name> was not sent: <reason>" and is "" when allowed; it is
    English (logs, the admin CLI). ``facts`` is the same reason as a catalog message and its
    values, rendered for each reader (stored with the offer).
    """

    allowed: bool
    code: str
    reason: str
    # Not compared: two verdicts are equal when they say the same (the facts render to it).
    facts: reasons.Reason | None = field(default=None, compare=False)


def _refused(code: str, message: str, **values: Any) -> Verdict:
    """A refusal whose reason is ``message`` (a catalog message) with ``values``."""
    facts = reasons.Reason(message, values)
    return Verdict(False, code, facts.render(), facts)


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
        return _refused("too_large", N_("it is larger than the limit of {limit}"),
                        limit=reasons.size(policy.max_size))
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
        return _refused("empty", N_("it is empty"))
    if facts.size > policy.max_size:
        return _refused("too_large", N_("it is {size}, and the limit is {limit}"),
                        size=reasons.size(facts.size), limit=reasons.size(policy.max_size))

    if facts.also_runnable is not None:
        # A polyglot: shown as a document, runnable as a program. Refused whatever the rules on
        # programs say, since the recipient would trust what the card calls it.
        return _refused(
            "polyglot",
            N_("it is {kind} ({mimetype}) but also a runnable {other} ({other_mimetype}), and "
               "a file that is both is never sent"),
            kind=reasons.kind(detected, article=True), mimetype=detected,
            other=reasons.kind(facts.also_runnable), other_mimetype=facts.also_runnable,
        )

    kind = executable_kind(detected) or ("program" if facts.is_executable else None)
    if kind is not None:
        claim = _harmless_claim(filename, declared_mimetype)
        if claim is not None:
            message = (N_("it claims to be {claim} but is a program ({mimetype})")
                       if kind == "program" else
                       N_("it claims to be {claim} but is a script ({mimetype})"))
            return _refused("disguised", message, claim=reasons.kind(claim, article=True),
                            mimetype=detected)
        if policy.block_executables:
            message = (N_("it is a program ({mimetype}), and programs are not allowed")
                       if kind == "program" else
                       N_("it is a script ({mimetype}), and scripts are not allowed"))
            return _refused("executable", message, mimetype=detected)

    extension = file_extension(filename)
    if policy.block_executables and extension in DANGEROUS_EXTENSIONS:
        return _refused(
            "executable",
            N_("its name ends in .{extension}, which is run as a program, and programs are not "
               "allowed"),
            extension=extension,
        )

    if reject_large_images_over is not None and image_too_large(
        detected, facts.width, facts.height, reject_large_images_over
    ):
        limit = reasons.megapixels(reject_large_images_over)
        if facts.width and facts.height:
            return _refused(
                "image_too_large",
                N_("it is a {width}×{height} image ({megapixels}), and images over {limit} are "
                   "not allowed"),
                width=facts.width, height=facts.height,
                megapixels=reasons.megapixels(facts.width * facts.height), limit=limit,
            )
        return _refused("image_too_large", N_("it is an image too large to measure, and images "
                                              "over {limit} are not allowed"), limit=limit)
    described = reasons.kind(detected, article=True)
    if any(mime_matches(detected, p) for p in policy.blocked_types):
        return _refused("blocked_type", N_("it is {kind} ({mimetype}), and this type is not "
                                           "allowed"), kind=described, mimetype=detected)
    if policy.allowed_types and not any(mime_matches(detected, p) for p in policy.allowed_types):
        return _refused(
            "not_allowed_type",
            N_("it is {kind} ({mimetype}), and only these types are allowed: {types}"),
            kind=described, mimetype=detected, types=_list_patterns(policy.allowed_types),
        )
    return OK
