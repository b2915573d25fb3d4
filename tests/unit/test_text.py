"""Safe display of untrusted file names and human-readable sizes."""

from __future__ import annotations

import unicodedata

import pytest

from bot.attachments.text import (
    UNNAMED,
    display_filename,
    human_size,
    safe_filename,
    strip_invisible,
)

NAME_CASES = [
    # (raw name, expected display name)
    ("report.pdf", "report.pdf"),
    ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(1)>.png"),
    ("../../etc/passwd", "etc_passwd"),
    ("..\\..\\Windows\\system32\\evil.dll", "Windows_system32_evil.dll"),
    ("C:\\Users\\me\\Desktop\\notes.txt", "C:_Users_me_Desktop_notes.txt"),
    ("folder/", "folder"),
    ("a/b.png", "a_b.png"),
    ("scans//./page 1.png", "scans_page 1.png"),
    ("../", UNNAMED),
    ("..", UNNAMED),
    (".", UNNAMED),
    ("/", UNNAMED),
    ("....", UNNAMED),
    ("a/..", "a"),
    ("", UNNAMED),
    ("   ", UNNAMED),
    (None, UNNAMED),
    (42, UNNAMED),
    (b"bytes.pdf", UNNAMED),
    (["list.pdf"], UNNAMED),
    ("nul\x00byte.txt", "nulbyte.txt"),
    ("bell\x07\x1b[31mred.txt", "bell[31mred.txt"),
    ("c1\x80\x9bcontrol.txt", "c1control.txt"),
    ("next\x85line.txt", "next line.txt"),
    ("del\x7f.txt", "del.txt"),
    ("invoice\u202efdp.exe", "invoicefdp.exe"),
    ("\u2066isolate\u2069\u200e\u200f\u061c.pdf", "isolate.pdf"),
    ("zero\u200bwidth\u200c\u200d\u2060\ufeff.png", "zerowidth.png"),
    ("lone\ud800surrogate.txt", "lonesurrogate.txt"),
    ("tabs\tand\nnewlines\r\n.txt", "tabs and newlines .txt"),
    ("  many    spaces   here.txt  ", "many spaces here.txt"),
    ("line\u2028separator.txt", "line separator.txt"),
    ("\u202e\u202e\u202e", UNNAMED),
    ("\x00", UNNAMED),
    ("e\u0301te\u0301.txt", "\u00e9t\u00e9.txt"),
    (".bashrc", ".bashrc"),
    ("日本語のファイル.pdf", "日本語のファイル.pdf"),
]


@pytest.mark.parametrize(("raw", "expected"), NAME_CASES)
def test_display_filename_cleans_hostile_names(raw: object, expected: str) -> None:
    """Each hostile name becomes the expected single, visible path component."""
    assert display_filename(raw) == expected


@pytest.mark.parametrize(("raw", "_expected"), NAME_CASES)
def test_safe_filename_matches_display_for_short_names(raw: object, _expected: str) -> None:
    """For names under both limits the delivered name equals the displayed one."""
    assert safe_filename(raw) == display_filename(raw)


HOSTILE = [
    "a" * 1000 + ".pdf",
    "\u202e" * 500 + "x" * 500,
    "../" * 300 + "deep.txt",
    "x/" * 400,
    "word " * 300 + ".docx",
    "\x00\x01\x02/..\\.\\",
    "e" + "\u0301" * 300,
]


@pytest.mark.parametrize("raw", HOSTILE + [c[0] for c in NAME_CASES])
@pytest.mark.parametrize("clean", [display_filename, safe_filename])
def test_cleaned_names_are_always_safe(raw: object, clean: object) -> None:
    """Whatever comes in, the result is one visible, bounded, non-special path component."""
    assert callable(clean)
    result = clean(raw)
    limit = 80 if clean is display_filename else 200
    assert isinstance(result, str)
    assert result not in ("", ".", "..")
    assert 0 < len(result) <= limit
    assert "/" not in result and "\\" not in result
    assert result == result.strip()
    assert "  " not in result
    for ch in result:
        assert unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"), repr(ch)
    result.encode("utf-8")


LONG_CASES = [
    # (name, limit, expected)
    ("a" * 1000 + ".pdf", 80, "a" * 50 + "\u2026" + "a" * 25 + ".pdf"),
    ("a" * 1000 + ".pdf", 20, "a" * 10 + "\u2026" + "a" * 5 + ".pdf"),
    ("b" * 100, 20, "b" * 13 + "\u2026" + "b" * 6),
    ("c" * 30 + "." + "x" * 40, 20, "c" * 13 + "\u2026" + "x" * 6),
    ("exactly-twenty-chars", 20, "exactly-twenty-chars"),
    ("twenty-one-chars.pdf!", 20, "twenty-one-ch\u2026s.pdf!"),
]


@pytest.mark.parametrize(("raw", "limit", "expected"), LONG_CASES)
def test_long_names_are_cut_in_the_middle_keeping_the_extension(
    raw: str, limit: int, expected: str
) -> None:
    """Long names keep their start, their end and their extension, joined by an ellipsis."""
    result = display_filename(raw, limit=limit)
    assert result == expected
    assert len(result) <= limit


def test_safe_filename_allows_200_characters() -> None:
    """The delivered file name keeps up to 200 characters, the displayed one 80."""
    raw = "z" * 300 + ".zip"
    assert len(safe_filename(raw)) == 200
    assert safe_filename(raw).endswith("z.zip")
    assert len(display_filename(raw)) == 80


def test_tiny_limits_are_refused() -> None:
    """A limit too small to hold a shortened name is a programming error."""
    with pytest.raises(ValueError):
        display_filename("x", limit=3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain", "plain"),
        ("a\u202eb", "ab"),
        ("a\tb\nc", "a b c"),
        ("a\x00b\x9fc", "abc"),
        ("soft\u00adhyphen", "softhyphen"),
        ("tag\U000e0041s", "tags"),
    ],
)
def test_strip_invisible(raw: str, expected: str) -> None:
    """Invisible characters go, whitespace becomes spaces, everything else stays."""
    assert strip_invisible(raw) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (2, "2 bytes"),
        (999, "999 bytes"),
        (1000, "1 KB"),
        (1049, "1 KB"),
        (1050, "1.1 KB"),
        (4096, "4.1 KB"),
        (999_949, "999.9 KB"),
        (999_950, "1 MB"),
        (1_000_000, "1 MB"),
        (1_200_000, "1.2 MB"),
        (25_000_000, "25 MB"),
        (31_500_000, "31.5 MB"),
        (26_214_400, "26.2 MB"),
        (1_000_000_000, "1 GB"),
        (5_500_000_000_000, "5.5 TB"),
        (10**21, "1000 EB"),
    ],
)
def test_human_size(n: int, expected: str) -> None:
    """Sizes read in decimal units with at most one decimal, ".0" dropped."""
    assert human_size(n) == expected


def test_human_size_refuses_negative_sizes() -> None:
    """A negative size is a programming error, not something to display."""
    with pytest.raises(ValueError):
        human_size(-1)
