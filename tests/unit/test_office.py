"""Card numbers in Office documents: masked in the XML content itself, nothing else changed."""

from __future__ import annotations

import io
import zipfile

import pytest

from bot.attachments.office import OfficeUnreadable, mask_xml, redact_package
from tests import cardcorpus

M = "\u2022\u2022\u2022\u2022 "
MB = M.encode()


@pytest.mark.parametrize(
    ("xml", "expected", "count"),
    [
        # Split over formatting runs: the mask where it began, the rest of the runs emptied.
        (b"<w:p><w:r><w:t>4111</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t> 1111 1111 1111"
         b"</w:t></w:r></w:p>",
         b"<w:p><w:r><w:t>" + MB + b"1111</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t></w:t>"
         b"</w:r></w:p>", 1),
        # Paragraphs, tabs and cells are boundaries: their digits are not joined.
        (b"<w:p><w:t>4111 1111</w:t></w:p><w:p><w:t>1111 1111</w:t></w:p>",
         b"<w:p><w:t>4111 1111</w:t></w:p><w:p><w:t>1111 1111</w:t></w:p>", 0),
        (b"<w:t>4111 1111</w:t><w:tab/><w:t>1111 1111</w:t>",
         b"<w:t>4111 1111</w:t><w:tab/><w:t>1111 1111</w:t>", 0),
        # Character references are decoded for the search; untouched text keeps its form.
        (b"<t>&#52;111111111111111 &amp; co</t>", b"<t>" + MB + b"1111 &amp; co</t>", 1),
        (b"<t>R&amp;D 4111111111111112</t>", b"<t>R&amp;D 4111111111111112</t>", 0),
        # A numeric spreadsheet cell becomes a string cell holding the mask.
        (b'<c r="B1" s="1"><v>378282246310005</v></c>',
         b'<c r="B1" s="1" t="str"><v>' + MB + b"0005</v></c>", 1),
        (b'<c r="B1" t="n"><v>378282246310005</v></c>',
         b'<c r="B1" t="str"><v>' + MB + b"0005</v></c>", 1),
        # An attribute holding the number (an OpenDocument cell's value) is masked too, and
        # the cell is a string cell from then on; shown and kept, it is one number.
        (b'<table:table-cell office:value-type="float" office:value="4111111111111111">'
         b"<text:p>4111111111111111</text:p></table:table-cell>",
         b'<table:table-cell office:value-type="string" office:value="' + MB + b'1111">'
         b"<text:p>" + MB + b"1111</text:p></table:table-cell>", 1),
    ],
)
def test_mask_xml(xml: bytes, expected: bytes, count: int) -> None:
    """XML text searched as a reader sees it and masked in place; the rest byte for byte."""
    assert mask_xml(xml) == (expected, count)


def _parts(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        return {info.filename: package.read(info) for info in package.infolist()}


@pytest.mark.parametrize(
    ("make", "count", "gone", "kept"),
    [
        (lambda: cardcorpus.docx([["Router model X200"], ["Card ", "4111 1111", " 1111 1111"],
                                  ["IBAN DE89 3704 0044 0532 0130 00"]]),
         1, ["4111", "1111 1111"], ["Router model X200", "DE89 3704 0044 0532 0130 00"]),
        (lambda: cardcorpus.xlsx(["Router", "Card 5555-5555-5555-4444", "Order 4111111111111112"],
                                 ["378282246310005", "42"]),
         2, ["5555-5555", "378282246310005"], ["Router", "4111111111111112", "<v>42</v>"]),
        (lambda: cardcorpus.odt(["Router model X200", "Card <span>4242 4242</span> 4242 4242"]),
         1, ["4242 4242"], ["Router model X200"]),
        (lambda: cardcorpus.ods(["Router", "6011111111111117", "12"]),
         1, ["6011111111111117"], ["Router", 'office:value="12"']),
    ],
    ids=["docx", "xlsx", "odt", "ods"],
)
def test_packages_lose_their_numbers_and_keep_the_rest(make, count: int, gone: list[str],
                                                       kept: list[str]) -> None:
    """Each kind of package: the numbers masked in every part, other parts and entries (order,
    names, compression, the ODF mimetype first and stored) as they were."""
    original = make()
    redacted, found = redact_package(original, redact=True)
    assert found == count and redacted is not None
    before, after = _parts(original), _parts(redacted)
    assert list(after) == list(before)
    text = b"".join(after.values()).decode()
    for fragment in gone:
        assert fragment not in text
    for fragment in kept:
        assert fragment in text
    assert M in text
    with zipfile.ZipFile(io.BytesIO(original)) as a, zipfile.ZipFile(io.BytesIO(redacted)) as b:
        assert [(i.filename, i.compress_type, i.date_time) for i in a.infolist()] == \
            [(i.filename, i.compress_type, i.date_time) for i in b.infolist()]


def test_a_package_without_numbers_is_not_rewritten() -> None:
    """Look-alikes only: found 0, no new package (the original is delivered byte for byte)."""
    data = cardcorpus.docx([[line] for line in cardcorpus.LOOK_ALIKE_LINES])
    assert redact_package(data, redact=True) == (None, 0)


def test_refuse_counts_without_writing() -> None:
    """Searching for a refusal writes nothing."""
    assert redact_package(cardcorpus.odt(["4111 1111 1111 1111"]), redact=False) == (None, 1)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"PK\x03\x04 not really", "it could not be read (BadZipFile)"),
        (b"", "it could not be read (BadZipFile)"),
    ],
)
def test_a_damaged_package_cannot_be_searched(data: bytes, problem: str) -> None:
    """A package that is not a readable ZIP is uninspectable, with the reason."""
    with pytest.raises(OfficeUnreadable, match=problem.replace("(", r"\(").replace(")", r"\)")):
        redact_package(data, redact=True)


def test_a_package_past_the_time_limit_cannot_be_searched() -> None:
    """A package whose XML takes too long to read is uninspectable, like a slow OCR."""
    rows = [f"row {i}" for i in range(30_000)]
    with pytest.raises(OfficeUnreadable, match="reading it took too long"):
        redact_package(cardcorpus.xlsx(rows, []), redact=True, deadline=0.0)
