"""Metadata removal (lossless, per container), thumbnails and blurhash for delivered images."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import blurhash
import pytest
from PIL import Image

from bot.attachments import images, sealed
from tests import samples

GPS_IFD, MAKE, MODEL, ORIENTATION = 0x8825, 0x010F, 0x0110, 0x0112


def strip(data: bytes, mimetype: str) -> tuple[bytes, bool]:
    out = io.BytesIO()
    changed = images.strip_metadata(io.BytesIO(data), out.write, mimetype)
    return out.getvalue(), changed


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").tobytes()


CASES = [
    # (what, make the image, mimetype)
    ("jpeg", samples.jpeg_with_location, "image/jpeg"),
    ("png", samples.png_with_metadata, "image/png"),
    ("png-rgba", lambda: samples.png_with_metadata("RGBA"), "image/png"),
    ("webp", samples.webp_with_metadata, "image/webp"),
]


@pytest.mark.parametrize(("what", "make", "mimetype"), CASES, ids=[c[0] for c in CASES])
def test_metadata_is_removed_and_the_pixels_are_unchanged(
    what: str, make: Callable[[], bytes], mimetype: str
) -> None:
    """GPS, camera make/model, XMP and text are gone; the decoded pixels are identical."""
    original = make()
    stripped, changed = strip(original, mimetype)
    assert changed
    assert pixels(stripped) == pixels(original)
    with Image.open(io.BytesIO(stripped)) as image:
        exif = image.getexif()
        assert GPS_IFD not in exif and MAKE not in exif and MODEL not in exif
        assert "xmp" not in image.info and "XML:com.adobe.xmp" not in image.info
        assert "comment" not in image.info and "Comment" not in image.info
    for marker in (b"Acme", b"Phone 9", b"GPSLatitude", b"taken at home"):
        assert marker not in stripped, marker
    assert len(stripped) < len(original)


def test_jpeg_pixels_are_copied_byte_for_byte() -> None:
    """No re-encode: everything from the start of scan on is the original's bytes."""
    original = samples.jpeg_with_location()
    stripped, _ = strip(original, "image/jpeg")
    scan = original.index(b"\xff\xda")
    assert stripped.endswith(original[scan:])


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_jpeg_keeps_a_turned_photos_orientation(orientation: int) -> None:
    """A photo taken sideways keeps its EXIF orientation (and nothing else of its EXIF)."""
    stripped, _ = strip(samples.jpeg_with_location(orientation=orientation), "image/jpeg")
    with Image.open(io.BytesIO(stripped)) as image:
        exif = image.getexif()
    assert dict(exif) == {ORIENTATION: orientation}


@pytest.mark.parametrize(("make", "mimetype"), [
    (lambda: samples.png(), "image/png"),
    (lambda: samples.jpeg(64, 48), "image/jpeg"),
], ids=["png", "jpeg"])
def test_an_image_without_metadata_is_left_as_it_is(make: Callable[[], bytes],
                                                    mimetype: str) -> None:
    """Nothing to remove: reported unchanged, and the copy is byte-identical."""
    original = make()
    stripped, changed = strip(original, mimetype)
    assert not changed and stripped == original


@pytest.mark.parametrize(("data", "mimetype"), [
    (b"not a jpeg at all", "image/jpeg"),
    (b"\xff\xd8\xff\xe1\x00", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8X\x0a", "image/webp"),
], ids=["jpeg-garbage", "jpeg-truncated", "png-truncated", "webp-truncated"])
def test_a_damaged_container_is_reported(data: bytes, mimetype: str) -> None:
    """A file whose container is broken raises BadImage (it is then delivered unchanged)."""
    with pytest.raises(images.BadImage):
        strip(data, mimetype)


def test_strip_sealed_writes_a_new_sealed_copy(tmp_path: Path) -> None:
    """The checked copy is read and written sealed; hash and size describe the new plaintext."""
    original = samples.jpeg_with_location()
    path = tmp_path / "offer-1"
    sealer = sealed.Sealer()
    path.write_bytes(sealer.update(original))
    key = sealer.key()
    result = images.strip_sealed(path, key, "image/jpeg")
    assert result is not None and result.path != path and path.exists()
    assert b"Acme" not in result.path.read_bytes()  # sealed: no plaintext on disk
    with sealed.open_sealed(result.path, result.key) as handle:
        plain = handle.read()
    assert plain == strip(original, "image/jpeg")[0]
    import hashlib

    assert result.sha256 == hashlib.sha256(plain).hexdigest() and result.size == len(plain)
    assert images.strip_sealed(result.path, result.key, "image/jpeg") is None


@pytest.mark.parametrize(
    ("make", "thumb_type", "thumb_size"),
    [
        (lambda: samples.jpeg(1600, 1200), "image/jpeg", (800, 600)),
        (lambda: samples.png(2000, 500), "image/jpeg", (800, 200)),  # opaque: JPEG
        (lambda: samples.png(640, 480), None, None),
    ],
    ids=["large-jpeg", "wide-png", "small"],
)
def test_preview_has_a_blurhash_and_a_thumbnail_for_large_images(
    make: Callable[[], bytes], thumb_type: str | None, thumb_size: tuple[int, int] | None
) -> None:
    """Every image gets a blurhash; those over 800×600 a thumbnail that fits in 800×600."""
    shown = images.preview(io.BytesIO(make()))
    assert shown.blurhash is not None
    assert len(blurhash.decode(shown.blurhash, 4, 3)) == 3  # a valid hash decodes
    assert shown.mimetype == thumb_type
    if thumb_size is None:
        assert shown.thumbnail is None
        return
    assert (shown.width, shown.height) == thumb_size
    assert shown.thumbnail is not None
    with Image.open(io.BytesIO(shown.thumbnail)) as thumb:
        assert thumb.size == thumb_size
        assert Image.MIME[thumb.format] == thumb_type


def test_a_transparent_image_gets_a_png_thumbnail() -> None:
    """Transparency survives in the thumbnail (PNG, not JPEG)."""
    image = Image.new("RGBA", (1200, 900), (0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    shown = images.preview(io.BytesIO(out.getvalue()))
    assert shown.mimetype == "image/png"


def test_an_unreadable_image_gets_no_preview() -> None:
    """Bytes Pillow cannot read give neither blurhash nor thumbnail, and no error."""
    assert images.preview(io.BytesIO(b"\x89PNG\r\n\x1a\nbroken")) == images.Preview(None)
