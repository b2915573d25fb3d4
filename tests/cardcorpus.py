"""A corpus of files with payment card numbers and look-alikes, generated (never downloaded):
text rendered with Pillow in several fonts and sizes, turned a little, on coloured backgrounds,
JPEG-compressed; and text files. Used by the tests and by ``bench/``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
)

# (text, digits of the card number in it or None): the numbers are the networks' test numbers.
CARD_LINES = (
    ("Card 4111 1111 1111 1111", "4111111111111111"),
    ("Visa 4242 4242 4242 4242", "4242424242424242"),
    ("MC 5555 5555 5555 4444", "5555555555554444"),
    ("Amex 3782 822463 10005", "378282246310005"),
    ("Pay 6011 1111 1111 1117", "6011111111111117"),
    ("JCB 3530 1113 3330 0000", "3530111333300000"),
    ("Card 2223 0031 2200 3222", "2223003122003222"),
    ("Card 5105-1051-0510-5100", "5105105105105100"),
)
LOOK_ALIKE_LINES = (
    "Order 4111 1111 1111 1112",
    "IBAN DE89 3704 0044 0532 0130 00",
    "Phone +49 1512 3456 787",
    "Tracking 9400 1000 0000 0000 0000 02",
    "Date 2024-01-15 12:30",
    "Invoice 2024-000123-4567",
)
BESIDE = "Router"  # a word printed beside every number, which must stay readable


def fonts() -> list[Path]:
    """The TrueType fonts of the list that this machine has (Debian's fonts-dejavu-core and
    fonts-liberation)."""
    return [Path(name) for name in FONT_FILES if Path(name).exists()]


def font(path: Path | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font at a size; Pillow's own when ``path`` is None."""
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size)


@dataclass(frozen=True)
class Sample:
    """One generated image: its bytes, type, and what is in it."""

    name: str
    data: bytes
    mimetype: str
    number: str | None  # the card number's digits, or None for a look-alike
    line: str


def render(lines: list[str], font_path: Path | None, size: int, angle: float = 0.0,
           background: tuple[int, int, int] = (255, 255, 255),
           ink: tuple[int, int, int] = (20, 20, 20), width: int = 0) -> Image.Image:
    """Lines of text on a background, turned by ``angle`` degrees."""
    face = font(font_path, size)
    line_height = int(size * 1.6)
    text_width = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(line, font=face))
                     for line in lines)
    image = Image.new("RGB", (max(width, text_width + 2 * size), line_height * len(lines)
                              + 2 * size), background)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((size, size + index * line_height), line, fill=ink, font=face)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                             fillcolor=background)
    return image


def encode(image: Image.Image, fmt: str, quality: int = 85) -> bytes:
    """The image as a file of format ``fmt`` (JPEG at ``quality``)."""
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format=fmt)
    return out.getvalue()


MIMETYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
             "TIFF": "image/tiff"}
BACKGROUNDS = ((255, 255, 255), (255, 244, 214), (214, 236, 255), (230, 230, 230),
               (255, 222, 230))


def image_corpus(count_per_line: int = 1) -> list[Sample]:
    """Every card line and look-alike line rendered in varying fonts, sizes, angles,
    backgrounds and formats (deterministic: the same list every time)."""
    faces: list[Path | None] = [*fonts()] or [None]
    sizes = (22, 28, 36, 48)
    angles = (0.0, 1.5, -2.0, 0.0, 3.0)
    formats = ("PNG", "JPEG", "WEBP", "JPEG", "PNG")
    samples: list[Sample] = []
    variants = [(line, number) for line, number in CARD_LINES] + [
        (line, None) for line in LOOK_ALIKE_LINES]
    index = 0
    for line, number in variants:
        for _ in range(count_per_line):
            face = faces[index % len(faces)]
            fmt = formats[index % len(formats)]
            image = render([f"{BESIDE} model X200", line, "Thanks for your help"], face,
                           sizes[index % len(sizes)], angles[index % len(angles)],
                           BACKGROUNDS[index % len(BACKGROUNDS)])
            samples.append(Sample(f"sample-{index}.{fmt.lower()}", encode(image, fmt),
                                  MIMETYPES[fmt], number, line))
            index += 1
    return samples


def text_pdf(pages: list[list[str]], size: int = 14) -> bytes:
    """A PDF with a real text layer (Helvetica), one list of lines per page, written by hand:
    the bytes of every object, its offset in the cross-reference table."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pages_id = len(objects) + 2 * len(pages) + 1
    kids = []
    for lines in pages:
        stream = b"".join(
            b"BT /F1 %d Tf 72 %d Td (%s) Tj ET\n" % (size, 720 - index * int(size * 1.6),
                                                   line.encode("latin-1"))
            for index, line in enumerate(lines))
        contents = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
                        b" /Resources << /Font << /F1 %d 0 R >> >> >>"
                        % (pages_id, contents, font)))
    add(b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % kid for kid in kids), len(kids)))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, catalog, xref)
    return bytes(out)


def scanned_pdf(pages: list[list[str]], size: int = 36) -> bytes:
    """A PDF whose pages are only pictures of text (a scan), made with Pillow."""
    face = (fonts() or [None])[0]
    images = [render(lines, face, size, angle=1.0, width=1200) for lines in pages]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=150.0)
    return out.getvalue()


def _package(parts: dict[str, str], first: tuple[str, str] | None = None) -> bytes:
    """A ZIP package of XML parts (an ODF one starts with its stored mimetype entry)."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        if first is not None:
            package.writestr(zipfile.ZipInfo(first[0], (2026, 12, 1, 0, 0, 0)), first[1],
                             compress_type=zipfile.ZIP_STORED)
        for name, content in parts.items():
            package.writestr(zipfile.ZipInfo(name, (2026, 12, 1, 0, 0, 0)), content,
                             compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx(paragraphs: list[list[str]]) -> bytes:
    """A Word document; each paragraph a list of runs (a number may be split over runs)."""
    body = "".join(
        "<w:p>" + "".join(f'<w:r><w:rPr><w:b/></w:rPr><w:t xml:space="preserve">{run}</w:t>'
                          "</w:r>" for run in runs) + "</w:p>"
        for runs in paragraphs)
    return _package({
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.'
        'openxmlformats.org/package/2006/content-types"><Override PartName="/word/document.xml"'
        ' ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.'
        'document.main+xml"/></Types>',
        "word/document.xml": f'<?xml version="1.0" encoding="UTF-8"?><w:document {W}>'
        f"<w:body>{body}</w:body></w:document>",
    })


def xlsx(strings: list[str], numbers: list[str]) -> bytes:
    """A spreadsheet: column A the shared strings, column B the numbers as numeric cells."""
    shared = "".join(f"<si><t>{text}</t></si>" for text in strings)
    rows = "".join(
        f'<row r="{i + 1}"><c r="A{i + 1}" t="s"><v>{i}</v></c>'
        + (f'<c r="B{i + 1}" s="1"><v>{numbers[i]}</v></c>' if i < len(numbers) else "")
        + "</row>" for i in range(max(len(strings), len(numbers))))
    main = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    return _package({
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.'
        'openxmlformats.org/package/2006/content-types"/>',
        "xl/sharedStrings.xml": f'<?xml version="1.0"?><sst {main} count="{len(strings)}">'
        f"{shared}</sst>",
        "xl/worksheets/sheet1.xml": f'<?xml version="1.0"?><worksheet {main}><sheetData>'
        f"{rows}</sheetData></worksheet>",
    })


ODF = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
       'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
       'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')


def odt(paragraphs: list[str]) -> bytes:
    """An OpenDocument text; ``<span>`` marks in a paragraph become text:span."""
    body = "".join(
        "<text:p>" + p.replace("<span>", "<text:span>").replace("</span>", "</text:span>")
        + "</text:p>" for p in paragraphs)
    return _package(
        {"content.xml": f'<?xml version="1.0"?><office:document-content {ODF}><office:body>'
                        f"<office:text>{body}</office:text></office:body>"
                        "</office:document-content>"},
        first=("mimetype", "application/vnd.oasis.opendocument.text"))


def ods(cells: list[str]) -> bytes:
    """An OpenDocument spreadsheet; a cell of digits is a float with the value attribute."""
    row = "".join(
        (f'<table:table-cell office:value-type="float" office:value="{c}">' if c.isdigit()
         else '<table:table-cell office:value-type="string">')
        + f"<text:p>{c}</text:p></table:table-cell>" for c in cells)
    return _package(
        {"content.xml": f'<?xml version="1.0"?><office:document-content {ODF}><office:body>'
                        f"<office:spreadsheet><table:table><table:table-row>{row}"
                        "</table:table-row></table:table></office:spreadsheet></office:body>"
                        "</office:document-content>"},
        first=("mimetype", "application/vnd.oasis.opendocument.spreadsheet"))
