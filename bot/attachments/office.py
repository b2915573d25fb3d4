"""Card numbers in Office documents (docx, xlsx, odt, ods): their XML text searched and masked.

These documents are ZIP packages of XML parts. Every ``.xml`` part is searched (the body,
headers, footers, comments, shared strings, sheets, pivot caches, document properties), so a
number kept anywhere in the package is found, and the package is written again with the
numbers replaced by ``•••• 4242`` in the content itself, not covered: nothing of them is left.

Text is read as a reader sees it: character references decoded, formatting runs transparent
(a number split over ``<w:r>`` runs is found), and the elements that end a paragraph, a cell,
a line or a tab boundaries (two cells never make one number). Text and tags that change
nothing are written back byte for byte; a spreadsheet cell whose *numeric* value was a card
number becomes a text cell holding the mask. Every other part and the ZIP entries' order,
names, times and compression stay as they were (an ODF ``mimetype`` entry stays first and
stored).
"""

from __future__ import annotations

import html
import io
import re
import time
import zipfile
from dataclasses import dataclass

from bot.attachments.cards import find_card_numbers, locate, mask_text

OFFICE_TYPES = frozenset({
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
})
# A package's XML, decompressed, read at most (a ZIP bomb is not searched).
MAX_XML_BYTES = 200_000_000
# Elements (local names) that end a run of text: paragraphs, headings, line breaks, tabs,
# table cells and rows, shared and inline strings, spreadsheet cells and formulas.
_BOUNDARIES = frozenset({
    "p", "h", "br", "cr", "tab", "tc", "tr", "row", "c", "si", "is", "f", "v", "table-cell",
    "table-row", "line-break", "list-item", "note", "annotation", "title", "description",
    "subject", "keywords", "creator", "lastModifiedBy", "category",
})
_TOKEN = re.compile(rb"<[^>]*>|[^<]+")
_ATTRIBUTE = re.compile(rb"""(\s[\w:.-]+\s*=\s*)(["'])(.*?)\2""", re.DOTALL)
# An OpenDocument cell whose value attribute held a number: a string cell from now on.
_ODF_NUMERIC = re.compile(rb'office:value-type="(?:float|currency|percentage)"')
_NAME = re.compile(rb"^</?\s*([^\s/>]+)")


class OfficeUnreadable(Exception):
    """The package cannot be searched (damaged, encrypted, too large once decompressed)."""


@dataclass
class _Text:
    raw: bytes
    text: str


def _local(tag: bytes) -> str:
    match = _NAME.match(tag)
    if match is None:
        return ""
    return match.group(1).split(b":")[-1].decode("ascii", "replace")


def mask_xml(data: bytes, deadline: float | None = None) -> tuple[bytes, int]:
    """An XML part with every card number in its text masked, and how many there were.

    Raises :class:`OfficeUnreadable` once ``deadline`` (``time.monotonic()``) has passed.
    """
    tokens = [m.group(0) for m in _TOKEN.finditer(data)]
    in_attributes = 0
    for index, token in enumerate(tokens):
        if deadline is not None and index % 20_000 == 19_999 and time.monotonic() > deadline:
            raise OfficeUnreadable("reading it took too long")
        if token.startswith(b"<") and not token.startswith((b"<?", b"<!")) and b"=" in token:
            masked_tag, count = _mask_attributes(token)
            if count:
                tokens[index] = masked_tag
                in_attributes += count
    texts: dict[int, _Text] = {}
    flat: list[str] = []
    where: list[tuple[int, int] | None] = []
    for index, token in enumerate(tokens):
        if token.startswith(b"<"):
            if (not token.startswith((b"<?", b"<!"))
                    and _local(token) in _BOUNDARIES):
                flat.append("\n")
                where.append(None)
            continue
        text = html.unescape(token.decode("utf-8", "surrogateescape"))
        texts[index] = _Text(token, text)
        flat.append(text)
        where.extend((index, offset) for offset in range(len(text)))
    findings = find_card_numbers("".join(flat))
    if not findings:
        return (b"".join(tokens), in_attributes) if in_attributes else (data, 0)
    dropped, starts = locate(findings, where)
    changed = {index for index, _ in dropped}
    out: list[bytes] = []
    for index, token in enumerate(tokens):
        if index not in changed:
            out.append(token)
            continue
        piece = texts[index]
        kept = []
        for offset, char in enumerate(piece.text):
            if (index, offset) in starts:
                kept.append(starts[(index, offset)])
            if (index, offset) not in dropped:
                kept.append(char)
        out.append(html.escape("".join(kept), quote=False).encode("utf-8", "surrogateescape"))
    # A number shown in a cell's text and kept in its value attribute is one number.
    return _numeric_cells_to_text(b"".join(out)), max(len(findings), in_attributes)


def _mask_attributes(tag: bytes) -> tuple[bytes, int]:
    """A tag with card numbers in its attribute values masked, and how many."""
    found = 0

    def one(match: re.Match[bytes]) -> bytes:
        nonlocal found
        value = html.unescape(match.group(3).decode("utf-8", "surrogateescape"))
        masked, count = mask_text(value)
        if not count:
            return match.group(0)
        found += count
        escaped = html.escape(masked, quote=True).encode("utf-8", "surrogateescape")
        return match.group(1) + match.group(2) + escaped + match.group(2)

    masked_tag = _ATTRIBUTE.sub(one, tag)
    if found:
        masked_tag = _ODF_NUMERIC.sub(b'office:value-type="string"', masked_tag)
    return masked_tag, found


# A spreadsheet cell of numeric type (no t attribute, or t="n") whose value is now a mask.
_MASKED_NUMBER_CELL = re.compile(
    rb'<c((?:\s+(?!t=)[\w:]+="[^"]*")*)(\s+t="n")?((?:\s+(?!t=)[\w:]+="[^"]*")*)\s*>'
    rb"(\s*<v>\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2 \d{4}</v>\s*)</c>")


def _numeric_cells_to_text(xml: bytes) -> bytes:
    """A numeric cell cannot hold "•••• 4242": it becomes a string cell (``t="str"``)."""
    return _MASKED_NUMBER_CELL.sub(lambda m: b"<c" + m.group(1) + m.group(3) + b' t="str">'
                                   + m.group(4) + b"</c>", xml)


def redact_package(data: bytes, redact: bool, deadline: float | None = None
                   ) -> tuple[bytes | None, int]:
    """Search an Office package; with ``redact`` and numbers found, the package rewritten with
    them masked. Returns (new package or None, numbers found). Raises
    :class:`OfficeUnreadable` (past ``deadline`` too)."""
    found = 0
    parts: list[tuple[zipfile.ZipInfo, bytes]] = []
    budget = MAX_XML_BYTES
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            for info in package.infolist():
                if info.flag_bits & 0x1:
                    raise OfficeUnreadable("it is encrypted")
                if not info.filename.lower().endswith((".xml", ".rdf")):
                    parts.append((info, b""))
                    continue
                if info.file_size > budget:
                    raise OfficeUnreadable("its text is too large to read")
                with package.open(info) as member:
                    content = member.read(budget + 1)
                budget -= len(content)
                if budget < 0:
                    raise OfficeUnreadable("its text is too large to read")
                masked, count = mask_xml(content, deadline)
                found += count
                parts.append((info, masked if count else b""))
            if not found or not redact:
                return None, found
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as written:
                for info, masked in parts:
                    content = masked if masked else package.read(info)
                    written.writestr(info, content, compress_type=info.compress_type)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
            ValueError, RuntimeError) as exc:
        raise OfficeUnreadable(f"it could not be read ({type(exc).__name__})") from None
    return out.getvalue(), found
