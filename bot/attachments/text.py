"""Safe display of untrusted file names and of sizes.

File names come from other people's events and can hold anything: path separators, control
and bidi characters, zero-width characters, HTML, thousands of characters. The functions here
turn them into a single, visible, bounded name. They do not escape HTML: that is the
renderer's job; the result is safe as a *plain* name (one path component, nothing invisible).
"""

from __future__ import annotations

import re
import unicodedata

UNNAMED = "unnamed file"
ELLIPSIS = "\u2026"

# Characters that change how the surrounding text is shown without being visible themselves.
_BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e"  # LRE RLE PDF LRO RLO
    "\u2066\u2067\u2068\u2069"  # LRI RLI FSI PDI
    "\u200e\u200f\u061c"  # LRM RLM ALM
)
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")
# Unicode categories removed wholesale: controls (C0, DEL, C1), format characters (which
# include the bidi and most zero-width characters above, soft hyphen, tag characters) and
# lone surrogates (they cannot be encoded to UTF-8 and would break sending).
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
_WHITESPACE = re.compile(r"\s+")
_SEPARATORS = re.compile(r"[/\\]")
# An extension worth keeping when a name is shortened: a dot and 1 to 16 letters/digits.
_EXTENSION = re.compile(r"\.[^\W_]{1,16}$")
_MIN_LIMIT = 8


def strip_invisible(text: str) -> str:
    """Return ``text`` with control, format (bidi, zero-width) and surrogate characters removed.

    Whitespace characters (tabs, newlines, line separators) become plain spaces first, so words
    stay apart; nothing else is changed.
    """
    out: list[str] = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif (
            ch in _BIDI_CONTROLS
            or ch in _ZERO_WIDTH
            or unicodedata.category(ch) in _REMOVED_CATEGORIES
        ):
            continue
        else:
            out.append(ch)
    return "".join(out)


def _is_dots_only(component: str) -> bool:
    return component.strip(".") == ""


def _clean(name: object) -> str:
    """Clean a name down to one visible path component, or "" if nothing is left."""
    if not isinstance(name, str):
        return ""
    text = strip_invisible(unicodedata.normalize("NFC", name))
    # Path separators become "_" so the name keeps its meaning ("scans/page1.png" ->
    # "scans_page1.png"); empty and dots-only parts ("..", ".") go: "../../etc/passwd" ->
    # "etc_passwd". The result has no separator left, so it is one path component.
    components = [_WHITESPACE.sub(" ", c).strip() for c in _SEPARATORS.split(text)]
    meaningful = [c for c in components if c and not _is_dots_only(c)]
    return "_".join(meaningful)


def _shorten(name: str, limit: int) -> str:
    """Cut ``name`` in the middle to at most ``limit`` characters, keeping its extension."""
    if len(name) <= limit:
        return name
    match = _EXTENSION.search(name)
    extension = match.group(0) if match and match.start() > 0 else ""
    if len(extension) > limit // 2:
        extension = ""
    stem = name[: len(name) - len(extension)]
    room = limit - len(extension) - len(ELLIPSIS)
    tail = room // 3
    head = room - tail
    shortened = stem[:head].rstrip() + ELLIPSIS + (stem[-tail:].lstrip() if tail else "")
    return shortened + extension


def display_filename(name: object, limit: int = 80) -> str:
    """Return a file name fit to show in a message, at most ``limit`` characters long.

    Non-strings and names with nothing visible left become "unnamed file". Control, bidi and
    zero-width characters are removed, path separators become "_" (dropping "." and ".."
    parts), runs of
    whitespace become one space, and long names are cut in the middle keeping the extension
    ("aaaa…aaa.pdf"). HTML is *not* escaped. The result is never "", "." or "..".
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}, got {limit}")
    cleaned = _clean(name)
    if not cleaned:
        return UNNAMED
    return _shorten(cleaned, limit)


def safe_filename(name: object) -> str:
    """Return a file name fit to give the delivered file (its body and ``filename``).

    The same cleaning as :func:`display_filename` with a limit of 200 characters.
    """
    return display_filename(name, limit=200)


_UNITS = ("KB", "MB", "GB", "TB", "PB", "EB")


def human_size(n: int) -> str:
    """Return a size in decimal units: "0 bytes", "1 byte", "4.1 KB", "1.2 MB", "25 MB".

    One decimal place at most, dropped when it is zero. Raises ``ValueError`` for negatives.
    """
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n}")
    if n < 1000:
        return "1 byte" if n == 1 else f"{n} bytes"
    value = float(n)
    for unit in _UNITS:
        value /= 1000
        rounded = round(value, 1)
        if rounded < 1000 or unit == _UNITS[-1]:
            text = f"{rounded:.1f}"
            if text.endswith(".0"):
                text = text[:-2]
            return f"{text} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def strip_reply_fallback(body: str, is_reply: bool) -> str:
    """Remove a rich-reply fallback (the leading "> " quote lines) from a plain body.

    Matrix clients used to quote the message replied to at the top of ``body`` ("> <@alice:hs>
    words", more "> " lines, an empty line). The quote is only the sender's claim, so it is never
    relayed: the relay carries the real reply relation instead. For a reply every leading "> "
    line goes (as Element strips them); for a message that is not a reply only a quote shaped
    like a fallback ("> <@user…" or "> * <@user…") does, so an ordinary "> quote" stays.
    """
    if not (is_reply or body.startswith(("> <", "> * <"))):
        return body
    lines = body.split("\n")
    index = 0
    while index < len(lines) and (lines[index].startswith("> ") or lines[index] == ">"):
        index += 1
    if index == 0:
        return body
    if index < len(lines) and lines[index] == "":
        index += 1
    return "\n".join(lines[index:])
