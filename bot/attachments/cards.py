"""Payment card numbers: a recognizer from text (or OCR words with boxes) to findings.

Pure: no I/O. Redaction is a separate step (:mod:`bot.attachments.redact` for files, the text
relay for chat) that takes these findings and produces something new.

What counts as a card number (the rules card networks publish, checked with python-stdnum's
Luhn): 13 to 19 digits, written together or in groups of 3–6 digits separated by one kind of
separator (one or two spaces, or a dash), that pass the Luhn check and begin with a prefix
(IIN range) of a card network, with a length that network issues. Look-alikes stay what they
are:

* numbers that fail Luhn (most order and invoice numbers), or that start with no network's
  prefix (phone numbers beginning with 0, tracking numbers beginning with 1 or 9);
* a number written after "+" (an international phone number);
* digit groups chained to a token of letters and digits (an IBAN's "DE89", a parcel's "1Z"),
  and anything inside a valid IBAN (checked with python-stdnum);
* digits glued to letters or to a decimal point (``A4111…``, ``0.4111…``, ``4111….5``);
* groups of one or two digits (dates, times, amounts) and runs of more than 19 digits written
  together (a digit inside a longer number is never a card number on its own).

A finding never carries the number itself, only where it is, its network and its last four
digits (which card receipts print anyway): nothing built from findings can leak the number.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from stdnum import iban as stdnum_iban
from stdnum import luhn

MIN_DIGITS = 13
MAX_DIGITS = 19
# What is left of a number in masked text: four bullets and the last four digits.
MASK = "\u2022\u2022\u2022\u2022 "


@dataclass(frozen=True)
class Network:
    """A card network: the IIN ranges (inclusive, as numbers of the same digit count) its
    numbers start with, and the lengths it issues."""

    name: str
    prefixes: tuple[tuple[int, int], ...]
    lengths: frozenset[int]

    def matches(self, digits: str) -> bool:
        """Whether ``digits`` has one of this network's lengths and prefixes."""
        if len(digits) not in self.lengths:
            return False
        for low, high in self.prefixes:
            width = len(str(low))
            if low <= int(digits[:width]) <= high:
                return True
        return False


def _lengths(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


# The networks' published IIN ranges and lengths. Order matters only where ranges overlap
# (Discover's 622126–622925 lies in UnionPay's 62): the first match names the network.
NETWORKS: tuple[Network, ...] = (
    Network("Visa", ((4, 4),), frozenset({13, 16, 19})),
    Network("Mastercard", ((51, 55), (2221, 2720)), frozenset({16})),
    Network("American Express", ((34, 34), (37, 37)), frozenset({15})),
    Network("Discover", ((6011, 6011), (644, 649), (65, 65), (622126, 622925)),
            _lengths(16, 19)),
    Network("JCB", ((3528, 3589),), _lengths(16, 19)),
    Network("Diners Club", ((300, 305), (3095, 3095), (36, 36), (38, 39)), _lengths(14, 19)),
    Network("UnionPay", ((62, 62),), _lengths(16, 19)),
    Network("Maestro", ((5018, 5018), (5020, 5020), (5038, 5038), (5893, 5893), (6304, 6304),
                        (6759, 6759), (6761, 6763)), _lengths(13, 19)),
)


def network_of(digits: str) -> str | None:
    """The network whose prefix and length ``digits`` has, or None."""
    for network in NETWORKS:
        if network.matches(digits):
            return network.name
    return None


def is_card_number(digits: str) -> bool:
    """Whether a string of digits alone is a card number (length, network prefix, Luhn)."""
    return (
        digits.isascii() and digits.isdigit() and MIN_DIGITS <= len(digits) <= MAX_DIGITS
        and network_of(digits) is not None and luhn.is_valid(digits)
    )


@dataclass(frozen=True)
class Finding:
    """A card number in a text: ``text[start:end]`` (separators inside included)."""

    start: int
    end: int
    network: str
    last4: str

    @property
    def masked(self) -> str:
        """What stands in its place in masked text: ``•••• 4242``."""
        return MASK + self.last4


# Tokens: runs of letters and digits (what a number or a word is made of), and the gaps
# between them. A gap that is a separator keeps digit groups in one chain.
_TOKEN = re.compile(r"[^\W_]+")
_SPACE_GAP = re.compile(r"[ \u00a0\u2007\u2009\u202f]{1,2}")
_DASH_GAP = re.compile(r"[ ]?[-\u2010\u2011\u2012\u2013][ ]?")
_GROUP_SIZES = range(3, 7)
# Any text holding a card number holds such a run (13+ digits, at most three separator
# characters between them): text without one is skipped at C speed.
_CANDIDATE = re.compile(r"\d(?:[ \u00a0\u2007\u2009\u202f\-\u2010-\u2013]{0,3}\d){12}")
# A valid IBAN written with or without spaces (country, check digits, 11–30 letters/digits).
_IBAN_SHAPE = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")


def _gap_kind(gap: str) -> str | None:
    """"space" or "dash" for a separator between digit groups, None for anything else."""
    if _SPACE_GAP.fullmatch(gap):
        return "space"
    if _DASH_GAP.fullmatch(gap):
        return "dash"
    return None


def _iban_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for match in _IBAN_SHAPE.finditer(text):
        candidate = match.group(0)
        # The shape may run on into the next word; the longest valid prefix is the IBAN.
        for end in range(len(candidate), 14, -1):
            if candidate[end - 1] != " " and stdnum_iban.is_valid(candidate[:end]):
                spans.append((match.start(), match.start() + end))
                break
    return spans


def _glued_before(text: str, start: int) -> bool:
    """Whether what precedes ``start`` makes the digits part of something else."""
    if start == 0:
        return False
    before = text[start - 1]
    if before == "+" or before.isalnum() or before == "_":
        return True
    # "0.4111…": the fraction of a decimal number. (Not a comma: in CSV it separates fields.)
    return before == "." and start >= 2 and text[start - 2].isdigit()


def _glued_after(text: str, end: int) -> bool:
    if end >= len(text):
        return False
    after = text[end]
    if after.isalnum() or after == "_":
        return True
    return after == "." and end + 1 < len(text) and text[end + 1].isdigit()


@dataclass
class _Chain:
    """Digit groups joined by separators: their spans and the separator kind before each."""

    groups: list[tuple[int, int]]
    gaps: list[str | None]  # gaps[i] is the kind of separator between groups i-1 and i
    poisoned: bool = False


def _chains(text: str) -> Iterable[_Chain]:
    """The chains of digit groups in ``text``, each marked poisoned when it belongs to an
    identifier (joined to a letters-and-digits token, written after "+", glued to letters)."""
    chain: _Chain | None = None
    previous_end = -1
    previous_mixed = False
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        gap = text[previous_end:match.start()] if previous_end >= 0 else None
        kind = _gap_kind(gap) if gap is not None else None
        joined = kind is not None
        if token.isdigit() and token.isascii():
            if chain is not None and joined:
                chain.groups.append(match.span())
                chain.gaps.append(kind)
            else:
                if chain is not None:
                    yield chain
                chain = _Chain([match.span()], [None])
                if _glued_before(text, match.start()) or (joined and previous_mixed):
                    chain.poisoned = True
            previous_mixed = False
        else:
            mixed = any(ch.isdigit() for ch in token)
            if chain is not None:
                if mixed and joined:
                    chain.poisoned = True  # "… 0130 00X1": the digits are part of an id
                yield chain
                chain = None
            previous_mixed = mixed
        previous_end = match.end()
    if chain is not None:
        yield chain


def _window_ok(text: str, chain: _Chain, first: int, last: int, any_groups: bool
               ) -> str | None:
    """The digits of groups ``first..last`` when they are written like a card number."""
    if last > first:
        kinds = set(chain.gaps[first + 1:last + 1])
        if len(kinds) != 1:
            return None  # one separator kind throughout: "4111 1111 1111 1111"
        if not any_groups and any(end - start not in _GROUP_SIZES
                                  for start, end in chain.groups[first:last + 1]):
            return None
    digits = "".join(text[start:end] for start, end in chain.groups[first:last + 1])
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        return None
    return digits


def find_card_numbers(text: str, *, any_groups: bool = False) -> list[Finding]:
    """Every card number in ``text``, in order, without overlaps.

    Within a chain of digit groups the leftmost start wins, and from it the longest run of
    whole groups that is a card number (so a CVV or a year after the number is left alone).
    ``any_groups`` accepts groups of any size (OCR joins and splits groups at will: "4111
    1111 11111111"); Luhn, prefix and length still decide.
    """
    findings: list[Finding] = []
    if _CANDIDATE.search(text) is None:
        return findings
    excluded = _iban_spans(text)
    for chain in _chains(text):
        if chain.poisoned:
            continue
        chain_start, chain_end = chain.groups[0][0], chain.groups[-1][1]
        if _glued_after(text, chain_end):
            continue
        if any(start < chain_end and chain_start < end for start, end in excluded):
            continue
        first = 0
        count = len(chain.groups)
        while first < count:
            found = None
            for last in range(count - 1, first - 1, -1):
                digits = _window_ok(text, chain, first, last, any_groups)
                if digits is None or not luhn.is_valid(digits):
                    continue
                network = network_of(digits)
                if network is not None:
                    found = (last, digits, network)
                    break
            if found is None:
                first += 1
                continue
            last, digits, network = found
            findings.append(Finding(chain.groups[first][0], chain.groups[last][1], network,
                                    digits[-4:]))
            first = last + 1
    return findings


def mask_text(text: str) -> tuple[str, int]:
    """``text`` with every card number replaced by ``•••• 4242``, and how many there were."""
    findings = find_card_numbers(text)
    return _apply(text, findings), len(findings)


def _apply(text: str, findings: Sequence[Finding]) -> str:
    out: list[str] = []
    position = 0
    for finding in findings:
        out.append(text[position:finding.start])
        out.append(finding.masked)
        position = finding.end
    out.append(text[position:])
    return "".join(out)


# -- HTML ----------------------------------------------------------------------------------

# Elements that do not end a line: a number may run through them ("<b>4111</b> 1111 …").
# Every other element is a boundary, so digits in two paragraphs are never joined.
_INLINE = frozenset({"a", "abbr", "b", "big", "code", "del", "em", "font", "i", "ins", "kbd",
                     "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
                     "sup", "tt", "u", "var"})
_VOID = frozenset({"br", "hr", "img", "wbr", "input", "meta", "link", "area", "base", "col",
                   "embed", "source", "track"})


class _Pieces(HTMLParser):
    """An HTML fragment as tags and text (character references decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[str, str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.pieces.append(("void" if tag in _VOID else "start", tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.pieces.append(("void", tag, attrs))
        if tag not in _VOID:
            self.pieces.append(("end", tag, []))

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.pieces.append(("end", tag, []))

    def handle_data(self, data: str) -> None:
        self.pieces.append(("text", data, []))


Spot = tuple[int, int]
"""A character of a document split in pieces: (piece index, offset in the piece)."""


def locate(findings: Sequence[Finding], where: Sequence[Spot | None]
           ) -> tuple[set[Spot], dict[Spot, str]]:
    """Map findings in a flattened text back to the pieces it was made of.

    ``where[i]`` is the piece character behind flat character ``i`` (None for a separator the
    flattening added). Returns the spots to drop and, at each finding's first spot, the mask
    that replaces it.
    """
    dropped: set[Spot] = set()
    starts: dict[Spot, str] = {}
    for finding in findings:
        for position in range(finding.start, finding.end):
            spot = where[position]
            if spot is not None:
                dropped.add(spot)
        first = where[finding.start]
        assert first is not None  # a finding starts with a digit of some text
        starts[first] = finding.masked
    return dropped, starts


def mask_html(fragment: str) -> tuple[str, int]:
    """An HTML fragment with every card number replaced by ``•••• 4242``, and how many.

    The text is searched as a reader sees it: character references decoded, inline tags
    transparent (a number split by ``<b>`` or ``<span>`` is found), other elements line
    breaks. Attribute values (a link's URL, a title) are masked on their own. The result is
    re-serialized with everything escaped.
    """
    parser = _Pieces()
    parser.feed(fragment)
    parser.close()
    pieces = parser.pieces
    flat: list[str] = []
    where: list[tuple[int, int] | None] = []  # flat position -> (piece, offset in its text)
    for index, (kind, value, _) in enumerate(pieces):
        if kind == "text":
            flat.append(value)
            where.extend((index, offset) for offset in range(len(value)))
        elif value not in _INLINE:
            flat.append("\n")
            where.append(None)
    findings = find_card_numbers("".join(flat))
    dropped, starts = locate(findings, where)
    count = len(findings)
    out: list[str] = []
    for index, (kind, value, attrs) in enumerate(pieces):
        if kind == "text":
            kept = []
            for offset, char in enumerate(value):
                if (index, offset) in starts:
                    kept.append(starts[(index, offset)])
                if (index, offset) not in dropped:
                    kept.append(char)
            out.append(html.escape("".join(kept), quote=False))
        elif kind == "end":
            out.append(f"</{value}>")
        else:
            rendered = []
            for name, attribute in attrs:
                masked, found = mask_text(attribute or "")
                count += found
                rendered.append(f' {name}="{html.escape(masked, quote=True)}"')
            out.append(f"<{value}{''.join(rendered)}>")
    return "".join(out), count


# -- OCR words ----------------------------------------------------------------------------

# Letters OCR reads for digits in a word that is mostly digits ("4lll", "O123").
_OCR_DIGITS = str.maketrans({"O": "0", "o": "0", "D": "0", "Q": "0", "l": "1", "I": "1",
                             "i": "1", "|": "1", "!": "1", "S": "5", "s": "5", "B": "8",
                             "Z": "2", "z": "2", "b": "6", "G": "6", "g": "9", "q": "9"})
_OCR_LOOKALIKES = frozenset("OoDQlIi|!SsBZzbGgq")


@dataclass(frozen=True)
class Word:
    """One word as OCR read it: its text, its box in pixels, and which line it is on."""

    text: str
    left: int
    top: int
    width: int
    height: int
    line: Any  # anything hashable that is equal for the words of one line


@dataclass(frozen=True)
class WordFinding:
    """A card number found in OCR words: the indices of the words it covers."""

    words: tuple[int, ...]
    network: str
    last4: str


def _ocr_normalized(text: str) -> str:
    """A word of digits with the letters OCR mistakes for digits ("4lll", "5S55") read as
    digits (same length, so positions hold); any other word as it is."""
    if (len(text) >= 3 and any(ch.isdigit() for ch in text)
            and all(ch.isdigit() or ch in _OCR_LOOKALIKES or not ch.isalnum() for ch in text)):
        return text.translate(_OCR_DIGITS)
    return text


def unexplained_digits(words: Sequence[Word], findings: Sequence[WordFinding],
                       least: int = 12) -> bool:
    """Whether some line holds at least ``least`` digits (in words of digits, as OCR may have
    misread them) outside the findings: a number OCR may have misread, worth a second look."""
    covered = {index for finding in findings for index in finding.words}
    per_line: dict[Any, int] = {}
    for index, word in enumerate(words):
        if index in covered:
            continue
        text = _ocr_normalized(word.text)
        digits = sum(ch.isdigit() for ch in text)
        if digits * 2 >= len(text):
            per_line[word.line] = per_line.get(word.line, 0) + digits
    return any(count >= least for count in per_line.values())


def find_in_words(words: Sequence[Word], misread: bool = True) -> list[WordFinding]:
    """Card numbers in OCR output: each line's words joined by spaces, searched as text, and
    every word that overlaps a finding returned (its box is what gets covered).

    ``misread``: words of digits may hold letters OCR mistakes for digits (``False`` for a
    PDF's text layer, which holds the characters themselves).
    """
    lines: dict[Any, list[int]] = {}
    for index, word in enumerate(words):
        lines.setdefault(word.line, []).append(index)
    found: list[WordFinding] = []
    for indices in lines.values():
        indices.sort(key=lambda i: words[i].left)
        parts: list[str] = []
        spans: list[tuple[int, int, int]] = []
        position = 0
        for index in indices:
            text = words[index].text
            text = _ocr_normalized(text) if misread else text
            if parts:
                parts.append(" ")
                position += 1
            parts.append(text)
            spans.append((position, position + len(text), index))
            position += len(text)
        line_text = "".join(parts)
        for finding in find_card_numbers(line_text, any_groups=True):
            covered = tuple(index for start, end, index in spans
                            if start < finding.end and finding.start < end)
            found.append(WordFinding(covered, finding.network, finding.last4))
    return found
