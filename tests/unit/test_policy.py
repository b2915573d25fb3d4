"""Policy verdicts from file facts, the sender's claims and a direction's policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.attachments.inspect import FileFacts, describe_mimetype, executable_kind, inspect_file
from bot.attachments.policy import (
    OK,
    Verdict,
    evaluate,
    file_extension,
    mime_matches,
    too_large,
)
from bot.config import DirectionPolicy

MB = 1_000_000
DEFAULT = DirectionPolicy(max_size=25 * MB, allowed_types=(), blocked_types=())
PERMISSIVE = DirectionPolicy(
    max_size=25 * MB, allowed_types=(), blocked_types=(), block_executables=False
)
IMAGES_AND_PDF = DirectionPolicy(
    max_size=25 * MB, allowed_types=("image/*", "application/pdf"), blocked_types=()
)
NO_SVG = DirectionPolicy(
    max_size=25 * MB, allowed_types=("image/*",), blocked_types=("image/svg+xml",)
)
NO_ARCHIVES = DirectionPolicy(
    max_size=25 * MB,
    allowed_types=(),
    blocked_types=("application/zip", "application/x-7z-compressed"),
)
MANY_ALLOWED = DirectionPolicy(
    max_size=25 * MB,
    allowed_types=("image/png", "image/jpeg", "image/gif", "application/pdf", "text/plain",
                   "text/csv", "video/mp4"),
    blocked_types=(),
)  # fmt: skip


def facts(mimetype: str, size: int = 1234) -> FileFacts:
    """Facts for a file of the given detected type, as inspect_file would report them."""
    return FileFacts(
        size=size,
        sha256="0" * 64,
        mimetype=mimetype,
        description=describe_mimetype(mimetype),
        width=None,
        height=None,
        is_executable=executable_kind(mimetype) is not None,
    )


PNG = facts("image/png")
PE = facts("application/vnd.microsoft.portable-executable")
MZ = facts("application/x-dosexec")
ELF = facts("application/x-pie-executable")
SH = facts("text/x-shellscript")
PY = facts("text/x-script.python")
TEXT = facts("text/plain")
PDF = facts("application/pdf")
ZIP = facts("application/zip")
JAR = facts("application/java-archive")

# (id, facts, filename, declared mimetype, policy, code, reason)
CASES: list[tuple[str, FileFacts, str, str | None, DirectionPolicy, str, str]] = [
    ("plain png", PNG, "cat.png", "image/png", DEFAULT, "ok", ""),
    ("declared jpeg, detected png", PNG, "cat.jpg", "image/jpeg", DEFAULT, "ok", ""),
    ("no declared type", PDF, "report.pdf", None, DEFAULT, "ok", ""),
    ("declared octet-stream", ZIP, "files.zip", "application/octet-stream", DEFAULT, "ok", ""),
    ("empty", facts("application/x-empty", size=0), "e.txt", "text/plain", DEFAULT, "empty",
     "it is empty"),
    ("empty beats everything", facts("application/x-empty", size=0), "e.exe", None,
     IMAGES_AND_PDF, "empty", "it is empty"),
    ("too large", facts("video/mp4", size=31_500_000), "film.mp4", "video/mp4", DEFAULT,
     "too_large", "it is 31.5 MB, and the limit is 25 MB"),
    ("exactly the limit", facts("video/mp4", size=25 * MB), "film.mp4", None, DEFAULT, "ok", ""),
    ("one byte over", facts("video/mp4", size=25 * MB + 1), "film.mp4", None, DEFAULT,
     "too_large", "it is 25 MB, and the limit is 25 MB"),
    # executables by content
    ("elf", ELF, "tool", None, DEFAULT, "executable",
     "it is a program (application/x-pie-executable), and programs are not allowed"),
    ("plain linux executable", facts("application/x-executable"), "tool", None, DEFAULT,
     "executable", "it is a program (application/x-executable), and programs are not allowed"),
    ("pe named exe", PE, "setup.exe", "application/x-msdownload", DEFAULT, "executable",
     "it is a program (application/vnd.microsoft.portable-executable), "
     "and programs are not allowed"),
    ("shell script", SH, "run.sh", "application/x-sh", DEFAULT, "executable",
     "it is a script (text/x-shellscript), and scripts are not allowed"),
    ("script without extension", PY, "tool", None, DEFAULT, "executable",
     "it is a script (text/x-script.python), and scripts are not allowed"),
    ("jar", JAR, "app.jar", None, DEFAULT, "executable",
     "it is a program (application/java-archive), and programs are not allowed"),
    ("executables allowed", ELF, "tool", None, PERMISSIVE, "ok", ""),
    # executables by name
    ("bidi-reversed exe", TEXT, "invoice\u202efdp.exe", None, DEFAULT, "executable",
     "its name ends in .exe, which is run as a program, and programs are not allowed"),
    ("upper-case extension", TEXT, "RUN.BAT", None, DEFAULT, "executable",
     "its name ends in .bat, which is run as a program, and programs are not allowed"),
    ("trailing dot and space", TEXT, "evil.exe. ", None, DEFAULT, "executable",
     "its name ends in .exe, which is run as a program, and programs are not allowed"),
    ("powershell as text", TEXT, "fix.ps1", "text/plain", DEFAULT, "executable",
     "its name ends in .ps1, which is run as a program, and programs are not allowed"),
    ("javascript as text", TEXT, "a.js", None, DEFAULT, "executable",
     "its name ends in .js, which is run as a program, and programs are not allowed"),
    ("zero-width in extension", TEXT, "a.v\u200bbs", None, DEFAULT, "executable",
     "its name ends in .vbs, which is run as a program, and programs are not allowed"),
    ("double extension", ZIP, "photo.png.scr", None, DEFAULT, "executable",
     "its name ends in .scr, which is run as a program, and programs are not allowed"),
    ("dangerous name allowed", TEXT, "fix.ps1", None, PERMISSIVE, "ok", ""),
    ("exe only in the middle", PDF, "notes.exe.pdf", None, DEFAULT, "ok", ""),
    # disguised executables
    ("pe claiming png by type", PE, "cat.png", "image/png", DEFAULT, "disguised",
     "it claims to be a PNG image but is a program "
     "(application/vnd.microsoft.portable-executable)"),
    ("mz claiming png by name", MZ, "cat.png", None, DEFAULT, "disguised",
     "it claims to be a PNG image but is a program (application/x-dosexec)"),
    ("declared type checked first", MZ, "cat.png", "application/pdf", DEFAULT, "disguised",
     "it claims to be a PDF document but is a program (application/x-dosexec)"),
    ("elf claiming pdf", ELF, "report.pdf", None, DEFAULT, "disguised",
     "it claims to be a PDF document but is a program (application/x-pie-executable)"),
    ("script claiming text", SH, "notes.txt", "text/plain", DEFAULT, "disguised",
     "it claims to be a text file but is a script (text/x-shellscript)"),
    ("script claiming word", SH, "cv.docx", None, DEFAULT, "disguised",
     "it claims to be a Word document but is a script (text/x-shellscript)"),
    ("exe claiming mp4", PE, "film.MP4", None, DEFAULT, "disguised",
     "it claims to be an MP4 video but is a program "
     "(application/vnd.microsoft.portable-executable)"),
    ("exe claiming image with params", MZ, "x", "IMAGE/JPEG; q=1", DEFAULT, "disguised",
     "it claims to be a JPEG image but is a program (application/x-dosexec)"),
    ("bidi name hiding a png claim", MZ, "gpj.\u202eexe.png", None, DEFAULT, "disguised",
     "it claims to be a PNG image but is a program (application/x-dosexec)"),
    ("disguise refused even when programs pass", MZ, "cat.png", None, PERMISSIVE, "disguised",
     "it claims to be a PNG image but is a program (application/x-dosexec)"),
    ("exe declared as exe is not a disguise", PE, "x.bin", "application/x-msdownload",
     DEFAULT, "executable",
     "it is a program (application/vnd.microsoft.portable-executable), "
     "and programs are not allowed"),
    ("png named exe is no disguise", PNG, "cat.exe", "image/png", DEFAULT, "executable",
     "its name ends in .exe, which is run as a program, and programs are not allowed"),
    # type lists, on the detected type
    ("allowed image", PNG, "cat.png", None, IMAGES_AND_PDF, "ok", ""),
    ("allowed pdf", PDF, "r.pdf", None, IMAGES_AND_PDF, "ok", ""),
    ("zip not in allowed list", ZIP, "files.zip", None, IMAGES_AND_PDF, "not_allowed_type",
     "it is a ZIP archive (application/zip), and only these types are allowed: "
     "image/*, application/pdf"),
    ("declared png does not help a zip", ZIP, "cat.png", "image/png", IMAGES_AND_PDF,
     "not_allowed_type",
     "it is a ZIP archive (application/zip), and only these types are allowed: "
     "image/*, application/pdf"),
    ("long allowed list is cut", ZIP, "a.zip", None, MANY_ALLOWED, "not_allowed_type",
     "it is a ZIP archive (application/zip), and only these types are allowed: "
     "image/png, image/jpeg, image/gif, application/pdf, text/plain, …"),
    ("blocked before allowed", facts("image/svg+xml"), "logo.svg", None, NO_SVG, "blocked_type",
     "it is an SVG image (image/svg+xml), and this type is not allowed"),
    ("blocked zip", ZIP, "a.zip", None, NO_ARCHIVES, "blocked_type",
     "it is a ZIP archive (application/zip), and this type is not allowed"),
    ("not blocked", PDF, "a.pdf", None, NO_ARCHIVES, "ok", ""),
    ("executable before types", ELF, "tool", None, IMAGES_AND_PDF, "executable",
     "it is a program (application/x-pie-executable), and programs are not allowed"),
    ("permissive executable still type-checked", ELF, "tool", None,
     DirectionPolicy(max_size=MB, allowed_types=("image/*",), blocked_types=(),
                     block_executables=False),
     "not_allowed_type",
     "it is a Linux program (application/x-pie-executable), and only these types are "
     "allowed: image/*"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file_facts", "filename", "declared", "policy", "code", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_evaluate(
    file_facts: FileFacts,
    filename: str,
    declared: str | None,
    policy: DirectionPolicy,
    code: str,
    reason: str,
) -> None:
    """Each case gets the expected verdict code and plain-words reason."""
    verdict = evaluate(file_facts, filename, declared, policy)
    assert verdict == Verdict(allowed=code == "ok", code=code, reason=reason)


def test_is_executable_flag_alone_counts_as_a_program() -> None:
    """Facts flagged executable are refused even if the type is not one the table knows."""
    odd = FileFacts(
        size=10, sha256="0" * 64, mimetype="application/x-new-thing", description="NEW-THING file",
        width=None, height=None, is_executable=True,
    )  # fmt: skip
    verdict = evaluate(odd, "thing", None, DEFAULT)
    assert verdict.code == "executable"
    assert verdict.reason == (
        "it is a program (application/x-new-thing), and programs are not allowed"
    )


@pytest.mark.parametrize(
    ("size", "verdict"),
    [
        (0, OK),
        (25 * MB, OK),
        (25 * MB + 1, Verdict(False, "too_large", "it is larger than the limit of 25 MB")),
        (10**12, Verdict(False, "too_large", "it is larger than the limit of 25 MB")),
    ],
)
def test_too_large_while_streaming(size: int, verdict: Verdict) -> None:
    """While streaming, a file is refused as soon as it passes the size limit."""
    assert too_large(size, DEFAULT) == verdict


@pytest.mark.parametrize(
    ("mimetype", "pattern", "expected"),
    [
        ("image/png", "image/png", True),
        ("image/png", "image/*", True),
        ("image/png", "*/*", True),
        ("image/png", "*", True),
        ("IMAGE/PNG", "image/png", True),
        ("image/png", "Image/*", True),
        ("text/plain; charset=utf-8", "text/plain", True),
        ("text/plain", "text/plain; charset=utf-8", True),
        ("image/png", "image/jpeg", False),
        ("image/png", "video/*", False),
        ("image/pngx", "image/png", False),
        ("imagex/png", "image/*", False),
        ("application/vnd.ms-excel", "application/vnd.ms-*", True),
        ("application/vnd.oasis.opendocument.text", "application/vnd.ms-*", False),
        ("image/svg+xml", "*/svg+xml", True),
        ("garbage", "image/*", False),
        ("garbage", "*/*", True),
        ("image/png", "image", False),
    ],
)
def test_mime_matches(mimetype: str, pattern: str, expected: bool) -> None:
    """Patterns match exactly or by wildcard, ignoring case and parameters."""
    assert mime_matches(mimetype, pattern) is expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("a.pdf", "pdf"),
        ("A.PDF", "pdf"),
        ("archive.tar.gz", "gz"),
        ("noext", ""),
        (".bashrc", ""),
        ("..", ""),
        ("evil.exe.", "exe"),
        ("evil.exe  . .", "exe"),
        ("invoice\u202efdp.exe", "exe"),
        ("dir.d/file", ""),
        ("C:\\x\\y.bat", "bat"),
        ("", ""),
    ],
)
def test_file_extension(filename: str, expected: str) -> None:
    """The extension is the last one, after invisible characters and trailing dots are gone."""
    assert file_extension(filename) == expected


def _write_pe(path: Path) -> None:
    path.write_bytes(b"MZ" + b"\x00" * 200)


def test_real_disguised_file_end_to_end(tmp_path: Path) -> None:
    """An MZ program saved as cat.png and declared image/png is caught through inspect_file."""
    path = tmp_path / "cat.png"
    _write_pe(path)
    verdict = evaluate(inspect_file(path), "cat.png", "image/png", DEFAULT)
    assert verdict == Verdict(
        False, "disguised", "it claims to be a PNG image but is a program (application/x-dosexec)"
    )


# --- polyglots and pixel bombs ----------------------------------------------------------------

from dataclasses import replace  # noqa: E402

from bot.attachments.policy import image_too_large, megapixels  # noqa: E402

POLYGLOT_PDF = replace(PDF, is_executable=True, also_runnable="application/java-archive")
POLYGLOT_PNG = replace(PNG, is_executable=True,
                       also_runnable="application/vnd.android.package-archive")


@pytest.mark.parametrize(
    ("facts_", "policy", "reason"),
    [
        (POLYGLOT_PDF, DEFAULT,
         "it is a PDF document (application/pdf) but also a runnable Java program "
         "(application/java-archive), and a file that is both is never sent"),
        (POLYGLOT_PDF, PERMISSIVE,
         "it is a PDF document (application/pdf) but also a runnable Java program "
         "(application/java-archive), and a file that is both is never sent"),
        (POLYGLOT_PNG, IMAGES_AND_PDF,
         "it is a PNG image (image/png) but also a runnable Android app "
         "(application/vnd.android.package-archive), and a file that is both is never sent"),
    ],
)
def test_polyglots_are_refused_whatever_the_rules_on_programs(
    facts_: FileFacts, policy: DirectionPolicy, reason: str
) -> None:
    """A document that is also a runnable archive is refused, saying both, even if programs pass."""
    verdict = evaluate(facts_, "invoice.pdf", "application/pdf", policy)
    assert (verdict.allowed, verdict.code, verdict.reason) == (False, "polyglot", reason)


@pytest.mark.parametrize(
    ("mimetype", "width", "height", "limit", "expected"),
    [
        ("image/png", 6000, 6000, 40_000_000, False),
        ("image/png", 7000, 7000, 40_000_000, True),
        ("image/png", 30000, 30000, 40_000_000, True),
        ("image/png", None, None, 40_000_000, True),  # too big for Pillow to even open
        ("image/jpeg", 1, 40_000_000, 40_000_000, False),
        ("image/gif", 1, 40_000_001, 40_000_000, True),
        ("image/svg+xml", None, None, 40_000_000, False),  # no pixels to count
        ("application/pdf", None, None, 40_000_000, False),
        (None, None, None, 1, False),
    ],
)
def test_image_too_large(
    mimetype: str | None, width: int | None, height: int | None, limit: int, expected: bool
) -> None:
    """Images over the pixel limit, or raster images of unreadable size, are too large."""
    assert image_too_large(mimetype, width, height, limit) is expected


@pytest.mark.parametrize(
    ("pixels", "words"),
    [(40_000_000, "40 megapixels"), (1_500_000, "1.5 megapixels"), (900_000_000,
                                                                     "900 megapixels")],
)
def test_megapixels(pixels: int, words: str) -> None:
    """Pixel counts read as megapixels."""
    assert megapixels(pixels) == words


def test_large_images_refused_when_the_policy_says_so() -> None:
    """With a rejection limit, a huge image is refused with its size; a small one passes."""
    huge = replace(PNG, width=30000, height=30000)
    verdict = evaluate(huge, "photo.png", "image/png", DEFAULT, 40_000_000)
    assert (verdict.code, verdict.reason) == (
        "image_too_large",
        "it is a 30000×30000 image (900 megapixels), and images over 40 megapixels are not "
        "allowed",
    )
    unreadable = evaluate(PNG, "photo.png", "image/png", DEFAULT, 40_000_000)
    assert unreadable.reason == (
        "it is an image too large to measure, and images over 40 megapixels are not allowed"
    )
    small = replace(PNG, width=100, height=100)
    assert evaluate(small, "photo.png", "image/png", DEFAULT, 40_000_000).allowed
    assert evaluate(huge, "photo.png", "image/png", DEFAULT).allowed  # default: sent as a file
