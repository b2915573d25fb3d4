"""Reading the words in an image, with their boxes: Tesseract (Debian's ``tesseract-ocr``).

The image goes to the ``tesseract`` command on its standard input (never as a plaintext file
on disk: the checked copy is kept encrypted at rest) and its TSV output comes back as
:class:`~bot.attachments.cards.Word` boxes in the image's own pixels. Tesseract runs
single-threaded (``OMP_THREAD_LIMIT=1``): the caller decides how many run at once, one per
core, and each has a time limit after which it is killed.

Images are prepared the way Tesseract reads best: grey, contrast stretched, and scaled so the
image holds at most :data:`OCR_MAX_PIXELS` (a 12 MP photo is read at about 8 MP; type that is
readable on screen stays above the 10-pixel x-height Tesseract needs).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from bot.attachments.cards import Word, WordFinding, find_in_words, unexplained_digits

TESSERACT = "tesseract"
OCR_MAX_PIXELS = 8_000_000
# Small images are enlarged: Tesseract misses digits less than ~20 px tall.
OCR_MIN_SIDE = 1000
_MAX_UPSCALE = 3.0


# The looks OCR takes at an image while digits remain that no finding explains: (Tesseract
# page segmentation mode, enlarged).
OCR_PASSES: tuple[tuple[int, bool], ...] = ((11, False), (11, True), (6, False))
class OcrError(Exception):
    """The image could not be read: Tesseract is missing, failed, or ran out of time."""


class OcrTimeout(OcrError):
    """Tesseract did not finish within its time limit (it was killed)."""


def available() -> bool:
    """Whether the ``tesseract`` command is installed."""
    return shutil.which(TESSERACT) is not None


@dataclass(frozen=True)
class Prepared:
    """The image as Tesseract gets it, and how its pixels relate to the original's."""

    png: bytes
    scale: float  # prepared pixels per original pixel


def prepare(image: Image.Image, enlarge: bool = False) -> Prepared:
    """Grey, contrast-stretched, scaled within Tesseract's comfortable range; PNG-encoded.

    ``enlarge`` scales a small image up (to :data:`OCR_MIN_SIDE`) or a large one by half
    again (within :data:`OCR_MAX_PIXELS`): a second look at type read badly the first time.
    """
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels are often black underneath: flattened onto white, as shown.
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    # No cutoff: on a page that is mostly white, the darkest 1 % is all of the text.
    grey = ImageOps.autocontrast(image.convert("L"))
    pixels = grey.width * grey.height
    scale = 1.0
    if pixels > OCR_MAX_PIXELS:
        scale = (OCR_MAX_PIXELS / pixels) ** 0.5
    if enlarge:
        if max(grey.size) < OCR_MIN_SIDE:
            scale = min(_MAX_UPSCALE, OCR_MIN_SIDE / max(grey.size))
        else:
            scale = min(scale * 1.5, (OCR_MAX_PIXELS * 2 / pixels) ** 0.5)
    if scale != 1.0:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    grey.save(out, format="PNG", compress_level=1)
    return Prepared(out.getvalue(), scale)


def parse_tsv(tsv: str, scale: float = 1.0) -> list[Word]:
    """Tesseract's TSV output as words (level 5 rows with text), boxes in original pixels."""
    words: list[Word] = []
    lines = tsv.splitlines()
    if not lines:
        return words
    header = lines[0].split("\t")
    try:
        column = {name: header.index(name) for name in (
            "level", "page_num", "block_num", "par_num", "line_num", "left", "top", "width",
            "height", "text")}
    except ValueError:
        raise OcrError("Tesseract's output has no TSV header") from None
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) < len(header) or cells[column["level"]] != "5":
            continue
        text = cells[column["text"]].strip()
        if not text:
            continue
        left, top, width, height = (int(cells[column[name]]) / scale
                                    for name in ("left", "top", "width", "height"))
        words.append(Word(
            text=text, left=int(left), top=int(top), width=round(width), height=round(height),
            line=tuple(cells[column[name]] for name in ("page_num", "block_num", "par_num",
                                                        "line_num")),
        ))
    return words


def read_words(image: Image.Image, timeout: float, *, psm: int = 11,
               enlarge: bool = False) -> list[Word]:
    """The words Tesseract finds in ``image``, with boxes in its pixels.

    ``psm`` is Tesseract's page segmentation mode (11: sparse text, anywhere; 6: one block
    of text); ``enlarge`` see :func:`prepare`. Raises :class:`OcrTimeout` past ``timeout``
    seconds and :class:`OcrError` when Tesseract is missing or fails.
    """
    if timeout <= 0:
        raise OcrTimeout("no time was left to read the image")
    prepared = prepare(image, enlarge)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(
            [TESSERACT, "stdin", "stdout", "-l", "eng", "--psm", str(psm), "tsv"],
            input=prepared.png, capture_output=True, timeout=timeout, env=env, check=False,
        )
    except FileNotFoundError:
        raise OcrError("Tesseract (tesseract-ocr) is not installed") from None
    except subprocess.TimeoutExpired:
        raise OcrTimeout(f"reading the image took longer than {timeout:g} s") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OcrError(f"Tesseract failed ({detail[-1] if detail else done.returncode})")
    return parse_tsv(done.stdout.decode("utf-8", "replace"), prepared.scale)


def find_in_image(image: Image.Image, deadline: float) -> tuple[list[Word], list[WordFinding]]:
    """OCR's words and the card numbers among them, over up to :data:`OCR_PASSES` looks.

    A further look is taken only while a line holds digits that no finding explains (a number
    read badly, or a look-alike: both are worth it). Raises :class:`OcrError` (a timeout
    included) when even the first look fails; a later look that fails ends the search with
    what was found.
    """
    words: list[Word] = []
    findings: list[WordFinding] = []
    for number, (psm, enlarge) in enumerate(OCR_PASSES):
        try:
            seen = read_words(image, deadline - time.monotonic(), psm=psm, enlarge=enlarge)
        except OcrError:
            if number == 0:
                raise
            break
        found = find_in_words(seen)
        offset = len(words)
        words.extend(seen)
        findings.extend(WordFinding(tuple(i + offset for i in f.words), f.network, f.last4)
                        for f in found)
        if not unexplained_digits(seen, found):
            break
    return words, findings


Box = tuple[float, float, float, float]


def finding_boxes(words: Sequence[Word], findings: Sequence[WordFinding], scale: float = 1.0,
                  least_margin: float = 3.0) -> list[Box]:
    """A box (left, top, right, bottom) over every word of every finding, in the words' units
    times ``scale``, with a margin of a quarter of the word's height (at least
    ``least_margin``) all round."""
    boxes = []
    for finding in findings:
        for index in finding.words:
            word = words[index]
            margin = max(least_margin, word.height * scale / 4)
            boxes.append((word.left * scale - margin, word.top * scale - margin,
                          (word.left + word.width) * scale + margin,
                          (word.top + word.height) * scale + margin))
    return boxes


def count_numbers(boxes_per_finding: list[list[Box]]) -> int:
    """Distinct numbers among findings from several looks: findings whose boxes overlap are
    one number read twice."""
    groups: list[list[Box]] = []
    for boxes in boxes_per_finding:
        merged = [g for g in groups if any(_overlap(a, b) for a in g for b in boxes)]
        for group in merged:
            groups.remove(group)
            boxes = boxes + group
        groups.append(boxes)
    return len(groups)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
