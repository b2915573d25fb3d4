"""Card numbers in files: text masked byte-exactly, images painted over where OCR read digits,
look-alikes untouched, the policy's refusals; against the real Tesseract."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bot.attachments import ocr, pdf, redact
from bot.attachments.cards import find_in_words
from bot.attachments.images import Stripped
from bot.attachments.policy import Verdict
from bot.attachments.redact import CardCheck, apply_policy, check_sealed, redact_text
from bot.attachments.sealed import Sealer, open_sealed
from bot.config import DirectionPolicy
from tests import cardcorpus

M = "\u2022\u2022\u2022\u2022 ".encode()


def sealed(tmp_path: Path, data: bytes, name: str = "offer-1") -> tuple[Path, str]:
    """A sealed checked copy of ``data``, as the offer pipeline keeps it."""
    sealer = Sealer()
    path = tmp_path / name
    path.write_bytes(sealer.update(data))
    return path, sealer.key()


def unsealed(copy: Stripped) -> bytes:
    """The plaintext of a sealed copy."""
    with open_sealed(copy.path, copy.key) as reader:
        return reader.read()


@pytest.mark.parametrize(
    ("data", "expected", "count"),
    [
        (b"card 4111 1111 1111 1111\n", b"card " + M + b"1111\n", 1),
        (b"name,card\r\nAda,4242-4242-4242-4242\r\nBob,none\r\n",
         b"name,card\r\nAda," + M + b"4242\r\nBob,none\r\n", 1),
        (b'{"pan": "5555555555554444", "order": "4111111111111112"}',
         b'{"pan": "' + M + b'4444", "order": "4111111111111112"}', 1),
        (b"<td>378282246310005</td>\n<td>DE89370400440532013000</td>",
         b"<td>" + M + b"0005</td>\n<td>DE89370400440532013000</td>", 1),
        # Bytes that are not UTF-8 (Latin-1 here) stay exactly as they were.
        (b"Caf\xe9 4111111111111111 \xff\n", b"Caf\xe9 " + M + b"1111 \xff\n", 1),
        ("card 4111111111111111".encode("utf-16"),
         "\ufeffcard \u2022\u2022\u2022\u2022 1111".encode("utf-16-le"), 1),
        (b"no numbers\n", b"no numbers\n", 0),
    ],
)
def test_text_files_keep_every_byte_but_the_number(data: bytes, expected: bytes,
                                                    count: int) -> None:
    """A text file is copied byte for byte, each number replaced by •••• and its last four."""
    out = io.BytesIO()
    assert redact_text(io.BytesIO(data), out.write) == count
    assert out.getvalue() == expected


def test_check_sealed_writes_a_redacted_sealed_copy(tmp_path: Path) -> None:
    """With redact and a number found: a new sealed copy beside the checked one, its hash and
    size those of what will be delivered."""
    path, key = sealed(tmp_path, b"pay 4111 1111 1111 1111 please\n")
    check = check_sealed(path, key, "text/plain", redact=True)
    assert (check.searched, check.found, check.unchecked, check.redacted) == (True, 1, None, 1)
    assert check.copy is not None and check.copy.path == tmp_path / "offer-1.redacted"
    assert unsealed(check.copy) == b"pay " + M + b"1111 please\n"
    assert check.copy.size == len(b"pay " + M + b"1111 please\n")


@pytest.mark.parametrize("redacting", [True, False])
def test_a_file_without_numbers_is_left_alone(tmp_path: Path, redacting: bool) -> None:
    """Look-alikes only: no copy, nothing written; the checked file is delivered as it is."""
    text = "\n".join(cardcorpus.LOOK_ALIKE_LINES).encode()
    path, key = sealed(tmp_path, text)
    check = check_sealed(path, key, "text/csv", redact=redacting)
    assert check == CardCheck(searched=True, found=0)
    assert check.redacted == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offer-1"]


@pytest.mark.parametrize(
    ("mimetype", "unchecked"),
    [
        ("application/zip", "files of this kind are not searched for card numbers"),
        ("video/mp4", "recordings are not searched for card numbers"),
        (None, "files of this kind are not searched for card numbers"),
    ],
)
def test_files_that_cannot_be_searched(tmp_path: Path, mimetype: str | None,
                                       unchecked: str) -> None:
    """Kinds Parcel cannot look into are reported as such (policy.uninspectable decides)."""
    path, key = sealed(tmp_path, b"%PDF-1.7 4111111111111111")
    check = check_sealed(path, key, mimetype, redact=True)
    assert check == CardCheck(searched=True, unchecked=unchecked)
    assert check.redacted is None


def test_a_damaged_image_cannot_be_searched(tmp_path: Path) -> None:
    """An image Pillow cannot decode is uninspectable, with the reason."""
    path, key = sealed(tmp_path, b"\x89PNG\r\n\x1a\nbroken")
    check = check_sealed(path, key, "image/png", redact=True)
    assert check.unchecked == "the image could not be decoded (UnidentifiedImageError)"


REDACT = DirectionPolicy(1, (), (), card_numbers="redact")
REFUSE = DirectionPolicy(1, (), (), card_numbers="refuse")
STRICT = DirectionPolicy(1, (), (), card_numbers="redact", uninspectable="refuse")
COPY = Stripped(Path("x.redacted"), "{}", "ab", 3)


@pytest.mark.parametrize(
    ("check", "policy", "refusal"),
    [
        (CardCheck(True, 1, COPY), REDACT, None),
        (CardCheck(True, 2), REFUSE, Verdict(False, "card_number", redact.REFUSED_REASON)),
        (CardCheck(True, 0), REFUSE, None),
        (CardCheck(True, unchecked="too slow"), REDACT, None),
        (CardCheck(True, unchecked="too slow"), STRICT,
         Verdict(False, "uninspectable", "it could not be checked for payment card numbers "
                 "(too slow), and files that cannot be checked are not passed on")),
    ],
)
def test_apply_policy(check: CardCheck, policy: DirectionPolicy,
                      refusal: Verdict | None) -> None:
    """The direction's policy turns a search's outcome into a refusal, or lets it through."""
    assert apply_policy(check, policy).refusal == refusal


async def test_allow_reads_nothing(tmp_path: Path) -> None:
    """card_numbers: allow never opens the file."""
    policy = DirectionPolicy(1, (), ())
    assert await redact.check_file(tmp_path / "missing", "{}", "text/plain", policy) == \
        CardCheck()


# -- images, through the real Tesseract ------------------------------------------------------


def ocr_sees(data: bytes) -> tuple[list[str], str]:
    """What Tesseract finds in an image over every look: card numbers (last four) and text."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        found, text = [], []
        for psm, enlarge in ocr.OCR_PASSES:
            words = ocr.read_words(image, 60, psm=psm, enlarge=enlarge)
            found += [f.last4 for f in find_in_words(words)]
            text += [w.text for w in words]
    return found, " ".join(text)


CORPUS = cardcorpus.image_corpus()


@pytest.mark.parametrize("sample", [s for s in CORPUS if s.number], ids=lambda s: s.name)
def test_images_lose_their_card_numbers_and_keep_the_rest(tmp_path: Path,
                                                          sample: cardcorpus.Sample) -> None:
    """A rendered card number (fonts, sizes, turns, backgrounds, JPEG) is painted over: OCR
    finds no number afterwards, the words beside it still read, the format is kept."""
    path, key = sealed(tmp_path, sample.data)
    check = check_sealed(path, key, sample.mimetype, redact=True, timeout=60)
    assert check.found == 1 and check.copy is not None
    redacted = unsealed(check.copy)
    with Image.open(io.BytesIO(redacted)) as image:
        assert image.format == redact.IMAGE_FORMATS[sample.mimetype]
        with Image.open(io.BytesIO(sample.data)) as original:
            assert image.size == original.size
    found, text = ocr_sees(redacted)
    assert found == []
    # Not even a group of the number is left to read (the other lines hold no 4 digits).
    assert re.search(r"\d{4}", text) is None, text
    assert cardcorpus.BESIDE in text and "help" in text


@pytest.mark.parametrize("sample", [s for s in CORPUS if not s.number], ids=lambda s: s.name)
def test_look_alike_images_are_delivered_byte_for_byte(tmp_path: Path,
                                                       sample: cardcorpus.Sample) -> None:
    """An image with an IBAN, a phone, a tracking or order number: no copy is made."""
    path, key = sealed(tmp_path, sample.data)
    assert check_sealed(path, key, sample.mimetype, redact=True, timeout=60) == \
        CardCheck(searched=True, found=0)


def test_refuse_counts_without_writing(tmp_path: Path) -> None:
    """With refuse the image is searched but no copy is made."""
    sample = next(s for s in CORPUS if s.number)
    path, key = sealed(tmp_path, sample.data)
    assert check_sealed(path, key, sample.mimetype, redact=False, timeout=60) == \
        CardCheck(searched=True, found=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offer-1"]


def test_metadata_is_dropped_and_orientation_kept(tmp_path: Path) -> None:
    """A turned JPEG photo with GPS data: the redacted copy has neither the GPS data nor a
    readable number, and keeps its orientation so it shows the right way up."""
    upright = cardcorpus.render([f"{cardcorpus.BESIDE} model X200", "Card 4111 1111 1111 1111"],
                                (cardcorpus.fonts() or [None])[0], 36)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 turns back
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera Maker"
    out = io.BytesIO()
    stored.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    path, key = sealed(tmp_path, out.getvalue())
    check = check_sealed(path, key, "image/jpeg", redact=True, timeout=60)
    assert check.found == 1 and check.copy is not None
    with Image.open(io.BytesIO(unsealed(check.copy))) as image:
        assert image.size == stored.size
        kept = dict(image.getexif())
        assert kept == {0x0112: 6}
        shown = image.transpose(Image.Transpose.ROTATE_270)
        out = io.BytesIO()
        shown.save(out, format="PNG")
    found, text = ocr_sees(out.getvalue())
    assert found == [] and cardcorpus.BESIDE in text


def test_an_ocr_past_its_time_is_uninspectable(tmp_path: Path) -> None:
    """OCR that runs out of time leaves the file unsearched, with the reason."""
    sample = next(s for s in CORPUS if s.number)
    path, key = sealed(tmp_path, sample.data)
    check = check_sealed(path, key, sample.mimetype, redact=True, timeout=0.001)
    assert check == CardCheck(searched=True, unchecked="reading it took longer than 0.001 s")


# -- PDF documents, through the real poppler and Tesseract ------------------------------------


def pdf_sees(data: bytes) -> tuple[list[str], str]:
    """What a reader finds in a PDF: card numbers (last four) in its text layer and in OCR of
    its pages, and all the text read."""
    deadline = time.monotonic() + 120
    found: list[str] = []
    text: list[str] = []
    for index, words in enumerate(pdf.text_layer(data, deadline), start=1):
        found += [f.last4 for f in find_in_words(words, misread=False)]
        text += [w.text for w in words]
        page = pdf.render_page(data, index, pdf.OCR_DPI, deadline)
        out = io.BytesIO()
        page.save(out, format="PNG")
        seen, read = ocr_sees(out.getvalue())
        found += seen
        text.append(read)
    return found, " ".join(text)


PDF_PAGES = [[f"{cardcorpus.BESIDE} model X200", "Card 4111 1111 1111 1111 exp 12/25",
              "Thanks for your help"],
             ["Page two", "Amex 3782 822463 10005", "IBAN DE89 3704 0044 0532 0130 00"]]


@pytest.mark.parametrize("make", [cardcorpus.text_pdf, cardcorpus.scanned_pdf],
                         ids=["text-layer", "scanned"])
def test_pdfs_lose_their_card_numbers_from_text_and_pixels(tmp_path: Path, make) -> None:
    """A PDF with numbers in its text layer, or scanned: the redacted copy has them neither in
    its text nor in its pixels; the words beside them and the IBAN still read."""
    data = make(PDF_PAGES)
    path, key = sealed(tmp_path, data)
    check = check_sealed(path, key, "application/pdf", redact=True, timeout=120)
    assert check.found == 2 and check.copy is not None
    redacted = unsealed(check.copy)
    assert pdf.page_count(redacted, time.monotonic() + 30) == 2
    found, text = pdf_sees(redacted)
    assert found == []
    assert cardcorpus.BESIDE in text and "help" in text and "DE89" in text
    assert "4111" not in text and "822463" not in text


def test_a_pdf_without_numbers_is_left_alone(tmp_path: Path) -> None:
    """Look-alikes in a PDF's text: searched, nothing found, no copy."""
    data = cardcorpus.text_pdf([list(cardcorpus.LOOK_ALIKE_LINES)])
    path, key = sealed(tmp_path, data)
    assert check_sealed(path, key, "application/pdf", redact=True, timeout=60) == \
        CardCheck(searched=True, found=0)


def test_a_damaged_pdf_cannot_be_searched(tmp_path: Path) -> None:
    """A PDF poppler cannot read is uninspectable, with the reason."""
    path, key = sealed(tmp_path, b"%PDF-1.7 4111111111111111")
    check = check_sealed(path, key, "application/pdf", redact=True)
    assert check == CardCheck(searched=True,
                              unchecked="it could not be read (a damaged or unusual PDF)")


def test_a_pdf_too_long_to_redact_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Found but impossible to hide (more pages than may be rasterized): refused, never
    passed on as it is, whatever the policy."""
    monkeypatch.setattr(pdf, "MAX_REDACT_PAGES", 1)
    path, key = sealed(tmp_path, cardcorpus.text_pdf(PDF_PAGES))
    check = check_sealed(path, key, "application/pdf", redact=True, timeout=60)
    assert check == CardCheck(searched=True, found=2,
                              unredactable="it has 2 pages (at most 1 can be redacted)")
    refusal = apply_policy(check, REDACT).refusal
    assert refusal is not None and refusal.reason.startswith(
        "it contains a payment card number that could not be hidden (it has 2 pages")


def test_office_documents_are_redacted_through_the_same_call(tmp_path: Path) -> None:
    """A docx with a number: check_sealed makes a redacted sealed copy of the package."""
    data = cardcorpus.docx([["Card 4111 1111 1111 1111"]])
    path, key = sealed(tmp_path, data)
    docx_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    check = check_sealed(path, key, docx_type, redact=True)
    assert check.found == 1 and check.copy is not None
    assert b"4111 1111" not in unsealed(check.copy)


UPLOAD = {"msgtype": "m.image", "body": "visa 4111 1111 1111 1111.jpg",
          "filename": "visa 4111111111111111.jpg", "url": "mxc://hs/4111111111111111",
          "info": {"mimetype": "image/jpeg", "size": 4111111111111111}}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (DirectionPolicy(1, (), ()), UPLOAD),
        (REDACT, {**UPLOAD, "body": "visa \u2022\u2022\u2022\u2022 1111.jpg",
                  "filename": "visa \u2022\u2022\u2022\u2022 1111.jpg"}),
        (DirectionPolicy(1, (), (), card_numbers_in_text="mask"),
         {**UPLOAD, "body": "visa \u2022\u2022\u2022\u2022 1111.jpg",
          "filename": "visa \u2022\u2022\u2022\u2022 1111.jpg"}),
        (REFUSE, {**UPLOAD, "body": "visa \u2022\u2022\u2022\u2022 1111.jpg",
                  "filename": "visa \u2022\u2022\u2022\u2022 1111.jpg"}),
    ],
    ids=["allow", "redact", "text-mask", "refuse"],
)
def test_screen_upload_masks_the_name_and_caption(policy: DirectionPolicy,
                                                  expected: dict[str, object]) -> None:
    """A card number in an upload's name or caption is masked under any card-number policy;
    the media URI and the file's facts are never touched."""
    assert redact.screen_upload(UPLOAD, policy) == expected


def test_text_on_a_transparent_background_is_read(tmp_path: Path) -> None:
    """Black text on transparent pixels (black underneath too) is read as shown, on white; the
    redacted PNG keeps its transparency."""
    face = cardcorpus.font((cardcorpus.fonts() or [None])[0], 32)
    image = Image.new("RGBA", (720, 160), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.text((20, 20), f"{cardcorpus.BESIDE} model X200", fill=(0, 0, 0, 255), font=face)
    draw.text((20, 80), "Card 4111 1111 1111 1111", fill=(0, 0, 0, 255), font=face)
    out = io.BytesIO()
    image.save(out, format="PNG")
    path, key = sealed(tmp_path, out.getvalue())
    check = check_sealed(path, key, "image/png", redact=True, timeout=60)
    assert check.found == 1 and check.copy is not None
    with Image.open(io.BytesIO(unsealed(check.copy))) as redacted:
        assert redacted.mode == "RGBA" and redacted.getpixel((1, 1))[3] == 0


def test_every_page_of_a_multi_page_tiff_is_searched(tmp_path: Path) -> None:
    """A two-page TIFF (a fax) with the number on its second page: found there, painted over,
    both pages delivered, the first unchanged in what it says."""
    face = (cardcorpus.fonts() or [None])[0]
    first = cardcorpus.render([f"{cardcorpus.BESIDE} model X200", "Page one"], face, 36)
    second = cardcorpus.render(["Page two", "Card 4111 1111 1111 1111"], face, 36)
    out = io.BytesIO()
    first.save(out, format="TIFF", save_all=True, append_images=[second])
    path, key = sealed(tmp_path, out.getvalue())
    check = check_sealed(path, key, "image/tiff", redact=True, timeout=60)
    assert check.found == 1 and check.copy is not None
    with Image.open(io.BytesIO(unsealed(check.copy))) as image:
        assert image.n_frames == 2
        seen = []
        for frame in range(2):
            image.seek(frame)
            page = io.BytesIO()
            image.convert("RGB").save(page, format="PNG")
            seen.append(ocr_sees(page.getvalue()))
    assert seen[0][0] == [] and cardcorpus.BESIDE in seen[0][1]
    assert seen[1][0] == [] and "two" in seen[1][1] and "4111" not in seen[1][1]


def test_a_text_file_past_the_time_limit_is_uninspectable(tmp_path: Path) -> None:
    """Searching text has the same time limit as OCR: past it the file is not searched."""
    row = b"IBAN DE89 3704 0044 0532 0130 00, 9400 1000 0000 0000 0000 02\n"
    path, key = sealed(tmp_path, row * 50_000)
    check = check_sealed(path, key, "text/csv", redact=True, timeout=0.01)
    assert check == CardCheck(searched=True, unchecked="reading it took longer than 0.01 s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offer-1"]
