"""Card numbers in PDF documents: the text layer and scanned pages searched, the document
rasterized with boxes when a number must go.

Poppler's command-line tools (Debian's ``poppler-utils``) do the reading, fed the document on
their standard input (no plaintext copy on disk):

* ``pdfinfo``: the page count, and whether the document is encrypted (then it is not searched);
* ``pdftotext -bbox-layout``: every word of the text layer with its box and line;
* ``pdftoppm``: a page as pixels, for OCR of a page without text (a scan) and for redaction.

Redaction that really removes: a PDF's text layer can hold the number in many forms (split into
glyph runs, in a form field, in an annotation, in an embedded font's subset), so instead of
rewriting the PDF the redacted copy is made of images of its pages at :data:`REDACT_DPI`, the
words of every number painted over. Its text can no longer be selected or searched; every
other mark on the page is kept as it was seen. A document without a number is delivered byte
for byte.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
import xml.etree.ElementTree as ElementTree

from PIL import Image, ImageDraw

from bot.attachments.cards import Word, find_in_words
from bot.attachments.ocr import (
    Box,
    OcrError,
    OcrTimeout,
    count_numbers,
    find_in_image,
    finding_boxes,
)

# Pages searched at most (text layer); a longer document is not searched.
MAX_PAGES = 200
# Pages rasterized for a redacted copy at most; a longer document with a number is refused.
MAX_REDACT_PAGES = 60
REDACT_DPI = 150
OCR_DPI = 200
# A page whose text layer has fewer words than this is treated as a scan and read by OCR.
SCAN_WORDS = 3
_POINTS_PER_INCH = 72.0


class PdfUnreadable(Exception):
    """The document cannot be searched (encrypted, damaged, too long, too slow)."""


def _run(args: list[str], data: bytes, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PdfUnreadable("reading it took too long")
    try:
        done = subprocess.run(args, input=data, capture_output=True, timeout=remaining,
                              check=False)
    except FileNotFoundError:
        raise PdfUnreadable("the PDF tools (poppler-utils) are not installed") from None
    except subprocess.TimeoutExpired:
        raise PdfUnreadable("reading it took too long") from None
    if done.returncode != 0:
        raise PdfUnreadable("it could not be read (a damaged or unusual PDF)")
    return done.stdout


def page_count(data: bytes, deadline: float) -> int:
    """The number of pages; :class:`PdfUnreadable` for an encrypted or damaged document."""
    info = _run(["pdfinfo", "-"], data, deadline).decode("utf-8", "replace")
    if re.search(r"^Encrypted:\s+yes", info, re.MULTILINE):
        raise PdfUnreadable("it is an encrypted PDF")
    match = re.search(r"^Pages:\s+(\d+)", info, re.MULTILINE)
    if match is None:
        raise PdfUnreadable("it could not be read (no page count)")
    return int(match.group(1))


def text_layer(data: bytes, deadline: float) -> list[list[Word]]:
    """Every page's words from the text layer, boxes in points from the top left."""
    xhtml = _run(["pdftotext", "-bbox-layout", "-enc", "UTF-8", "-", "-"], data, deadline)
    try:
        root = ElementTree.fromstring(xhtml)
    except ElementTree.ParseError:
        raise PdfUnreadable("its text could not be read") from None
    pages: list[list[Word]] = []
    for page in root.iter("{http://www.w3.org/1999/xhtml}page"):
        words: list[Word] = []
        for line_number, line in enumerate(page.iter("{http://www.w3.org/1999/xhtml}line")):
            for word in line.iter("{http://www.w3.org/1999/xhtml}word"):
                left, top = float(word.get("xMin", 0)), float(word.get("yMin", 0))
                right, bottom = float(word.get("xMax", 0)), float(word.get("yMax", 0))
                words.append(Word(word.text or "", round(left), round(top),
                                  max(1, round(right - left)), max(1, round(bottom - top)),
                                  (len(pages), line_number)))
        pages.append(words)
    return pages


def render_page(data: bytes, page: int, dpi: int, deadline: float) -> Image.Image:
    """Page ``page`` (from 1) as an RGB image at ``dpi``."""
    png = _run(["pdftoppm", "-r", str(dpi), "-png", "-f", str(page), "-l", str(page),
                "-singlefile", "-"], data, deadline)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


def find_in_pdf(data: bytes, deadline: float) -> tuple[int, dict[int, list[Box]]]:
    """The card numbers in a PDF: how many, and the boxes (points) to cover on each page.

    The text layer is searched on every page; a page with (almost) no text is read by OCR.
    Raises :class:`PdfUnreadable`.
    """
    pages = page_count(data, deadline)
    if pages > MAX_PAGES:
        raise PdfUnreadable(f"it has {pages} pages (at most {MAX_PAGES} are searched)")
    count = 0
    boxes: dict[int, list[Box]] = {}
    for index, words in enumerate(text_layer(data, deadline), start=1):
        if len(words) >= SCAN_WORDS:
            findings = find_in_words(words, misread=False)
            found = len(findings)
            page_boxes = finding_boxes(words, findings, 1.0, least_margin=1.5)
        else:
            image = render_page(data, index, OCR_DPI, deadline)
            try:
                words, findings = find_in_image(image, deadline)
            except OcrTimeout:
                raise PdfUnreadable("reading its scanned pages took too long") from None
            except OcrError as exc:
                raise PdfUnreadable(f"its scanned pages could not be read ({exc})") from None
            scale = _POINTS_PER_INCH / OCR_DPI
            found = count_numbers([finding_boxes(words, [f], scale, 1.5) for f in findings])
            page_boxes = finding_boxes(words, findings, scale, least_margin=1.5)
        if found:
            count += found
            boxes[index] = page_boxes
    return count, boxes


def redacted_pdf(data: bytes, boxes: dict[int, list[Box]], deadline: float) -> bytes:
    """The document as images of its pages, the boxes painted black (see the module doc)."""
    pages = page_count(data, deadline)
    if pages > MAX_REDACT_PAGES:
        raise PdfUnreadable(f"it has {pages} pages (at most {MAX_REDACT_PAGES} can be redacted)")
    scale = REDACT_DPI / _POINTS_PER_INCH
    encoded: list[Image.Image] = []
    for page in range(1, pages + 1):
        image = render_page(data, page, REDACT_DPI, deadline)
        draw = ImageDraw.Draw(image)
        for left, top, right, bottom in boxes.get(page, []):
            draw.rectangle((left * scale, top * scale, right * scale, bottom * scale),
                           fill=(0, 0, 0))
        # Kept as JPEG bytes: Pillow embeds them in the PDF as they are, so memory holds
        # compressed pages only.
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        encoded.append(Image.open(io.BytesIO(out.getvalue())))
    result = io.BytesIO()
    encoded[0].save(result, format="PDF", save_all=True, append_images=encoded[1:],
                    resolution=float(REDACT_DPI))
    return result.getvalue()
