"""Card numbers in files: searched, and hidden or refused (``policy.card_numbers``).

One call for the offer pipeline, :func:`check_file`: the checked copy (sealed, at rest), its
detected type and the direction's policy in; a :class:`CardCheck` out, which says how many card
numbers were found, carries the redacted copy (a new sealed file beside the checked one) when
they were hidden, the reason a file could not be searched, and a refusal when the policy says
so. With ``card_numbers: allow`` nothing is read at all.

How each kind of file is searched and redacted (detection is :mod:`bot.attachments.cards`):

* **text files** (``text/*``, JSON, XML, SVG, e-mail): line by line; every number becomes
  ``•••• 4242``, every other byte stays as it was (UTF-8 and ASCII-compatible encodings are
  read with their undecodable bytes kept; UTF-16 files by their byte order mark);
* **images** (PNG, JPEG, WebP, GIF, TIFF): OCR with Tesseract (:mod:`bot.attachments.ocr`),
  up to three looks (sparse text; enlarged; one block) while digits remain that no finding
  explains, within ``policy.ocr_timeout`` in all; the words of each number are painted over
  with opaque boxes with a margin, the rest of the picture untouched; re-encoded in the same
  format without metadata (an EXIF orientation survives); every page of a multi-page TIFF
  is searched and redacted, an animated image is searched and delivered as its first frame;
* **PDF documents**: the text layer of every page, and OCR of pages without text (scans);
  redacted as images of their pages with the boxes painted (:mod:`bot.attachments.pdf`); an
  encrypted or damaged document cannot be searched, and one whose numbers cannot be hidden
  (too many pages, too slow) is refused whatever the policy;
* **Office documents** (docx, xlsx, odt, ods): every XML part of the package, the numbers
  masked in the content itself (:mod:`bot.attachments.office`);
* **anything else** (archives, audio, video, other formats) cannot be searched: it follows
  ``policy.uninspectable``.

OCR runs in a thread pool with one worker per core (Tesseract itself single-threaded), never
on the event loop. Nothing here logs or returns a number: only counts.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageDraw, ImageOps

from bot.attachments import ocr, office, pdf
from bot.attachments.cards import mask_html, mask_text
from bot.attachments.images import Stripped
from bot.attachments.ocr import Box, count_numbers, find_in_image, finding_boxes
from bot.attachments.policy import Verdict
from bot.attachments.sealed import Sealer, open_sealed
from bot.config import DEFAULT_OCR_TIMEOUT, DirectionPolicy

logger = logging.getLogger(__name__)

PDF = "application/pdf"
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP",
                 "image/gif": "GIF", "image/tiff": "TIFF"}
TEXT_TYPES = frozenset({"application/json", "application/xml", "application/csv",
                        "application/x-ndjson", "image/svg+xml", "message/rfc822"})
# Decoding costs ~4 bytes a pixel: larger images are not read (they are uninspectable).
MAX_DECODE_PIXELS = 50_000_000
# A multi-page TIFF with more pages is not read.
MAX_TIFF_PAGES = 30
_ORIENTATION = 0x0112
# ImageOps.exif_transpose's turn per EXIF orientation, and the turn that undoes it.
_UNDO_TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_270}
_CHUNK = 1 << 20

REFUSED_REASON = ("it contains a payment card number. Please never send card details here; "
                  "use the payment page instead")


class Uninspectable(Exception):
    """The file could not be searched; the message says why, in plain words."""


class Unredactable(Exception):
    """Numbers were found but could not be hidden; the message says why."""

    def __init__(self, found: int, why: str) -> None:
        super().__init__(why)
        self.found = found


@dataclass(frozen=True)
class CardCheck:
    """What searching one file for card numbers came to.

    ``searched``: whether the file was searched at all (False with ``card_numbers: allow``);
    ``found``: how many numbers; ``copy``: the redacted sealed copy (``redact`` and found);
    ``unchecked``: why the file could not be searched; ``refusal``: the verdict when the
    policy refuses the file (a number with ``refuse``, or uninspectable with ``refuse``, or a
    number that could not be hidden: ``unredactable`` says why).
    """

    searched: bool = False
    found: int = 0
    copy: Stripped | None = None
    unchecked: str | None = None
    refusal: Verdict | None = None
    unredactable: str | None = None

    @property
    def redacted(self) -> int | None:
        """For the offer: how many numbers were hidden (0 when none), None when not searched."""
        if not self.searched or self.unchecked is not None:
            return None
        return self.found if self.copy is not None else 0


def is_text(mimetype: str) -> bool:
    """Whether files of this type are searched as text."""
    return mimetype.startswith("text/") or mimetype in TEXT_TYPES


def searchable(mimetype: str | None) -> bool:
    """Whether files of this type can be searched for card numbers at all."""
    return mimetype is not None and (is_text(mimetype) or mimetype in IMAGE_FORMATS
                                     or mimetype == PDF or mimetype in office.OFFICE_TYPES)


# -- text -------------------------------------------------------------------------------------

Write = Callable[[bytes], None]


def redact_text(reader: BinaryIO, write: Write | None, timeout: float | None = None) -> int:
    """Search a text file; with ``write``, copy it there with every number masked.

    Returns how many numbers there were. Bytes that are not numbers are copied as they are.
    Raises :class:`Uninspectable` past ``timeout`` seconds (a large file dense with long
    digit runs takes about a second per megabyte).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    head = reader.read(4)
    reader.seek(0)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _redact_utf16(reader, write)
    found = 0
    for number, line in enumerate(reader):
        if deadline is not None and number % 1000 == 999 and time.monotonic() > deadline:
            raise Uninspectable(f"reading it took longer than {timeout:g} s")
        text = line.decode("utf-8", "surrogateescape")
        masked, count = mask_text(text)
        found += count
        if write is not None:
            write(masked.encode("utf-8", "surrogateescape") if count else line)
    return found


def _redact_utf16(reader: BinaryIO, write: Write | None) -> int:
    data = reader.read()
    text = data.decode("utf-16", "surrogatepass")
    masked, count = mask_text(text)
    if write is not None:
        bom = data[:2]
        encoding = "utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-16-be"
        write(bom + masked.encode(encoding, "surrogatepass") if count else data)
    return count


# -- images -----------------------------------------------------------------------------------


def paint(image: Image.Image, boxes: list[Box]) -> Image.Image:
    """``image`` with opaque black boxes, in a mode every target format can hold."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    else:
        image = image.copy()
    draw = ImageDraw.Draw(image)
    fill: int | tuple[int, ...] = 0 if image.mode == "L" else (
        (0, 0, 0, 255) if image.mode == "RGBA" else (0, 0, 0))
    for box in boxes:
        draw.rectangle(box, fill=fill)
    return image


def _save(pages: list[Image.Image], fmt: str, orientation: int, icc: bytes | None) -> bytes:
    out = io.BytesIO()
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if orientation in _UNDO_TURN and fmt in ("JPEG", "PNG", "WEBP"):
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    image = pages[0]
    if fmt == "JPEG":
        image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
        options.update(quality=92)
    elif fmt == "WEBP":
        options.update(quality=92)
    elif fmt == "TIFF":
        options.update(compression="tiff_adobe_deflate")
        if len(pages) > 1:
            options.update(save_all=True, append_images=pages[1:])
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _frames(opened: Image.Image, fmt: str) -> list[int]:
    """The frames searched: every page of a multi-page TIFF (a scanned document or a fax),
    the first frame of an animation."""
    count = getattr(opened, "n_frames", 1)
    if fmt != "TIFF" or count == 1:
        return [0]
    if count > MAX_TIFF_PAGES:
        raise Uninspectable(f"it has {count} pages (at most {MAX_TIFF_PAGES} are read)")
    return list(range(count))


def redact_image(reader: BinaryIO, mimetype: str, redact: bool, timeout: float
                 ) -> tuple[bytes | None, int]:
    """Search an image by OCR; with ``redact``, the redacted image (same format, no metadata).

    Returns (new image or None when nothing was found or ``redact`` is off, numbers found).
    Raises :class:`Uninspectable` when the image cannot be decoded or read in time.
    """
    deadline = time.monotonic() + timeout
    fmt = IMAGE_FORMATS[mimetype]
    pages: list[Image.Image] = []
    try:
        with Image.open(reader) as opened:
            if opened.width * opened.height > MAX_DECODE_PIXELS:
                raise Uninspectable(f"the image is too large to read ({opened.width}×"
                                    f"{opened.height})")
            orientation = opened.getexif().get(_ORIENTATION, 1)
            icc = opened.info.get("icc_profile")
            for frame in _frames(opened, fmt):
                opened.seek(frame)
                opened.load()
                pages.append(ImageOps.exif_transpose(opened) or opened.copy())
    except Uninspectable:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for damaged images
        raise Uninspectable(f"the image could not be decoded ({type(exc).__name__})") from None
    found = 0
    boxes: list[list[Box]] = []
    for page in pages:
        try:
            words, findings = find_in_image(page, deadline)
        except ocr.OcrTimeout:
            raise Uninspectable(f"reading it took longer than {timeout:g} s") from None
        except ocr.OcrError as exc:
            raise Uninspectable(f"it could not be read ({exc})") from None
        found += count_numbers([finding_boxes(words, [f]) for f in findings])
        boxes.append(finding_boxes(words, findings))
    if not found or not redact:
        return None, found
    painted = [paint(page, page_boxes) for page, page_boxes in zip(pages, boxes, strict=True)]
    if orientation in _UNDO_TURN:
        painted = [page.transpose(_UNDO_TURN[orientation]) for page in painted]
    return _save(painted, fmt, orientation, icc if isinstance(icc, bytes) else None), found


# -- PDF documents ----------------------------------------------------------------------------


def redact_pdf(reader: BinaryIO, redact: bool, timeout: float) -> tuple[bytes | None, int]:
    """Search a PDF (text layer, OCR of scanned pages); with ``redact`` and numbers found, the
    document rasterized with boxes (:mod:`bot.attachments.pdf`). Raises
    :class:`Uninspectable` or :class:`Unredactable`."""
    deadline = time.monotonic() + timeout
    data = reader.read()
    try:
        found, boxes = pdf.find_in_pdf(data, deadline)
    except pdf.PdfUnreadable as exc:
        raise Uninspectable(str(exc)) from None
    if not found or not redact:
        return None, found
    try:
        return pdf.redacted_pdf(data, boxes, deadline), found
    except pdf.PdfUnreadable as exc:
        raise Unredactable(found, str(exc)) from None


# -- Office documents -------------------------------------------------------------------------


def redact_office(reader: BinaryIO, redact: bool, timeout: float) -> tuple[bytes | None, int]:
    """Search a docx/xlsx/odt/ods package's XML; with ``redact``, the package with the numbers
    masked in its content (:mod:`bot.attachments.office`). Raises :class:`Uninspectable`."""
    try:
        return office.redact_package(reader.read(), redact, time.monotonic() + timeout)
    except office.OfficeUnreadable as exc:
        raise Uninspectable(str(exc)) from None


# -- the checked copy -------------------------------------------------------------------------


def check_sealed(path: Path, key: str, mimetype: str | None, redact: bool,
                 timeout: float = DEFAULT_OCR_TIMEOUT) -> CardCheck:
    """Search the sealed checked copy at ``path``; with ``redact`` and numbers found, write the
    redacted copy beside it, sealed under a new key (the original stays until the caller has
    recorded the new one, so a crash in between loses nothing)."""
    if not searchable(mimetype):
        return CardCheck(searched=True, unchecked=_unsearchable(mimetype))
    assert mimetype is not None
    target = path.with_name(path.name + ".redacted")
    sealer = Sealer()
    digest = hashlib.sha256()
    size = 0
    try:
        with open_sealed(path, key) as source:
            if mimetype == PDF or mimetype in office.OFFICE_TYPES:
                reader = redact_pdf if mimetype == PDF else redact_office
                document, found = reader(source, redact, timeout)
                if document is not None:
                    digest.update(document)
                    size = len(document)
                    target.write_bytes(sealer.update(document))
            elif is_text(mimetype):
                with target.open("wb") as out:

                    def write(chunk: bytes) -> None:
                        nonlocal size
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(sealer.update(chunk))

                    found = redact_text(source, write if redact else None, timeout)
            else:
                image, found = redact_image(source, mimetype, redact, timeout)
                if image is not None:
                    digest.update(image)
                    size = len(image)
                    target.write_bytes(sealer.update(image))
    except Uninspectable as exc:
        target.unlink(missing_ok=True)
        return CardCheck(searched=True, unchecked=str(exc))
    except Unredactable as exc:
        target.unlink(missing_ok=True)
        return CardCheck(searched=True, found=exc.found, unredactable=str(exc))
    if not found or not redact:
        target.unlink(missing_ok=True)
        return CardCheck(searched=True, found=found)
    return CardCheck(searched=True, found=found,
                     copy=Stripped(target, sealer.key(), digest.hexdigest(), size))


def _unsearchable(mimetype: str | None) -> str:
    if mimetype and (mimetype.startswith(("video/", "audio/"))):
        return "recordings are not searched for card numbers"
    return "files of this kind are not searched for card numbers"


# -- the upload's own text ---------------------------------------------------------------------

_UPLOAD_TEXT_KEYS = ("body", "filename", "formatted_body")


def screen_upload(content: dict[str, Any], policy: DirectionPolicy) -> dict[str, Any]:
    """A file message's content with card numbers masked in its file name and caption.

    The name is shown on the card and the status line and kept with the offer, so a photo
    named "visa 4111 1111 1111 1111.jpg" must not carry the number there: masked whenever a
    card-number policy other than ``allow`` is set for the direction (files or text). The
    file itself is not touched here.
    """
    if not policy.looks_for_card_numbers and policy.card_numbers_in_text == "allow":
        return content
    screened = dict(content)
    for key in _UPLOAD_TEXT_KEYS:
        value = content.get(key)
        if isinstance(value, str):
            screened[key] = (mask_html(value) if key == "formatted_body" else mask_text(value))[0]
    return screened


# -- the call the offer pipeline makes ----------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_warned_missing = False


def _executor() -> ThreadPoolExecutor:
    """The OCR workers: one per core (Tesseract runs single-threaded in each)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="card-numbers")
    return _pool


def apply_policy(check: CardCheck, policy: DirectionPolicy) -> CardCheck:
    """The refusal, if the direction's policy makes one of this search's outcome."""
    if check.unchecked is not None and policy.uninspectable == "refuse":
        reason = (f"it could not be checked for payment card numbers ({check.unchecked}), and "
                  "files that cannot be checked are not passed on")
        return CardCheck(check.searched, check.found, check.copy, check.unchecked,
                         Verdict(False, "uninspectable", reason))
    if check.found and (policy.card_numbers == "refuse" or check.copy is None):
        # Refused, or to be redacted but it could not be: never passed on as it is.
        reason = REFUSED_REASON if check.unredactable is None else (
            f"it contains a payment card number that could not be hidden ({check.unredactable})."
            " Please never send card details here; use the payment page instead")
        return CardCheck(check.searched, check.found, None, None,
                         Verdict(False, "card_number", reason), check.unredactable)
    return check


async def check_file(path: Path, key: str, mimetype: str | None, policy: DirectionPolicy,
                     ocr_timeout: float = DEFAULT_OCR_TIMEOUT) -> CardCheck:
    """Apply ``policy.card_numbers`` to the sealed checked copy at ``path``.

    Nothing is read with ``allow``. Otherwise the file is searched in a worker thread (OCR for
    images within ``ocr_timeout``), and the result says what to offer: the redacted copy, the
    file as it is, or a refusal. Numbers are never logged: only how many.
    """
    global _warned_missing
    if not policy.looks_for_card_numbers:
        return CardCheck()
    if mimetype in IMAGE_FORMATS and not ocr.available() and not _warned_missing:
        _warned_missing = True
        logger.warning("policy.card_numbers is %s but Tesseract (tesseract-ocr) is not "
                       "installed: images cannot be searched (policy.uninspectable applies)",
                       policy.card_numbers)
    loop = asyncio.get_running_loop()
    check = await loop.run_in_executor(
        _executor(), check_sealed, path, key, mimetype, policy.card_numbers == "redact",
        ocr_timeout)
    return apply_policy(check, policy)
